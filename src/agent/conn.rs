//! One connection slot's life: socket, connect, heartbeats, until an error or the worker ends
//! it. Failures are counted by kind; nothing here allocates per heartbeat.
//!
//! Memory matters here more than anywhere: one of these futures lives per held connection.
//! So the whole life uses a single timer (connect timeout, heartbeat wait and echo timeout in
//! turn), indices are `u32`, and the heartbeat settings are read from the shared plan rather
//! than copied. `tests::future_stays_small` guards the size.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep_until};

use super::shard::Shard;
use crate::metrics::{ErrorKind, Latency};
use crate::profile::reconnect::ReconnectPolicy;

/// Spreads heartbeat start times by the golden ratio so that no two slots line up.
pub(crate) fn heartbeat_offset(slot: u64, interval: Duration) -> Duration {
    const PHI_FRACTION: f64 = 0.618_033_988_749_894_9;
    let fraction = (slot as f64 * PHI_FRACTION).fract();
    interval.mul_f64(fraction)
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// tokio's timer fires on a 1 ms grid, so a task woken "on time" can start up to 1 ms after its
/// scheduled instant through no fault of the target.
pub const TIMER_GRANULARITY: Duration = Duration::from_millis(1);

/// Latency from the scheduled instant (coordinated-omission aware), less the part of the start
/// lag that the timer's granularity explains. A stall longer than that still counts in full
/// beyond the first millisecond.
pub(crate) fn from_schedule(scheduled: Instant, started: Instant, now: Instant) -> Duration {
    let lag = started.saturating_duration_since(scheduled);
    now.saturating_duration_since(scheduled) - lag.min(TIMER_GRANULARITY)
}

/// Runs slot `slot` from `intended` (its planned attempt, or for `reconnecting`, the moment it
/// was closed) until it is given up, stopped by the plan, or the run ends. Every failure and
/// every close by the peer goes through the reconnect policy in force.
pub(crate) async fn run(shard: Rc<Shard>, slot: u64, intended: Instant, reconnecting: bool) {
    // One timer for the whole life: backoff, connect timeout, heartbeat waits, echo timeouts.
    // Its deadline also carries each attempt's planned instant into `establish`.
    let timer = sleep_until(intended);
    tokio::pin!(timer);
    // Attempts since the last success: 0 for a first connection.
    let mut attempt = u32::from(reconnecting);
    let mut previous_ms = 0u32;
    loop {
        if attempt > 0 {
            let Some(wait) = backoff(&shard, slot, attempt, &mut previous_ms) else {
                return;
            };
            timer.as_mut().reset(Instant::now() + wait);
            timer.as_mut().await;
        }
        let set = shard.target_set.get() as u8;
        if let Some(stream) = establish(&shard, slot, set as usize, attempt, timer.as_mut()).await {
            attempt = 0;
            if let Err(kind) = hold(&shard, stream, slot, set, timer.as_mut()).await {
                let (source, target) = shard.plan.pool.pair_in(slot, set as usize);
                shard.fail(source, target, kind);
                shard.went_down();
            }
        }
        attempt += 1;
    }
}

/// The wait before reconnect attempt `attempt` under the policy in force, or `None` to give up
/// (counted unless the policy is never to reconnect).
pub(crate) fn backoff(
    shard: &Shard,
    slot: u64,
    attempt: u32,
    previous_ms: &mut u32,
) -> Option<Duration> {
    shard.catch_up();
    let policy = shard.policy.get();
    let previous = Duration::from_millis(u64::from(*previous_ms));
    match policy.delay(attempt, previous, shard.random(slot)) {
        Some(wait) => {
            *previous_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
            Some(wait)
        }
        None => {
            if policy != ReconnectPolicy::Never {
                let (source, target) = shard.plan.pool.pair_in(slot, shard.target_set.get());
                shard
                    .data
                    .borrow_mut()
                    .count(source, target, |c| c.given_up += 1);
            }
            None
        }
    }
}

/// Starts connecting slot `slot` in target set `set` and counts the attempt. The timer's
/// deadline on entry is the attempt's planned instant. Returns the connect in flight, a small
/// hand-written future; if the kernel refused at once, the failure is already counted and the
/// future resolves to `None` straight away.
fn establish<'a>(
    shard: &'a Shard,
    slot: u64,
    set: usize,
    attempt: u32,
    mut timer: Pin<&'a mut Sleep>,
) -> Connecting<'a> {
    let (source, target) = shard.plan.pool.pair_in(slot, set);
    let began = Instant::now();
    // Start lag beyond the timer's grid counts against the target (coordinated omission).
    let lag = began
        .saturating_duration_since(timer.deadline())
        .saturating_sub(TIMER_GRANULARITY);
    {
        let mut data = shard.data.borrow_mut();
        data.count(source, target, |c| c.attempts += 1);
        if data.first_attempt_us.is_none() {
            data.first_attempt_us = Some(micros(began.saturating_duration_since(shard.start)));
        }
    }
    let pool = &shard.plan.pool;
    let stream = match super::socket::start_connect(
        pool.sources[source],
        pool.targets[target],
        pool.port_range,
    ) {
        Ok(stream) => Some(stream),
        Err(e) => {
            shard.fail(source, target, ErrorKind::from_io(&e));
            None
        }
    };
    timer.as_mut().reset(began + shard.plan.connect_timeout);
    Connecting {
        shard,
        stream,
        began,
        timer,
        lag_us: u32::try_from(lag.as_micros()).unwrap_or(u32::MAX),
        attempt,
        source: source as u32,
        target: target as u32,
    }
}

