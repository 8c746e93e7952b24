//! The kernel-NAT load balancer (scripts/nlb-kernel-nat.sh): nftables SNAT to a bounded port
//! range in a network namespace shows the same port wall and idle-timeout resets as the
//! user-space emulator, with no proxy sockets. Needs root and nftables, as CI has.

mod common;

use std::process::Command;

use common::{read_json, repo};

fn run_script(prefix: &str, args: &[&str]) -> serde_json::Value {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test builds network namespaces and needs root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(repo("scripts/nlb-kernel-nat.sh"))
        .args(["run", "--prefix", prefix])
        .args(args)
        .arg("--out")
        .arg(dir.path())
        .env("STAMPEDE_BIN", env!("CARGO_BIN_EXE_stampede"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The script removes its namespaces on the way out.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&format!("{prefix}-")));
    read_json(&dir.path().join("summary.json"))
}

#[test]
fn a_bounded_snat_range_refuses_exactly_the_excess() {
    let prefix = format!("k{}", std::process::id() % 100_000);
    let summary = run_script(
        &prefix,
        &["--ports", "200", "--connections", "300", "--hold", "3s"],
    );
    assert_eq!(summary["connections"]["established"], 200, "{summary:#}");
    // The NAT has no port for them: their SYNs are dropped, as an NLB drops them.
    assert_eq!(summary["errors"]["connect_timeout"], 100);
}

#[test]
fn conntrack_forgets_idle_flows_and_resets_their_next_packet() {
    let prefix = format!("i{}", std::process::id() % 100_000);
    let summary = run_script(
        &prefix,
        &[
            "--connections",
            "50",
            "--idle",
            "1",
            "--heartbeat",
            "2s",
            "--hold",
            "3s",
        ],
    );
    assert_eq!(summary["connections"]["established"], 50);
    assert_eq!(summary["errors"]["reset"], 50, "{:#}", summary["errors"]);
}
