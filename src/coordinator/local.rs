//! `stampede run --agents N|auto`: a whole swarm on this host. A coordinator on loopback, N
//! agent child processes of this same binary, and for `"target": "embedded"` enough sink
//! processes to hold the other ends. This is how one host goes past one process's file limit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

use super::CoordinatorOptions;
use crate::agent::pool::SourcePool;
use crate::collect::{Outputs, Progress, RunResult};
use crate::host;
use crate::live::{ControlRx, LiveTx};
use crate::profile::{Profile, TargetSpec};
use crate::stage::RunError;

/// How many agent processes: a number, or enough for the file limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentCount {
    Exactly(usize),
    Auto,
}

impl std::str::FromStr for AgentCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(AgentCount::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(AgentCount::Exactly(n)),
            _ => Err(format!(
                "{s:?} is not a number of agents (1-1024) or \"auto\""
            )),
        }
    }
}

pub struct LocalSwarmOptions {
    pub profile: Profile,
    pub profile_json: Value,
    pub agents: AgentCount,
    pub workers: Option<usize>,
    pub outputs: Outputs,
    pub progress: Progress,
    pub control_rx: ControlRx,
    pub live_tx: Option<LiveTx>,
}

/// Children that are killed when dropped, so nothing outlives the run.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn per_process_capacity() -> Result<u64, RunError> {
    let limit = host::raise_fd_limit()
        .map_err(|e| RunError::Fatal(format!("cannot read RLIMIT_NOFILE: {e}")))?;
    Ok(limit.soft.saturating_sub(host::FD_RESERVE).max(1))
}

/// Starts `count` sink processes sharing one loopback port; returns the port's address.
/// The sink processes' protocol flags for `profile`, and for TLS the certificate and key
/// files they share (written here, so that every sink serves the same certificate and the
/// agents can trust it).
struct SinkFlags {
    args: Vec<String>,
    /// The certificate agents must trust, when the sinks speak TLS.
    ca_file: Option<PathBuf>,
    /// Removes the certificate files when the run ends.
    _files: Option<crate::protocol::tls::SelfSignedFiles>,
}

fn sink_flags(profile: &crate::profile::Profile) -> Result<SinkFlags, RunError> {
    let protocol = crate::protocol::SinkProtocol::for_profile(profile);
    let mut args = protocol.flags();
    if !protocol.uses_tls() {
        return Ok(SinkFlags {
            args,
            ca_file: None,
            _files: None,
        });
    }
    let files = crate::protocol::tls::SelfSignedFiles::create("swarm")
        .map_err(|e| RunError::Fatal(format!("cannot prepare the sinks' certificate: {e}")))?;
    let cert_file = files.cert.clone();
    args.extend([
        "--cert".to_string(),
        files.cert.display().to_string(),
        "--key".to_string(),
        files.key.display().to_string(),
    ]);
    Ok(SinkFlags {
        args,
        ca_file: Some(cert_file),
        _files: Some(files),
    })
}

fn start_sinks(
    count: u64,
    flags: &SinkFlags,
    children: &mut Children,
) -> Result<SocketAddr, RunError> {
    let exe = std::env::current_exe()
        .map_err(|e| RunError::Fatal(format!("cannot find this program: {e}")))?;
    let mut addr: Option<SocketAddr> = None;
    for _ in 0..count {
        let listen = addr.map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let mut child = Command::new(&exe)
            .args(["sink", "--quiet", "--listen", &listen])
            .args(&flags.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| RunError::Fatal(format!("cannot start a sink process: {e}")))?;
        let stdout = child.stdout.take();
        children.0.push(child);
        let mut line = String::new();
        if let Some(stdout) = stdout {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let bound: SocketAddr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| RunError::Fatal(format!("a sink process did not start: {line:?}")))?;
        addr = Some(bound);
    }
    addr.ok_or_else(|| RunError::Fatal("no sink process started".into()))
}

