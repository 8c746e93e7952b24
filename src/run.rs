//! `stampede run`: one process plays a whole profile. Checks the plan against this host, starts
//! the embedded sink if asked, runs the engine, merges its snapshots, prints progress, and
//! writes the results.
//!
//! Everything that can refuse a plan does so before the first socket opens.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::agent::pool::SourcePool;
use crate::agent::{Engine, EnginePlan};
use crate::collect::{Collector, open_outputs};
pub use crate::collect::{Outputs, Progress, RunResult};
use crate::host;
use crate::live::{Control, ControlRx, LiveTx};
use crate::profile::timeline;
use crate::profile::{Phase, Profile, ServerAction, TargetSpec};
use crate::sink;

/// A run that could not start (exit code 2) or broke down (exit code 3).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The plan does not fit this host or its inputs are unusable; nothing was opened.
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Fatal(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Plan(_) => 2,
            RunError::Fatal(_) => 3,
        }
    }
}

pub struct RunOptions {
    pub profile: Profile,
    pub outputs: Outputs,
    /// Worker threads; default: one per core, no more than connections.
    pub workers: Option<usize>,
    /// Run even if the source pool cannot hold the plan (to show the port wall).
    pub allow_overcommit: bool,
    pub progress: Progress,
    /// Stop, pause and resume requests (signals, the dashboard).
    pub control_rx: ControlRx,
    /// Where to publish a live snapshot each second, for a dashboard or metrics endpoint.
    pub live_tx: Option<LiveTx>,
}

/// Connections, file descriptors and pool checked against this host before anything opens.
pub struct Preflight {
    pub pool: SourcePool,
    pub workers: usize,
}

/// What to check a plan against: where it connects, and how it will be run.
pub struct PreflightInput<'a> {
    pub profile: &'a Profile,
    /// Targets to use; `None` takes the profile's (a placeholder for the embedded sink).
    pub targets: Option<Vec<SocketAddr>>,
    /// Whether the embedded sink runs in this process (its sockets count too).
    pub embedded_here: bool,
    pub workers: Option<usize>,
    pub allow_overcommit: bool,
}

