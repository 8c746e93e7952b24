//! `stampede compare BASE NEW`: every figure of two runs side by side, regression gates
//! (`--fail-if 'connect_p99 > +10%'`), JUnit and an HTML page with both runs on the same axes.
//!
//! Figures are named as in profile thresholds (`connect_p99`, `established_ratio`,
//! `phases.2.recovery_100_s`, `errors.refused`), plus the ones only a comparison needs
//! (`recovery_p99`, `phases.N.peak_connects_per_s`, `nlb.PortAllocationErrorCount`).

use std::fmt::Write;

use serde_json::Value;

use crate::metrics::ErrorKind;
use crate::report::chart::{self, Chart, Series, Unit, esc};
use crate::report::html::{self, Run, num};

/// What a figure measures, which decides how a change reads and which units a gate may use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Micros,
    Seconds,
    Ratio,
    Count,
}

/// Which way is worse, for colouring the table (gates decide regressions, not this).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Worse {
    Higher,
    Lower,
    Neither,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub kind: Kind,
    pub worse: Worse,
}

/// Latency families in summary.json and their names in figures and thresholds.
const LATENCY: [(&str, &str); 6] = [
    ("connect", "connect"),
    ("connect_service", "connect_service"),
    ("heartbeat_rtt", "heartbeat"),
    ("handshake", "handshake"),
    ("delivery", "delivery"),
    ("recovery", "recovery"),
];
const STATS: [&str; 7] = ["p50", "p90", "p99", "p999", "max", "mean", "min"];

/// Figures read straight from one place in summary.json: (name, path, kind, which way is worse).
const PLAIN: [(&str, &str, Kind, Worse); 17] = [
    (
        "established_ratio",
        "connections.established_ratio",
        Kind::Ratio,
        Worse::Lower,
    ),
    (
        "connected_ratio",
        "connections.connected_ratio",
        Kind::Ratio,
        Worse::Lower,
    ),
    (
        "open_at_end_ratio",
        "connections.open_at_end_ratio",
        Kind::Ratio,
        Worse::Lower,
    ),
    (
        "established",
        "connections.established",
        Kind::Count,
        Worse::Neither,
    ),
    (
        "connected",
        "connections.connected",
        Kind::Count,
        Worse::Neither,
    ),
    (
        "attempts",
        "connections.attempts",
        Kind::Count,
        Worse::Neither,
    ),
    (
        "peak_open",
        "connections.peak_open",
        Kind::Count,
        Worse::Lower,
    ),
    (
        "open_at_end",
        "connections.open_at_end",
        Kind::Count,
        Worse::Lower,
    ),
    (
        "reconnects",
        "connections.reconnects",
        Kind::Count,
        Worse::Neither,
    ),
    (
        "given_up",
        "connections.given_up",
        Kind::Count,
        Worse::Higher,
    ),
    (
        "peak_reconnects_per_s",
        "connections.peak_reconnects_per_s",
        Kind::Count,
        Worse::Neither,
    ),
    (
        "connects_per_s",
        "connections.connects_per_s",
        Kind::Count,
        Worse::Lower,
    ),
    (
        "heartbeats_sent",
        "heartbeats.sent",
        Kind::Count,
        Worse::Neither,
    ),
    (
        "heartbeats_answered",
        "heartbeats.answered",
        Kind::Count,
        Worse::Neither,
    ),
    (
        "published",
        "messages.published",
        Kind::Count,
        Worse::Neither,
    ),
    ("received", "messages.received", Kind::Count, Worse::Lower),
    (
        "last_established_s",
        "connections.last_established_s",
        Kind::Seconds,
        Worse::Higher,
    ),
];

