//! `summary.json` (schema `stampede.summary/v1`, see `schemas/summary.schema.json`) and the
//! threshold evaluation that decides the outcome.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::metrics::{Aggregate, Counts, ErrorKind, Latency, TimelinePoint};
use crate::profile::threshold::{PhaseMetric, Subject, Threshold};
use crate::profile::timeline::PhaseSpan;

pub const SCHEMA: &str = "stampede.summary/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Aborted,
}

impl Outcome {
    /// Exit code: 0 pass, 1 a threshold failed, 3 aborted.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Pass => 0,
            Outcome::Fail => 1,
            Outcome::Aborted => 3,
        }
    }
}

/// Error counts serialised as an object with one key per kind, in a fixed order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts(pub [u64; ErrorKind::COUNT]);

impl Serialize for ErrorCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(ErrorKind::COUNT))?;
        for kind in ErrorKind::ALL {
            map.serialize_entry(kind.name(), &self.0[kind as usize])?;
        }
        map.end()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyStats {
    pub count: u64,
    pub min: Option<u64>,
    pub mean: Option<f64>,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub p999: Option<u64>,
    pub max: Option<u64>,
}

impl LatencyStats {
    pub fn of(h: &Histogram<u64>) -> LatencyStats {
        if h.is_empty() {
            return LatencyStats::default();
        }
        LatencyStats {
            count: h.len(),
            min: Some(h.min()),
            mean: Some((h.mean() * 10.0).round() / 10.0),
            p50: Some(h.value_at_quantile(0.5)),
            p90: Some(h.value_at_quantile(0.9)),
            p99: Some(h.value_at_quantile(0.99)),
            p999: Some(h.value_at_quantile(0.999)),
            max: Some(h.max()),
        }
    }

