//! The report's sections other than the charts: header, thresholds, figures, latency table,
//! phases and recovery, shares, agents, the NLB's counters and error details.

use std::fmt::Write;

use serde_json::Value;

use super::{Run, TOP_N, num, outcome_badge, started, text};
use crate::report::chart::{self, PALETTE, Unit, esc};

pub(super) fn header(out: &mut String, run: &Run) {
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

pub(super) fn thresholds(out: &mut String, s: &Value) {
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

pub(super) fn figures(out: &mut String, s: &Value) {
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

pub(super) fn latency_table(out: &mut String, s: &Value) {
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

pub(super) fn phases(out: &mut String, s: &Value) {
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
pub(super) fn recovery_chart(phases: &[Value]) -> String {
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
pub(super) fn shares(out: &mut String, s: &Value, key: &str, title: &str) {
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

pub(super) fn agents(out: &mut String, s: &Value) {
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

pub(super) fn nlb(out: &mut String, s: &Value) {
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

pub(super) fn error_details(out: &mut String, s: &Value) {
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
