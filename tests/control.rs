//! Live snapshots and controls: a view sees the run each second, can pause opening new
//! connections, resume, and stop gracefully. And the control plane between a coordinator and
//! its agents, as separate processes: what an agent refuses to be steered into (addresses
//! outside `--allow-targets`, leases out of bounds), tokens that are refused, synthetic agents
//! that cannot pass a gate, and frames that cannot be forged or replayed.

mod common;

use std::io::BufReader;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{SinkHandle, SinkProcess, bin, read_json, wait_child, wait_for_line};
use serde_json::{Value, json};
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

/// A listener that must never be reached: it counts the connections that arrived.
struct Decoy {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Decoy {
    /// On 127.0.0.2, outside an agent started with `--allow-targets 127.0.0.1/32`.
    fn start() -> Decoy {
        let listener = TcpListener::bind("127.0.0.2:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        Decoy { listener, addr }
    }

    /// Connections accepted so far (every one in the backlog), once the processes are gone.
    fn accepted(&self) -> usize {
        let mut n = 0;
        while self.listener.accept().is_ok() {
            n += 1;
        }
        n
    }
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

/// A headless coordinator on a free loopback port, once it listens: the process, its log and
/// its address.
fn coordinator(
    profile: &Path,
    agents: usize,
    extra: &[&str],
) -> (Child, BufReader<ChildStderr>, SocketAddr) {
    let mut child = bin()
        .args([
            "coordinator",
            "--headless",
            "--listen",
            "127.0.0.1:0",
            "--join-timeout",
            "20s",
        ])
        .args(["--agents", &agents.to_string()])
        .args(extra)
        .arg(profile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let line = wait_for_line(&mut log, Duration::from_secs(10), |l| {
        l.contains("listening on")
    });
    (child, log, common::listening_addr(&line))
}

/// A finished process's stderr, whole.
fn rest(mut reader: impl std::io::Read) -> String {
    let mut text = String::new();
    let _ = reader.read_to_string(&mut text);
    text
}

fn agent_output(coordinator: SocketAddr, extra: &[&str]) -> std::process::Output {
    bin()
        .args([
            "agent",
            "--coordinator",
            &coordinator.to_string(),
            "--retry-for",
            "5s",
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_plan_naming_any_address_outside_the_allowlist_is_refused_and_nothing_reaches_it() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    // The main target is allowed; the cutover's, or a sink admin endpoint, is not.
    let decoy = Decoy::start();
    let cases = [
        (
            "cutover",
            json!({"cutover": {"to": [decoy.addr.to_string()], "for": "1s"}}),
            "phases[1].cutover.to[0]",
        ),
        (
            "server-admin",
            json!({"server": {"do": "close_all", "admin": decoy.addr.to_string(), "for": "1s"}}),
            "phases[1].server.admin",
        ),
    ];
    for (name, phase, at) in cases {
        let profile = write_json(
            dir.path(),
            &format!("{name}.json"),
            &json!({
                "name": name,
                "target": {"addrs": [sink.addr.to_string()]},
                "connections": 20,
                "reconnect": {"policy": "immediate"},
                "phases": [{"ramp": {"rate": 1000}}, phase, {"hold": {"for": "1s"}}]
            }),
        );
        let (mut coord, log, addr) = coordinator(&profile, 1, &[]);
        let agent = agent_output(addr, &["--allow-targets", "127.0.0.1/32"]);
        let agent_err = String::from_utf8_lossy(&agent.stderr);
        assert_eq!(agent.status.code(), Some(2), "{name}: {agent_err}");
        for text in [
            decoy.addr.to_string().as_str(),
            at,
            "--allow-targets",
            "127.0.0.1/32",
        ] {
            assert!(
                agent_err.contains(text),
                "{name}: {text:?} not in {agent_err}"
            );
        }
        assert_eq!(
            wait_child(&mut coord, Duration::from_secs(10)).code(),
            Some(2),
            "{name}"
        );
        let log = rest(log);
        assert!(
            log.contains("refused the plan") && log.contains(&decoy.addr.to_string()),
            "{name}: {log}"
        );
    }
    assert_eq!(decoy.accepted(), 0, "a refused address was reached");
}

#[test]
fn leases_are_bounded_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let decoy = Decoy::start();
    let profile = write_json(
        dir.path(),
        "lease.json",
        &json!({
            "name": "lease",
            "target": {"addrs": [decoy.addr.to_string()]},
            "connections": 20,
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "1s"}}]
        }),
    );
    // Under three keepalives: the coordinator refuses before anyone joins.
    let out = bin()
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--agents",
            "1",
            "--lease",
            "2s",
        ])
        .arg(&profile)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--lease 2s is shorter than 3 keepalive intervals"),
        "{text}"
    );

    // Over the agent's maximum: the agent refuses the plan and opens nothing.
    let (mut coord, log, addr) = coordinator(&profile, 1, &["--lease", "20s"]);
    let agent = agent_output(addr, &["--max-lease", "10s"]);
    let agent_err = String::from_utf8_lossy(&agent.stderr);
    assert_eq!(agent.status.code(), Some(2), "{agent_err}");
    assert!(
        agent_err.contains("lease of 20s is over this agent's --max-lease of 10s"),
        "{agent_err}"
    );
    assert_eq!(
        wait_child(&mut coord, Duration::from_secs(10)).code(),
        Some(2)
    );
    let log = rest(log);
    assert!(
        log.contains("refused the plan") && log.contains("--max-lease"),
        "{log}"
    );
    // And the default maximum is 30 s.
    let (mut coord, _log, addr) = coordinator(&profile, 1, &["--lease", "31s"]);
    let agent = agent_output(addr, &[]);
    let agent_err = String::from_utf8_lossy(&agent.stderr);
    assert_eq!(agent.status.code(), Some(2), "{agent_err}");
    assert!(agent_err.contains("--max-lease of 30s"), "{agent_err}");
    assert_eq!(
        wait_child(&mut coord, Duration::from_secs(10)).code(),
        Some(2)
    );
    let out = bin()
        .args(["agent", "--coordinator", "127.0.0.1:9", "--max-lease", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-lease 1s is under 3s"));
    assert_eq!(decoy.accepted(), 0, "a refused plan opened connections");
}

#[test]
fn placeholder_and_guessable_tokens_are_refused_with_the_command_that_makes_one() {
    let dir = tempfile::tempdir().unwrap();
    let decoy = Decoy::start();
    let profile = write_json(
        dir.path(),
        "tokens.json",
        &json!({
            "name": "tokens",
            "target": {"addrs": [decoy.addr.to_string()]},
            "connections": 1,
            "phases": [{"ramp": {"rate": 10}}]
        }),
    );
    for (name, token, why) in [
        (
            "placeholder",
            stampede::wire::PLACEHOLDER_TOKEN,
            "is the shipped placeholder",
        ),
        ("empty", "\n", "is empty"),
        (
            "same",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "distinct byte values",
        ),
        ("sequence", "stampede-token-0123456789", "run of 8"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, token).unwrap();
        let coordinator = bin()
            .args(["coordinator", "--listen", "127.0.0.1:0", "--agents", "1"])
            .arg("--token-file")
            .arg(&file)
            .arg(&profile)
            .output()
            .unwrap();
        let agent = bin()
            .args(["agent", "--coordinator", "127.0.0.1:9", "--token-file"])
            .arg(&file)
            .output()
            .unwrap();
        for (side, out) in [("coordinator", coordinator), ("agent", agent)] {
            let text = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} {side}: {text}");
            assert!(
                text.contains(why) && text.contains("head -c 32 /dev/urandom | base64"),
                "{name} {side}: {text}"
            );
        }
    }
    assert_eq!(decoy.accepted(), 0);
}