    fn stat(&self, name: &str) -> Option<f64> {
        match name {
            "p50" => self.p50.map(|v| v as f64),
            "p90" => self.p90.map(|v| v as f64),
            "p99" => self.p99.map(|v| v as f64),
            "p999" => self.p999.map(|v| v as f64),
            "max" => self.max.map(|v| v as f64),
            "mean" => self.mean,
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub connect: LatencyStats,
    pub connect_service: LatencyStats,
    pub heartbeat_rtt: LatencyStats,
    /// When reconnections completed, from the start of their phase.
    pub recovery: LatencyStats,
    /// The protocol handshake after TCP connect (empty for plain TCP).
    pub handshake: LatencyStats,
    /// Server-sent messages, from the send time stamped in them to arrival (MQTT fan-out,
    /// HTTP/2 DATA frames); empty when none were stamped.
    pub delivery: LatencyStats,
}

impl LatencySummary {
    fn family(&self, name: &str) -> Option<&LatencyStats> {
        match name {
            "connect" => Some(&self.connect),
            "connect_service" => Some(&self.connect_service),
            "heartbeat" => Some(&self.heartbeat_rtt),
            "handshake" => Some(&self.handshake),
            "delivery" => Some(&self.delivery),
            _ => None,
        }
    }
}

/// Two levels of "up": `connected` (the TCP handshake completed) and `established` (the
/// connection proved it is served: see `established_by`). Event counts include reconnects;
/// the `*_slots` counts and the ratios count each connection slot once, so reconnects never
/// lift them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ConnectionCounts {
    pub requested: u64,
    pub attempts: u64,
    pub connected: u64,
    pub established: u64,
    pub connected_slots: u64,
    pub established_slots: u64,
    /// `connected_slots` and `established_slots` over `requested`.
    pub connected_ratio: f64,
    pub established_ratio: f64,
    /// What proves a connection served: `first_heartbeat_echo` (plain TCP with heartbeats),
    /// `protocol_handshake`, or `none` (plain TCP without heartbeats: nothing is ever
    /// established).
    pub established_by: &'static str,
    pub peak_open: u64,
    /// Open (connected and held) when the run ended, before teardown; of those, established;
    /// and how many the plan wanted open then.
    pub open_at_end: u64,
    pub established_at_end: u64,
    pub wanted_at_end: u64,
    /// `established_at_end / wanted_at_end`; null when the plan wanted none.
    pub open_at_end_ratio: Option<f64>,
    pub closed: u64,
    /// Seconds from the run's start to the first `connect()` and to the last establishment.
    pub first_attempt_s: Option<f64>,
    pub last_established_s: Option<f64>,
    /// TCP connects per second during ramp phases only, from the first attempt to the ramps'
    /// last connect: reconnects under storms and drains do not count here.
    pub connects_per_s: Option<f64>,
    /// Reconnections in the busiest second of the run (see `reconnects`).
    pub peak_reconnects_per_s: u64,
    /// Back up after a failure, a close or a storm's kick (also counted in `established`, or
    /// for plain TCP without heartbeats in `connected`).
    pub reconnects: u64,
    /// Stopped retrying when the reconnect policy ran out of attempts.
    pub given_up: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HeartbeatCounts {
    pub sent: u64,
    pub answered: u64,
    /// Still awaiting their answer when the run ended: neither answered nor failed.
    pub in_flight_at_end: u64,
}

/// Messages beyond heartbeats: what the run's publisher sent and what the server sent down.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MessageCounts {
    /// Sent by the run's own publisher (MQTT fan-out).
    pub published: u64,
    /// Arrived on held connections: MQTT PUBLISH, HTTP/2 DATA frames.
    pub received: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThresholdResult {
    pub name: String,
    pub metric: String,
    pub op: &'static str,
    pub limit: f64,
    pub unit: &'static str,
    pub observed: Option<f64>,
    pub pass: bool,
}

/// Counters of one source address or one target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScopeCounts {
    pub addr: String,
    pub attempts: u64,
    pub connected: u64,
    pub established: u64,
    pub connected_slots: u64,
    pub established_slots: u64,
    pub closed: u64,
    pub errors: ErrorCounts,
}

impl ScopeCounts {
    fn of(addr: String, counts: &Counts) -> ScopeCounts {
        ScopeCounts {
            addr,
            attempts: counts.attempts,
            connected: counts.connected,
            established: counts.established,
            connected_slots: counts.slots_connected,
            established_slots: counts.slots_established,
            closed: counts.closed,
            errors: ErrorCounts(counts.errors),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseRecord {
    pub index: usize,
    pub name: &'static str,
    /// Seconds from the run's start.
    pub start_s: f64,
    pub end_s: f64,
    /// Connections wanted open at the phase's start and end.
    pub from: u64,
    pub to: u64,
    /// The busiest second's TCP connects (per-second resolution).
    pub peak_connects_per_s: u64,
    /// Connections open and established when the phase ended (at the end of the second it
    /// ended in), over `to`. Reported for disruptive phases (storm, drain, cutover, server).
    pub recovered_ratio: Option<f64>,
    /// Seconds from the phase's start until at least 99% (and all) of the connections that
    /// went down were established again for good: 0 if never more than 1% (any) were down at
    /// once; null if the phase ended short of it, or if fewer than 99% (all) of `to` were
    /// established at its end (`recovered_ratio`). Reported for disruptive phases.
    pub recovery_99_s: Option<f64>,
    pub recovery_100_s: Option<f64>,
    /// Connect latency of the attempts made during the phase.
    pub connect_p99_us: Option<u64>,
    pub errors: ErrorCounts,
    pub reconnects: u64,
    pub given_up: u64,
    /// Reconnections by attempts taken: element `n - 1` counts those that took `n` attempts
    /// (the last element: that many or more).
    pub reconnect_attempts: Vec<u64>,
}

/// What the collector gathered for one phase, interval by interval.
#[derive(Clone, Debug, Default)]
pub struct PhaseStats {
    pub counts: Counts,
    pub connect: Option<Histogram<u64>>,
    pub recovery: Option<Histogram<u64>>,
    pub disconnect: Option<Histogram<u64>>,
    pub reconnect_attempts: Vec<u64>,
}

/// `part / whole`, at most 1; 1 when nothing was wanted.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 1.0;
    }
    (part as f64 / whole as f64).min(1.0)
}

/// Seconds from the phase's start until at least `share` of `want` connections were open for
/// good, from the exact moments connections went down (`disconnect`) and came back
/// (`recovery`) during the phase: 0 if never more than `(1 - share) * want` were down at once,
/// None if more than that were still down when the phase ended.
fn recovery(stats: &PhaseStats, want: u64, share: f64) -> Option<f64> {
    let allowed = (want as f64 * (1.0 - share)).floor() as i64;
    let events = |h: &Option<Histogram<u64>>, sign: i64| -> Vec<(u64, i64)> {
        h.as_ref().map_or_else(Vec::new, |h| {
            h.iter_recorded()
                .map(|v| {
                    (
                        h.highest_equivalent(v.value_iterated_to()),
                        sign * v.count_at_value() as i64,
                    )
                })
                .collect()
        })
    };
    let mut timeline = events(&stats.disconnect, 1);
    timeline.extend(events(&stats.recovery, -1));
    // At equal times, count the returns first: a connection back in the same instant never
    // left the count.
    timeline.sort_by_key(|(at, delta)| (*at, *delta));
    let mut down = 0i64;
    let mut healed_at = Some(0u64);
    for (at, delta) in timeline {
        down += delta;
        if down > allowed {
            healed_at = None;
        } else if healed_at.is_none() {
            healed_at = Some(at);
        }
    }
    healed_at.map(|us| us as f64 / 1e6)
}

/// Where a swarm agent stands. The JSON and display text is the variant's snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Joined and playing its share.
    Running,
    /// Sent its last report.
    Finished,
    /// Sent its last report after the run was told to stop.
    Stopped,
    /// Went silent, disconnected, gave up or sent a bad report mid-run.
    Lost,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Running => "running",
            AgentStatus::Finished => "finished",
            AgentStatus::Stopped => "stopped",
            AgentStatus::Lost => "lost",
        }
    }
}

