//! `stampede run`: one process plays a whole profile. Checks the plan against this host, starts
//! the embedded sink if asked, runs the engine, merges its snapshots, prints progress, and
//! writes the results.
//!
//! Everything that can refuse a plan does so before the first socket opens.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::agent::pool::SourcePool;
use crate::agent::{Engine, EnginePlan};
use crate::host;
use crate::metrics::{Aggregate, CompletedInterval, Latency};
use crate::profile::duration::human_micros;
use crate::profile::timeline::{self, PhaseSpan};
use crate::profile::{Profile, TargetSpec};
use crate::report::hlog::HlogWriter;
use crate::report::summary::{RunFacts, Summary};
use crate::report::{junit, text};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// One line a second on stderr, then the summary on stdout.
    Lines,
    /// Only the summary on stdout.
    SummaryOnly,
    /// Nothing on the terminal (library use, tests).
    Silent,
}

pub struct RunOptions {
    pub profile: Profile,
    pub out_dir: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    /// Worker threads; default: one per core, no more than connections.
    pub workers: Option<usize>,
    /// Run even if the source pool cannot hold the plan (to show the port wall).
    pub allow_overcommit: bool,
    pub progress: Progress,
    /// Flips to `Some(reason)` to stop the run gracefully (Ctrl-C, SIGTERM).
    pub abort_rx: watch::Receiver<Option<String>>,
}

pub struct RunResult {
    pub summary: Summary,
    pub exit_code: i32,
}

/// Connections, file descriptors and pool checked against this host before anything opens.
struct Preflight {
    pool: SourcePool,
    workers: usize,
}

