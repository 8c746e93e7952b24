//! The port wall, reproduced exactly: a narrow per-socket port range caps one source address at
//! the range's size; more source addresses lift the cap in proportion.
//!
//! The runs happen in a network namespace of their own, because a listener anywhere on the
//! host (another test's sink on an ephemeral port) takes its port out of every `connect()`
//! pool; in a fresh namespace nothing else holds a port. Needs root, as CI has.

mod common;

use std::process::Command;

use common::{SinkHandle, read_json, repo};
use serde_json::json;
use stampede::run;

struct Namespace(String);

impl Namespace {
    fn new() -> Namespace {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test makes a network namespace and needs root (CI runs as root)"
        );
        let name = format!("stampede-ports-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("ip")
                .args(["-n", &name, "link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        Namespace(name)
    }

    /// Runs `stampede run profiles/many-sources.json ARGS...` inside the namespace.
    fn run_many_sources(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                env!("CARGO_BIN_EXE_stampede"),
                "run",
                "--quiet",
                "profiles/many-sources.json",
            ])
            .args(args)
            .arg("--out")
            .arg(dir.path())
            .current_dir(repo(""))
            .output()
            .unwrap();
        assert!(
            dir.path().join("summary.json").exists(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status.code(),
            read_json(&dir.path().join("summary.json")),
        )
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[test]
fn one_source_yields_exactly_the_range_and_three_reach_three_times() {
    let ns = Namespace::new();
    // many-sources.json: 1,500 connections, per-socket port range 40000-40499 (500 ports).
    let (code, one) = ns.run_many_sources(&[
        "--set",
        "sources.addrs=[\"127.0.20.1\"]",
        "--allow-overcommit",
    ]);
    assert_eq!(code, Some(1), "its thresholds fail");
    assert_eq!(one["connections"]["attempts"], 1500);
    assert_eq!(one["connections"]["established"], 500, "{}", one["errors"]);
    assert_eq!(one["errors"]["addr_not_available"], 1000);
    assert_eq!(one["sources"][0]["addr"], "127.0.20.1");
    assert_eq!(one["sources"][0]["established"], 500);

    let (code, three) = ns.run_many_sources(&[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        three["connections"]["established"], 1500,
        "{}",
        three["errors"]
    );
    let sources = three["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3);
    assert!(
        sources.iter().all(|s| s["established"] == 500),
        "{sources:?}"
    );
    common::assert_schema("summary.schema.json", &three);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_over_the_pool_is_refused_before_it_starts() {
    let sink = SinkHandle::start().await;
    let (options, _control_tx, _live_rx) = common::options(
        &json!({
            "name": "port-wall",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 700,
            "sources": {"addrs": ["127.0.31.9"], "port_range": "40000-40499"},
            "phases": [{"ramp": {"rate": 5000}}]
        }),
        1,
    );
    let err = run::execute(options).await.err().expect("refused");
    assert_eq!(err.exit_code(), 2);
    let text = err.to_string();
    assert!(
        text.contains("needs 700 connections but the source pool holds 500"),
        "{text}"
    );
    assert!(
        text.contains("Add 1 more source address(es) to sources.addrs (2 in all, e.g. \"127.0.31.9-127.0.31.10\")"),
        "{text}"
    );
    assert_eq!(
        sink.stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
