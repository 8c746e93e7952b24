//! `report.html`: one self-contained page for a finished run, readable without JavaScript, with
//! no reference to anything outside the file (no CDN, fonts or scripts).
//!
//! It reads what `--out` wrote (`summary.json`, `latency.hlog`, `profile.json`) as plain JSON
//! rather than as the `Summary` type, so that a report (and a comparison) can be made from a
//! run of an older stampede whose summary lacks a newer field.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::metrics::ErrorKind;
use crate::report::chart::{self, Band, Chart, PALETTE, Series, Unit, XAxis, esc};
use crate::report::intervals::{self, Intervals};

/// Points a time chart draws at most; longer runs are merged (timeline: averaged per second
/// over the bucket; latencies: histograms merged, so percentiles stay exact).
pub const MAX_POINTS: usize = 720;
/// Rows of per-source, per-target and per-agent tables; the rest are summed in one row.
pub const TOP_N: usize = 20;

/// The latency families the report draws, with their hlog tags and names.
pub const FAMILIES: [(&str, &str); 4] = [
    ("connect", "connect"),
    ("heartbeat_rtt", "heartbeat"),
    ("handshake", "handshake"),
    ("delivery", "delivery"),
];

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
    fn error_series(&self, kind: &str) -> Vec<(f64, f64)> {
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
fn downsample(points: &[(f64, f64)], gauge: bool) -> Vec<(f64, f64)> {
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

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The page around the sections: inline style, nothing fetched.
pub fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 980px; padding: 16px 24px 48px; color: #1b1f24; background: #fff; }}
h1 {{ font-size: 1.5em; margin: 0.4em 0 0.2em; }}
h2 {{ font-size: 1.15em; margin: 1.6em 0 0.5em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
table {{ border-collapse: collapse; margin: 6px 0; font-size: 0.9em; }}
th, td {{ padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f5f7fa; }}
.badge {{ display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: 600; }}
.pass {{ background: #1a7f37; }} .fail {{ background: #cf222e; }} .aborted {{ background: #9a6700; }}
td.pass, td.fail {{ color: #fff; text-align: center; }}
.worse {{ color: #cf222e; font-weight: 600; }} .better {{ color: #1a7f37; }}
.muted {{ color: #6e7781; }}
figure.chart {{ margin: 8px 0 18px; }} figure.chart svg {{ width: 100%; height: auto; }}
figcaption {{ display: none; }}
svg text {{ font-size: 11px; fill: #333; }} svg text.title {{ font-size: 13px; font-weight: 600; }}
svg text.band {{ fill: #57606a; }} svg text.empty {{ font-size: 14px; fill: #888; }}
.bar {{ display: inline-block; height: 10px; background: #1f77b4; vertical-align: middle; }}
pre {{ background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 0.85em; }}
</style></head>
<body>
{body}
<p class="muted">Written by stampede {}. Percentiles come from histograms merged across every worker and agent, never averaged.</p>
</body></html>
"#,
        esc(title),
        env!("CARGO_PKG_VERSION")
    )
}

/// The report of one run.
pub fn render(run: &Run) -> String {
    let s = &run.summary;
    let mut body = String::new();
    header(&mut body, run);
    thresholds(&mut body, s);
    figures(&mut body, s);

    body.push_str("<h2>Connections</h2>");
    body.push_str(&connections_chart(run).svg());
    body.push_str(&rates_chart(run).svg());

    body.push_str("<h2>Latency over time</h2>");
    body.push_str(
        "<p class=\"muted\">p50, p90, p99 and p99.9 of each one-second interval (merged when the run is long), log scale.</p>",
    );
    if let Some(w) = run.intervals.as_ref().and_then(|i| i.warning.as_ref()) {
        let _ = write!(
            body,
            "<p><b>latency.hlog was not read to its end:</b> {}; the intervals before it are shown.</p>",
            esc(w)
        );
    }
    match &run.intervals {
        None => body.push_str("<p>No latency.hlog beside summary.json: no latency over time.</p>"),
        Some(intervals) => {
            for (tag, name) in FAMILIES {
                let chart = percentiles_chart(intervals, tag, name, run.bands());
                if chart.points() == 0 {
                    // No samples (plain TCP has no handshake, no publisher no delivery): a line
                    // instead of an empty frame.
                    let _ = write!(
                        body,
                        r#"<p class="muted" data-chart="{}" data-points="0">{name} latency: no samples in this run.</p>"#,
                        chart.name
                    );
                } else {
                    body.push_str(&chart.svg());
                }
            }
        }
    }
    body.push_str("<h2>Latency distribution (whole run)</h2>");
    if let Some(intervals) = &run.intervals {
        body.push_str(&distribution_chart(intervals).svg());
    }
    latency_table(&mut body, s);
    phases(&mut body, s);
    shares(&mut body, s, "targets", "Targets");
    shares(&mut body, s, "sources", "Sources");
    agents(&mut body, s);
    nlb(&mut body, s);
    error_details(&mut body, s);
    body.push_str("<h2>Profile</h2>");
    match &run.profile {
        Some(p) => {
            let pretty = serde_json::to_string_pretty(p).unwrap_or_default();
            let _ = write!(body, "<pre>{}</pre>", esc(&pretty));
        }
        None => body.push_str("<p>No profile.json beside summary.json.</p>"),
    }
    page(&format!("stampede: {}", run.profile_name()), &body)
}

fn outcome_badge(s: &Value) -> String {
    let outcome = text(s, "outcome");
    let class = match outcome {
        "pass" => "pass",
        "aborted" => "aborted",
        _ => "fail",
    };
    format!(
        r#"<span class="badge {class}">{}</span>"#,
        esc(&outcome.to_uppercase())
    )
}

fn started(s: &Value) -> String {
    let Some(ms) = num(s, "started_at_unix_ms") else {
        return "?".into();
    };
    let secs = (ms / 1000.0) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn header(out: &mut String, run: &Run) {
    let s = &run.summary;
    let _ = write!(
        out,
        "<h1>{} {}</h1><p>{} &middot; started {} &middot; {} of {} planned &middot; {} worker thread(s){}</p>",
        esc(run.profile_name()),
        outcome_badge(s),
        esc(text(s, "stampede_version")),
        started(s),
        chart::Unit::Seconds.format(num(s, "duration_s").unwrap_or(0.0)),
        chart::Unit::Seconds.format(num(s, "planned_duration_s").unwrap_or(0.0)),
        num(s, "workers").unwrap_or(0.0),
        match s.get("agents").and_then(Value::as_array).map(Vec::len) {
            Some(n) if n > 0 => format!(" &middot; {n} agents"),
            _ => String::new(),
        }
    );
    for key in ["abort_reason", "fail_reason"] {
        let reason = text(s, key);
        if !reason.is_empty() {
            let _ = write!(
                out,
                "<p><b>{}:</b> {}</p>",
                key.replace('_', " "),
                esc(reason)
            );
        }
    }
    if let Some(p) = &run.profile
        && let Some(d) = p.get("description").and_then(Value::as_str)
    {
        let _ = write!(out, "<p class=\"muted\">{}</p>", esc(d));
    }
}

fn thresholds(out: &mut String, s: &Value) {
    out.push_str("<h2>Thresholds</h2>");
    let list = s.get("thresholds").and_then(Value::as_array);
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        out.push_str("<p>The profile sets no thresholds: the outcome judges nothing.</p>");
        return;
    };
    out.push_str("<table><tr><th>threshold</th><th>result</th><th>observed</th></tr>");
    for t in list {
        let pass = t.get("pass").and_then(Value::as_bool).unwrap_or(false);
        let observed = match num(t, "observed") {
            None => "no sample".to_string(),
            Some(v) => match text(t, "unit") {
                "us" => chart::micros(v),
                "s" => Unit::Seconds.format(v),
                "ratio" => format!("{v:.4}"),
                _ => chart::count(v),
            },
        };
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="{}">{}</td><td>{}</td></tr>"#,
            esc(text(t, "name")),
            if pass { "pass" } else { "fail" },
            if pass { "pass" } else { "FAIL" },
            esc(&observed)
        );
    }
    out.push_str("</table>");
}

fn figures(out: &mut String, s: &Value) {
    out.push_str("<h2>Figures</h2><table>");
    let rows = [
        ("requested", "connections.requested"),
        ("attempts", "connections.attempts"),
        (
            "established (share of slots)",
            "connections.established_ratio",
        ),
        ("peak open", "connections.peak_open"),
        ("open at end / wanted", "connections.open_at_end"),
        ("reconnects", "connections.reconnects"),
        (
            "peak reconnects per second",
            "connections.peak_reconnects_per_s",
        ),
        ("gave up", "connections.given_up"),
        ("heartbeats sent", "heartbeats.sent"),
        ("heartbeats answered", "heartbeats.answered"),
        ("messages published", "messages.published"),
        ("messages received", "messages.received"),
    ];
    for (label, path) in rows {
        let Some(v) = num(s, path) else { continue };
        let value = if path.ends_with("_ratio") {
            format!("{:.2} %", v * 100.0)
        } else if path == "connections.open_at_end" {
            format!(
                "{} / {}",
                v,
                num(s, "connections.wanted_at_end").unwrap_or(0.0)
            )
        } else {
            format!("{v}")
        };
        let _ = write!(out, "<tr><td>{label}</td><td>{value}</td></tr>");
    }
    let errors: f64 = s
        .get("errors")
        .and_then(Value::as_object)
        .map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum());
    let _ = write!(out, "<tr><td>errors</td><td>{errors}</td></tr></table>");
}

/// Open, established and wanted connections over time.
fn connections_chart(run: &Run) -> Chart {
    let mut c = Chart::new("connections", "Open vs wanted connections", Unit::Count);
    c.y_label = "connections".into();
    c.bands = run.bands();
    c.lines
        .push(Series::new("wanted", "#8c8c8c", run.timeline_series("wanted", true)).dashed());
    c.lines.push(Series::new(
        "open",
        PALETTE[0],
        run.timeline_series("open", true),
    ));
    c.lines.push(Series::new(
        "established",
        PALETTE[2],
        run.timeline_series("open_established", true),
    ));
    c
}

fn rates_chart(run: &Run) -> Chart {
    let mut c = Chart::new(
        "rates",
        "Connects, closes and errors per second (errors stacked by kind)",
        Unit::Count,
    );
    c.y_label = "per second".into();
    c.bands = run.bands();
    let mut colors = PALETTE.iter().cycle().skip(1);
    for kind in ErrorKind::ALL {
        let series = run.error_series(kind.name());
        if series.iter().any(|p| p.1 > 0.0) {
            c.stacks.push(Series::new(
                format!("error: {}", kind.name()),
                colors.next().copied().unwrap_or("#d62728"),
                series,
            ));
        }
    }
    // Summaries written before errors were split by kind: the total as one stack.
    if c.stacks.is_empty() {
        let total = run.timeline_series("errors", false);
        if total.iter().any(|p| p.1 > 0.0) {
            c.stacks.push(Series::new("errors", "#d62728", total));
        }
    }
    c.lines.push(
        Series::new(
            "connects",
            PALETTE[0],
            run.timeline_series("connects", false),
        )
        .steps(),
    );
    // Dashed: a storm closes and reconnects as many in the same second, one line on the other.
    c.lines.push(
        Series::new("closes", "#444444", run.timeline_series("closes", false))
            .dashed()
            .steps(),
    );
    c
}

fn percentiles_chart(intervals: &Intervals, tag: &str, name: &str, bands: Vec<Band>) -> Chart {
    let mut c = Chart::new(
        match tag {
            "connect" => "latency-connect",
            "heartbeat_rtt" => "latency-heartbeat",
            "handshake" => "latency-handshake",
            _ => "latency-delivery",
        },
        format!("{name} latency percentiles per interval"),
        Unit::Micros,
    );
    c.log_y = true;
    c.bands = bands;
    for (which, label) in ["p50", "p90", "p99", "p99.9"].into_iter().enumerate() {
        c.lines.push(Series::new(
            label,
            PALETTE[which],
            intervals.percentile_series(tag, which),
        ));
    }
    c
}

/// The whole run's percentile distribution, one line per latency family.
fn distribution_chart(intervals: &Intervals) -> Chart {
    let mut c = Chart::new(
        "distribution",
        "Latency by percentile (whole run)",
        Unit::Micros,
    );
    c.log_y = true;
    c.x = XAxis::Nines;
    for (i, (tag, name)) in FAMILIES.iter().enumerate() {
        let points = intervals::distribution(&intervals.total(tag));
        if !points.is_empty() {
            c.lines.push(Series::new(*name, PALETTE[i], points));
        }
    }
    c
}

fn latency_table(out: &mut String, s: &Value) {
    out.push_str("<table><tr><th>latency</th><th>count</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>");
    let Some(families) = s.get("latency_us").and_then(Value::as_object) else {
        out.push_str("</table>");
        return;
    };
    for (name, stats) in families {
        if num(stats, "count").unwrap_or(0.0) == 0.0 {
            continue;
        }
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td>",
            esc(name),
            num(stats, "count").unwrap_or(0.0)
        );
        for stat in ["min", "p50", "p90", "p99", "p999", "max", "mean"] {
            let v = num(stats, stat).map_or("-".into(), chart::micros);
            let _ = write!(out, "<td>{v}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn phases(out: &mut String, s: &Value) {
    let list = s.get("phases").and_then(Value::as_array);
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return;
    };
    out.push_str("<h2>Phases and recovery</h2><table><tr><th>phase</th><th>from</th><th>to</th><th>wanted</th><th>peak connects/s</th><th>connect p99</th><th>recovered</th><th>99 % back</th><th>100 % back</th><th>reconnects</th><th>gave up</th><th>attempts per reconnect</th></tr>");
    for p in list {
        let seconds = |key| num(p, key).map_or("-".into(), |v| Unit::Seconds.format(v));
        let recovered =
            num(p, "recovered_ratio").map_or("-".into(), |v| format!("{:.1} %", v * 100.0));
        let attempts: Vec<f64> = p
            .get("reconnect_attempts")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let most = attempts.iter().cloned().fold(0.0, f64::max).max(1.0);
        let mut bars = String::new();
        for (n, count) in attempts.iter().enumerate() {
            let _ = write!(
                bars,
                r#"<span title="{} attempt(s): {count}"><span class="bar" style="width:{:.0}px"></span> {}:{count}</span> "#,
                n + 1,
                40.0 * count / most,
                n + 1
            );
        }
        let _ = write!(
            out,
            "<tr><td>{} {}</td><td>{}</td><td>{}</td><td>{}→{}</td><td>{}</td><td>{}</td><td>{recovered}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{bars}</td></tr>",
            num(p, "index").unwrap_or(0.0),
            esc(text(p, "name")),
            seconds("start_s"),
            seconds("end_s"),
            num(p, "from").unwrap_or(0.0),
            num(p, "to").unwrap_or(0.0),
            num(p, "peak_connects_per_s").unwrap_or(0.0),
            num(p, "connect_p99_us").map_or("-".into(), chart::micros),
            seconds("recovery_99_s"),
            seconds("recovery_100_s"),
            num(p, "reconnects").unwrap_or(0.0),
            num(p, "given_up").unwrap_or(0.0),
        );
    }
    out.push_str("</table>");
    out.push_str(&recovery_chart(list));
}

/// Time to 99 % and 100 % back per disruptive phase, as horizontal bars on one scale; a phase
/// that never got there says so.
fn recovery_chart(phases: &[Value]) -> String {
    let rows: Vec<&Value> = phases
        .iter()
        .filter(|p| num(p, "recovered_ratio").is_some())
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let longest = rows
        .iter()
        .flat_map(|p| [num(p, "recovery_99_s"), num(p, "recovery_100_s")])
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-3);
    let (left, width, row) = (150.0, 640.0, 44.0);
    let height = 30.0 + row * rows.len() as f64;
    let mut bars = 0;
    let mut svg = String::new();
    for (n, p) in rows.iter().enumerate() {
        let y = 24.0 + row * n as f64;
        let _ = write!(
            svg,
            r#"<text x="0" y="{:.1}">{} {}</text>"#,
            y + 16.0,
            num(p, "index").unwrap_or(0.0),
            esc(text(p, "name"))
        );
        for (j, (key, label, color)) in [
            ("recovery_99_s", "99 %", PALETTE[0]),
            ("recovery_100_s", "100 %", PALETTE[3]),
        ]
        .into_iter()
        .enumerate()
        {
            let by = y + 2.0 + 18.0 * j as f64;
            match num(p, key).filter(|v| v.is_finite()) {
                Some(v) => {
                    bars += 1;
                    let w = (v / longest * width).max(1.0);
                    let _ = write!(
                        svg,
                        r#"<rect x="{left}" y="{by:.1}" width="{w:.1}" height="14" fill="{color}"><title>{label} back after {v:.3} s</title></rect><text x="{:.1}" y="{:.1}">{label}: {}</text>"#,
                        left + w + 6.0,
                        by + 11.0,
                        Unit::Seconds.format(v)
                    );
                }
                None => {
                    let _ = write!(
                        svg,
                        r##"<text x="{left}" y="{:.1}" fill="#cf222e">{label}: not reached</text>"##,
                        by + 11.0
                    );
                }
            }
        }
    }
    format!(
        r#"<figure class="chart"><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 900 {height:.0}" role="img" data-chart="recovery" data-points="{bars}"><title>Recovery per disruptive phase</title><text x="0" y="14" class="title">Time until 99 % and 100 % of the wanted connections were established again</text>{svg}</svg></figure>"#
    )
}

/// Per-target or per-source shares: the top `TOP_N` by established connections, the rest in
/// one row, and the skew (largest share against an even split).
fn shares(out: &mut String, s: &Value, key: &str, title: &str) {
    let Some(list) = s.get(key).and_then(Value::as_array) else {
        return;
    };
    if list.is_empty() {
        return;
    }
    let mut rows: Vec<(&str, f64, f64, f64)> = list
        .iter()
        .map(|r| {
            let errors = r
                .get("errors")
                .and_then(Value::as_object)
                .map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum());
            (
                text(r, "addr"),
                num(r, "established").unwrap_or(0.0),
                num(r, "attempts").unwrap_or(0.0),
                errors,
            )
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = rows.iter().map(|r| r.1).sum::<f64>().max(1.0);
    let even = 1.0 / rows.len() as f64;
    let top = rows.first().map_or(0.0, |r| r.1 / total);
    let _ = write!(
        out,
        "<h2>{title}</h2><p>{} {key}; the largest holds {:.1} % of established connections ({:.2}x an even share).</p><table><tr><th>{}</th><th>established</th><th>share</th><th>attempts</th><th>errors</th></tr>",
        rows.len(),
        top * 100.0,
        top / even,
        &key[..key.len() - 1]
    );
    for (addr, est, att, err) in rows.iter().take(TOP_N) {
        let share = est / total;
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td>{est}</td><td><span class="bar" style="width:{:.0}px"></span> {:.1} %</td><td>{att}</td><td>{err}</td></tr>"#,
            esc(addr),
            (share * 200.0).max(1.0),
            share * 100.0
        );
    }
    if rows.len() > TOP_N {
        let rest = &rows[TOP_N..];
        let _ = write!(
            out,
            "<tr><td>{} more</td><td>{}</td><td>{:.1} %</td><td>{}</td><td>{}</td></tr>",
            rest.len(),
            rest.iter().map(|r| r.1).sum::<f64>(),
            100.0 * rest.iter().map(|r| r.1).sum::<f64>() / total,
            rest.iter().map(|r| r.2).sum::<f64>(),
            rest.iter().map(|r| r.3).sum::<f64>()
        );
    }
    out.push_str("</table>");
}

fn agents(out: &mut String, s: &Value) {
    let Some(list) = s.get("agents").and_then(Value::as_array) else {
        return;
    };
    if list.is_empty() {
        return;
    }
    // Trouble first: agents that did not finish, then those with the most errors.
    let mut rows: Vec<&Value> = list.iter().collect();
    rows.sort_by(|a, b| {
        let finished = |v: &Value| text(v, "status") == "finished";
        finished(a).cmp(&finished(b)).then(
            num(b, "errors")
                .unwrap_or(0.0)
                .total_cmp(&num(a, "errors").unwrap_or(0.0)),
        )
    });
    let _ = write!(
        out,
        "<h2>Agents</h2><p>{} agent(s); those that did not finish and those with the most errors first.</p><table><tr><th>agent</th><th>host</th><th>status</th><th>share</th><th>established</th><th>errors</th><th>intervals</th><th>start offset</th></tr>",
        rows.len()
    );
    for a in rows.iter().take(TOP_N) {
        let _ = write!(
            out,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(text(a, "name")),
            if a.get("synthetic").and_then(Value::as_bool) == Some(true) {
                " (synthetic)"
            } else {
                ""
            },
            esc(text(a, "host")),
            esc(text(a, "status")),
            num(a, "share").unwrap_or(0.0),
            num(a, "established").unwrap_or(0.0),
            num(a, "errors").unwrap_or(0.0),
            num(a, "intervals_received").unwrap_or(0.0),
            num(a, "start_offset_ms").map_or("-".into(), |v| format!("{v:.1} ms")),
        );
    }
    if rows.len() > TOP_N {
        let _ = write!(
            out,
            "<tr><td colspan=\"8\">{} more agents, all finished and with no more errors than those above</td></tr>",
            rows.len() - TOP_N
        );
    }
    out.push_str("</table>");
}

fn nlb(out: &mut String, s: &Value) {
    let Some(nlb) = s.get("nlb") else { return };
    let _ = write!(
        out,
        "<h2>NLB emulator</h2><p>Admin {}; peak active flows {}.{}</p>",
        esc(text(nlb, "admin")),
        num(nlb, "peak_active_flows").unwrap_or(0.0),
        match nlb.get("error").and_then(Value::as_str) {
            Some(e) => format!(" <b>Could not read the emulator at the end:</b> {}", esc(e)),
            None => String::new(),
        }
    );
    let mut rows: Vec<(String, &Value)> = Vec::new();
    if let Some(total) = nlb.get("total") {
        rows.push(("total".into(), total));
    }
    for (key, label) in [("nodes", "node"), ("targets", "target")] {
        for item in nlb.get(key).and_then(Value::as_array).into_iter().flatten() {
            let name = ["target", "ip", "addr", "name"]
                .iter()
                .find_map(|k| item.get(*k).and_then(Value::as_str))
                .unwrap_or("?");
            let counters = item.get("counters").unwrap_or(item);
            rows.push((format!("{label} {name}"), counters));
        }
    }
    let mut columns: Vec<&str> = Vec::new();
    for (_, v) in &rows {
        for (k, val) in v.as_object().into_iter().flatten() {
            if val.is_number() && !columns.contains(&k.as_str()) {
                columns.push(k);
            }
        }
    }
    out.push_str("<table><tr><th></th>");
    for c in &columns {
        let _ = write!(out, "<th>{}</th>", esc(c));
    }
    out.push_str("</tr>");
    for (name, v) in rows.iter().take(TOP_N + 1) {
        let _ = write!(out, "<tr><td>{}</td>", esc(name));
        for c in &columns {
            let _ = write!(
                out,
                "<td>{}</td>",
                num(v, c).map_or("-".into(), |n| n.to_string())
            );
        }
        out.push_str("</tr>");
    }
    if rows.len() > TOP_N + 1 {
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\">{} more nodes and targets: see summary.json's nlb object</td></tr>",
            columns.len() + 1,
            rows.len() - TOP_N - 1
        );
    }
    out.push_str("</table>");
}

fn error_details(out: &mut String, s: &Value) {
    let Some(details) = s.get("error_details").and_then(Value::as_object) else {
        return;
    };
    if details.is_empty() {
        return;
    }
    out.push_str(
        "<h2>Error details</h2><table><tr><th>kind</th><th>what it said</th><th>count</th></tr>",
    );
    for (kind, reasons) in details {
        for (reason, n) in reasons.as_object().into_iter().flatten() {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(kind),
                esc(reason),
                esc(&n.to_string())
            );
        }
    }
    out.push_str("</table>");
}

/// Writes `report.html` (or `html`) for the run in `dir`.
pub fn write_for_dir(dir: &Path, html: Option<&Path>) -> Result<PathBuf, String> {
    let run = Run::load(dir, true)?;
    let path = html.map_or_else(|| run.dir.join("report.html"), Path::to_path_buf);
    write_page(&run, path)
}

fn write_page(run: &Run, path: PathBuf) -> Result<PathBuf, String> {
    std::fs::write(&path, render(run))
        .map_err(|e| format!("{}: cannot write the report: {e}", path.display()))?;
    Ok(path)
}

/// `stampede report DIR [--html FILE]`; returns the exit code.
pub fn command(dir: &Path, html: Option<&Path>) -> i32 {
    let run = match Run::load(dir, true) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("stampede report: {e}");
            return 2;
        }
    };
    // Beside summary.json, whether DIR or the file itself was named.
    match write_page(
        &run,
        html.map_or_else(|| run.dir.join("report.html"), Path::to_path_buf),
    ) {
        Ok(path) => {
            println!("wrote {}", path.display());
            0
        }
        Err(e) => {
            eprintln!("stampede report: {e}");
            3
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        let s = serde_json::json!({"started_at_unix_ms": 1_796_634_522_168u64});
        assert_eq!(started(&s), "2026-12-07 09:08:42 UTC");
    }

    #[test]
    fn long_timelines_keep_their_drops_and_spikes() {
        // Two hours at 1,000 open, 10 connects a second; at 3601-3606 everything drops and
        // at 3607 4,000 connect at once (the storm the report exists to show).
        let open: Vec<(f64, f64)> = (0..7200)
            .map(|i| {
                (
                    i as f64,
                    if (3601..3607).contains(&i) {
                        0.0
                    } else {
                        1000.0
                    },
                )
            })
            .collect();
        let rate: Vec<(f64, f64)> = (0..7200)
            .map(|i| (i as f64, if i == 3607 { 4000.0 } else { 10.0 }))
            .collect();
        let (gauges, rates) = (downsample(&open, true), downsample(&rate, false));
        assert!(gauges.len() <= MAX_POINTS && rates.len() <= MAX_POINTS);
        assert!(gauges.iter().any(|p| p.1 == 0.0), "the drop survives");
        assert!(rates.iter().any(|p| p.1 == 4000.0), "the spike survives");
        assert_eq!(
            rates.iter().filter(|p| p.1 == 10.0).count(),
            rates.len() - 1
        );
    }

    #[test]
    fn a_two_hour_run_from_a_thousand_sources_stays_small() {
        let timeline: Vec<Value> = (0..7200)
            .map(|i| {
                serde_json::json!({"second": i, "open": 1000, "open_established": 1000,
                    "wanted": 1000, "attempts": 1, "connects": 1, "reconnects": 0,
                    "closes": 1, "errors": 1, "error_kinds": {"reset": 1}})
            })
            .collect();
        let sources: Vec<Value> = (0..1000)
            .map(|i| {
                serde_json::json!({"addr": format!("10.0.{}.{}", i / 250, i % 250),
                "established": 1000 + i, "attempts": 1000 + i, "errors": {"reset": 1}})
            })
            .collect();
        let run = Run {
            dir: PathBuf::from("."),
            label: "big".into(),
            summary: serde_json::json!({"schema": "stampede.summary/v1", "profile": "big",
                "outcome": "pass", "timeline": timeline, "sources": sources,
                "phases": [{"index": 0, "name": "hold", "start_s": 0, "end_s": 7200}]}),
            intervals: None,
            profile: None,
        };
        let html = render(&run);
        assert!(html.len() < 200_000, "{} bytes", html.len());
        assert!(
            html.contains("980 more"),
            "the long tail of sources in one row"
        );
        assert!(html.contains(&format!(
            r#"data-chart="connections" data-points="{}""#,
            3 * MAX_POINTS
        )));
    }

    #[test]
    fn paths_reach_into_arrays() {
        let v = serde_json::json!({"phases": [{"x": 1}, {"x": 2.5}]});
        assert_eq!(num(&v, "phases.1.x"), Some(2.5));
        assert_eq!(num(&v, "phases.2.x"), None);
    }
}