/// A connect in flight: resolves to the established stream, or `None` once the failure is
/// counted. Readiness is polled directly rather than through `writable()`, whose waiter node
/// would sit in every connection's future for its whole life.
struct Connecting<'a> {
    shard: &'a Shard,
    stream: Option<TcpStream>,
    began: Instant,
    timer: Pin<&'a mut Sleep>,
    lag_us: u32,
    attempt: u32,
    source: u32,
    target: u32,
}

impl Future for Connecting<'_> {
    type Output = Option<TcpStream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let (source, target) = (this.source as usize, this.target as usize);
        let Some(stream) = this.stream.as_ref() else {
            return Poll::Ready(None);
        };
        let failure = match stream.poll_write_ready(cx) {
            Poll::Ready(Ok(())) => match stream.take_error() {
                Ok(None) => None,
                Ok(Some(e)) | Err(e) => Some(ErrorKind::from_io(&e)),
            },
            Poll::Ready(Err(e)) => Some(ErrorKind::from_io(&e)),
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Some(ErrorKind::ConnectTimeout)
            }
        };
        let shard = this.shard;
        if let Some(kind) = failure {
            this.stream = None;
            shard.fail(source, target, kind);
            return Poll::Ready(None);
        }
        let now = Instant::now();
        let service = now - this.began;
        let mut data = shard.data.borrow_mut();
        data.latency
            .record(Latency::Connect, micros(service) + u64::from(this.lag_us));
        data.latency
            .record(Latency::ConnectService, micros(service));
        data.count(source, target, |c| c.established += 1);
        if this.attempt > 0 {
            data.reconnected(source, target, this.attempt);
            let since_phase = now.saturating_duration_since(shard.phase_started.get());
            data.latency.record(Latency::Recovery, micros(since_phase));
        }
        data.last_established_us = Some(micros(now.saturating_duration_since(shard.start)));
        Poll::Ready(this.stream.take())
    }
}

/// Reads whatever has arrived, adding its length to `got`. Ready with the failure if the peer
/// closed or broke the connection; Pending once drained, with the waker registered. Reading
/// through `poll_read` lets tokio notice a short read as "drained" without another syscall,
/// and the buffer lives only for this call, not in the connection's future.
fn drain(stream: &mut TcpStream, cx: &mut Context<'_>, got: &mut usize) -> Poll<ErrorKind> {
    let mut buf = [0u8; 64];
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(ErrorKind::from_io(&e)),
            Poll::Ready(Ok(())) if read.filled().is_empty() => {
                return Poll::Ready(ErrorKind::ClosedByPeer);
            }
            Poll::Ready(Ok(())) => *got += read.filled().len(),
        }
    }
}

/// Holds an established connection: heartbeats if the plan has them, and in any case notices
/// at once when the peer goes away. A plain function returning the state machine, so no extra
/// async frame wraps it.
fn hold<'a>(
    shard: &'a Shard,
    stream: TcpStream,
    slot: u64,
    set: u8,
    mut timer: Pin<&'a mut Sleep>,
) -> Held<'a> {
    use std::os::fd::AsRawFd;
    shard.open.set(shard.open.get() + 1);
    shard.set_fd(slot, stream.as_raw_fd());
    let offset = shard
        .plan
        .heartbeat
        .map(|h| heartbeat_offset(slot, h.interval));
    let scheduled = Instant::now() + offset.unwrap_or(Duration::ZERO);
    timer.as_mut().reset(scheduled);
    Held {
        shard,
        stream,
        slot,
        set,
        timer,
        scheduled,
        sent_at: scheduled,
        beat: if offset.is_some() {
            Beat::Idle
        } else {
            Beat::Silent
        },
    }
}

/// Keeps the worker's open gauge and the slot's socket registry right however the connection
/// ends, aborts included.
impl Drop for Held<'_> {
    fn drop(&mut self) {
        let shard = self.shard;
        shard.open.set(shard.open.get() - 1);
        shard.set_fd(self.slot, -1);
        if matches!(self.beat, Beat::Sending { .. } | Beat::Echo { .. }) {
            shard.heartbeat_settled();
        }
        if !shard.tearing_down.get() {
            let (source, target) = shard.plan.pool.pair_in(self.slot, self.set as usize);
            shard
                .data
                .borrow_mut()
                .count(source, target, |c| c.closed += 1);
        }
    }
}

