//! The coordinator: admits agents (authenticated), splits the profile across them by capacity,
//! starts them together on a clock corrected for each one's offset, merges what they report
//! and ends with the same summary, interval log and exit codes as `run`.
//!
//! It holds no load connections itself. A misbehaving peer costs it one session, never the run.
//! `admit` holds the accept loop and handshake, `play` the run stage, `remap` how agents'
//! intervals land on the run's sources, `local` a whole swarm on this host (`run --agents N`).

mod admit;
pub mod gate;
pub mod local;
mod play;
mod remap;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::collect::{Outputs, Progress, RunResult, open_outputs};
use crate::host;
use crate::live::{Control, ControlRx, LiveTx};
use crate::nlb::NlbWatch;
use crate::profile::{Profile, TargetSpec};
use crate::report::hlog::HlogWriter;
use crate::report::summary::AgentStatus;
use crate::stage::RunError;
use crate::wire::{self, AgentInfo, HANDSHAKE_TIMEOUT, Message, PlanMsg, WireError, unix_us};
use admit::{Joined, accept_loop};
use play::Play;
use remap::SourceLabels;

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

fn log(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "stampede coordinator: {text}");
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
    status: AgentStatus,
    intervals_received: u64,
    last_interval: Option<u64>,
    late_reports: u64,
}

impl Agent {
    fn new(info: AgentInfo, peer: SocketAddr, out_tx: mpsc::UnboundedSender<Message>) -> Agent {
        Agent {
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
            status: AgentStatus::Running,
            intervals_received: 0,
            last_interval: None,
            late_reports: 0,
        }
    }

