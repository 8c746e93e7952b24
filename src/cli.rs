//! The command line: the commands (clap) and their dispatch. Each long-running command's flags
//! and the glue from them to the library live in a file of their own below (`cli/run.rs` for
//! `run` and `coordinator`, `cli/agent.rs`, `cli/sink.rs`, `cli/nlb.rs`); `cli/signal.rs` is
//! how all of them hear SIGINT and SIGTERM.
//! Exit codes: 0 pass, 1 a threshold failed, 2 usage or profile error, 3 aborted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::doctor;
use crate::doctor::plan as plan_text;
use crate::profile::Profile;

mod agent;
mod nlb;
mod run;
mod signal;
mod sink;

pub use agent::AgentArgs;
pub use nlb::NlbArgs;
pub use run::{CoordinatorArgs, RunArgs, SUMMARY_BEGIN, SUMMARY_END};
pub use sink::{SinkAdminArgs, SinkArgs, sink_admin_action};

const ABOUT: &str = "Load-test harness for massive numbers of always-on connections.\n\n\
Opens, holds and measures hundreds of thousands of connections from many source addresses, \
against a gateway or the built-in sink, and gates CI on thresholds.";

const EXAMPLES: &str = "Examples:
  stampede run profiles/smoke.json
  stampede run profiles/smoke.json --set connections=5000 --set heartbeat.interval=5s --out results/
  stampede profile check profiles/many-sources.json
  stampede sink --listen 127.0.0.1:7000 --admin 127.0.0.1:7001
  stampede sink-admin 127.0.0.1:7001 close-fraction 0.5
  stampede nlb --listen 127.0.0.1:7100 --targets 127.0.0.1:7000 --admin 127.0.0.1:7101
  stampede doctor profiles/smoke.json
  stampede report results/
  stampede compare baseline/ results/ --fail-if 'connect_p99 > +10%'

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
  stampede sink --listen 127.0.0.1:7000 --admin 127.0.0.1:7001
  stampede sink --listen 127.0.0.1:7000 --lifetime 30s --close-rate 100
  stampede sink --listen 127.0.0.1:7000 --workers 60 --quiet   # ~1 M connections
  stampede sink --listen 127.0.0.1:7443 --protocol tls --cert-out sink.pem
  stampede sink --listen 127.0.0.1:7080 --protocol ws --ws-path /push
  stampede sink --listen 127.0.0.1:7090 --protocol h2 --push-interval 1s
  stampede sink --listen 127.0.0.1:7091 --protocol h2s --cert-out sink.pem

Several sink processes may listen on the same address (SO_REUSEPORT) to hold more
connections than one process's file limit allows; --workers N starts N of them and
prints their totals. SO_REUSEPORT spreads connections by hash, not evenly: give each
worker about 10 % headroom below its file limit. The first line printed is
`listening on ADDR` for each address, then `admin on ADDR` with --admin, so scripts
can wait for them. The admin endpoint has no authentication: keep it on loopback or
a private network. Drive it with `stampede sink-admin`.")]
    Sink(SinkArgs),
    /// Emulate an AWS Network Load Balancer in front of targets (an L4 TCP proxy).
    #[command(after_help = nlb::NLB_HELP)]
    Nlb(NlbArgs),
    /// Tell a running sink to close connections or stop or resume accepting (its --admin).
    #[command(after_help = "Examples:
  stampede sink-admin 127.0.0.1:7001 stats
  stampede sink-admin 127.0.0.1:7001 close-all
  stampede sink-admin 127.0.0.1:7001 close-fraction 0.5
  stampede sink-admin 127.0.0.1:7001 close-rate 100
  stampede sink-admin 127.0.0.1:7001 close-rate 0
  stampede sink-admin 127.0.0.1:7001 lifetime 30s
  stampede sink-admin 127.0.0.1:7001 lifetime off
  stampede sink-admin 127.0.0.1:7001 stop-accepting
  stampede sink-admin 127.0.0.1:7001 start-accepting

Prints the sink's state after the action as JSON (open, accepted, accepting, ...).
Exit codes: 0 done, 1 the sink could not be reached or refused, 2 usage error.")]
    SinkAdmin(SinkAdminArgs),
    /// Work with profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Drive a swarm of agents through a profile and merge what they measure.
    #[command(after_help = "Examples:
  stampede coordinator gateway.json --listen 127.0.0.1:7700 --agents 3
  stampede coordinator gateway.json --listen 0.0.0.0:7700 --agents 40 --token-file /etc/stampede/token --out results/

