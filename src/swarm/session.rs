//! `stampede agent`: dials the coordinator (with backoff), proves the shared token, reports its
//! capacity, checks the plan it is given against its own limits and `--allow-targets`, runs its
//! share on the engine and streams one report per second.
//!
//! Dead-man switch: if the coordinator goes silent for the lease, or its connection drops, the
//! agent stops opening, closes everything it holds and exits non-zero saying why.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use crate::agent::{Engine, EnginePlan};
use crate::collect::{Collector, Outputs, Progress, open_outputs};
use crate::profile::{PlanAddress, Profile, SourceSpec, TargetSpec, sources, timeline};
use crate::stage::{PreflightInput, RunError, preflight};
use crate::wire::{
    self, AgentInfo, Message, Opener, PROTOCOL_VERSION, PlanMsg, Role, Sealer, WireInterval,
};
use crate::wire::{HANDSHAKE_TIMEOUT, unix_us};

/// The sealing ends of an authenticated session (see `wire::Sealer`).
pub(crate) struct Link {
    pub sealer: Sealer,
    pub opener: Opener,
}

/// An address block for `--allow-targets`: `127.0.0.0/8`, `::1/128` or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub base: IpAddr,
    pub prefix: u32,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (base, prefix) = match text.split_once('/') {
            Some((b, p)) => (b, Some(p)),
            None => (text, None),
        };
        let base: IpAddr = base
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an address or CIDR (e.g. 10.1.0.0/16)"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has a bad prefix length; expected 0 to {max}"))?,
        };
        Ok(Cidr { base, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The default allowlist: loopback only.
pub fn loopback_only() -> Vec<Cidr> {
    vec![
        Cidr {
            base: IpAddr::from([127, 0, 0, 0]),
            prefix: 8,
        },
        Cidr {
            base: IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

pub struct AgentOptions {
    /// `HOST:PORT` of the coordinator.
    pub coordinator: String,
    pub token: Option<Vec<u8>>,
    pub name: String,
    /// Source-address specs that replace the profile's.
    pub sources: Vec<String>,
    pub allow_targets: Vec<Cidr>,
    /// The longest lease this agent accepts (`--max-lease`): how long it may keep load going
    /// after its coordinator has gone silent.
    pub max_lease: Duration,
    /// How long to keep dialling a coordinator that is not up yet.
    pub retry_for: Duration,
    pub workers: Option<usize>,
    pub outputs: Outputs,
    pub quiet: bool,
    /// Says so in the hello: this is a synthetic reporter (`agent --synthetic`).
    pub synthetic: bool,
}

/// Why an agent ended without finishing its share, and the exit code that says so.
#[derive(Debug)]
pub struct AgentExit {
    pub code: i32,
    pub message: String,
    /// The coordinator closed the connection mid-handshake (it may have been busy with a
    /// flood of strangers): the agent tries again within `--retry-for`.
    pub hung_up: bool,
}

fn exit(code: i32, message: impl Into<String>) -> AgentExit {
    AgentExit {
        code,
        message: message.into(),
        hung_up: false,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) async fn dial(options: &AgentOptions) -> Result<(TcpStream, SocketAddr), AgentExit> {
    let deadline = Instant::now() + options.retry_for;
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(options.coordinator.as_str())
                .await?
                .collect();
            if options.token.is_none()
                && let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback())
            {
                return Err(std::io::Error::other(format!(
                    "refusing to connect to {open} without a token; give --token-file (the coordinator too), or use a loopback coordinator"
                )));
            }
            let addr = *addrs
                .first()
                .ok_or_else(|| std::io::Error::other("the name has no address"))?;
            let stream = TcpStream::connect(addr).await?;
            Ok((stream, addr))
        };
        let error = match attempt.await {
            Ok(found) => return Ok(found),
            Err(e) if e.kind() == std::io::ErrorKind::Other => return Err(exit(2, e.to_string())),
            Err(e) => e,
        };
        if Instant::now() + backoff > deadline {
            return Err(exit(
                3,
                format!(
                    "could not reach the coordinator at {} within {:?}: {error}",
                    options.coordinator, options.retry_for
                ),
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

pub(crate) async fn join(
    stream: &mut TcpStream,
    options: &AgentOptions,
    fd_limit: u64,
) -> Result<Link, AgentExit> {
    let nonce = wire::nonce();
    let info = AgentInfo {
        name: options.name.clone(),
        host: hostname(),
        stampede_version: env!("CARGO_PKG_VERSION").into(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        fd_limit,
        sources: options.sources.clone(),
        clock_us: unix_us(),
        synthetic: options.synthetic,
    };
    let broken = |e: wire::WireError| AgentExit {
        // Dropped unread (a coordinator busy with a flood of strangers): worth another try.
        hung_up: matches!(e, wire::WireError::Closed | wire::WireError::Io(_)),
        ..exit(
            3,
            format!("the coordinator hung up during the handshake: {e}"),
        )
    };
    wire::write_message(
        stream,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            nonce: nonce.clone(),
            info,
        },
    )
    .await
    .map_err(broken)?;
    let reply = timeout(
        HANDSHAKE_TIMEOUT,
        wire::read_message_limited(stream, wire::HANDSHAKE_MAX_FRAME),
    )
    .await
    .map_err(|_| exit(3, "the coordinator did not answer the hello"))?
    .map_err(broken)?;
    let (their_nonce, their_proof) = match reply {
        Message::Challenge { nonce, proof } => (nonce, proof),
        Message::Refused { reason } => {
            return Err(exit(
                2,
                format!("the coordinator refused this agent: {reason}"),
            ));
        }
        _ => {
            return Err(exit(
                3,
                "the coordinator answered the hello with something else",
            ));
        }
    };
    let proof = match &options.token {
        Some(token) => {
            if !wire::verify(token, "coordinator", &nonce, &their_nonce, &their_proof) {
                let reason =
                    "the coordinator could not prove the token (wrong --token-file on one side?)";
                let _ = wire::write_message(
                    stream,
                    &Message::Refused {
                        reason: reason.into(),
                    },
                )
                .await;
                return Err(exit(2, reason));
            }
            wire::proof(token, "agent", &their_nonce, &nonce)
        }
        None => String::new(),
    };
    wire::write_message(stream, &Message::Proof { proof })
        .await
        .map_err(broken)?;
    match timeout(
        HANDSHAKE_TIMEOUT,
        wire::read_message_limited(stream, wire::HANDSHAKE_MAX_FRAME),
    )
    .await
    .map_err(|_| exit(3, "the coordinator did not answer the proof"))?
    .map_err(broken)?
    {
        Message::Welcome => {
            let token = options.token.as_deref().unwrap_or_default();
            let (sealer, opener) = wire::session_keys(token, &nonce, &their_nonce, Role::Agent);
            Ok(Link { sealer, opener })
        }
        Message::Refused { reason } => Err(exit(
            2,
            format!("the coordinator refused this agent: {reason}"),
        )),
        _ => Err(exit(
            3,
            "the coordinator answered the proof with something else",
        )),
    }
}

/// Dials and joins, again after a hang-up mid-handshake until `retry_for` runs out.
async fn dial_and_join(
    options: &AgentOptions,
    fd_limit: u64,
) -> Result<(TcpStream, SocketAddr, Link), AgentExit> {
    let deadline = Instant::now() + options.retry_for;
    let mut backoff = Duration::from_millis(200);
    loop {
        let (mut stream, addr) = dial(options).await?;
        match join(&mut stream, options, fd_limit).await {
            Ok(link) => return Ok((stream, addr, link)),
            Err(e) if e.hung_up && Instant::now() + backoff < deadline => {
                if !options.quiet {
                    eprintln!(
                        "stampede agent {}: {}; trying again",
                        options.name, e.message
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Tells the coordinator why this agent will not play the plan; the agent then exits 2.
async fn refuse_plan(stream: &mut TcpStream, link: &mut Link, reason: String) -> AgentExit {
    let refusal = Message::Refused {
        reason: reason.clone(),
    };
    let _ = link.sealer.write(stream, &refusal).await;
    exit(2, format!("refused the plan: {reason}"))
}

/// Answers clock probes until the plan arrives.
pub(crate) async fn await_plan(
    stream: &mut TcpStream,
    link: &mut Link,
) -> Result<PlanMsg, AgentExit> {
    loop {
        let message = timeout(Duration::from_secs(600), link.opener.read(stream))
            .await
            .map_err(|_| exit(3, "no plan from the coordinator"))?
            .map_err(|e| exit(3, format!("the coordinator went away before the plan: {e}")))?;
        match message {
            Message::Ping { id } => {
                let pong = Message::Pong {
                    id,
                    clock_us: unix_us(),
                };
                let _ = link.sealer.write(stream, &pong).await;
            }
            Message::Plan(plan) => return Ok(*plan),
            Message::Stop { reason } => {
                return Err(exit(3, format!("stopped before the start: {reason}")));
            }
            _ => {}
        }
    }
}

/// Turns the plan into this agent's profile and targets, or the reason to refuse it.
fn accept_plan(
    plan: &PlanMsg,
    options: &AgentOptions,
) -> Result<(Profile, Vec<SocketAddr>), String> {
    let profile = Profile::from_value(plan.profile.clone())
        .map_err(|e| format!("the profile does not parse here: {e}"))?;
    if plan.weights.len() != plan.agents || plan.agent_index >= plan.agents {
        return Err("the plan's share does not add up".into());
    }
    let lease = Duration::from_millis(plan.lease_ms);
    if lease > options.max_lease {
        return Err(format!(
            "the coordinator's lease of {lease:?} is over this agent's --max-lease of {:?}: the agent would keep its load going that long after losing the coordinator; start the coordinator with --lease {:?} or less, or this agent with a larger --max-lease",
            options.max_lease, options.max_lease
        ));
    }
    if lease < wire::MIN_LEASE {
        return Err(format!(
            "the coordinator's lease of {lease:?} is under {:?} (3 keepalive intervals): the agent would stop at the first late keepalive; start the coordinator with --lease {:?} or more",
            wire::MIN_LEASE,
            wire::MIN_LEASE
        ));
    }
    let mut share = profile.share(&plan.weights, plan.agent_index);
    if !options.sources.is_empty() {
        let mut addrs = Vec::new();
        for spec in &options.sources {
            addrs.extend(sources::expand(spec).map_err(|e| format!("--sources {spec}: {e}"))?);
        }
        share.sources = SourceSpec {
            addrs,
            port_range: share.sources.port_range,
        };
    }
    let targets: Vec<SocketAddr> = match (&plan.targets, &profile.target) {
        (Some(list), _) => list
            .iter()
            .map(|t| {
                t.parse()
                    .map_err(|_| format!("target {t:?} is not IP:port"))
            })
            .collect::<Result<_, _>>()?,
        (None, TargetSpec::Addrs(addrs)) => addrs.clone(),
        (None, TargetSpec::Embedded) => {
            return Err("target \"embedded\" needs a sink address from the coordinator".into());
        }
    };
    // Everything the plan names, not only the targets: a cutover's `to`, admin endpoints and
    // the targets an NLB phase registers steer load just as well.
    let mut named = profile.addresses();
    if let Some(list) = &plan.targets {
        for (i, addr) in targets.iter().enumerate().take(list.len()) {
            named.push(PlanAddress::new(format!("the plan's targets[{i}]"), *addr));
        }
    }
    if let Some(outside) = named.iter().find(|a| {
        !options
            .allow_targets
            .iter()
            .any(|c| c.contains(a.addr.ip()))
    }) {
        let allowed: Vec<String> = options
            .allow_targets
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(format!(
            "{} ({}) is outside this agent's --allow-targets ({}); start the agent with --allow-targets covering it if it is meant to be loaded",
            outside.addr,
            outside.at,
            allowed.join(", ")
        ));
    }
    Ok((share, targets))
}

/// Runs one agent session to its end. Ok is a finished share; Err says why not.
pub async fn run(options: AgentOptions) -> Result<(), AgentExit> {
    let limit = crate::host::raise_fd_limit()
        .map_err(|e| exit(3, format!("cannot read RLIMIT_NOFILE: {e}")))?;
    let (mut stream, addr, mut link) = dial_and_join(&options, limit.soft).await?;
    if !options.quiet {
        eprintln!(
            "stampede agent {}: joined the coordinator at {addr}",
            options.name
        );
    }

    // Before the plan: answer clock probes, wait for the plan.
    let plan = await_plan(&mut stream, &mut link).await?;
    let (profile, targets) = match accept_plan(&plan, &options) {
        Ok(accepted) => accepted,
        Err(reason) => return Err(refuse_plan(&mut stream, &mut link, reason).await),
    };
    let checked = preflight(PreflightInput {
        profile: &profile,
        targets: Some(targets.clone()),
        embedded_here: false,
        workers: options.workers,
        allow_overcommit: false,
    });
    let checked = match checked {
        Ok(c) => c,
        Err(RunError::Plan(reason) | RunError::Fatal(reason)) => {
            let reason = format!("agent {}: {reason}", options.name);
            return Err(refuse_plan(&mut stream, &mut link, reason).await);
        }
    };
    let pool = checked.pool;
    let source_labels: Vec<String> = (0..pool.sources.len())
        .map(|i| pool.source_label(i))
        .collect();
    let target_labels: Vec<String> = targets.iter().map(ToString::to_string).collect();
    link.sealer
        .write(
            &mut stream,
            &Message::Ready {
                sources: source_labels.clone(),
                targets: target_labels.clone(),
            },
        )
        .await
        .map_err(|e| exit(3, format!("the coordinator went away: {e}")))?;

    let now_us = unix_us();
    let start = if plan.start_at_us > now_us {
        Instant::now() + Duration::from_micros(plan.start_at_us - now_us)
    } else {
        Instant::now()
    };
    let spans = timeline::spans(&profile);
    let workers = checked.workers;
    let connector = match crate::protocol::Connector::new(&profile, &[]) {
        Ok(mut connector) => {
            connector.set_agent(plan.agent_index);
            connector
        }
        Err(reason) => {
            let reason = format!("agent {}: {reason}", options.name);
            return Err(refuse_plan(&mut stream, &mut link, reason).await);
        }
    };
    let engine_plan = Arc::new(EnginePlan::new(&profile, pool).with_connector(connector));
    let (snapshot_tx, mut snapshot_rx) = mpsc::unbounded_channel();
    let engine = Engine::start(engine_plan, workers, start, snapshot_tx)
        .map_err(|e| exit(3, format!("cannot start worker threads: {e}")))?;

    // The agent's own view of its share, for its --out files.
    let hlog = open_outputs(&options.outputs, &profile.name).map_err(|e| exit(2, e))?;
    let mut local = Collector::new(
        &profile,
        spans,
        source_labels,
        target_labels,
        workers,
        start,
        hlog,
        Progress::Silent,
        None,
    );

    let (mut reader, mut writer) = stream.into_split();
    let Link {
        mut sealer,
        mut opener,
    } = link;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let writer_task = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sealer.write(&mut writer, &message).await.is_err() {
                break;
            }
        }
    });
    let (in_tx, mut in_rx) = mpsc::unbounded_channel();
    let reader_task = tokio::spawn(async move {
        loop {
            let message = opener.read(&mut reader).await;
            let end = message.is_err();
            if in_tx.send(message).is_err() || end {
                break;
            }
        }
    });

    // Checked against --max-lease and MIN_LEASE in accept_plan.
    let lease = Duration::from_millis(plan.lease_ms);
    let mut last_heard = Instant::now();
    let mut dead: Option<String> = None;
    let mut stopped_by: Option<String> = None;
    let mut started_sent = false;
    let mut finished = 0usize;
    let mut lease_check = tokio::time::interval(Duration::from_millis(100));
    let mut coordinator_open = true;
    while finished < workers {
        tokio::select! {
            () = sleep_until(start), if !started_sent => {
                started_sent = true;
                let _ = out_tx.send(Message::Started { clock_us: unix_us() });
            }
            snapshot = snapshot_rx.recv() => {
                let Some(snapshot) = snapshot else { break };
                if snapshot.last {
                    finished += 1;
                }
                let all_done = finished == workers;
                let done = local.push(snapshot);
                let last_seq = done.last().map(|i| i.seq);
                for interval in done {
                    let last = all_done && Some(interval.seq) == last_seq;
                    let report = WireInterval::encode(
                        interval.seq,
                        last,
                        interval.open,
                        interval.open_established,
                        &interval.data,
                    );
                    let _ = out_tx.send(Message::Report(Box::new(report)));
                }
            }
            message = in_rx.recv(), if coordinator_open => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Stop { reason })) => {
                        stopped_by.get_or_insert(reason);
                        engine.stop();
                    }
                    Some(Ok(Message::Pause)) => engine.set_paused(true),
                    Some(Ok(Message::Resume)) => engine.set_paused(false),
                    Some(Ok(Message::Ping { id })) => {
                        let _ = out_tx.send(Message::Pong { id, clock_us: unix_us() });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        coordinator_open = false;
                        if dead.is_none() {
                            let reason = format!("lost the coordinator ({e}); closed every connection");
                            // If the coordinator can still hear (a forged frame rather than a
                            // dead link), it must not take the short share as finished.
                            let _ = out_tx.send(Message::Refused { reason: reason.clone() });
                            dead = Some(reason);
                            engine.stop();
                        }
                    }
                    None => coordinator_open = false,
                }
            }
            _ = lease_check.tick() => {
                if dead.is_none() && last_heard.elapsed() > lease {
                    let reason = format!("no word from the coordinator for {lease:?} (lease); closed every connection");
                    let _ = out_tx.send(Message::Refused { reason: reason.clone() });
                    dead = Some(reason);
                    engine.stop();
                }
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    drop(out_tx);
    // Let the last report go out; the coordinator may be gone, so bound the wait.
    let _ = timeout(Duration::from_secs(2), writer_task).await;
    reader_task.abort();
    let result = local.finish(dead.clone().or(stopped_by.clone()), &options.outputs);
    if !options.quiet {
        let c = &result.summary.connections;
        eprintln!(
            "stampede agent {}: share done: {} established of {} requested, {} errors",
            options.name,
            c.established,
            c.requested,
            result.summary.error_total()
        );
    }
    match dead {
        Some(reason) => Err(exit(3, reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_what_they_should() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.9.9.9".parse().unwrap()));
        assert!(!lo.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }
}
