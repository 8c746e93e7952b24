//! Unit tests of `prometheus`.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tui::fixture;

#[test]
fn numbers_and_escapes_follow_the_format() {
    assert_eq!(number(3.0), "3");
    assert_eq!(number(0.25), "0.25");
    assert_eq!(number(f64::NAN), "NaN");
    assert_eq!(number(f64::INFINITY), "+Inf");
    let mut e = Exposition { out: String::new() };
    e.sample("m", &[("l", "a\"b\\c\nd")], 1.0);
    assert_eq!(e.out, "m{l=\"a\\\"b\\\\c\\nd\"} 1\n");
}

#[test]
fn the_strict_reader_rejects_what_prometheus_would() {
    let good = "# HELP a_total A counter.\n# TYPE a_total counter\na_total{k=\"v\\\"\"} 1\n\
                # TYPE s summary\ns{quantile=\"0.5\"} 0.1\ns_sum 1\ns_count 3\n";
    let families = exposition::parse(good).unwrap();
    assert_eq!(families.len(), 2);
    assert_eq!(families[0].samples[0].label("k"), Some("v\""));
    for bad in [
        "a 1",                                      // no final line feed
        "1a 1\n",                                   // bad name
        "a{k=v} 1\n",                               // unquoted label value
        "a{k=\"v\"} x\n",                           // bad value
        "# TYPE a counter\na 1\n",                  // counter without _total
        "# TYPE a gauge\na 1\nb 1\na{x=\"1\"} 2\n", // split family
        "a 1\na 2\n",                               // duplicate series
        "# TYPE s summary\ns 1\n",                  // summary sample without quantile
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",    // TYPE twice
        "a{__k=\"v\"} 1\n",                         // reserved label name
        "a{k=\"\\t\"} 1\n",                         // bad escape
    ] {
        assert!(exposition::parse(bad).is_err(), "accepted {bad:?}");
    }
}

fn value(families: &[exposition::Family], name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name}{labels:?}"))
        .value
}

#[test]
fn a_swarm_snapshot_renders_as_valid_exposition() {
    let snapshot = fixture::swarm_snapshot();
    let text = render(Some(&snapshot));
    let families = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for f in &families {
        assert!(f.name.starts_with("stampede_"), "{}", f.name);
        assert!(f.help.is_some(), "{} has no HELP", f.name);
    }
    let s = &snapshot.summary;
    assert_eq!(value(&families, "stampede_up", &[]), 1.0);
    assert_eq!(
        value(&families, "stampede_connections_open", &[]),
        snapshot.open as f64
    );
    assert_eq!(
        value(
            &families,
            "stampede_errors_total",
            &[("kind", "addr_not_available")]
        ),
        s.errors.0[ErrorKind::AddrNotAvailable as usize] as f64
    );
    assert_eq!(
        value(
            &families,
            "stampede_run_info",
            &[("state", "running"), ("outcome", "fail")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &families,
            "stampede_threshold_pass",
            &[("threshold", "errors <= 0")]
        ),
        0.0
    );
    let p99 = value(
        &families,
        "stampede_latency_seconds",
        &[("metric", "connect"), ("quantile", "0.99")],
    );
    assert_eq!(p99, s.latency_us.connect.p99.unwrap() as f64 / 1e6);
    assert_eq!(
        value(
            &families,
            "stampede_latency_seconds_count",
            &[("metric", "heartbeat_rtt")]
        ),
        s.latency_us.heartbeat_rtt.count as f64
    );
    assert_eq!(
        value(
            &families,
            "stampede_source_errors_total",
            &[("source", "127.0.10.4"), ("kind", "addr_not_available")]
        ),
        s.sources[3].errors.0[ErrorKind::AddrNotAvailable as usize] as f64
    );
    let shares: f64 = s
        .targets
        .iter()
        .map(|t| {
            value(
                &families,
                "stampede_target_connections_open",
                &[("target", &t.addr)],
            )
        })
        .sum();
    assert_eq!(shares, snapshot.open as f64, "per-target open adds up");
    assert_eq!(value(&families, "stampede_agents_expected", &[]), 4.0);
    assert_eq!(
        value(&families, "stampede_agent_open", &[("agent", "agent-2")]),
        39_117.0
    );
    assert_eq!(
        value(
            &families,
            "stampede_agent_info",
            &[("agent", "agent-3"), ("status", "lost")]
        ),
        1.0
    );
}

/// Every series the shipped Grafana dashboard queries is one this endpoint serves.
#[test]
fn the_grafana_dashboard_queries_only_served_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/stampede-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(e)) => {
                            out.push(e.clone())
                        }
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() > 20, "{queries:?}");
    let served: std::collections::HashSet<String> =
        exposition::parse(&render(Some(&fixture::swarm_snapshot())))
            .unwrap()
            .into_iter()
            .flat_map(|f| f.samples.into_iter().map(|s| s.name))
            .collect();
    for query in &queries {
        let mut rest = query.as_str();
        while let Some(at) = rest.find("stampede_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                served.contains(&name),
                "{name} (in {query:?}) is not served"
            );
            rest = &rest[at + name.len()..];
        }
    }
}

#[test]
fn per_address_series_stop_at_the_cap() {
    let mut snapshot = fixture::snapshot();
    let row = snapshot.summary.sources[0].clone();
    snapshot.summary.sources = (0..=MAX_SCOPE_SERIES)
        .map(|i| ScopeCounts {
            addr: format!("127.1.{}.{}", i / 250, i % 250 + 1),
            ..row.clone()
        })
        .collect();
    let text = render(Some(&snapshot));
    exposition::parse(&text).unwrap();
    assert!(text.contains("stampede_sources 1001\n"));
    assert!(!text.contains("stampede_source_connections_open{"));
    assert!(text.contains("stampede_target_connections_open{"));
}

#[test]
fn before_the_first_second_only_up_is_served() {
    let text = render(None);
    assert!(text.ends_with("stampede_up 0\n"), "{text}");
}

#[tokio::test]
async fn serves_metrics_and_refuses_other_paths() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_live_tx, live_rx) = tokio::sync::watch::channel(None);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, live_rx, async {
        let _ = stop_rx.await;
    }));
    let get = |request: &'static str| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains(CONTENT_TYPE), "{ok}");
    assert!(ok.ends_with("stampede_up 0\n"), "{ok}");
    let missing = get("GET / HTTP/1.1\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let post = get("POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let garbage = get("hello\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let head = get("HEAD /metrics HTTP/1.0\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    stop_tx.send(()).unwrap();
    server.await.unwrap();
}
