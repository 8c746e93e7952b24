//! The collector: merges interval snapshots from any reporters (a run's own workers, or a
//! swarm's agents), writes the interval log, prints progress, publishes live snapshots, and at
//! the end builds the summary and writes every output.
//!
//! It owns no sockets and makes no decisions about the load; it only turns what reporters sent
//! into results.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::live::{AgentRow, LiveSnapshot, LiveTx, RunState};
use crate::metrics::{
    Aggregate, CompletedInterval, IntervalSnapshot, Latency, LatencySet, add_sparse,
};
use crate::profile::Profile;
use crate::profile::duration::human_micros;
use crate::profile::timeline::{self, PhaseSpan};
use crate::report::hlog::HlogWriter;
use crate::report::summary::{AgentRecord, PhaseStats, RunFacts, Summary};
use crate::report::{junit, text};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// One line a second on stderr, then the summary on stdout.
    Lines,
    /// Only the summary on stdout.
    SummaryOnly,
    /// Nothing on the terminal (library use, tests, a dashboard that owns the screen).
    Silent,
}

/// Where results go.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    pub out_dir: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    /// With `out_dir`: write report.html (from what was written there) at the end.
    pub report: bool,
    /// With `out_dir`: the profile as run (after `--set`), written as profile.json.
    pub profile_json: Option<serde_json::Value>,
}

/// The finished run: its summary and the process exit code it implies.
pub struct RunResult {
    pub summary: Summary,
    pub exit_code: i32,
}

/// Creates `--out DIR` (if given) and its interval log, before anything opens: a directory that
/// cannot be written is a usage error, not a surprise at the end of a run.
pub fn open_outputs(outputs: &Outputs, profile: &str) -> Result<Option<HlogWriter>, String> {
    let Some(dir) = &outputs.out_dir else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "--out {}: cannot create the directory: {e}; choose a writable place",
            dir.display()
        )
    })?;
    HlogWriter::create(&dir.join("latency.hlog"), profile, SystemTime::now())
        .map(Some)
        .map_err(|e| format!("--out {}: cannot write latency.hlog: {e}", dir.display()))
}

pub struct Collector {
    profile_name: String,
    requested: u64,
    established_by: &'static str,
    thresholds: Vec<crate::profile::threshold::Threshold>,
    spans: Arc<Vec<PhaseSpan>>,
    source_labels: Vec<String>,
    target_labels: Vec<String>,
    reporters: usize,
    start: Instant,
    started_wall: SystemTime,
    aggregate: Aggregate,
    hlog: Option<HlogWriter>,
    write_errors: Vec<String>,
    progress: Progress,
    live_tx: Option<LiveTx>,
    /// Time spent paused so far, and since when the run is paused now.
    shift: Duration,
    paused_since: Option<Instant>,
    stopping: bool,
    agents_expected: usize,
    agent_rows: Vec<AgentRow>,
    agent_records: Vec<AgentRecord>,
    /// Whether synthetic agents among `agent_records` may let the run pass.
    allow_synthetic: bool,
    start_spread_ms: Option<f64>,
    nlb: Option<crate::nlb::NlbSummary>,
    nlb_live: Option<crate::nlb::NlbLive>,
    /// Per phase: counters, connect latency and reconnect attempts of the intervals that
    /// overlap it.
    phase_stats: Vec<PhaseStats>,
}