The profile must list its targets (target.addrs): \"embedded\" needs a sink beside the agents,
which `stampede run --agents N` starts on one host. Without --token-file only loopback agents
are admitted and only a loopback --listen is allowed.
Exit codes as for `run`: 0 pass, 1 a threshold failed, 2 usage or plan error, 3 aborted.")]
    Coordinator(CoordinatorArgs),
    /// Join a coordinator and play a share of its profile.
    #[command(after_help = "Examples:
  stampede agent --coordinator 127.0.0.1:7700
  stampede agent --coordinator coord.internal:7700 --token-file /etc/stampede/token \\
      --name edge-a1 --sources 10.1.0.10-10.1.0.40 --allow-targets 10.2.0.0/16

The agent retries until the coordinator is up (--retry-for). If it hears nothing from the
coordinator for the lease (5 s by default), it closes every connection and exits with code 3.")]
    Agent(AgentArgs),
    /// Check this host's limits, and with a profile, whether its plan fits here.
    #[command(after_help = "Examples:
  stampede doctor
  stampede doctor profiles/many-sources.json --set connections=100000")]
    Doctor(DoctorArgs),
    /// Write the HTML report of a finished run (its --out directory).
    #[command(after_help = "Examples:
  stampede report results/
  stampede report results/ --html /tmp/rehearsal.html

One self-contained file (inline SVG charts, no scripts, nothing fetched): open it from disk or
a CI artifact. `run` and `coordinator` write DIR/report.html themselves with --out (unless
--no-report).
Exit codes: 0 written, 2 the directory holds no readable run, 3 the report cannot be written.")]
    Report(ReportArgs),
    /// Compare two runs figure by figure and gate on regressions.
    #[command(after_help = "Examples:
  stampede compare baseline/ results/
  stampede compare baseline/summary.json results/ --fail-if 'connect_p99 > +10%' \\
      --fail-if 'established_ratio < -0.001' --fail-if 'phases.2.recovery_100_s > +2s' \\
      --junit compare.xml --html compare.html

A gate `METRIC OP CHANGE` regresses when NEW minus BASE satisfies it; CHANGE is a signed
number in the figure's unit, a time (+5ms, +2s) or a percentage of BASE (+10%). Figures are
named as in profile thresholds; without gates every figure is listed and nothing judged. A
gate on a figure one run lacks (no samples) regresses: it cannot be shown not to. A NEW run
that did not pass its own thresholds regresses too. Runs of different profiles, or of one
profile with different settings, are refused unless --allow-different-profiles.
Exit codes: 0 no regression, 1 a regression, 2 bad input (unreadable run, bad gate,
different profiles), 3 an output cannot be written.")]
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run's --out directory (summary.json, latency.hlog, profile.json).
    pub dir: PathBuf,
    /// Where to write the page (default DIR/report.html).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The baseline: an --out directory or its summary.json.
    pub base: PathBuf,
    /// The run to judge: an --out directory or its summary.json.
    pub new: PathBuf,
    /// Regression gate 'METRIC OP CHANGE', e.g. 'connect_p99 > +10%' (repeatable).
    #[arg(long = "fail-if", value_name = "GATE")]
    pub fail_if: Vec<String>,
    /// Write the gates as JUnit test cases to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write both runs on the same axes as a self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Compare runs of different profiles or settings (refused by default: their figures differ
    /// in meaning).
    #[arg(long)]
    pub allow_different_profiles: bool,
}

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Validate a profile and print its expanded plan.
    #[command(after_help = "Examples:
  stampede profile check profiles/smoke.json
  stampede profile check profiles/smoke.json --set connections=50000
  stampede profile check gateway.json --agents 8    # one agent's share of 8")]
    Check {
        /// Profile file (JSON).
        file: PathBuf,
        /// Override a profile field: PATH=VALUE.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Exit 0 even when the plan does not fit this host (the warning stays).
        #[arg(long)]
        allow_overcommit: bool,
        /// Check the largest share of a swarm of N agents of equal capacity, each on a host
        /// like this one, instead of the whole plan.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        agents: Option<u16>,
    },
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Profile to size against this host.
    pub profile: Option<PathBuf>,
    /// Override a profile field: PATH=VALUE.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Exit 0 even when the plan does not fit this host (the verdict stays).
    #[arg(long)]
    pub allow_overcommit: bool,
}

