//! Failures produce the right error kinds and exit codes: a refused target, a sink killed
//! mid-hold, heartbeats that go unanswered, a plan over the file limit, and Ctrl-C.

mod common;

use std::io::BufReader;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use common::{SinkProcess, bin, read_json, run_json, wait_child, wait_for_line};
use serde_json::json;
use stampede::metrics::ErrorKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_target_counts_refused_and_fails_thresholds() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let profile = json!({
        "name": "refused",
        "target": {"addrs": [format!("127.0.0.1:{port}")]},
        "connections": 50,
        "sources": {"addrs": ["127.0.32.1"]},
        "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "300ms"}}],
        "thresholds": ["errors <= 0"]
    });
    let result = run_json(&profile, false, None).await;
    assert_eq!(
        result.summary.errors.0[ErrorKind::Refused as usize],
        50,
        "{:?} {:?}",
        result.summary.errors,
        result.summary.connections
    );
    assert_eq!(result.summary.connections.established, 0);
    assert_eq!(result.exit_code, 1);
    assert!(!result.summary.thresholds[0].pass);
}

/// The largest heartbeat a profile allows (64 KiB) goes out in several writes and comes back
/// in several reads, and is still counted as one answered heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_heartbeat_is_sent_and_echoed_whole() {
    let sink = common::SinkHandle::start().await;
    let profile = json!({
        "name": "big-heartbeat",
        "target": {"addrs": [sink.addr.to_string()]},
        "connections": 10,
        "heartbeat": {"interval": "200ms", "payload_bytes": stampede::profile::MAX_PAYLOAD_BYTES, "timeout": "2s"},
        "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "1s"}}],
        "thresholds": ["errors <= 0"]
    });
    let result = run_json(&profile, false, None).await;
    let s = &result.summary;
    assert_eq!(s.error_total(), 0, "{:?}", s.errors);
    assert!(s.heartbeats.answered >= 30, "{:?}", s.heartbeats);
    assert_eq!(result.exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_heartbeats_time_out() {
    // A server that accepts and holds but never echoes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let profile = json!({
        "name": "silent-peer",
        "target": {"addrs": [addr.to_string()]},
        "connections": 20,
        "heartbeat": {"interval": "100ms", "timeout": "300ms"},
        "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "1500ms"}}],
        "thresholds": ["errors.heartbeat_timeout <= 0"]
    });
    let result = run_json(&profile, false, None).await;
    server.abort();
    let s = &result.summary;
    // Accepted by the kernel, never answered: connected, not established.
    assert_eq!(s.connections.connected, 20);
    assert_eq!(s.connections.established_slots, 0);
    assert_eq!(
        s.errors.0[ErrorKind::HeartbeatTimeout as usize],
        20,
        "{:?}",
        s.errors
    );
    assert_eq!(s.error_total(), 20);
    assert_eq!(s.connections.closed, 20);
    assert_eq!(s.heartbeats.answered, 0);
    assert_eq!(result.exit_code, 1);
}

#[test]
fn sink_killed_mid_hold_counts_peer_closes() {
    let mut sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile_path = dir.path().join("p.json");
    std::fs::write(
        &profile_path,
        json!({
            "name": "sink-dies",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 200,
            "sources": {"addrs": ["127.0.33.1"]},
            "heartbeat": {"interval": "200ms"},
            "phases": [{"ramp": {"rate": 2000}}, {"hold": {"for": "4s"}}],
            "thresholds": ["errors <= 0"]
        })
        .to_string(),
    )
    .unwrap();
    let (mut run, _progress) = common::run_until_held(dir.path(), &profile_path, 200);
    sink.child.kill().unwrap();
    sink.child.wait().unwrap();
    let status = wait_child(&mut run, Duration::from_secs(15));
    assert_eq!(status.code(), Some(1));
    let summary = read_json(&dir.path().join("summary.json"));
    assert_eq!(summary["outcome"], "fail");
    assert_eq!(summary["connections"]["established"], 200);
    assert_eq!(summary["connections"]["closed"], 200);
    let errors = &summary["errors"];
    let peer = errors["closed_by_peer"].as_u64().unwrap() + errors["reset"].as_u64().unwrap();
    assert_eq!(peer, 200, "{errors}");
}

#[test]
fn plans_over_the_fd_limit_are_refused_before_opening_anything() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let profile_path = dir.path().join("big.json");
    std::fs::write(
        &profile_path,
        json!({
            "name": "too-big",
            "target": {"addrs": [addr.to_string()]},
            "connections": 25000,
            "sources": {"addrs": ["127.0.34.1-127.0.34.4"]},
            "phases": [{"ramp": {"rate": 100000}}]
        })
        .to_string(),
    )
    .unwrap();
    let out = bin().arg("run").arg(&profile_path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs 25064 file descriptors"), "{stderr}");
    assert!(
        stderr.contains("RLIMIT_NOFILE") && stderr.contains("ulimit -Hn"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection was opened: {accepted:?}"
    );

    // The embedded sink doubles the sockets; the message says so.
    let out = bin()
        .args(["run", "profiles/smoke.json", "--set", "connections=12000"])
        .current_dir(common::repo(""))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("embedded-sink sockets"), "{stderr}");
}

#[test]
fn sigint_stops_gracefully_and_still_writes_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = bin()
        .args([
            "run",
            "profiles/ci-smoke.json",
            "--set",
            "phases.1.hold.for=60s",
            "--out",
        ])
        .arg(dir.path())
        .current_dir(common::repo(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut progress = BufReader::new(run.stderr.take().unwrap());
    wait_for_line(&mut progress, Duration::from_secs(10), |l| {
        l.contains("hold")
    });
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    let status = wait_child(&mut run, Duration::from_secs(10));
    assert_eq!(status.code(), Some(3));
    let summary = read_json(&dir.path().join("summary.json"));
    assert_eq!(summary["outcome"], "aborted");
    assert_eq!(summary["abort_reason"], "interrupted by SIGINT");
    assert_eq!(summary["connections"]["established"], 500);
    assert!(summary["duration_s"].as_f64().unwrap() < 30.0);
    common::assert_schema("summary.schema.json", &summary);
}
