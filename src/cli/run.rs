//! `stampede run` and `stampede coordinator`: a profile played under the views (dashboard,
//! progress lines, Prometheus), its summary printed and its exit code returned.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{eprint_line, load_with_json, parse_duration_arg, read_token};
use crate::collect::{Outputs, Progress, RunResult};
use crate::coordinator::local::{AgentCount, LocalSwarmOptions};
use crate::coordinator::{self, CoordinatorOptions};
use crate::live::{Control, ControlRx, LiveTx};
use crate::run::{self, RunError, RunOptions};
use crate::views::{ViewOptions, Views};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Profile file (JSON).
    pub profile: PathBuf,
    /// Override a profile field: PATH=VALUE (VALUE is JSON, or a plain string).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub outputs: OutputArgs,
    #[command(flatten)]
    pub views: ViewArgs,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Run even if the source pool cannot hold the plan; the excess fails as
    /// addr_not_available (shows the port wall).
    #[arg(long)]
    pub allow_overcommit: bool,
    /// Split the run over N agent processes on this host (a local swarm), or `auto` for as
    /// many as the file limit needs.
    #[arg(long, value_name = "N|auto")]
    pub agents: Option<AgentCount>,
}

#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// Profile file (JSON).
    pub profile: PathBuf,
    /// Address to listen on for agents.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Agents to wait for.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub agents: u16,
    /// File with the shared secret (at least 16 bytes); required off loopback.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Override a profile field: PATH=VALUE.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub outputs: OutputArgs,
    /// How long to wait for every agent to join.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration_arg)]
    pub join_timeout: Duration,
    /// Agents stop after this long without a word from the coordinator; agents silent this
    /// long are marked lost. At least 3s (three keepalives); agents refuse more than their
    /// --max-lease (30s by default).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration_arg)]
    pub lease: Duration,
    #[command(flatten)]
    pub views: ViewArgs,
    /// At the end, print summary.json to stdout between `----- BEGIN summary.json -----` and
    /// `----- END summary.json -----` lines, so that it outlives the container (its log).
    #[arg(long)]
    pub summary_to_log: bool,
    /// Let a run with synthetic agents (`agent --synthetic`, made-up figures, no load) pass;
    /// without it such a run fails. For benchmarking the coordinator only.
    #[arg(long)]
    pub allow_synthetic: bool,
}

/// Where a run's results go (`run` and `coordinator`).
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Write summary.json, latency.hlog, profile.json and report.html into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// With --out: do not write report.html (`stampede report DIR` writes it later).
    #[arg(long)]
    pub no_report: bool,
    /// Write the thresholds as JUnit test cases to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

impl OutputArgs {
    fn outputs(self, profile_json: &serde_json::Value) -> Outputs {
        Outputs {
            out_dir: self.out,
            junit: self.junit,
            report: !self.no_report,
            profile_json: Some(profile_json.clone()),
        }
    }
}

