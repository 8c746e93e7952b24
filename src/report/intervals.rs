//! Reading `latency.hlog` back: per metric, one histogram per interval, for percentiles over
//! time and the whole run's distribution. Long runs are summarised by merging neighbouring
//! intervals (lossless: a merged bucket's percentiles are exact for its span), never by
//! averaging percentiles.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

use crate::metrics::{add_sparse, new_histogram};

/// One metric's intervals: (start in seconds since the run began, histogram).
pub type Track = Vec<(f64, Histogram<u64>)>;

#[derive(Default)]
pub struct Intervals {
    /// By tag (`connect`, `heartbeat_rtt`, ...).
    pub tracks: BTreeMap<String, Track>,
}

impl Intervals {
    /// Parses an interval log; a line that cannot be read is an error naming it.
    pub fn parse(text: &[u8]) -> Result<Intervals, String> {
        let mut out = Intervals::default();
        let mut deserializer = Deserializer::new();
        for (n, entry) in IntervalLogIterator::new(text).enumerate() {
            let entry = entry.map_err(|e| format!("entry {}: {e:?}", n + 1))?;
            let LogEntry::Interval(interval) = entry else {
                continue;
            };
            let tag = interval.tag().map_or("untagged", |t| t.as_str());
            let bytes = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                interval.encoded_histogram(),
            )
            .map_err(|e| format!("interval {} ({tag}): not base64: {e}", n + 1))?;
            let h: Histogram<u64> = deserializer
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| format!("interval {} ({tag}): not a histogram: {e:?}", n + 1))?;
            out.tracks
                .entry(tag.to_string())
                .or_default()
                .push((interval.start_timestamp().as_secs_f64(), h));
        }
        Ok(out)
    }

    pub fn track(&self, tag: &str) -> &[(f64, Histogram<u64>)] {
        self.tracks.get(tag).map_or(&[], |t| t.as_slice())
    }

    /// Every interval of `tag` merged: the whole run's histogram.
    pub fn total(&self, tag: &str) -> Histogram<u64> {
        let mut all = new_histogram();
        for (_, h) in self.track(tag) {
            add_sparse(&mut all, h);
        }
        all
    }

    /// Percentile `q` of `tag` over time, with at most `max_points` points: neighbouring
    /// intervals are merged first when there are more. Intervals with no sample are NaN (a gap
    /// in the line); a metric with no sample at all has no points.
    pub fn percentile_series(&self, tag: &str, q: f64, max_points: usize) -> Vec<(f64, f64)> {
        let points = merged(self.track(tag), max_points);
        if points.iter().all(|(_, h)| h.is_empty()) {
            return Vec::new();
        }
        points
            .into_iter()
            .map(|(at, h)| {
                let v = if h.is_empty() {
                    f64::NAN
                } else {
                    h.value_at_quantile(q) as f64
                };
                (at, v)
            })
            .collect()
    }
}

/// Merges runs of `ceil(n / max_points)` neighbouring intervals.
fn merged(track: &[(f64, Histogram<u64>)], max_points: usize) -> Vec<(f64, Histogram<u64>)> {
    let per = track.len().div_ceil(max_points.max(1)).max(1);
    track
        .chunks(per)
        .map(|chunk| {
            let mut h = new_histogram();
            for (_, part) in chunk {
                add_sparse(&mut h, part);
            }
            (chunk[0].0, h)
        })
        .collect()
}

/// The whole-run distribution as (nines, value) points, HdrHistogram's percentile plot: from
/// the median's left edge to the highest percentile the sample count can resolve.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // With n samples, percentiles beyond 1 - 1/n say nothing new: stop at the max.
    let top = (h.len() as f64).log10().clamp(1.0, 6.0);
    let steps = 120;
    let mut points: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let nines = top * i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, h.value_at_quantile(q) as f64)
        })
        .collect();
    points.push((top, h.max() as f64));
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Latency, LatencySet};
    use crate::report::hlog::HlogWriter;
    use std::time::{Duration, SystemTime};

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.hlog");
        let mut log = HlogWriter::create(&path, "t", SystemTime::now()).unwrap();
        for second in 0..5u64 {
            let mut set = LatencySet::default();
            for v in 1..=100 {
                set.record(Latency::Connect, v * (second + 1));
            }
            log.write_interval(Duration::from_secs(second), Duration::from_secs(1), &set)
                .unwrap();
        }
        log.finish().unwrap();
        let intervals = Intervals::parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(intervals.track("connect").len(), 5);
        assert_eq!(intervals.total("connect").len(), 500);
        let p100 = intervals.percentile_series("connect", 1.0, 100);
        assert_eq!(p100.len(), 5);
        assert!(p100.iter().all(|p| p.1.is_finite()));
        assert_eq!(p100[4], (4.0, 500.0));
        // Two points: intervals 0-2 and 3-4 merged, their maxima exact.
        let merged = intervals.percentile_series("connect", 1.0, 2);
        assert_eq!(merged, vec![(0.0, 300.0), (3.0, 500.0)]);
        // No samples: no points.
        assert!(
            intervals
                .percentile_series("handshake", 0.5, 100)
                .is_empty()
        );
    }

    #[test]
    fn the_distribution_ends_at_the_maximum() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let points = distribution(&h);
        assert_eq!(points.last().map(|p| p.1), Some(h.max() as f64));
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let text = b"Tag=connect,0.000,1.000,1.0,HISTFAAAnotbase64!!\n";
        assert!(Intervals::parse(text).is_err());
    }
}
