//! Injected faults, each against real processes: agents killed mid-ramp and mid-storm, the sink
//! killed mid-hold and brought back, the target's port closed mid-run, `--out` on a read-only
//! and on a full file system, SIGTERM/SIGINT in every phase, and a partition between agent and
//! coordinator in network namespaces. After each: what reached the coordinator is all in the
//! hlog and the summary, and the summary names what is missing.
//!
//! Already covered elsewhere and not repeated here: an agent killed mid-hold and the
//! coordinator frozen or killed (tests/swarm.rs), the sink killed mid-hold without reconnects
//! and SIGINT mid-hold (tests/failures.rs).

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Lines, SinkProcess, bin, read_json, wait_child};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use serde_json::{Value, json};

fn write(dir: &Path, name: &str, profile: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, profile.to_string()).unwrap();
    path
}

struct Coordinator {
    child: Child,
    addr: SocketAddr,
    stderr: Lines,
}

fn coordinator(
    prefix: &[&str],
    profile: &Path,
    agents: usize,
    out: &Path,
    extra: &[&str],
) -> Coordinator {
    let mut command = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(env!("CARGO_BIN_EXE_stampede"));
            c
        }
        None => bin(),
    };
    let mut child = command
        .args(["coordinator", "--headless", "--agents", &agents.to_string()])
        .args(["--join-timeout", "20s", "--out"])
        .arg(out)
        .args(if extra.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        })
        .args(extra)
        .arg(profile)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Lines::new(child.stderr.take().unwrap());
    let line = stderr.wait(Duration::from_secs(10), |l| l.contains("listening on"));
    let addr = common::listening_addr(&line);
    Coordinator {
        child,
        addr,
        stderr,
    }
}

fn agent(prefix: &[&str], coordinator: SocketAddr, name: &str, extra: &[&str]) -> Child {
    let mut command = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(env!("CARGO_BIN_EXE_stampede"));
            c
        }
        None => bin(),
    };
    command
        .args([
            "agent",
            "--quiet",
            "--coordinator",
            &coordinator.to_string(),
        ])
        .args(["--name", name])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Interval start times (whole seconds) and the merged histogram of one tag in an hlog.
fn hlog(path: &Path, tag: &str) -> (Vec<u64>, Histogram<u64>) {
    let bytes = std::fs::read(path).unwrap();
    let mut merged = stampede::metrics::new_histogram();
    let mut starts = Vec::new();
    for entry in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(h) = entry.unwrap()
            && h.tag().map(|t| t.as_str()) == Some(tag)
        {
            starts.push(h.start_timestamp().as_secs_f64().round() as u64);
            let raw = base64::engine::general_purpose::STANDARD
                .decode(h.encoded_histogram())
                .unwrap();
            let decoded: Histogram<u64> = Deserializer::new().deserialize(&mut &raw[..]).unwrap();
            merged.add(decoded).unwrap();
        }
    }
    (starts, merged)
}

/// Nothing lost: every interval of the timeline is in the hlog and the other way round, and
/// the hlog's histograms add up to the summary's figures.
fn assert_hlog_matches_summary(dir: &Path, summary: &Value) {
    let timeline: Vec<u64> = summary["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["second"].as_u64().unwrap())
        .collect();
    let (starts, connect) = hlog(&dir.join("latency.hlog"), "connect");
    assert_eq!(starts, timeline, "hlog intervals vs summary timeline");
    assert_eq!(
        connect.len(),
        summary["latency_us"]["connect"]["count"].as_u64().unwrap()
    );
    let (_, heartbeat) = hlog(&dir.join("latency.hlog"), "heartbeat_rtt");
    assert_eq!(
        heartbeat.len(),
        summary["latency_us"]["heartbeat_rtt"]["count"]
            .as_u64()
            .unwrap()
    );
    if !connect.is_empty() {
        assert_eq!(
            connect.value_at_quantile(0.99),
            summary["latency_us"]["connect"]["p99"].as_u64().unwrap()
        );
    }
}

fn agent_record<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no agent {name} in {}", summary["agents"]))
}

