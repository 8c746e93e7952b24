//! MQTT 3.1.1 and 5 end to end: against the embedded sink's broker side and against a real
//! mosquitto started by the test; a CONNACK refusal classified with its reason code; a storm
//! where every client is kicked and comes back through a fresh CONNECT.

mod common;

use std::io::BufReader;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{run_json, wait_for_line};
use serde_json::{Value, json};
use stampede::metrics::ErrorKind;

/// A mosquitto broker on a free loopback port, stopped on drop.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start(allow_anonymous: bool) -> Mosquitto {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("mosquitto is installed (scripts/test installs it)");
        // mosquitto cannot report a port it chose, so the test picks a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous {allow_anonymous}\n\
                 persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n\
                 log_type notice\nlog_type information\nmax_keepalive 65535\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // Its readiness line comes once the listener is open.
        wait_for_line(&mut stderr, Duration::from_secs(10), |l| {
            l.contains(" running")
        });
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Mosquitto {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn profile(target: Value, connections: u64, mqtt: Value, phases: Value) -> Value {
    json!({
        "name": "mqtt",
        "target": target,
        "connections": connections,
        "protocol": "mqtt",
        "mqtt": mqtt,
        "heartbeat": {"interval": "500ms", "timeout": "3s"},
        "reconnect": {"policy": "immediate"},
        "phases": phases
    })
}

fn hold(ramp_rate: u64, hold: &str) -> Value {
    json!([{"ramp": {"rate": ramp_rate}}, {"hold": {"for": hold}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_levels_connect_subscribe_and_ping_against_the_embedded_sink() {
    hold_at_both_levels(
        json!("embedded"),
        json!({"subscribe": true, "topic_prefix": "devices"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mosquitto_accepts_every_client_id_once_and_answers_pings() {
    let broker = Mosquitto::start(true);
    // Duplicate client ids would make mosquitto take over the older session: the first
    // client would be disconnected and reconnect, which common::assert_clean_hold refuses.
    let target = json!({"addrs": [broker.addr.to_string()]});
    hold_at_both_levels(target, json!({"subscribe": true})).await;
}

/// 300 clients held for 1.5 s at each protocol level against `target`, with `mqtt` options.
async fn hold_at_both_levels(target: Value, mqtt: Value) {
    for version in ["3.1.1", "5"] {
        let mut options = mqtt.clone();
        options["version"] = json!(version);
        let p = profile(target.clone(), 300, options, hold(1000, "1500ms"));
        let result = run_json(&p, false, None).await;
        common::assert_clean_hold(&result.summary, 300);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_connack_is_counted_with_its_reason_code() {
    let broker = Mosquitto::start(false);
    for (version, label) in [("3.1.1", "reason code 0x05"), ("5", "reason code 0x87")] {
        let result = run_json(
            &json!({
                "name": "mqtt-refused",
                "target": {"addrs": [broker.addr.to_string()]},
                "connections": 20,
                "protocol": "mqtt",
                "mqtt": {"version": version},
                "reconnect": {"policy": "none"},
                "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "500ms"}}]
            }),
            false,
            None,
        )
        .await;
        let s = &result.summary;
        assert_eq!(s.connections.established, 0);
        assert_eq!(
            s.errors.0[ErrorKind::MqttConnackRefused as usize],
            20,
            "{:?}",
            s.errors
        );
        assert_eq!(
            s.error_details["mqtt_connack_refused"][label], 20,
            "{:?}",
            s.error_details
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_kicks_every_client_and_all_come_back_through_a_fresh_connect() {
    let n = 1000;
    let p = profile(
        json!("embedded"),
        n,
        json!({"version": "5"}),
        common::storm_phases(),
    );
    let result = run_json(&p, false, None).await;
    // Every establishment, first or after the storm, went through CONNECT / CONNACK.
    common::assert_storm_recovered(&result.summary, n, "mqtt");
}

/// The fan-out probe reached exactly the subscribers of each message's topic: no more than
/// `published x subscribers per topic`, and no fewer than that for the messages published
/// after the last client subscribed and a second before the run ended (QoS 0 on loopback
/// loses nothing else; the second is for a busy host's teardown). Every message arrived
/// stamped, so each one was timed.
fn assert_fanout(s: &stampede::report::summary::Summary, n: u64, topics: u64, rate: f64) {
    let per_topic = n / topics;
    let m = &s.messages;
    let plan_end = s.phases.last().unwrap().end_s;
    assert!(
        m.published as f64 >= rate * (plan_end - 1.0),
        "published {} by {plan_end} s at {rate}/s",
        m.published
    );
    let all_subscribed = s.connections.last_established_s.unwrap();
    let before = (rate * (all_subscribed + 0.25)).ceil() as u64;
    let in_flight = rate.ceil() as u64;
    let lower = m.published.saturating_sub(before + in_flight) * per_topic;
    let upper = m.published * per_topic;
    assert!(
        (lower..=upper).contains(&m.received),
        "received {} of {} published to {per_topic} subscribers each; expected {lower}..={upper}",
        m.received,
        m.published
    );
    assert_eq!(s.latency_us.delivery.count, m.received);
}

fn fanout_profile(target: Value, version: &str) -> Value {
    profile(
        target,
        300,
        json!({"version": version, "subscribe": true,
               "fanout": {"topics": 10, "rate": 100, "payload_bytes": 200}}),
        hold(3000, "2s"),
    )
}

/// The fan-out probe at both protocol levels against `target`, named `peer` in the log.
async fn fanout_at_both_levels(target: Value, peer: &str) {
    for version in ["3.1.1", "5"] {
        let result = run_json(&fanout_profile(target.clone(), version), false, None).await;
        let s = &result.summary;
        common::assert_clean_hold(s, 300);
        assert_fanout(s, 300, 10, 100.0);
        eprintln!(
            "fan-out {version} ({peer}): {:?}, delivery p50 {:?} us p99 {:?} us",
            s.messages, s.latency_us.delivery.p50, s.latency_us.delivery.p99
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_each_topics_subscribers_and_times_delivery_against_the_sink() {
    fanout_at_both_levels(json!("embedded"), "sink").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_through_a_real_mosquitto() {
    let broker = Mosquitto::start(true);
    fanout_at_both_levels(json!({"addrs": [broker.addr.to_string()]}), "mosquitto").await;
}

/// A local swarm of two agents: each runs its own publisher at half the rate, for its own
/// subscribers on its own topics, so every message reaches the 10 subscribers of its topic in
/// its agent and none in the other (shared topics would double `received`).
#[test]
fn each_agent_of_a_swarm_publishes_for_its_own_subscribers() {
    let mut p = fanout_profile(json!("embedded"), "5");
    p["connections"] = json!(200);
    let s = common::run_local_swarm(&p, 2);
    let published = s["messages"]["published"].as_u64().unwrap();
    let received = s["messages"]["received"].as_u64().unwrap();
    let plan_end = s["phases"].as_array().unwrap().last().unwrap()["end_s"]
        .as_f64()
        .unwrap();
    let last = s["connections"]["last_established_s"].as_f64().unwrap();
    assert_eq!(
        s["errors"]
            .as_object()
            .unwrap()
            .values()
            .filter(|v| v != &&json!(0))
            .count(),
        0
    );
    assert!(
        published as f64 >= 100.0 * (plan_end - 1.0),
        "{published} by {plan_end} s"
    );
    let per_topic = 10;
    let upper = published * per_topic;
    // Less what went out before the last subscription and in the last second.
    let lower = published.saturating_sub((100.0 * (last + 1.5)).ceil() as u64) * per_topic;
    assert!(
        (lower..=upper).contains(&received),
        "received {received} of {published}; expected {lower}..={upper}"
    );
    assert_eq!(
        s["latency_us"]["delivery"]["count"].as_u64(),
        Some(received)
    );
}
