//! `--metrics-listen ADDR`: the latest `LiveSnapshot` in Prometheus text exposition format
//! (version 0.0.4) at `GET /metrics`, so Grafana can follow a run.
//!
//! Served by `crate::http` (one request per connection, bounded head size and time,
//! `Connection: close`). It only reads the `watch` channel; a slow or hostile scraper costs one
//! task and never touches the load.

use std::fmt::Write as _;
use std::future::Future;

use tokio::net::TcpListener;

use crate::http::{Request, Response, serve_http};
use crate::live::{LiveRx, LiveSnapshot, RunState};
use crate::metrics::{ErrorKind, Latency};
use crate::report::Outcome;
use crate::report::summary::ScopeCounts;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Per-source and per-target series are left out above this many addresses (a /16 of sources
/// would make every scrape megabytes long); the totals stay.
pub const MAX_SCOPE_SERIES: usize = 1000;
/// Quantiles of the latency summaries.
const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// Serves `/metrics` (GET or HEAD) until `shutdown` completes.
pub async fn run(listener: TcpListener, live_rx: LiveRx, shutdown: impl Future<Output = ()>) {
    let respond = move |request: &Request| {
        let head_only = request.method == "HEAD";
        let response = match (request.method.as_str(), request.path.as_str()) {
            ("GET" | "HEAD", "/metrics") => {
                let snapshot = live_rx.borrow().clone();
                Response::text("200 OK", CONTENT_TYPE, render(snapshot.as_deref()))
            }
            ("GET" | "HEAD", _) => Response::text(
                "404 Not Found",
                "text/plain; charset=utf-8",
                "stampede serves its live metrics at /metrics\n".into(),
            ),
            _ => Response::text(
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                "only GET and HEAD\n".into(),
            )
            .allow("GET, HEAD"),
        };
        response.encode(head_only)
    };
    serve_http(listener, respond, shutdown).await;
}

/// Writes families in the text format: `# HELP`, `# TYPE`, then samples.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let value = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{key}=\"{value}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn state_name(state: RunState) -> &'static str {
    match state {
        RunState::Running => "running",
        RunState::Paused => "paused",
        RunState::Stopping => "stopping",
        RunState::Finished => "finished",
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::Aborted => "aborted",
    }
}

