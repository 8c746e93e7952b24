//! Deploy scenarios played from the sink's side: closing held connections (all at once, a
//! fraction, at a rate, after a lifetime) and stopping or resuming accepting.
//!
//! This module decides *which* connections end and *when*; it never reads or writes them. A
//! held connection costs one registry entry (its accept time and the abort handle of its task);
//! the rate and the lifetime are enforced by one closer task per sink, never a timer per
//! connection. Ending a connection aborts its task, whose drop closes the socket with a FIN
//! (see `sink::Held`).

use std::collections::BTreeMap;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::SockRef;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::SinkStats;
use crate::profile::sink_action::{MAX_LIFETIME_SECONDS, SinkAction};

/// A settings change that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error("start_accepting: cannot listen on {addr} again: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The state of a sink, as `GET /stats` and `stampede sink-admin ADDR stats` show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// Connections held now. Closing takes them out at once, before their tasks have ended.
    pub open: u64,
    pub accepted: u64,
    /// Whether every listener is accepting.
    pub accepting: bool,
    pub bytes: u64,
    /// Connections the sink closed by an action, a rate or a lifetime.
    pub closed_by_sink: u64,
    pub accept_errors: u64,
    /// Closes per second now set (0: none).
    pub close_rate: f64,
    pub lifetime_seconds: Option<f64>,
    /// TLS handshakes completed, and how many resumed a session (tls and wss only).
    #[serde(default)]
    pub tls_handshakes: u64,
    #[serde(default)]
    pub tls_resumed: u64,
}

/// Identifies one held connection in the registry; ids grow in accept order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ConnId(u64);

