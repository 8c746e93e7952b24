//! The coordinator: admits agents (authenticated), splits the profile across them by capacity,
//! starts them together on a clock corrected for each one's offset, merges what they report
//! and ends with the same summary, interval log and exit codes as `run`.
//!
//! It holds no load connections itself. A misbehaving peer costs it one session, never the run.
//! `local` runs a whole swarm on this host (`stampede run --agents N`).

pub mod gate;
pub mod local;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use crate::collect::{Collector, Outputs, Progress, RunResult, open_outputs};
use crate::host;
use crate::live::{AgentRow, Control, ControlRx, LiveTx};
use crate::metrics::{IntervalSnapshot, Latency};
use crate::profile::{AgentLoss, Profile, TargetSpec, timeline};
use crate::report::hlog::HlogWriter;
use crate::report::summary::AgentRecord;
use crate::run::RunError;
use crate::wire::{
    self, AgentInfo, Message, Opener, PROTOCOL_VERSION, PlanMsg, Role, Sealer, WireError,
};
use gate::{Refusal, RefusalKind, RefusalLog};

/// How long a peer may take over each handshake step.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct CoordinatorOptions {
    pub profile: Profile,
    /// The profile as JSON after `--set` overrides: what agents receive.
    pub profile_json: Value,
    pub listener: TcpListener,
    pub agents: usize,
    pub token: Option<Vec<u8>>,
    /// How long to wait for every agent to join.
    pub join_timeout: Duration,
    /// Agents stop if they hear nothing for this long; agents silent this long are lost.
    pub lease: Duration,
    /// Whether a run with synthetic agents may pass (`--allow-synthetic`).
    pub allow_synthetic: bool,
    /// Targets that replace the profile's (the local sink of `run --agents`).
    pub targets: Option<Vec<SocketAddr>>,
    pub outputs: Outputs,
    pub progress: Progress,
    pub control_rx: ControlRx,
    pub live_tx: Option<LiveTx>,
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn log(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "stampede coordinator: {text}");
}

/// A peer that passed the handshake.
struct Joined {
    info: AgentInfo,
    peer: SocketAddr,
    stream: TcpStream,
    /// The session's sealing ends: every frame after the handshake is authenticated.
    sealer: Sealer,
    opener: Opener,
}

async fn refuse(
    mut stream: TcpStream,
    kind: RefusalKind,
    reason: String,
) -> Result<Joined, Refusal> {
    // A peer that does not read must not hold this task: the refusal is best effort.
    let refused = Message::Refused {
        reason: reason.clone(),
    };
    let _ = timeout(
        Duration::from_secs(1),
        wire::write_message(&mut stream, &refused),
    )
    .await;
    Err(Refusal::new(kind, reason))
}

