//! `stampede compare BASE NEW`: every figure of two runs side by side, regression gates
//! (`--fail-if 'connect_p99 > +10%'`), JUnit and an HTML page with both runs on the same axes.
//!
//! Figures are named as in profile thresholds (`connect_p99`, `established_ratio`,
//! `phases.2.recovery_100_s`, `errors.refused`), plus the ones only a comparison needs
//! (`recovery_p99`, `phases.N.peak_connects_per_s`, `nlb.PortAllocationErrorCount`).

use std::fmt::Write;

use serde_json::Value;

use crate::report::chart::{self, Chart, Series, Unit, esc};
use crate::report::html::{self, Run, num};

mod figures;
mod gate;

pub use figures::{Figure, Kind, Worse, figures};
use gate::{Change, relative};
pub use gate::{Gate, GateResult};

/// The whole comparison.
pub struct Comparison {
    pub base: Run,
    pub new: Run,
    /// (name, base, new, kind, worse), every figure either run has.
    pub rows: Vec<Row>,
    pub gates: Vec<GateResult>,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub base: Option<f64>,
    pub new: Option<f64>,
    pub kind: Kind,
    pub worse: Worse,
}

/// A row as both tables show it.
struct Cells {
    base: String,
    new: String,
    change: String,
    relative: String,
    /// `worse`, `better` or empty: how the change reads for this figure.
    class: &'static str,
}

impl Row {
    /// Error kinds that occurred in neither run say nothing, and are left out.
    fn says_nothing(&self) -> bool {
        self.name.starts_with("errors.")
            && self.base.unwrap_or(0.0) == 0.0
            && self.new.unwrap_or(0.0) == 0.0
    }

    fn cells(&self) -> Cells {
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format_value(v, self.kind));
        let (change, relative, class) = match (self.base, self.new) {
            (Some(b), Some(n)) => {
                let class = match self.worse {
                    Worse::Higher if n > b => "worse",
                    Worse::Lower if n < b => "worse",
                    Worse::Higher if n < b => "better",
                    Worse::Lower if n > b => "better",
                    _ => "",
                };
                (signed(n - b, self.kind), percent(relative(b, n)), class)
            }
            _ => ("-".into(), "-".into(), ""),
        };
        Cells {
            base: cell(self.base),
            new: cell(self.new),
            change,
            relative,
            class,
        }
    }
}

impl Comparison {
    /// Compares two loaded runs; refuses runs of different profiles unless `allow_different`.
    pub fn new(
        base: Run,
        new: Run,
        gates: Vec<Gate>,
        allow_different: bool,
    ) -> Result<Comparison, String> {
        if base.profile_name() != new.profile_name() && !allow_different {
            return Err(format!(
                "BASE ran profile {:?} and NEW ran profile {:?}: their figures do not measure the same thing; compare runs of one profile, or pass --allow-different-profiles to compare them anyway",
                base.profile_name(),
                new.profile_name()
            ));
        }
        if let (Some(a), Some(b)) = (&base.profile, &new.profile)
            && !allow_different
        {
            let differ = profile_differences(a, b);
            if !differ.is_empty() {
                return Err(format!(
                    "BASE and NEW ran profile {:?} with different settings ({}): their figures do not measure the same thing; compare runs of one plan, or pass --allow-different-profiles to compare them anyway",
                    new.profile_name(),
                    differ.join(", ")
                ));
            }
        }
        let (fb, fnew) = (figures(&base.summary), figures(&new.summary));
        let mut rows: Vec<Row> = Vec::new();
        for f in fb.iter().chain(&fnew) {
            if rows.iter().any(|r| r.name == f.name) {
                continue;
            }
            let find = |list: &[Figure]| list.iter().find(|g| g.name == f.name).map(|g| g.value);
            rows.push(Row {
                name: f.name.clone(),
                base: find(&fb),
                new: find(&fnew),
                kind: f.kind,
                worse: f.worse,
            });
        }
        let gates = gates
            .into_iter()
            .map(|gate| {
                let row = rows.iter().find(|r| r.name == gate.metric);
                match row.map(|r| (r.base, r.new, r.kind)) {
                    Some((Some(b), Some(n), kind)) => {
                        let (regressed, change) = gate.judge(b, n);
                        let change = match gate.change {
                            Change::Percent(_) => format!("{change:+.1} %"),
                            Change::Absolute(_) => signed(change, kind),
                        };
                        GateResult {
                            observed: format!(
                                "{change} ({} to {})",
                                format_value(b, kind),
                                format_value(n, kind)
                            ),
                            text: gate.text,
                            regressed,
                        }
                    }
                    other => {
                        let missing = match other {
                            Some((Some(_), None, _)) => "not measured in NEW",
                            Some((None, Some(_), _)) => "not measured in BASE",
                            _ => "measured in neither run",
                        };
                        GateResult {
                            observed: format!("{missing}: cannot show it did not regress"),
                            text: gate.text,
                            regressed: true,
                        }
                    }
                }
            })
            .collect::<Vec<_>>();
        let mut gates = gates;
        // A run that failed or aborted on its own terms is no better for its figures.
        let own = outcome(&new);
        if own != "pass" {
            let why = ["abort_reason", "fail_reason"]
                .iter()
                .find_map(|k| new.summary.get(*k).and_then(Value::as_str))
                .map_or(String::new(), |r| format!(": {r}"));
            gates.push(GateResult {
                text: "NEW passed its own thresholds".into(),
                regressed: true,
                observed: format!("NEW's outcome is {own}{why}"),
            });
        }
        Ok(Comparison {
            base,
            new,
            rows,
            gates,
        })
    }