/// The exposition for `snapshot` (`None`: the run has not completed its first second).
pub fn render(snapshot: Option<&LiveSnapshot>) -> String {
    let mut e = Exposition { out: String::new() };
    e.single(
        "stampede_up",
        "gauge",
        "1 once the run has published figures (after its first second), 0 before.",
        if snapshot.is_some() { 1.0 } else { 0.0 },
    );
    let Some(s) = snapshot else {
        return e.out;
    };
    let summary = &s.summary;
    let c = &summary.connections;

    e.family(
        "stampede_run_info",
        "gauge",
        "The run: profile, state and outcome so far (provisional until state is finished).",
    );
    e.sample(
        "stampede_run_info",
        &[
            ("profile", &summary.profile),
            ("state", state_name(s.state)),
            ("outcome", outcome_name(summary.outcome)),
        ],
        1.0,
    );
    e.single(
        "stampede_elapsed_seconds",
        "gauge",
        "Time since the run started, pauses included.",
        s.elapsed.as_secs_f64(),
    );
    e.single(
        "stampede_planned_seconds",
        "gauge",
        "Planned length of the run, grown by any pause.",
        s.planned.as_secs_f64(),
    );
    e.single(
        "stampede_phase",
        "gauge",
        "Number of the phase now playing, from 1 (0: none).",
        s.phase.map_or(0.0, |p| (p + 1) as f64),
    );
    e.single(
        "stampede_phases",
        "gauge",
        "Phases in the plan.",
        s.spans.len() as f64,
    );
    e.single(
        "stampede_connections_open",
        "gauge",
        "Connections open (connected and held) at the end of the last interval.",
        s.open as f64,
    );
    e.single(
        "stampede_connections_open_established",
        "gauge",
        "Of the open connections, those established (proved served).",
        s.open_established as f64,
    );
    e.single(
        "stampede_connections_wanted",
        "gauge",
        "Connections the plan wants open now.",
        s.wanted as f64,
    );
    e.single(
        "stampede_connections_requested",
        "gauge",
        "Connections the profile asks for.",
        c.requested as f64,
    );
    e.single(
        "stampede_connections_peak_open",
        "gauge",
        "Most connections open at once so far.",
        c.peak_open as f64,
    );
    e.single(
        "stampede_connection_attempts_total",
        "counter",
        "connect() attempts.",
        c.attempts as f64,
    );
    e.single(
        "stampede_connections_connected_total",
        "counter",
        "TCP handshakes completed (reconnects included).",
        c.connected as f64,
    );
    e.single(
        "stampede_connections_established_total",
        "counter",
        "Connections that proved they are served: first heartbeat echo, or the protocol's handshake (reconnects included).",
        c.established as f64,
    );
    e.single(
        "stampede_connection_slots_established",
        "gauge",
        "Connection slots established at least once (what established_ratio counts).",
        c.established_slots as f64,
    );
    e.single(
        "stampede_connections_closed_total",
        "counter",
        "Established connections that ended before the run's own teardown.",
        c.closed as f64,
    );
    e.single(
        "stampede_heartbeats_sent_total",
        "counter",
        "Heartbeats sent.",
        summary.heartbeats.sent as f64,
    );
    e.single(
        "stampede_heartbeats_answered_total",
        "counter",
        "Heartbeats whose echo came back in time.",
        summary.heartbeats.answered as f64,
    );
    e.single(
        "stampede_messages_published_total",
        "counter",
        "Messages sent by the run's own publisher (MQTT fan-out).",
        summary.messages.published as f64,
    );
    e.single(
        "stampede_messages_received_total",
        "counter",
        "Server-sent messages that arrived on held connections (MQTT PUBLISH, HTTP/2 DATA).",
        summary.messages.received as f64,
    );
    e.family(
        "stampede_errors_total",
        "counter",
        "Failed attempts and connections, by kind.",
    );
    for kind in ErrorKind::ALL {
        e.sample(
            "stampede_errors_total",
            &[("kind", kind.name())],
            summary.errors.0[kind as usize] as f64,
        );
    }

    if !summary.thresholds.is_empty() {
        e.family(
            "stampede_threshold_pass",
            "gauge",
            "1 if the threshold holds on the figures so far, 0 if not.",
        );
        for t in &summary.thresholds {
            e.sample(
                "stampede_threshold_pass",
                &[("threshold", &t.name)],
                if t.pass { 1.0 } else { 0.0 },
            );
        }
        e.family(
            "stampede_threshold_observed",
            "gauge",
            "The figure a threshold reads, in its unit (us, ratio or count); absent without samples.",
        );
        for t in &summary.thresholds {
            if let Some(observed) = t.observed {
                e.sample(
                    "stampede_threshold_observed",
                    &[("threshold", &t.name), ("unit", t.unit)],
                    observed,
                );
            }
        }
    }

    e.family(
        "stampede_latency_seconds",
        "summary",
        "Whole-run latency by metric (HDR histogram, 3 significant digits): connect from the \
         scheduled attempt, connect_service from the connect() call, handshake the protocol's \
         handshake after it, heartbeat_rtt from the scheduled send, delivery from the send time \
         stamped in a server-sent message to its arrival. quantile=\"1\" is the maximum.",
    );
    for metric in Latency::ALL {
        let h = s.total_latency.get(metric);
        let name = metric.tag();
        if !h.is_empty() {
            for q in QUANTILES {
                let micros = if q >= 1.0 {
                    h.max()
                } else {
                    h.value_at_quantile(q)
                };
                e.sample(
                    "stampede_latency_seconds",
                    &[("metric", name), ("quantile", &number(q))],
                    micros as f64 / 1e6,
                );
            }
        }
        e.sample(
            "stampede_latency_seconds_sum",
            &[("metric", name)],
            h.mean() * h.len() as f64 / 1e6,
        );
        e.sample(
            "stampede_latency_seconds_count",
            &[("metric", name)],
            h.len() as f64,
        );
    }

    scopes(&mut e, "source", &summary.sources);
    scopes(&mut e, "target", &summary.targets);

    if s.agents_expected > 0 || !s.agents.is_empty() {
        e.single(
            "stampede_agents_expected",
            "gauge",
            "Agents the swarm waits for.",
            s.agents_expected as f64,
        );
        e.single(
            "stampede_agents_joined",
            "gauge",
            "Agents that have joined.",
            s.agents.len() as f64,
        );
    }
    if !s.agents.is_empty() {
        let per_agent: [(&str, &str, &str); 5] = [
            (
                "stampede_agent_open",
                "gauge",
                "Connections the agent holds open.",
            ),
            (
                "stampede_agent_connects_per_second",
                "gauge",
                "Connections the agent established in its last interval.",
            ),
            (
                "stampede_agent_errors",
                "gauge",
                "Errors the agent reported.",
            ),
            (
                "stampede_agent_connect_p99_seconds",
                "gauge",
                "The agent's connect p99; absent without samples.",
            ),
            (
                "stampede_agent_last_report_age_seconds",
                "gauge",
                "Seconds since the agent's last report.",
            ),
        ];
        for (index, (name, kind, help)) in per_agent.into_iter().enumerate() {
            e.family(name, kind, help);
            for a in &s.agents {
                let value = match index {
                    0 => Some(a.open as f64),
                    1 => Some(a.connects_per_s as f64),
                    2 => Some(a.errors as f64),
                    3 => a.connect_p99_us.map(|us| us as f64 / 1e6),
                    _ => Some(a.last_report_s),
                };
                if let Some(value) = value {
                    e.sample(name, &[("agent", &a.name)], value);
                }
            }
        }
        e.family("stampede_agent_info", "gauge", "The agent's status.");
        for a in &s.agents {
            e.sample(
                "stampede_agent_info",
                &[("agent", &a.name), ("status", a.status.as_str())],
                1.0,
            );
        }
    }
    e.out
}