/// Authenticates one peer. Without a token only loopback peers are admitted.
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    token: Option<&[u8]>,
) -> Result<Joined, Refusal> {
    let step = |what: &'static str| {
        move |_| {
            Refusal::new(
                RefusalKind::Timeout,
                format!("no {what} within {HANDSHAKE_TIMEOUT:?}"),
            )
        }
    };
    let bad = |what: &'static str| {
        move |e: WireError| Refusal::new(RefusalKind::Malformed, format!("bad {what}: {e}"))
    };
    let hello = timeout(
        HANDSHAKE_TIMEOUT,
        wire::read_message_limited(&mut stream, wire::HANDSHAKE_MAX_FRAME),
    )
    .await
    .map_err(step("hello"))?
    .map_err(bad("hello"))?;
    let Message::Hello {
        version,
        nonce: agent_nonce,
        mut info,
    } = hello
    else {
        return Err(Refusal::new(
            RefusalKind::Malformed,
            "the first message was not a hello",
        ));
    };
    // Before a peer has proven anything its name is only text to print, and printed safely.
    info.name = gate::printable(&info.name, 128);
    info.host = gate::printable(&info.host, 255);
    if version != PROTOCOL_VERSION {
        return refuse(stream, RefusalKind::Version, format!(
            "agent {} speaks protocol version {version}, this coordinator speaks {PROTOCOL_VERSION}; run the same stampede release on both sides",
            info.name
        ))
        .await;
    }
    if token.is_none() && !peer.ip().is_loopback() {
        return refuse(stream, RefusalKind::NotLoopback, format!(
            "agent {} connects from {}, but this coordinator has no token and admits only loopback agents; give both sides the same --token-file",
            info.name,
            peer.ip()
        ))
        .await;
    }
    let nonce = wire::nonce();
    let proof = token.map_or_else(String::new, |t| {
        wire::proof(t, "coordinator", &agent_nonce, &nonce)
    });
    wire::write_message(
        &mut stream,
        &Message::Challenge {
            nonce: nonce.clone(),
            proof,
        },
    )
    .await
    .map_err(bad("stream"))?;
    let answer = timeout(
        HANDSHAKE_TIMEOUT,
        wire::read_message_limited(&mut stream, wire::HANDSHAKE_MAX_FRAME),
    )
    .await
    .map_err(step("proof"))?
    .map_err(bad("proof"))?;
    let given = match answer {
        Message::Proof { proof } => proof,
        Message::Refused { reason } => {
            return Err(Refusal::new(
                RefusalKind::Token,
                format!("agent {} gave up: {reason}", info.name),
            ));
        }
        _ => {
            return Err(Refusal::new(RefusalKind::Malformed, "expected a proof"));
        }
    };
    match token {
        Some(t) if !wire::verify(t, "agent", &nonce, &agent_nonce, &given) => {
            return refuse(
                stream,
                RefusalKind::Token,
                format!(
                    "agent {} did not prove the token (wrong or missing --token-file)",
                    info.name
                ),
            )
            .await;
        }
        None if !given.is_empty() => {
            return refuse(stream, RefusalKind::Token, format!(
                "agent {} has a token but this coordinator has none; give both sides the same --token-file",
                info.name
            ))
            .await;
        }
        _ => {}
    }
    wire::write_message(&mut stream, &Message::Welcome)
        .await
        .map_err(bad("stream"))?;
    let (sealer, opener) = wire::session_keys(
        token.unwrap_or_default(),
        &agent_nonce,
        &nonce,
        Role::Coordinator,
    );
    Ok(Joined {
        info,
        peer,
        stream,
        sealer,
        opener,
    })
}

/// Accepts peers, authenticates each on its own task, and hands the admitted ones over until
/// the swarm is full. Later peers are refused. Handshakes in flight are bounded and refusals
/// are logged once per kind and window (see `gate`).
async fn accept_loop(
    listener: TcpListener,
    token: Option<Vec<u8>>,
    joined_tx: mpsc::Sender<Joined>,
    full: Arc<AtomicBool>,
) {
    let token: Option<Arc<[u8]>> = token.map(Into::into);
    let refusals = Arc::new(std::sync::Mutex::new(RefusalLog::default()));
    let pending = Arc::new(tokio::sync::Semaphore::new(gate::MAX_PENDING_HANDSHAKES));
    let note = |refusals: &std::sync::Mutex<RefusalLog>, peer, refusal: &Refusal| {
        let lines = match refusals.lock() {
            Ok(mut log) => log.refused(peer, refusal, Instant::now()),
            Err(_) => Vec::new(),
        };
        lines.iter().for_each(|l| log(l));
    };
    let mut flush = tokio::time::interval(gate::LOG_WINDOW);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = flush.tick() => {
                let lines = refusals.lock().map(|mut l| l.flush(Instant::now())).unwrap_or_default();
                lines.iter().for_each(|l| log(l));
                continue;
            }
        };
        let Ok((stream, peer)) = accepted else {
            // Out of files for a moment: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            drop(stream);
            let busy = Refusal::new(
                RefusalKind::Busy,
                format!(
                    "{} handshakes already in flight; dropped without reading",
                    gate::MAX_PENDING_HANDSHAKES
                ),
            );
            note(&refusals, peer, &busy);
            continue;
        };
        let token = token.clone();
        let joined_tx = joined_tx.clone();
        let full = full.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = if full.load(Ordering::Relaxed) {
                refuse(
                    stream,
                    RefusalKind::Full,
                    "the swarm is already complete".into(),
                )
                .await
            } else {
                handshake(stream, peer, token.as_deref()).await
            };
            match outcome {
                Ok(joined) => {
                    let _ = joined_tx.send(joined).await;
                }
                Err(refusal) => note(&refusals, peer, &refusal),
            }
        });
    }
}