    pub fn regressions(&self) -> usize {
        self.gates.iter().filter(|g| g.regressed).count()
    }

    /// The terminal table.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "stampede compare\n  BASE {} (profile {}, {})\n  NEW  {} (profile {}, {})",
            self.base.label,
            self.base.profile_name(),
            outcome(&self.base),
            self.new.label,
            self.new.profile_name(),
            outcome(&self.new)
        );
        if outcome(&self.base) != "pass" {
            let _ = writeln!(
                out,
                "  note: BASE's own outcome is {}: a baseline that did not pass is a weak reference",
                outcome(&self.base)
            );
        }
        let _ = writeln!(
            out,
            "{:<34} {:>14} {:>14} {:>14} {:>10}",
            "figure", "base", "new", "change", "relative"
        );
        for r in self.rows.iter().filter(|r| !r.says_nothing()) {
            let c = r.cells();
            let _ = writeln!(
                out,
                "{:<34} {:>14} {:>14} {:>14} {:>10}",
                r.name, c.base, c.new, c.change, c.relative
            );
        }
        if !self.gates.is_empty() {
            let _ = writeln!(out, "gates");
            for g in &self.gates {
                let _ = writeln!(
                    out,
                    "  {}  {:<36} {}",
                    if g.regressed { "FAIL" } else { "pass" },
                    g.text,
                    g.observed
                );
            }
        }
        let _ = writeln!(
            out,
            "result: {}",
            match self.regressions() {
                0 if self.gates.is_empty() =>
                    "no gates given (--fail-if), nothing judged".to_string(),
                0 => format!("no regression ({} gate(s) passed)", self.gates.len()),
                n => format!("{n} regression(s) of {} gate(s)", self.gates.len()),
            }
        );
        out
    }

    /// The gates as JUnit test cases (a comparison without gates: one passing case).
    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            r#"<testsuites><testsuite name="stampede compare {}" tests="{}" failures="{}">"#,
            esc(self.new.profile_name()),
            self.gates.len().max(1),
            self.regressions()
        );
        if self.gates.is_empty() {
            out.push_str(r#"<testcase classname="stampede.compare" name="compare (no gates)"/>"#);
            out.push('\n');
        }
        for g in &self.gates {
            let _ = write!(
                out,
                r#"<testcase classname="stampede.compare" name="{}">"#,
                esc(&g.text)
            );
            if g.regressed {
                let _ = write!(
                    out,
                    r#"<failure message="{}">{}</failure>"#,
                    esc(&g.observed),
                    esc(&format!("{}: {}", g.text, g.observed))
                );
            } else {
                let _ = write!(out, "<system-out>{}</system-out>", esc(&g.observed));
            }
            out.push_str("</testcase>\n");
        }
        out.push_str("</testsuite></testsuites>\n");
        out
    }

    /// Both runs on the same axes: BASE blue, NEW orange.
    pub fn html(&self) -> String {
        let mut body = String::new();
        let _ = write!(
            body,
            "<h1>stampede compare</h1><table><tr><th></th><th>run</th><th>profile</th><th>outcome</th><th>duration</th></tr>{}{}</table>",
            run_row(
                &format!(r#"<b style="color:{BASE_COLOR}">BASE</b>"#),
                &self.base
            ),
            run_row(
                &format!(r#"<b style="color:{NEW_COLOR}">NEW</b>"#),
                &self.new
            )
        );
        body.push_str("<h2>Gates</h2>");
        if self.gates.is_empty() {
            body.push_str("<p>No --fail-if gates: nothing judged.</p>");
        } else {
            body.push_str("<table><tr><th>gate</th><th>result</th><th>observed</th></tr>");
            for g in &self.gates {
                let _ = write!(
                    body,
                    r#"<tr><td>{}</td><td class="{}">{}</td><td>{}</td></tr>"#,
                    esc(&g.text),
                    if g.regressed { "fail" } else { "pass" },
                    if g.regressed { "REGRESSED" } else { "pass" },
                    esc(&g.observed)
                );
            }
            body.push_str("</table>");
        }
        // One colour per run; the line style tells the series apart.
        let runs = [
            (&self.base, " (base)", BASE_COLOR),
            (&self.new, " (new)", NEW_COLOR),
        ];
        body.push_str("<h2>Over time (seconds since each run started)</h2>");
        let mut open = Chart::new("connections", "Open vs wanted connections", Unit::Count);
        open.y_label = "connections".into();
        open.bands = self.base.bands();
        let mut rates = Chart::new(
            "rates",
            "Connects per second (solid) and errors per second (dashed)",
            Unit::Count,
        );
        rates.y_label = "per second".into();
        for (run, suffix, color) in runs {
            open.lines.push(
                Series::new(
                    format!("wanted{suffix}"),
                    color,
                    run.timeline_series("wanted", true),
                )
                .dashed(),
            );
            open.lines.push(Series::new(
                format!("open{suffix}"),
                color,
                run.timeline_series("open", true),
            ));
            rates.lines.push(
                Series::new(
                    format!("connects{suffix}"),
                    color,
                    run.timeline_series("connects", false),
                )
                .steps(),
            );
            rates.lines.push(
                Series::new(
                    format!("errors{suffix}"),
                    color,
                    run.timeline_series("errors", false),
                )
                .dashed(),
            );
        }
        body.push_str(&open.svg());
        body.push_str(&rates.svg());
        for (tag, name) in [("connect", "connect"), ("heartbeat_rtt", "heartbeat")] {
            let mut c = Chart::new(
                if tag == "connect" {
                    "latency-connect"
                } else {
                    "latency-heartbeat"
                },
                format!("{name} latency per interval: p99 (solid) and p50 (dashed)"),
                Unit::Micros,
            );
            c.log_y = true;
            for (run, suffix, color) in runs {
                let Some(intervals) = &run.intervals else {
                    continue;
                };
                c.lines.push(Series::new(
                    format!("p99{suffix}"),
                    color,
                    intervals.percentile_series(tag, 2),
                ));
                c.lines.push(
                    Series::new(
                        format!("p50{suffix}"),
                        color,
                        intervals.percentile_series(tag, 0),
                    )
                    .dashed(),
                );
            }
            body.push_str(&c.svg());
        }
        body.push_str("<h2>Latency distribution (whole run)</h2>");
        let mut dist = Chart::new(
            "distribution",
            "Latency by percentile: connect (solid) and heartbeat (dashed)",
            Unit::Micros,
        );
        dist.log_y = true;
        dist.x = chart::XAxis::Nines;
        for (run, suffix, color) in runs {
            let Some(intervals) = &run.intervals else {
                continue;
            };
            for (tag, name, dashed) in [
                ("connect", "connect", false),
                ("heartbeat_rtt", "heartbeat", true),
            ] {
                let points = crate::report::intervals::distribution(&intervals.total(tag));
                if points.is_empty() {
                    continue;
                }
                let s = Series::new(format!("{name}{suffix}"), color, points);
                dist.lines.push(if dashed { s.dashed() } else { s });
            }
        }
        body.push_str(&dist.svg());
        body.push_str("<h2>Every figure</h2><table><tr><th>figure</th><th>base</th><th>new</th><th>change</th><th>relative</th></tr>");
        for r in self.rows.iter().filter(|r| !r.says_nothing()) {
            let c = r.cells();
            let _ = write!(
                body,
                r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="{class}">{}</td><td class="{class}">{}</td></tr>"#,
                esc(&r.name),
                esc(&c.base),
                esc(&c.new),
                esc(&c.change),
                esc(&c.relative),
                class = c.class
            );
        }
        body.push_str("</table>");
        html::page(
            &format!(
                "stampede compare: {} vs {}",
                self.base.profile_name(),
                self.new.profile_name()
            ),
            &body,
        )
    }
}

/// What `stampede compare` was asked.
pub struct CompareOptions {
    pub base: std::path::PathBuf,
    pub new: std::path::PathBuf,
    pub fail_if: Vec<String>,
    pub junit: Option<std::path::PathBuf>,
    pub html: Option<std::path::PathBuf>,
    pub allow_different_profiles: bool,
}

/// `stampede compare`; returns the exit code. Everything is checked before anything is
/// written: bad input leaves no half-written file.
pub fn command(o: CompareOptions) -> i32 {
    let prepared = (|| {
        let gates = o
            .fail_if
            .iter()
            .map(|t| Gate::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        // The interval logs are read only for the page; the table and gates need none.
        let pictures = o.html.is_some();
        let base = Run::load(&o.base, pictures).map_err(|e| format!("BASE {e}"))?;
        let new = Run::load(&o.new, pictures).map_err(|e| format!("NEW {e}"))?;
        Comparison::new(base, new, gates, o.allow_different_profiles)
    })();
    let comparison = match prepared {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stampede compare: {e}");
            return 2;
        }
    };
    print!("{}", comparison.text());
    let mut code = if comparison.regressions() > 0 { 1 } else { 0 };
    let mut write = |path: &std::path::Path, content: String| {
        if let Err(e) = std::fs::write(path, content) {
            eprintln!("stampede compare: {}: cannot write: {e}", path.display());
            code = 3;
        }
    };
    // Each page rendered only when asked for (the HTML reads every interval).
    if let Some(path) = &o.junit {
        write(path, comparison.junit());
    }
    if let Some(path) = &o.html {
        write(path, comparison.html());
    }
    code
}

/// Profile settings that differ between two runs (dotted paths, at most 5 named), ignoring
/// the description.
fn profile_differences(a: &Value, b: &Value) -> Vec<String> {
    fn walk(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    if path.is_empty() && k == "description" {
                        continue;
                    }
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(p, x.get(k), y.get(k), out);
                }
            }
            (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    walk(format!("{path}.{i}"), Some(x), Some(y), out);
                }
            }
            (x, y) if x != y => out.push(path),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(String::new(), Some(a), Some(b), &mut out);
    if out.len() > 5 {
        let more = out.len() - 5;
        out.truncate(5);
        out.push(format!("{more} more"));
    }
    out
}

