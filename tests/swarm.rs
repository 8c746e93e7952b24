//! The swarm on loopback, as separate processes: lossless merging, loss of an agent, loss of
//! the coordinator (dead-man switch), and every refusal.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStderr, Stdio};
use std::time::{Duration, Instant};

use common::{SinkProcess, bin, read_json, wait_child, wait_for_line};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use serde_json::{Value, json};

fn write_profile(
    dir: &Path,
    target: SocketAddr,
    connections: u64,
    hold: &str,
) -> std::path::PathBuf {
    let path = dir.join("swarm.json");
    std::fs::write(
        &path,
        json!({
            "name": "swarm",
            "target": {"addrs": [target.to_string()]},
            "connections": connections,
            "heartbeat": {"interval": "250ms"},
            "phases": [{"ramp": {"rate": 600}}, {"hold": {"for": hold}}]
        })
        .to_string(),
    )
    .unwrap();
    path
}

struct Coordinator {
    child: Child,
    addr: SocketAddr,
    stderr: BufReader<ChildStderr>,
}

fn coordinator(profile: &Path, agents: usize, out: &Path, extra: &[&str]) -> Coordinator {
    let mut command = bin();
    command
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--agents",
            &agents.to_string(),
            "--out",
        ])
        .arg(out);
    if !extra.contains(&"--join-timeout") {
        command.args(["--join-timeout", "20s"]);
    }
    let mut child = command
        .arg(profile)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let line = wait_for_line(&mut stderr, Duration::from_secs(10), |l| {
        l.contains("listening on")
    });
    let addr = common::listening_addr(&line);
    Coordinator {
        child,
        addr,
        stderr,
    }
}

