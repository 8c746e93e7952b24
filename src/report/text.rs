//! The human summary printed at the end of a run, and the one-line progress report.

use std::fmt::Write;

use super::summary::{AgentStatus, LatencyStats, Outcome, ScopeCounts, Summary};
use crate::metrics::ErrorKind;
use crate::profile::duration::human_micros;

fn cell(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), human_micros)
}

fn latency_row(out: &mut String, name: &str, s: &LatencyStats) {
    let _ = writeln!(
        out,
        "  {name:<16}{:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        s.count,
        cell(s.min),
        cell(s.p50),
        cell(s.p90),
        cell(s.p99),
        cell(s.p999),
        cell(s.max),
        s.mean
            .map_or_else(|| "-".to_string(), |m| human_micros(m.round() as u64)),
    );
}

fn errors_text(errors: &[u64; ErrorKind::COUNT]) -> String {
    let parts: Vec<String> = ErrorKind::ALL
        .iter()
        .filter(|k| errors[**k as usize] > 0)
        .map(|k| format!("{} {}", k.name(), errors[*k as usize]))
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

fn scope_rows(out: &mut String, title: &str, rows: &[ScopeCounts]) {
    const SHOWN: usize = 10;
    let _ = writeln!(out, "{title}");
    let mut sorted: Vec<&ScopeCounts> = rows.iter().collect();
    sorted.sort_by(|a, b| b.attempts.cmp(&a.attempts).then(a.addr.cmp(&b.addr)));
    for row in sorted.iter().take(SHOWN) {
        let _ = writeln!(
            out,
            "  {:<24} attempts {:>9}  connected {:>9}  established {:>9}  closed {:>7}  errors: {}",
            row.addr,
            row.attempts,
            row.connected,
            row.established,
            row.closed,
            errors_text(&row.errors.0)
        );
    }
    if rows.len() > SHOWN {
        let _ = writeln!(
            out,
            "  ... and {} more (see summary.json)",
            rows.len() - SHOWN
        );
    }
}

/// Renders the end-of-run summary.
pub fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let verdict = match summary.outcome {
        Outcome::Pass => "PASS",
        Outcome::Fail => "FAIL",
        Outcome::Aborted => "ABORTED",
    };
    let _ = writeln!(
        out,
        "\nstampede: {} -- {verdict} after {:.1}s (planned {:.1}s, {})",
        summary.profile,
        summary.duration_s,
        summary.planned_duration_s,
        if summary.agents.is_empty() {
            format!("{} worker thread(s)", summary.workers)
        } else {
            format!("{} agent(s)", summary.agents.len())
        }
    );
    if let Some(spread) = summary.start_spread_ms {
        let _ = writeln!(out, "agents       start spread {spread:.1}ms");
    }
    for agent in summary
        .agents
        .iter()
        .filter(|a| a.status != AgentStatus::Finished)
    {
        let _ = writeln!(
            out,
            "agent {}    {} (share {}, established {}, last report at {})",
            agent.name,
            agent.status,
            agent.share,
            agent.established,
            agent
                .last_report_s
                .map_or_else(|| "never".to_string(), |s| format!("{s:.1}s"))
        );
    }
    for m in &summary.missing {
        let _ = writeln!(
            out,
            "missing      agent {}: {} of {} intervals received, intervals {}-{} never arrived (not in these figures)",
            m.agent,
            m.intervals_received,
            m.intervals_expected,
            m.missing_intervals[0],
            m.missing_intervals[1]
        );
    }
    if let Some(reason) = &summary.abort_reason {
        let _ = writeln!(out, "aborted: {reason}");
    }
    if let Some(reason) = &summary.fail_reason {
        let _ = writeln!(out, "failed: {reason}");
    }
    let c = &summary.connections;
    let _ = writeln!(
        out,
        "connections  requested {}  attempts {}  connected {} ({:.1}% of slots)  established {} ({:.1}% of slots)  peak open {}  closed early {}",
        c.requested,
        c.attempts,
        c.connected_slots,
        100.0 * c.connected_ratio,
        c.established_slots,
        100.0 * c.established_ratio,
        c.peak_open,
        c.closed
    );
    let _ = writeln!(
        out,
        "at the end   open {}  established {} of {} wanted{}{}",
        c.open_at_end,
        c.established_at_end,
        c.wanted_at_end,
        if c.reconnects > 0 {
            format!(
                "  reconnects {} (peak {}/s)",
                c.reconnects, c.peak_reconnects_per_s
            )
        } else {
            String::new()
        },
        if c.established_by == "none" {
            "  (plain TCP without heartbeats: connections are only ever connected, nothing \
             shows a server answering; add a heartbeat to establish them)"
        } else {
            ""
        }
    );
    let h = &summary.heartbeats;
    let _ = writeln!(
        out,
        "heartbeats   sent {}  answered {}{}",
        h.sent,
        h.answered,
        if h.in_flight_at_end > 0 {
            format!("  in flight at the end {}", h.in_flight_at_end)
        } else {
            String::new()
        }
    );
    let m = &summary.messages;
    if m.published > 0 {
        let _ = writeln!(
            out,
            "messages     published {}  received {}",
            m.published, m.received
        );
    } else if m.received > 0 {
        let _ = writeln!(out, "messages     received {}", m.received);
    }
    let _ = writeln!(out, "errors       {}", errors_text(&summary.errors.0));
    for (kind, details) in &summary.error_details {
        let parts: Vec<String> = details.iter().map(|(d, n)| format!("{d} {n}")).collect();
        let _ = writeln!(out, "  {kind:<22} {}", parts.join(", "));
    }
    let _ = writeln!(
        out,
        "latency{:>20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "min", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    latency_row(&mut out, "connect", &summary.latency_us.connect);
    latency_row(
        &mut out,
        "connect_service",
        &summary.latency_us.connect_service,
    );
    if summary.latency_us.handshake.count > 0 {
        latency_row(&mut out, "handshake", &summary.latency_us.handshake);
    }
    latency_row(&mut out, "heartbeat_rtt", &summary.latency_us.heartbeat_rtt);
    if summary.latency_us.delivery.count > 0 {
        latency_row(&mut out, "delivery", &summary.latency_us.delivery);
    }
    let disruptive: Vec<_> = summary
        .phases
        .iter()
        .filter(|p| matches!(p.name, "storm" | "drain" | "cutover" | "server" | "nlb"))
        .collect();
    if !disruptive.is_empty() {
        let _ = writeln!(
            out,
            "phases{:>21} {:>9} {:>10} {:>10} {:>11} {:>10} {:>8}  attempts per reconnect",
            "peak conn/s",
            "recovered",
            "99% back",
            "100% back",
            "connect p99",
            "reconnects",
            "gave up"
        );
        let seconds =
            |v: Option<f64>| v.map_or_else(|| "never".to_string(), |s| format!("{s:.2}s"));
        for p in disruptive {
            let attempts: Vec<String> = p
                .reconnect_attempts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| format!("{}:{n}", i + 1))
                .collect();
            let _ = writeln!(
                out,
                "  {:<7} {:>5.1}s {:>11} {:>9} {:>10} {:>10} {:>11} {:>10} {:>8}  {}",
                p.name,
                p.start_s,
                p.peak_connects_per_s,
                p.recovered_ratio
                    .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", 100.0 * r)),
                seconds(p.recovery_99_s),
                seconds(p.recovery_100_s),
                cell(p.connect_p99_us),
                p.reconnects,
                p.given_up,
                if attempts.is_empty() {
                    "-".to_string()
                } else {
                    attempts.join(" ")
                }
            );
        }
    }
    if summary.sources.len() > 1 {
        scope_rows(&mut out, "sources", &summary.sources);
    }
    if summary.targets.len() > 1 {
        scope_rows(&mut out, "targets", &summary.targets);
    }
    if let Some(nlb) = &summary.nlb {
        nlb_rows(&mut out, nlb);
    }
    if summary.thresholds.is_empty() {
        let _ = writeln!(out, "thresholds   none set");
    } else {
        let _ = writeln!(out, "thresholds");
        for t in &summary.thresholds {
            let observed = match (t.observed, t.unit) {
                (None, _) => "no samples".to_string(),
                (Some(v), "us") => human_micros(v.round() as u64),
                (Some(v), "ratio") => format!("{v:.4}"),
                (Some(v), _) => format!("{v}"),
            };
            let _ = writeln!(
                out,
                "  {}  {:<32} observed {observed}",
                if t.pass { "pass" } else { "FAIL" },
                t.name
            );
        }
    }
    out
}

/// What the NLB emulator counted during the run: the total, then each target if several.
fn nlb_rows(out: &mut String, nlb: &crate::nlb::NlbSummary) {
    if let Some(error) = &nlb.error {
        let _ = writeln!(
            out,
            "nlb          {} unreadable at the end: {error}",
            nlb.admin
        );
        return;
    }
    let row = |out: &mut String, label: &str, c: &crate::nlb::CountersSnapshot| {
        let _ = writeln!(
            out,
            "{label:<12} new flows {}  port allocation errors {}  resets elb {} target {} client {}  bytes {}",
            c.new_flows,
            c.port_allocation_errors,
            c.elb_resets,
            c.target_resets,
            c.client_resets,
            c.bytes
        );
    };
    let _ = writeln!(
        out,
        "nlb          {}  peak active flows {}",
        nlb.admin, nlb.peak_active_flows
    );
    row(out, "  total", &nlb.total);
    if nlb.targets.len() > 1 {
        for t in &nlb.targets {
            let label = format!(
                "  {}{}",
                t.target,
                if t.registered { "" } else { " (deregistered)" }
            );
            row(out, &label, &t.counters);
        }
    }
}