fn eprint_line(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn load_with_json(file: &Path, set: &[String]) -> Result<(Profile, serde_json::Value), i32> {
    Profile::load_with_json(file, set).map_err(|e| {
        eprint_line(&format!("stampede: profile error: {e}"));
        2
    })
}

fn load(file: &Path, set: &[String]) -> Result<Profile, i32> {
    Profile::load(file, set).map_err(|e| {
        eprint_line(&format!("stampede: profile error: {e}"));
        2
    })
}

/// The shared secret in `--token-file`, or exit code 2.
fn read_token(file: &Option<PathBuf>) -> Result<Option<Vec<u8>>, i32> {
    match file {
        None => Ok(None),
        Some(path) => crate::wire::read_token(path).map(Some).map_err(|e| {
            eprint_line(&format!("stampede: {e}"));
            2
        }),
    }
}

/// A command's `--admin` listener when it asks for one, or exit code 2 with the reason.
async fn bind_admin(
    command: &str,
    addr: Option<SocketAddr>,
) -> Result<Option<tokio::net::TcpListener>, i32> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) => Err(cannot_listen(command, "--admin", addr, &e)),
    }
}

/// Says why `flag ADDR` cannot be listened on and what to do; the exit code, 2.
fn cannot_listen(command: &str, flag: &str, addr: SocketAddr, e: &std::io::Error) -> i32 {
    eprint_line(&format!(
        "stampede {command}: {flag} {addr}: cannot listen: {e}; choose a free port or an address of this host"
    ));
    2
}

/// A duration flag (`30s`, `5m`, `1h30m`); zero is refused.
fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration_or_zero(text).and_then(|d| {
        if d.is_zero() {
            Err(format!(
                "{text:?} is not a duration; expected {}",
                crate::profile::duration::DURATION_HINT
            ))
        } else {
            Ok(d)
        }
    })
}

/// A duration flag where zero means "none" (`--deregistration-delay 0s`).
fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    crate::profile::duration::parse_duration(text).ok_or_else(|| {
        format!(
            "{text:?} is not a duration; expected {}",
            crate::profile::duration::DURATION_HINT
        )
    })
}

/// Runs a parsed command; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => run::run_command(args).await,
        Command::Coordinator(args) => run::coordinator_command(args).await,
        Command::Agent(args) => agent::agent_command(args).await,
        Command::Sink(args) => sink::sink_command(args).await,
        Command::SinkAdmin(args) => sink::sink_admin_command(args).await,
        Command::Nlb(args) => nlb::nlb_command(args).await,
        Command::Report(args) => crate::report::html::command(&args.dir, args.html.as_deref()),
        Command::Compare(args) => {
            crate::report::compare::command(crate::report::compare::CompareOptions {
                base: args.base,
                new: args.new,
                fail_if: args.fail_if,
                junit: args.junit,
                html: args.html,
                allow_different_profiles: args.allow_different_profiles,
            })
        }
        Command::Profile(ProfileCommand::Check {
            file,
            set,
            allow_overcommit,
            agents,
        }) => match load(&file, &set) {
            Ok(profile) => {
                let check = match agents.map(usize::from) {
                    None => plan_text::render(&profile),
                    Some(n) => {
                        // Ties go to the lower index: agent 0's share is the largest.
                        let share = profile.share(&vec![1; n], 0);
                        println!(
                            "share       agent 1 of {n} of equal capacity (the largest share): {} of {} connections",
                            share.connections, profile.connections
                        );
                        plan_text::render(&share)
                    }
                };
                print!("{}", check.text);
                overcommit_exit(check.fits, allow_overcommit)
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
            overcommit_exit(report.exit_code == 0, args.allow_overcommit)
        }
    }
}

/// Exit 1 for a plan that does not fit this host, unless the user accepts the overcommit.
fn overcommit_exit(fits: bool, allow_overcommit: bool) -> i32 {
    if fits {
        return 0;
    }
    if allow_overcommit {
        eprintln!(
            "stampede: the plan does not fit (see above); going on as --allow-overcommit asks"
        );
        return 0;
    }
    eprintln!(
        "stampede: the plan does not fit this host (see above): exit 1; apply the fixes, or pass --allow-overcommit to accept it"
    );
    1
}
