//! One connection slot's life for protocols above TCP (TLS, WebSocket, ...): TCP connect timed
//! into `connect` as plain TCP's `table` does, then the protocol's handshake timed into
//! `handshake`, then heartbeats in the protocol's own keepalive timed as `heartbeat_rtt`, under
//! the same reconnect policy. Plain TCP never runs here; it lives in the lean `table`. These
//! connections carry a TLS or WebSocket state of several kilobytes anyway, so plain async
//! functions cost little more here.
//!
//! A connection is connected at its TCP handshake and established once its protocol's
//! handshake is done (TLS, the WebSocket upgrade, MQTT's CONNACK, HTTP/2's settings): a
//! storm's recovery is the moment a client can talk again, not its TCP connect.

use std::os::fd::AsRawFd;
use std::rc::Rc;

use tokio::time::{Instant, sleep_until, timeout_at};

use super::shard::Shard;
use super::timing::{TIMER_GRANULARITY, from_schedule, heartbeat_offset, micros};
use crate::metrics::{ErrorDetail, ErrorKind, Latency};
use crate::protocol::{Event, Failure, Session};

/// Runs slot `slot` from `intended` until it is given up, stopped by the plan, or the run
/// ends; the counterpart of plain TCP's `table`.
pub(crate) async fn run(shard: Rc<Shard>, slot: u64, intended: Instant, reconnecting: bool) {
    let mut attempt = u32::from(reconnecting);
    let mut previous_ms = 0u32;
    let mut planned = intended;
    loop {
        if attempt > 0 {
            let Some(wait) = shard.backoff(slot, attempt, &mut previous_ms) else {
                return;
            };
            planned = Instant::now() + wait;
            sleep_until(planned).await;
        }
        let set = shard.target_set.get();
        if let Some((session, fd)) = establish(&shard, slot, set, attempt, planned).await {
            attempt = 0;
            if let Err(failure) = hold(&shard, session, fd, slot, set).await {
                let (source, target) = shard.plan.pool.pair_in(slot, set);
                shard.fail_with(source, target, failure);
                shard.went_down();
            }
        }
        attempt += 1;
    }
}

/// A TCP connection from source `source` to target `target` of the plan's pool, established
/// by `deadline`.
pub(crate) async fn connect(
    shard: &Shard,
    source: usize,
    target: usize,
    deadline: Instant,
) -> Result<tokio::net::TcpStream, ErrorKind> {
    let pool = &shard.plan.pool;
    let stream =
        crate::net::start_connect(pool.sources[source], pool.targets[target], pool.port_range)
            .map_err(|e| ErrorKind::from_io(&e))?;
    match timeout_at(deadline, stream.writable()).await {
        Err(_) => Err(ErrorKind::ConnectTimeout),
        Ok(Err(e)) => Err(ErrorKind::from_io(&e)),
        Ok(Ok(())) => match stream.take_error() {
            Ok(None) => Ok(stream),
            Ok(Some(e)) | Err(e) => Err(ErrorKind::from_io(&e)),
        },
    }
}

/// Connects and handshakes; every failure is counted here.
async fn establish(
    shard: &Shard,
    slot: u64,
    set: usize,
    attempt: u32,
    planned: Instant,
) -> Option<(Session, i32)> {
    let (source, target) = shard.plan.pool.pair_in(slot, set);
    let began = Instant::now();
    let lag = began
        .saturating_duration_since(planned)
        .saturating_sub(TIMER_GRANULARITY);
    {
        let mut data = shard.data.borrow_mut();
        data.count(source, target, |c| c.attempts += 1);
        if data.first_attempt_us.is_none() {
            data.first_attempt_us = Some(micros(began.saturating_duration_since(shard.start)));
        }
    }
    let target_addr = shard.plan.pool.targets[target];
    let connect_timeout = shard.plan.connect_timeout;
    let stream = match connect(shard, source, target, began + connect_timeout).await {
        Ok(stream) => stream,
        Err(kind) => {
            shard.fail(source, target, kind);
            return None;
        }
    };
    let tcp_done = Instant::now();
    shard.connected(slot, source, target, micros(tcp_done - began), micros(lag));
    let fd = stream.as_raw_fd();
    // Boxed: the handshake's state is kilobytes, and inline it would size every connection's
    // task for its whole life; boxed, it is freed once the handshake is done.
    let handshake = Box::pin(shard.plan.connector.handshake(stream, target_addr, slot));
    let session = match timeout_at(tcp_done + connect_timeout, handshake).await {
        Ok(Ok(session)) => session,
        Ok(Err(failure)) => {
            shard.fail_with(source, target, failure);
            return None;
        }
        Err(_) => {
            let failure = Failure {
                kind: ErrorKind::ConnectTimeout,
                detail: Some(ErrorDetail::HandshakeTimeout),
            };
            shard.fail_with(source, target, failure);
            return None;
        }
    };
    shard
        .data
        .borrow_mut()
        .latency
        .record(Latency::Handshake, micros(Instant::now() - tcp_done));
    shard.up(slot, source, target, attempt, true);
    Some((session, fd))
}

