//! `latency.hlog`: a standard HdrHistogram interval log, one tagged histogram per metric per
//! interval, values in microseconds. Readable by HdrHistogram's own log tools
//! (HistogramLogProcessor, hdrh's HistogramLogReader) and by `hdrhistogram`'s
//! `IntervalLogIterator`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

use crate::metrics::{Latency, LatencySet};

pub struct HlogWriter {
    out: BufWriter<File>,
    serializer: V2DeflateSerializer,
}

impl HlogWriter {
    pub fn create(path: &Path, profile: &str, started: SystemTime) -> io::Result<HlogWriter> {
        let mut out = BufWriter::new(File::create(path)?);
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "stampede {} interval log for profile {profile}; values in microseconds",
                env!("CARGO_PKG_VERSION")
            ))
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(started)
            .with_base_time(started)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(io::Error::other)?;
        writeln!(
            out,
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        )?;
        Ok(HlogWriter { out, serializer })
    }

    /// Writes one interval: a line per latency metric, tagged with its name.
    pub fn write_interval(
        &mut self,
        start: Duration,
        length: Duration,
        set: &LatencySet,
    ) -> io::Result<()> {
        let mut writer = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.out, &mut self.serializer)
            .map_err(io::Error::other)?;
        for metric in Latency::ALL {
            writer
                .write_histogram(set.get(metric), start, length, Tag::new(metric.tag()))
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn writes_a_log_the_reader_understands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.hlog");
        let mut log = HlogWriter::create(&path, "t", SystemTime::now()).unwrap();
        let mut set = LatencySet::default();
        set.record(Latency::Connect, 1234);
        log.write_interval(Duration::ZERO, Duration::from_secs(1), &set)
            .unwrap();
        log.write_interval(Duration::from_secs(1), Duration::from_secs(1), &set)
            .unwrap();
        log.finish().unwrap();
        let text = std::fs::read(&path).unwrap();
        let mut histograms = 0;
        let mut connect_total = 0;
        for entry in IntervalLogIterator::new(&text) {
            if let LogEntry::Interval(h) = entry.unwrap() {
                histograms += 1;
                if h.tag().map(|t| t.as_str()) == Some("connect") {
                    let bytes = STANDARD.decode(h.encoded_histogram()).unwrap();
                    let decoded: hdrhistogram::Histogram<u64> =
                        Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
                    connect_total += decoded.len();
                }
            }
        }
        assert_eq!(histograms, 2 * Latency::ALL.len());
        assert_eq!(connect_total, 2);
    }
}
