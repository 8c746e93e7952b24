//! Deploy scenarios checked for physics, not presence: a drain keeps the connect rate near
//! connections/window and ends whole; a storm's peak is far higher; full-jitter backoff
//! spreads reconnections over its window; a cutover moves every connection to green.

mod common;

use common::{SinkHandle, run_json};
use serde_json::{Value, json};

fn profile(target: &str, extra_phase: Value, reconnect: Value, connections: u64) -> Value {
    json!({
        "name": "scenario",
        "target": {"addrs": [target]},
        "connections": connections,
        "heartbeat": {"interval": "1s", "timeout": "2s"},
        "reconnect": reconnect,
        "phases": [{"ramp": {"rate": 4000}}, {"hold": {"for": "1s"}}, extra_phase]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_keeps_the_connect_rate_flat_and_ends_whole_while_a_storm_spikes() {
    let sink = SinkHandle::start().await;
    let target = sink.addr.to_string();
    let drain = run_json(
        &profile(
            &target,
            json!({"drain": {"over": "20s", "for": "21s"}}),
            json!({"policy": "immediate"}),
            2000,
        ),
        false,
        None,
    )
    .await;
    let s = &drain.summary;
    assert_eq!(s.error_total(), 0, "{:?}", s.errors);
    assert_eq!(s.connections.reconnects, 2000);
    assert_eq!(
        s.connections.open_at_end, 2000,
        "ends with every connection open"
    );
    let phase = s.phases.iter().find(|p| p.name == "drain").unwrap();
    // 2,000 connections over 20 s: 100 connects a second. Over the inner seconds (away from the
    // window's edges) the mean stays within 10% of that, and no second strays more than 30%
    // (a late wake-up on a busy machine moves a few closes into the next second).
    let start = phase.start_s as u64;
    let inner: Vec<u64> = s
        .timeline
        .iter()
        .filter(|p| p.second > start + 1 && p.second < start + 19)
        .map(|p| p.connects)
        .collect();
    assert!(inner.len() >= 15, "{inner:?}");
    assert!(
        inner.iter().all(|c| (80..=120).contains(c)),
        "connects per second: {inner:?}"
    );
    assert!(
        phase.peak_connects_per_s <= 130,
        "{}",
        phase.peak_connects_per_s
    );
    assert_eq!(
        phase.recovery_99_s,
        Some(0.0),
        "never more than 1% down at once"
    );

    let storm = run_json(
        &profile(
            &target,
            json!({"storm": {"fraction": 1.0, "for": "3s"}}),
            json!({"policy": "immediate"}),
            2000,
        ),
        false,
        None,
    )
    .await;
    let s = &storm.summary;
    let phase = s.phases.iter().find(|p| p.name == "storm").unwrap();
    assert_eq!(phase.reconnects, 2000);
    assert_eq!(s.connections.open_at_end, 2000);
    assert!(
        phase.peak_connects_per_s >= 1500,
        "{}",
        phase.peak_connects_per_s
    );
    assert!(
        phase.peak_connects_per_s >= 10 * 140,
        "the storm's peak is an order of magnitude above the drain's"
    );
    assert!(
        phase.recovery_100_s.is_some_and(|t| t < 2.0),
        "{:?}",
        phase.recovery_100_s
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_jitter_spreads_reconnections_over_the_backoff_window() {
    let sink = SinkHandle::start().await;
    let result = run_json(
        &profile(
            &sink.addr.to_string(),
            json!({"storm": {"fraction": 1.0, "mode": "reset", "for": "4s"}}),
            json!({"policy": "exponential", "base": "2s", "cap": "10s", "jitter": "full", "max_attempts": 5}),
            1000,
        ),
        false,
        None,
    )
    .await;
    let s = &result.summary;
    assert_eq!(s.connections.reconnects, 1000, "{:?}", s.errors);
    // Full jitter: the first reconnect waits uniformly in [0, 2 s), so completions (timed from
    // the storm) are spread evenly across that window.
    let r = &s.latency_us.recovery;
    let (p50, p90, max) = (r.p50.unwrap(), r.p90.unwrap(), r.max.unwrap());
    assert!(r.min.unwrap() < 150_000, "{r:?}");
    assert!((800_000..=1_200_000).contains(&p50), "{r:?}");
    assert!(p90 >= 1_650_000, "{r:?}");
    assert!(max <= 2_200_000, "{r:?}");
    let phase = s.phases.iter().find(|p| p.name == "storm").unwrap();
    assert!(
        phase.peak_connects_per_s <= 650,
        "{}",
        phase.peak_connects_per_s
    );
    assert!(
        phase
            .recovery_99_s
            .is_some_and(|t| (1.7..=2.3).contains(&t)),
        "{:?}",
        phase.recovery_99_s
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_moves_every_connection_to_green() {
    let blue = SinkHandle::start().await;
    let green = SinkHandle::start().await;
    let result = run_json(
        &json!({
            "name": "cutover",
            "target": {"addrs": [blue.addr.to_string()]},
            "connections": 600,
            "reconnect": {"policy": "immediate"},
            "phases": [
                {"ramp": {"rate": 3000}},
                {"hold": {"for": "500ms"}},
                {"cutover": {"to": [green.addr.to_string()], "over": "2s", "for": "3s"}}
            ]
        }),
        false,
        None,
    )
    .await;
    let s = &result.summary;
    assert_eq!(s.error_total(), 0, "{:?}", s.errors);
    assert_eq!(s.targets.len(), 2);
    assert_eq!(s.targets[0].addr, blue.addr.to_string());
    assert_eq!(s.targets[0].connected, 600);
    assert_eq!(s.targets[0].closed, 600, "every blue connection was moved");
    assert_eq!(s.targets[1].connected, 600);
    assert_eq!(s.connections.open_at_end, 600);
    assert_eq!(
        green
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        600
    );
    assert_eq!(
        blue.stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        600
    );
}

#[test]
fn a_server_side_close_all_recovers_with_the_policys_timing() {
    // The embedded sink plays the deploy from its side; clients wait the fixed policy's
    // second, then all come back.
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("server.json");
    std::fs::write(
        &profile,
        json!({
            "name": "server-close",
            "target": "embedded",
            "connections": 500,
            "heartbeat": {"interval": "500ms", "timeout": "2s"},
            "reconnect": {"policy": "fixed", "delay": "1s", "max_attempts": 3},
            "phases": [
                {"ramp": {"rate": 2000}},
                {"hold": {"for": "500ms"}},
                {"server": {"do": "close_all", "for": "3s"}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let out = common::bin()
        .args(["run", "--quiet", "--out"])
        .arg(dir.path())
        .arg(&profile)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = common::read_json(&dir.path().join("summary.json"));
    assert_eq!(
        summary["errors"]["closed_by_peer"], 500,
        "{}",
        summary["errors"]
    );
    assert_eq!(summary["connections"]["reconnects"], 500);
    assert_eq!(summary["connections"]["open_at_end"], 500);
    let phase = &summary["phases"][2];
    assert_eq!(phase["name"], "server");
    assert_eq!(phase["reconnect_attempts"], json!([500]));
    // Every reconnection completes one policy delay after the close, give or take scheduling.
    let recovery = &summary["latency_us"]["recovery"];
    assert!(recovery["min"].as_u64().unwrap() >= 950_000, "{recovery}");
    assert!(recovery["max"].as_u64().unwrap() <= 1_400_000, "{recovery}");
    let back = phase["recovery_100_s"].as_f64().unwrap();
    assert!((0.95..=1.4).contains(&back), "{phase}");
}