impl std::fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent of a swarm run, as the coordinator saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentRecord {
    pub name: String,
    pub host: String,
    /// Connections it was asked to hold.
    pub share: u64,
    /// It said it was synthetic (`agent --synthetic`): its figures are made up.
    pub synthetic: bool,
    pub established: u64,
    pub errors: u64,
    /// Seconds from the run's start to its last report, if it sent any.
    pub last_report_s: Option<f64>,
    /// `finished`, `stopped` or `lost` once the run is over.
    pub status: AgentStatus,
    /// When it actually started, relative to the planned start (after clock correction).
    pub start_offset_ms: Option<f64>,
    /// Interval reports merged from it, and the number of the last one (interval `k` covers
    /// second `k` of the run).
    pub intervals_received: u64,
    pub last_interval: Option<u64>,
    /// Reports that arrived after it was declared lost: not merged (the intervals they cover
    /// were already complete).
    pub late_reports: u64,
}

/// An agent whose data stops short of the run's end: what the summary does not include.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MissingAgent {
    pub agent: String,
    pub status: AgentStatus,
    pub last_interval: Option<u64>,
    /// Intervals the run has (its timeline's length) and how many of them this agent sent.
    pub intervals_expected: u64,
    pub intervals_received: u64,
    /// First and last interval it never sent, inclusive.
    pub missing_intervals: [u64; 2],
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub schema: &'static str,
    pub stampede_version: &'static str,
    pub profile: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
    /// Why the outcome is `fail` besides the thresholds (synthetic agents without
    /// `--allow-synthetic`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_reason: Option<String>,
    /// Swarm runs: agents that said they were synthetic (made-up figures, no load).
    pub synthetic_agents: u64,
    pub started_at_unix_ms: u64,
    pub duration_s: f64,
    pub planned_duration_s: f64,
    pub workers: usize,
    pub connections: ConnectionCounts,
    pub heartbeats: HeartbeatCounts,
    pub messages: MessageCounts,
    pub errors: ErrorCounts,
    /// Protocol failures broken down by what they said, per error kind:
    /// `{"tls_handshake": {"received alert UnknownCA (48)": 3}}`. Empty for plain TCP.
    pub error_details: BTreeMap<&'static str, BTreeMap<String, u64>>,
    pub latency_us: LatencySummary,
    pub thresholds: Vec<ThresholdResult>,
    pub sources: Vec<ScopeCounts>,
    pub targets: Vec<ScopeCounts>,
    pub phases: Vec<PhaseRecord>,
    pub timeline: Vec<TimelinePoint>,
    /// Swarm runs: one record per agent; empty for a single-process run.
    pub agents: Vec<AgentRecord>,
    /// Swarm runs: spread between the earliest and latest actual agent start.
    pub start_spread_ms: Option<f64>,
    /// What the NLB emulator named by the profile's `nlb.admin` counted during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nlb: Option<crate::nlb::NlbSummary>,
    /// Swarm runs: agents whose intervals stop short of the run's end (lost, killed,
    /// partitioned); empty when every interval of every agent arrived.
    pub missing: Vec<MissingAgent>,
}