/// Per-source or per-target series, labelled `scope="ADDR"`.
fn scopes(e: &mut Exposition, scope: &str, rows: &[ScopeCounts]) {
    let plural = format!("stampede_{scope}s");
    e.single(
        &plural,
        "gauge",
        &format!("{scope} addresses in the plan."),
        rows.len() as f64,
    );
    if rows.is_empty() || rows.len() > MAX_SCOPE_SERIES {
        return;
    }
    let open = format!("stampede_{scope}_connections_open");
    e.family(
        &open,
        "gauge",
        &format!("Connections open per {scope} (connected less closed before teardown)."),
    );
    for r in rows {
        e.sample(
            &open,
            &[(scope, &r.addr)],
            r.connected.saturating_sub(r.closed) as f64,
        );
    }
    let connected = format!("stampede_{scope}_connections_connected_total");
    e.family(
        &connected,
        "counter",
        &format!("TCP handshakes completed per {scope}."),
    );
    for r in rows {
        e.sample(&connected, &[(scope, &r.addr)], r.connected as f64);
    }
    let attempts = format!("stampede_{scope}_connection_attempts_total");
    e.family(
        &attempts,
        "counter",
        &format!("connect() attempts per {scope}."),
    );
    for r in rows {
        e.sample(&attempts, &[(scope, &r.addr)], r.attempts as f64);
    }
    let established = format!("stampede_{scope}_connections_established_total");
    e.family(
        &established,
        "counter",
        &format!("Connections established (proved served) per {scope}."),
    );
    for r in rows {
        e.sample(&established, &[(scope, &r.addr)], r.established as f64);
    }
    let errors = format!("stampede_{scope}_errors_total");
    e.family(
        &errors,
        "counter",
        &format!("Errors per {scope} and kind (kinds seen so far)."),
    );
    for r in rows {
        for kind in ErrorKind::ALL {
            let n = r.errors.0[kind as usize];
            if n > 0 {
                e.sample(
                    &errors,
                    &[(scope, &r.addr), ("kind", kind.name())],
                    n as f64,
                );
            }
        }
    }
}

/// The strict exposition reader the integration tests use.
#[cfg(test)]
#[path = "../tests/common/exposition.rs"]
#[allow(dead_code)]
mod exposition;

#[cfg(test)]
mod tests;
