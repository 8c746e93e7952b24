//! One connection slot's life: socket, connect, heartbeats, until an error or the worker ends
//! it. Failures are counted by kind; nothing here allocates per heartbeat.

use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout_at};

use super::shard::Shard;
use crate::metrics::{ErrorKind, Latency};
use crate::profile::Heartbeat;

/// Spreads heartbeat start times by the golden ratio so that no two slots line up.
fn heartbeat_offset(slot: u64, interval: Duration) -> Duration {
    const PHI_FRACTION: f64 = 0.618_033_988_749_894_9;
    let fraction = (slot as f64 * PHI_FRACTION).fract();
    interval.mul_f64(fraction)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// tokio's timer fires on a 1 ms grid, so a task woken "on time" can start up to 1 ms after its
/// scheduled instant through no fault of the target.
pub const TIMER_GRANULARITY: Duration = Duration::from_millis(1);

/// Latency from the scheduled instant (coordinated-omission aware), less the part of the start
/// lag that the timer's granularity explains. A stall longer than that still counts in full
/// beyond the first millisecond.
fn from_schedule(scheduled: Instant, started: Instant, now: Instant) -> Duration {
    let lag = started.saturating_duration_since(scheduled);
    now.saturating_duration_since(scheduled) - lag.min(TIMER_GRANULARITY)
}

/// Keeps the worker's open gauge right however the connection ends, aborts included.
struct OpenGuard {
    shard: Rc<Shard>,
    source: usize,
    target: usize,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.shard.open.set(self.shard.open.get() - 1);
        if !self.shard.tearing_down.get() {
            self.shard
                .data
                .borrow_mut()
                .count(self.source, self.target, |c| c.closed += 1);
        }
    }
}

/// Runs slot `slot`, whose attempt was planned for `intended`.
pub(crate) async fn run(shard: Rc<Shard>, slot: u64, intended: Instant) {
    let (source, target) = shard.plan.pool.pair(slot);
    shard
        .data
        .borrow_mut()
        .count(source, target, |c| c.attempts += 1);
    let began = Instant::now();
    {
        let mut data = shard.data.borrow_mut();
        if data.first_attempt_us.is_none() {
            data.first_attempt_us = Some(micros(began.saturating_duration_since(shard.start)));
        }
    }
    let stream = match connect(&shard, source, target, began).await {
        Ok(stream) => stream,
        Err(kind) => return shard.fail(source, target, kind),
    };
    let now = Instant::now();
    {
        let mut data = shard.data.borrow_mut();
        data.latency.record(
            Latency::Connect,
            micros(from_schedule(intended, began, now)),
        );
        data.latency
            .record(Latency::ConnectService, micros(now - began));
        data.count(source, target, |c| c.established += 1);
        data.last_established_us = Some(micros(now.saturating_duration_since(shard.start)));
    }
    shard.open.set(shard.open.get() + 1);
    let _open = OpenGuard {
        shard: shard.clone(),
        source,
        target,
    };
    let result = match shard.plan.heartbeat {
        Some(heartbeat) => heartbeats(&shard, stream, slot, heartbeat, source, target).await,
        None => hold(stream).await,
    };
    if let Err(kind) = result {
        shard.fail(source, target, kind);
    }
}

async fn connect(
    shard: &Shard,
    source: usize,
    target: usize,
    began: Instant,
) -> Result<TcpStream, ErrorKind> {
    let pool = &shard.plan.pool;
    let socket =
        super::socket::client_socket(pool.sources[source], pool.targets[target], pool.port_range)
            .map_err(|e| ErrorKind::from_io(&e))?;
    match timeout_at(
        began + shard.plan.connect_timeout,
        socket.connect(pool.targets[target]),
    )
    .await
    {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(ErrorKind::from_io(&e)),
        Err(_) => Err(ErrorKind::ConnectTimeout),
    }
}

/// Holds a connection without heartbeats until the peer closes it.
async fn hold(mut stream: TcpStream) -> Result<(), ErrorKind> {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Err(ErrorKind::ClosedByPeer),
            Ok(_) => {}
            Err(e) => return Err(ErrorKind::from_io(&e)),
        }
    }
}

async fn heartbeats(
    shard: &Shard,
    mut stream: TcpStream,
    slot: u64,
    heartbeat: Heartbeat,
    source: usize,
    target: usize,
) -> Result<(), ErrorKind> {
    let mut buf = [0u8; 64];
    let mut scheduled = Instant::now() + heartbeat_offset(slot, heartbeat.interval);
    let want = heartbeat.payload_bytes as usize;
    loop {
        // Between heartbeats, notice at once if the peer goes away.
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => return Err(ErrorKind::ClosedByPeer),
                Ok(_) => continue,
                Err(e) => return Err(ErrorKind::from_io(&e)),
            },
            () = sleep_until(scheduled) => {}
        }
        let sent_at = Instant::now();
        shard
            .data
            .borrow_mut()
            .count(source, target, |c| c.heartbeats_sent += 1);
        stream
            .write_all(&shard.payload[..want])
            .await
            .map_err(|e| ErrorKind::from_io(&e))?;
        let echo = async {
            let mut got = 0;
            while got < want {
                let chunk = (want - got).min(buf.len());
                match stream.read(&mut buf[..chunk]).await {
                    Ok(0) => return Err(ErrorKind::ClosedByPeer),
                    Ok(n) => got += n,
                    Err(e) => return Err(ErrorKind::from_io(&e)),
                }
            }
            Ok(())
        };
        match timeout_at(sent_at + heartbeat.timeout, echo).await {
            Ok(Ok(())) => {}
            Ok(Err(kind)) => return Err(kind),
            Err(_) => return Err(ErrorKind::HeartbeatTimeout),
        }
        let now = Instant::now();
        {
            let mut data = shard.data.borrow_mut();
            // From the scheduled send, so a late send counts against us.
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
}
