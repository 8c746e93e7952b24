//! A worker ("shard"): one thread with its own single-threaded tokio runtime, owning its share
//! of connection slots and the histograms they record into.
//!
//! Owning the data per thread is what makes recording lock-free: connection tasks are local to
//! the shard (`spawn_local`), so `RefCell` suffices. The shard never talks to other shards; it
//! sends one snapshot per second to the aggregate.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::EnginePlan;
use super::timing::micros;
use crate::metrics::{ErrorKind, IntervalData};
use crate::profile::reconnect::ReconnectPolicy;

/// State shared by the shard's connection tasks. Single-threaded: only this shard's tasks touch
/// it.
pub(crate) struct Shard {
    pub plan: Arc<EnginePlan>,
    /// Written by connection tasks, swapped out by the shard loop once a second.
    pub data: RefCell<IntervalData>,
    /// Connections of this shard now open (TCP connected and held; for protocols above TCP,
    /// from their handshake on).
    pub open: Cell<u64>,
    /// Of those, the ones established (proved served). Written only through `up` and
    /// `unserved`.
    served: Cell<u64>,
    /// One bit per slot index: connected at least once, established at least once.
    ever_connected: RefCell<Vec<u64>>,
    ever_established: RefCell<Vec<u64>>,
    /// Whether the phase now playing is a ramp (for the ramp's own connect rate).
    in_ramp: Cell<bool>,
    /// Set when the run ends: closes from then on are ours, not the peer's.
    pub tearing_down: Cell<bool>,
    /// Heartbeat bytes, shared by every connection.
    pub payload: Box<[u8]>,
    /// The run's start, which event offsets count from.
    pub start: Instant,
    /// How many workers share the slots: slot `s` lives at index `s / workers` here.
    pub workers: u64,
    /// The reconnect policy in force (the profile's, or the current phase's).
    pub policy: Cell<ReconnectPolicy>,
    /// The target set new connections use (0, then one more per cutover).
    pub target_set: Cell<usize>,
    /// The socket of each established slot (-1 when none), so a reset storm can set
    /// `SO_LINGER` 0 before the close. Written by connection tasks, read by the shard loop.
    pub fds: RefCell<Vec<RawFd>>,
    /// Feeds jitter: a different number for every backoff.
    draws: Cell<u64>,
    /// When the phase now playing started (reconnections are timed from it).
    pub phase_started: Cell<Instant>,
    /// Heartbeats sent and not yet answered, nor ended with their connection: at the end of
    /// the run, those in flight. Every connection path keeps it (`heartbeat_sent`,
    /// `heartbeat_settled`).
    pub(super) awaiting: Cell<u64>,
    /// The phase now playing, once the first has started.
    phase: Cell<Option<usize>>,
    /// Where the plan's offsets count from now (the start plus the time spent paused), or
    /// `None` while paused; kept by the shard loop for `catch_up`.
    pub(super) origin: Cell<Option<Instant>>,
}

impl Shard {
    pub fn new(plan: Arc<EnginePlan>, start: Instant, workers: usize) -> Shard {
        let payload_len = plan.heartbeat.map_or(0, |h| h.payload_bytes as usize);
        Shard {
            data: RefCell::new(IntervalData::new(
                plan.pool.sources.len(),
                plan.pool.targets.len(),
            )),
            open: Cell::new(0),
            served: Cell::new(0),
            ever_connected: RefCell::new(Vec::new()),
            ever_established: RefCell::new(Vec::new()),
            in_ramp: Cell::new(false),
            tearing_down: Cell::new(false),
            payload: vec![b'h'; payload_len].into_boxed_slice(),
            start,
            workers: workers.max(1) as u64,
            policy: Cell::new(plan.profile.reconnect),
            target_set: Cell::new(0),
            fds: RefCell::new(Vec::new()),
            draws: Cell::new(0),
            phase_started: Cell::new(start),
            awaiting: Cell::new(0),
            phase: Cell::new(None),
            origin: Cell::new(Some(start)),
            plan,
        }
    }

    /// Counts a heartbeat sent on a connection between `source` and `target`.
    pub fn heartbeat_sent(&self, source: usize, target: usize) {
        self.data
            .borrow_mut()
            .count(source, target, |c| c.heartbeats_sent += 1);
        self.awaiting.set(self.awaiting.get() + 1);
    }

