//! The command line: argument definitions (clap) and the glue from a parsed command to the
//! library. Exit codes: 0 pass, 1 a threshold failed, 2 usage or profile error, 3 aborted.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::agent::session::{self, AgentOptions, Cidr};
use crate::collect::{Outputs, RunResult};
use crate::coordinator::local::{AgentCount, LocalSwarmOptions};
use crate::coordinator::{self, CoordinatorOptions};
use crate::live::{Control, ControlTx};
use crate::profile::Profile;
use crate::report::plan as plan_text;
use crate::run::{self, RunError, RunOptions};
use crate::views::{ViewOptions, Views};
use crate::{doctor, sink};

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
    #[command(after_help = NLB_HELP)]
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

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Profile file (JSON).
    pub profile: PathBuf,
    /// Override a profile field: PATH=VALUE (VALUE is JSON, or a plain string).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Write summary.json, latency.hlog, profile.json and report.html into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// With --out: do not write report.html (`stampede report DIR` writes it later).
    #[arg(long)]
    pub no_report: bool,
    /// Write the thresholds as JUnit test cases to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
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
    /// Write summary.json, latency.hlog, profile.json and report.html into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// With --out: do not write report.html (`stampede report DIR` writes it later).
    #[arg(long)]
    pub no_report: bool,
    /// Write the thresholds as JUnit test cases to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// How long to wait for every agent to join.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration_arg)]
    pub join_timeout: Duration,
    /// Agents stop after this long without a word from the coordinator; agents silent this
    /// long are marked lost. At least 3s (three keepalives); agents refuse more than their
    /// --max-lease (30s by default).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration_arg)]
    pub lease: Duration,
    /// Plain progress lines instead of the live dashboard.
    #[arg(long)]
    pub headless: bool,
    /// No progress lines; only the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Dashboard frames per second.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=60))]
    pub fps: u16,
    /// Serve live Prometheus metrics at http://ADDR/metrics while the run lasts.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// At the end, print summary.json to stdout between `----- BEGIN summary.json -----` and
    /// `----- END summary.json -----` lines, so that it outlives the container (its log).
    #[arg(long)]
    pub summary_to_log: bool,
    /// Let a run with synthetic agents (`agent --synthetic`, made-up figures, no load) pass;
    /// without it such a run fails. For benchmarking the coordinator only.
    #[arg(long)]
    pub allow_synthetic: bool,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Coordinator address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: String,
    /// File with the shared secret; required unless the coordinator is on loopback.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Name in the coordinator's reports (default: the host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Source addresses for this agent, replacing the profile's (addresses, CIDRs, ranges).
    #[arg(long, value_name = "SPEC", value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Targets this agent may load; a plan outside them is refused. Default: loopback only.
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub allow_targets: Vec<String>,
    /// The longest lease this agent accepts from a coordinator (at least 3s); a plan with a
    /// longer one is refused, so no coordinator can make load outlive it by more.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration_arg)]
    pub max_lease: Duration,
    /// Keep dialling a coordinator that is not up yet for this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration_arg)]
    pub retry_for: Duration,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Write this agent's own summary.json and latency.hlog (its share only).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Only errors on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Benchmark mode: join as N synthetic agents that send realistic reports and open no
    /// load sockets (see BENCHMARKS.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub synthetic: Option<u16>,
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    crate::profile::duration::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!(
                "{text:?} is not a duration; expected {}",
                crate::profile::duration::DURATION_HINT
            )
        })
}

