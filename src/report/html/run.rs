//! A finished run read back from its `--out` directory, as plain JSON (see `html`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{FAMILIES, MAX_POINTS};
use crate::report::chart::Band;
use crate::report::intervals::Intervals;

/// One run's results as read from disk.
pub struct Run {
    /// The directory its files are in.
    pub dir: PathBuf,
    /// Where it was read from (for messages and captions).
    pub label: String,
    pub summary: Value,
    pub intervals: Option<Intervals>,
    pub profile: Option<Value>,
}

impl Run {
    /// Reads an `--out` directory, or a `summary.json` (with `latency.hlog` and `profile.json`
    /// beside it when they are there); the interval log only `with_intervals`.
    pub fn load(path: &Path, with_intervals: bool) -> Result<Run, String> {
        let (dir, summary_path) = if path.is_dir() {
            (path.to_path_buf(), path.join("summary.json"))
        } else {
            let dir = path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (dir, path.to_path_buf())
        };
        let text = std::fs::read_to_string(&summary_path).map_err(|e| {
            format!(
                "{}: cannot read: {e}; give an --out directory of a run or its summary.json",
                summary_path.display()
            )
        })?;
        let summary: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", summary_path.display()))?;
        let schema = summary.get("schema").and_then(Value::as_str).unwrap_or("");
        if !schema.starts_with("stampede.summary/") {
            return Err(format!(
                "{}: not a stampede summary (its \"schema\" is {schema:?}, expected \"stampede.summary/v1\")",
                summary_path.display()
            ));
        }
        let hlog = dir.join("latency.hlog");
        let intervals = match std::fs::read(&hlog) {
            Ok(bytes) if with_intervals => {
                let tags: Vec<&str> = FAMILIES.iter().map(|(tag, _)| *tag).collect();
                let intervals = Intervals::parse(&bytes, &tags, MAX_POINTS);
                if let Some(w) = &intervals.warning {
                    eprintln!(
                        "stampede: {}: {w}; the intervals before it are shown",
                        hlog.display()
                    );
                }
                Some(intervals)
            }
            _ => None,
        };
        let profile = std::fs::read_to_string(dir.join("profile.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        Ok(Run {
            dir,
            label: path.display().to_string(),
            summary,
            intervals,
            profile,
        })
    }

    pub fn profile_name(&self) -> &str {
        self.summary
            .get("profile")
            .and_then(Value::as_str)
            .unwrap_or("?")
    }

    fn timeline(&self) -> &[Value] {
        self.summary
            .get("timeline")
            .and_then(Value::as_array)
            .map_or(&[], |v| v.as_slice())
    }

    fn list(&self, key: &str) -> &[Value] {
        self.summary
            .get(key)
            .and_then(Value::as_array)
            .map_or(&[], |v| v.as_slice())
    }

    /// A timeline column over time, at most `MAX_POINTS` points. A gauge (open, wanted) is
    /// read at the end of its second and, when seconds are bucketed, shows the bucket's lowest
    /// second (a drop stays visible); a rate shows the bucket's highest second (a spike does).
    pub fn timeline_series(&self, column: &str, gauge: bool) -> Vec<(f64, f64)> {
        let shift = if gauge { 1.0 } else { 0.0 };
        let points: Vec<(f64, f64)> = self
            .timeline()
            .iter()
            .filter_map(|p| Some((num(p, "second")? + shift, num(p, column)?)))
            .collect();
        downsample(&points, gauge)
    }

    /// Errors of one kind per second.
    pub(super) fn error_series(&self, kind: &str) -> Vec<(f64, f64)> {
        let points: Vec<(f64, f64)> = self
            .timeline()
            .iter()
            .filter_map(|p| {
                let n = p
                    .get("error_kinds")
                    .and_then(|k| k.get(kind))
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                Some((num(p, "second")?, n))
            })
            .collect();
        downsample(&points, false)
    }

    /// The phases as shaded bands.
    pub fn bands(&self) -> Vec<Band> {
        self.list("phases")
            .iter()
            .filter_map(|p| {
                Some(Band {
                    start: num(p, "start_s")?,
                    end: num(p, "end_s")?,
                    label: format!(
                        "{} {}",
                        num(p, "index").unwrap_or(0.0),
                        p.get("name").and_then(Value::as_str).unwrap_or("?")
                    ),
                })
            })
            .collect()
    }
}

/// Buckets of `ceil(n / MAX_POINTS)` seconds: the lowest second of each (gauges) or the
/// highest (rates), so that neither a drop nor a spike is averaged away.
pub(super) fn downsample(points: &[(f64, f64)], gauge: bool) -> Vec<(f64, f64)> {
    let per = points.len().div_ceil(MAX_POINTS).max(1);
    if per == 1 {
        return points.to_vec();
    }
    points
        .chunks(per)
        .map(|c| {
            let ys = c.iter().map(|p| p.1);
            let y = if gauge {
                ys.fold(f64::INFINITY, f64::min)
            } else {
                ys.fold(f64::NEG_INFINITY, f64::max)
            };
            (c[0].0, y)
        })
        .collect()
}

/// A number at a `/`-free dotted path (`connections.established`), if it is one.
pub fn num(v: &Value, path: &str) -> Option<f64> {
    let mut at = v;
    for key in path.split('.') {
        at = match at {
            Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => at.get(key)?,
        };
    }
    at.as_f64()
}

pub(super) fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}