/// Where a held connection is in its heartbeat cycle.
#[derive(Clone, Copy)]
enum Beat {
    /// No heartbeats: only watch for the peer going away.
    Silent,
    /// Waiting for the timer: the next heartbeat is due at `scheduled`.
    Idle,
    /// Sending the payload; `done` bytes are out.
    Sending { done: u32 },
    /// Waiting for the echo; `got` bytes are back.
    Echo { got: u32 },
}

/// The heartbeat cycle as one explicit state machine: a held connection's whole state is
/// this struct (about a hundred bytes) plus its timer.
struct Held<'a> {
    shard: &'a Shard,
    stream: TcpStream,
    slot: u64,
    set: u8,
    timer: Pin<&'a mut Sleep>,
    scheduled: Instant,
    sent_at: Instant,
    beat: Beat,
}

impl Future for Held<'_> {
    type Output = Result<(), ErrorKind>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let shard = this.shard;
        let payload = &shard.payload[..];
        loop {
            match this.beat {
                Beat::Silent => {
                    let mut ignored = 0;
                    return drain(&mut this.stream, cx, &mut ignored).map(Err);
                }
                Beat::Idle => {
                    let mut ignored = 0;
                    if let Poll::Ready(kind) = drain(&mut this.stream, cx, &mut ignored) {
                        return Poll::Ready(Err(kind));
                    }
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.sent_at = Instant::now();
                    let (source, target) = shard.plan.pool.pair_in(this.slot, this.set as usize);
                    shard.heartbeat_sent(source, target);
                    this.beat = Beat::Sending { done: 0 };
                }
                Beat::Sending { done } => {
                    let done = done as usize;
                    if done == payload.len() {
                        let timeout = shard.plan.heartbeat.map_or(Duration::ZERO, |h| h.timeout);
                        this.timer.as_mut().reset(this.sent_at + timeout);
                        this.beat = Beat::Echo { got: 0 };
                        continue;
                    }
                    match Pin::new(&mut this.stream).poll_write(cx, &payload[done..]) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(ErrorKind::Reset)),
                        Poll::Ready(Ok(n)) => {
                            this.beat = Beat::Sending {
                                done: (done + n) as u32,
                            }
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(ErrorKind::from_io(&e))),
                    }
                }
                Beat::Echo { got } => {
                    let mut got = got as usize;
                    let drained = drain(&mut this.stream, cx, &mut got);
                    this.beat = Beat::Echo { got: got as u32 };
                    if let Poll::Ready(kind) = drained {
                        return Poll::Ready(Err(kind));
                    }
                    if got < payload.len() {
                        return this
                            .timer
                            .as_mut()
                            .poll(cx)
                            .map(|()| Err(ErrorKind::HeartbeatTimeout));
                    }
                    let now = Instant::now();
                    let (source, target) = shard.plan.pool.pair_in(this.slot, this.set as usize);
                    {
                        let mut data = shard.data.borrow_mut();
                        // From the scheduled send, so a late send counts against us.
                        data.latency.record(
                            Latency::HeartbeatRtt,
                            micros(from_schedule(this.scheduled, this.sent_at, now)),
                        );
                        data.count(source, target, |c| c.heartbeats_answered += 1);
                    }
                    shard.heartbeat_settled();
                    this.scheduled += shard.plan.heartbeat.map_or(Duration::ZERO, |h| h.interval);
                    let next = this.scheduled;
                    this.timer.as_mut().reset(next);
                    this.beat = Beat::Idle;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_lag_beyond_the_timer_grid_counts() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Started 0.5 ms late, done 0.2 ms later: the lag is the timer's, not the target's.
        assert_eq!(
            from_schedule(t0, t0 + ms(1) / 2, t0 + ms(1) / 2 + ms(1) / 5),
            ms(1) / 5
        );
        // Started 30 ms late: 29 ms of it is a stall that counts.
        assert_eq!(from_schedule(t0, t0 + ms(30), t0 + ms(31)), ms(30));
    }

    #[test]
    fn offsets_spread_over_the_interval() {
        let interval = Duration::from_secs(1);
        let mut buckets = [0u32; 10];
        for slot in 0..1000 {
            let offset = heartbeat_offset(slot, interval);
            assert!(offset < interval);
            buckets[(offset.as_millis() / 100) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|n| (90..=110).contains(n)),
            "{buckets:?}"
        );
    }

    /// One of these futures lives per held connection; tokio rounds the task cell up to a
    /// multiple of 128 bytes, so a few bytes over a boundary cost 128 per connection.
    #[tokio::test]
    async fn future_stays_small() {
        let shard = crate::agent::shard::test_shard(serde_json::json!({
            "name": "size", "target": {"addrs": ["127.0.0.1:9"]}, "connections": 1,
            "heartbeat": {"interval": "1s"},
            "reconnect": {"policy": "exponential", "jitter": "decorrelated"},
            "phases": [{"hold": {"for": "1s"}}]
        }));
        let future = run(shard, 0, Instant::now(), false);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 352, "the connection future is {size} bytes");
    }
}