/// One joined agent during the run.
struct Agent {
    info: AgentInfo,
    peer: SocketAddr,
    out_tx: mpsc::UnboundedSender<Message>,
    /// Clock offset: agent clock minus ours, microseconds.
    offset_us: i64,
    rtt_us: u64,
    share: u64,
    /// Index of each of its sources in the run's source list.
    source_map: Vec<usize>,
    last_heard: Instant,
    last_report: Option<Instant>,
    established: u64,
    errors: u64,
    open: u64,
    interval_connects: u64,
    interval_p99: Option<u64>,
    started_us: Option<i64>,
    status: &'static str,
    intervals_received: u64,
    last_interval: Option<u64>,
    late_reports: u64,
}

impl Agent {
    fn live(&self) -> bool {
        self.status == "running"
    }
}

/// An agent's message or the end of its session.
type Event = (usize, Result<Message, WireError>);

fn spawn_session(
    index: usize,
    joined: Joined,
    events_tx: mpsc::UnboundedSender<Event>,
) -> mpsc::UnboundedSender<Message> {
    let Joined {
        stream,
        mut sealer,
        mut opener,
        ..
    } = joined;
    let (mut reader, mut writer) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sealer.write(&mut writer, &message).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        // The first error (a forged frame among them) ends the session: it is reported once,
        // as the agent's loss, and nothing after it is read.
        loop {
            let message = opener.read(&mut reader).await;
            let end = message.is_err();
            if events_tx.send((index, message)).is_err() || end {
                break;
            }
        }
    });
    out_tx
}