/// What the run knows besides the merged figures.
pub struct RunFacts<'a> {
    pub profile: &'a str,
    pub requested: u64,
    /// `Profile::established_by`.
    pub established_by: &'static str,
    pub spans: &'a [PhaseSpan],
    pub thresholds: &'a [Threshold],
    pub source_labels: Vec<String>,
    pub target_labels: Vec<String>,
    pub started_at_unix_ms: u64,
    pub elapsed_s: f64,
    pub workers: usize,
    /// Connections the plan wanted open when the run ended.
    pub wanted_at_end: u64,
    /// Why the run stopped early, if it did.
    pub abort_reason: Option<String>,
    pub agents: Vec<AgentRecord>,
    pub start_spread_ms: Option<f64>,
    /// Per phase (indexed like the profile's phases).
    pub phase_stats: Vec<PhaseStats>,
}

/// Agents that did not finish and whose reports stop before the run's last interval.
fn missing_agents(agents: &[AgentRecord], timeline: &[TimelinePoint]) -> Vec<MissingAgent> {
    let expected = timeline.iter().map(|p| p.second + 1).max().unwrap_or(0);
    agents
        .iter()
        .filter(|a| a.status != AgentStatus::Finished)
        .filter_map(|a| {
            let first_missing = a.last_interval.map_or(0, |k| k + 1);
            (first_missing < expected).then(|| MissingAgent {
                agent: a.name.clone(),
                status: a.status,
                last_interval: a.last_interval,
                intervals_expected: expected,
                intervals_received: a.intervals_received,
                missing_intervals: [first_missing, expected - 1],
            })
        })
        .collect()
}