fn missing<'a>(summary: &'a Value, name: &str) -> Option<&'a Value> {
    summary["missing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["agent"] == name)
}

/// The coordinator passes (exit 0) within 20 s and the surviving agent finishes too; the
/// summary written to `out`, checked against its schema and the hlog beside it.
fn finished_summary(coord: &mut Coordinator, survivor: &mut Child, out: &Path) -> Value {
    let status = wait_child(&mut coord.child, Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        coord.stderr.all(Duration::ZERO).join("\n")
    );
    assert_eq!(wait_child(survivor, Duration::from_secs(5)).code(), Some(0));
    let summary = read_json(&out.join("summary.json"));
    common::assert_schema("summary.schema.json", &summary);
    assert_hlog_matches_summary(out, &summary);
    summary
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn agents_killed_mid_ramp_and_mid_storm_lose_only_their_own_intervals() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "p.json",
        &json!({
            "name": "killed-agents",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 600,
            "heartbeat": {"interval": "250ms", "timeout": "5s"},
            "reconnect": {"policy": "immediate"},
            "phases": [
                {"ramp": {"rate": 200}},
                {"hold": {"for": "1s"}},
                {"storm": {"fraction": 1.0, "mode": "close", "for": "3s"}},
                {"hold": {"for": "1s"}}
            ]
        }),
    );
    let out = dir.path().join("coord");
    let mut coord = coordinator(&[], &profile, 3, &out, &[]);
    let mut keeper = agent(&[], coord.addr, "keeper", &["--sources", "127.0.50.1"]);
    let mut in_ramp = agent(&[], coord.addr, "in-ramp", &["--sources", "127.0.50.2"]);
    let mut in_storm = agent(&[], coord.addr, "in-storm", &["--sources", "127.0.50.3"]);

    coord
        .stderr
        .wait(Duration::from_secs(15), |l| l.contains("] ramp"));
    kill(&mut in_ramp);
    coord
        .stderr
        .wait(Duration::from_secs(5), |l| l.contains("agent in-ramp lost"));
    coord
        .stderr
        .wait(Duration::from_secs(15), |l| l.contains("] storm"));
    kill(&mut in_storm);
    coord.stderr.wait(Duration::from_secs(5), |l| {
        l.contains("agent in-storm lost")
    });
    let summary = finished_summary(&mut coord, &mut keeper, &out);
    let expected = summary["timeline"].as_array().unwrap().len() as u64;
    assert!(expected >= 6, "{expected} intervals");

    assert_eq!(agent_record(&summary, "keeper")["status"], "finished");
    assert_eq!(
        agent_record(&summary, "keeper")["intervals_received"],
        expected
    );
    assert!(missing(&summary, "keeper").is_none());
    for (name, phase_end) in [("in-ramp", 3), ("in-storm", 7)] {
        let record = agent_record(&summary, name);
        assert_eq!(record["status"], "lost");
        let m = missing(&summary, name).unwrap_or_else(|| panic!("{name} not in missing"));
        let last = m["last_interval"].as_u64().unwrap();
        assert!(last < phase_end, "{name}: last interval {last}");
        assert_eq!(m["intervals_expected"], expected);
        assert_eq!(m["intervals_received"], last + 1, "{name}: {m}");
        assert_eq!(m["missing_intervals"], json!([last + 1, expected - 1]));
    }
    // Every agent's counts up to its last report are in the totals.
    let per_agent: u64 = summary["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["established"].as_u64().unwrap())
        .sum();
    assert_eq!(summary["connections"]["established"], per_agent);
    let stdout = {
        let mut text = String::new();
        coord
            .child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    assert!(
        stdout.contains("missing      agent in-ramp:") && stdout.contains("never arrived"),
        "{stdout}"
    );
}

/// `stampede sink --listen ADDR` as a child, once it is listening; with `--admin`, also the
/// admin endpoint's address.
fn sink_at(addr: &str, extra: &[&str]) -> (Child, SocketAddr, Option<String>) {
    let mut child = bin()
        .args(["sink", "--quiet", "--listen", addr])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let bound = common::listening_addr(&line);
    let admin = extra.contains(&"--admin").then(|| {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("admin on ")
            .unwrap_or_else(|| panic!("sink said {line:?}"))
            .to_string()
    });
    (child, bound, admin)
}

fn run_child(dir: &Path, profile: &Path, extra: &[&str]) -> (Child, Lines) {
    let mut child = bin()
        .args(["run", "--headless", "--out"])
        .arg(dir)
        .args(extra)
        .arg(profile)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(child.stderr.take().unwrap());
    (child, lines)
}

/// `errors N` of a progress line.
fn progress_errors(line: &str) -> u64 {
    line.split(" errors ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sink_killed_mid_hold_then_back_every_connection_reconnects_per_policy() {
    let (mut first, addr, _) = sink_at("127.0.0.1:0", &[]);
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "p.json",
        &json!({
            "name": "sink-comes-back",
            "target": {"addrs": [addr.to_string()]},
            "connections": 200,
            "sources": {"addrs": ["127.0.51.1"]},
            "heartbeat": {"interval": "200ms", "timeout": "5s"},
            "reconnect": {"policy": "fixed", "delay": "200ms", "max_attempts": 100},
            "phases": [{"ramp": {"rate": 2000}}, {"hold": {"for": "6s"}}]
        }),
    );
    let (mut run, mut progress) = run_child(dir.path(), &profile, &[]);
    progress.wait(Duration::from_secs(10), |l| {
        l.contains("hold") && l.contains(" 200/200")
    });
    kill(&mut first);
    // Down for two full progress lines, so reconnects meet a closed port for a while.
    progress.wait(Duration::from_secs(5), |l| progress_errors(l) > 0);
    progress.wait(Duration::from_secs(5), |l| l.contains("hold"));
    let (mut second, back, _) = sink_at(&addr.to_string(), &[]);
    assert_eq!(back, addr);
    progress.wait(Duration::from_secs(5), |l| l.contains(" 200/200"));
    let status = wait_child(&mut run, Duration::from_secs(15));
    let lines = progress.all(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    assert!(!lines.iter().any(|l| l.contains("panicked")), "{lines:?}");
    kill(&mut second);

    let summary = read_json(&dir.path().join("summary.json"));
    let c = &summary["connections"];
    let e = &summary["errors"];
    let dropped = e["closed_by_peer"].as_u64().unwrap() + e["reset"].as_u64().unwrap();
    assert_eq!(dropped, 200, "every held connection was dropped once: {e}");
    assert!(
        e["refused"].as_u64().unwrap() >= 200,
        "reconnects met the closed port: {e}"
    );
    assert_eq!(c["reconnects"], 200, "{c}");
    assert_eq!(c["given_up"], 0);
    assert_eq!(c["established"], 400);
    assert_eq!(c["open_at_end"], 200);
    assert_hlog_matches_summary(dir.path(), &summary);
}

#[test]
fn target_port_closed_mid_run_reconnects_are_refused_then_given_up() {
    let (mut sink, addr, admin) = sink_at("127.0.0.1:0", &["--admin", "127.0.0.1:0"]);
    let admin = admin.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "p.json",
        &json!({
            "name": "port-closed",
            "target": {"addrs": [addr.to_string()]},
            "connections": 200,
            "sources": {"addrs": ["127.0.52.1"]},
            "reconnect": {"policy": "fixed", "delay": "50ms", "max_attempts": 3},
            "phases": [
                {"ramp": {"rate": 2000}},
                // Every connection accepted before the listener goes (a busy sink may lag).
                {"hold": {"for": "1s"}},
                {"server": {"do": "stop_accepting", "admin": admin, "for": "500ms"}},
                {"storm": {"fraction": 0.5, "mode": "close", "for": "1500ms"}}
            ]
        }),
    );
    let (mut run, mut progress) = run_child(dir.path(), &profile, &[]);
    let status = wait_child(&mut run, Duration::from_secs(20));
    let lines = progress.all(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    kill(&mut sink);
    let summary = read_json(&dir.path().join("summary.json"));
    let c = &summary["connections"];
    assert_eq!(c["connected"], 200, "{c}");
    assert_eq!(c["given_up"], 100, "{c}");
    assert_eq!(c["open_at_end"], 100, "the rest stay held: {c}");
    assert_eq!(summary["errors"]["refused"], 300, "{}", summary["errors"]);
    assert_hlog_matches_summary(dir.path(), &summary);
}

/// A tmpfs mounted by the test, unmounted however the test ends.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Mount {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test mounts a tmpfs and needs root (CI runs as root)"
        );
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {options} failed");
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn small_profile(dir: &Path, target: SocketAddr) -> PathBuf {
    write(
        dir,
        "p.json",
        &json!({
            "name": "outputs",
            "target": {"addrs": [target.to_string()]},
            "connections": 50,
            "heartbeat": {"interval": "100ms", "timeout": "5s"},
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "2s"}}],
            "thresholds": ["errors <= 0"]
        }),
    )
}

