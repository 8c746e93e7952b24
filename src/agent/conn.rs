//! What every connection path shares: heartbeat spreading, latency from the schedule
//! (coordinated omission, less the timer's grid) and the reconnect backoff under the policy in
//! force. Plain TCP lives in `table`, other protocols in `layered`; both count through the
//! shard's accounting (`Shard::connected`, `Shard::up`), so there is one meaning of each figure.

use std::time::Duration;

use tokio::time::Instant;

use super::shard::Shard;
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