    /// A heartbeat sent earlier is no longer awaited: answered, failed, or its connection
    /// gone.
    pub fn heartbeat_settled(&self) {
        self.awaiting.set(self.awaiting.get().saturating_sub(1));
    }

    /// Connections open and established now.
    pub fn served(&self) -> u64 {
        self.served.get()
    }

    /// A TCP handshake completed for slot `slot`: `service_us` from the `connect()` call, plus
    /// `lag_us` of start lag beyond the timer's grid for the connect latency. `connected` is
    /// the lower of the two levels of "up" (see `Counts::established`).
    pub fn connected(&self, slot: u64, source: usize, target: usize, service_us: u64, lag_us: u64) {
        let first = first_time(&self.ever_connected, (slot / self.workers) as usize);
        let now_us = micros(Instant::now().saturating_duration_since(self.start));
        let mut data = self.data.borrow_mut();
        data.latency
            .record(crate::metrics::Latency::Connect, service_us + lag_us);
        data.latency
            .record(crate::metrics::Latency::ConnectService, service_us);
        data.count(source, target, |c| {
            c.connected += 1;
            c.slots_connected += u64::from(first);
        });
        if self.in_ramp.get() {
            data.ramp_connected += 1;
            data.last_ramp_connected_us = Some(now_us);
        }
    }

    /// Slot `slot`'s connection is up after `attempt` attempts (0: its first): established
    /// when `established` (it proved it is served), otherwise as far as plain TCP without
    /// heartbeats can go. A reconnection's moment goes to the phase's recovery figures.
    pub fn up(&self, slot: u64, source: usize, target: usize, attempt: u32, established: bool) {
        let now = Instant::now();
        let mut data = self.data.borrow_mut();
        if established {
            let first = first_time(&self.ever_established, (slot / self.workers) as usize);
            self.served.set(self.served.get() + 1);
            data.count(source, target, |c| {
                c.established += 1;
                c.slots_established += u64::from(first);
            });
            data.last_established_us = Some(micros(now.saturating_duration_since(self.start)));
        }
        if attempt > 0 {
            data.reconnected(source, target, attempt);
            let since_phase = now.saturating_duration_since(self.phase_started.get());
            data.latency
                .record(crate::metrics::Latency::Recovery, micros(since_phase));
        }
    }

    /// An established connection ended, however.
    pub fn unserved(&self) {
        self.served.set(self.served.get().saturating_sub(1));
    }