fn agent(
    coordinator: SocketAddr,
    name: &str,
    source: &str,
    out: Option<&Path>,
    extra: &[&str],
) -> Child {
    let mut command = bin();
    command
        .args([
            "agent",
            "--quiet",
            "--coordinator",
            &coordinator.to_string(),
            "--name",
            name,
            "--sources",
            source,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(out) = out {
        command.arg("--out").arg(out);
    }
    command.spawn().unwrap()
}

fn merged_from_hlog(path: &Path, tag: &str) -> Histogram<u64> {
    use base64::Engine;
    let bytes = std::fs::read(path).unwrap();
    let mut merged = stampede::metrics::new_histogram();
    for entry in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(h) = entry.unwrap()
            && h.tag().map(|t| t.as_str()) == Some(tag)
        {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(h.encoded_histogram())
                .unwrap();
            let decoded: Histogram<u64> = Deserializer::new().deserialize(&mut &raw[..]).unwrap();
            merged.add(decoded).unwrap();
        }
    }
    merged
}

#[test]
fn three_agents_merge_losslessly() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), sink.addr, 600, "1500ms");
    let mut coord = coordinator(&profile, 3, &dir.path().join("coord"), &[]);
    let mut agents: Vec<Child> = (0..3)
        .map(|i| {
            let out = dir.path().join(format!("agent{i}"));
            agent(
                coord.addr,
                &format!("a{i}"),
                &format!("127.0.42.{}", i + 1),
                Some(&out),
                &[],
            )
        })
        .collect();
    let status = wait_child(&mut coord.child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    for a in &mut agents {
        assert_eq!(wait_child(a, Duration::from_secs(10)).code(), Some(0));
    }
    let summary = read_json(&dir.path().join("coord/summary.json"));
    common::assert_schema("summary.schema.json", &summary);
    let agent_summaries: Vec<Value> = (0..3)
        .map(|i| read_json(&dir.path().join(format!("agent{i}/summary.json"))))
        .collect();

    // Counts: the swarm's equal the sum of the agents'.
    for key in ["attempts", "established"] {
        let sum: u64 = agent_summaries
            .iter()
            .map(|s| s["connections"][key].as_u64().unwrap())
            .sum();
        assert_eq!(summary["connections"][key].as_u64().unwrap(), sum, "{key}");
    }
    assert_eq!(summary["connections"]["established"], 600);
    let records = summary["agents"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert!(
        records
            .iter()
            .all(|a| a["status"] == "finished" && a["share"] == 200),
        "{records:?}"
    );
    let sources: Vec<&str> = summary["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["addr"].as_str().unwrap())
        .collect();
    assert_eq!(sources.len(), 3, "{sources:?}");
    let spread = summary["start_spread_ms"].as_f64().unwrap();
    assert!(spread < 50.0, "start spread {spread} ms");

    // Histograms: the agents' interval logs merged here give the swarm's exact percentiles.
    for (tag, key) in [("connect", "connect"), ("heartbeat_rtt", "heartbeat_rtt")] {
        let mut merged = stampede::metrics::new_histogram();
        for i in 0..3 {
            merged
                .add(merged_from_hlog(
                    &dir.path().join(format!("agent{i}/latency.hlog")),
                    tag,
                ))
                .unwrap();
        }
        let swarm = merged_from_hlog(&dir.path().join("coord/latency.hlog"), tag);
        assert_eq!(
            swarm, merged,
            "{tag}: the coordinator's histogram is not the agents' merged"
        );
        let stats = &summary["latency_us"][key];
        assert_eq!(stats["count"].as_u64().unwrap(), merged.len());
        for (q, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")] {
            assert_eq!(
                stats[name].as_u64().unwrap(),
                merged.value_at_quantile(q),
                "{tag} {name}"
            );
        }
        assert_eq!(stats["max"].as_u64().unwrap(), merged.max());
    }

    // The coordinator's report is the swarm's: every agent in its table. An agent's --out
    // holds its share only, so it writes no report.
    let report = std::fs::read_to_string(dir.path().join("coord/report.html")).unwrap();
    assert!(
        report.contains("<h2>Agents</h2><p>3 agent(s)"),
        "no agents table"
    );
    for record in records {
        let name = record["name"].as_str().unwrap();
        assert!(
            report.contains(&format!("<tr><td>{name}</td>")),
            "{name} missing"
        );
    }
    for i in 0..3 {
        assert!(!dir.path().join(format!("agent{i}/report.html")).exists());
    }
}

#[test]
fn a_killed_agent_is_marked_lost_and_the_run_finishes() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), sink.addr, 300, "4s");
    let mut coord = coordinator(&profile, 2, &dir.path().join("coord"), &["--lease", "3s"]);
    let mut a0 = agent(coord.addr, "steady", "127.0.43.1", None, &[]);
    let mut a1 = agent(coord.addr, "doomed", "127.0.43.2", None, &[]);
    wait_for_line(&mut coord.stderr, Duration::from_secs(15), |l| {
        l.contains("hold") && l.contains(" 300/300")
    });
    a1.kill().unwrap();
    a1.wait().unwrap();
    let lost = wait_for_line(&mut coord.stderr, Duration::from_secs(10), |l| {
        l.contains("agent doomed lost")
    });
    assert!(lost.contains("connection lost"), "{lost}");
    let status = wait_child(&mut coord.child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert_eq!(wait_child(&mut a0, Duration::from_secs(10)).code(), Some(0));
    let summary = read_json(&dir.path().join("coord/summary.json"));
    let records = summary["agents"].as_array().unwrap();
    let doomed = records.iter().find(|a| a["name"] == "doomed").unwrap();
    assert_eq!(doomed["status"], "lost");
    assert_eq!(
        doomed["established"], 150,
        "its data up to its last report is kept"
    );
    assert!(doomed["last_report_s"].as_f64().unwrap() > 0.5);
    let steady = records.iter().find(|a| a["name"] == "steady").unwrap();
    assert_eq!(steady["status"], "finished");
    assert_eq!(summary["connections"]["established"], 300);
}

#[test]
fn a_run_whose_every_agent_is_lost_is_aborted_not_passed() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), sink.addr, 200, "10s");
    let mut coord = coordinator(&profile, 2, &dir.path().join("coord"), &["--lease", "3s"]);
    let mut agents = [
        agent(coord.addr, "first", "127.0.43.3", None, &[]),
        agent(coord.addr, "second", "127.0.43.4", None, &[]),
    ];
    wait_for_line(&mut coord.stderr, Duration::from_secs(15), |l| {
        l.contains("hold") && l.contains(" 200/200")
    });
    for a in &mut agents {
        a.kill().unwrap();
        a.wait().unwrap();
    }
    // No thresholds are set, so only the lost swarm can make this run anything but a pass.
    let status = wait_child(&mut coord.child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(3));
    let summary = read_json(&dir.path().join("coord/summary.json"));
    assert_eq!(summary["outcome"], "aborted");
    assert!(
        summary["abort_reason"]
            .as_str()
            .is_some_and(|r| r.contains("every agent was lost")),
        "{summary}"
    );
    let statuses: Vec<&Value> = summary["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, [&json!("lost"), &json!("lost")]);
}

