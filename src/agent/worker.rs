//! A worker's loop: plays its share of the schedule (opens, closes, storms, phase starts),
//! runs the plain-TCP table's timers and readiness, starts the protocol tasks and the
//! publisher, and sends one snapshot a second. The state it plays on is the `Shard`.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep_until};

use super::shard::Shard;
use super::{EngineControl, EnginePlan};
use crate::metrics::{ErrorKind, IntervalData, IntervalSnapshot};
use crate::profile::timeline::{self, SlotAction, WorkerSchedule};

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
