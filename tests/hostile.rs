//! Hostile peers at both ends of the swarm protocol: garbage, a huge length prefix, a slow
//! sender, a flood of connections, a replayed handshake and a wrong token at the coordinator's
//! port (each refused or dropped, logged once, at bounded cost, while a real run passes), and
//! the same tricks played on an agent by a fake coordinator.
//!
//! tests/swarm.rs already covers one garbage frame, one oversized frame, another protocol
//! version and a wrong token file from a real agent; this goes further, in bulk and mid-run.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Lines, SinkProcess, bin, read_json, wait_child};
use serde_json::json;
use stampede::wire::{self, AgentInfo, Message};

const TOKEN: &str = "mF0n2y1Gq4JtqkIuQx8vWl3cR8s5pZb7TgYd0eHhK9o=";

fn info(name: &str) -> AgentInfo {
    AgentInfo {
        name: name.into(),
        host: "h".into(),
        stampede_version: "0".into(),
        cores: 1,
        fd_limit: 1000,
        sources: vec![],
        clock_us: 0,
        synthetic: false,
    }
}

/// One frame as bytes.
fn frame(message: &Message) -> Vec<u8> {
    let body = serde_json::to_vec(message).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Reads one frame (blocking, bounded by the socket's read timeout).
fn read_frame(stream: &mut TcpStream) -> Option<Message> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    wire::decode(&body).ok()
}

/// True once the peer has closed (EOF or reset) within `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A proxy that forwards one connection to `to` and records what the client sent.
fn recording_proxy(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let record = recorded.clone();
    std::thread::spawn(move || {
        let Ok((mut client, _)) = listener.accept() else {
            return;
        };
        let mut server = TcpStream::connect(to).unwrap();
        let (mut client_r, mut server_w) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut server, &mut client);
        });
        let mut buf = [0u8; 4096];
        while let Ok(n) = client_r.read(&mut buf) {
            // Recorded before it is forwarded, so whatever the coordinator has seen is here.
            record.lock().unwrap().extend_from_slice(&buf[..n]);
            if n == 0 || server_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    (addr, recorded)
}

/// The first `count` frames of a recorded byte stream.
fn first_frames(bytes: &[u8], count: usize) -> Vec<u8> {
    let mut at = 0;
    for _ in 0..count {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
    }
    bytes[..at].to_vec()
}

/// A memory figure of a live process, in KiB (`None` once it has exited).
fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

fn spawn_agent(coordinator: SocketAddr, name: &str, token: &Path, source: &str) -> Child {
    bin()
        .args([
            "agent",
            "--quiet",
            "--coordinator",
            &coordinator.to_string(),
        ])
        .args(["--name", name, "--sources", source, "--token-file"])
        .arg(token)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A headless coordinator for `agents` agents on a free loopback port, with the test token
/// and `extra` flags, once it listens: the process, its log and its address.
fn coordinator(
    profile: &Path,
    token: &Path,
    agents: usize,
    extra: &[&std::ffi::OsStr],
) -> (Child, Lines, SocketAddr) {
    let mut child = bin()
        .args(["coordinator", "--headless", "--listen", "127.0.0.1:0"])
        .args(["--agents", &agents.to_string(), "--join-timeout", "30s"])
        .arg("--token-file")
        .arg(token)
        .args(extra)
        .arg(profile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = Lines::new(child.stderr.take().unwrap());
    let line = log.wait(Duration::from_secs(10), |l| l.contains("listening on"));
    (child, log, common::listening_addr(&line))
}

#[test]
fn hostile_peers_are_refused_logged_once_and_the_run_still_passes() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let profile = dir.path().join("p.json");
    std::fs::write(
        &profile,
        json!({
            "name": "under-attack",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 200,
            "heartbeat": {"interval": "250ms", "timeout": "5s"},
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "14s"}}],
            "thresholds": ["errors <= 0", "established_ratio >= 1"]
        })
        .to_string(),
    )
    .unwrap();
    let out = dir.path().join("coord");
    let (mut coord, mut log, addr) =
        coordinator(&profile, &token, 2, &["--out".as_ref(), out.as_os_str()]);
    let baseline_kib = vm_kib(coord.id(), "VmRSS:").unwrap();

    // A real agent joins through a proxy that records its handshake.
    let (proxy, recorded) = recording_proxy(addr);
    let mut first = spawn_agent(proxy, "first", &token, "127.0.53.1");
    log.wait(Duration::from_secs(10), |l| {
        l.contains("agent first joined")
    });

    // Replaying its hello and proof: the coordinator's fresh nonce makes the proof worthless.
    let replay = first_frames(&recorded.lock().unwrap(), 2);
    let mut replayed = TcpStream::connect(addr).unwrap();
    replayed
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    replayed.write_all(&replay).unwrap();
    assert!(matches!(
        read_frame(&mut replayed),
        Some(Message::Challenge { .. })
    ));
    match read_frame(&mut replayed) {
        Some(Message::Refused { reason }) => {
            assert!(reason.contains("did not prove the token"), "{reason}")
        }
        other => panic!("a replayed handshake was not refused: {other:?}"),
    }

    // Twenty wrong tokens, each refused.
    for i in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let nonce = wire::nonce();
        let hello = Message::Hello {
            version: wire::PROTOCOL_VERSION,
            nonce: nonce.clone(),
            info: info(&format!("intruder{i}")),
        };
        s.write_all(&frame(&hello)).unwrap();
        let Some(Message::Challenge { nonce: theirs, .. }) = read_frame(&mut s) else {
            panic!("no challenge");
        };
        let proof = wire::proof(b"not the token, but long enough", "agent", &theirs, &nonce);
        s.write_all(&frame(&Message::Proof { proof })).unwrap();
        assert!(matches!(read_frame(&mut s), Some(Message::Refused { .. })));
    }

    // Garbage, huge length prefixes and slow senders, all before the swarm is complete.
    let mut slow = Vec::new();
    for i in 0..30u32 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&[0, 0]).unwrap(); // half a length prefix, then nothing
        slow.push(s);
        let mut junk = TcpStream::connect(addr).unwrap();
        let garbage: Vec<u8> = (0..1024u32).map(|b| (b * 31 + i) as u8).collect();
        let _ = junk.write_all(&garbage);
        let mut huge = TcpStream::connect(addr).unwrap();
        let _ = huge.write_all(&u32::MAX.to_be_bytes());
        let _ = huge.write_all(&(16u32 << 20).to_be_bytes());
        assert!(
            closed_within(&mut huge, Duration::from_secs(2)),
            "huge prefix kept open"
        );
    }
    let slow_since = Instant::now();

    // The second real agent still joins while the slow senders hang on.
    let mut second = spawn_agent(addr, "second", &token, "127.0.53.2");
    log.wait(Duration::from_secs(10), |l| {
        l.contains("agent second joined")
    });
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(8)),
            "a slow sender was kept"
        );
    }
    let slow_for = slow_since.elapsed();
    assert!(
        slow_for < Duration::from_secs(8),
        "slow senders held on for {slow_for:?}"
    );

    // Mid-run: a flood of connections, some holding on, some sending junk.
    log.wait(Duration::from_secs(10), |l| {
        l.contains("hold") && l.contains(" 200/200")
    });
    // Bounded in count and in time: on a busy host a connect can wait out a SYN retry, and the
    // flood must end while the run is still holding, or it tests nothing.
    let flood_until = Instant::now() + Duration::from_secs(4);
    let mut held = Vec::new();
    let mut flooded = 0;
    while flooded < 1500 && Instant::now() < flood_until {
        flooded += 1;
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            continue;
        };
        if flooded % 3 == 0 {
            held.push(s);
        } else {
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
        }
    }
    assert!(flooded >= 100, "only {flooded} flood connections in 4 s");
    let peak_kib = vm_kib(coord.id(), "VmHWM:").unwrap_or_else(|| {
        panic!(
            "the coordinator ended before the flood did: {}",
            log.all(Duration::from_secs(1)).join("\n")
        )
    });
    drop(held);
    drop(slow);

    let status = wait_child(&mut coord, Duration::from_secs(20));
    let lines = log.all(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    for a in [&mut first, &mut second] {
        assert_eq!(wait_child(a, Duration::from_secs(5)).code(), Some(0));
    }
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["outcome"], "pass");
    assert_eq!(summary["connections"]["established"], 200);
    assert_eq!(summary["missing"], json!([]));

    // Logged once per kind, not once per peer.
    let refused: Vec<&String> = lines.iter().filter(|l| l.contains("refused")).collect();
    let token_lines = refused
        .iter()
        .filter(|l| l.contains("did not prove the token"))
        .count();
    assert_eq!(token_lines, 1, "{refused:#?}");
    assert!(
        refused.len() <= 10,
        "{} refusal lines: {refused:#?}",
        refused.len()
    );
    // Bounded memory: the flood and the huge prefixes cost no more than a few MiB.
    assert!(
        peak_kib < baseline_kib + 32 * 1024,
        "peak RSS {peak_kib} KiB from {baseline_kib} KiB"
    );
    eprintln!("coordinator RSS: {baseline_kib} KiB at start, peak {peak_kib} KiB");
}

