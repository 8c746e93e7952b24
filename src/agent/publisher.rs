//! The MQTT fan-out publisher: one connection per agent, on its first worker, sending its share
//! of the profile's `mqtt.fanout.rate` round-robin over the fan-out topics, each message
//! stamped with its *scheduled* send time. The agent's own subscribers time the delivery, so
//! sender and receivers read one clock, and a publisher held back by the broker shows up as
//! latency rather than as fewer samples (coordinated omission).
//!
//! The publisher is not one of the run's connections: it is not in `attempts` or
//! `established`, but its failures are counted as errors, and it reconnects after a pause.
//! Messages due while it is disconnected are not sent; the schedule resumes on reconnection.

use std::rc::Rc;
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until, timeout_at};

use super::shard::Shard;
use super::timing::TIMER_GRANULARITY;
use crate::metrics::{ErrorDetail, ErrorKind};
use crate::protocol::{Connector, Event, Failure};

/// Pause after a failed or lost publisher connection, doubling up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Messages sent in one go when behind schedule, before the session is read again.
const BATCH: u32 = 256;

/// Runs the publisher until the task is aborted at the end of the run.
pub(crate) async fn run(shard: Rc<Shard>) {
    let Connector::Mqtt(client) = &shard.plan.connector else {
        return;
    };
    let Some(fanout) = client.fanout() else {
        return;
    };
    // An agent with no share of the connections has no share of the rate either.
    let Some(every) = Duration::try_from_secs_f64(1.0 / fanout.rate)
        .ok()
        .filter(|d| !d.is_zero())
    else {
        return;
    };
    let keep_alive = Duration::from_secs(u64::from(client.keep_alive_s()));
    let mut payload = vec![b'p'; fanout.payload_bytes];
    // Stamps are wall-clock nanoseconds; instants map onto them through one anchor.
    let anchor = (Instant::now(), crate::protocol::unix_ns_now());
    let stamp = |at: Instant| {
        anchor.1 + u64::try_from(at.saturating_duration_since(anchor.0).as_nanos()).unwrap_or(0)
    };
    let mut next = Instant::now();
    let mut sent = 0u64;
    let mut pause = FIRST_PAUSE;
    loop {
        let (source, target) = shard.plan.pool.pair_in(0, shard.target_set.get());
        // The connect and then the handshake each get the connect timeout, as connections do.
        let timeout = shard.plan.connect_timeout;
        let deadline = Instant::now() + timeout;
        let session = match super::layered::connect(&shard, source, target, deadline).await {
            Ok(tcp) => match timeout_at(Instant::now() + timeout, client.publisher(tcp)).await {
                Ok(Ok(session)) => Some(session),
                Ok(Err(failure)) => {
                    shard.fail_with(source, target, failure);
                    None
                }
                Err(_) => {
                    shard.fail_with(
                        source,
                        target,
                        Failure {
                            kind: ErrorKind::ConnectTimeout,
                            detail: Some(ErrorDetail::HandshakeTimeout),
                        },
                    );
                    None
                }
            },
            Err(kind) => {
                shard.fail(source, target, kind);
                None
            }
        };
        let Some(mut session) = session else {
            sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
            continue;
        };
        pause = FIRST_PAUSE;
        next = next.max(Instant::now());
        let mut last_write = Instant::now();
        let failure = loop {
            let ping_at = (keep_alive > Duration::ZERO).then(|| last_write + keep_alive / 2);
            tokio::select! {
                event = session.next_event() => match event {
                    Event::Closed(failure) => break failure,
                    // Not subscribed; a broker has nothing to send it but answers.
                    Event::Message(_) => {}
                },
                () = sleep_until(ping_at.unwrap_or(next)), if ping_at.is_some_and(|p| p < next) => {
                    if let Err(failure) = bounded(timeout, session.ping()).await {
                        break failure;
                    }
                    last_write = Instant::now();
                }
                () = sleep_until(next) => {
                    let now = Instant::now();
                    let mut published = 0;
                    let mut failed = None;
                    while next <= now && published < BATCH {
                        // As heartbeats do: the timer's 1 ms grid is not the broker's delay.
                        let lag = now.saturating_duration_since(next).min(TIMER_GRANULARITY);
                        crate::protocol::write_stamp(&mut payload, stamp(next + lag));
                        let topic = client.fanout_topic((sent % u64::from(fanout.topics)) as u32);
                        let sending = session.publish(&topic, &payload);
                        if let Err(failure) = bounded(timeout, sending).await {
                            failed = Some(failure);
                            break;
                        }
                        published += 1;
                        sent += 1;
                        next += every;
                    }
                    last_write = Instant::now();
                    shard
                        .data
                        .borrow_mut()
                        .count(source, target, |c| c.published += u64::from(published));
                    if let Some(failure) = failed {
                        break failure;
                    }
                }
            }
        };
        shard.fail_with(source, target, failure);
        sleep(pause).await;
    }
}

/// A write that the broker must take within `limit`: a broker that stops reading fails the
/// publisher (counted as `other`) instead of holding it silently to the end of the run.
async fn bounded(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), Failure>>,
) -> Result<(), Failure> {
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or(Err(Failure::kind(ErrorKind::Other)))
}

/// Whether this run has a publisher to start.
pub(crate) fn wanted(shard: &Shard) -> bool {
    matches!(&shard.plan.connector, Connector::Mqtt(client) if client.fanout().is_some())
}
