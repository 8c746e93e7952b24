//! The port wall, reproduced exactly: a narrow per-socket port range caps one source address at
//! the range's size; more source addresses lift the cap in proportion.

mod common;

use common::{SinkHandle, run_json};
use serde_json::json;
use stampede::metrics::ErrorKind;
use stampede::profile::Profile;
use stampede::run::{self, Progress, RunOptions};

fn profile(target: std::net::SocketAddr, sources: &[&str], connections: u64) -> serde_json::Value {
    json!({
        "name": "port-wall",
        "target": {"addrs": [target.to_string()]},
        "connections": connections,
        "sources": {"addrs": sources, "port_range": "40000-40499"},
        "connect_timeout": "5s",
        "phases": [{"ramp": {"rate": 5000}}, {"hold": {"for": "500ms"}}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_yields_exactly_the_range_and_three_reach_three_times() {
    let sink = SinkHandle::start().await;

    let one = run_json(&profile(sink.addr, &["127.0.31.1"], 700), true, None).await;
    let s = &one.summary;
    assert_eq!(s.connections.attempts, 700);
    assert_eq!(s.connections.established, 500, "{:?}", s.errors);
    assert_eq!(s.errors.0[ErrorKind::AddrNotAvailable as usize], 200);
    assert_eq!(s.error_total(), 200);
    assert_eq!(s.sources.len(), 1);
    assert_eq!(s.sources[0].established, 500);
    assert_eq!(
        s.sources[0].errors.0[ErrorKind::AddrNotAvailable as usize],
        200
    );

    let three = run_json(
        &profile(sink.addr, &["127.0.31.2-127.0.31.4"], 1500),
        false,
        None,
    )
    .await;
    let s = &three.summary;
    assert_eq!(s.connections.established, 1500, "{:?}", s.errors);
    assert_eq!(s.error_total(), 0);
    assert!(
        s.sources.iter().all(|src| src.established == 500),
        "{:?}",
        s.sources
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_over_the_pool_is_refused_before_it_starts() {
    let sink = SinkHandle::start().await;
    let profile = Profile::from_value(profile(sink.addr, &["127.0.31.9"], 700)).unwrap();
    let (_control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    let err = run::execute(RunOptions {
        profile,
        out_dir: None,
        junit: None,
        workers: Some(1),
        allow_overcommit: false,
        progress: Progress::Silent,
        control_rx,
        live_tx: None,
    })
    .await
    .err()
    .expect("refused");
    assert_eq!(err.exit_code(), 2);
    let text = err.to_string();
    assert!(
        text.contains("needs 700 connections but the source pool holds 500"),
        "{text}"
    );
    assert!(text.contains("Add 1 more source address(es) to sources.addrs (2 in all, e.g. \"127.0.31.9-127.0.31.10\")"), "{text}");
    assert_eq!(
        sink.stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
