//! The expanded plan: when each phase starts and ends and how many connections it wants open.
//!
//! Also the per-worker schedule: each worker walks the phases and derives the moments at which
//! *its own* connection slots open or close. Nothing is expanded into a list up front, so a plan
//! for millions of connections costs nothing until it runs.

use std::time::Duration;

use super::{CloseMode, DrainShape, Phase, Profile};

/// One phase placed on the run's clock (offsets from the run's start).
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseSpan {
    pub index: usize,
    pub kind: &'static str,
    pub start: Duration,
    pub end: Duration,
    /// Connections wanted open when the phase starts and when it ends.
    pub from: u64,
    pub to: u64,
    /// Connections per second, for ramps.
    pub rate: Option<f64>,
}

impl PhaseSpan {
    /// Connections wanted open at `at` (an offset inside this phase).
    pub fn level_at(&self, at: Duration) -> u64 {
        let Some(rate) = self.rate else {
            return self.to;
        };
        let moved = (at.saturating_sub(self.start).as_secs_f64() * rate) as u64;
        if self.to >= self.from {
            (self.from + moved).min(self.to)
        } else {
            self.from.saturating_sub(moved).max(self.to)
        }
    }
}

/// Lays the profile's phases on the clock.
pub fn spans(profile: &Profile) -> Vec<PhaseSpan> {
    let mut level = 0u64;
    let mut clock = Duration::ZERO;
    let mut spans = Vec::with_capacity(profile.phases.len());
    for (index, phase) in profile.phases.iter().enumerate() {
        let span = match phase {
            Phase::Ramp { to, rate } => {
                let delta = level.abs_diff(*to);
                PhaseSpan {
                    index,
                    kind: phase.kind(),
                    start: clock,
                    end: clock + Duration::from_secs_f64(delta as f64 / rate),
                    from: level,
                    to: *to,
                    rate: Some(*rate),
                }
            }
            Phase::Hold { duration }
            | Phase::Storm { duration, .. }
            | Phase::Drain { duration, .. }
            | Phase::Cutover { duration, .. }
            | Phase::Server { duration, .. }
            | Phase::Nlb { duration, .. } => PhaseSpan {
                index,
                kind: phase.kind(),
                start: clock,
                end: clock + *duration,
                from: level,
                to: level,
                rate: None,
            },
        };
        level = span.to;
        clock = span.end;
        spans.push(span);
    }
    spans
}

/// Connections the plan wants open `at` an offset from the run's start.
pub fn phase_level(spans: &[PhaseSpan], at: Duration) -> u64 {
    spans
        .iter()
        .find(|s| at < s.end)
        .or_else(|| spans.last())
        .map_or(0, |s| s.level_at(at))
}

/// Total planned length of the run.
pub fn total(spans: &[PhaseSpan]) -> Duration {
    spans.last().map_or(Duration::ZERO, |s| s.end)
}

/// What a worker must do to one of its slots at a planned moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotAction {
    Open,
    Close,
    /// Close the connection (abortively if `reset`) and let it reconnect per policy.
    Kick {
        reset: bool,
    },
    /// Phase `phase` starts (once per worker, `slot` unused): set its policy and targets.
    PhaseStart {
        phase: usize,
    },
}

/// A planned action on connection slot `slot`, `at` an offset from the run's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotEvent {
    pub at: Duration,
    pub slot: u64,
    pub action: SlotAction,
}

/// A well-spread number in [0, 1) for `slot` (an additive recurrence): used to pick which
/// slots a storm or drain takes and when, so every worker decides alike with no coordination.
fn spread(slot: u64, step: f64) -> f64 {
    ((slot + 1) as f64 * step).fract()
}

/// Whether a storm or drain of `fraction` takes `slot`.
pub fn selected(slot: u64, fraction: f64) -> bool {
    fraction >= 1.0 || spread(slot, 0.754_877_666_246_692_7) < fraction
}

/// A uniform pseudo-random number in [0, 1) from a 64-bit seed (splitmix64).
pub fn unit_random(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// When in a drain window of length `over` slot `slot` is closed.
pub fn drain_offset(slot: u64, over: Duration, shape: DrainShape) -> Duration {
    let u = match shape {
        DrainShape::Uniform { jitter: false } => spread(slot, 0.569_840_290_998_053_2),
        DrainShape::Uniform { jitter: true } => unit_random(slot ^ 0x5eed),
        // Density rising linearly: the inverse of F(t) = t^2.
        DrainShape::Linear => spread(slot, 0.569_840_290_998_053_2).sqrt(),
    };
    over.mul_f64(u)
}

/// The events of worker `worker` out of `workers`: slots `i` with `i % workers == worker`, in
/// time order. Ramps up open the lowest free slots first; ramps down close the highest. Storms,
/// drains and cutovers kick the selected slots among those open.
pub struct WorkerSchedule<'a> {
    profile: &'a Profile,
    spans: &'a [PhaseSpan],
    workers: u64,
    worker: u64,
    span: usize,
    /// Position inside the current ramp, in units of "connections moved".
    step: u64,
    /// Events of the current span already laid out (non-ramp spans), in time order.
    queue: std::collections::VecDeque<SlotEvent>,
    entered: bool,
}