fn preflight(options: &RunOptions) -> Result<Preflight, RunError> {
    let profile = &options.profile;
    let peak = profile.peak_connections();
    let embedded = profile.target == TargetSpec::Embedded;
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
    let targets: Vec<SocketAddr> = match &profile.target {
        // The embedded sink's port is known once it binds; capacity only needs the count.
        TargetSpec::Embedded => vec![SocketAddr::from(([127, 0, 0, 1], 1))],
        TargetSpec::Addrs(addrs) => addrs.clone(),
    };
    let pool = SourcePool::new(&profile.sources, &targets, host::ephemeral_port_range())
        .map_err(|e| RunError::Plan(e.to_string()))?;
    if !options.allow_overcommit {
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
        crate::agent::socket::probe_port_range_support(range).map_err(RunError::Plan)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = options
        .workers
        .unwrap_or(cores)
        .clamp(1, peak.clamp(1, 1024) as usize);
    Ok(Preflight { pool, workers })
}

fn phase_at(spans: &[PhaseSpan], elapsed: Duration) -> Option<&PhaseSpan> {
    spans
        .iter()
        .find(|s| elapsed < s.end)
        .or_else(|| spans.last())
}

fn progress_line(spans: &[PhaseSpan], interval: &CompletedInterval, elapsed: Duration) -> String {
    let c = &interval.data.totals;
    let (phase, wanted) = match phase_at(spans, elapsed) {
        Some(span) => (
            format!("{} {}/{}", span.kind, span.index + 1, spans.len()),
            span.level_at(elapsed),
        ),
        None => ("-".to_string(), 0),
    };
    let p99 = |metric: Latency| {
        let h = interval.data.latency.get(metric);
        if h.is_empty() {
            "-".to_string()
        } else {
            human_micros(h.value_at_quantile(0.99))
        }
    };
    format!(
        "[{:>6.1}s] {phase:<10} open {:>8}/{:<8} connects/s {:>7} errors {:>5} connect p99 {:>8} heartbeat p99 {:>8}",
        elapsed.as_secs_f64(),
        interval.open,
        wanted,
        c.established,
        c.error_total(),
        p99(Latency::Connect),
        p99(Latency::HeartbeatRtt),
    )
}

/// Plays `options.profile` in this process.
pub async fn execute(mut options: RunOptions) -> Result<RunResult, RunError> {
    let preflight = preflight(&options)?;
    let profile = &options.profile;
    let spans = timeline::spans(profile);
    if let Some(dir) = &options.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            RunError::Plan(format!(
                "--out {}: cannot create the directory: {e}; choose a writable place",
                dir.display()
            ))
        })?;
    }

    let mut pool = preflight.pool;
    let (sink_stop_tx, sink_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut sink_task = None;
    if profile.target == TargetSpec::Embedded {
        let listener = sink::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| RunError::Fatal(format!("cannot start the embedded sink: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| RunError::Fatal(format!("embedded sink has no address: {e}")))?;
        pool.targets[0] = addr;
        let stats = Arc::new(sink::SinkStats::default());
        sink_task = Some(tokio::spawn(sink::run(vec![listener], stats, async {
            let _ = sink_stop_rx.await;
        })));
    }
    let source_labels = (0..pool.sources.len())
        .map(|i| pool.source_label(i))
        .collect();
    let target_labels: Vec<String> = pool.targets.iter().map(ToString::to_string).collect();
    let target_count = pool.targets.len();
    let source_count = pool.sources.len();

    let started_wall = SystemTime::now();
    let mut hlog = match &options.out_dir {
        Some(dir) => Some(
            HlogWriter::create(&dir.join("latency.hlog"), &profile.name, started_wall).map_err(
                |e| {
                    RunError::Plan(format!(
                        "--out {}: cannot write latency.hlog: {e}",
                        dir.display()
                    ))
                },
            )?,
        ),
        None => None,
    };

    let plan = Arc::new(EnginePlan {
        spans: spans.clone(),
        pool,
        heartbeat: profile.heartbeat,
        connect_timeout: profile.connect_timeout,
    });
    let workers = preflight.workers;
    let (snapshot_tx, mut snapshot_rx) = mpsc::unbounded_channel();
    // A short lead so every worker thread is up before the first planned attempt.
    let start = Instant::now() + Duration::from_millis(20);
    let engine = Engine::start(plan, workers, start, snapshot_tx)
        .map_err(|e| RunError::Fatal(format!("cannot start worker threads: {e}")))?;

    let mut aggregate = Aggregate::new(workers, source_count, target_count);
    let mut abort_reason: Option<String> = None;
    let mut hlog_error: Option<String> = None;
    let mut finished = 0usize;
    let mut handle = |done: Vec<CompletedInterval>, hlog: &mut Option<HlogWriter>, now: Instant| {
        for interval in done {
            let begin = Duration::from_secs(interval.seq);
            let elapsed = now.saturating_duration_since(start);
            let length = (elapsed.saturating_sub(begin)).min(Duration::from_secs(1));
            if let Some(log) = hlog.as_mut()
                && let Err(e) = log.write_interval(
                    begin,
                    length.max(Duration::from_millis(1)),
                    &interval.data.latency,
                )
            {
                hlog_error.get_or_insert_with(|| format!("latency.hlog: {e}"));
            }
            // The last interval may be a sliver after the final tick; nothing to say about it.
            let sliver =
                length < Duration::from_millis(100) && interval.data.totals == Default::default();
            if options.progress == Progress::Lines && !sliver {
                let line = progress_line(&spans, &interval, begin + length);
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    };
    while finished < workers {
        tokio::select! {
            received = snapshot_rx.recv() => match received {
                Some(snapshot) => {
                    if snapshot.last {
                        finished += 1;
                    }
                    let done = aggregate.push(snapshot);
                    handle(done, &mut hlog, Instant::now());
                }
                // Every worker is gone, whatever they managed to send.
                None => break,
            },
            changed = options.abort_rx.changed(), if abort_reason.is_none() => {
                let reason = match changed {
                    Ok(()) => options.abort_rx.borrow().clone(),
                    Err(_) => None,
                };
                if let Some(reason) = reason {
                    abort_reason = Some(reason);
                    engine.stop();
                }
            }
        }
    }
    let ended = Instant::now();
    let done = aggregate.finish();
    handle(done, &mut hlog, ended);
    if tokio::task::spawn_blocking(move || engine.join())
        .await
        .is_err()
    {
        abort_reason.get_or_insert_with(|| "a worker thread panicked".to_string());
    }
    let _ = sink_stop_tx.send(());
    if let Some(task) = sink_task {
        let _ = task.await;
    }

    let elapsed = ended.saturating_duration_since(start);
    let summary = Summary::build(
        RunFacts {
            profile: &profile.name,
            requested: profile.connections,
            spans: &spans,
            thresholds: &profile.thresholds,
            source_labels,
            target_labels,
            started_at_unix_ms: started_wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            elapsed_s: elapsed.as_secs_f64(),
            workers,
            abort_reason,
        },
        &aggregate,
    );
    let mut write_errors = Vec::new();
    if let Some(e) = hlog_error {
        write_errors.push(e);
    }
    if let Some(log) = hlog
        && let Err(e) = log.finish()
    {
        write_errors.push(format!("latency.hlog: {e}"));
    }
    if let Some(dir) = &options.out_dir {
        let json = serde_json::to_string_pretty(&summary)
            .map_err(|e| RunError::Fatal(format!("cannot encode summary.json: {e}")))?;
        if let Err(e) = std::fs::write(dir.join("summary.json"), json + "\n") {
            write_errors.push(format!("summary.json: {e}"));
        }
    }
    if let Some(path) = &options.junit
        && let Err(e) = std::fs::write(path, junit::render(&summary))
    {
        write_errors.push(format!("{}: {e}", path.display()));
    }
    if options.progress != Progress::Silent {
        let mut stdout = std::io::stdout();
        let _ = write!(stdout, "{}", text::render(&summary));
        let _ = stdout.flush();
    }
    let mut exit_code = summary.outcome.exit_code();
    if !write_errors.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "stampede: could not write results: {}",
            write_errors.join("; ")
        );
        exit_code = exit_code.max(3);
    }
    Ok(RunResult { summary, exit_code })
}
