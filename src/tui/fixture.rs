//! Fixed live snapshots for tests of the views and the metrics endpoint: a run 95 s into a
//! 300 s plan (ramp to 120,000 at 2,000/s, hold 240 s), with a source that hit the port wall,
//! a few refusals, heartbeat timeouts, and targets with uneven shares. Every figure is derived
//! from a fixed sequence, so renderings are byte-for-byte stable.

use std::sync::Arc;
use std::time::Duration;

use crate::live::{AgentRow, LiveSnapshot, RunState};
use crate::metrics::{Aggregate, ErrorKind, IntervalData, IntervalSnapshot, Latency};
use crate::profile::threshold::Threshold;
use crate::profile::timeline::PhaseSpan;
use crate::report::summary::{AgentStatus, RunFacts, Summary};

const SECONDS: u64 = 95;
const SOURCES: [&str; 4] = ["127.0.10.1", "127.0.10.2", "127.0.10.3", "127.0.10.4"];
const TARGETS: [&str; 3] = ["127.0.1.1:7000", "127.0.1.2:7000", "127.0.1.3:7000"];

fn spans() -> Vec<PhaseSpan> {
    vec![
        PhaseSpan {
            index: 0,
            kind: "ramp",
            start: Duration::ZERO,
            end: Duration::from_secs(60),
            from: 0,
            to: 120_000,
            rate: Some(2000.0),
        },
        PhaseSpan {
            index: 1,
            kind: "hold",
            start: Duration::from_secs(60),
            end: Duration::from_secs(300),
            from: 120_000,
            to: 120_000,
            rate: None,
        },
    ]
}

/// A fixed pseudo-random sequence (64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Mostly near `base`, with a long tail.
    fn latency(&mut self, base: f64) -> u64 {
        let u = self.next().max(1e-9);
        (base * (1.0 + 0.5 * self.next()) / u.powf(0.35)) as u64
    }
}

/// Second `second` of the run; targets get 40%, 35% and 25% of the attempts.
fn interval(second: u64, rng: &mut Lcg) -> IntervalData {
    let mut data = IntervalData::new(SOURCES.len(), TARGETS.len());
    if second < 60 {
        for n in 0..2000u64 {
            let source = (n % 4) as usize;
            let target = match n % 20 {
                0..8 => 0,
                8..15 => 1,
                _ => 2,
            };
            data.count(source, target, |c| c.attempts += 1);
            let wall = source == 3 && second >= 40 && n % 100 < 24;
            let refused = second == 30 && n < 7;
            if wall {
                data.count(source, target, |c| {
                    c.errors[ErrorKind::AddrNotAvailable as usize] += 1
                });
            } else if refused {
                data.count(source, target, |c| {
                    c.errors[ErrorKind::Refused as usize] += 1
                });
            } else {
                data.count(source, target, |c| {
                    c.connected += 1;
                    c.established += 1;
                    c.slots_connected += 1;
                    c.slots_established += 1;
                });
            }
        }
    }
    if second >= 70 {
        for n in 0..3usize {
            data.count(n % 4, n % 3, |c| {
                c.closed += 1;
                c.errors[ErrorKind::HeartbeatTimeout as usize] += 1;
            });
        }
    }
    let connect_samples = if second < 60 { 200 } else { 0 };
    for _ in 0..connect_samples {
        let service = rng.latency(180.0);
        data.latency.record(Latency::ConnectService, service);
        data.latency
            .record(Latency::Connect, service + rng.latency(40.0));
    }
    if second >= 1 {
        for _ in 0..400 {
            data.latency
                .record(Latency::HeartbeatRtt, rng.latency(250.0));
        }
        data.totals.heartbeats_sent += 40_000;
        data.totals.heartbeats_answered += 39_997;
    }
    data
}

/// The local run at 95 s.
pub fn snapshot() -> LiveSnapshot {
    let spans = spans();
    let mut aggregate = Aggregate::new(1, SOURCES.len(), TARGETS.len());
    let mut rng = Lcg(7);
    let mut open = 0u64;
    let mut last = None;
    for second in 0..SECONDS {
        let data = interval(second, &mut rng);
        open = open + data.totals.established - data.totals.closed;
        if second == SECONDS - 1 {
            last = Some(data.clone());
        }
        aggregate.push(IntervalSnapshot {
            reporter: 0,
            seq: second,
            last: false,
            open,
            open_established: open,
            data,
        });
    }
    let thresholds: Vec<Threshold> = [
        "connect_p99 < 50ms",
        "heartbeat_p99 < 20ms",
        "established_ratio >= 0.999",
        "errors <= 0",
    ]
    .iter()
    .filter_map(|t| Threshold::parse(t).ok())
    .collect();
    let summary = Summary::build(
        RunFacts {
            profile: "launch-rehearsal",
            requested: 120_000,
            established_by: "first_heartbeat_echo",
            wanted_at_end: 120_000,
            spans: &spans,
            thresholds: &thresholds,
            source_labels: SOURCES.iter().map(ToString::to_string).collect(),
            target_labels: TARGETS.iter().map(ToString::to_string).collect(),
            started_at_unix_ms: 1_790_000_000_000,
            elapsed_s: SECONDS as f64,
            workers: 2,
            abort_reason: None,
            agents: Vec::new(),
            start_spread_ms: None,
            phase_stats: Vec::new(),
        },
        &aggregate,
    );
    let last = last.unwrap_or_else(|| IntervalData::new(0, 0));
    LiveSnapshot {
        summary,
        state: RunState::Running,
        elapsed: Duration::from_secs(SECONDS),
        planned: Duration::from_secs(300),
        spans: Arc::new(spans),
        phase: Some(1),
        wanted: 120_000,
        open,
        open_established: open,
        interval: last.totals,
        interval_latency: last.latency,
        total_latency: aggregate.totals.latency.clone(),
        agents: Vec::new(),
        agents_expected: 0,
    }
}

/// The same figures as a swarm of four agents, one of which has gone quiet.
pub fn swarm_snapshot() -> LiveSnapshot {
    let mut s = snapshot();
    s.agents_expected = 4;
    s.agents = (0..3u64)
        .map(|i| AgentRow {
            name: format!("agent-{}", i + 1),
            open: 39_000 + i * 117,
            connects_per_s: if i == 2 { 0 } else { 3 - i },
            errors: if i == 2 { 2_400 } else { 24 + i },
            connect_p99_us: Some(1_850 + i * 311),
            last_report_s: if i == 2 { 7.5 } else { 0.4 + i as f64 * 0.1 },
            status: if i == 2 {
                AgentStatus::Lost
            } else {
                AgentStatus::Running
            },
        })
        .collect();
    s
}

/// The same run, finished.
pub fn finished_snapshot() -> LiveSnapshot {
    let mut s = snapshot();
    s.state = RunState::Finished;
    s
}
