//! The timing every connection path shares: heartbeat spreading and latency from the schedule
//! (coordinated omission, less the timer's grid). A leaf: it knows nothing of shards or
//! connections, so `table`, `layered`, `publisher` and `shard` all import it and it imports
//! none of them.

use std::time::Duration;

use tokio::time::Instant;

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