#[test]
fn synthetic_agents_are_marked_and_cannot_pass_without_the_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let decoy = Decoy::start();
    let profile = write_json(
        dir.path(),
        "synthetic.json",
        &json!({
            "name": "synthetic",
            "target": {"addrs": [decoy.addr.to_string()]},
            "connections": 100,
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "1s"}}],
            "thresholds": ["errors <= 0"]
        }),
    );
    for (allow, code, outcome) in [(false, 1, "fail"), (true, 0, "pass")] {
        let out = dir.path().join(format!("out-{allow}"));
        let junit = dir.path().join(format!("junit-{allow}.xml"));
        let mut extra = vec![
            "--out",
            out.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ];
        if allow {
            extra.push("--allow-synthetic");
        }
        let (mut coord, mut log, addr) = coordinator(&profile, 2, &extra);
        let mut agents = bin()
            .args([
                "agent",
                "--synthetic",
                "2",
                "--name",
                "fake",
                "--coordinator",
            ])
            .arg(addr.to_string())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if !allow {
            let line = wait_for_line(&mut log, Duration::from_secs(10), |l| {
                l.contains("is synthetic")
            });
            assert!(line.contains("--allow-synthetic"), "{line}");
        }
        let status = wait_child(&mut coord, Duration::from_secs(20));
        assert_eq!(status.code(), Some(code), "allow {allow}: {}", rest(log));
        wait_child(&mut agents, Duration::from_secs(10));
        let summary = read_json(&out.join("summary.json"));
        common::assert_schema("summary.schema.json", &summary);
        assert_eq!(summary["outcome"], outcome, "{summary}");
        assert_eq!(summary["synthetic_agents"], 2);
        assert!(
            summary["agents"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["synthetic"] == true),
            "{}",
            summary["agents"]
        );
        let junit = std::fs::read_to_string(&junit).unwrap();
        if allow {
            assert!(summary.get("fail_reason").is_none(), "{summary}");
            assert!(!junit.contains("<failure"), "{junit}");
        } else {
            let reason = summary["fail_reason"].as_str().unwrap();
            assert!(
                reason.contains("2 of 2 agent(s) were synthetic")
                    && reason.contains("--allow-synthetic"),
                "{reason}"
            );
            assert!(junit.contains("synthetic"), "{junit}");
        }
    }
    assert_eq!(decoy.accepted(), 0, "synthetic agents opened load");
}