#[derive(Args, Debug)]
pub struct SinkArgs {
    /// Address to listen on; repeat for several.
    #[arg(long, value_name = "ADDR", required = true)]
    pub listen: Vec<SocketAddr>,
    /// No per-second stats lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// Serve the admin endpoint (POST /action, GET /stats) on this address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Close each connection this long after it was accepted.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub lifetime: Option<Duration>,
    /// Close held connections, oldest first, at N per second for as long as any are held.
    #[arg(long, value_name = "N", value_parser = parse_close_rate, allow_negative_numbers = true)]
    pub close_rate: Option<f64>,
    /// Run as N processes sharing the addresses (SO_REUSEPORT), each with its own file
    /// limit; this process supervises them and prints their totals.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Protocol to speak: tcp, tls, ws (WebSocket), wss (WebSocket over TLS), mqtt (a
    /// minimal broker: CONNACK, PINGRESP, SUBACK, and PUBLISH routed to the subscribers of
    /// its exact topic within this process), h2 (HTTP/2 cleartext, prior knowledge) or h2s
    /// (HTTP/2 over TLS, ALPN h2).
    #[arg(long, value_name = "NAME", default_value = "tcp")]
    pub protocol: String,
    /// TLS certificate chain (PEM); without --cert/--key a self-signed one is generated.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM) of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,
    /// Write the certificate served (PEM) here, for clients to trust (tls.ca_file).
    #[arg(long, value_name = "FILE")]
    pub cert_out: Option<std::path::PathBuf>,
    /// WebSocket: upgrade only this path; others are answered 404 (default: any path).
    #[arg(long, value_name = "PATH")]
    pub ws_path: Option<String>,
    /// HTTP/2: send a DATA frame stamped with its send time on every open stream this often
    /// (clients time its delivery); without it, only the one frame at stream open.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub push_interval: Option<Duration>,
}

/// Shortest `--push-interval`: a frame per stream per millisecond is already a flood.
const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(1);

/// The sink's protocol settings from its flags.
fn sink_protocol(args: &SinkArgs) -> Result<crate::protocol::SinkProtocol, String> {
    if args.push_interval.is_some() && !matches!(args.protocol.as_str(), "h2" | "h2s") {
        return Err(format!(
            "--push-interval needs --protocol h2 or h2s, not {:?}; remove it or speak HTTP/2",
            args.protocol
        ));
    }
    if let Some(every) = args.push_interval
        && every < MIN_PUSH_INTERVAL
    {
        return Err(format!(
            "--push-interval {every:?} is too short; give at least 1ms"
        ));
    }
    Ok(crate::protocol::SinkProtocol {
        name: args.protocol.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        ws_path: args.ws_path.clone(),
        push_interval: args.push_interval,
    })
}

fn parse_close_rate(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| {
            format!("{text:?} is not a rate; expected closes per second, a number > 0 (e.g. 100)")
        })
}

const NLB_HELP: &str = "Examples:
  stampede nlb --listen 127.0.0.1:7100 --targets 127.0.0.1:7000
  stampede nlb --listen 127.0.0.1:7100 --targets 127.0.0.1:7000,127.0.0.1:7001 --nodes 2 \\
      --ports-per-target 1000 --on-exhaustion reset --admin 127.0.0.1:7101 --metrics-period 5s
  stampede nlb --listen 127.0.0.1:7100 --targets 127.0.0.1:7000 --idle-timeout 2s
  curl -X POST http://127.0.0.1:7101/targets/127.0.0.1:7000/deregister
  curl http://127.0.0.1:7101/metrics

Node k (from 0) sends from 127.100.0.(k+1) unless --node-ips says otherwise; target i is in
zone i mod nodes. With client-IP preservation off, each (node, target) pair has
--ports-per-target source ports and --new-per-minute new allocations a minute; a flow that
finds none is dropped or reset and counts in PortAllocationErrorCount.
The first lines printed are `listening on ADDR` (and `admin on ADDR`), then one JSON line per
node and per target each --metrics-period. The admin endpoint (GET /metrics, GET /metrics.json,
POST /targets/ADDR/register|deregister) has no authentication: keep it on loopback.

Limit: every flow holds two sockets, so one process holds about half its file limit in flows
(about 9,900 with a 20,000 limit). Run one process per node (--nodes 1 --node-ips IP, all on
the same --listen, which SO_REUSEPORT spreads over them, each with its own --admin) to go
further; see README \"NLB emulator\" for a kernel-NAT alternative.";

/// `on` or `off`, as AWS writes target-group attributes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn on(self) -> bool {
        self == OnOff::On
    }
}

fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    crate::profile::duration::parse_duration(text).ok_or_else(|| {
        format!(
            "{text:?} is not a duration; expected {}",
            crate::profile::duration::DURATION_HINT
        )
    })
}