    /// Records that a connection went down now (for the phase's recovery figures).
    pub fn went_down(&self) {
        self.catch_up();
        let since = Instant::now().saturating_duration_since(self.phase_started.get());
        self.data.borrow_mut().latency.record(
            crate::metrics::Latency::Disconnect,
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// The wait before reconnect attempt `attempt` under the policy in force, or `None` to give up
    /// (counted unless the policy is never to reconnect).
    pub fn backoff(&self, slot: u64, attempt: u32, previous_ms: &mut u32) -> Option<Duration> {
        self.catch_up();
        let policy = self.policy.get();
        let previous = Duration::from_millis(u64::from(*previous_ms));
        match policy.delay(attempt, previous, self.random(slot)) {
            Some(wait) => {
                *previous_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
                Some(wait)
            }
            None => {
                if policy != ReconnectPolicy::Never {
                    let (source, target) = self.plan.pool.pair_in(slot, self.target_set.get());
                    self.data
                        .borrow_mut()
                        .count(source, target, |c| c.given_up += 1);
                }
                None
            }
        }
    }

    /// A fresh uniform random `u64` for backoff jitter.
    pub fn random(&self, slot: u64) -> u64 {
        let n = self.draws.get().wrapping_add(1);
        self.draws.set(n);
        let unit = crate::profile::timeline::unit_random(slot.rotate_left(32) ^ n);
        (unit * u64::MAX as f64) as u64
    }

    /// Records the socket of an established slot (or -1 when it closes).
    pub fn set_fd(&self, slot: u64, fd: RawFd) {
        let index = (slot / self.workers) as usize;
        let mut fds = self.fds.borrow_mut();
        if fds.len() <= index {
            fds.resize(index + 1, -1);
        }
        fds[index] = fd;
    }

    pub fn fail(&self, source: usize, target: usize, kind: ErrorKind) {
        self.data
            .borrow_mut()
            .count(source, target, |c| c.errors[kind as usize] += 1);
    }

    /// Counts a protocol failure, and what it said if anything.
    pub fn fail_with(&self, source: usize, target: usize, failure: crate::protocol::Failure) {
        let mut data = self.data.borrow_mut();
        data.count(source, target, |c| c.errors[failure.kind as usize] += 1);
        if let Some(detail) = failure.detail {
            *data.details.entry((failure.kind, detail)).or_insert(0) += 1;
        }
    }

    /// Starts phase `phase` at `at` (and any skipped before it), unless it already has: the
    /// shard loop starts each at its planned instant, `catch_up` may have done so first.
    pub(super) fn enter_phase(&self, phase: usize, at: Instant) {
        let next = self.phase.get().map_or(0, |p| p + 1);
        if phase < next {
            return;
        }
        let profile = &self.plan.profile;
        for p in profile.phases.get(next..=phase).unwrap_or_default() {
            self.policy.set(p.reconnect().unwrap_or(profile.reconnect));
            if matches!(p, crate::profile::Phase::Cutover { .. }) {
                let next = self.target_set.get() + 1;
                self.target_set
                    .set(next.min(self.plan.pool.set_count() - 1));
            }
        }
        self.phase.set(Some(phase));
        self.phase_started.set(at);
        self.in_ramp.set(matches!(
            profile.phases.get(phase),
            Some(crate::profile::Phase::Ramp { .. })
        ));
    }

    /// Starts the phase due by now if the shard loop has not yet. A phase's timer and a
    /// connection's socket can be ready together, and the connection's task may run first: a
    /// server phase's sink closes connections at the very instant the phase starts. Called
    /// before a connection that went down looks at the policy, so it gets the phase's own.
    pub fn catch_up(&self) {
        let Some(origin) = self.origin.get() else {
            return;
        };
        let elapsed = Instant::now().saturating_duration_since(origin);
        if let Some(span) = self.plan.spans.iter().rev().find(|s| s.start <= elapsed) {
            self.enter_phase(span.index, origin + span.start);
        }
    }

    pub(super) fn fresh_data(&self) -> IntervalData {
        IntervalData::new(self.plan.pool.sources.len(), self.plan.pool.targets.len())
    }
}

/// Sets bit `index` and says whether it was clear.
fn first_time(bits: &RefCell<Vec<u64>>, index: usize) -> bool {
    let mut bits = bits.borrow_mut();
    let (word, bit) = (index / 64, index % 64);
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    let was_set = bits[word] & (1 << bit) != 0;
    bits[word] |= 1 << bit;
    !was_set
}

/// A one-worker shard for `profile` (JSON) with its one target at 127.0.0.1:9, for tests that
/// look at a connection future without running it.
#[cfg(test)]
pub(crate) fn test_shard(profile: serde_json::Value) -> std::rc::Rc<Shard> {
    let pool = super::pool::SourcePool::new(
        &crate::profile::SourceSpec::default(),
        &["127.0.0.1:9".parse().expect("a socket address")],
        crate::host::ephemeral_port_range(),
    )
    .expect("a pool of the default sources");
    let profile = crate::profile::Profile::from_value(profile).expect("a valid profile");
    let plan = Arc::new(EnginePlan::new(&profile, pool));
    std::rc::Rc::new(Shard::new(plan, Instant::now(), 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server phase's sink closes connections at the phase's very start, and a connection's
    /// task may see its close before the shard loop has played the phase: it still reconnects
    /// under the phase's policy, and the loop's own start of the phase changes nothing more.
    #[test]
    fn a_connection_down_after_a_phase_is_due_gets_its_policy() {
        let shard = test_shard(serde_json::json!({
            "name": "catch-up", "target": "embedded", "connections": 1,
            "reconnect": {"policy": "none"},
            "phases": [{"hold": {"for": "1ms"}},
                       {"server": {"do": "close_all", "for": "1s",
                                   "reconnect": {"policy": "immediate"}}}]
        }));
        // The plan began 5 ms ago: the server phase is due, and the loop has not played it.
        let origin = Instant::now()
            .checked_sub(Duration::from_millis(5))
            .expect("an instant 5 ms back");
        shard.origin.set(Some(origin));
        let mut previous_ms = 0;
        let wait = shard.backoff(0, 1, &mut previous_ms);
        assert_eq!(wait, Some(Duration::ZERO));
        let started = origin + Duration::from_millis(1);
        assert_eq!(shard.phase_started.get(), started);
        shard.enter_phase(1, started + Duration::from_secs(1));
        assert_eq!(shard.phase_started.get(), started);
    }
}