    fn live(&self) -> bool {
        self.status == AgentStatus::Running
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
    let nlb_watch = NlbWatch::for_profile(&options.profile)
        .await
        .map_err(RunError::Plan)?;
    // A directory that cannot be written is refused before anyone joins.
    let hlog = open_outputs(&options.outputs, &options.profile.name).map_err(RunError::Plan)?;
    let roll = Roll {
        expected: options.agents,
        join_timeout: options.join_timeout,
        allow_synthetic: options.allow_synthetic,
        progress: options.progress,
        listen,
    };
    let full = Arc::new(AtomicBool::new(false));
    let (joined_tx, mut joined_rx) = mpsc::channel::<Joined>(roll.expected.max(1));
    let accept = tokio::spawn(accept_loop(
        options.listener,
        options.token.clone(),
        joined_tx,
        full.clone(),
    ));
    let result = drive(
        &mut options.control_rx,
        &mut joined_rx,
        &full,
        Settings {
            roll,
            profile: options.profile,
            profile_json: options.profile_json,
            lease: options.lease,
            targets: options.targets,
            outputs: options.outputs,
            live_tx: options.live_tx,
            hlog,
            nlb_watch,
        },
    )
    .await;
    accept.abort();
    result
}

/// What the join stage needs: how many agents, how long to wait, and what to tell the user.
struct Roll {
    expected: usize,
    join_timeout: Duration,
    allow_synthetic: bool,
    progress: Progress,
    listen: SocketAddr,
}

/// The run's settings once the listener is handed to the accept loop.
struct Settings {
    roll: Roll,
    profile: Profile,
    profile_json: Value,
    lease: Duration,
    targets: Option<Vec<SocketAddr>>,
    outputs: Outputs,
    live_tx: Option<LiveTx>,
    hlog: Option<HlogWriter>,
    nlb_watch: Option<NlbWatch>,
}

/// The joined agents and their sessions' events.
struct Swarm {
    agents: Vec<Agent>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// Kept so that `events_rx` stays open for the whole run, whatever the sessions do.
    _events_tx: mpsc::UnboundedSender<Event>,
}

/// The planned start, on our clock.
#[derive(Clone, Copy)]
struct Start {
    at: Instant,
    unix_us: u64,
}

/// Joins, synchronises, plans, plays, and concludes: each stage below in turn.
async fn drive(
    control_rx: &mut ControlRx,
    joined_rx: &mut mpsc::Receiver<Joined>,
    full: &AtomicBool,
    mut o: Settings,
) -> Result<RunResult, RunError> {
    let mut swarm = join_all(control_rx, joined_rx, &o.roll).await?;
    full.store(true, Ordering::Relaxed);
    swarm.probe_clocks().await?;
    let start = swarm.send_plans(&o)?;
    let (sources, targets) = swarm.await_ready().await?;
    let mut play = Play::new(swarm, &mut o, start, sources, targets);
    play.run(control_rx, &o).await;
    Ok(play.conclude(o).await)
}

/// Stage 1: waits for every agent, within a bound. Later peers are refused by the accept loop.
async fn join_all(
    control_rx: &mut ControlRx,
    joined_rx: &mut mpsc::Receiver<Joined>,
    roll: &Roll,
) -> Result<Swarm, RunError> {
    let (events_tx, events_rx) = mpsc::unbounded_channel::<Event>();
    let mut agents: Vec<Agent> = Vec::with_capacity(roll.expected);
    let join_deadline = Instant::now() + roll.join_timeout;
    let talk = roll.progress != Progress::Silent;
    if talk {
        log(&format!(
            "listening on {}, waiting for {} agent(s)",
            roll.listen, roll.expected
        ));
    }
    while agents.len() < roll.expected {
        tokio::select! {
            joined = joined_rx.recv() => {
                let Some(joined) = joined else { break };
                if talk {
                    log(&format!("agent {} joined from {} ({}/{})", joined.info.name, joined.peer, agents.len() + 1, roll.expected));
                }
                if joined.info.synthetic && !roll.allow_synthetic && !agents.iter().any(|a| a.info.synthetic) {
                    log(&format!(
                        "agent {} is synthetic (made-up figures, no load): this run cannot pass without --allow-synthetic",
                        joined.info.name
                    ));
                }
                let (info, peer) = (joined.info.clone(), joined.peer);
                let out_tx = spawn_session(agents.len(), joined, events_tx.clone());
                agents.push(Agent::new(info, peer, out_tx));
            }
            () = tokio::time::sleep_until(join_deadline) => {
                stop_all(&agents, "not every agent joined");
                return Err(RunError::Fatal(format!(
                    "only {} of {} agents joined within {:?} (joined: {}); start the missing ones with `stampede agent --coordinator {}`",
                    agents.len(), roll.expected, roll.join_timeout,
                    if agents.is_empty() { "none".to_string() } else { describe(&agents) },
                    roll.listen
                )));
            }
            control = control_rx.recv() => {
                if let Some(Control::Stop(reason)) = control {
                    return Err(RunError::Fatal(format!("stopped while waiting for agents: {reason}")));
                }
            }
        }
    }
    Ok(Swarm {
        agents,
        events_rx,
        _events_tx: events_tx,
    })
}

fn stop_all(agents: &[Agent], reason: &str) {
    for a in agents {
        let _ = a.out_tx.send(Message::Stop {
            reason: reason.to_string(),
        });
    }
}

impl Swarm {
    /// Stage 2: measures each agent's clock offset: three pings, keeping the fastest round trip.
    async fn probe_clocks(&mut self) -> Result<(), RunError> {
        let agents = &mut self.agents;
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
                let event = tokio::time::timeout_at(deadline, self.events_rx.recv()).await;
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
                    Ok(Some((i, Err(e)))) => return Err(left_before_start(agents, i, &e)),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        stop_all(agents, "clock probe timed out");
                        return Err(RunError::Fatal(
                            "agents did not answer the clock probe in time".into(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Stage 3: splits the plan by capacity and sends each agent its share and start time,
    /// or refuses a plan the swarm cannot hold.
    fn send_plans(&mut self, o: &Settings) -> Result<Start, RunError> {
        let agents = &mut self.agents;
        let peak = o.profile.peak_connections();
        let weights: Vec<u64> = agents
            .iter()
            .map(|a| a.info.fd_limit.saturating_sub(host::FD_RESERVE))
            .collect();
        let capacity: u64 = weights.iter().sum();
        if capacity < peak {
            stop_all(agents, "the swarm cannot hold the plan");
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
        let start = Start {
            unix_us: unix_us() + lead_us,
            at: Instant::now() + Duration::from_micros(lead_us),
        };
        let targets_text = o
            .targets
            .as_ref()
            .map(|t| t.iter().map(ToString::to_string).collect());
        for (index, agent) in agents.iter_mut().enumerate() {
            agent.share = o.profile.share(&weights, index).peak_connections();
            let plan = PlanMsg {
                agent_index: index,
                agents: o.roll.expected,
                profile: o.profile_json.clone(),
                weights: weights.clone(),
                start_at_us: (start.unix_us as i64 + agent.offset_us).max(0) as u64,
                lease_ms: o.lease.as_millis() as u64,
                targets: targets_text.clone(),
            };
            let _ = agent.out_tx.send(Message::Plan(Box::new(plan)));
        }
        Ok(start)
    }

    /// Stage 4: waits for every agent to accept its share; returns the run's source and
    /// target labels.
    async fn await_ready(&mut self) -> Result<(Vec<String>, Vec<String>), RunError> {
        let agents = &mut self.agents;
        let mut source_labels = SourceLabels::default();
        let mut target_labels: Vec<String> = Vec::new();
        let mut ready = 0;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        while ready < agents.len() {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some((i, Ok(Message::Ready { sources, targets })))) => {
                    agents[i].source_map = source_labels.add_agent(&agents[i].info.host, &sources);
                    if target_labels.is_empty() {
                        target_labels = targets;
                    }
                    ready += 1;
                }
                Ok(Some((i, Ok(Message::Refused { reason })))) => {
                    stop_all(agents, "another agent refused the plan");
                    return Err(RunError::Plan(format!(
                        "agent {} refused the plan: {reason}",
                        agents[i].info.name
                    )));
                }
                Ok(Some((i, Err(e)))) => return Err(left_before_start(agents, i, &e)),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    stop_all(agents, "not every agent accepted the plan in time");
                    return Err(RunError::Fatal(
                        "not every agent accepted the plan in time".into(),
                    ));
                }
            }
        }
        Ok((source_labels.into_labels(), target_labels))
    }
}

/// Ends the setup when an agent leaves before the start: the others are told to stop.
fn left_before_start(agents: &[Agent], index: usize, error: &WireError) -> RunError {
    stop_all(agents, "an agent left before the start");
    RunError::Fatal(format!(
        "agent {} left before the start: {error}",
        agents[index].info.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Opener, PROTOCOL_VERSION, Role};
    use tokio::net::TcpStream;
    use tokio::time::timeout;

    /// Every wait in these tests ends by this, so a broken stage fails instead of hanging.
    const BOUND: Duration = Duration::from_secs(10);

    /// A coordinator's accept loop on a port-0 loopback listener, and what `drive` holds.
    struct Door {
        listen: SocketAddr,
        joined_rx: mpsc::Receiver<Joined>,
        full: Arc<AtomicBool>,
        accept: tokio::task::JoinHandle<()>,
    }

    async fn open_door(expected: usize) -> Door {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let listen = listener.local_addr().expect("address");
        let full = Arc::new(AtomicBool::new(false));
        let (joined_tx, joined_rx) = mpsc::channel(expected.max(1));
        let accept = tokio::spawn(accept_loop(listener, None, joined_tx, full.clone()));
        Door {
            listen,
            joined_rx,
            full,
            accept,
        }
    }

    fn roll(door: &Door, expected: usize, join_timeout: Duration) -> Roll {
        Roll {
            expected,
            join_timeout,
            allow_synthetic: true,
            progress: Progress::Silent,
            listen: door.listen,
        }
    }

    async fn read(stream: &mut TcpStream) -> Message {
        timeout(BOUND, wire::read_message(stream))
            .await
            .expect("the coordinator answers in time")
            .expect("a message")
    }

    /// Joins as an agent with no token, the way `stampede agent` does; returns the stream
    /// and the session's opening end.
    async fn fake_agent(listen: SocketAddr, name: &str) -> (TcpStream, Opener) {
        let mut stream = TcpStream::connect(listen).await.expect("connect");
        let nonce = wire::nonce();
        let info = AgentInfo {
            name: name.into(),
            host: "test-host".into(),
            stampede_version: env!("CARGO_PKG_VERSION").into(),
            cores: 1,
            fd_limit: 1024,
            sources: Vec::new(),
            clock_us: unix_us(),
            synthetic: true,
        };
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            nonce: nonce.clone(),
            info,
        };
        wire::write_message(&mut stream, &hello)
            .await
            .expect("hello");
        let Message::Challenge { nonce: theirs, .. } = read(&mut stream).await else {
            panic!("expected a challenge");
        };
        let proof = Message::Proof {
            proof: String::new(),
        };
        wire::write_message(&mut stream, &proof)
            .await
            .expect("proof");
        assert!(matches!(read(&mut stream).await, Message::Welcome));
        let (_, opener) = wire::session_keys(b"", &nonce, &theirs, Role::Agent);
        (stream, opener)
    }

    #[tokio::test]
    async fn join_all_admits_a_peer_then_the_full_swarm_refuses_a_late_one() {
        let mut door = open_door(1).await;
        let (_control_tx, mut control_rx) = mpsc::unbounded_channel();
        let peer = tokio::spawn(fake_agent(door.listen, "first"));
        let roll = roll(&door, 1, BOUND);
        let mut swarm = timeout(BOUND, join_all(&mut control_rx, &mut door.joined_rx, &roll))
            .await
            .expect("the join stage ends in time")
            .expect("one agent joins");
        door.full.store(true, Ordering::Relaxed);
        let (mut stream, mut opener) = peer.await.expect("the fake agent joins");
        assert_eq!(swarm.agents.len(), 1);
        assert_eq!(swarm.agents[0].info.name, "first");
        assert_eq!(swarm.agents[0].status, AgentStatus::Running);

        // The session is sealed both ways: a ping reaches the agent, its pong comes back.
        let _ = swarm.agents[0].out_tx.send(Message::Ping { id: 7 });
        let ping = timeout(BOUND, opener.read(&mut stream))
            .await
            .expect("in time");
        assert!(matches!(ping, Ok(Message::Ping { id: 7 })), "{ping:?}");

        let mut late = TcpStream::connect(door.listen).await.expect("connect");
        match read(&mut late).await {
            Message::Refused { reason } => assert!(reason.contains("already complete"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            swarm.events_rx.try_recv().is_err(),
            "no event from the refused peer"
        );
        door.accept.abort();
    }

    #[tokio::test]
    async fn join_all_gives_up_at_its_deadline_and_stops_those_who_joined() {
        let mut door = open_door(2).await;
        let (_control_tx, mut control_rx) = mpsc::unbounded_channel();
        let (mut stream, mut opener) = fake_agent(door.listen, "lonely").await;
        let roll = roll(&door, 2, Duration::from_millis(300));
        let joined = timeout(BOUND, join_all(&mut control_rx, &mut door.joined_rx, &roll))
            .await
            .expect("the join stage ends in time");
        match joined {
            Err(RunError::Fatal(text)) => {
                assert!(text.contains("only 1 of 2 agents joined"), "{text}");
                assert!(text.contains("lonely (127.0.0.1:"), "{text}");
            }
            _ => panic!("expected a join timeout"),
        }
        let stop = timeout(BOUND, opener.read(&mut stream))
            .await
            .expect("in time");
        match stop {
            Ok(Message::Stop { reason }) => assert_eq!(reason, "not every agent joined"),
            other => panic!("expected a stop, got {other:?}"),
        }
        door.accept.abort();
    }

    #[tokio::test]
    async fn join_all_stops_when_told_to() {
        let mut door = open_door(1).await;
        let (control_tx, mut control_rx) = mpsc::unbounded_channel();
        control_tx
            .send(Control::Stop("interrupted".into()))
            .expect("control");
        let roll = roll(&door, 1, BOUND);
        let joined = timeout(BOUND, join_all(&mut control_rx, &mut door.joined_rx, &roll))
            .await
            .expect("the join stage ends in time");
        assert!(
            matches!(&joined, Err(RunError::Fatal(t)) if t.contains("interrupted")),
            "expected a stop"
        );
        door.accept.abort();
    }
}
