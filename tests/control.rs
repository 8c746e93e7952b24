//! Live snapshots and controls: a view sees the run each second, can pause opening new
//! connections, resume, and stop gracefully.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::SinkHandle;
use serde_json::json;
use stampede::live::{Control, LiveRx, LiveSnapshot, RunState};
use stampede::run;

/// The next live snapshot, within a bound.
async fn next(rx: &mut LiveRx) -> Arc<LiveSnapshot> {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a snapshot a second")
        .expect("run alive");
    rx.borrow_and_update().clone().expect("snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_ramp_and_resume_finishes_it() {
    let sink = SinkHandle::start().await;
    let profile = json!({
        "name": "pausable",
        "target": {"addrs": [sink.addr.to_string()]},
        "connections": 300,
        "phases": [{"ramp": {"rate": 100}}, {"hold": {"for": "1s"}}]
    });
    let (options, control_tx, mut live_rx) = common::options(&profile, 2);
    let run = tokio::spawn(run::execute(options));
    let first = next(&mut live_rx).await;
    assert_eq!(first.state, RunState::Running);
    assert!(first.open > 0 && first.open < 300, "{}", first.open);
    control_tx.send(Control::Pause).unwrap();
    let paused_a = next(&mut live_rx).await;
    let paused_b = next(&mut live_rx).await;
    assert_eq!(paused_b.state, RunState::Paused);
    assert_eq!(
        paused_a.open, paused_b.open,
        "no new connections while paused"
    );
    assert_eq!(paused_b.interval.attempts, 0);
    control_tx.send(Control::Resume).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result.summary.connections.connected, 300);
    assert!(
        result.summary.duration_s > 5.0,
        "{}",
        result.summary.duration_s
    );
    let last = live_rx.borrow().clone().unwrap();
    assert_eq!(last.state, RunState::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_from_a_view_aborts_gracefully() {
    let sink = SinkHandle::start().await;
    let profile = json!({
        "name": "stoppable",
        "target": {"addrs": [sink.addr.to_string()]},
        "connections": 100,
        "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "60s"}}]
    });
    let (options, control_tx, mut live_rx) = common::options(&profile, 1);
    let run = tokio::spawn(run::execute(options));
    tokio::time::timeout(Duration::from_secs(5), live_rx.changed())
        .await
        .unwrap()
        .unwrap();
    control_tx
        .send(Control::Stop("stopped from the dashboard".into()))
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result.exit_code, 3);
    assert_eq!(
        result.summary.abort_reason.as_deref(),
        Some("stopped from the dashboard")
    );
    assert_eq!(result.summary.connections.connected, 100);
}
