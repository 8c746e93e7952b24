//! `stampede doctor` reports this host's limits and, for a profile, each shortfall with a fix.

mod common;

use common::{bin, repo};

#[test]
fn doctor_reports_host_limits() {
    let out = bin().arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for fact in [
        "RLIMIT_NOFILE",
        "ip_local_port_range",
        "somaxconn",
        "tcp_max_syn_backlog",
        "tcp_mem",
        "conntrack",
        "local addresses",
    ] {
        assert!(text.contains(fact), "missing {fact}:\n{text}");
    }
}

#[test]
fn doctor_sizes_a_profile_and_gives_fixes() {
    let out = bin()
        .args(["doctor", "profiles/many-sources.json"])
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = bin()
        .args([
            "doctor",
            "profiles/many-sources.json",
            "--set",
            "connections=100000",
        ])
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SHORT file descriptors"), "{text}");
    assert!(text.contains("ulimit -Hn"), "{text}");
    assert!(text.contains("SHORT source ports"), "{text}");
    assert!(
        text.contains("verdict: this host can hold 1500 of the 100000"),
        "{text}"
    );
}