/// Colours of the two runs on every chart (blue and orange: told apart in colour blindness).
const BASE_COLOR: &str = "#1f77b4";
const NEW_COLOR: &str = "#ff7f0e";

/// `role` is trusted markup.
fn run_row(role: &str, run: &Run) -> String {
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        role,
        esc(&run.label),
        esc(run.profile_name()),
        esc(&outcome(run).to_uppercase()),
        Unit::Seconds.format(num(&run.summary, "duration_s").unwrap_or(0.0))
    )
}

fn outcome(run: &Run) -> &str {
    run.summary
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("?")
}

fn format_value(v: f64, kind: Kind) -> String {
    match kind {
        Kind::Micros => chart::micros(v),
        Kind::Seconds => format!("{v:.3}s"),
        Kind::Ratio => format!("{v:.4}"),
        Kind::Count => {
            if v.fract() == 0.0 {
                format!("{v}")
            } else {
                format!("{v:.1}")
            }
        }
    }
}

fn signed(v: f64, kind: Kind) -> String {
    let body = format_value(v.abs(), kind);
    if v > 0.0 {
        format!("+{body}")
    } else if v < 0.0 {
        format!("-{body}")
    } else {
        body
    }
}

fn percent(p: f64) -> String {
    if p.is_infinite() {
        if p > 0.0 { "+inf %" } else { "-inf %" }.to_string()
    } else {
        format!("{p:+.1} %")
    }
}

#[cfg(test)]
mod tests;
