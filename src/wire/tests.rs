//! Unit tests of `wire`.

use super::*;
use crate::metrics::Latency;

#[tokio::test]
async fn frames_round_trip_and_refuse_oversize() {
    let (mut a, mut b) = tokio::io::duplex(1 << 20);
    let message = Message::Stop {
        reason: "done".into(),
    };
    write_message(&mut a, &message).await.unwrap();
    assert_eq!(read_message(&mut b).await.unwrap(), message);

    a.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    assert!(matches!(
        read_message(&mut b).await,
        Err(WireError::TooLarge(..))
    ));

    let (mut a, mut b) = tokio::io::duplex(1 << 10);
    a.write_all(&5u32.to_be_bytes()).await.unwrap();
    a.write_all(b"nope!").await.unwrap();
    assert!(matches!(
        read_message(&mut b).await,
        Err(WireError::Malformed(_))
    ));
    drop(a);
    assert!(matches!(read_message(&mut b).await, Err(WireError::Closed)));
}

#[tokio::test]
async fn strangers_get_small_frames_and_announcing_a_big_one_reserves_nothing() {
    let (mut a, mut b) = tokio::io::duplex(1 << 10);
    a.write_all(&(HANDSHAKE_MAX_FRAME as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    assert!(matches!(
        read_message_limited(&mut b, HANDSHAKE_MAX_FRAME).await,
        Err(WireError::TooLarge(_, HANDSHAKE_MAX_FRAME))
    ));
    // A session may announce up to 16 MiB; a peer that then sends a few bytes and hangs up
    // is a closed connection, not a 16 MiB buffer.
    let (mut a, mut b) = tokio::io::duplex(1 << 10);
    a.write_all(&(MAX_FRAME as u32).to_be_bytes())
        .await
        .unwrap();
    a.write_all(b"{\"type\"").await.unwrap();
    drop(a);
    assert!(matches!(read_message(&mut b).await, Err(WireError::Closed)));
}

#[test]
fn intervals_survive_the_wire_losslessly() {
    let mut data = IntervalData::new(2, 1);
    for v in [1, 50, 900, 12_345, 3_000_000] {
        data.latency.record(Latency::HeartbeatRtt, v);
    }
    data.count(1, 0, |c| c.established += 3);
    let wire = WireInterval::encode(4, false, 3, 3, &data);
    let json = serde_json::to_string(&Message::Report(Box::new(wire))).unwrap();
    let Message::Report(back) = decode(json.as_bytes()).unwrap() else {
        panic!("not a report");
    };
    let decoded = back.decode().unwrap();
    assert_eq!(
        decoded.latency.get(Latency::HeartbeatRtt),
        data.latency.get(Latency::HeartbeatRtt)
    );
    assert_eq!(decoded.per_source, data.per_source);
}

/// Found by fuzzing (scripts/fuzz.sh histogram): HdrHistogram's decoder reserved and
/// zeroed whatever payload length a header announced, 4 GiB and 9 s for these 40 bytes.
/// `plain` deflated and framed as a V2 deflate histogram.
fn deflate_framed(plain: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut deflated = Vec::new();
    let mut z = flate2::write::ZlibEncoder::new(&mut deflated, flate2::Compression::best());
    z.write_all(plain).unwrap();
    z.finish().unwrap();
    let mut framed = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
    framed.extend((deflated.len() as u32).to_be_bytes());
    framed.extend(&deflated);
    framed
}

#[test]
#[expect(
    clippy::disallowed_methods,
    reason = "measures real CPU time spent refusing; no runtime involved"
)]
fn histogram_headers_that_announce_huge_payloads_are_refused_before_decoding() {
    let header = |cookie: u32, payload: u32, digits: u32, high: u64| {
        let mut b = Vec::new();
        b.extend(cookie.to_be_bytes());
        b.extend(payload.to_be_bytes());
        b.extend(0u32.to_be_bytes());
        b.extend(digits.to_be_bytes());
        b.extend(LOWEST_US.to_be_bytes());
        b.extend(high.to_be_bytes());
        b.extend(1.0f64.to_be_bytes());
        b
    };
    let huge = header(V2_COOKIE, 0xFFFF_FFF0, u32::from(SIGFIGS), HIGHEST_US);
    let started = std::time::Instant::now();
    let error = decode_histogram(&BASE64.encode(&huge))
        .unwrap_err()
        .to_string();
    assert!(error.contains("announces 4294967280 bytes"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));

    // The same inside a deflate stream, and bounds that would allocate large counts.
    let framed = deflate_framed(&huge);
    let error = decode_histogram(&BASE64.encode(&framed))
        .unwrap_err()
        .to_string();
    assert!(error.contains("announces 4294967280 bytes"), "{error}");
    let wide = header(V2_COOKIE, 0, 5, u64::MAX / 2);
    let error = decode_histogram(&BASE64.encode(&wide))
        .unwrap_err()
        .to_string();
    assert!(error.contains("bounds"), "{error}");

    // A deflate bomb: a megabyte of zeros after a valid header inflates past the limit.
    let mut bomb_plain = header(V2_COOKIE, 0, u32::from(SIGFIGS), HIGHEST_US);
    bomb_plain.extend(vec![0u8; 1 << 20]);
    let framed = deflate_framed(&bomb_plain);
    let error = decode_histogram(&BASE64.encode(&framed))
        .unwrap_err()
        .to_string();
    assert!(error.contains("inflates past"), "{error}");

    // Our own histograms still decode, empty or full.
    for values in [&[][..], &[1, 50, 900, 3_000_000][..]] {
        let mut h = crate::metrics::new_histogram();
        for v in values {
            h.record(*v).unwrap();
        }
        assert_eq!(decode_histogram(&encode_histogram(&h)).unwrap(), h);
    }
}