#[derive(Args, Debug)]
pub struct NlbArgs {
    /// Address clients connect to (the load balancer's listener).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Target addresses (IP:PORT), comma-separated or repeated.
    #[arg(long, value_name = "ADDR", value_delimiter = ',', required = true)]
    pub targets: Vec<SocketAddr>,
    /// Load-balancer nodes (one per availability zone).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=254))]
    pub nodes: u16,
    /// Source address of each node, one per node (default 127.100.0.1, 127.100.0.2, ...).
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub node_ips: Vec<std::net::IpAddr>,
    /// Connect to targets from the client's own IP (on) or the node's (off).
    #[arg(long, value_enum, value_name = "on|off", default_value = "off")]
    pub client_ip_preservation: OnOff,
    /// With preservation off: simultaneous flows per (node, target) pair.
    #[arg(long, value_name = "N", default_value_t = 55_000)]
    pub ports_per_target: u32,
    /// With preservation off: new port allocations per (node, target) pair per minute.
    #[arg(long, value_name = "N", default_value_t = 55_000)]
    pub new_per_minute: u32,
    /// Forget a flow with no bytes either way for this long (AWS: 350s; sub-minute values
    /// are allowed for rehearsals and tests).
    #[arg(long, value_name = "DURATION", default_value = "350s", value_parser = parse_duration_arg)]
    pub idle_timeout: Duration,
    /// A flow that gets no port: `drop` (held unanswered, as a dropped SYN looks to a client
    /// that already connected) or `reset`.
    #[arg(long, value_enum, value_name = "drop|reset", default_value = "drop")]
    pub on_exhaustion: crate::nlb::Exhaustion,
    /// Let every node use every target (on), or only its own zone's (off).
    #[arg(long, value_enum, value_name = "on|off", default_value = "off")]
    pub cross_zone: OnOff,
    /// After a deregistration, how long existing flows may continue.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration_or_zero)]
    pub deregistration_delay: Duration,
    /// Close a deregistered target's flows (with resets) when the delay ends.
    #[arg(long, value_enum, value_name = "on|off", default_value = "off")]
    pub connection_termination: OnOff,
    /// Serve the admin endpoint (metrics, register, deregister) on this address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// How often to print the counters as JSON lines on stdout.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration_arg)]
    pub metrics_period: Duration,
    /// No JSON metric lines on stdout.
    #[arg(long, short)]
    pub quiet: bool,
    /// Who carries the flows: `userspace` (a proxy, two sockets per flow, no root) or
    /// `kernel` (nftables and conntrack in a network namespace of its own; root, Linux).
    #[arg(
        long,
        value_enum,
        value_name = "userspace|kernel",
        default_value = "userspace"
    )]
    pub datapath: Datapath,
    /// Kernel datapath: the load balancer's network namespace (also its interfaces' prefix).
    #[arg(long, value_name = "NAME", default_value = "snlb")]
    pub netns: String,
    /// Kernel datapath: N in the 10.N.0.0/16 block its links and client addresses use.
    #[arg(long, value_name = "N", default_value_t = 215)]
    pub kernel_net: u8,
}

/// `stampede nlb --datapath`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datapath {
    Userspace,
    Kernel,
}

