//! HTTP/2 (h2c, prior knowledge) end to end against the embedded sink: one streaming request
//! per connection held open, HTTP/2 PING as the heartbeat, and a storm where every connection
//! is kicked and comes back through a fresh preface, SETTINGS and request.

mod common;

use common::run_json;
use serde_json::{Value, json};

fn profile(connections: u64, phases: Value) -> Value {
    json!({
        "name": "h2",
        "target": "embedded",
        "connections": connections,
        "protocol": "http2",
        "http2": {"path": "/push?v=1", "headers": {"authorization": "Bearer t"}},
        "heartbeat": {"interval": "500ms", "timeout": "3s"},
        "reconnect": {"policy": "immediate"},
        "phases": phases
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_holds_a_stream_and_answers_pings() {
    let n = 300;
    let result = run_json(
        &profile(
            n,
            json!([{"ramp": {"rate": 1000}}, {"hold": {"for": "1500ms"}}]),
        ),
        false,
        None,
    )
    .await;
    let s = &result.summary;
    common::assert_clean_hold(s, n);
    // Without a push interval the sink sends one stamped DATA frame as each stream opens.
    assert_eq!(s.messages.received, n, "{:?}", s.messages);
    assert_eq!(s.latency_us.delivery.count, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_frames_are_counted_and_timed() {
    let n = 200;
    let mut p = profile(
        n,
        json!([{"ramp": {"rate": 2000}}, {"hold": {"for": "2s"}}]),
    );
    p["http2"]["push_interval"] = json!("250ms");
    let s = run_json(&p, false, None).await.summary;
    assert_eq!(s.error_total(), 0, "{:?} {:?}", s.errors, s.error_details);
    assert_eq!(s.connections.open_at_end, n);
    // Stream i opened at t_i gets a frame at once and one each 250 ms until the run ends:
    // at most 1 + floor((D - t_i) / 0.25) by the run's full duration D (teardown included),
    // and at least the pushes due before the plan's end, less two for a busy host's late
    // ticks and a frame still on its way.
    let every = 0.25;
    let d = s.duration_s;
    let plan_end = s.phases.last().unwrap().end_s;
    let last_open = s.connections.last_established_s.unwrap();
    let upper = n * (1 + (d / every).floor() as u64);
    let lower = n * (((plan_end - last_open) / every).floor() as u64).saturating_sub(1);
    let received = s.messages.received;
    assert!(
        (lower..=upper).contains(&received),
        "{received} frames; expected {lower}..={upper}"
    );
    // Every frame was stamped, so every one was timed.
    assert_eq!(s.latency_us.delivery.count, received);
    eprintln!(
        "h2 push: {received} frames, delivery p50 {:?} us p99 {:?} us",
        s.latency_us.delivery.p50, s.latency_us.delivery.p99
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_binary_pushes_every_interval() {
    let sink = common::SinkProcess::start_with(&["--protocol", "h2", "--push-interval", "100ms"]);
    let n = 50;
    let mut p = profile(
        n,
        json!([{"ramp": {"rate": 1000}}, {"hold": {"for": "1s"}}]),
    );
    p["target"] = json!({"addrs": [sink.addr.to_string()]});
    let s = run_json(&p, false, None).await.summary;
    assert_eq!(s.error_total(), 0, "{:?} {:?}", s.errors, s.error_details);
    // The frame at open and about ten pushes each; without the flag it would be one each.
    // Half that allows for a busy host's late timer ticks.
    let received = s.messages.received;
    assert!(received >= n * 5, "{received} frames from {n} streams");
    assert_eq!(s.latency_us.delivery.count, received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_kicks_every_connection_and_all_come_back_through_a_fresh_handshake() {
    let n = 1000;
    let result = run_json(&profile(n, common::storm_phases()), false, None).await;
    common::assert_storm_recovered(&result.summary, n, "h2");
}

/// A one-purpose h2 server on loopback: accepts each connection's request, answers 200, then
/// resets the stream (`reset`) or sends GOAWAY.
async fn hostile_server(reset: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                if reset {
                    // Accept the stream, then refuse it: RST_STREAM REFUSED_STREAM (0x7).
                    if let Some(Ok((_request, mut respond))) = conn.accept().await {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    }
                } else {
                    // GOAWAY ENHANCE_YOUR_CALM (0xb): the overloaded gateway's answer.
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                }
                // Keep driving the connection so the frame goes out.
                while let Some(Ok(_)) = conn.accept().await {}
                // Then keep the socket open a while: closing it with the client's frames
                // unread would reset the connection under the GOAWAY, as a gateway that
                // lingers does not.
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                drop(conn);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_and_rst_stream_are_classified_with_their_error_codes() {
    for (reset, kind, label) in [
        (true, "h2_reset", "error code 0x7"),
        (false, "h2_goaway", "error code 0xb"),
    ] {
        let addr = hostile_server(reset).await;
        let result = run_json(
            &json!({
                "name": "h2-hostile",
                "target": {"addrs": [addr.to_string()]},
                "connections": 20,
                "protocol": "http2",
                "reconnect": {"policy": "none"},
                "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "500ms"}}]
            }),
            false,
            None,
        )
        .await;
        let s = &result.summary;
        assert_eq!(s.connections.established, 0, "{kind}");
        assert_eq!(
            s.error_details.get(kind).and_then(|d| d.get(label)),
            Some(&20),
            "{kind}: {:?} {:?}",
            s.errors,
            s.error_details
        );
    }
}

/// A local swarm starts its own sink processes for the embedded target: they must push at the
/// profile's interval too (without it each stream would get its one opening frame).
#[test]
fn a_local_swarms_sinks_push_at_the_profiles_interval() {
    let n = 100;
    let mut p = profile(
        n,
        json!([{"ramp": {"rate": 1000}}, {"hold": {"for": "1s"}}]),
    );
    p["http2"]["push_interval"] = json!("100ms");
    let s = common::run_local_swarm(&p, 2);
    let received = s["messages"]["received"].as_u64().unwrap();
    // About ten pushes a stream; half that allows for a busy host's late ticks.
    assert!(received >= n * 5, "{received} frames from {n} streams");
    assert_eq!(
        s["latency_us"]["delivery"]["count"].as_u64(),
        Some(received)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_sink_is_chosen_by_alpn_and_pushes() {
    let n = 200;
    let mut p = profile(
        n,
        json!([{"ramp": {"rate": 2000}}, {"hold": {"for": "1s"}}]),
    );
    p["http2"]["scheme"] = json!("https");
    p["http2"]["push_interval"] = json!("200ms");
    p["tls"] = json!({"server_name": "localhost"});
    let s = run_json(&p, false, None).await.summary;
    assert_eq!(s.error_total(), 0, "{:?} {:?}", s.errors, s.error_details);
    assert_eq!(s.connections.established, n);
    assert_eq!(s.connections.open_at_end, n);
    // TLS, then the HTTP/2 preface, SETTINGS and the request, timed as one handshake.
    assert_eq!(s.latency_us.handshake.count, n);
    common::assert_heartbeats_answered(&s, n / 5);
    // The frame at open and about five pushes each; without them it would be n.
    assert!(s.messages.received >= n * 3, "{:?}", s.messages);
    assert_eq!(s.latency_us.delivery.count, s.messages.received);
}

/// A TLS server that does not choose h2 by ALPN (the sink's plain TLS echo) fails every
/// connection at its handshake, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_without_alpn_h2_is_a_classified_handshake_failure() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("sink.pem");
    let pem_arg = pem.display().to_string();
    let sink = common::SinkProcess::start_with(&["--protocol", "tls", "--cert-out", &pem_arg]);
    let n = 20;
    let mut p = profile(
        n,
        json!([{"ramp": {"rate": 1000}}, {"hold": {"for": "300ms"}}]),
    );
    p["target"] = json!({"addrs": [sink.addr.to_string()]});
    p["reconnect"] = json!({"policy": "none"});
    p["http2"]["scheme"] = json!("https");
    p["tls"] = json!({"server_name": "localhost", "ca_file": pem});
    let s = run_json(&p, false, None).await.summary;
    assert_eq!(s.connections.established, 0);
    assert_eq!(
        s.error_details["tls_handshake"]["server did not choose h2 by ALPN"], n,
        "{:?}",
        s.error_details
    );
}