/// How a run is shown while it lasts (`run` and `coordinator`).
#[derive(Args, Debug)]
pub struct ViewArgs {
    /// Plain progress lines instead of the live dashboard (the dashboard is shown only when
    /// stdout is a terminal).
    #[arg(long)]
    pub headless: bool,
    /// No progress lines and no dashboard; only the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Dashboard frames per second.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=60))]
    pub fps: u16,
    /// Serve live Prometheus metrics at http://ADDR/metrics while the run lasts.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// What a run under the views reports to and listens on.
struct Attached {
    progress: Progress,
    control_rx: ControlRx,
    live_tx: Option<LiveTx>,
}

/// Runs `play` under the views: signals become a graceful stop, the dashboard or the progress
/// lines show it, and the summary is printed once the dashboard has left the screen. The
/// result, or the exit code when it ended without one.
async fn under_views<F, Fut>(
    args: &ViewArgs,
    profile: &str,
    play: F,
) -> Result<Result<RunResult, RunError>, i32>
where
    F: FnOnce(Attached) -> Fut,
    Fut: Future<Output = Result<RunResult, RunError>>,
{
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    watch_signals(control_tx.clone());
    let options = ViewOptions {
        dashboard: !args.headless && !args.quiet && std::io::stdout().is_terminal(),
        fps: args.fps,
        metrics_listen: args.metrics_listen,
        profile: profile.to_string(),
    };
    let mut views = Views::start(options, control_tx).await.map_err(|e| {
        eprint_line(&format!("stampede: {e}"));
        2
    })?;
    let dashboard = views.has_dashboard();
    let attached = Attached {
        progress: views.progress(args.quiet),
        control_rx,
        live_tx: views.live_tx(),
    };
    let Some(result) = views.drive(play(attached)).await else {
        eprint_line("stampede: left the dashboard while stopping; no summary written");
        return Err(3);
    };
    // The dashboard kept the run silent: now that it has left the screen, the summary goes to
    // stdout as in headless mode.
    if dashboard && let Ok(result) = &result {
        let mut stdout = std::io::stdout();
        let _ = write!(stdout, "{}", crate::report::text::render(&result.summary));
        let _ = stdout.flush();
    }
    Ok(result)
}

/// Turns SIGINT and SIGTERM into a graceful stop; a second signal exits at once.
fn watch_signals(control_tx: crate::live::ControlTx) {
    tokio::spawn(async move {
        let mut signals = super::signal::Signals::new();
        let name = signals.next().await;
        eprint_line(&format!(
            "stampede: {name}: closing connections and writing the summary (again to exit now)"
        ));
        let _ = control_tx.send(Control::Stop(format!("interrupted by {name}")));
        signals.next().await;
        crate::tui::restore();
        eprint_line("stampede: second signal, exiting without a summary");
        std::process::exit(3);
    });
}

fn finish(result: Result<RunResult, RunError>) -> i32 {
    match result {
        Ok(result) => result.exit_code,
        Err(e) => {
            eprint_line(&format!("stampede: {e}"));
            e.exit_code()
        }
    }
}

pub async fn run_command(args: RunArgs) -> i32 {
    let (profile, profile_json) = match load_with_json(&args.profile, &args.set) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let name = profile.name.clone();
    let outputs = args.outputs.outputs(&profile_json);
    let workers = args.workers.map(usize::from);
    let play = |attached: Attached| async move {
        match args.agents {
            None => {
                run::execute(RunOptions {
                    profile,
                    outputs,
                    workers,
                    allow_overcommit: args.allow_overcommit,
                    progress: attached.progress,
                    control_rx: attached.control_rx,
                    live_tx: attached.live_tx,
                })
                .await
            }
            Some(agents) => {
                coordinator::local::run(LocalSwarmOptions {
                    profile,
                    profile_json,
                    agents,
                    workers,
                    outputs,
                    progress: attached.progress,
                    control_rx: attached.control_rx,
                    live_tx: attached.live_tx,
                })
                .await
            }
        }
    };
    match under_views(&args.views, &name, play).await {
        Ok(result) => finish(result),
        Err(code) => code,
    }
}

pub async fn coordinator_command(args: CoordinatorArgs) -> i32 {
    let (profile, profile_json) = match load_with_json(&args.profile, &args.set) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let token = match read_token(&args.token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprint_line(&format!(
                "stampede coordinator: --listen {}: cannot listen: {e}",
                args.listen
            ));
            return 2;
        }
    };
    let name = profile.name.clone();
    let outputs = args.outputs.outputs(&profile_json);
    let play = |attached: Attached| {
        coordinator::run(CoordinatorOptions {
            profile,
            profile_json,
            listener,
            agents: usize::from(args.agents),
            token,
            join_timeout: args.join_timeout,
            lease: args.lease,
            allow_synthetic: args.allow_synthetic,
            targets: None,
            outputs,
            progress: attached.progress,
            control_rx: attached.control_rx,
            live_tx: attached.live_tx,
        })
    };
    let result = match under_views(&args.views, &name, play).await {
        Ok(result) => result,
        Err(code) => return code,
    };
    if args.summary_to_log
        && let Ok(result) = &result
    {
        print_summary_json(&result.summary);
    }
    finish(result)
}

/// summary.json between marker lines on stdout (`coordinator --summary-to-log`).
fn print_summary_json(summary: &crate::report::summary::Summary) {
    match serde_json::to_string_pretty(summary) {
        Ok(json) => {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{SUMMARY_BEGIN}\n{json}\n{SUMMARY_END}");
            let _ = out.flush();
        }
        Err(e) => eprint_line(&format!("stampede: cannot print summary.json: {e}")),
    }
}

/// The lines around summary.json in a coordinator's log (`--summary-to-log`).
pub const SUMMARY_BEGIN: &str = "----- BEGIN summary.json -----";
pub const SUMMARY_END: &str = "----- END summary.json -----";
