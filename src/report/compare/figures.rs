//! The figures a comparison reads from a summary.json: their names (as in profile
//! thresholds), paths, kinds and which direction is worse.

use serde_json::Value;

use crate::metrics::ErrorKind;
use crate::report::html::num;

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
pub(super) const LATENCY: [(&str, &str); 6] = [
    ("connect", "connect"),
    ("connect_service", "connect_service"),
    ("heartbeat_rtt", "heartbeat"),
    ("handshake", "handshake"),
    ("delivery", "delivery"),
    ("recovery", "recovery"),
];
pub(super) const STATS: [&str; 7] = ["p50", "p90", "p99", "p999", "max", "mean", "min"];

/// Figures read straight from one place in summary.json: (name, path, kind, which way is worse).
pub(super) const PLAIN: [(&str, &str, Kind, Worse); 17] = [
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
pub(super) const PHASE: [(&str, &str, Kind, Worse); 7] = [
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

/// The kind of a figure name, whether or not a run has it; `None` for a name no run can have.
pub(super) fn metric_kind(name: &str) -> Option<Kind> {
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
