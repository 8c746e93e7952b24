//! Shared helpers for integration tests: real servers on loopback, the real binary, schemas.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede::live::{ControlTx, LiveRx};
use stampede::profile::Profile;
use stampede::run::{self, Progress, RunOptions, RunResult};

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stampede"))
}

/// Validates `instance` against `schemas/NAME`, listing every violation on failure.
pub fn assert_schema(name: &str, instance: &Value) {
    let text = std::fs::read_to_string(repo(&format!("schemas/{name}"))).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}");
}

/// An in-process sink on `127.0.0.1:0`; dropping the handle stops it and drops its connections.
pub struct SinkHandle {
    pub addr: SocketAddr,
    pub stats: Arc<stampede::sink::SinkStats>,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SinkHandle {
    pub async fn start() -> SinkHandle {
        let listener = stampede::sink::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(stampede::sink::SinkStats::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(stampede::sink::run(vec![listener], stats.clone(), async {
            let _ = stop_rx.await;
        }));
        SinkHandle {
            addr,
            stats,
            stop_tx: Some(stop_tx),
        }
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
    }
}

/// Silent in-process run options for `profile` (JSON), with the controls to steer it.
pub fn options(profile: &Value, workers: usize) -> (RunOptions, ControlTx, LiveRx) {
    let profile = Profile::from_value(profile.clone()).expect("valid test profile");
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    let (live_tx, live_rx) = tokio::sync::watch::channel(None);
    let options = RunOptions {
        profile,
        outputs: Default::default(),
        workers: Some(workers),
        allow_overcommit: false,
        progress: Progress::Silent,
        control_rx,
        live_tx: Some(live_tx),
    };
    (options, control_tx, live_rx)
}

/// Runs a profile (JSON) in this process, silently, and returns its result.
pub async fn run_json(profile: &Value, allow_overcommit: bool, out: Option<&Path>) -> RunResult {
    let (mut options, _control_tx, _live_rx) = options(profile, 2);
    options.allow_overcommit = allow_overcommit;
    options.outputs.out_dir = out.map(Path::to_path_buf);
    run::execute(options).await.expect("run starts")
}

/// A `stampede sink` child process; killed on drop.
pub struct SinkProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl SinkProcess {
    pub fn start() -> SinkProcess {
        SinkProcess::start_with(&[])
    }

    /// A sink process with extra flags, e.g. `["--protocol", "h2"]`.
    pub fn start_with(args: &[&str]) -> SinkProcess {
        let mut child = bin()
            .args(["sink", "--listen", "127.0.0.1:0", "--quiet"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sink starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        SinkProcess {
            child,
            addr: listening_addr(&line),
        }
    }
}

/// The address in a `listening on ADDR` line (a sink's first line, a coordinator's
/// `listening on ADDR, waiting for N agent(s)`), wherever the phrase stands in the line.
pub fn listening_addr(line: &str) -> SocketAddr {
    line.split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ', '\n']).next())
        .and_then(|addr| addr.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `listening on ADDR` in {line:?}"))
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` connections established once with their handshake timed, held to the end without a
/// reconnection or an error, and their heartbeats answered. With 500 ms heartbeats spread
/// evenly, those sent in the last 100 ms (a fifth of the connections) may still be in flight
/// when the run ends (a broker busy with fan-out answers in tens of milliseconds at worst).
pub fn assert_clean_hold(s: &stampede::report::summary::Summary, n: u64) {
    assert_eq!(s.error_total(), 0, "{:?} {:?}", s.errors, s.error_details);
    assert_eq!(s.connections.established, n);
    assert_eq!(s.connections.open_at_end, n);
    assert_eq!(s.connections.reconnects, 0);
    assert_eq!(s.latency_us.handshake.count, n);
    assert!(s.heartbeats.sent >= n, "{:?}", s.heartbeats);
    assert_heartbeats_answered(s, n / 5);
}

/// Phases for a client-side storm: ramp at 4,000/s, hold 1 s, then every connection kicked
/// and reconnected within a 3 s storm.
pub fn storm_phases() -> Value {
    serde_json::json!([
        {"ramp": {"rate": 4000}},
        {"hold": {"for": "1s"}},
        {"storm": {"fraction": 1.0, "for": "3s"}}
    ])
}

/// After `storm_phases` with `n` connections: all kicked, all back through a fresh handshake
/// within 2.5 s, all open at the end. Prints the handshake and recovery figures as `label`.
pub fn assert_storm_recovered(s: &stampede::report::summary::Summary, n: u64, label: &str) {
    let storm = s.phases.iter().find(|p| p.name == "storm").unwrap();
    assert_eq!(storm.reconnects, n, "{:?}", s.errors);
    assert_eq!(s.connections.open_at_end, n);
    assert_eq!(s.connections.established, 2 * n);
    // Every establishment, first or after the storm, went through the handshake.
    assert_eq!(s.latency_us.handshake.count, 2 * n);
    assert!(
        storm.recovery_100_s.is_some_and(|t| t < 2.5),
        "{:?}",
        storm.recovery_100_s
    );
    eprintln!(
        "{label} storm: handshake p50 {:?} us p99 {:?} us, recovery_100 {:?} s",
        s.latency_us.handshake.p50, s.latency_us.handshake.p99, storm.recovery_100_s
    );
}

/// Every heartbeat was answered but those the run reports still in flight at its end, which
/// are at most `in_flight` (one a connection at the very most); each answer was timed.
pub fn assert_heartbeats_answered(s: &stampede::report::summary::Summary, in_flight: u64) {
    let h = &s.heartbeats;
    assert_eq!(h.sent, h.answered + h.in_flight_at_end, "{h:?}");
    assert!(
        h.in_flight_at_end <= in_flight,
        "{h:?}: more in flight at the end than the {in_flight} that could be"
    );
    assert_eq!(s.latency_us.heartbeat_rtt.count, h.answered);
}

/// Plays `profile` with `stampede run --agents N --headless --out DIR` (a local swarm) and
/// returns its summary.json, after checking that the run passed (exit 0).
pub fn run_local_swarm(profile: &Value, agents: usize) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profile.json");
    std::fs::write(&file, profile.to_string()).unwrap();
    let out = dir.path().join("out");
    let status = bin()
        .args([
            "run",
            "--agents",
            &agents.to_string(),
            "--headless",
            "--quiet",
        ])
        .arg("--out")
        .arg(&out)
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the local swarm run did not pass");
    read_json(&out.join("summary.json"))
}

/// Reads `reader` line by line until `pred` matches one, or panics after `limit`.
pub fn wait_for_line(
    reader: &mut impl BufRead,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    let mut line = String::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no matching line within {limit:?}"
        );
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "stream ended before a matching line");
        if pred(&line) {
            return line;
        }
    }
}

/// Waits for a child with a bound; kills it and panics if it overstays.
pub fn wait_child(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Starts `stampede run --headless --out DIR PROFILE` and waits (bounded) until its progress
/// says all `connections` are held; returns the child and its progress stream.
pub fn run_until_held(
    dir: &Path,
    profile: &Path,
    connections: u64,
) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut run = bin()
        .args(["run", "--headless", "--out"])
        .arg(dir)
        .arg(profile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stampede run starts");
    let mut progress = BufReader::new(run.stderr.take().expect("piped stderr"));
    let held = format!(" {connections}/{connections}");
    wait_for_line(&mut progress, Duration::from_secs(10), |l| {
        l.contains("hold") && l.contains(&held)
    });
    (run, progress)
}

/// Lines of a child's stream, read on a thread so that waits are bounded even when the child
/// goes quiet.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    pub fn new(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line from now on that matches, within `limit`.
    pub fn wait(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no matching line within {limit:?} ({e}); seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Everything until the stream ends (bounded), added to what was seen before.
    pub fn all(&mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        while let Ok(line) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}