#[test]
fn weak_tokens_are_refused_and_random_ones_pass() {
    for (token, why) in [
        (&b""[..], "is empty"),
        (PLACEHOLDER_TOKEN.as_bytes(), "placeholder"),
        (b"short", "has 5 bytes"),
        (b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "distinct"),
        (b"correct horse battery staple", "distinct"),
        (b"abcdefghijklmnopqrstuvwxyz", "run of 8"),
        (b"my token 0123456789 is long enough", "run of 8"),
    ] {
        let found = weak_token(token);
        assert!(
            found.as_deref().is_some_and(|f| f.contains(why)),
            "{:?}: {found:?}",
            String::from_utf8_lossy(token)
        );
    }
    // 32 random bytes in base64, as the message says to make them.
    for _ in 0..1000 {
        let token = nonce();
        assert_eq!(weak_token(token.as_bytes()), None, "{token}");
    }
}

#[tokio::test]
async fn sealed_frames_refuse_tampering_replay_and_the_wrong_session() {
    let (a, c) = (nonce(), nonce());
    let token = b"0123456789abcdef";
    let (mut agent_tx, mut agent_rx) = session_keys(token, &a, &c, Role::Agent);
    let (mut coord_tx, mut coord_rx) = session_keys(token, &a, &c, Role::Coordinator);
    let body = |frame: &[u8]| frame[4..].to_vec();
    let stop = Message::Stop { reason: "x".into() };
    // Both directions round-trip, through the async path too.
    let (mut w, mut r) = tokio::io::duplex(1 << 16);
    coord_tx.write(&mut w, &stop).await.unwrap();
    assert_eq!(agent_rx.read(&mut r).await.unwrap(), stop);
    let up = agent_tx.seal(&Message::Keepalive).unwrap();
    assert_eq!(coord_rx.open(&body(&up)).unwrap(), Message::Keepalive);
    // Replayed: a valid frame again.
    let error = coord_rx.open(&body(&up)).unwrap_err().to_string();
    assert!(
        error.contains("frame 0 arrived where frame 1 was due"),
        "{error}"
    );
    // Reflected: a frame sent back the other way.
    let (_, mut fresh_rx) = session_keys(token, &a, &c, Role::Coordinator);
    let mut own = session_keys(token, &a, &c, Role::Coordinator).0;
    let reflected = own.seal(&Message::Keepalive).unwrap();
    assert!(matches!(
        fresh_rx.open(&body(&reflected)),
        Err(WireError::Forged(_))
    ));
    // Altered: any bit of sequence, message or tag.
    let mut sealer = session_keys(token, &a, &c, Role::Agent).0;
    let frame = body(&sealer.seal(&stop).unwrap());
    for at in [0, SEQ_BYTES + 3, frame.len() - 1] {
        let mut altered = frame.clone();
        altered[at] ^= 1;
        let mut opener = session_keys(token, &a, &c, Role::Coordinator).1;
        let error = opener.open(&altered).unwrap_err().to_string();
        assert!(error.contains("failed authentication"), "{at}: {error}");
    }
    // Another session (other nonces, or another token).
    let mut other = session_keys(token, &c, &a, Role::Coordinator).1;
    assert!(matches!(other.open(&frame), Err(WireError::Forged(_))));
    let mut other = session_keys(b"fedcba9876543210", &a, &c, Role::Coordinator).1;
    assert!(matches!(other.open(&frame), Err(WireError::Forged(_))));
    // Injected: a plain frame of the handshake's kind.
    let plain = serde_json::to_vec(&stop).unwrap();
    let mut opener = session_keys(token, &a, &c, Role::Coordinator).1;
    assert!(matches!(opener.open(&plain), Err(WireError::Forged(_))));
    assert!(matches!(opener.open(b"{}"), Err(WireError::Forged(_))));
}

#[test]
fn proofs_need_the_token_and_the_role() {
    let (a, b) = (nonce(), nonce());
    let p = proof(b"0123456789abcdef", "coordinator", &a, &b);
    assert!(verify(b"0123456789abcdef", "coordinator", &a, &b, &p));
    assert!(!verify(b"0123456789abcdeX", "coordinator", &a, &b, &p));
    assert!(!verify(b"0123456789abcdef", "agent", &a, &b, &p));
    assert!(!verify(b"0123456789abcdef", "coordinator", &b, &a, &p));
}
