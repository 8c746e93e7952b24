//! Unit tests of `mqtt`.

use super::*;

fn connect(version: MqttVersion) -> BytesMut {
    let client = Client::new(&MqttOptions {
        version,
        client_id_prefix: "x".into(),
        clean_session: true,
        keep_alive_s: 10,
        subscribe: false,
        topic_prefix: "t".into(),
        username: None,
        password: None,
        fanout: None,
    });
    client.connect_packet(client.client_id(3)).unwrap()
}

#[test]
fn the_sink_answers_each_level_at_its_own_level() {
    for version in [MqttVersion::V311, MqttVersion::V5] {
        let mut buf = connect(version);
        let mut partial = BytesMut::from(&buf[..5]);
        let mut out = BytesMut::new();
        assert_eq!(accept_connect(&mut partial, &mut out), Ok(None));
        assert_eq!(accept_connect(&mut buf, &mut out), Ok(Some(version)));
        assert!(buf.is_empty());
        assert_eq!(
            decode(version, &mut out).unwrap(),
            Some(Incoming::ConnAck(0))
        );
    }
}

#[test]
fn the_broker_routes_by_exact_topic_at_each_level_and_forgets_a_closed_connection() {
    let broker = Broker::default();
    let mut old = Membership::new(&broker);
    old.subscribe(MqttVersion::V311, vec!["t/1".into()]);
    let mut new = Membership::new(&broker);
    new.subscribe(MqttVersion::V5, vec!["t/1".into(), "t/2".into()]);
    let mut payload = vec![0u8; 40];
    super::super::write_stamp(&mut payload, super::super::unix_ns_now());
    let payload = Bytes::from(payload);
    assert_eq!(broker.publish("t/1", &payload), 2);
    assert_eq!(broker.publish("t/2", &payload), 1);
    assert_eq!(broker.publish("t/+", &payload), 0, "no wildcard matching");
    for (member, version, count) in [
        (&mut old, MqttVersion::V311, 1),
        (&mut new, MqttVersion::V5, 2),
    ] {
        let inbox = member.inbox.as_mut().unwrap();
        for _ in 0..count {
            let mut packet = BytesMut::from(&inbox.try_recv().unwrap()[..]);
            let Some(Incoming::Publish(Some(age))) = decode(version, &mut packet).unwrap() else {
                panic!("not a stamped PUBLISH at {version:?}");
            };
            assert!(age < 60_000_000, "{age} us");
        }
        assert!(inbox.try_recv().is_err());
    }
    drop(new);
    assert_eq!(broker.publish("t/1", &payload), 1);
    assert!(!broker.topics().contains_key("t/2"));
}

#[test]
fn a_subscribe_past_the_cap_is_refused_for_the_extra_filters() {
    let filters = (0..MAX_TOPICS_PER_CONNECTION + 4)
        .map(|i| v4::SubscribeFilter::new(format!("t/{i}"), rumqttc::mqttbytes::QoS::AtMostOnce));
    let mut subscribe = v4::Subscribe::new_many(filters);
    subscribe.pkid = 7;
    let mut buf = BytesMut::new();
    v4::Packet::Subscribe(subscribe)
        .write(&mut buf, MAX_PACKET)
        .unwrap();
    let mut out = BytesMut::new();
    let Ok(Some(Inbound::Subscribed(granted))) = answer(MqttVersion::V311, &mut buf, &mut out, 10)
    else {
        panic!("not a subscription");
    };
    assert_eq!(granted.len(), 10);
    let Ok(v4::Packet::SubAck(ack)) = v4::Packet::read(&mut out, MAX_PACKET) else {
        panic!("no SUBACK");
    };
    assert_eq!(ack.pkid, 7);
    let refused = ack
        .return_codes
        .iter()
        .filter(|c| matches!(c, v4::SubscribeReasonCode::Failure))
        .count();
    assert_eq!(refused, MAX_TOPICS_PER_CONNECTION + 4 - 10);
}

#[test]
fn every_v5_connack_code_round_trips_through_the_codec() {
    for wire in [0u8, 0x80, 0x85, 0x86, 0x87, 0x8A, 0x9F] {
        let mut buf = BytesMut::from(&[0x20, 0x03, 0x00, wire, 0x00][..]);
        assert_eq!(
            decode(MqttVersion::V5, &mut buf).unwrap(),
            Some(Incoming::ConnAck(wire))
        );
    }
    let mut buf = BytesMut::from(&[0x20, 0x02, 0x00, 0x05][..]);
    assert_eq!(
        decode(MqttVersion::V311, &mut buf).unwrap(),
        Some(Incoming::ConnAck(5))
    );
    let mut partial = BytesMut::from(&[0x20][..]);
    assert_eq!(decode(MqttVersion::V311, &mut partial).unwrap(), None);
}