fn describe(agents: &[Agent]) -> String {
    agents
        .iter()
        .map(|a| format!("{} ({})", a.info.name, a.peer))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Drives a swarm through a profile.
pub async fn run(mut options: CoordinatorOptions) -> Result<RunResult, RunError> {
    let listen = options
        .listener
        .local_addr()
        .map_err(|e| RunError::Fatal(format!("listener has no address: {e}")))?;
    if options.token.is_none() && !listen.ip().is_loopback() {
        return Err(RunError::Plan(format!(
            "refusing to listen on {listen} without a token: anyone who reaches it could drive load. \
             Give --token-file F (the agents too), or listen on loopback"
        )));
    }
    if options.lease < wire::MIN_LEASE {
        return Err(RunError::Plan(format!(
            "--lease {:?} is shorter than 3 keepalive intervals ({:?} each): one late keepalive would stop every agent; give --lease {:?} or more",
            options.lease,
            wire::KEEPALIVE_INTERVAL,
            wire::MIN_LEASE
        )));
    }
    if let Some(i) = options
        .profile
        .phases
        .iter()
        .position(|p| matches!(p, crate::profile::Phase::Server { admin: None, .. }))
    {
        return Err(RunError::Plan(format!(
            "phases[{i}].server has no `admin` address; in a swarm the sinks are other \
             processes: start them with `stampede sink --admin ADDR` and name that address"
        )));
    }
    if options.profile.target == TargetSpec::Embedded && options.targets.is_none() {
        return Err(RunError::Plan(
            "target \"embedded\" needs a sink beside the agents: use `stampede run --agents N` on one host, \
             or start `stampede sink` and list it in target.addrs"
                .into(),
        ));
    }
    let nlb_watch = crate::nlb::NlbWatch::for_profile(&options.profile)
        .await
        .map_err(RunError::Plan)?;
    // A directory that cannot be written is refused before anyone joins.
    let hlog = open_outputs(&options.outputs, &options.profile.name).map_err(RunError::Plan)?;
    let expected = options.agents;
    let full = Arc::new(AtomicBool::new(false));
    let (joined_tx, mut joined_rx) = mpsc::channel::<Joined>(expected.max(1));
    let listener = options.listener;
    let accept = tokio::spawn(accept_loop(
        listener,
        options.token.clone(),
        joined_tx,
        full.clone(),
    ));
    let result = drive(
        &mut options.control_rx,
        &mut joined_rx,
        &full,
        OptionsRest {
            profile: options.profile,
            profile_json: options.profile_json,
            expected,
            join_timeout: options.join_timeout,
            lease: options.lease,
            allow_synthetic: options.allow_synthetic,
            targets: options.targets,
            outputs: options.outputs,
            progress: options.progress,
            live_tx: options.live_tx,
            listen,
            hlog,
            nlb_watch,
        },
    )
    .await;
    accept.abort();
    result
}

struct OptionsRest {
    profile: Profile,
    profile_json: Value,
    expected: usize,
    join_timeout: Duration,
    lease: Duration,
    allow_synthetic: bool,
    targets: Option<Vec<SocketAddr>>,
    outputs: Outputs,
    progress: Progress,
    live_tx: Option<LiveTx>,
    listen: SocketAddr,
    hlog: Option<HlogWriter>,
    nlb_watch: Option<crate::nlb::NlbWatch>,
}

async fn drive(
    control_rx: &mut ControlRx,
    joined_rx: &mut mpsc::Receiver<Joined>,
    full: &AtomicBool,
    o: OptionsRest,
) -> Result<RunResult, RunError> {
    // 1. Wait for every agent, within a bound.
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Event>();
    let mut agents: Vec<Agent> = Vec::with_capacity(o.expected);
    let join_deadline = Instant::now() + o.join_timeout;
    if o.progress != Progress::Silent {
        log(&format!(
            "listening on {}, waiting for {} agent(s)",
            o.listen, o.expected
        ));
    }
    while agents.len() < o.expected {
        tokio::select! {
            joined = joined_rx.recv() => {
                let Some(joined) = joined else { break };
                if o.progress != Progress::Silent {
                    log(&format!("agent {} joined from {} ({}/{})", joined.info.name, joined.peer, agents.len() + 1, o.expected));
                }
                if joined.info.synthetic && !o.allow_synthetic && !agents.iter().any(|a| a.info.synthetic) {
                    log(&format!(
                        "agent {} is synthetic (made-up figures, no load): this run cannot pass without --allow-synthetic",
                        joined.info.name
                    ));
                }
                let index = agents.len();
                let (info, peer) = (joined.info.clone(), joined.peer);
                let out_tx = spawn_session(index, joined, events_tx.clone());
                agents.push(Agent {
                    info,
                    peer,
                    out_tx,
                    offset_us: 0,
                    rtt_us: u64::MAX,
                    share: 0,
                    source_map: Vec::new(),
                    last_heard: Instant::now(),
                    last_report: None,
                    established: 0,
                    errors: 0,
                    open: 0,
                    interval_connects: 0,
                    interval_p99: None,
                    started_us: None,
                    status: "running",
                    intervals_received: 0,
                    last_interval: None,
                    late_reports: 0,
                });
            }
            () = tokio::time::sleep_until(join_deadline) => {
                let stop = Message::Stop { reason: "not every agent joined".into() };
                for a in &agents {
                    let _ = a.out_tx.send(stop.clone());
                }
                return Err(RunError::Fatal(format!(
                    "only {} of {} agents joined within {:?} (joined: {}); start the missing ones with `stampede agent --coordinator {}`",
                    agents.len(), o.expected, o.join_timeout,
                    if agents.is_empty() { "none".to_string() } else { describe(&agents) },
                    o.listen
                )));
            }
            control = control_rx.recv() => {
                if let Some(Control::Stop(reason)) = control {
                    return Err(RunError::Fatal(format!("stopped while waiting for agents: {reason}")));
                }
            }
        }
    }
    full.store(true, Ordering::Relaxed);
    let abort_all = |agents: &[Agent], reason: &str| {
        for a in agents {
            let _ = a.out_tx.send(Message::Stop {
                reason: reason.to_string(),
            });
        }
    };

    // 2. Measure each agent's clock offset: three pings, keep the fastest round trip.
    for round in 0..3u64 {
        let sent: Vec<(u64, Instant)> = agents
            .iter()
            .map(|a| {
                let _ = a.out_tx.send(Message::Ping { id: round });
                (unix_us(), Instant::now())
            })
            .collect();
        let mut answered = 0;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        while answered < agents.len() {
            let event = tokio::time::timeout_at(deadline, events_rx.recv()).await;
            match event {
                Ok(Some((i, Ok(Message::Pong { id, clock_us })))) if id == round => {
                    let (sent_us, sent_at) = sent[i];
                    let rtt = sent_at.elapsed().as_micros() as u64;
                    let agent = &mut agents[i];
                    if rtt < agent.rtt_us {
                        agent.rtt_us = rtt;
                        agent.offset_us = clock_us as i64 - (sent_us + rtt / 2) as i64;
                    }
                    answered += 1;
                }
                Ok(Some((i, Err(e)))) => return Err(left_before_start(&agents, i, &e)),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    abort_all(&agents, "clock probe timed out");
                    return Err(RunError::Fatal(
                        "agents did not answer the clock probe in time".into(),
                    ));
                }
            }
        }
    }

    // 3. Split the plan by capacity, refuse what the swarm cannot hold.
    let peak = o.profile.peak_connections();
    let weights: Vec<u64> = agents
        .iter()
        .map(|a| a.info.fd_limit.saturating_sub(host::FD_RESERVE))
        .collect();
    let capacity: u64 = weights.iter().sum();
    if capacity < peak {
        abort_all(&agents, "the swarm cannot hold the plan");
        let each: Vec<String> = agents
            .iter()
            .zip(&weights)
            .map(|(a, w)| format!("{} {w}", a.info.name))
            .collect();
        return Err(RunError::Plan(format!(
            "the swarm can hold {capacity} connections ({}) but the plan needs {peak}; add agents or raise their file limits",
            each.join(", ")
        )));
    }
    let max_rtt = agents.iter().map(|a| a.rtt_us).max().unwrap_or(0);
    let lead_us = 300_000 + 4 * max_rtt.min(1_000_000);
    let start_us = unix_us() + lead_us;
    let start = Instant::now() + Duration::from_micros(lead_us);
    let targets_text = o
        .targets
        .as_ref()
        .map(|t| t.iter().map(ToString::to_string).collect());
    for (index, agent) in agents.iter_mut().enumerate() {
        agent.share = o.profile.share(&weights, index).peak_connections();
        let plan = PlanMsg {
            agent_index: index,
            agents: o.expected,
            profile: o.profile_json.clone(),
            weights: weights.clone(),
            start_at_us: (start_us as i64 + agent.offset_us).max(0) as u64,
            lease_ms: o.lease.as_millis() as u64,
            targets: targets_text.clone(),
        };
        let _ = agent.out_tx.send(Message::Plan(Box::new(plan)));
    }

    // 4. Every agent must accept its share.
    let mut source_labels: Vec<String> = Vec::new();
    let mut target_labels: Vec<String> = Vec::new();
    let mut ready = 0;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    while ready < agents.len() {
        match tokio::time::timeout_at(deadline, events_rx.recv()).await {
            Ok(Some((i, Ok(Message::Ready { sources, targets })))) => {
                let map = sources
                    .iter()
                    .map(|label| {
                        let label = if label == "kernel-chosen" {
                            format!("kernel-chosen@{}", agents[i].info.host)
                        } else {
                            label.clone()
                        };
                        match source_labels.iter().position(|l| *l == label) {
                            Some(at) => at,
                            None => {
                                source_labels.push(label);
                                source_labels.len() - 1
                            }
                        }
                    })
                    .collect();
                agents[i].source_map = map;
                if target_labels.is_empty() {
                    target_labels = targets;
                }
                ready += 1;
            }
            Ok(Some((i, Ok(Message::Refused { reason })))) => {
                abort_all(&agents, "another agent refused the plan");
                return Err(RunError::Plan(format!(
                    "agent {} refused the plan: {reason}",
                    agents[i].info.name
                )));
            }
            Ok(Some((i, Err(e)))) => return Err(left_before_start(&agents, i, &e)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                abort_all(&agents, "not every agent accepted the plan in time");
                return Err(RunError::Fatal(
                    "not every agent accepted the plan in time".into(),
                ));
            }
        }
    }

    // 5. Run: merge reports, keep leases, mark the lost.
    let spans = timeline::spans(&o.profile);
    let source_count = source_labels.len();
    let target_count = target_labels.len();
    let mut collector = Collector::new(
        &o.profile,
        spans,
        source_labels,
        target_labels,
        agents.len(),
        start,
        o.hlog,
        o.progress,
        o.live_tx,
    );
    if let Some(watch) = &o.nlb_watch {
        collector.set_nlb_live(watch.live());
    }
    collector.set_allow_synthetic(o.allow_synthetic);
    // Server phases need an admin address here: the swarm's sinks are other processes.
    let server_phases = tokio::spawn(crate::run::play_server_phases(
        o.profile.clone(),
        start,
        None,
    ));
    let mut abort_reason: Option<String> = None;
    let mut keepalive = tokio::time::interval(wire::KEEPALIVE_INTERVAL);
    let mut controls_open = true;
    while agents.iter().any(Agent::live) {
        tokio::select! {
            event = events_rx.recv() => {
                let Some((i, message)) = event else { break };
                agents[i].last_heard = Instant::now();
                match message {
                    Ok(Message::Report(_)) if !agents[i].live() => {
                        // Declared lost already: the intervals this covers were completed
                        // without it, so merging it now would rewrite history.
                        agents[i].late_reports += 1;
                    }
                    Ok(Message::Report(report)) => {
                        let data = match report.decode() {
                            Ok(data) => data,
                            Err(e) => {
                                lose(&mut agents[i], &mut collector, i, &format!("sent a bad report: {e}"));
                                continue;
                            }
                        };
                        let agent = &mut agents[i];
                        // The agent's own source indices map onto the run's list; everything
                        // else is already the run's.
                        let mut global = data;
                        let mut per_source = vec![crate::metrics::Counts::default(); source_count];
                        for (local, counts) in global.per_source.iter().enumerate() {
                            if let Some(&at) = agent.source_map.get(local) {
                                per_source[at].add(counts);
                            }
                        }
                        global.per_source = per_source;
                        global.per_target.resize(target_count, crate::metrics::Counts::default());
                        agent.established += global.totals.established;
                        agent.errors += global.totals.error_total();
                        agent.open = report.open;
                        agent.interval_connects = global.totals.connected;
                        let h = global.latency.get(Latency::Connect);
                        agent.interval_p99 = (!h.is_empty()).then(|| h.value_at_quantile(0.99));
                        agent.last_report = Some(Instant::now());
                        agent.intervals_received += 1;
                        agent.last_interval = Some(report.seq);
                        if report.last {
                            agent.status = if abort_reason.is_some() { "stopped" } else { "finished" };
                        }
                        collector.push(IntervalSnapshot { reporter: i, seq: report.seq, last: report.last, open: report.open, open_established: report.open_established, data: global });
                    }
                    Ok(Message::Started { clock_us }) => {
                        agents[i].started_us = Some(clock_us as i64 - agents[i].offset_us - start_us as i64);
                    }
                    Ok(Message::Refused { reason }) => {
                        lose(&mut agents[i], &mut collector, i, &format!("gave up: {reason}"));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if agents[i].live() {
                            lose(&mut agents[i], &mut collector, i, &format!("connection lost: {e}"));
                        }
                    }
                }
                if o.profile.on_agent_loss == AgentLoss::Abort && abort_reason.is_none()
                    && let Some(lost) = agents.iter().find(|a| a.status == "lost")
                {
                    abort_reason = Some(format!("agent {} was lost (on_agent_loss: abort)", lost.info.name));
                    collector.set_stopping();
                    abort_all(&agents, "another agent was lost");
                }
            }
            _ = keepalive.tick() => {
                for (i, agent) in agents.iter_mut().enumerate() {
                    if !agent.live() {
                        continue;
                    }
                    if agent.last_heard.elapsed() > o.lease {
                        let reason = format!("silent for {:?} (lease)", o.lease);
                        lose(agent, &mut collector, i, &reason);
                        continue;
                    }
                    let _ = agent.out_tx.send(Message::Keepalive);
                }
                let rows = agents.iter().map(|a| AgentRow {
                    name: a.info.name.clone(),
                    open: a.open,
                    connects_per_s: a.interval_connects,
                    errors: a.errors,
                    connect_p99_us: a.interval_p99,
                    last_report_s: a.last_report.map_or(f64::NAN, |t| t.elapsed().as_secs_f64()),
                    status: a.status.to_string(),
                }).collect();
                collector.set_agents(o.expected, rows);
            }
            control = control_rx.recv(), if controls_open => match control {
                Some(Control::Stop(reason)) => {
                    if abort_reason.is_none() {
                        abort_all(&agents, &reason);
                        abort_reason = Some(reason);
                        collector.set_stopping();
                    }
                }
                Some(Control::Pause) => {
                    for a in &agents { let _ = a.out_tx.send(Message::Pause); }
                    collector.set_paused(true);
                }
                Some(Control::Resume) => {
                    for a in &agents { let _ = a.out_tx.send(Message::Resume); }
                    collector.set_paused(false);
                }
                None => controls_open = false,
            },
        }
    }
    server_phases.abort();
    let run_start = start;
    let starts: Vec<i64> = agents.iter().filter_map(|a| a.started_us).collect();
    let spread = match (starts.iter().min(), starts.iter().max()) {
        (Some(lo), Some(hi)) if starts.len() == agents.len() => Some((hi - lo) as f64 / 1000.0),
        _ => None,
    };
    let records = agents
        .iter()
        .map(|a| AgentRecord {
            name: a.info.name.clone(),
            host: a.info.host.clone(),
            share: a.share,
            established: a.established,
            errors: a.errors,
            last_report_s: a
                .last_report
                .map(|t| t.saturating_duration_since(run_start).as_secs_f64()),
            status: a.status.to_string(),
            start_offset_ms: a.started_us.map(|us| us as f64 / 1000.0),
            intervals_received: a.intervals_received,
            last_interval: a.last_interval,
            late_reports: a.late_reports,
            synthetic: a.info.synthetic,
        })
        .collect();
    collector.set_agent_records(records, spread);
    if let Some(watch) = o.nlb_watch {
        collector.set_nlb(watch.finish().await);
    }
    if let Some(lost) = agents
        .iter()
        .filter(|a| a.status == "lost")
        .map(|a| a.info.name.clone())
        .reduce(|a, b| a + ", " + &b)
        && o.progress != Progress::Silent
    {
        log(&format!(
            "finished without agent(s) {lost}: their data up to their last report is kept"
        ));
    }
    // With every agent lost, nothing played the plan to its end: whatever the thresholds say
    // of the few seconds that arrived, the run did not happen as asked.
    if abort_reason.is_none() && !agents.is_empty() && agents.iter().all(|a| a.status == "lost") {
        abort_reason = Some("every agent was lost before the run's end".into());
    }
    Ok(collector.finish(abort_reason, &o.outputs))
}

/// Ends the setup when an agent leaves before the start: the others are told to stop.
fn left_before_start(agents: &[Agent], index: usize, error: &WireError) -> RunError {
    for a in agents {
        let _ = a.out_tx.send(Message::Stop {
            reason: "an agent left before the start".into(),
        });
    }
    RunError::Fatal(format!(
        "agent {} left before the start: {error}",
        agents[index].info.name
    ))
}

fn lose(agent: &mut Agent, collector: &mut Collector, index: usize, reason: &str) {
    if !agent.live() {
        return;
    }
    log(&format!("agent {} lost: {reason}", agent.info.name));
    agent.status = "lost";
    // Dropping our side tells it too, if it can still hear.
    let _ = agent.out_tx.send(Message::Stop {
        reason: reason.to_string(),
    });
    collector.reporter_gone(index);
}