/// Per-phase figures, `phases.N.<name>`: (name, key in the phase record, kind, worse).
const PHASE: [(&str, &str, Kind, Worse); 7] = [
    (
        "recovered_ratio",
        "recovered_ratio",
        Kind::Ratio,
        Worse::Lower,
    ),
    (
        "recovery_99_s",
        "recovery_99_s",
        Kind::Seconds,
        Worse::Higher,
    ),
    (
        "recovery_100_s",
        "recovery_100_s",
        Kind::Seconds,
        Worse::Higher,
    ),
    (
        "peak_connects_per_s",
        "peak_connects_per_s",
        Kind::Count,
        Worse::Neither,
    ),
    ("connect_p99", "connect_p99_us", Kind::Micros, Worse::Higher),
    ("reconnects", "reconnects", Kind::Count, Worse::Neither),
    ("given_up", "given_up", Kind::Count, Worse::Higher),
];

/// Every figure a summary holds, in a fixed order. Latency statistics without samples and
/// phase figures that do not apply are absent (not zero), so a gate on them cannot pass by
/// accident.
pub fn figures(s: &Value) -> Vec<Figure> {
    let mut out = Vec::new();
    let mut push = |name: String, value: Option<f64>, kind: Kind, worse: Worse| {
        if let Some(value) = value.filter(|v| v.is_finite()) {
            out.push(Figure {
                name,
                value,
                kind,
                worse,
            });
        }
    };
    for (name, path, kind, worse) in PLAIN {
        push(name.into(), num(s, path), kind, worse);
    }
    let errors = s.get("errors");
    let total = errors
        .and_then(Value::as_object)
        .map(|m| m.values().filter_map(Value::as_f64).sum::<f64>());
    push("errors".into(), total, Kind::Count, Worse::Higher);
    for kind in ErrorKind::ALL {
        push(
            format!("errors.{}", kind.name()),
            errors.and_then(|e| num(e, kind.name())),
            Kind::Count,
            Worse::Higher,
        );
    }
    for (family, name) in LATENCY {
        for stat in STATS {
            push(
                format!("{name}_{stat}"),
                num(s, &format!("latency_us.{family}.{stat}")),
                Kind::Micros,
                Worse::Higher,
            );
        }
    }
    for p in s
        .get("phases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(i) = num(p, "index") else { continue };
        for (name, key, kind, worse) in PHASE {
            push(format!("phases.{i}.{name}"), num(p, key), kind, worse);
        }
    }
    // The worst disruptive phase, for gates that should not name a phase by its index
    // (`recovery_100_s > +2s`). A phase that never got back has no time: then the figure
    // is absent, so a gate on it cannot pass.
    let disruptive: Vec<&Value> = s
        .get("phases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| num(p, "recovered_ratio").is_some())
        .collect();
    if !disruptive.is_empty() {
        let ratios = disruptive.iter().filter_map(|p| num(p, "recovered_ratio"));
        push(
            "recovered_ratio".into(),
            ratios.reduce(f64::min),
            Kind::Ratio,
            Worse::Lower,
        );
        for key in ["recovery_99_s", "recovery_100_s"] {
            let times: Option<Vec<f64>> = disruptive.iter().map(|p| num(p, key)).collect();
            push(
                key.into(),
                times.and_then(|t| t.into_iter().reduce(f64::max)),
                Kind::Seconds,
                Worse::Higher,
            );
        }
    }
    if let Some(nlb) = s.get("nlb") {
        push(
            "nlb.peak_active_flows".into(),
            num(nlb, "peak_active_flows"),
            Kind::Count,
            Worse::Neither,
        );
        for (key, v) in nlb
            .get("total")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let worse = if key.contains("Error") || key.contains("Reset") {
                Worse::Higher
            } else {
                Worse::Neither
            };
            push(format!("nlb.{key}"), v.as_f64(), Kind::Count, worse);
        }
    }
    push(
        "duration_s".into(),
        num(s, "duration_s"),
        Kind::Seconds,
        Worse::Neither,
    );
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
}

/// How a gate's limit reads: a percentage of the base, or a plain difference.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Change {
    Percent(f64),
    /// In the figure's own unit (microseconds for latencies, seconds for recovery times).
    Absolute(f64),
}

/// `--fail-if 'METRIC OP CHANGE'`: the run regressed when NEW minus BASE satisfies it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    pub text: String,
    pub metric: String,
    op: Op,
    change: Change,
}