impl<'a> WorkerSchedule<'a> {
    pub fn new(
        profile: &'a Profile,
        spans: &'a [PhaseSpan],
        worker: usize,
        workers: usize,
    ) -> WorkerSchedule<'a> {
        WorkerSchedule {
            profile,
            spans,
            workers: workers as u64,
            worker: worker as u64,
            span: 0,
            step: 0,
            queue: Default::default(),
            entered: false,
        }
    }

    fn own_slots(&self, level: u64) -> impl Iterator<Item = u64> + use<> {
        let (worker, workers) = (self.worker, self.workers);
        (worker..level).step_by(workers as usize)
    }

    /// Lays out the kicks of a storm, drain or cutover span.
    fn lay_out(&mut self, span: &PhaseSpan) {
        let mut events: Vec<SlotEvent> = match self.profile.phases.get(span.index) {
            Some(Phase::Storm { fraction, mode, .. }) => self
                .own_slots(span.to)
                .filter(|s| selected(*s, *fraction))
                .map(|slot| SlotEvent {
                    at: span.start,
                    slot,
                    action: SlotAction::Kick {
                        reset: *mode == CloseMode::Reset,
                    },
                })
                .collect(),
            Some(Phase::Drain {
                fraction,
                over,
                shape,
                ..
            }) => self
                .own_slots(span.to)
                .filter(|s| selected(*s, *fraction))
                .map(|slot| SlotEvent {
                    at: span.start + drain_offset(slot, *over, *shape),
                    slot,
                    action: SlotAction::Kick { reset: false },
                })
                .collect(),
            Some(Phase::Cutover {
                over, close: true, ..
            }) => self
                .own_slots(span.to)
                .map(|slot| SlotEvent {
                    at: span.start
                        + drain_offset(slot, *over, DrainShape::Uniform { jitter: false }),
                    slot,
                    action: SlotAction::Kick { reset: false },
                })
                .collect(),
            _ => Vec::new(),
        };
        events.sort_by_key(|e| (e.at, e.slot));
        self.queue.extend(events);
    }
}

impl Iterator for WorkerSchedule<'_> {
    type Item = SlotEvent;

    fn next(&mut self) -> Option<SlotEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            let span = self.spans.get(self.span)?;
            if !self.entered {
                self.entered = true;
                if span.rate.is_none() {
                    let span = span.clone();
                    self.lay_out(&span);
                }
                return Some(SlotEvent {
                    at: span.start,
                    slot: 0,
                    action: SlotAction::PhaseStart { phase: span.index },
                });
            }
            if let Some(rate) = span.rate {
                let delta = span.from.abs_diff(span.to);
                // Find the next step in this span whose slot belongs to this worker.
                while self.step < delta {
                    let step = self.step;
                    self.step += 1;
                    let (slot, action) = if span.to > span.from {
                        (span.from + step, SlotAction::Open)
                    } else {
                        (span.from - 1 - step, SlotAction::Close)
                    };
                    if slot % self.workers == self.worker {
                        let at = span.start + Duration::from_secs_f64(step as f64 / rate);
                        return Some(SlotEvent { at, slot, action });
                    }
                }
            }
            self.span += 1;
            self.step = 0;
            self.entered = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    fn profile(phases: &str) -> Profile {
        Profile::from_json(
            &format!(r#"{{"name":"t","target":"embedded","connections":10,"phases":{phases}}}"#),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn lays_phases_on_the_clock() {
        let p =
            profile(r#"[{"ramp":{"rate":5}},{"hold":{"for":"3s"}},{"ramp":{"to":4,"rate":3}}]"#);
        let s = spans(&p);
        assert_eq!(s[0].end, Duration::from_secs(2));
        assert_eq!(
            (s[1].start, s[1].end),
            (Duration::from_secs(2), Duration::from_secs(5))
        );
        assert_eq!(s[2].end, Duration::from_secs(7));
        assert_eq!((s[2].from, s[2].to), (10, 4));
        assert_eq!(s[0].level_at(Duration::from_secs(1)), 5);
        assert_eq!(s[2].level_at(Duration::from_secs(6)), 7);
        assert_eq!(total(&s), Duration::from_secs(7));
    }

    #[test]
    fn workers_split_slots_without_overlap() {
        let p =
            profile(r#"[{"ramp":{"rate":10}},{"hold":{"for":"1s"}},{"ramp":{"to":6,"rate":4}}]"#);
        let s = spans(&p);
        let mut all: Vec<SlotEvent> = (0..3)
            .flat_map(|w| WorkerSchedule::new(&p, &s, w, 3))
            .collect();
        all.sort_by_key(|e| (e.at, e.slot));
        all.retain(|e| !matches!(e.action, SlotAction::PhaseStart { .. }));
        let opens: Vec<u64> = all
            .iter()
            .filter(|e| e.action == SlotAction::Open)
            .map(|e| e.slot)
            .collect();
        assert_eq!(opens, (0..10).collect::<Vec<_>>());
        let closes: Vec<u64> = all
            .iter()
            .filter(|e| e.action == SlotAction::Close)
            .map(|e| e.slot)
            .collect();
        assert_eq!(closes, vec![9, 8, 7, 6]);
        assert_eq!(
            all.last().unwrap().at,
            Duration::from_secs(2) + Duration::from_millis(750)
        );
    }
}
