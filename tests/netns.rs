//! A swarm across real network stacks: agents, coordinator and sink each in a network
//! namespace of their own (scripts/swarm-netns.sh), with a token, non-loopback addresses and
//! an allowlist. Needs root, as CI has.

mod common;

use std::process::Command;

use common::{read_json, repo};

/// Removes the namespaces whatever happens to the test.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(repo("scripts/swarm-netns.sh"))
            .args(["down", "--prefix", &self.0])
            .status();
    }
}

#[test]
fn swarm_runs_across_network_namespaces() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test builds network namespaces and needs root (CI runs as root)"
    );
    let prefix = format!("t{}", std::process::id() % 100_000);
    let _cleanup = Cleanup(prefix.clone());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(repo("scripts/swarm-netns.sh"))
        .args([
            "run",
            "--prefix",
            &prefix,
            "--agents",
            "3",
            "--connections",
            "600",
            "--hold",
            "2s",
            "--out",
        ])
        .arg(dir.path())
        .env("STAMPEDE_BIN", env!("CARGO_BIN_EXE_stampede"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let summary = read_json(&dir.path().join("summary.json"));
    assert_eq!(summary["outcome"], "pass");
    assert_eq!(summary["connections"]["established"], 600);
    let agents = summary["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3);
    assert!(
        agents
            .iter()
            .all(|a| a["status"] == "finished" && a["share"] == 200)
    );
    let sources: Vec<&str> = summary["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["addr"].as_str().unwrap())
        .collect();
    assert_eq!(sources.len(), 12, "{sources:?}");
    assert!(
        sources.iter().all(|s| s.starts_with("10.213.")),
        "{sources:?}"
    );
    assert_eq!(summary["targets"][0]["addr"], "10.213.0.2:7000");
    // The namespaces are gone once the script ends.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&format!("{prefix}-")));
}