struct Entry {
    /// Milliseconds from `SinkControl::epoch` to the accept.
    accepted_ms: u64,
    /// None only between the accept and the spawn of the connection's task.
    abort: Option<AbortHandle>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// Ordered by id, hence by accept time: the oldest entry is always the first to expire.
    held: BTreeMap<u64, Entry>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Schedule {
    per_second: f64,
    lifetime: Option<Duration>,
}

impl Schedule {
    fn period(&self) -> Option<Duration> {
        (self.per_second > 0.0).then(|| {
            Duration::try_from_secs_f64(1.0 / self.per_second)
                .unwrap_or(Duration::MAX)
                .clamp(
                    Duration::from_micros(1),
                    Duration::from_secs(366 * 24 * 3600),
                )
        })
    }
}

/// A listener's current socket: `None` while the sink is not accepting. Sent to its accept
/// loop, which serves a duplicate of the descriptor; the control keeps this one to shut the
/// socket down at once.
pub(crate) type ListenerRx = watch::Receiver<Option<Arc<std::net::TcpListener>>>;

struct Slot {
    /// The address the listener was bound to (with its real port), for binding again.
    addr: SocketAddr,
    reuse_port: bool,
    current_tx: watch::Sender<Option<Arc<std::net::TcpListener>>>,
}

struct Listening {
    accepting: bool,
    slots: Vec<Slot>,
}

/// Shared control of a running sink; `apply` takes effect at once. One control serves one
/// `run_controlled` at a time.
pub struct SinkControl {
    epoch: Instant,
    /// Inserted into by accept loops, removed from by connection tasks as they end and by
    /// closing actions. A short std lock: never held across an await or a spawn.
    registry: Mutex<Registry>,
    /// Written by `apply`, read by the closer task.
    schedule_tx: watch::Sender<Schedule>,
    /// Notified when a connection arrives in an empty registry, so the closer restarts a rate
    /// or lifetime clock it had let lapse.
    arrived: Notify,
    /// Written by `apply` and by `run_controlled` as it starts and ends.
    listening: Mutex<Listening>,
    /// Connections closed by this control.
    closed: AtomicU64,
}

/// At most this many connections are closed per registry lock, so accepts are never held up
/// for long by a large close.
const CLOSE_BATCH: usize = 4096;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves the data consistent (plain inserts and
    // removals), so a poisoned lock is still fine to use.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl SinkControl {
    pub fn new() -> Arc<SinkControl> {
        Arc::new(SinkControl {
            epoch: Instant::now(),
            registry: Mutex::new(Registry::default()),
            schedule_tx: watch::Sender::new(Schedule::default()),
            arrived: Notify::new(),
            listening: Mutex::new(Listening {
                accepting: true,
                slots: Vec::new(),
            }),
            closed: AtomicU64::new(0),
        })
    }

    /// Carries out `action` at once. An invalid number is clamped to its range; a failure to
    /// listen again leaves that listener stopped (see `try_apply` to learn of either).
    pub fn apply(&self, action: &SinkAction) {
        let clamped = match *action {
            SinkAction::CloseFraction { fraction } => SinkAction::CloseFraction {
                fraction: if fraction.is_nan() {
                    0.0
                } else {
                    fraction.clamp(0.0, 1.0)
                },
            },
            SinkAction::CloseRate { per_second } if action.validate().is_err() => {
                SinkAction::CloseRate {
                    per_second: if per_second > 0.0 { f64::MAX } else { 0.0 },
                }
            }
            SinkAction::Lifetime { seconds: Some(s) } if action.validate().is_err() => {
                SinkAction::Lifetime {
                    seconds: (s > 0.0).then_some(MAX_LIFETIME_SECONDS),
                }
            }
            _ => action.clone(),
        };
        let _ = self.try_apply(&clamped);
    }

    /// Carries out `action` at once, or says why it could not.
    pub fn try_apply(&self, action: &SinkAction) -> Result<(), ControlError> {
        action.validate().map_err(ControlError::Invalid)?;
        match *action {
            SinkAction::CloseAll => {
                self.close_all();
            }
            SinkAction::CloseFraction { fraction } => {
                self.close_fraction(fraction);
            }
            SinkAction::CloseRate { per_second } => {
                self.schedule_tx.send_modify(|s| s.per_second = per_second);
            }
            SinkAction::Lifetime { seconds } => {
                let lifetime = seconds.map(Duration::from_secs_f64);
                self.schedule_tx.send_modify(|s| s.lifetime = lifetime);
            }
            SinkAction::StopAccepting => self.stop_accepting(),
            SinkAction::StartAccepting => self.start_accepting()?,
        }
        Ok(())
    }

    /// The state of the sink this control drives, with `stats` its counters.
    pub fn status(&self, stats: &SinkStats) -> SinkStatus {
        let schedule = *self.schedule_tx.borrow();
        let accepting = {
            let listening = lock(&self.listening);
            listening.accepting
                && listening
                    .slots
                    .iter()
                    .all(|s| s.current_tx.borrow().is_some())
        };
        SinkStatus {
            open: self.open() as u64,
            accepted: stats.accepted.load(Ordering::Relaxed),
            accepting,
            bytes: stats.bytes.load(Ordering::Relaxed),
            closed_by_sink: self.closed.load(Ordering::Relaxed),
            accept_errors: stats.accept_errors.load(Ordering::Relaxed),
            close_rate: schedule.per_second,
            lifetime_seconds: schedule.lifetime.map(|d| d.as_secs_f64()),
            tls_handshakes: stats.tls_handshakes.load(Ordering::Relaxed),
            tls_resumed: stats.tls_resumed.load(Ordering::Relaxed),
        }
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        lock(&self.registry).held.len()
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a connection just accepted; its task's abort handle follows in `attach`.
    pub(crate) fn admit(&self) -> ConnId {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, accepted: Instant) -> ConnId {
        let accepted_ms = self.millis(accepted);
        let mut registry = lock(&self.registry);
        let id = registry.next_id;
        registry.next_id += 1;
        let was_empty = registry.held.is_empty();
        registry.held.insert(
            id,
            Entry {
                accepted_ms,
                abort: None,
            },
        );
        drop(registry);
        if was_empty {
            self.arrived.notify_one();
        }
        ConnId(id)
    }

    /// Hands over the task serving `id`. If the connection was closed while its task was being
    /// spawned, the task is aborted here.
    pub(crate) fn attach(&self, id: ConnId, abort: AbortHandle) {
        let mut registry = lock(&self.registry);
        match registry.held.get_mut(&id.0) {
            Some(entry) => entry.abort = Some(abort),
            None => {
                drop(registry);
                abort.abort();
            }
        }
    }

    /// Forgets a connection whose task has ended.
    pub(crate) fn forget(&self, id: ConnId) {
        lock(&self.registry).held.remove(&id.0);
    }

    /// Aborts the tasks of entries already taken out of the registry.
    fn end(&self, entries: Vec<Entry>) -> usize {
        let count = entries.len();
        self.closed.fetch_add(count as u64, Ordering::Relaxed);
        for entry in entries {
            // No handle yet: `attach` finds the entry gone and aborts the task itself.
            if let Some(abort) = entry.abort {
                abort.abort();
            }
        }
        count
    }

    /// Closes every held connection; returns how many.
    pub fn close_all(&self) -> usize {
        let held = std::mem::take(&mut lock(&self.registry).held);
        self.end(held.into_values().collect())
    }

    /// Closes `round(fraction * open)` connections chosen at random; returns how many.
    pub fn close_fraction(&self, fraction: f64) -> usize {
        let mut registry = lock(&self.registry);
        let open = registry.held.len();
        let count = ((fraction.clamp(0.0, 1.0) * open as f64).round() as usize).min(open);
        if count == 0 {
            return 0;
        }
        let mut ids: Vec<u64> = registry.held.keys().copied().collect();
        let mut rng = Rng::seeded();
        // Partial Fisher-Yates: the first `count` ids become a uniform random sample.
        for i in 0..count {
            let j = i + rng.below(open - i);
            ids.swap(i, j);
        }
        let chosen: Vec<Entry> = ids[..count]
            .iter()
            .filter_map(|id| registry.held.remove(id))
            .collect();
        drop(registry);
        self.end(chosen)
    }

    /// Closes up to `count` of the oldest connections; returns how many are left open.
    fn close_oldest(&self, count: u64) -> usize {
        let mut left = count;
        loop {
            let mut registry = lock(&self.registry);
            let mut batch = Vec::new();
            while left > 0 && batch.len() < CLOSE_BATCH {
                match registry.held.pop_first() {
                    Some((_, entry)) => batch.push(entry),
                    None => break,
                }
                left -= 1;
            }
            let open = registry.held.len();
            drop(registry);
            let full = batch.len() == CLOSE_BATCH;
            self.end(batch);
            if !full || left == 0 || open == 0 {
                return open;
            }
        }
    }

    /// Closes every connection accepted `lifetime` or longer before `now`; returns when the
    /// next one expires, if any is held.
    fn close_expired(&self, now: Instant, lifetime: Duration) -> Option<Instant> {
        let now_ms = self.millis(now);
        let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        loop {
            let mut registry = lock(&self.registry);
            let mut batch = Vec::new();
            let mut next = None;
            while batch.len() < CLOSE_BATCH {
                let Some(oldest) = registry.held.first_entry() else {
                    break;
                };
                let expires_ms = oldest.get().accepted_ms.saturating_add(lifetime_ms);
                if expires_ms > now_ms {
                    next = self.epoch.checked_add(Duration::from_millis(expires_ms));
                    break;
                }
                batch.push(oldest.remove());
            }
            drop(registry);
            let full = batch.len() == CLOSE_BATCH;
            self.end(batch);
            if !full {
                return next;
            }
        }
    }

    /// Enforces the close rate and the lifetime until the control is dropped; one per sink.
    pub(crate) async fn run_closer(&self) {
        let mut schedule_rx = self.schedule_tx.subscribe();
        let mut schedule = *schedule_rx.borrow_and_update();
        // When the next rate close is due; None while the rate clock is stopped.
        let mut next_rate_close: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut wake = None;
            if let Some(lifetime) = schedule.lifetime {
                wake = self.close_expired(now, lifetime);
            }
            if let Some(period) = schedule.period() {
                if self.open() == 0 {
                    next_rate_close = None;
                } else {
                    // The clock starts one period after it sees something to close, so an
                    // idle spell saves up no burst of closes.
                    let due = *next_rate_close.get_or_insert(now + period);
                    if let Some((count, next)) = rate_step(due, now, period) {
                        let left = self.close_oldest(count);
                        next_rate_close = (left > 0).then_some(next);
                    }
                    if let Some(due) = next_rate_close {
                        wake = Some(wake.map_or(due, |w: Instant| w.min(due)));
                    }
                }
            }
            tokio::select! {
                changed = schedule_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let new = *schedule_rx.borrow_and_update();
                    if new.per_second != schedule.per_second {
                        next_rate_close = None;
                    }
                    schedule = new;
                }
                () = self.arrived.notified() => {}
                () = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// Takes over `listeners` (bound by `sink::bind` or `bind_embedded`) and returns one
    /// receiver per listener for its accept loop. If the sink was told to stop accepting
    /// before it ran, they are closed at once.
    pub(crate) fn install(
        &self,
        listeners: Vec<tokio::net::TcpListener>,
        stats: &SinkStats,
    ) -> Vec<ListenerRx> {
        let mut listening = lock(&self.listening);
        close_slots(&listening.slots);
        listening.slots.clear();
        let mut receivers = Vec::with_capacity(listeners.len());
        for listener in listeners {
            let std = match listener.into_std() {
                Ok(std) => std,
                Err(_) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let Ok(addr) = std.local_addr() else {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let reuse_port = SockRef::from(&std).reuse_port().unwrap_or(false);
            let current = listening.accepting.then(|| Arc::new(std));
            let (current_tx, current_rx) = watch::channel(current);
            receivers.push(current_rx);
            listening.slots.push(Slot {
                addr,
                reuse_port,
                current_tx,
            });
        }
        receivers
    }

    /// Closes the listeners and every held connection: the sink has stopped.
    pub(crate) fn uninstall(&self) {
        let mut listening = lock(&self.listening);
        close_slots(&listening.slots);
        listening.slots.clear();
        drop(listening);
        self.close_all();
    }

    fn stop_accepting(&self) {
        let mut listening = lock(&self.listening);
        listening.accepting = false;
        close_slots(&listening.slots);
    }

    fn start_accepting(&self) -> Result<(), ControlError> {
        let mut listening = lock(&self.listening);
        listening.accepting = true;
        let mut first_error = None;
        for slot in &listening.slots {
            if slot.current_tx.borrow().is_some() {
                continue;
            }
            match super::bind_std(slot.addr, slot.reuse_port) {
                Ok(listener) => {
                    slot.current_tx.send_replace(Some(Arc::new(listener)));
                }
                Err(source) => {
                    first_error.get_or_insert(ControlError::Listen {
                        addr: slot.addr,
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// With a rate close due at `due` and one more every `period`: how many are due by `now`, and
/// when the next falls due. None if none is due yet.
fn rate_step(due: Instant, now: Instant, period: Duration) -> Option<(u64, Instant)> {
    if due > now {
        return None;
    }
    let behind = (now - due).as_secs_f64() / period.as_secs_f64();
    let count = (behind.floor() as u64).saturating_add(1);
    let next = due + period.saturating_mul(u32::try_from(count).unwrap_or(u32::MAX));
    Some((count, next))
}

/// Stops every listener at once: the kernel resets what it had queued for accept and refuses
/// new connections from now on, before the accept loops have even woken up.
fn close_slots(slots: &[Slot]) {
    for slot in slots {
        if let Some(listener) = slot.current_tx.send_replace(None) {
            // Shutting down a listening socket takes it out of the listening state for every
            // descriptor of it, including the accept loop's duplicate.
            let _ = SockRef::from(listener.as_ref()).shutdown(Shutdown::Read);
        }
    }
}

/// splitmix64: enough to pick connections at random, seeded from the OS.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness: the clock still varies the choice between calls.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = nanos.to_le_bytes();
        }
        Rng(u64::from_le_bytes(bytes))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0); the modulo bias is negligible for connection counts.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registers `n` connections accepted at `at` whose tasks wait forever; returns them.
    fn hold_at(
        control: &Arc<SinkControl>,
        at: Instant,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let id = control.admit_at(at);
                let control_for_task = control.clone();
                let task = tokio::spawn(async move {
                    struct Forget(Arc<SinkControl>, ConnId);
                    impl Drop for Forget {
                        fn drop(&mut self) {
                            self.0.forget(self.1);
                        }
                    }
                    let _forget = Forget(control_for_task, id);
                    std::future::pending::<()>().await;
                });
                control.attach(id, task.abort_handle());
                task
            })
            .collect()
    }

    fn hold(control: &Arc<SinkControl>, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
        hold_at(control, Instant::now(), n)
    }

    async fn assert_aborted(tasks: Vec<tokio::task::JoinHandle<()>>) {
        for task in tasks {
            assert!(task.await.unwrap_err().is_cancelled());
        }
    }

    #[tokio::test]
    async fn fraction_closes_the_rounded_share_and_all_closes_the_rest() {
        let control = SinkControl::new();
        let tasks = hold(&control, 10);
        assert_eq!(control.close_fraction(0.25), 3); // 2.5 rounds to 3
        assert_eq!(control.open(), 7);
        assert_eq!(control.close_fraction(0.0), 0);
        assert_eq!(control.close_all(), 7);
        assert_eq!(control.open(), 0);
        assert_aborted(tasks).await;
        assert_eq!(control.closed.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn a_connection_closed_before_its_task_is_attached_is_aborted_on_attach() {
        let control = SinkControl::new();
        let id = control.admit();
        assert_eq!(control.close_all(), 1);
        let task = tokio::spawn(std::future::pending::<()>());
        control.attach(id, task.abort_handle());
        assert!(task.await.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn lifetime_closes_each_connection_on_its_own_deadline() {
        let control = SinkControl::new();
        let t0 = control.epoch;
        let old = hold_at(&control, t0, 3);
        let young = hold_at(&control, t0 + Duration::from_secs(12), 2);
        let lifetime = Duration::from_secs(10);
        // Applied at 12 s, a lifetime closes at once what is already older than it...
        let next = control.close_expired(t0 + Duration::from_secs(12), lifetime);
        assert_eq!(next, Some(t0 + Duration::from_secs(22)));
        assert_eq!(control.open(), 2);
        assert_aborted(old).await;
        // ... and the rest 10 s after their own accept.
        let next = control.close_expired(t0 + Duration::from_millis(21_999), lifetime);
        assert_eq!(next, Some(t0 + Duration::from_secs(22)));
        assert_eq!(control.open(), 2);
        assert_eq!(
            control.close_expired(t0 + Duration::from_secs(22), lifetime),
            None
        );
        assert_eq!(control.open(), 0);
        assert_aborted(young).await;
        assert_eq!(control.closed.load(Ordering::Relaxed), 5);
    }

    /// Starts the sink's closer task for `control`, as `run_protocol` does.
    fn spawn_closer(control: &Arc<SinkControl>) {
        let closer = control.clone();
        tokio::spawn(async move { closer.run_closer().await });
    }

    /// Waits for `tasks` to be closed; returns when (all at one instant, or it panics).
    /// Bounded in virtual time, so that a connection never closed fails the test at once.
    async fn closed_at(tasks: Vec<tokio::task::JoinHandle<()>>) -> Instant {
        let mut at = None;
        for task in tasks {
            let joined = tokio::time::timeout(Duration::from_secs(24 * 3600), task)
                .await
                .expect("closed within a (virtual) day");
            assert!(joined.unwrap_err().is_cancelled());
            let now = Instant::now();
            assert_eq!(*at.get_or_insert(now), now, "closed at different times");
        }
        at.expect("some tasks")
    }

    // On a paused clock, with no sockets: the closer task alone moves it, by sleeping until
    // its next deadline, so each close is seen at the very instant it happens.
    #[tokio::test(start_paused = true)]
    async fn the_closer_ends_each_connection_at_its_own_lifetime_not_before() {
        use tokio::time::{sleep, sleep_until};
        let control = SinkControl::new();
        spawn_closer(&control);
        let lifetime = Duration::from_secs(60);
        control.apply(&SinkAction::Lifetime {
            seconds: Some(lifetime.as_secs_f64()),
        });
        // Two waves, the second accepted 30 s after the first.
        let first_at = Instant::now();
        let first = hold(&control, 10);
        sleep(Duration::from_secs(30)).await;
        let second_at = Instant::now();
        let second = hold(&control, 10);

        sleep_until(first_at + lifetime - Duration::from_millis(1)).await;
        assert_eq!(
            control.open(),
            20,
            "a millisecond before the first wave's lifetime"
        );
        assert_eq!(closed_at(first).await, first_at + lifetime);
        assert_eq!(control.open(), 10);
        sleep_until(second_at + lifetime - Duration::from_millis(1)).await;
        assert_eq!(
            control.open(),
            10,
            "a millisecond before the second wave's lifetime"
        );
        assert_eq!(closed_at(second).await, second_at + lifetime);
        assert_eq!(control.open(), 0);

        // A connection into the emptied sink, long after: the closer wakes for it.
        sleep(Duration::from_secs(1000)).await;
        let late_at = Instant::now();
        let late = hold(&control, 1);
        assert_eq!(closed_at(late).await, late_at + lifetime);
        assert_eq!(control.closed.load(Ordering::Relaxed), 21);
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_lifetime_applies_to_held_connections_and_none_keeps_them() {
        use tokio::time::sleep;
        let control = SinkControl::new();
        spawn_closer(&control);
        let t0 = Instant::now();
        control.apply(&SinkAction::Lifetime {
            seconds: Some(60.0),
        });
        let held = hold(&control, 5);
        // Shortened at 10 s: they close at 20 s, from their accept, not 20 s from now.
        sleep(Duration::from_secs(10)).await;
        control.apply(&SinkAction::Lifetime {
            seconds: Some(20.0),
        });
        assert_eq!(closed_at(held).await, t0 + Duration::from_secs(20));
        // No lifetime: held for as long as the client likes.
        control.apply(&SinkAction::Lifetime { seconds: None });
        let kept = hold(&control, 5);
        sleep(Duration::from_secs(366 * 24 * 3600)).await;
        assert_eq!(control.open(), 5);
        assert!(kept.iter().all(|t| !t.is_finished()));
    }

    #[tokio::test]
    async fn rate_closes_oldest_first_and_catches_up_after_a_late_wake() {
        let control = SinkControl::new();
        let first = hold(&control, 2);
        let rest = hold(&control, 3);
        assert_eq!(control.close_oldest(2), 3);
        assert_aborted(first).await;
        assert!(rest.iter().all(|t| !t.is_finished()));
        assert_eq!(control.close_oldest(10), 0);
        assert_aborted(rest).await;

        let t0 = control.epoch;
        let period = Duration::from_millis(10);
        assert_eq!(rate_step(t0 + period, t0, period), None);
        assert_eq!(rate_step(t0, t0, period), Some((1, t0 + period)));
        // Woken 25 ms late: the three closes due meanwhile happen now, the next stays on the grid.
        assert_eq!(
            rate_step(t0, t0 + Duration::from_millis(25), period),
            Some((3, t0 + Duration::from_millis(30)))
        );
        assert_eq!(Schedule::default().period(), None);
        let fast = Schedule {
            per_second: 1e12,
            lifetime: None,
        };
        assert_eq!(fast.period(), Some(Duration::from_micros(1)));
    }

    #[test]
    fn apply_clamps_what_try_apply_refuses() {
        let control = SinkControl::new();
        let bad = SinkAction::CloseRate { per_second: -3.0 };
        assert!(matches!(
            control.try_apply(&bad),
            Err(ControlError::Invalid(m)) if m.starts_with("per_second")
        ));
        control.apply(&SinkAction::CloseRate { per_second: 7.0 });
        control.apply(&bad);
        assert_eq!(control.schedule_tx.borrow().per_second, 0.0);
        control.apply(&SinkAction::Lifetime {
            seconds: Some(f64::INFINITY),
        });
        assert!(control.schedule_tx.borrow().lifetime.is_some());
    }
}