impl Summary {
    pub fn build(facts: RunFacts<'_>, aggregate: &Aggregate) -> Summary {
        let totals = &aggregate.totals;
        let c = &totals.totals;
        let latency = LatencySummary {
            connect: LatencyStats::of(totals.latency.get(Latency::Connect)),
            connect_service: LatencyStats::of(totals.latency.get(Latency::ConnectService)),
            heartbeat_rtt: LatencyStats::of(totals.latency.get(Latency::HeartbeatRtt)),
            recovery: LatencyStats::of(totals.latency.get(Latency::Recovery)),
            handshake: LatencyStats::of(totals.latency.get(Latency::Handshake)),
            delivery: LatencyStats::of(totals.latency.get(Latency::Delivery)),
        };
        let timeline = &aggregate.timeline;
        let phases = facts
            .spans
            .iter()
            .filter(|s| s.start.as_secs_f64() <= facts.elapsed_s)
            .map(|s| {
                let start = s.start.as_secs_f64();
                let end = s.end.as_secs_f64().min(facts.elapsed_s);
                let stats = facts.phase_stats.get(s.index).cloned().unwrap_or_default();
                let disruptive = matches!(s.kind, "storm" | "drain" | "cutover" | "server");
                // The gauge at the end of the second the phase ended in.
                let last_second = (end.ceil() as u64).saturating_sub(1);
                let established_at_end = timeline
                    .iter()
                    .rev()
                    .find(|p| p.second <= last_second)
                    .map_or(0, |p| p.open_established);
                let recovered_ratio = disruptive.then(|| ratio(established_at_end, s.to));
                let healed = |share: f64| {
                    recovered_ratio
                        .filter(|r| *r >= share)
                        .and_then(|_| recovery(&stats, s.to, share))
                };
                PhaseRecord {
                    index: s.index,
                    name: s.kind,
                    start_s: start,
                    end_s: end,
                    from: s.from,
                    to: s.to,
                    peak_connects_per_s: timeline
                        .iter()
                        .filter(|p| p.second as f64 >= start.floor() && (p.second as f64) < end)
                        .map(|p| p.connects)
                        .max()
                        .unwrap_or(0),
                    recovered_ratio,
                    recovery_99_s: if disruptive { healed(0.99) } else { None },
                    recovery_100_s: if disruptive { healed(1.0) } else { None },
                    connect_p99_us: stats
                        .connect
                        .as_ref()
                        .filter(|h| !h.is_empty())
                        .map(|h| h.value_at_quantile(0.99)),
                    errors: ErrorCounts(stats.counts.errors),
                    reconnects: stats.counts.reconnects,
                    given_up: stats.counts.given_up,
                    reconnect_attempts: {
                        let mut buckets = stats.reconnect_attempts.clone();
                        while buckets.last() == Some(&0) {
                            buckets.pop();
                        }
                        buckets
                    },
                }
            })
            .collect();
        let mut summary = Summary {
            schema: SCHEMA,
            stampede_version: env!("CARGO_PKG_VERSION"),
            profile: facts.profile.to_string(),
            outcome: Outcome::Pass,
            abort_reason: facts.abort_reason.clone(),
            fail_reason: None,
            synthetic_agents: facts.agents.iter().filter(|a| a.synthetic).count() as u64,
            started_at_unix_ms: facts.started_at_unix_ms,
            duration_s: (facts.elapsed_s * 1000.0).round() / 1000.0,
            planned_duration_s: crate::profile::timeline::total(facts.spans).as_secs_f64(),
            workers: facts.workers,
            connections: ConnectionCounts {
                requested: facts.requested,
                attempts: c.attempts,
                connected: c.connected,
                established: c.established,
                connected_slots: c.slots_connected,
                established_slots: c.slots_established,
                connected_ratio: ratio(c.slots_connected, facts.requested),
                established_ratio: ratio(c.slots_established, facts.requested),
                established_by: facts.established_by,
                peak_open: aggregate.peak_open,
                open_at_end: aggregate.open,
                established_at_end: aggregate.open_established,
                wanted_at_end: facts.wanted_at_end,
                open_at_end_ratio: (facts.wanted_at_end > 0)
                    .then(|| ratio(aggregate.open_established, facts.wanted_at_end)),
                closed: c.closed,
                first_attempt_s: totals.first_attempt_us.map(|us| us as f64 / 1e6),
                last_established_s: totals.last_established_us.map(|us| us as f64 / 1e6),
                connects_per_s: match (totals.first_attempt_us, totals.last_ramp_connected_us) {
                    (Some(first), Some(last)) if last > first => {
                        Some((totals.ramp_connected as f64 * 1e6 / (last - first) as f64).round())
                    }
                    _ => None,
                },
                peak_reconnects_per_s: timeline.iter().map(|p| p.reconnects).max().unwrap_or(0),
                reconnects: c.reconnects,
                given_up: c.given_up,
            },
            heartbeats: HeartbeatCounts {
                sent: c.heartbeats_sent,
                answered: c.heartbeats_answered,
                in_flight_at_end: c.heartbeats_in_flight_at_end,
            },
            messages: MessageCounts {
                published: c.published,
                received: c.received,
            },
            errors: ErrorCounts(c.errors),
            error_details: {
                let mut details: BTreeMap<&'static str, BTreeMap<String, u64>> = BTreeMap::new();
                for ((kind, detail), n) in &totals.details {
                    *details
                        .entry(kind.name())
                        .or_default()
                        .entry(detail.label())
                        .or_insert(0) += n;
                }
                details
            },
            latency_us: latency,
            thresholds: Vec::new(),
            sources: facts
                .source_labels
                .into_iter()
                .zip(&totals.per_source)
                .map(|(addr, counts)| ScopeCounts::of(addr, counts))
                .collect(),
            targets: facts
                .target_labels
                .into_iter()
                .zip(&totals.per_target)
                .map(|(addr, counts)| ScopeCounts::of(addr, counts))
                .collect(),
            phases,
            timeline: aggregate
                .timeline
                .iter()
                .map(|p| TimelinePoint {
                    wanted: crate::profile::timeline::phase_level(
                        facts.spans,
                        std::time::Duration::from_secs(p.second + 1),
                    ),
                    ..*p
                })
                .collect(),
            missing: missing_agents(&facts.agents, &aggregate.timeline),
            agents: facts.agents,
            start_spread_ms: facts.start_spread_ms,
            nlb: None,
        };
        summary.thresholds = facts
            .thresholds
            .iter()
            .map(|t| {
                let observed = summary.observe(t);
                ThresholdResult {
                    name: t.text.clone(),
                    metric: t.metric.clone(),
                    op: t.op.as_str(),
                    limit: t.limit,
                    unit: t.unit(),
                    observed,
                    pass: t.holds(observed),
                }
            })
            .collect();
        summary.outcome = if facts.abort_reason.is_some() {
            Outcome::Aborted
        } else if summary.thresholds.iter().all(|t| t.pass) {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        summary
    }

    /// A run with synthetic agents measured nothing real: unless `allowed`, it fails (an
    /// aborted run stays aborted), saying why.
    pub fn gate_synthetic(&mut self, allowed: bool) {
        if self.synthetic_agents == 0 || allowed {
            return;
        }
        self.fail_reason = Some(format!(
            "{} of {} agent(s) were synthetic (agent --synthetic: made-up figures, no load); a run with them passes only with coordinator --allow-synthetic",
            self.synthetic_agents,
            self.agents.len()
        ));
        if self.outcome == Outcome::Pass {
            self.outcome = Outcome::Fail;
        }
    }

    /// The figure a threshold reads, or `None` when there is no sample to judge.
    pub fn observe(&self, threshold: &Threshold) -> Option<f64> {
        let c = &self.connections;
        match &threshold.subject {
            Subject::Latency { family, stat } => self.latency_us.family(family)?.stat(stat),
            Subject::Errors(None) => Some(self.errors.0.iter().sum::<u64>() as f64),
            Subject::Errors(Some(kind)) => Some(self.errors.0[*kind as usize] as f64),
            Subject::EstablishedRatio => Some(c.established_ratio),
            Subject::ConnectedRatio => Some(c.connected_ratio),
            Subject::OpenAtEndRatio => c.open_at_end_ratio,
            Subject::Established => Some(c.established as f64),
            Subject::Connected => Some(c.connected as f64),
            Subject::Phase { index, metric } => {
                let phase = self.phases.iter().find(|p| p.index == *index)?;
                match metric {
                    PhaseMetric::RecoveredRatio => phase.recovered_ratio,
                    PhaseMetric::Recovery99 => phase.recovery_99_s,
                    PhaseMetric::Recovery100 => phase.recovery_100_s,
                }
            }
            Subject::Attempts => Some(c.attempts as f64),
            Subject::PeakOpen => Some(c.peak_open as f64),
            Subject::Received => Some(self.messages.received as f64),
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.0.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, status: AgentStatus, received: u64, last: Option<u64>) -> AgentRecord {
        AgentRecord {
            name: name.into(),
            host: "h".into(),
            share: 10,
            synthetic: false,
            established: 10,
            errors: 0,
            last_report_s: None,
            status,
            start_offset_ms: None,
            intervals_received: received,
            last_interval: last,
            late_reports: 0,
        }
    }

    #[test]
    fn lost_agents_name_the_intervals_they_never_sent() {
        let timeline: Vec<TimelinePoint> = (0..8)
            .map(|second| TimelinePoint {
                second,
                open: 0,
                open_established: 0,
                attempts: 0,
                connects: 0,
                reconnects: 0,
                closes: 0,
                errors: 0,
                error_kinds: Default::default(),
                wanted: 0,
            })
            .collect();
        let agents = [
            record("steady", AgentStatus::Finished, 8, Some(7)),
            record("doomed", AgentStatus::Lost, 3, Some(2)),
            record("silent", AgentStatus::Lost, 0, None),
            // Lost after its last interval: nothing is missing.
            record("late", AgentStatus::Lost, 8, Some(7)),
        ];
        let missing = missing_agents(&agents, &timeline);
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert_eq!(missing[0].agent, "doomed");
        assert_eq!(missing[0].intervals_expected, 8);
        assert_eq!(missing[0].intervals_received, 3);
        assert_eq!(missing[0].missing_intervals, [3, 7]);
        assert_eq!(missing[1].agent, "silent");
        assert_eq!(missing[1].missing_intervals, [0, 7]);
    }
}