/// A fake coordinator that reads the agent's hello and then does `act`.
fn fake_coordinator(act: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = read_frame(&mut s);
            act(s);
        }
    });
    addr
}

fn agent_against(addr: SocketAddr, token: &Path) -> std::process::Output {
    bin()
        .args([
            "agent",
            "--coordinator",
            &addr.to_string(),
            "--retry-for",
            "2s",
        ])
        .arg("--token-file")
        .arg(token)
        .output()
        .unwrap()
}

#[test]
fn a_hostile_coordinator_cannot_hold_or_fool_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();

    // A real coordinator's challenge, captured for another agent's nonce.
    let sink = SinkProcess::start();
    let profile = dir.path().join("p.json");
    std::fs::write(
        &profile,
        json!({"name": "x", "target": {"addrs": [sink.addr.to_string()]}, "connections": 1,
               "phases": [{"ramp": {"rate": 1}}]})
        .to_string(),
    )
    .unwrap();
    let (mut real, _log, real_addr) = coordinator(&profile, &token, 1, &[]);
    let mut s = TcpStream::connect(real_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = Message::Hello {
        version: wire::PROTOCOL_VERSION,
        nonce: wire::nonce(),
        info: info("eavesdropped"),
    };
    s.write_all(&frame(&hello)).unwrap();
    let challenge = read_frame(&mut s).expect("a challenge");
    drop(s);
    let _ = real.kill();
    let _ = real.wait();

    let cases: Vec<(&str, SocketAddr, i32, &str)> = vec![
        (
            "garbage",
            fake_coordinator(|mut s| {
                let _ = s.write_all(&[0, 0, 0, 5, b'{', b'x', 0xff, 0xfe, b'}']);
                std::thread::sleep(Duration::from_secs(3));
            }),
            3,
            "malformed message",
        ),
        (
            "huge",
            fake_coordinator(|mut s| {
                let _ = s.write_all(&u32::MAX.to_be_bytes());
                std::thread::sleep(Duration::from_secs(3));
            }),
            3,
            "over the 65536-byte limit",
        ),
        (
            "silent",
            fake_coordinator(|s| {
                std::thread::sleep(Duration::from_secs(9));
                drop(s);
            }),
            3,
            "did not answer the hello",
        ),
        (
            "replay",
            fake_coordinator(move |mut s| {
                let _ = s.write_all(&frame(&challenge));
                std::thread::sleep(Duration::from_secs(3));
            }),
            2,
            "could not prove the token",
        ),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(name, addr, code, text)| {
            let token = token.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let out = agent_against(addr, &token);
                (name, code, text, out, started.elapsed())
            })
        })
        .collect();
    for run in runs {
        let (name, code, text, out, took) = run.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
        assert!(stderr.contains(text), "{name}: {stderr}");
        assert!(took < Duration::from_secs(8), "{name}: took {took:?}");
    }
}