const GATE_HELP: &str = "expected METRIC OP CHANGE, e.g. 'connect_p99 > +10%', 'established_ratio < -0.001', 'recovery_100_s > +2s' (OP one of >, >=, <, <=; CHANGE a signed number, with % for a change relative to BASE, or a unit: us, ms, s for times)";

impl Gate {
    pub fn parse(text: &str) -> Result<Gate, String> {
        let ops = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)];
        let (metric, op, value) = ops
            .iter()
            .find_map(|(token, op)| {
                text.split_once(token)
                    .map(|(l, r)| (l.trim(), *op, r.trim()))
            })
            .ok_or_else(|| format!("--fail-if {text:?}: {GATE_HELP}"))?;
        if metric.is_empty() || value.is_empty() {
            return Err(format!("--fail-if {text:?}: {GATE_HELP}"));
        }
        let bad_number = || format!("--fail-if {text:?}: {value:?} is not a change; {GATE_HELP}");
        let (number, unit) = split_unit(value);
        let n: f64 = number.parse().map_err(|_| bad_number())?;
        if !n.is_finite() {
            return Err(bad_number());
        }
        let kind = metric_kind(metric).ok_or_else(|| {
            format!(
                "--fail-if {text:?}: unknown figure {metric:?}; figures are named as in thresholds: established_ratio, open_at_end_ratio, errors, errors.<kind>, given_up, <latency>_<stat> (connect, connect_service, heartbeat, handshake, delivery, recovery; p50, p90, p99, p999, max, mean, min), phases.<N>.<recovered_ratio|recovery_99_s|recovery_100_s|peak_connects_per_s|connect_p99>, recovered_ratio, recovery_99_s and recovery_100_s (the worst disruptive phase), nlb.<CloudWatch name>; `stampede compare BASE NEW` lists every one"
            )
        })?;
        let change = match unit {
            "%" => Change::Percent(n),
            "" if kind == Kind::Micros => {
                return Err(format!(
                    "--fail-if {text:?}: {metric} is a latency; write the change with a unit (+5ms, +500us) or as a percentage (+10%)"
                ));
            }
            "" => Change::Absolute(n),
            "us" | "µs" | "ms" | "s" => {
                let seconds = n * match unit {
                    "s" => 1.0,
                    "ms" => 1e-3,
                    _ => 1e-6,
                };
                match kind {
                    Kind::Micros => Change::Absolute(seconds * 1e6),
                    Kind::Seconds => Change::Absolute(seconds),
                    _ => {
                        return Err(format!(
                            "--fail-if {text:?}: {metric} is not a time; write a plain number or a percentage"
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "--fail-if {text:?}: unknown unit {other:?}; use %, us, ms or s"
                ));
            }
        };
        Ok(Gate {
            text: text.to_string(),
            metric: metric.to_string(),
            op,
            change,
        })
    }

    /// Whether the change from `base` to `new` is a regression, and the change as read.
    fn judge(&self, base: f64, new: f64) -> (bool, f64) {
        let (observed, limit) = match self.change {
            Change::Percent(p) => (relative(base, new), p),
            Change::Absolute(a) => (new - base, a),
        };
        // Figures are decimals read from JSON: 0.999 - 1.0 is -0.0010000000000000009, which
        // must not cross a limit of -0.001. Differences within a part in 10^9 are equal.
        let slack = 1e-9 * limit.abs().max(1.0);
        let hit = match self.op {
            Op::Gt => observed > limit + slack,
            Op::Ge => observed >= limit - slack,
            Op::Lt => observed < limit - slack,
            Op::Le => observed <= limit + slack,
        };
        (hit, observed)
    }
}

fn split_unit(value: &str) -> (&str, &str) {
    let at = value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E')))
        .map_or(value.len(), |(i, _)| i);
    (value[..at].trim(), value[at..].trim())
}

