//! A worker ("shard"): one thread with its own single-threaded tokio runtime, owning its share
//! of connection slots and the histograms they record into.
//!
//! Owning the data per thread is what makes recording lock-free: connection tasks are local to
//! the shard (`spawn_local`), so `RefCell` suffices. The shard never talks to other shards; it
//! sends one snapshot per second to the aggregate.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep_until};

use super::conn::micros;
use super::{EngineControl, EnginePlan};
use crate::metrics::{ErrorKind, IntervalData, IntervalSnapshot};
use crate::profile::reconnect::ReconnectPolicy;
use crate::profile::timeline::{self, SlotAction, WorkerSchedule};
use std::os::fd::RawFd;

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
    awaiting: Cell<u64>,
    /// The phase now playing, once the first has started.
    phase: Cell<Option<usize>>,
    /// Where the plan's offsets count from now (the start plus the time spent paused), or
    /// `None` while paused; kept by the shard loop for `catch_up`.
    origin: Cell<Option<Instant>>,
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
    fn enter_phase(&self, phase: usize, at: Instant) {
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

    fn fresh_data(&self) -> IntervalData {
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
pub(crate) fn test_shard(profile: serde_json::Value) -> Rc<Shard> {
    let pool = super::pool::SourcePool::new(
        &crate::profile::SourceSpec::default(),
        &["127.0.0.1:9".parse().expect("a socket address")],
        crate::host::ephemeral_port_range(),
    )
    .expect("a pool of the default sources");
    let profile = crate::profile::Profile::from_value(profile).expect("a valid profile");
    let plan = Arc::new(EnginePlan::new(&profile, pool));
    Rc::new(Shard::new(plan, Instant::now(), 1))
}

/// Starts a slot's connection task (protocols above TCP; plain TCP lives in the table).
fn spawn_slot(
    shard: &Rc<Shard>,
    slot: u64,
    at: Instant,
    reconnecting: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(super::layered::run(shard.clone(), slot, at, reconnecting))
}

/// Runs shard `worker` of `workers` until the plan ends or `control_rx` says stop. While
/// paused, no planned event fires; on resume the rest of the plan shifts by the pause.
pub(crate) async fn run(
    plan: Arc<EnginePlan>,
    worker: usize,
    workers: usize,
    start: Instant,
    snapshot_tx: mpsc::UnboundedSender<IntervalSnapshot>,
    mut control_rx: watch::Receiver<EngineControl>,
) {
    let shard = Rc::new(Shard::new(plan.clone(), start, workers));
    // Plain TCP connections live in the table (no task per connection). Should the kernel
    // refuse its epoll instance (out of descriptors), every planned connection of this
    // shard fails with that error, counted like any other.
    let tcp = matches!(plan.connector, crate::protocol::Connector::Tcp);
    let (mut table, table_error) = if tcp {
        match super::table::Table::new(worker, workers) {
            Ok(table) => (Some(table), None),
            Err(e) => (None, Some(ErrorKind::from_io(&e))),
        }
    } else {
        (None, None)
    };
    // The first worker of each agent runs its fan-out publisher, if the profile has one.
    let publisher = (worker == 0 && super::publisher::wanted(&shard))
        .then(|| tokio::task::spawn_local(super::publisher::run(shard.clone())).abort_handle());
    let total = timeline::total(&plan.spans);
    let mut schedule = WorkerSchedule::new(&plan.profile, &plan.spans, worker, workers).peekable();
    // Slot `s` of this shard lives at index `s / workers`.
    let mut slots: Vec<Option<AbortHandle>> = Vec::new();
    let mut seq = 0u64;
    let mut next_tick = start + Duration::from_secs(1);
    // Time spent paused so far; planned instants move later by this much.
    let mut shift = Duration::ZERO;
    let mut paused_since: Option<Instant> = None;
    let send = |seq: u64, last: bool, (open, open_established): (u64, u64), data: IntervalData| {
        // The receiver only goes away when the run is over; nothing to report to then.
        let _ = snapshot_tx.send(IntervalSnapshot {
            reporter: worker,
            seq,
            last,
            open,
            open_established,
            data,
        });
    };
    loop {
        let control = *control_rx.borrow_and_update();
        if control.stop {
            break;
        }
        match (control.paused, paused_since) {
            (true, None) => paused_since = Some(Instant::now()),
            (false, Some(since)) => {
                shift += since.elapsed();
                paused_since = None;
            }
            _ => {}
        }
        let origin = start + shift;
        shard.origin.set(paused_since.is_none().then_some(origin));
        let next_event = schedule.peek().map(|e| origin + e.at);
        let next_deadline = table.as_ref().and_then(|t| t.next_deadline(&shard));
        tokio::select! {
            biased;
            changed = control_rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = sleep_until(next_tick) => {
                let data = shard.data.replace(shard.fresh_data());
                send(seq, false, (shard.open.get(), shard.served()), data);
                seq += 1;
                next_tick += Duration::from_secs(1);
            }
            () = sleep_until(next_event.unwrap_or(origin + total)), if paused_since.is_none() => {
                if next_event.is_none() {
                    break;
                }
                let now = Instant::now();
                while let Some(event) = schedule.next_if(|e| origin + e.at <= now) {
                    let index = (event.slot / workers as u64) as usize;
                    match event.action {
                        SlotAction::Open => {
                            if let Some(table) = table.as_mut() {
                                table.open(&shard, event.slot, origin + event.at);
                                continue;
                            }
                            if let Some(kind) = table_error {
                                let (source, target) = shard.plan.pool.pair_in(event.slot, 0);
                                shard.data.borrow_mut().count(source, target, |c| c.attempts += 1);
                                shard.fail(source, target, kind);
                                continue;
                            }
                            let task = spawn_slot(&shard, event.slot, origin + event.at, false);
                            if slots.len() <= index {
                                slots.resize(index + 1, None);
                            }
                            slots[index] = Some(task.abort_handle());
                        }
                        SlotAction::Close => {
                            if let Some(table) = table.as_mut() {
                                table.close(&shard, event.slot);
                            }
                            if let Some(handle) = slots.get_mut(index).and_then(Option::take) {
                                handle.abort();
                            }
                        }
                        SlotAction::Kick { reset } => {
                            if tcp {
                                if let Some(table) = table.as_mut() {
                                    table.kick(&shard, event.slot, reset);
                                }
                                continue;
                            }
                            // Only established connections: one waiting to reconnect keeps
                            // its own backoff.
                            let fd = shard.fds.borrow().get(index).copied().unwrap_or(-1);
                            if fd < 0 {
                                continue;
                            }
                            if reset {
                                crate::net::set_linger_zero(fd);
                            }
                            shard.went_down();
                            if let Some(handle) = slots.get_mut(index).and_then(Option::take) {
                                handle.abort();
                            }
                            let task = spawn_slot(&shard, event.slot, now, true);
                            slots[index] = Some(task.abort_handle());
                        }
                        SlotAction::PhaseStart { phase } => {
                            shard.enter_phase(phase, origin + event.at);
                        }
                    }
                }
            }
            () = sleep_until(next_deadline.unwrap_or(origin + total)), if next_deadline.is_some() => {
                if let Some(table) = table.as_mut() {
                    table.process_timers(&shard);
                }
            }
            () = std::future::poll_fn(|cx| match table.as_mut() {
                Some(table) => table.poll_io(cx),
                None => std::task::Poll::Pending,
            }) => {
                if let Some(table) = table.as_mut() {
                    table.process_io(&shard);
                }
            }
        }
    }
    let open_before_teardown = (shard.open.get(), shard.served());
    shard.tearing_down.set(true);
    // Read before the teardown settles them: the heartbeats the run's end cut short.
    let in_flight = shard.awaiting.get();
    if let Some(publisher) = publisher {
        publisher.abort();
    }
    if let Some(table) = table.as_mut() {
        table.teardown(&shard);
    }
    for handle in slots.iter().flatten() {
        handle.abort();
    }
    let mut data = shard.data.replace(shard.fresh_data());
    data.totals.heartbeats_in_flight_at_end += in_flight;
    send(seq, true, open_before_teardown, data);
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
        let wait = super::super::conn::backoff(&shard, 0, 1, &mut previous_ms);
        assert_eq!(wait, Some(Duration::ZERO));
        let started = origin + Duration::from_millis(1);
        assert_eq!(shard.phase_started.get(), started);
        shard.enter_phase(1, started + Duration::from_secs(1));
        assert_eq!(shard.phase_started.get(), started);
    }
}
