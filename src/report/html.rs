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
use crate::report::chart::{Band, Chart, PALETTE, Series, Unit, XAxis, esc};
use crate::report::intervals::{self, Intervals};

mod run;
mod sections;

use run::text;
pub use run::{Run, num};
use sections::{
    agents, error_details, figures, header, latency_table, nlb, phases, shares, thresholds,
};

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
    use super::run::downsample;
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