/// One length-prefixed frame off a blocking stream, prefix included; `None` at its end.
fn read_raw_frame(stream: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut frame = len.to_vec();
    frame.resize(4 + u32::from_be_bytes(len) as usize, 0);
    stream.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

/// What a man in the middle does to the sealed frames (those after the two handshake frames
/// each way) going in one direction: given the index of a sealed frame and its bytes, the
/// frames to pass on instead.
type Tamper = Box<dyn FnMut(usize, Vec<u8>) -> Vec<Vec<u8>> + Send>;

/// A proxy in front of `to` for one session that passes every frame on, except what
/// `to_agent` and `to_coordinator` change.
fn man_in_the_middle(to: SocketAddr, to_agent: Tamper, to_coordinator: Tamper) -> SocketAddr {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((agent, _)) = listener.accept() else {
            return;
        };
        let coordinator = std::net::TcpStream::connect(to).unwrap();
        let pump =
            |mut from: std::net::TcpStream, mut into: std::net::TcpStream, mut tamper: Tamper| {
                std::thread::spawn(move || {
                    let mut count = 0usize;
                    while let Some(frame) = read_raw_frame(&mut from) {
                        let out = match count.checked_sub(2) {
                            None => vec![frame],
                            Some(sealed) => tamper(sealed, frame),
                        };
                        count += 1;
                        if out.iter().any(|f| into.write_all(f).is_err()) {
                            break;
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                })
            };
        let down = pump(
            coordinator.try_clone().unwrap(),
            agent.try_clone().unwrap(),
            to_agent,
        );
        let up = pump(agent, coordinator, to_coordinator);
        let _ = (down.join(), up.join());
    });
    addr
}

fn untouched() -> Tamper {
    Box::new(|_, frame| vec![frame])
}

#[test]
fn altered_replayed_or_injected_frames_end_the_session_with_one_clear_line() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "uV3o0Jc5bq9l6W1p7Kx2Qm4Zr8Yt0Hs1Ga3Fd5Ee7Nc=\n").unwrap();
    let profile = write_json(
        dir.path(),
        "mitm.json",
        &json!({
            "name": "mitm",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 50,
            "heartbeat": {"interval": "250ms"},
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "20s"}}]
        }),
    );
    // Coordinator -> agent, sealed frames: 0-2 clock probes, 3 the plan, then keepalives.
    // Agent -> coordinator: 0-2 answers, 3 ready, 4 started, then reports.
    let flip: Tamper = Box::new(|i, mut frame| {
        if i == 3 {
            frame[20] ^= 0x01;
        }
        vec![frame]
    });
    let mut first = None;
    let replay: Tamper = Box::new(move |i, frame| {
        if i == 0 {
            first = Some(frame.clone());
        }
        match (i, &first) {
            (1, Some(old)) => vec![old.clone()],
            _ => vec![frame],
        }
    });
    // Mid-run, a stop as the handshake frames are written: plain JSON, no seal.
    let inject: Tamper = Box::new(|i, frame| {
        if i != 5 {
            return vec![frame];
        }
        let body = br#"{"type":"stop","reason":"injected"}"#;
        let mut forged = (body.len() as u32).to_be_bytes().to_vec();
        forged.extend_from_slice(body);
        vec![frame, forged]
    });
    let cases: Vec<(&str, Tamper, Tamper, &str, &str)> = vec![
        (
            "flip",
            flip,
            untouched(),
            "agent",
            "frame 3 failed authentication",
        ),
        (
            "replay",
            untouched(),
            replay,
            "coordinator",
            "frame 0 arrived where frame 1 was due",
        ),
        (
            "inject",
            inject,
            untouched(),
            "agent",
            "frame 6 failed authentication",
        ),
    ];
    for (name, to_agent, to_coordinator, detected_by, line) in cases {
        let token_arg = ["--token-file", token.to_str().unwrap()];
        let (mut coord, log, addr) = coordinator(&profile, 1, &token_arg);
        let proxy = man_in_the_middle(addr, to_agent, to_coordinator);
        let mut agent = bin()
            .args([
                "agent",
                "--name",
                "victim",
                "--coordinator",
                &proxy.to_string(),
            ])
            .args(token_arg)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let agent_status = wait_child(&mut agent, Duration::from_secs(15));
        let agent_log = rest(agent.stderr.take().unwrap());
        let coord_status = wait_child(&mut coord, Duration::from_secs(15));
        let coord_log = rest(log);
        assert_eq!(agent_status.code(), Some(3), "{name}: {agent_log}");
        assert_eq!(coord_status.code(), Some(3), "{name}: {coord_log}");
        let (detector, other) = match detected_by {
            "agent" => (&agent_log, &coord_log),
            _ => (&coord_log, &agent_log),
        };
        let lines: Vec<&str> = detector.lines().filter(|l| l.contains(line)).collect();
        assert_eq!(lines.len(), 1, "{name}: logged once: {detector}");
        assert!(
            lines[0].contains("closing the session"),
            "{name}: {}",
            lines[0]
        );
        // Nothing forged was obeyed: the injected stop would say "stopped ...: injected".
        assert!(
            !agent_log.contains(": injected") && !coord_log.contains(": injected"),
            "{name}: {agent_log}\n{other}"
        );
    }
}