impl Collector {
    /// `start` is the instant the plan's clock starts; `reporters` how many will report.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        profile: &Profile,
        spans: Vec<PhaseSpan>,
        source_labels: Vec<String>,
        target_labels: Vec<String>,
        reporters: usize,
        start: Instant,
        hlog: Option<HlogWriter>,
        progress: Progress,
        live_tx: Option<LiveTx>,
    ) -> Collector {
        let aggregate = Aggregate::new(reporters, source_labels.len(), target_labels.len());
        Collector {
            profile_name: profile.name.clone(),
            requested: profile.connections,
            established_by: profile.established_by(),
            thresholds: profile.thresholds.clone(),
            spans: Arc::new(spans),
            source_labels,
            target_labels,
            reporters,
            start,
            started_wall: SystemTime::now(),
            aggregate,
            hlog,
            write_errors: Vec::new(),
            progress,
            live_tx,
            shift: Duration::ZERO,
            paused_since: None,
            stopping: false,
            agents_expected: 0,
            agent_rows: Vec::new(),
            agent_records: Vec::new(),
            allow_synthetic: false,
            start_spread_ms: None,
            phase_stats: Vec::new(),
            nlb: None,
            nlb_live: None,
        }
    }

    /// Where the NLB emulator's latest sample is, for live snapshots until `set_nlb`.
    pub fn set_nlb_live(&mut self, live: crate::nlb::NlbLive) {
        self.nlb_live = Some(live);
    }

    /// The NLB emulator's counters for the run, for the summary.
    pub fn set_nlb(&mut self, nlb: crate::nlb::NlbSummary) {
        self.nlb = Some(nlb);
    }

    /// For swarm runs: how many agents are expected, and their rows for live views.
    pub fn set_agents(&mut self, expected: usize, rows: Vec<AgentRow>) {
        self.agents_expected = expected;
        self.agent_rows = rows;
    }

    /// For swarm runs: whether synthetic agents may let the run pass (`--allow-synthetic`).
    pub fn set_allow_synthetic(&mut self, allowed: bool) {
        self.allow_synthetic = allowed;
    }

    /// For swarm runs: the per-agent records and start spread that go into the summary.
    pub fn set_agent_records(&mut self, records: Vec<AgentRecord>, start_spread_ms: Option<f64>) {
        self.agent_records = records;
        self.start_spread_ms = start_spread_ms;
    }

    pub fn set_paused(&mut self, paused: bool) {
        match (paused, self.paused_since) {
            (true, None) => self.paused_since = Some(Instant::now()),
            (false, Some(since)) => {
                self.shift += since.elapsed();
                self.paused_since = None;
            }
            _ => {}
        }
    }

    pub fn set_stopping(&mut self) {
        self.stopping = true;
    }

    /// Elapsed plan time at `now`: wall time since start less time spent paused.
    fn plan_time(&self, now: Instant) -> Duration {
        let paused_now = self
            .paused_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        now.saturating_duration_since(self.start)
            .saturating_sub(self.shift + paused_now)
    }

    /// Takes one snapshot; returns the intervals it completed (already logged and shown).
    pub fn push(&mut self, snapshot: IntervalSnapshot) -> Vec<CompletedInterval> {
        let done = self.aggregate.push(snapshot);
        self.emit(&done, Instant::now());
        done
    }

    /// A reporter that will send nothing more (lost, or refused the plan).
    pub fn reporter_gone(&mut self, reporter: usize) {
        let done = self.aggregate.reporter_gone(reporter);
        self.emit(&done, Instant::now());
    }

    fn emit(&mut self, done: &[CompletedInterval], now: Instant) {
        let Some(last) = done.last().map(|i| i.seq) else {
            return;
        };
        for interval in done {
            self.add_to_phases(interval);
            let begin = Duration::from_secs(interval.seq);
            let elapsed = now.saturating_duration_since(self.start);
            let length = elapsed.saturating_sub(begin).min(Duration::from_secs(1));
            if let Some(log) = self.hlog.as_mut()
                && let Err(e) = log.write_interval(
                    begin,
                    length.max(Duration::from_millis(1)),
                    &interval.data.latency,
                )
                && self.write_errors.is_empty()
            {
                self.write_errors.push(format!("latency.hlog: {e}"));
            }
            // The last interval may be a sliver after the final tick; nothing to say about it.
            let sliver =
                length < Duration::from_millis(100) && interval.data.totals == Default::default();
            if self.progress == Progress::Lines && !sliver {
                let line = progress_line(&self.spans, interval, self.plan_time(now));
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
        if let Some(live_tx) = &self.live_tx
            && let Some(interval) = done.iter().find(|i| i.seq == last)
        {
            let snapshot = self.live_snapshot(interval.clone(), now, RunState::Running);
            live_tx.send_replace(Some(Arc::new(snapshot)));
        }
    }

    /// Adds an interval to every phase it overlaps (plan time, pauses aside).
    fn add_to_phases(&mut self, interval: &CompletedInterval) {
        if self.phase_stats.len() < self.spans.len() {
            self.phase_stats
                .resize(self.spans.len(), PhaseStats::default());
        }
        let (begin, end) = (
            Duration::from_secs(interval.seq),
            Duration::from_secs(interval.seq + 1),
        );
        for span in self.spans.iter().filter(|s| s.start < end && begin < s.end) {
            let stats = &mut self.phase_stats[span.index];
            stats.counts.add(&interval.data.totals);
            for (slot, metric) in [
                (&mut stats.connect, Latency::Connect),
                (&mut stats.recovery, Latency::Recovery),
                (&mut stats.disconnect, Latency::Disconnect),
            ] {
                add_sparse(
                    slot.get_or_insert_with(crate::metrics::new_histogram),
                    interval.data.latency.get(metric),
                );
            }
            if stats.reconnect_attempts.is_empty() {
                stats.reconnect_attempts = vec![0; interval.data.reconnect_attempts.len()];
            }
            for (mine, theirs) in stats
                .reconnect_attempts
                .iter_mut()
                .zip(interval.data.reconnect_attempts)
            {
                *mine += theirs;
            }
        }
    }

    fn summary(&self, elapsed: Duration, abort_reason: Option<String>) -> Summary {
        let mut summary = Summary::build(
            RunFacts {
                profile: &self.profile_name,
                requested: self.requested,
                established_by: self.established_by,
                wanted_at_end: phase_at(&self.spans, elapsed).map_or(0, |s| s.level_at(elapsed)),
                spans: &self.spans,
                thresholds: &self.thresholds,
                source_labels: self.source_labels.clone(),
                target_labels: self.target_labels.clone(),
                started_at_unix_ms: self
                    .started_wall
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                elapsed_s: elapsed.as_secs_f64(),
                workers: self.reporters,
                abort_reason,
                agents: self.agent_records.clone(),
                start_spread_ms: self.start_spread_ms,
                phase_stats: self.phase_stats.clone(),
            },
            &self.aggregate,
        );
        summary.nlb = self
            .nlb
            .clone()
            .or_else(|| self.nlb_live.as_ref().and_then(crate::nlb::NlbLive::get));
        summary.gate_synthetic(self.allow_synthetic);
        summary
    }

    fn live_snapshot(
        &self,
        interval: CompletedInterval,
        now: Instant,
        state: RunState,
    ) -> LiveSnapshot {
        let plan_time = self.plan_time(now);
        let span = phase_at(&self.spans, plan_time);
        let state = match state {
            RunState::Running if self.stopping => RunState::Stopping,
            RunState::Running if self.paused_since.is_some() => RunState::Paused,
            other => other,
        };
        LiveSnapshot {
            summary: self.summary(plan_time, None),
            state,
            elapsed: now.saturating_duration_since(self.start),
            planned: timeline::total(&self.spans) + self.shift,
            spans: self.spans.clone(),
            phase: span.map(|s| s.index),
            wanted: span.map_or(0, |s| s.level_at(plan_time)),
            open: interval.open,
            open_established: interval.open_established,
            interval: interval.data.totals,
            interval_latency: interval.data.latency,
            total_latency: self.aggregate.totals.latency.clone(),
            agents: self.agent_rows.clone(),
            agents_expected: self.agents_expected,
        }
    }

    /// Completes every interval, builds the summary and writes every output. Prints the
    /// summary unless `Progress::Silent`.
    pub fn finish(mut self, abort_reason: Option<String>, outputs: &Outputs) -> RunResult {
        let ended = Instant::now();
        let done = self.aggregate.finish();
        self.emit(&done, ended);
        let elapsed = ended.saturating_duration_since(self.start);
        let summary = self.summary(elapsed, abort_reason);
        if let Some(live_tx) = &self.live_tx {
            let last = CompletedInterval {
                seq: 0,
                open: self.aggregate.open,
                open_established: self.aggregate.open_established,
                data: crate::metrics::IntervalData::new(0, 0),
            };
            let mut snapshot = self.live_snapshot(last, ended, RunState::Finished);
            snapshot.summary = summary.clone();
            snapshot.interval_latency = LatencySet::default();
            live_tx.send_replace(Some(Arc::new(snapshot)));
        }
        let mut write_errors = std::mem::take(&mut self.write_errors);
        if let Some(log) = self.hlog.take()
            && let Err(e) = log.finish()
        {
            write_errors.push(format!("latency.hlog: {e}"));
        }
        if let Some(dir) = &outputs.out_dir {
            match serde_json::to_string_pretty(&summary) {
                Ok(json) => {
                    if let Err(e) = std::fs::write(dir.join("summary.json"), json + "\n") {
                        write_errors.push(format!("summary.json: {e}"));
                    }
                }
                Err(e) => write_errors.push(format!("summary.json: {e}")),
            }
            if let Some(profile) = &outputs.profile_json {
                let json = serde_json::to_string_pretty(profile).unwrap_or_default();
                if let Err(e) = std::fs::write(dir.join("profile.json"), json + "\n") {
                    write_errors.push(format!("profile.json: {e}"));
                }
            }
            if outputs.report
                && write_errors.is_empty()
                && let Err(e) = crate::report::html::write_for_dir(dir, None)
            {
                write_errors.push(e);
            }
        }
        if let Some(path) = &outputs.junit
            && let Err(e) = std::fs::write(path, junit::render(&summary))
        {
            write_errors.push(format!("{}: {e}", path.display()));
        }
        if self.progress != Progress::Silent {
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
        RunResult { summary, exit_code }
    }
}

pub fn phase_at(spans: &[PhaseSpan], elapsed: Duration) -> Option<&PhaseSpan> {
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
        "[{:>6.1}s] {phase:<10} open {:>8}/{:<8} established {:>8} connects/s {:>7} errors {:>5} connect p99 {:>8} heartbeat p99 {:>8}",
        elapsed.as_secs_f64(),
        interval.open,
        wanted,
        interval.open_established,
        c.connected,
        c.error_total(),
        p99(Latency::Connect),
        p99(Latency::HeartbeatRtt),
    )
}