/// Keeps the open gauge, the slot's socket registry and the close count right however the
/// connection ends, aborts included.
struct Open<'a> {
    shard: &'a Shard,
    slot: u64,
    set: usize,
    /// A heartbeat is out and its answer not in yet.
    awaiting: std::cell::Cell<bool>,
}

impl<'a> Open<'a> {
    fn new(shard: &'a Shard, slot: u64, set: usize, fd: i32) -> Open<'a> {
        shard.open.set(shard.open.get() + 1);
        shard.set_fd(slot, fd);
        Open {
            shard,
            slot,
            set,
            awaiting: std::cell::Cell::new(false),
        }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let shard = self.shard;
        shard.open.set(shard.open.get() - 1);
        shard.unserved();
        shard.set_fd(self.slot, -1);
        if self.awaiting.get() {
            shard.heartbeat_settled();
        }
        if !shard.tearing_down.get() {
            let (source, target) = shard.plan.pool.pair_in(self.slot, self.set);
            shard
                .data
                .borrow_mut()
                .count(source, target, |c| c.closed += 1);
        }
    }
}

/// Records server-sent messages: each counts as received, and the age of each stamped one
/// goes to `delivery`.
fn arrived(shard: &Shard, source: usize, target: usize, count: u64, ages: &[u64]) {
    if count == 0 {
        return;
    }
    let mut data = shard.data.borrow_mut();
    data.count(source, target, |c| c.received += count);
    for age in ages {
        data.latency.record(Latency::Delivery, *age);
    }
}

fn arrived_during_wait(shard: &Shard, source: usize, target: usize, session: &mut Session) {
    let arrivals = session.take_arrivals();
    arrived(shard, source, target, arrivals.count, &arrivals.ages);
}

/// Holds an established session: heartbeats if the plan has them, records what the server
/// sends, and in any case notices at once when the peer goes away.
async fn hold(
    shard: &Shard,
    mut session: Session,
    fd: i32,
    slot: u64,
    set: usize,
) -> Result<(), Failure> {
    let open = Open::new(shard, slot, set, fd);
    let (source, target) = shard.plan.pool.pair_in(slot, set);
    // Messages that came with the handshake's answers.
    arrived_during_wait(shard, source, target, &mut session);
    let Some(heartbeat) = shard.plan.heartbeat else {
        loop {
            match session.next_event().await {
                Event::Closed(failure) => return Err(failure),
                Event::Message(age) => arrived(shard, source, target, 1, age.as_slice()),
            }
        }
    };
    let mut scheduled = Instant::now() + heartbeat_offset(slot, heartbeat.interval);
    loop {
        tokio::select! {
            event = session.next_event() => match event {
                Event::Closed(failure) => return Err(failure),
                Event::Message(age) => {
                    arrived(shard, source, target, 1, age.as_slice());
                    continue;
                }
            },
            () = sleep_until(scheduled) => {}
        }
        let sent_at = Instant::now();
        shard.heartbeat_sent(source, target);
        open.awaiting.set(true);
        // Boxed, as the handshake is: its state is only needed while one heartbeat waits.
        let answer = Box::pin(timeout_at(
            sent_at + heartbeat.timeout,
            session.heartbeat(&shard.payload),
        ))
        .await;
        arrived_during_wait(shard, source, target, &mut session);
        match answer {
            Err(_) => return Err(Failure::kind(ErrorKind::HeartbeatTimeout)),
            Ok(Err(failure)) => return Err(failure),
            Ok(Ok(())) => {}
        }
        open.awaiting.set(false);
        shard.heartbeat_settled();
        let now = Instant::now();
        {
            let mut data = shard.data.borrow_mut();
            data.latency.record(
                Latency::HeartbeatRtt,
                micros(from_schedule(scheduled, sent_at, now)),
            );
            data.count(source, target, |c| c.heartbeats_answered += 1);
        }
        scheduled += heartbeat.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of these lives per held connection: the handshake's kilobytes must stay boxed.
    #[tokio::test]
    async fn future_stays_small() {
        let shard = crate::agent::shard::test_shard(serde_json::json!({
            "name": "size", "target": "embedded", "connections": 1, "protocol": "tls",
            "heartbeat": {"interval": "1s"}, "phases": [{"hold": {"for": "1s"}}]
        }));
        let future = run(shard, 0, Instant::now(), false);
        let size = std::mem::size_of_val(&future);
        assert!(
            size <= 1024,
            "the layered connection future is {size} bytes"
        );
    }
}
