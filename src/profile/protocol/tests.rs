//! Unit tests of `protocol`.

use crate::profile::{Profile, ProfileError};

fn profile(extra: &str) -> Result<Profile, ProfileError> {
    Profile::from_json(
        &format!(
            r#"{{"name": "p", "target": "embedded", "connections": 1,
            "heartbeat": {{"interval": "1s"}}, "phases": [{{"hold": {{"for": "1s"}}}}] {extra}}}"#
        ),
        &[],
    )
}

fn error(extra: &str) -> ProfileError {
    match profile(extra) {
        Ok(_) => panic!("{extra} was accepted"),
        Err(e) => e,
    }
}

#[test]
fn protocols_parse_with_their_defaults() {
    let p = profile(r#", "protocol": "tls""#).unwrap();
    let tls = p.protocol_options.tls.unwrap();
    assert!(tls.verify && tls.resumption && tls.server_name.is_none());
    let p = profile(r#", "protocol": "websocket", "websocket": {"scheme": "wss", "path": "/push?v=2", "headers": {"Authorization": "Bearer x"}}, "tls": {"verify": false}"#).unwrap();
    let ws = p.protocol_options.websocket.unwrap();
    assert!(ws.secure);
    assert_eq!(ws.path, "/push?v=2");
    assert!(!p.protocol_options.tls.unwrap().verify);
    assert!(profile("").unwrap().protocol_options.tls.is_none());
}

#[test]
fn errors_name_the_field_the_value_and_the_fix() {
    let e = error(r#", "protocol": "quic""#);
    assert_eq!(e.path, "protocol");
    assert!(
        e.message.contains("\"quic\"") && e.message.contains("tls"),
        "{e}"
    );
    let e = error(r#", "tls": {"verify": false}"#);
    assert_eq!(e.path, "tls");
    assert!(e.message.contains("\"protocol\": \"tls\""), "{e}");
    let e = error(r#", "protocol": "tls", "tls": {"sni": "x"}"#);
    assert_eq!(e.path, "tls.sni");
    let e = error(r#", "protocol": "websocket", "websocket": {"scheme": "http"}"#);
    assert_eq!(e.path, "websocket.scheme");
    let e = error(r#", "protocol": "websocket", "websocket": {"path": "push"}"#);
    assert_eq!(e.path, "websocket.path");
    let e = Profile::from_json(
        r#"{"name": "p", "target": {"addrs": ["127.0.0.1:9"]}, "connections": 1,
            "protocol": "tls", "phases": [{"hold": {"for": "1s"}}]}"#,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.path, "tls.ca_file");
    assert!(e.message.contains("\"verify\": false"), "{e}");
    let e = Profile::from_json(
        r#"{"name": "p", "target": "embedded", "connections": 1, "protocol": "websocket",
            "heartbeat": {"interval": "1s", "payload_bytes": 200},
            "phases": [{"hold": {"for": "1s"}}]}"#,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.path, "heartbeat.payload_bytes");
    assert!(e.message.contains("125"), "{e}");
}

#[test]
fn mqtt_options_parse_and_refuse_with_the_fix() {
    use crate::profile::protocol::MqttVersion;
    let p = profile(r#", "protocol": "mqtt""#).unwrap();
    let m = p.protocol_options.mqtt.unwrap();
    assert_eq!(m.version, MqttVersion::V311);
    // Twice the 1 s heartbeat: room for a missed PINGREQ before the broker gives up.
    assert_eq!(m.keep_alive_s, 2);
    assert!(m.clean_session && !m.subscribe);
    let p = profile(
        r#", "protocol": "mqtt", "mqtt": {"version": "5", "subscribe": true, "topic_prefix": "dev", "client_id_prefix": "fleet-a"}"#,
    )
    .unwrap();
    let m = p.protocol_options.mqtt.unwrap();
    assert_eq!((m.version, m.subscribe), (MqttVersion::V5, true));
    for (extra, path, says) in [
        (r#", "mqtt": {}"#, "mqtt", "\"protocol\": \"mqtt\""),
        (
            r#", "protocol": "mqtt", "mqtt": {"version": "4"}"#,
            "mqtt.version",
            "\"3.1.1\" or \"5\"",
        ),
        (
            r#", "protocol": "mqtt", "mqtt": {"client_id_prefix": "a b"}"#,
            "mqtt.client_id_prefix",
            "\"a b\"",
        ),
        (
            r#", "protocol": "mqtt", "mqtt": {"topic_prefix": "x"}"#,
            "mqtt.topic_prefix",
            "\"subscribe\": true",
        ),
        (
            r#", "protocol": "mqtt", "mqtt": {"subscribe": true, "topic_prefix": "a/#"}"#,
            "mqtt.topic_prefix",
            "wildcards",
        ),
        (
            r#", "protocol": "mqtt", "mqtt": {"password": "p"}"#,
            "mqtt.password",
            "username",
        ),
        (
            r#", "protocol": "mqtt", "mqtt": {"keep_alive_s": 70000}"#,
            "mqtt.keep_alive_s",
            "65535",
        ),
        (
            r#", "protocol": "mqtt", "mqtt": {"qos": 1}"#,
            "mqtt.qos",
            "",
        ),
    ] {
        let e = error(extra);
        assert_eq!(e.path, path, "{extra}: {e}");
        assert!(e.message.contains(says), "{extra}: {e}");
    }
    let e = Profile::from_json(
        r#"{"name": "p", "target": "embedded", "connections": 1, "protocol": "mqtt",
            "mqtt": {"keep_alive_s": 5}, "heartbeat": {"interval": "10s"},
            "phases": [{"hold": {"for": "1s"}}]}"#,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.path, "mqtt.keep_alive_s");
    assert!(e.message.contains("at least 10"), "{e}");
}

#[test]
fn http2_options_parse_and_refuse_with_the_fix() {
    let p = profile(r#", "protocol": "http2""#).unwrap();
    assert_eq!(p.protocol_options.http2.unwrap().path, "/");
    let p = profile(
        r#", "protocol": "http2", "http2": {"path": "/push?v=1", "authority": "push.example:443", "headers": {"authorization": "Bearer x"}}"#,
    )
    .unwrap();
    assert_eq!(p.protocol_options.http2.unwrap().headers.len(), 1);
    for (extra, path, says) in [
        (r#", "http2": {}"#, "http2", "\"protocol\": \"http2\""),
        (
            r#", "protocol": "http2", "http2": {"path": "push"}"#,
            "http2.path",
            "\"push\"",
        ),
        (
            r#", "protocol": "http2", "http2": {"authority": "a b"}"#,
            "http2.authority",
            "\"a b\"",
        ),
        (
            r#", "protocol": "http2", "http2": {"headers": {"Authorization": "x"}}"#,
            "http2.headers.Authorization",
            "lower-case",
        ),
        (
            r#", "protocol": "http2", "http2": {"headers": {"x-a": "a\nb"}}"#,
            "http2.headers.x-a",
            "one line",
        ),
    ] {
        let e = error(extra);
        assert_eq!(e.path, path, "{extra}: {e}");
        assert!(e.message.contains(says), "{extra}: {e}");
    }
}