#[derive(Args, Debug)]
pub struct SinkAdminArgs {
    /// The sink's admin address (its --admin).
    #[arg(value_name = "ADDR")]
    pub admin: SocketAddr,
    /// What to do.
    #[arg(value_enum, value_name = "ACTION")]
    pub action: SinkAdminAction,
    /// close-fraction: a fraction from 0 to 1; close-rate: closes per second (0 stops);
    /// lifetime: a duration (30s, 5m) or `off`.
    #[arg(value_name = "VALUE", allow_negative_numbers = true)]
    pub value: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkAdminAction {
    CloseAll,
    CloseFraction,
    CloseRate,
    Lifetime,
    StopAccepting,
    StartAccepting,
    Stats,
}

/// The action `sink-admin` sends (None for `stats`), or a usage error naming the value.
pub fn sink_admin_action(
    action: SinkAdminAction,
    value: Option<&str>,
) -> Result<Option<sink::SinkAction>, String> {
    use SinkAdminAction as A;
    use sink::SinkAction as S;
    let possible = clap::ValueEnum::to_possible_value(&action).expect("no action is skipped");
    let name = possible.get_name();
    let wants = match action {
        A::CloseFraction => Some("a fraction from 0 to 1 (e.g. close-fraction 0.5)"),
        A::CloseRate => Some("closes per second, a number >= 0 (e.g. close-rate 100; 0 stops)"),
        A::Lifetime => Some("a duration (e.g. lifetime 30s) or `off`"),
        _ => None,
    };
    let (value, wants) = match (wants, value) {
        (None, None) => ("", ""),
        (None, Some(v)) => return Err(format!("{name} takes no value; got {v:?}")),
        (Some(wants), None) => return Err(format!("{name} needs a value: {wants}")),
        (Some(wants), Some(v)) => (v.trim(), wants),
    };
    let number = || {
        value
            .parse::<f64>()
            .map_err(|_| format!("{name}: {value:?} is not a number; expected {wants}"))
    };
    let chosen = match action {
        A::Stats => return Ok(None),
        A::CloseAll => S::CloseAll,
        A::StopAccepting => S::StopAccepting,
        A::StartAccepting => S::StartAccepting,
        A::CloseFraction => S::CloseFraction {
            fraction: number()?,
        },
        A::CloseRate => S::CloseRate {
            per_second: number()?,
        },
        A::Lifetime => S::Lifetime {
            seconds: match value {
                "off" | "none" | "forever" => None,
                _ => Some(
                    crate::profile::duration::parse_duration(value)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            format!("lifetime: {value:?} is not a duration; expected {wants}")
                        })?
                        .as_secs_f64(),
                ),
            },
        },
    };
    chosen
        .validate()
        .map_err(|_| format!("{name}: {value:?} is out of range; expected {wants}"))?;
    Ok(Some(chosen))
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