/// The sink's own stats line says how many connections it still holds.
fn sink_open(
    stderr: &mut impl BufRead,
    deadline: Instant,
    want: impl Fn(u64) -> bool,
) -> Option<Instant> {
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        let open: Option<u64> = line
            .split("open ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok());
        if open.is_some_and(&want) {
            return Some(Instant::now());
        }
    }
    None
}

#[test]
fn agents_close_everything_within_the_lease_when_the_coordinator_freezes_or_dies() {
    // A sink with its stats line, to measure closes where they land.
    let mut sink_child = bin()
        .args(["sink", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sink_out = BufReader::new(sink_child.stdout.take().unwrap());
    let line = wait_for_line(&mut sink_out, Duration::from_secs(5), |l| {
        l.starts_with("listening on")
    });
    let sink_addr: SocketAddr = common::listening_addr(&line);
    let mut sink_err = BufReader::new(sink_child.stderr.take().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), sink_addr, 200, "60s");
    let mut coord = coordinator(&profile, 2, &dir.path().join("coord"), &["--lease", "3s"]);
    let mut agents = [
        agent(coord.addr, "x", "127.0.44.1", None, &[]),
        agent(coord.addr, "y", "127.0.44.2", None, &[]),
    ];
    let held = sink_open(
        &mut sink_err,
        Instant::now() + Duration::from_secs(15),
        |n| n == 200,
    );
    assert!(held.is_some(), "the swarm never held 200");

    // Freeze the coordinator: no keepalives, no FIN. Agents must notice through the lease.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(coord.child.id() as i32, libc::SIGSTOP) };
    let frozen = Instant::now();
    let closed = sink_open(&mut sink_err, frozen + Duration::from_secs(10), |n| n == 0)
        .expect("agents closed their connections");
    let took = closed - frozen;
    assert!(
        took < Duration::from_millis(4500),
        "closed {took:?} after the freeze; the lease is 3s"
    );
    for a in &mut agents {
        let status = wait_child(a, Duration::from_secs(5));
        assert_eq!(status.code(), Some(3));
        let mut err = String::new();
        std::io::Read::read_to_string(a.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(err.contains("no word from the coordinator"), "{err}");
    }
    let _ = coord.child.kill();
    unsafe { libc::kill(coord.child.id() as i32, libc::SIGCONT) };
    let _ = coord.child.wait();

    // And a coordinator killed outright: its agents see the connection drop at once.
    let mut coord = coordinator(&profile, 1, &dir.path().join("coord2"), &["--lease", "5s"]);
    let mut lone = agent(coord.addr, "z", "127.0.44.3", None, &[]);
    sink_open(
        &mut sink_err,
        Instant::now() + Duration::from_secs(15),
        |n| n == 200,
    )
    .expect("held again");
    coord.child.kill().unwrap();
    let killed = Instant::now();
    let closed =
        sink_open(&mut sink_err, killed + Duration::from_secs(10), |n| n == 0).expect("closed");
    assert!(
        closed - killed < Duration::from_secs(5),
        "closed {:?} after the kill",
        closed - killed
    );
    assert_eq!(
        wait_child(&mut lone, Duration::from_secs(5)).code(),
        Some(3)
    );
    let _ = coord.child.wait();
    let _ = sink_child.kill();
    let _ = sink_child.wait();
}

fn token_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn refusals_are_clear() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), sink.addr, 10, "1s");
    let good = token_file(
        dir.path(),
        "good",
        "yl8RUlDP+3P4lu8ZZnoI1dRlG5kprWyhrDUwwOB4nfU=\n",
    );
    let bad = token_file(
        dir.path(),
        "bad",
        "gx43l7gVDBN/AJyk5bxFpUgaESZrKp99u7d+zLDGc4M=\n",
    );

    // No token on a non-loopback listen address: refused before listening for anyone.
    let out = bin()
        .args(["coordinator", "--listen", "0.0.0.0:0", "--agents", "1"])
        .arg(&profile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"));

    // An agent without a token will not dial a non-loopback coordinator.
    let out = bin()
        .args([
            "agent",
            "--coordinator",
            "192.0.2.1:7700",
            "--retry-for",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"));

    // Wrong token: the agent is refused; the coordinator keeps waiting for a right one.
    let token_arg = ["--token-file", good.to_str().unwrap()];
    let mut coord = coordinator(&profile, 1, &dir.path().join("c1"), &token_arg);
    let wrong = bin()
        .args([
            "agent",
            "--coordinator",
            &coord.addr.to_string(),
            "--token-file",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    let text = String::from_utf8_lossy(&wrong.stderr);
    assert!(text.contains("could not prove the token"), "{text}");
    wait_for_line(&mut coord.stderr, Duration::from_secs(5), |l| {
        l.contains("refused")
    });
    // Missing token on the agent's side.
    let missing = bin()
        .args(["agent", "--coordinator", &coord.addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("did not prove the token"));
    // The right token joins and the run completes.
    let mut right = bin()
        .args([
            "agent",
            "--quiet",
            "--coordinator",
            &coord.addr.to_string(),
            "--token-file",
            good.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    assert_eq!(
        wait_child(&mut coord.child, Duration::from_secs(20)).code(),
        Some(0)
    );
    assert_eq!(
        wait_child(&mut right, Duration::from_secs(5)).code(),
        Some(0)
    );

    // A target outside the agent's allowlist: the agent refuses, the coordinator reports it.
    let mut coord = coordinator(&profile, 1, &dir.path().join("c2"), &[]);
    let refusing = bin()
        .args([
            "agent",
            "--coordinator",
            &coord.addr.to_string(),
            "--allow-targets",
            "10.99.0.0/16",
        ])
        .output()
        .unwrap();
    assert_eq!(refusing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refusing.stderr).contains("outside this agent's --allow-targets")
    );
    let status = wait_child(&mut coord.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut coord.stderr, &mut rest).unwrap();
    assert!(
        rest.contains("refused the plan") && rest.contains("10.99.0.0/16"),
        "{rest}"
    );
}

#[tokio::test]
async fn other_protocol_versions_are_refused() {
    use stampede::wire::{self, AgentInfo, Message};
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), sink.addr, 10, "1s");
    let mut coord = coordinator(
        &profile,
        1,
        &dir.path().join("c"),
        &["--join-timeout", "3s"],
    );
    let mut stream = tokio::net::TcpStream::connect(coord.addr).await.unwrap();
    let info = AgentInfo {
        name: "future".into(),
        host: "h".into(),
        stampede_version: "9.0.0".into(),
        cores: 1,
        fd_limit: 1000,
        sources: vec![],
        clock_us: 0,
        synthetic: false,
    };
    wire::write_message(
        &mut stream,
        &Message::Hello {
            version: wire::PROTOCOL_VERSION + 1,
            nonce: wire::nonce(),
            info,
        },
    )
    .await
    .unwrap();
    match wire::read_message(&mut stream).await.unwrap() {
        Message::Refused { reason } => assert!(reason.contains("protocol version"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Garbage and an oversized frame cost the peer its session, not the coordinator its run.
    let mut junk = tokio::net::TcpStream::connect(coord.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut junk, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let line = wait_for_line(&mut coord.stderr, Duration::from_secs(5), |l| {
        l.contains("over the")
    });
    assert!(line.contains("refused"), "{line}");
    // Nobody valid joined: the coordinator says who is missing and gives up within its bound.
    let status = wait_child(&mut coord.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(3));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut coord.stderr, &mut rest).unwrap();
    assert!(rest.contains("only 0 of 1 agents joined"), "{rest}");
}

#[test]
fn on_agent_loss_abort_stops_the_run() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("abort.json");
    std::fs::write(
        &path,
        json!({
            "name": "strict-swarm",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 200,
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "30s"}}],
            "on_agent_loss": "abort"
        })
        .to_string(),
    )
    .unwrap();
    let mut coord = coordinator(&path, 2, &dir.path().join("coord"), &[]);
    let mut keeper = agent(coord.addr, "keeper", "127.0.45.1", None, &[]);
    let mut victim = agent(coord.addr, "victim", "127.0.45.2", None, &[]);
    wait_for_line(&mut coord.stderr, Duration::from_secs(15), |l| {
        l.contains(" 200/200")
    });
    victim.kill().unwrap();
    victim.wait().unwrap();
    let status = wait_child(&mut coord.child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(3), "an aborted run exits 3");
    let summary = read_json(&dir.path().join("coord/summary.json"));
    assert_eq!(summary["outcome"], "aborted");
    assert!(
        summary["abort_reason"].as_str().unwrap().contains("victim"),
        "{}",
        summary["abort_reason"]
    );
    assert!(summary["duration_s"].as_f64().unwrap() < 20.0);
    // The other agent was told to stop, closed its connections and left cleanly.
    assert_eq!(
        wait_child(&mut keeper, Duration::from_secs(10)).code(),
        Some(0)
    );
}
