//! Reading `latency.hlog` back, for percentiles over time and the whole run's distribution.
//!
//! Streamed: a long run's log holds thousands of intervals per metric, and a histogram is
//! about 190 KB once decoded, so nothing is kept per interval. Neighbouring intervals are
//! merged into at most `max_points` buckets as they are read (lossless: a merged bucket's
//! percentiles are exact for its span, never averaged), and each finished bucket keeps only the
//! four percentiles the charts draw; each metric also keeps one histogram of the whole run.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

use crate::metrics::{add_sparse, new_histogram};

/// The percentiles kept per bucket, in this order.
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// One metric over the run.
pub struct Track {
    /// (bucket start in seconds since the run began, percentiles or `None` without samples).
    pub buckets: Vec<(f64, Option<[f64; 4]>)>,
    /// Every interval merged: the whole run's histogram.
    pub total: Histogram<u64>,
}

#[derive(Default)]
pub struct Intervals {
    /// By tag (`connect`, `heartbeat_rtt`, ...), only the tags asked for.
    pub tracks: BTreeMap<String, Track>,
    /// Why the log was not read to its end (a cut-off or damaged file): what came before is
    /// kept and shown.
    pub warning: Option<String>,
}

/// A bucket being filled.
struct Open {
    start: f64,
    merged: usize,
    histogram: Histogram<u64>,
}

impl Open {
    fn close(self) -> (f64, Option<[f64; 4]>) {
        let h = &self.histogram;
        let values = (!h.is_empty()).then(|| QUANTILES.map(|q| h.value_at_quantile(q) as f64));
        (self.start, values)
    }
}

impl Intervals {
    /// Reads the intervals of `tags`, merged into at most `max_points` buckets per tag. An
    /// entry that cannot be read ends the reading with a warning; the intervals before it
    /// are kept.
    pub fn parse(text: &[u8], tags: &[&str], max_points: usize) -> Intervals {
        let mut out = Intervals::default();
        // First pass, without decoding: how many intervals each tag has.
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for entry in IntervalLogIterator::new(text) {
            match entry {
                Ok(LogEntry::Interval(i)) => {
                    let tag = i.tag().map_or("", |t| t.as_str());
                    if let Some(t) = tags.iter().find(|t| **t == tag) {
                        *counts.entry(t).or_default() += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let mut open: BTreeMap<&str, Open> = BTreeMap::new();
        let mut deserializer = Deserializer::new();
        for (n, entry) in IntervalLogIterator::new(text).enumerate() {
            let interval = match entry {
                Ok(LogEntry::Interval(interval)) => interval,
                Ok(_) => continue,
                Err(e) => {
                    out.warning = Some(format!("entry {} cannot be read ({e:?})", n + 1));
                    break;
                }
            };
            let tag = interval.tag().map_or("", |t| t.as_str());
            let Some(tag) = tags.iter().copied().find(|t| *t == tag) else {
                continue;
            };
            let decoded = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                interval.encoded_histogram(),
            )
            .map_err(|e| format!("not base64: {e}"))
            .and_then(|bytes| {
                deserializer
                    .deserialize::<u64, _>(&mut bytes.as_slice())
                    .map_err(|e| format!("not a histogram: {e:?}"))
            });
            let h = match decoded {
                Ok(h) => h,
                Err(e) => {
                    out.warning = Some(format!("entry {} ({tag}): {e}", n + 1));
                    break;
                }
            };
            let per = counts
                .get(tag)
                .copied()
                .unwrap_or(1)
                .div_ceil(max_points.max(1))
                .max(1);
            let track = out.tracks.entry(tag.to_string()).or_insert_with(|| Track {
                buckets: Vec::new(),
                total: new_histogram(),
            });
            add_sparse(&mut track.total, &h);
            let start = interval.start_timestamp().as_secs_f64();
            let bucket = open.entry(tag).or_insert_with(|| Open {
                start,
                merged: 0,
                histogram: new_histogram(),
            });
            add_sparse(&mut bucket.histogram, &h);
            bucket.merged += 1;
            if bucket.merged == per
                && let Some(full) = open.remove(tag)
            {
                track.buckets.push(full.close());
            }
        }
        for (tag, bucket) in open {
            if let Some(track) = out.tracks.get_mut(tag) {
                track.buckets.push(bucket.close());
            }
        }
        out
    }

    /// Percentile `QUANTILES[which]` of `tag` over time; a bucket without samples is NaN (a
    /// gap in the line); a metric with no sample at all has no points.
    pub fn percentile_series(&self, tag: &str, which: usize) -> Vec<(f64, f64)> {
        let Some(track) = self.tracks.get(tag) else {
            return Vec::new();
        };
        if track.buckets.iter().all(|(_, v)| v.is_none()) {
            return Vec::new();
        }
        track
            .buckets
            .iter()
            .map(|(at, v)| (*at, v.map_or(f64::NAN, |v| v[which])))
            .collect()
    }

    /// The whole run's histogram of `tag` (empty when the log has none).
    pub fn total(&self, tag: &str) -> Histogram<u64> {
        self.tracks
            .get(tag)
            .map_or_else(new_histogram, |t| t.total.clone())
    }
}

/// The whole-run distribution as (nines, value) points, HdrHistogram's percentile plot: from
/// the minimum (0 nines) to the highest percentile the sample count can resolve, then the max.
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

    fn log(seconds: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.hlog");
        let mut log = HlogWriter::create(&path, "t", SystemTime::now()).unwrap();
        for second in 0..seconds {
            let mut set = LatencySet::default();
            for v in 1..=100 {
                set.record(Latency::Connect, v * (second + 1));
            }
            log.write_interval(Duration::from_secs(second), Duration::from_secs(1), &set)
                .unwrap();
        }
        log.finish().unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let bytes = log(5);
        let intervals = Intervals::parse(&bytes, &["connect", "handshake"], 100);
        assert!(intervals.warning.is_none());
        assert_eq!(intervals.total("connect").len(), 500);
        let p999 = intervals.percentile_series("connect", 3);
        assert_eq!(p999.len(), 5);
        assert_eq!(p999[4], (4.0, 500.0));
        // Two points: intervals 0-2 and 3-4 merged, their high percentiles exact.
        let merged = Intervals::parse(&bytes, &["connect"], 2);
        assert_eq!(
            merged.percentile_series("connect", 3),
            vec![(0.0, 300.0), (3.0, 500.0)]
        );
        // No samples: no points; a tag not asked for is not read.
        assert!(intervals.percentile_series("handshake", 0).is_empty());
        assert!(!intervals.tracks.contains_key("heartbeat_rtt"));
    }

    #[test]
    fn a_cut_off_log_keeps_what_came_before() {
        let bytes = log(5);
        let cut = &bytes[..bytes.len() * 3 / 4];
        let intervals = Intervals::parse(cut, &["connect"], 100);
        assert!(intervals.warning.is_some());
        let points = intervals.percentile_series("connect", 0).len();
        assert!((1..5).contains(&points), "{points}");
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
    fn garbage_is_a_warning_not_a_panic() {
        let text = b"Tag=connect,0.000,1.000,1.0,HISTFAAAnotbase64!!\n";
        let intervals = Intervals::parse(text, &["connect"], 10);
        assert!(intervals.warning.is_some());
        assert!(intervals.percentile_series("connect", 0).is_empty());
    }
}