/// The kind of a figure name, whether or not a run has it; `None` for a name no run can have.
fn metric_kind(name: &str) -> Option<Kind> {
    if let Some(rest) = name.strip_prefix("phases.") {
        let (index, figure) = rest.split_once('.')?;
        index.parse::<usize>().ok()?;
        return PHASE.iter().find(|f| f.0 == figure).map(|f| f.2);
    }
    if let Some(kind) = name.strip_prefix("errors.") {
        return ErrorKind::from_name(kind).map(|_| Kind::Count);
    }
    if name.starts_with("nlb.") && name.len() > 4 {
        return Some(Kind::Count);
    }
    match name {
        "recovered_ratio" => return Some(Kind::Ratio),
        "recovery_99_s" | "recovery_100_s" => return Some(Kind::Seconds),
        _ => {}
    }
    for (_, family) in LATENCY {
        if let Some(stat) = name.strip_prefix(family).and_then(|r| r.strip_prefix('_'))
            && STATS.contains(&stat)
        {
            return Some(Kind::Micros);
        }
    }
    match name {
        "errors" => Some(Kind::Count),
        "duration_s" => Some(Kind::Seconds),
        _ => PLAIN.iter().find(|f| f.0 == name).map(|f| f.2),
    }
}

/// Percent change from `base` to `new`; infinite when only `new` is non-zero.
fn relative(base: f64, new: f64) -> f64 {
    if base == new {
        0.0
    } else if base == 0.0 {
        if new > 0.0 {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        }
    } else {
        (new - base) / base.abs() * 100.0
    }
}

/// One gate's verdict.
#[derive(Clone, Debug)]
pub struct GateResult {
    /// The gate as written, or what was judged (`NEW passed its own thresholds`).
    pub text: String,
    pub regressed: bool,
    /// What was seen, in words: "+25.3 % (130.4ms to 163.4ms)" or "not measured in NEW".
    pub observed: String,
}

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
mod tests {
    use super::*;
    use serde_json::json;

    fn run(profile: &str, p99: u64, ratio: f64, phases: Value) -> Run {
        Run {
            dir: std::path::PathBuf::from("."),
            label: profile.into(),
            summary: json!({
                "schema": "stampede.summary/v1", "profile": profile, "outcome": "pass",
                "connections": {"established_ratio": ratio, "established": 100},
                "errors": {"refused": 0},
                "latency_us": {"connect": {"count": 10, "p99": p99},
                               "handshake": {"count": 0, "p99": null}},
                "phases": phases,
            }),
            intervals: None,
            profile: None,
        }
    }

    fn gates(texts: &[&str]) -> Vec<Gate> {
        texts.iter().map(|t| Gate::parse(t).unwrap()).collect()
    }