fn load_with_json(
    file: &std::path::Path,
    set: &[String],
) -> Result<(Profile, serde_json::Value), i32> {
    Profile::load_with_json(file, set).map_err(|e| {
        eprint_line(&format!("stampede: profile error: {e}"));
        2
    })
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
        Command::Coordinator(args) => coordinator_command(args).await,
        Command::Agent(args) => agent_command(args).await,
        Command::Sink(args) => sink_command(args).await,
        Command::SinkAdmin(args) => sink_admin_command(args).await,
        Command::Nlb(args) => nlb_command(args).await,
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
                crate::tui::restore();
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

/// The dashboard (when wanted and stdout is a terminal) and the metrics endpoint around a run.
async fn start_views(
    wants_dashboard: bool,
    fps: u16,
    metrics_listen: Option<SocketAddr>,
    profile: &str,
    control_tx: ControlTx,
) -> Result<Views, i32> {
    let view_options = ViewOptions {
        dashboard: wants_dashboard && std::io::stdout().is_terminal(),
        fps,
        metrics_listen,
        profile: profile.to_string(),
    };
    Views::start(view_options, control_tx).await.map_err(|e| {
        eprint_line(&format!("stampede: {e}"));
        2
    })
}

async fn run_command(args: RunArgs) -> i32 {
    let (profile, profile_json) = match load_with_json(&args.profile, &args.set) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    watch_signals(control_tx.clone());
    let mut views = match start_views(
        !args.headless && !args.quiet,
        args.fps,
        args.metrics_listen,
        &profile.name,
        control_tx,
    )
    .await
    {
        Ok(views) => views,
        Err(code) => return code,
    };
    let dashboard = views.has_dashboard();
    let options = RunOptions {
        profile,
        outputs: Outputs {
            out_dir: args.out,
            junit: args.junit,
            report: !args.no_report,
            profile_json: Some(profile_json.clone()),
        },
        workers: args.workers.map(usize::from),
        allow_overcommit: args.allow_overcommit,
        progress: views.progress(args.quiet),
        control_rx,
        live_tx: views.live_tx(),
    };
    let run = async move {
        match args.agents {
            None => run::execute(options).await,
            Some(agents) => {
                coordinator::local::run(LocalSwarmOptions {
                    profile: options.profile,
                    profile_json,
                    agents,
                    workers: options.workers,
                    outputs: options.outputs,
                    progress: options.progress,
                    control_rx: options.control_rx,
                    live_tx: options.live_tx,
                })
                .await
            }
        }
    };
    let Some(result) = views.drive(run).await else {
        eprint_line("stampede: left the dashboard while stopping; no summary written");
        return 3;
    };
    if dashboard {
        print_summary(&result);
    }
    finish(result)
}

/// The dashboard kept the run silent: once it has left the screen, the summary goes to stdout
/// as in headless mode.
fn print_summary(result: &Result<RunResult, RunError>) {
    if let Ok(result) = result {
        let mut stdout = std::io::stdout();
        let _ = write!(stdout, "{}", crate::report::text::render(&result.summary));
        let _ = stdout.flush();
    }
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

fn token(file: &Option<PathBuf>) -> Result<Option<Vec<u8>>, i32> {
    match file {
        None => Ok(None),
        Some(path) => crate::wire::read_token(path).map(Some).map_err(|e| {
            eprint_line(&format!("stampede: {e}"));
            2
        }),
    }
}

async fn coordinator_command(args: CoordinatorArgs) -> i32 {
    let (profile, profile_json) = match load_with_json(&args.profile, &args.set) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let token = match token(&args.token_file) {
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
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    watch_signals(control_tx.clone());
    let mut views = match start_views(
        !args.headless && !args.quiet,
        args.fps,
        args.metrics_listen,
        &profile.name,
        control_tx,
    )
    .await
    {
        Ok(views) => views,
        Err(code) => return code,
    };
    let dashboard = views.has_dashboard();
    let run = coordinator::run(CoordinatorOptions {
        profile,
        profile_json: profile_json.clone(),
        listener,
        agents: usize::from(args.agents),
        token,
        join_timeout: args.join_timeout,
        lease: args.lease,
        allow_synthetic: args.allow_synthetic,
        targets: None,
        outputs: Outputs {
            out_dir: args.out,
            junit: args.junit,
            report: !args.no_report,
            profile_json: Some(profile_json.clone()),
        },
        progress: views.progress(args.quiet),
        control_rx,
        live_tx: views.live_tx(),
    });
    let Some(result) = views.drive(run).await else {
        eprint_line("stampede: left the dashboard while stopping; no summary written");
        return 3;
    };
    if dashboard {
        print_summary(&result);
    }
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

async fn agent_command(args: AgentArgs) -> i32 {
    let token = match token(&args.token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mut allow_targets = Vec::new();
    for text in &args.allow_targets {
        match Cidr::parse(text) {
            Ok(c) => allow_targets.push(c),
            Err(e) => {
                eprint_line(&format!("stampede agent: --allow-targets {e}"));
                return 2;
            }
        }
    }
    if allow_targets.is_empty() {
        allow_targets = session::loopback_only();
    }
    if args.max_lease < crate::wire::MIN_LEASE {
        eprint_line(&format!(
            "stampede agent: --max-lease {:?} is under {:?} (3 keepalive intervals); no coordinator could be followed",
            args.max_lease,
            crate::wire::MIN_LEASE
        ));
        return 2;
    }
    for spec in &args.sources {
        if let Err(e) = crate::profile::sources::expand(spec) {
            eprint_line(&format!("stampede agent: --sources {spec:?}: {e}"));
            return 2;
        }
    }
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let options = AgentOptions {
        coordinator: args.coordinator,
        token,
        name: name.clone(),
        sources: args.sources,
        allow_targets,
        max_lease: args.max_lease,
        retry_for: args.retry_for,
        workers: args.workers.map(usize::from),
        outputs: Outputs {
            out_dir: args.out,
            junit: None,
            // An agent's --out holds its share only; the coordinator reports the run.
            report: false,
            profile_json: None,
        },
        quiet: args.quiet,
        synthetic: args.synthetic.is_some(),
    };
    let result = match args.synthetic {
        Some(count) => crate::agent::synthetic::run(options, usize::from(count)).await,
        None => session::run(options).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprint_line(&format!("stampede agent {name}: {}", e.message));
            e.code
        }
    }
}

async fn sink_command(args: SinkArgs) -> i32 {
    if let Some(workers) = args.workers.filter(|n| *n > 1) {
        return sink_workers_command(args, usize::from(workers)).await;
    }
    if let Err(e) = crate::host::raise_fd_limit() {
        eprint_line(&format!("stampede sink: cannot raise RLIMIT_NOFILE: {e}"));
    }
    let (acceptor, cert) = match sink_protocol(&args).and_then(|p| p.acceptor()) {
        Ok(built) => built,
        Err(e) => {
            eprint_line(&format!("stampede sink: {e}"));
            return 2;
        }
    };
    if let Some(path) = &args.cert_out {
        let Some(cert) = &cert else {
            eprint_line(&format!(
                "stampede sink: --cert-out needs a TLS protocol (tls, wss or h2s), not {:?}",
                args.protocol
            ));
            return 2;
        };
        if let Err(e) = std::fs::write(path, crate::protocol::tls::pem(cert)) {
            eprint_line(&format!(
                "stampede sink: --cert-out {}: cannot write: {e}",
                path.display()
            ));
            return 2;
        }
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
    let control = sink::SinkControl::new();
    if let Some(lifetime) = args.lifetime {
        control.apply(&sink::SinkAction::Lifetime {
            seconds: Some(lifetime.as_secs_f64()),
        });
    }
    if let Some(per_second) = args.close_rate {
        control.apply(&sink::SinkAction::CloseRate { per_second });
    }
    let stats = Arc::new(sink::SinkStats::default());
    if let Some(addr) = args.admin {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) => {
                eprint_line(&format!(
                    "stampede sink: --admin {addr}: cannot listen: {e}; choose a free port or an address of this host"
                ));
                return 2;
            }
        };
        let bound = listener.local_addr().map_or(addr, |a| a);
        println!("admin on {bound}");
        if !bound.ip().is_loopback() {
            eprint_line(&format!(
                "stampede sink: the admin endpoint on {bound} has no authentication; anyone who reaches it can close connections"
            ));
        }
        tokio::spawn(sink::serve_admin(
            listener,
            control.clone(),
            stats.clone(),
            std::future::pending(),
        ));
    }
    let _ = std::io::stdout().flush();
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
    sink::run_protocol(listeners, stats, control, acceptor, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    0
}

/// `sink --workers N`: supervise N sink processes until Ctrl-C or SIGTERM.
async fn sink_workers_command(args: SinkArgs, workers: usize) -> i32 {
    if let Some(admin) = args.admin {
        eprint_line(&format!(
            "stampede sink: --admin {admin} with --workers {workers}: actions are not forwarded to worker processes yet; run sinks with --admin one process each, or drop --workers"
        ));
        return 2;
    }
    let mut pass_on = match sink_protocol(&args) {
        Ok(protocol) => protocol.flags(),
        Err(e) => {
            eprint_line(&format!("stampede sink: {e}"));
            return 2;
        }
    };
    // Every worker must serve the same certificate: check the given one here (bad input is
    // exit 2 before any worker starts), or make one self-signed pair for all of them.
    let _cert_dir = match sink_workers_certificate(&args) {
        Ok(Some((dir, cert, key))) => {
            pass_on.extend(["--cert".to_string(), cert, "--key".to_string(), key]);
            dir
        }
        Ok(None) => None,
        Err(e) => {
            eprint_line(&format!("stampede sink: {e}"));
            return 2;
        }
    };
    if let Some(lifetime) = args.lifetime {
        pass_on.extend([
            "--lifetime".to_string(),
            format!("{}ms", lifetime.as_millis()),
        ]);
    }
    if let Some(rate) = args.close_rate {
        pass_on.extend(["--close-rate".to_string(), rate.to_string()]);
    }
    let start = sink::workers::WorkerArgs {
        listen: args.listen.clone(),
        pass_on,
        workers,
    };
    // Started on this runtime thread, not in spawn_blocking: PR_SET_PDEATHSIG fires when the
    // *thread* that forked a child exits, and idle blocking-pool threads exit after 10 s.
    // Nothing else runs yet, so blocking here while the workers start costs nothing.
    let mut running = match sink::workers::start(&start) {
        Ok(running) => running,
        Err(e) => {
            eprint_line(&format!("stampede sink: {e}"));
            return if e.starts_with("--listen") { 2 } else { 3 };
        }
    };
    for addr in &running.listening {
        println!("listening on {addr}");
    }
    println!("workers {}", running.len());
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let stop = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut previous = (0, 0);
    let mut reported = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let exited = running.exited();
        for (index, status) in exited.iter().skip(reported) {
            eprint_line(&format!(
                "stampede sink: worker {index} exited ({status}); its connections are gone"
            ));
        }
        reported = reported.max(exited.len());
        if exited.len() == running.len() {
            eprint_line("stampede sink: every worker has exited");
            return 3;
        }
        if !args.quiet {
            let (total, answered) = running.totals().await;
            eprint_line(&format!(
                "sink: open {} accepted/s {} bytes/s {} accepted {} accept_errors {} workers {answered}/{}",
                total.open,
                total.accepted.saturating_sub(previous.0),
                total.bytes.saturating_sub(previous.1),
                total.accepted,
                total.accept_errors,
                running.len(),
            ));
            previous = (total.accepted, total.bytes);
        }
    }
    drop(running);
    0
}

/// For `sink --workers` with TLS: the `--cert` and `--key` every worker gets, after
/// `--cert-out` is written; generated files are removed when the returned value is dropped.
/// `None` for protocols without TLS.
fn sink_workers_certificate(
    args: &SinkArgs,
) -> Result<
    Option<(
        Option<crate::protocol::tls::SelfSignedFiles>,
        String,
        String,
    )>,
    String,
> {
    let (_, served) = sink_protocol(args)?.acceptor()?;
    let Some(served) = served else {
        return match &args.cert_out {
            Some(_) => Err(format!(
                "--cert-out needs a TLS protocol (tls, wss or h2s), not {:?}",
                args.protocol
            )),
            None => Ok(None),
        };
    };
    let (files, cert, key, pem) = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => (
            None,
            cert.display().to_string(),
            key.display().to_string(),
            crate::protocol::tls::pem(&served),
        ),
        // The workers serve one generated pair, not the one `acceptor` made for the check.
        _ => {
            let files = crate::protocol::tls::SelfSignedFiles::create("sink")?;
            let pem = files.cert_pem()?;
            let (cert, key) = (
                files.cert.display().to_string(),
                files.key.display().to_string(),
            );
            (Some(files), cert, key, pem)
        }
    };
    if let Some(path) = &args.cert_out {
        std::fs::write(path, pem)
            .map_err(|e| format!("--cert-out {}: cannot write: {e}", path.display()))?;
    }
    Ok(Some((files, cert, key)))
}

async fn sink_admin_command(args: SinkAdminArgs) -> i32 {
    let action = match sink_admin_action(args.action, args.value.as_deref()) {
        Ok(action) => action,
        Err(e) => {
            eprint_line(&format!("stampede sink-admin: {e}"));
            return 2;
        }
    };
    let result = match &action {
        Some(action) => sink::admin_apply(args.admin, action).await,
        None => sink::admin_stats(args.admin).await,
    };
    match result.and_then(|status| serde_json::to_string(&status).map_err(|e| e.to_string())) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprint_line(&format!("stampede sink-admin: {e}"));
            1
        }
    }
}

