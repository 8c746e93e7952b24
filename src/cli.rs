//! The command line: argument definitions (clap) and the glue from a parsed command to the
//! library. Exit codes: 0 pass, 1 a threshold failed, 2 usage or profile error, 3 aborted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::live::{Control, ControlTx};
use crate::profile::Profile;
use crate::report::plan as plan_text;
use crate::run::{self, Progress, RunOptions};
use crate::{doctor, sink};

const ABOUT: &str = "Load-test harness for massive numbers of always-on connections.\n\n\
Opens, holds and measures hundreds of thousands of connections from many source addresses, \
against a gateway or the built-in sink, and gates CI on thresholds.";

const EXAMPLES: &str = "Examples:
  stampede run profiles/smoke.json
  stampede run profiles/smoke.json --set connections=5000 --set heartbeat.interval=5s --out results/
  stampede profile check profiles/many-sources.json
  stampede sink --listen 127.0.0.1:7000
  stampede doctor profiles/smoke.json

Exit codes: 0 pass, 1 a threshold failed, 2 usage or profile error, 3 aborted.";

#[derive(Parser, Debug)]
#[command(name = "stampede", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a profile in this process and report the results.
    #[command(after_help = "Examples:
  stampede run profiles/smoke.json
  stampede run profiles/ci-smoke.json --out results/ --junit results/junit.xml
  stampede run profiles/smoke.json --set connections=5000 --set phases.0.ramp.rate=2500
  stampede run profiles/many-sources.json --set 'sources.addrs=[\"127.0.0.2\"]' --allow-overcommit

Progress goes to stderr once a second; the summary goes to stdout.
Exit codes: 0 pass, 1 a threshold failed, 2 usage or profile error, 3 aborted (Ctrl-C, SIGTERM).")]
    Run(RunArgs),
    /// Serve as an echo-and-hold TCP target (the built-in sink).
    #[command(after_help = "Examples:
  stampede sink --listen 127.0.0.1:7000
  stampede sink --listen 127.0.0.1:7000 --listen [::1]:7000 --quiet

Several sink processes may listen on the same address (SO_REUSEPORT) to hold more
connections than one process's file limit allows. The first line printed is
`listening on ADDR` for each address, so scripts can wait for it.")]
    Sink(SinkArgs),
    /// Work with profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Check this host's limits, and with a profile, whether its plan fits here.
    #[command(after_help = "Examples:
  stampede doctor
  stampede doctor profiles/many-sources.json --set connections=100000")]
    Doctor(DoctorArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Profile file (JSON).
    pub profile: PathBuf,
    /// Override a profile field: PATH=VALUE (VALUE is JSON, or a plain string).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Write summary.json and latency.hlog into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write the thresholds as JUnit test cases to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Plain progress lines instead of the live dashboard.
    #[arg(long)]
    pub headless: bool,
    /// No progress lines; only the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Run even if the source pool cannot hold the plan; the excess fails as
    /// addr_not_available (shows the port wall).
    #[arg(long)]
    pub allow_overcommit: bool,
}

#[derive(Args, Debug)]
pub struct SinkArgs {
    /// Address to listen on; repeat for several.
    #[arg(long, value_name = "ADDR", required = true)]
    pub listen: Vec<SocketAddr>,
    /// No per-second stats lines.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Validate a profile and print its expanded plan.
    #[command(after_help = "Examples:
  stampede profile check profiles/smoke.json
  stampede profile check profiles/smoke.json --set connections=50000")]
    Check {
        /// Profile file (JSON).
        file: PathBuf,
        /// Override a profile field: PATH=VALUE.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Profile to size against this host.
    pub profile: Option<PathBuf>,
    /// Override a profile field: PATH=VALUE.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
}

fn eprint_line(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn load(file: &std::path::Path, set: &[String]) -> Result<Profile, i32> {
    Profile::load(file, set).map_err(|e| {
        eprint_line(&format!("stampede: profile error: {e}"));
        2
    })
}

/// Runs a parsed command; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => run_command(args).await,
        Command::Sink(args) => sink_command(args).await,
        Command::Profile(ProfileCommand::Check { file, set }) => match load(&file, &set) {
            Ok(profile) => {
                print!("{}", plan_text::render(&profile));
                0
            }
            Err(code) => code,
        },
        Command::Doctor(args) => {
            let profile = match &args.profile {
                Some(file) => match load(file, &args.set) {
                    Ok(p) => Some(p),
                    Err(code) => return code,
                },
                None => None,
            };
            let report = doctor::report(profile.as_ref());
            print!("{}", report.text);
            report.exit_code
        }
    }
}

/// Turns SIGINT and SIGTERM into a graceful stop; a second signal exits at once.
fn watch_signals(control_tx: ControlTx) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut signals = 0;
        loop {
            let name = tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                Some(()) = async {
                    match term.as_mut() {
                        Some(t) => t.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGTERM",
            };
            signals += 1;
            if signals > 1 {
                eprint_line("stampede: second signal, exiting without a summary");
                std::process::exit(3);
            }
            eprint_line(&format!(
                "stampede: {name}: closing connections and writing the summary (again to exit now)"
            ));
            let _ = control_tx.send(Control::Stop(format!("interrupted by {name}")));
        }
    });
}

async fn run_command(args: RunArgs) -> i32 {
    let profile = match load(&args.profile, &args.set) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    watch_signals(control_tx);
    let options = RunOptions {
        profile,
        out_dir: args.out,
        junit: args.junit,
        workers: args.workers.map(usize::from),
        allow_overcommit: args.allow_overcommit,
        progress: if args.quiet {
            Progress::SummaryOnly
        } else {
            Progress::Lines
        },
        control_rx,
        live_tx: None,
    };
    match run::execute(options).await {
        Ok(result) => result.exit_code,
        Err(e) => {
            eprint_line(&format!("stampede: {e}"));
            e.exit_code()
        }
    }
}

async fn sink_command(args: SinkArgs) -> i32 {
    if let Err(e) = crate::host::raise_fd_limit() {
        eprint_line(&format!("stampede sink: cannot raise RLIMIT_NOFILE: {e}"));
    }
    let mut listeners = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        match sink::bind(*addr) {
            Ok(listener) => {
                let bound = listener.local_addr().map_or(*addr, |a| a);
                println!("listening on {bound}");
                listeners.push(listener);
            }
            Err(e) => {
                eprint_line(&format!(
                    "stampede sink: --listen {addr}: cannot listen: {e}; choose a free port or an address of this host"
                ));
                return 2;
            }
        }
    }
    let _ = std::io::stdout().flush();
    let stats = Arc::new(sink::SinkStats::default());
    if !args.quiet {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut previous = (0, 0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprint_line(&stats.line(&mut previous));
            }
        });
    }
    sink::run(listeners, stats, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    0
}