/// Refuses, before anything opens, a plan this process cannot hold: file descriptors, source
/// ports, unbindable source addresses, a kernel without `IP_LOCAL_PORT_RANGE`.
pub fn preflight(input: PreflightInput<'_>) -> Result<Preflight, RunError> {
    let profile = input.profile;
    let peak = profile.peak_connections();
    let embedded = input.embedded_here;
    let limit = host::raise_fd_limit()
        .map_err(|e| RunError::Fatal(format!("cannot read RLIMIT_NOFILE: {e}")))?;
    let sockets_per_connection = if embedded { 2 } else { 1 };
    let need = peak * sockets_per_connection + host::FD_RESERVE;
    if need > limit.soft {
        let fits = (limit.soft.saturating_sub(host::FD_RESERVE)) / sockets_per_connection;
        return Err(RunError::Plan(format!(
            "the plan holds {peak} connections{} and needs {need} file descriptors \
             (including {} in reserve), but this process may open {} (RLIMIT_NOFILE soft {}, \
             hard {}). Fix: raise the hard limit (`ulimit -Hn {need}` as root, LimitNOFILE= \
             in a systemd unit, or nofile in /etc/security/limits.conf), lower `connections` \
             to at most {fits}{}",
            if embedded {
                " plus as many embedded-sink sockets"
            } else {
                ""
            },
            host::FD_RESERVE,
            limit.soft,
            limit.soft,
            limit.hard,
            if embedded {
                ", or run `stampede sink` as separate processes and target them"
            } else {
                ""
            }
        )));
    }
    let targets: Vec<SocketAddr> = match (input.targets, &profile.target) {
        (Some(targets), _) => targets,
        // The embedded sink's port is known once it binds; capacity only needs the count.
        (None, TargetSpec::Embedded) => vec![SocketAddr::from(([127, 0, 0, 1], 1))],
        (None, TargetSpec::Addrs(addrs)) => addrs.clone(),
    };
    if let Some(i) = profile
        .phases
        .iter()
        .position(|p| matches!(p, Phase::Server { admin: None, .. }) && !input.embedded_here)
    {
        return Err(RunError::Plan(format!(
            "phases[{i}].server has no `admin` address, and only the embedded sink of a single \
             process can be told without one; give the sink's admin endpoint \
             (`stampede sink --admin ADDR`)"
        )));
    }
    let pool = source_pool(profile, targets, host::ephemeral_port_range())?;
    if !input.allow_overcommit {
        pool.check(peak)
            .map_err(|e| RunError::Plan(e.to_string()))?;
    }
    let local = host::local_addresses();
    for ip in profile.sources.addrs.iter() {
        if !host::can_bind(*ip, &local) {
            return Err(RunError::Plan(format!(
                "sources.addrs: {ip} is not an address of this host, so sockets cannot bind to \
                 it; add it (`ip addr add {ip}/32 dev lo` for a test, or to the NIC facing the \
                 target) or remove it from the profile"
            )));
        }
    }
    if let Some(range) = pool.port_range {
        crate::net::probe_port_range_support(range).map_err(RunError::Plan)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = input
        .workers
        .unwrap_or(cores)
        .clamp(1, peak.clamp(1, 1024) as usize);
    Ok(Preflight { pool, workers })
}

/// The source pool `profile` (a whole plan, or an agent's share) runs from towards `targets`
/// with this ephemeral port range; cutovers add target sets after the profile's own.
/// `pool.check(profile.peak_connections())` says whether it fits: what every run and agent
/// checks before it opens anything, and what tests/deploy.rs checks each pod's share with.
pub fn source_pool(
    profile: &Profile,
    targets: Vec<SocketAddr>,
    ephemeral: crate::profile::sources::PortRange,
) -> Result<SourcePool, RunError> {
    let mut sizes = vec![targets.len()];
    let mut targets = targets;
    for green in profile.cutover_targets() {
        sizes.push(green.len());
        targets.extend(green);
    }
    Ok(SourcePool::new(&profile.sources, &targets, ephemeral)
        .map_err(|e| RunError::Plan(e.to_string()))?
        .with_sets(&sizes))
}

/// Plays the profile's `server` phases: at each one's start, tells the sink what to do, through
/// `embedded` (the in-process sink) or the phase's admin endpoint. A sink that cannot be
/// reached is reported once and the run goes on: the clients' figures will show it.
pub async fn play_server_phases(
    profile: Profile,
    start: Instant,
    embedded: Option<Arc<sink::SinkControl>>,
) {
    let spans = timeline::spans(&profile);
    for (span, phase) in spans.iter().zip(&profile.phases) {
        if let Phase::Nlb { change, target, .. } = phase {
            tokio::time::sleep_until(start + span.start).await;
            let outcome = match profile.nlb {
                Some(link) => crate::nlb::admin_target(link.admin, *target, *change).await,
                None => Err("the profile names no nlb.admin".to_string()),
            };
            if let Err(e) = outcome {
                let _ = writeln!(
                    std::io::stderr(),
                    "stampede: phase {} (nlb): {e}",
                    span.index + 1
                );
            }
            continue;
        }
        let Phase::Server { action, admin, .. } = phase else {
            continue;
        };
        tokio::time::sleep_until(start + span.start).await;
        let action = sink_action(*action);
        let outcome = match (admin, &embedded) {
            (Some(addr), _) => sink::admin_request(*addr, &action).await,
            (None, Some(control)) => {
                control.apply(&action);
                Ok(())
            }
            (None, None) => Err("no admin address and no embedded sink".to_string()),
        };
        if let Err(e) = outcome {
            let _ = writeln!(
                std::io::stderr(),
                "stampede: phase {} (server): {e}",
                span.index + 1
            );
        }
    }
}

fn sink_action(action: ServerAction) -> sink::SinkAction {
    match action {
        ServerAction::CloseAll => sink::SinkAction::CloseAll,
        ServerAction::CloseFraction(fraction) => sink::SinkAction::CloseFraction { fraction },
        ServerAction::CloseRate(per_second) => sink::SinkAction::CloseRate { per_second },
        ServerAction::Lifetime(lifetime) => sink::SinkAction::Lifetime {
            seconds: lifetime.map(|d| d.as_secs_f64()),
        },
        ServerAction::StopAccepting => sink::SinkAction::StopAccepting,
        ServerAction::StartAccepting => sink::SinkAction::StartAccepting,
    }
}

/// Plays `options.profile` in this process.
pub async fn execute(mut options: RunOptions) -> Result<RunResult, RunError> {
    let preflight = preflight(PreflightInput {
        profile: &options.profile,
        targets: None,
        embedded_here: options.profile.target == TargetSpec::Embedded,
        workers: options.workers,
        allow_overcommit: options.allow_overcommit,
    })?;
    let nlb_watch = crate::nlb::NlbWatch::for_profile(&options.profile)
        .await
        .map_err(RunError::Plan)?;
    let profile = &options.profile;
    let spans = timeline::spans(profile);
    let outputs = options.outputs.clone();
    let hlog = open_outputs(&outputs, &profile.name).map_err(RunError::Plan)?;

    let mut pool = preflight.pool;
    let (sink_stop_tx, sink_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut sink_task = None;
    let mut embedded_control = None;
    // The embedded sink speaks the profile's protocol; its certificate, if any, is trusted.
    let (acceptor, sink_cert) = if profile.target == TargetSpec::Embedded {
        crate::protocol::SinkProtocol::for_profile(profile)
            .acceptor()
            .map_err(|e| RunError::Fatal(format!("cannot start the embedded sink: {e}")))?
    } else {
        (crate::protocol::Acceptor::Tcp, None)
    };
    let connector =
        crate::protocol::Connector::new(profile, sink_cert.as_slice()).map_err(RunError::Plan)?;
    if profile.target == TargetSpec::Embedded {
        let listener = sink::bind_embedded()
            .map_err(|e| RunError::Fatal(format!("cannot start the embedded sink: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| RunError::Fatal(format!("embedded sink has no address: {e}")))?;
        pool.targets[0] = addr;
        let stats = Arc::new(sink::SinkStats::default());
        let control = sink::SinkControl::new();
        embedded_control = Some(control.clone());
        sink_task = Some(tokio::spawn(sink::run_protocol(
            vec![listener],
            stats,
            control,
            acceptor,
            async {
                let _ = sink_stop_rx.await;
            },
        )));
    }
    let source_labels = (0..pool.sources.len())
        .map(|i| pool.source_label(i))
        .collect();
    let target_labels: Vec<String> = pool.targets.iter().map(ToString::to_string).collect();

    let plan = Arc::new(EnginePlan::new(profile, pool).with_connector(connector));
    let workers = preflight.workers;
    let (snapshot_tx, mut snapshot_rx) = mpsc::unbounded_channel();
    // A short lead so every worker thread is up before the first planned attempt.
    let start = Instant::now() + Duration::from_millis(20);
    let engine = Engine::start(plan, workers, start, snapshot_tx)
        .map_err(|e| RunError::Fatal(format!("cannot start worker threads: {e}")))?;
    let server_phases = tokio::spawn(play_server_phases(
        options.profile.clone(),
        start,
        embedded_control,
    ));

    let mut collector = Collector::new(
        profile,
        spans,
        source_labels,
        target_labels,
        workers,
        start,
        hlog,
        options.progress,
        options.live_tx.take(),
    );
    if let Some(watch) = &nlb_watch {
        collector.set_nlb_live(watch.live());
    }
    let mut abort_reason: Option<String> = None;
    let mut finished = 0usize;
    let mut controls_open = true;
    while finished < workers {
        tokio::select! {
            received = snapshot_rx.recv() => match received {
                Some(snapshot) => {
                    if snapshot.last {
                        finished += 1;
                    }
                    collector.push(snapshot);
                }
                // Every worker is gone, whatever they managed to send.
                None => break,
            },
            control = options.control_rx.recv(), if controls_open => match control {
                Some(Control::Stop(reason)) => {
                    if abort_reason.is_none() {
                        abort_reason = Some(reason);
                        collector.set_stopping();
                        engine.stop();
                    }
                }
                Some(Control::Pause) => {
                    engine.set_paused(true);
                    collector.set_paused(true);
                }
                Some(Control::Resume) => {
                    engine.set_paused(false);
                    collector.set_paused(false);
                }
                None => controls_open = false,
            },
        }
    }
    server_phases.abort();
    if tokio::task::spawn_blocking(move || engine.join())
        .await
        .is_err()
    {
        abort_reason.get_or_insert_with(|| "a worker thread panicked".to_string());
    }
    if let Some(watch) = nlb_watch {
        collector.set_nlb(watch.finish().await);
    }
    let _ = sink_stop_tx.send(());
    if let Some(task) = sink_task {
        let _ = task.await;
    }
    Ok(collector.finish(abort_reason, &outputs))
}