    #[test]
    fn gates_read_relative_and_absolute_changes() {
        let base = run(
            "p",
            100_000,
            1.0,
            json!([{"index": 2, "recovery_100_s": 3.0}]),
        );
        let new = run(
            "p",
            125_000,
            0.998,
            json!([{"index": 2, "recovery_100_s": 4.5}]),
        );
        let c = Comparison::new(
            base,
            new,
            gates(&[
                "connect_p99 > +10%",
                "connect_p99 > +30ms",
                "established_ratio < -0.001",
                "phases.2.recovery_100_s > +2s",
            ]),
            false,
        )
        .unwrap();
        let verdicts: Vec<bool> = c.gates.iter().map(|g| g.regressed).collect();
        assert_eq!(verdicts, vec![true, false, true, false], "{}", c.text());
        assert_eq!(c.regressions(), 2);
        assert!(
            c.gates[0].observed.starts_with("+25.0 %"),
            "{}",
            c.gates[0].observed
        );
        assert!(c.junit().contains(r#"failures="2""#));
    }

    #[test]
    fn a_figure_missing_from_a_run_cannot_pass_a_gate() {
        let base = run("p", 100, 1.0, json!([]));
        let new = run("p", 100, 1.0, json!([]));
        let c = Comparison::new(
            base,
            new,
            gates(&["handshake_p99 > +10%", "phases.1.recovery_100_s > +1s"]),
            false,
        )
        .unwrap();
        assert!(c.gates.iter().all(|g| g.regressed));
        assert!(
            c.gates[0].observed.contains("neither"),
            "{}",
            c.gates[0].observed
        );
    }

    #[test]
    fn different_profiles_need_consent() {
        let e = Comparison::new(
            run("a", 1, 1.0, json!([])),
            run("b", 1, 1.0, json!([])),
            vec![],
            false,
        )
        .err()
        .unwrap();
        assert!(e.contains("--allow-different-profiles"), "{e}");
        assert!(
            Comparison::new(
                run("a", 1, 1.0, json!([])),
                run("b", 1, 1.0, json!([])),
                vec![],
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn bad_gates_say_what_to_write() {
        for (text, hint) in [
            ("connect_p99 +10%", "expected METRIC OP CHANGE"),
            ("connect_p99 > 10", "is a latency"),
            ("conect_p99 > +10%", "unknown figure"),
            ("established_ratio < -2s", "not a time"),
            ("errors > +1x", "unknown unit"),
            ("errors > lots", "not a change"),
            ("phases.x.recovery_100_s > +1s", "unknown figure"),
        ] {
            let e = Gate::parse(text).err().unwrap_or_default();
            assert!(e.contains(hint), "{text}: {e}");
        }
        assert!(Gate::parse("errors.refused > 0").is_ok());
        assert!(Gate::parse("nlb.PortAllocationErrorCount > +0").is_ok());
        assert!(Gate::parse("given_up >= 1").is_ok());
    }

    #[test]
    fn decimals_do_not_cross_a_limit_they_sit_on() {
        let g = Gate::parse("established_ratio < -0.001").unwrap();
        assert!(!g.judge(1.0, 0.999).0, "a change of exactly -0.001");
        assert!(g.judge(1.0, 0.998).0);
    }

    #[test]
    fn the_worst_phase_answers_for_bare_recovery_figures() {
        let phases = json!([
            {"index": 1, "recovered_ratio": 1.0, "recovery_100_s": 1.5},
            {"index": 2, "recovered_ratio": 1.0, "recovery_100_s": 4.0}
        ]);
        let base = run("p", 1, 1.0, phases.clone());
        let mut never = phases;
        never[1]["recovered_ratio"] = json!(0.9);
        never[1]["recovery_100_s"] = Value::Null;
        let c = Comparison::new(
            base,
            run("p", 1, 1.0, never),
            gates(&["recovery_100_s > +2s"]),
            false,
        )
        .unwrap();
        // NEW never got all back in phase 2: no time to compare, so the gate cannot pass.
        assert!(c.gates[0].regressed, "{}", c.text());
        let figures = figures(&c.base.summary);
        let worst = figures.iter().find(|f| f.name == "recovery_100_s");
        assert_eq!(worst.map(|f| f.value), Some(4.0));
    }

    #[test]
    fn a_new_run_that_did_not_pass_regresses() {
        let mut new = run("p", 1, 1.0, json!([]));
        new.summary["outcome"] = json!("aborted");
        new.summary["abort_reason"] = json!("interrupted");
        let c = Comparison::new(run("p", 1, 1.0, json!([])), new, vec![], false).unwrap();
        assert_eq!(c.regressions(), 1);
        assert!(
            c.text().contains("NEW's outcome is aborted: interrupted"),
            "{}",
            c.text()
        );
    }

    #[test]
    fn the_same_name_with_different_settings_needs_consent() {
        let mut base = run("p", 1, 1.0, json!([]));
        let mut new = run("p", 1, 1.0, json!([]));
        base.profile = Some(json!({"name": "p", "connections": 400, "description": "a"}));
        new.profile = Some(json!({"name": "p", "connections": 40, "description": "b"}));
        let e = Comparison::new(base, new, vec![], false).err().unwrap();
        assert!(
            e.contains("(connections)") && e.contains("--allow-different-profiles"),
            "{e}"
        );
    }

    #[test]
    fn a_change_from_zero_is_infinitely_relative() {
        assert_eq!(relative(0.0, 0.0), 0.0);
        assert!(relative(0.0, 3.0).is_infinite());
        let g = Gate::parse("errors > +10%").unwrap();
        assert!(g.judge(0.0, 1.0).0);
        assert!(!g.judge(0.0, 0.0).0);
    }
}
