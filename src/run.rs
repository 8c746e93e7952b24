//! `stampede run`: one process plays a whole profile. Checks the plan against this host, starts
//! the embedded sink if asked, runs the engine, merges its snapshots, prints progress, and
//! writes the results.
//!
//! Everything that can refuse a plan does so before the first socket opens (`stage::preflight`,
//! which a swarm agent runs on its share too).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::agent::{Engine, EnginePlan};
use crate::collect::{Collector, open_outputs};
pub use crate::collect::{Outputs, Progress, RunResult};
use crate::live::{Control, ControlRx, LiveTx};
use crate::profile::{Profile, TargetSpec, timeline};
use crate::sink;
pub use crate::stage::RunError;
use crate::stage::{PreflightInput, play_server_phases, preflight};

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