async fn nlb_command(args: NlbArgs) -> i32 {
    let nodes = usize::from(args.nodes);
    let node_ips = if args.node_ips.is_empty() {
        crate::nlb::default_node_ips(nodes)
    } else if args.node_ips.len() == nodes {
        args.node_ips.clone()
    } else {
        eprint_line(&format!(
            "stampede nlb: --node-ips: {} addresses for --nodes {nodes}; give one per node",
            args.node_ips.len()
        ));
        return 2;
    };
    let config = crate::nlb::NlbConfig {
        targets: args.targets.clone(),
        node_ips,
        client_ip_preservation: args.client_ip_preservation.on(),
        ports_per_target: args.ports_per_target,
        new_per_minute: args.new_per_minute,
        idle_timeout: args.idle_timeout,
        on_exhaustion: args.on_exhaustion,
        cross_zone: args.cross_zone.on(),
        deregistration_delay: args.deregistration_delay,
        connection_termination: args.connection_termination.on(),
    };
    if let Err(e) = config.validate() {
        eprint_line(&format!("stampede nlb: {e}"));
        return 2;
    }
    if args.datapath == Datapath::Kernel {
        return nlb_kernel_command(&args, config).await;
    }
    if let Err(e) = crate::host::raise_fd_limit() {
        eprint_line(&format!("stampede nlb: cannot raise RLIMIT_NOFILE: {e}"));
    }
    let listener = match sink::bind(args.listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprint_line(&format!(
                "stampede nlb: --listen {}: cannot listen: {e}; choose a free port or an address of this host",
                args.listen
            ));
            return 2;
        }
    };
    let admin = match args.admin {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprint_line(&format!(
                    "stampede nlb: --admin {addr}: cannot listen: {e}; choose a free port or an address of this host"
                ));
                return 2;
            }
        },
    };
    let range = crate::host::ephemeral_port_range();
    let kernel_ports = u32::from(range.last.saturating_sub(range.first)) + 1;
    if !config.client_ip_preservation && config.ports_per_target > kernel_ports {
        eprint_line(&format!(
            "stampede nlb: --ports-per-target {} is above this host's ephemeral range \
             ({}-{}, {kernel_ports} ports): the kernel will run out first (also counted as \
             port allocation errors); widen net.ipv4.ip_local_port_range for an exact wall",
            config.ports_per_target, range.first, range.last
        ));
    }
    let nlb = crate::nlb::Nlb::new(config);
    println!(
        "listening on {}",
        listener.local_addr().map_or(args.listen, |a| a)
    );
    if let Some(admin) = admin {
        let bound = admin.local_addr().ok();
        if let Some(bound) = bound {
            println!("admin on {bound}");
        }
        tokio::spawn(crate::nlb::serve_admin(
            admin,
            nlb.clone(),
            std::future::pending(),
        ));
    }
    let _ = std::io::stdout().flush();
    if !args.quiet {
        tokio::spawn(crate::nlb::report_metrics(
            nlb.clone(),
            args.metrics_period,
            |lines| {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(lines.as_bytes());
                let _ = stdout.flush();
            },
        ));
    }
    crate::nlb::run(listener, nlb, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    0
}

