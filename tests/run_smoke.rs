//! The README's first command, run headless with outputs: passes its thresholds, and every
//! output file is what it claims to be.

mod common;

use std::time::Duration;

use common::{assert_schema, bin, read_json, repo, wait_child};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

#[test]
fn smoke_profile_passes_and_writes_valid_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let mut child = bin()
        .args(["run", "profiles/smoke.json", "--headless", "--out"])
        .arg(dir.path())
        .arg("--junit")
        .arg(&junit)
        .current_dir(repo(""))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(30));
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // One progress line a second, then a human summary.
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert!((11..=14).contains(&progress.len()), "{stderr}");
    assert!(
        progress
            .iter()
            .any(|l| l.contains("hold") && l.contains("2000/2000")),
        "{stderr}"
    );
    assert!(
        stdout.contains("PASS") && stdout.contains("heartbeat_rtt"),
        "{stdout}"
    );

    let summary = read_json(&dir.path().join("summary.json"));
    assert_schema("summary.schema.json", &summary);
    assert_eq!(summary["outcome"], "pass");
    assert_eq!(summary["connections"]["established"], 2000);
    assert_eq!(summary["connections"]["peak_open"], 2000);
    assert_eq!(summary["thresholds"].as_array().unwrap().len(), 4);
    let heartbeats = summary["latency_us"]["heartbeat_rtt"]["count"]
        .as_u64()
        .unwrap();
    // 2,000 connections x ~10-11 heartbeats each, plus the first, sent at once to prove
    // the connection is served.
    assert!((20_000..=26_000).contains(&heartbeats), "{heartbeats}");
    let phases = summary["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[0]["name"], "ramp");
    assert!((phases[1]["end_s"].as_f64().unwrap() - 12.0).abs() < 0.5);

    // The hlog holds one histogram per metric per interval, and its counts add up to the
    // summary's: nothing lost between the interval log and the totals.
    let log = std::fs::read(dir.path().join("latency.hlog")).unwrap();
    let mut connect_count = 0u64;
    let mut intervals = 0;
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(h) = entry.unwrap() {
            intervals += 1;
            if h.tag().map(|t| t.as_str()) == Some("connect") {
                connect_count += decode(h.encoded_histogram()).len();
            }
        }
    }
    assert!(intervals >= 36, "{intervals}");
    assert_eq!(connect_count, 2000);

    // HdrHistogram's own log reader (Python hdrh) agrees with the summary, count and p99.
    let out = std::process::Command::new("python3")
        .arg(repo("scripts/hlog-read.py"))
        .arg(dir.path().join("latency.hlog"))
        .output()
        .expect("python3 runs (scripts/test installs hdrhistogram)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (tag, key) in [
        ("connect", "connect"),
        ("connect_service", "connect_service"),
        ("heartbeat_rtt", "heartbeat_rtt"),
    ] {
        assert_eq!(
            read["tags"][tag]["count"], summary["latency_us"][key]["count"],
            "{tag}"
        );
        assert_eq!(
            read["tags"][tag]["p99"], summary["latency_us"][key]["p99"],
            "{tag}"
        );
    }

    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 4, "{xml}");
    assert!(xml.contains("failures=\"0\""), "{xml}");
}

fn decode(base64: &str) -> hdrhistogram::Histogram<u64> {
    use base64::Engine;
    use hdrhistogram::serialization::Deserializer;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .unwrap();
    Deserializer::new().deserialize(&mut &bytes[..]).unwrap()
}