#[test]
fn out_on_a_read_only_file_system_is_refused_before_anything_opens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path(), listener.local_addr().unwrap());
    let ro = dir.path().join("ro");
    let _mount = Mount::tmpfs(&ro, "ro,size=64k");
    for out in [ro.clone(), ro.join("results")] {
        let result = bin()
            .args(["run", "--headless", "--out"])
            .arg(&out)
            .arg(&profile)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("--out {}", out.display()))
                && stderr.contains("Read-only file system"),
            "{stderr}"
        );
        assert!(result.stdout.is_empty());
    }
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection was opened: {accepted:?}"
    );
}

#[test]
fn out_on_a_full_file_system_reports_it_and_still_prints_the_summary() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path(), sink.addr);
    let full = dir.path().join("full");
    let _mount = Mount::tmpfs(&full, "size=64k");
    // Fill it: the files can still be created, but not a byte more written.
    let mut filler = std::fs::File::create(full.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    let result = bin()
        .args(["run", "--headless", "--out"])
        .arg(&full)
        .arg(&profile)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("could not write results")
            && stderr.contains("No space left on device")
            && stderr.contains("summary.json"),
        "{stderr}"
    );
    assert!(stdout.contains("outputs -- PASS"), "{stdout}");
    assert!(stdout.contains("established 50"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Plays a profile with every kind of phase and signals it once `phase` shows in its progress.
fn signal_in_phase(phase: &str, signal: i32, name: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "p.json",
        &json!({
            "name": "signals",
            "target": "embedded",
            "connections": 300,
            "heartbeat": {"interval": "250ms", "timeout": "5s"},
            "reconnect": {"policy": "immediate"},
            "phases": [
                {"ramp": {"rate": 150}},
                {"hold": {"for": "1s"}},
                {"storm": {"fraction": 1.0, "mode": "close", "for": "3s"}},
                {"drain": {"fraction": 1.0, "over": "3s", "for": "4s"}},
                {"hold": {"for": "30s"}}
            ]
        }),
    );
    let (mut run, mut progress) = run_child(dir.path(), &profile, &[]);
    progress.wait(Duration::from_secs(20), |l| {
        l.contains(&format!("] {phase}"))
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.id() as i32, signal) };
    let status = wait_child(&mut run, Duration::from_secs(10));
    let lines = progress.all(Duration::from_secs(2));
    assert_eq!(status.code(), Some(3), "{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("stampede: {name}: closing connections"))),
        "{lines:?}"
    );
    let mut stdout = String::new();
    run.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(stdout.contains("signals -- ABORTED"), "{stdout}");
    let summary = read_json(&dir.path().join("summary.json"));
    common::assert_schema("summary.schema.json", &summary);
    assert_eq!(summary["outcome"], "aborted");
    assert_eq!(summary["abort_reason"], format!("interrupted by {name}"));
    let last_phase = summary["phases"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last_phase["name"], phase, "{}", summary["phases"]);
    assert_hlog_matches_summary(dir.path(), &summary);
    summary
}

#[test]
fn sigterm_in_the_ramp_stops_gracefully() {
    let summary = signal_in_phase("ramp", libc::SIGTERM, "SIGTERM");
    let c = &summary["connections"];
    assert!(c["established"].as_u64().unwrap() < 300, "{c}");
}

#[test]
fn sigint_in_a_storm_stops_gracefully() {
    signal_in_phase("storm", libc::SIGINT, "SIGINT");
}

#[test]
fn sigterm_in_a_drain_stops_gracefully() {
    signal_in_phase("drain", libc::SIGTERM, "SIGTERM");
}

#[test]
fn a_second_signal_while_stopping_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Enough connections that closing them takes a moment.
    let profile = write(
        dir.path(),
        "p.json",
        &json!({
            "name": "twice",
            "target": "embedded",
            "connections": 4000,
            "phases": [{"ramp": {"rate": 4000}}, {"hold": {"for": "60s"}}]
        }),
    );
    let (mut run, mut progress) = run_child(dir.path(), &profile, &[]);
    progress.wait(Duration::from_secs(20), |l| l.contains("] hold"));
    let started = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    progress.wait(Duration::from_secs(5), |l| {
        l.contains("closing connections")
    });
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    let status = wait_child(&mut run, Duration::from_secs(10));
    assert_eq!(status.code(), Some(3));
    assert!(started.elapsed() < Duration::from_secs(5));
    let lines = progress.all(Duration::from_secs(2));
    // Either the second signal landed while stopping (no summary, said so), or the graceful
    // stop had already finished (a summary): never a hang, never another exit code.
    let second = lines.iter().any(|l| l.contains("second signal, exiting"));
    let summary = dir.path().join("summary.json").exists();
    assert!(second || summary, "{lines:?}");
}

