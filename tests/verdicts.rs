//! Verdicts you can trust: a gate passes only when the gateway really served the connections.
//! A real L4 proxy (Debian's haproxy) with an application-level connection limit in front of
//! the sink, a storm whose target never comes back, and the plan checks that exit 1.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]

mod common;

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A real haproxy run from a temp dir with its own config; killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    /// TCP mode in front of `backend`, serving at most `maxconn` connections at once: the rest
    /// wait in the kernel's accept queue, connected and never answered.
    fn start(dir: &Path, backend: SocketAddr, maxconn: u32) -> Haproxy {
        // haproxy cannot report a port it chose; take a free one from the kernel and hand it on.
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "global\n  maxconn 8192\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
             frontend gateway\n  bind 127.0.0.1:{port}\n  maxconn {maxconn}\n  backlog 4096\n  default_backend sink\n\
             backend sink\n  server sink {backend}\n"
        );
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, conf).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy runs (scripts/test installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut proxy = Haproxy { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while StdStream::connect(addr).is_err() {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                panic!("haproxy exited with {status}");
            }
            assert!(Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_profile(dir: &Path, profile: &Value) -> (i32, Value, String) {
    let file = dir.join("profile.json");
    std::fs::write(&file, profile.to_string()).unwrap();
    let out = dir.join("out");
    let mut child = common::bin()
        .arg("run")
        .arg(&file)
        .args(["--headless", "--quiet", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = common::wait_child(&mut child, Duration::from_secs(45));
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut text);
    }
    let summary = common::read_json(&out.join("summary.json"));
    (status.code().unwrap_or(-1), summary, text)
}

fn threshold<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no threshold {name}"))
}

/// The gateway accepts 1,000 connections at its application layer; 500 more sit in the accept
/// queue. They are connected (the kernel completed the handshake) but never established (no
/// heartbeat echo), and the gate fails.
#[test]
fn a_gateway_that_serves_1000_of_1500_fails_the_established_gate() {
    let dir = tempfile::tempdir().unwrap();
    let sink = common::SinkProcess::start();
    let proxy = Haproxy::start(dir.path(), sink.addr, 1000);
    let profile = json!({
        "name": "accept-queue",
        "target": {"addrs": [proxy.addr.to_string()]},
        "connections": 1500,
        "heartbeat": {"interval": "1s", "payload_bytes": 16, "timeout": "1s"},
        "connect_timeout": "5s",
        "phases": [{"ramp": {"rate": 1500}}, {"hold": {"for": "4s"}}],
        "thresholds": ["established_ratio >= 0.999", "connected_ratio >= 0.999"]
    });
    let (code, s, text) = run_profile(dir.path(), &profile);
    let c = &s["connections"];
    assert_eq!(code, 1, "the gate must fail: {text}");
    assert_eq!(s["outcome"], "fail");
    assert_eq!(c["connected_slots"], 1500, "{c}");
    assert_eq!(c["established_slots"], 1000, "{c}");
    assert_eq!(c["established"], 1000, "{c}");
    assert_eq!(c["established_by"], "first_heartbeat_echo");
    assert_eq!(c["established_at_end"], 1000, "{c}");
    assert_eq!(s["errors"]["heartbeat_timeout"], 500, "{}", s["errors"]);
    let gate = threshold(&s, "established_ratio >= 0.999");
    assert_eq!(gate["pass"], false);
    assert!((gate["observed"].as_f64().unwrap() - 1000.0 / 1500.0).abs() < 1e-9);
    assert_eq!(threshold(&s, "connected_ratio >= 0.999")["pass"], true);
    assert_eq!(s["targets"][0]["connected_slots"], 1500);
    assert_eq!(s["targets"][0]["established_slots"], 1000);
    assert!(
        text.contains("connected 1500 (100.0% of slots)  established 1000 (66.7% of slots)"),
        "{text}"
    );
    common::assert_schema("summary.schema.json", &s);
}

/// The target goes away for good after the ramp; every client reconnects per its policy and
/// none gets back. The ramp met `established_ratio`, so only recovery can catch it.
#[test]
fn a_storm_whose_target_stays_down_fails_its_recovery_gate() {
    let dir = tempfile::tempdir().unwrap();
    let profile = json!({
        "name": "down-for-good",
        "target": "embedded",
        "connections": 300,
        "heartbeat": {"interval": "500ms", "payload_bytes": 16, "timeout": "1s"},
        "connect_timeout": "2s",
        "reconnect": {"policy": "exponential", "base": "100ms", "cap": "500ms", "jitter": "full"},
        "phases": [
            {"ramp": {"rate": 1000}},
            {"hold": {"for": "1s"}},
            {"server": {"do": "stop_accepting", "for": "100ms"}},
            {"server": {"do": "close_all", "for": "3s"}}
        ],
        "thresholds": [
            "established_ratio >= 0.999",
            "phases.3.recovered_ratio >= 1",
            "phases.3.recovery_100_s < 2s",
            "open_at_end_ratio >= 0.999"
        ]
    });
    let (code, s, text) = run_profile(dir.path(), &profile);
    assert_eq!(code, 1, "{text}");
    assert_eq!(threshold(&s, "established_ratio >= 0.999")["pass"], true);
    let recovered = threshold(&s, "phases.3.recovered_ratio >= 1");
    assert_eq!(recovered["pass"], false);
    assert_eq!(recovered["observed"], 0.0);
    let time = threshold(&s, "phases.3.recovery_100_s < 2s");
    assert_eq!(time["pass"], false);
    assert!(time["observed"].is_null(), "{time}");
    assert_eq!(threshold(&s, "open_at_end_ratio >= 0.999")["observed"], 0.0);
    assert_eq!(s["connections"]["established_at_end"], 0);
    assert!(s["errors"]["refused"].as_u64().unwrap() > 0);
    common::assert_schema("summary.schema.json", &s);
}

/// The same storm against a target that stays up recovers and passes the same gates.
#[test]
fn a_storm_whose_target_comes_back_passes_its_recovery_gate() {
    let dir = tempfile::tempdir().unwrap();
    let profile = json!({
        "name": "comes-back",
        "target": "embedded",
        "connections": 300,
        "heartbeat": {"interval": "500ms", "payload_bytes": 16, "timeout": "1s"},
        "reconnect": {"policy": "exponential", "base": "100ms", "cap": "500ms", "jitter": "full"},
        "phases": [
            {"ramp": {"rate": 1000}},
            {"hold": {"for": "1s"}},
            {"server": {"do": "close_all", "for": "3s"}}
        ],
        "thresholds": [
            "phases.2.recovered_ratio >= 1",
            "phases.2.recovery_100_s < 2s",
            "open_at_end_ratio >= 0.999"
        ]
    });
    let (code, s, text) = run_profile(dir.path(), &profile);
    assert_eq!(code, 0, "{text}\n{}", s["thresholds"]);
    let phase = &s["phases"][2];
    assert_eq!(phase["recovered_ratio"], 1.0, "{phase}");
    assert!(phase["recovery_100_s"].as_f64().unwrap() < 2.0, "{phase}");
    assert_eq!(s["connections"]["reconnects"], 300);
    // The ramp's rate, not inflated by the storm's 300 reconnects.
    let rate = s["connections"]["connects_per_s"].as_f64().unwrap();
    assert!(rate < 1500.0, "connects_per_s {rate}");
}

fn check(args: &[&str]) -> (i32, String, String) {
    let out = common::bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_plan_that_does_not_fit_exits_1_unless_overcommit_is_allowed() {
    let profile = common::repo("profiles/many-sources.json");
    let profile = profile.to_str().unwrap();
    let one = "sources.addrs=[\"127.0.20.1\"]";
    let (code, stdout, stderr) = check(&["profile", "check", profile, "--set", one]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("DOES NOT FIT"), "{stdout}");
    assert!(stderr.contains("--allow-overcommit"), "{stderr}");
    let (code, stdout, _) = check(&[
        "profile",
        "check",
        profile,
        "--set",
        one,
        "--allow-overcommit",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("DOES NOT FIT"), "{stdout}");
    let (code, _, _) = check(&["profile", "check", profile]);
    assert_eq!(code, 0);
    let (code, stdout, _) = check(&["doctor", profile, "--set", one]);
    assert_eq!(code, 1, "{stdout}");
    let (code, _, _) = check(&["doctor", profile, "--set", one, "--allow-overcommit"]);
    assert_eq!(code, 0);
}

/// Plain TCP without heartbeats can show only `connected`; a gate on `established` is refused
/// before anything opens, instead of passing on connections nobody answered.
#[test]
fn an_established_gate_without_heartbeats_is_a_profile_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("silent.json");
    let profile = json!({
        "name": "silent", "target": "embedded", "connections": 10,
        "phases": [{"ramp": {"rate": 100}}, {"hold": {"for": "1s"}}],
        "thresholds": ["established_ratio >= 1"]
    });
    std::fs::write(&file, profile.to_string()).unwrap();
    let (code, _, stderr) = check(&["profile", "check", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("thresholds[0]"), "{stderr}");
    assert!(
        stderr.contains("add \\\"heartbeat\\\"") || stderr.contains("add \"heartbeat\""),
        "{stderr}"
    );
    // A phase figure must name a disruptive phase.
    let profile = json!({
        "name": "no-storm", "target": "embedded", "connections": 10,
        "heartbeat": {"interval": "1s"},
        "phases": [{"ramp": {"rate": 100}}, {"hold": {"for": "1s"}}],
        "thresholds": ["phases.1.recovered_ratio >= 1"]
    });
    std::fs::write(&file, profile.to_string()).unwrap();
    let (code, _, stderr) = check(&["profile", "check", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("phase 1 is a hold"), "{stderr}");
}