pub async fn run(options: LocalSwarmOptions) -> Result<RunResult, RunError> {
    let profile = &options.profile;
    let peak = profile.peak_connections();
    let per_process = per_process_capacity()?;
    let agents = match options.agents {
        AgentCount::Exactly(n) => n,
        AgentCount::Auto => peak.div_ceil(per_process).max(1) as usize,
    };
    // Agents on one host share its source ports: check the whole plan against one pool.
    let embedded = profile.target == TargetSpec::Embedded;
    let targets: Vec<SocketAddr> = match &profile.target {
        TargetSpec::Embedded => vec![SocketAddr::from(([127, 0, 0, 1], 1))],
        TargetSpec::Addrs(a) => a.clone(),
    };
    let pool = SourcePool::new(&profile.sources, &targets, host::ephemeral_port_range())
        .map_err(|e| RunError::Plan(e.to_string()))?;
    pool.check(peak)
        .map_err(|e| RunError::Plan(e.to_string()))?;
    if per_process * (agents as u64) < peak {
        return Err(RunError::Plan(format!(
            "{agents} agent process(es) hold at most {} connections here ({per_process} each), the plan needs {peak}; use --agents {} or --agents auto",
            per_process * agents as u64,
            peak.div_ceil(per_process)
        )));
    }

    let mut children = Children(Vec::new());
    let mut profile_json = options.profile_json.clone();
    // Declared before the sinks, so their certificate files outlive them.
    let mut sink_files = None;
    let target_override = if embedded {
        // SO_REUSEPORT spreads connections by hash, not evenly: with sinks filled to the limit
        // on average, some would overflow. A tenth of headroom covers the spread (a few
        // standard deviations of a binomial at these counts).
        let sinks = (peak + peak / 10).div_ceil(per_process).max(1);
        let flags = sink_flags(profile)?;
        // The agents trust the sinks' certificate as a run trusts its embedded sink's.
        let verify = profile
            .protocol_options
            .tls
            .as_ref()
            .is_some_and(|t| t.verify);
        if let (Some(ca_file), true) = (&flags.ca_file, verify)
            && profile_json
                .get("tls")
                .and_then(|t| t.get("ca_file"))
                .is_none()
        {
            if !profile_json.get("tls").is_some_and(Value::is_object) {
                profile_json["tls"] = serde_json::json!({});
            }
            profile_json["tls"]["ca_file"] = Value::from(ca_file.display().to_string());
        }
        let addr = start_sinks(sinks, &flags, &mut children)?;
        sink_files = Some(flags);
        Some(vec![addr])
    } else {
        None
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| RunError::Fatal(format!("cannot listen for agents: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::Fatal(format!("listener has no address: {e}")))?;
    let exe = std::env::current_exe()
        .map_err(|e| RunError::Fatal(format!("cannot find this program: {e}")))?;
    // Give each agent its own source addresses when there are enough to go round.
    let addrs = &profile.sources.addrs;
    for index in 0..agents {
        let mut command = Command::new(&exe);
        command
            .args([
                "agent",
                "--quiet",
                "--coordinator",
                &addr.to_string(),
                "--name",
                &format!("local-{index}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // The agents play this user's own profile, as `run` alone would: every address it
        // names is allowed, and nothing else (loopback stays allowed, as by default).
        let mut allowed: Vec<String> = vec!["127.0.0.0/8".into(), "::1/128".into()];
        for a in profile.addresses() {
            let ip = a.addr.ip();
            let cidr = if ip.is_ipv4() {
                format!("{ip}/32")
            } else {
                format!("{ip}/128")
            };
            if !allowed.contains(&cidr) {
                allowed.push(cidr);
            }
        }
        command.arg("--allow-targets").arg(allowed.join(","));
        if addrs.len() >= agents {
            let mine: Vec<String> = addrs
                .iter()
                .enumerate()
                .filter(|(i, _)| i % agents == index)
                .map(|(_, ip)| ip.to_string())
                .collect();
            command.arg("--sources").arg(mine.join(","));
        }
        // With at least one agent per core, processes give the parallelism: one worker
        // thread each keeps the host's runnable threads (and so every thread's wait for a
        // turn on a saturated host) down.
        let workers = options.workers.or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            (agents >= cores).then_some(1)
        });
        if let Some(w) = workers {
            command.arg("--workers").arg(w.to_string());
        }
        children.0.push(
            command
                .spawn()
                .map_err(|e| RunError::Fatal(format!("cannot start agent process {index}: {e}")))?,
        );
    }
    let result = super::run(CoordinatorOptions {
        profile: options.profile,
        profile_json,
        listener,
        agents,
        token: None,
        join_timeout: Duration::from_secs(30),
        // Agents here are children on the same host: a dead one is noticed at once, when its
        // socket closes. The lease only has to outlast a turn on a host saturated by the run
        // itself (a million connections on two cores took reports more than 5 s to cross).
        lease: Duration::from_secs(30),
        allow_synthetic: false,
        targets: target_override,
        outputs: options.outputs,
        progress: options.progress,
        control_rx: options.control_rx,
        live_tx: options.live_tx,
    })
    .await;
    // Agents exit on their own once they have sent their last report; sinks are ours to end.
    drop(children);
    drop(sink_files);
    result
}