/// Two network namespaces joined by a veth pair; removed (with whatever runs in them) on drop.
struct Netns {
    names: [String; 2],
}

impl Netns {
    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `near` holds 10.214.N.1/24, `far` 10.214.N.2/24, on interfaces named `eth0`.
    fn pair(tag: &str, subnet: u32) -> Netns {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test builds network namespaces and needs root (CI runs as root)"
        );
        let names = [format!("{tag}-near"), format!("{tag}-far")];
        let netns = Netns {
            names: names.clone(),
        };
        netns.remove();
        for ns in &names {
            Netns::ip(&["netns", "add", ns]);
            Netns::ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (a, b) = (format!("{tag}n"), format!("{tag}f"));
        Netns::ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        for (dev, ns, host) in [(&a, &names[0], 1), (&b, &names[1], 2)] {
            Netns::ip(&["link", "set", dev, "netns", ns]);
            Netns::ip(&["-n", ns, "link", "set", dev, "name", "eth0"]);
            let addr = format!("10.214.{subnet}.{host}/24");
            Netns::ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]);
            Netns::ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        netns
    }

    fn exec(&self, index: usize) -> [&str; 4] {
        ["ip", "netns", "exec", self.names[index].as_str()]
    }

    fn remove(&self) {
        for ns in &self.names {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: processes this test started inside its own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

#[test]
fn a_partitioned_agent_closes_within_its_lease_and_the_run_names_what_is_missing() {
    let tag = format!("f{}", std::process::id() % 100_000);
    let netns = Netns::pair(&tag, std::process::id() % 200 + 20);
    let subnet = std::process::id() % 200 + 20;
    let (near, far) = (netns.exec(0), netns.exec(1));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "partition test token, 32 bytes!").unwrap();
    let token = token.to_str().unwrap().to_string();

    // One sink in each namespace on the same loopback port: each agent's target is its own.
    let sink = |exec: &[&str], addr: &str| {
        let mut command = Command::new(exec[0]);
        command
            .args(&exec[1..])
            .arg(env!("CARGO_BIN_EXE_stampede"))
            .args(["sink", "--listen", addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let bound: SocketAddr = common::listening_addr(&line);
        (child, bound)
    };
    let (mut far_sink, target) = sink(&far, "127.0.0.1:0");
    let mut far_sink_stats = Lines::new(far_sink.stderr.take().unwrap());
    let (_near_sink, _) = sink(&near, &target.to_string());

    let profile = write(
        dir.path(),
        "p.json",
        &json!({
            "name": "partition",
            "target": {"addrs": [target.to_string()]},
            "connections": 400,
            "heartbeat": {"interval": "250ms", "timeout": "5s"},
            "phases": [{"ramp": {"rate": 800}}, {"hold": {"for": "7s"}}]
        }),
    );
    let out = dir.path().join("coord");
    let listen = format!("10.214.{subnet}.1:0");
    let mut coord = coordinator(
        &near,
        &profile,
        2,
        &out,
        &["--listen", &listen, "--token-file", &token, "--lease", "3s"],
    );
    let mut steady = agent(&near, coord.addr, "steady", &["--token-file", &token]);
    let mut cut_off = agent(&far, coord.addr, "cut-off", &["--token-file", &token]);
    coord.stderr.wait(Duration::from_secs(15), |l| {
        l.contains("hold") && l.contains(" 400/400")
    });

    Netns::ip(&["-n", &netns.names[1], "link", "set", "eth0", "down"]);
    let cut = Instant::now();
    // The far agent hears nothing and closes everything it holds within its lease.
    far_sink_stats.wait(Duration::from_secs(7), |l| l.contains("open 0 "));
    let closed_after = cut.elapsed();
    // The lease, plus the sink's one-second stats line, plus slack for a busy host.
    assert!(
        closed_after < Duration::from_millis(5000),
        "closed {closed_after:?} after the cut; the lease is 3s"
    );
    let lost = coord
        .stderr
        .wait(Duration::from_secs(6), |l| l.contains("agent cut-off lost"));
    assert!(lost.contains("lease"), "{lost}");
    assert_eq!(
        wait_child(&mut cut_off, Duration::from_secs(5)).code(),
        Some(3)
    );
    let mut far_err = String::new();
    cut_off
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut far_err)
        .unwrap();
    assert!(
        far_err.contains("no word from the coordinator"),
        "{far_err}"
    );

    let summary = finished_summary(&mut coord, &mut steady, &out);
    let _ = far_sink.kill();
    let _ = far_sink.wait();
    assert_eq!(agent_record(&summary, "steady")["status"], "finished");
    let record = agent_record(&summary, "cut-off");
    assert_eq!(record["status"], "lost");
    assert_eq!(record["established"], 200, "its data up to the cut is kept");
    let m = missing(&summary, "cut-off").expect("the cut-off agent is named as missing");
    let expected = summary["timeline"].as_array().unwrap().len() as u64;
    assert_eq!(m["intervals_expected"], expected);
    let last = m["last_interval"].as_u64().unwrap();
    assert!(last + 3 < expected, "last {last} of {expected}");
    assert_eq!(m["missing_intervals"], json!([last + 1, expected - 1]));
}

#[test]
fn sigterm_to_a_coordinator_stops_every_agent_and_keeps_their_last_reports() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "p.json",
        &json!({
            "name": "swarm-signal",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 300,
            "heartbeat": {"interval": "250ms", "timeout": "5s"},
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "60s"}}]
        }),
    );
    let out = dir.path().join("coord");
    let mut coord = coordinator(&[], &profile, 2, &out, &[]);
    let mut agents = [
        agent(&[], coord.addr, "a", &["--sources", "127.0.54.1"]),
        agent(&[], coord.addr, "b", &["--sources", "127.0.54.2"]),
    ];
    coord.stderr.wait(Duration::from_secs(15), |l| {
        l.contains("hold") && l.contains(" 300/300")
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(coord.child.id() as i32, libc::SIGTERM) };
    let status = wait_child(&mut coord.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(3));
    for a in &mut agents {
        assert_eq!(wait_child(a, Duration::from_secs(5)).code(), Some(0));
    }
    let summary = read_json(&out.join("summary.json"));
    common::assert_schema("summary.schema.json", &summary);
    assert_eq!(summary["outcome"], "aborted");
    assert_eq!(summary["abort_reason"], "interrupted by SIGTERM");
    assert_eq!(summary["missing"], json!([]), "every last report arrived");
    for name in ["a", "b"] {
        assert_eq!(agent_record(&summary, name)["status"], "stopped");
    }
    assert_eq!(summary["connections"]["established"], 300);
    assert_hlog_matches_summary(&out, &summary);
}