/// `stampede nlb --datapath kernel`: builds the namespace and rules, serves the same admin
/// endpoint and metric lines, and removes everything on SIGINT or SIGTERM.
async fn nlb_kernel_command(args: &NlbArgs, config: crate::nlb::NlbConfig) -> i32 {
    use crate::nlb::kernel::{KernelNlb, KernelPlan};
    if !args.node_ips.is_empty() {
        eprint_line(
            "stampede nlb: --node-ips: the kernel datapath numbers its nodes itself \
             (10.N.1.10 and up); leave --node-ips out",
        );
        return 2;
    }
    let plan = match KernelPlan::new(&args.netns, args.kernel_net, args.listen, config) {
        Ok(plan) => plan,
        Err(e) => {
            eprint_line(&format!("stampede nlb: {e}"));
            return 2;
        }
    };
    let admin = match args.admin {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprint_line(&format!(
                    "stampede nlb: --admin {addr}: cannot listen: {e}; choose a free port or an address of this host"
                ));
                return 2;
            }
        },
    };
    // Before anything is built, so that a signal at any moment after it tears down.
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    async fn recv(s: &mut Option<Signal>) -> Option<()> {
        match s.as_mut() {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        }
    }
    let nlb = match tokio::task::spawn_blocking(move || KernelNlb::start(plan)).await {
        Ok(Ok(nlb)) => nlb,
        Ok(Err(e)) => {
            eprint_line(&format!("stampede nlb: --datapath kernel: {e}"));
            return 2;
        }
        Err(e) => {
            eprint_line(&format!("stampede nlb: --datapath kernel: {e}"));
            return 3;
        }
    };
    let plan = nlb.plan();
    println!(
        "listening on {} (kernel datapath, namespace {})",
        plan.vip, plan.netns
    );
    println!(
        "clients bind {} (sources.addrs); node IPs {}",
        plan.client_range(),
        (0..plan.nodes)
            .map(|k| plan.node_ip(k).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(admin) = admin {
        if let Ok(bound) = admin.local_addr() {
            println!("admin on {bound}");
        }
        tokio::spawn(crate::nlb::serve_admin(
            admin,
            nlb.clone(),
            std::future::pending(),
        ));
    }
    let _ = std::io::stdout().flush();
    if !args.quiet {
        tokio::spawn(crate::nlb::report_metrics(
            nlb.clone(),
            args.metrics_period,
            |lines| {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(lines.as_bytes());
                let _ = stdout.flush();
            },
        ));
    }
    tokio::select! {
        Some(()) = recv(&mut interrupt) => {}
        Some(()) = recv(&mut term) => {}
    }
    nlb.teardown();
    eprint_line(&format!(
        "stampede nlb: removed namespace {} and its routes",
        nlb.plan().netns
    ));
    0
}