#[test]
fn an_agent_dropped_by_a_busy_coordinator_tries_again_and_joins() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let profile = dir.path().join("p.json");
    std::fs::write(
        &profile,
        json!({"name": "busy", "target": {"addrs": [sink.addr.to_string()]}, "connections": 20,
               "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "500ms"}}]})
        .to_string(),
    )
    .unwrap();
    let (mut coord, mut log, addr) = coordinator(&profile, &token, 1, &[]);
    // More slow senders than the coordinator takes handshakes: once it says it is dropping
    // some, every slot is held for the next 5 s.
    let slow: Vec<TcpStream> = (0..stampede::coordinator::gate::MAX_PENDING_HANDSHAKES + 20)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&[0, 0]).unwrap();
            s
        })
        .collect();
    log.wait(Duration::from_secs(5), |l| {
        l.contains("handshakes already in flight")
    });
    let started = Instant::now();
    let mut agent = bin()
        .args([
            "agent",
            "--coordinator",
            &addr.to_string(),
            "--name",
            "patient",
        ])
        .args(["--retry-for", "20s", "--token-file"])
        .arg(&token)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(
        wait_child(&mut agent, Duration::from_secs(20)).code(),
        Some(0)
    );
    let mut text = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        text.contains("hung up during the handshake") && text.contains("trying again"),
        "{text}"
    );
    assert!(text.contains("joined the coordinator"), "{text}");
    assert_eq!(
        wait_child(&mut coord, Duration::from_secs(10)).code(),
        Some(0)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(slow);
}
