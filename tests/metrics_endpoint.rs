//! `--metrics-listen`: a real run, scraped while it lasts, read with a strict exposition parser.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]

mod common;
#[path = "common/exposition.rs"]
#[allow(dead_code)]
mod exposition;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{SinkProcess, bin, read_json, wait_child, wait_for_line};
use exposition::Family;
use serde_json::json;

/// One scrape: status line, headers and body.
fn scrape(addr: SocketAddr) -> (String, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: text/plain\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
}

fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

#[test]
fn metrics_are_served_as_valid_exposition_while_the_run_lasts() {
    let sinks = [SinkProcess::start(), SinkProcess::start()];
    let targets: Vec<String> = sinks.iter().map(|s| s.addr.to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("metrics.json");
    std::fs::write(
        &profile,
        json!({
            "name": "metrics",
            "target": {"addrs": targets},
            "connections": 400,
            "sources": {"addrs": ["127.0.30.1-127.0.30.2"]},
            "heartbeat": {"interval": "1s"},
            "phases": [{"ramp": {"rate": 200}}, {"hold": {"for": "3s"}}],
            "thresholds": ["connect_p99 < 5s", "errors <= 0"]
        })
        .to_string(),
    )
    .unwrap();
    let mut child = bin()
        .args([
            "run",
            "--headless",
            "--metrics-listen",
            "127.0.0.1:0",
            "--out",
        ])
        .arg(dir.path())
        .arg(&profile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let line = wait_for_line(&mut stderr, Duration::from_secs(10), |l| {
        l.contains("live metrics at http://")
    });
    let addr: SocketAddr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep draining progress lines so the run never blocks on a full pipe.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });

    // Before the first second: a valid exposition saying there is nothing yet (or the first
    // figures, on a slow start).
    let (status, headers, body) = scrape(addr);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    exposition::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));

    // During the ramp and the hold.
    let deadline = Instant::now() + Duration::from_secs(10);
    let early = loop {
        let (_, _, body) = scrape(addr);
        let families = exposition::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        if value(&families, "stampede_connections_open", &[]).is_some_and(|v| v > 0.0) {
            break families;
        }
        assert!(
            Instant::now() < deadline,
            "no open connections reported:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // A later snapshot: polled (bounded) until the run has published a newer one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let elapsed = |families: &[Family]| value(families, "stampede_elapsed_seconds", &[]);
    let later = loop {
        let (_, _, body) = scrape(addr);
        let families = exposition::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        if elapsed(&families) > elapsed(&early) {
            break families;
        }
        assert!(Instant::now() < deadline, "no newer snapshot:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    };

    for f in &later {
        assert!(f.name.starts_with("stampede_"), "{}", f.name);
        assert!(f.help.is_some(), "{} has no HELP", f.name);
    }
    assert_eq!(value(&later, "stampede_up", &[]), Some(1.0));
    assert_eq!(family(&later, "stampede_errors_total").kind, "counter");
    assert_eq!(
        family(&later, "stampede_errors_total").samples.len(),
        stampede::metrics::ErrorKind::COUNT
    );
    assert_eq!(family(&later, "stampede_latency_seconds").kind, "summary");
    assert!(
        value(
            &later,
            "stampede_latency_seconds",
            &[("metric", "connect"), ("quantile", "0.99")]
        )
        .is_some_and(|v| v > 0.0 && v < 5.0)
    );
    for name in [
        "stampede_connection_attempts_total",
        "stampede_connections_established_total",
        "stampede_elapsed_seconds",
    ] {
        let before = value(&early, name, &[]).unwrap();
        let after = value(&later, name, &[]).unwrap();
        assert!(after >= before, "{name} went from {before} to {after}");
    }
    assert!(
        value(&later, "stampede_elapsed_seconds", &[])
            > value(&early, "stampede_elapsed_seconds", &[]),
        "a new snapshot each second"
    );
    for source in ["127.0.30.1", "127.0.30.2"] {
        assert!(
            value(
                &later,
                "stampede_source_connection_attempts_total",
                &[("source", source)]
            )
            .is_some_and(|v| v > 0.0),
            "{source}"
        );
    }
    let per_target: f64 = sinks
        .iter()
        .map(|s| {
            value(
                &later,
                "stampede_target_connections_established_total",
                &[("target", &s.addr.to_string())],
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(
        Some(per_target),
        value(&later, "stampede_connections_established_total", &[])
    );
    assert_eq!(
        value(
            &later,
            "stampede_threshold_pass",
            &[("threshold", "errors <= 0")]
        ),
        Some(1.0)
    );

    let status = wait_child(&mut child, Duration::from_secs(30));
    let progress = drain.join().unwrap();
    assert_eq!(status.code(), Some(0), "{progress}");
    let summary = read_json(&dir.path().join("summary.json"));
    assert_eq!(summary["connections"]["established"], 400);
}

#[test]
fn a_busy_metrics_address_is_a_usage_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let output = bin()
        .args([
            "run",
            "profiles/smoke.json",
            "--headless",
            "--metrics-listen",
        ])
        .arg(addr.to_string())
        .current_dir(common::repo(""))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("--metrics-listen {addr}: cannot listen")),
        "{stderr}"
    );
}
