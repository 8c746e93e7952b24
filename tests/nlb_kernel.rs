//! `stampede nlb --datapath kernel` with real parts: nftables and conntrack in a network
//! namespace the load balancer builds, a sink on an address it makes reachable, and `stampede
//! run` from client addresses it routes. Small numbers, exact counts: both walls, idle resets,
//! deregistration with and without termination, and cleanup after a crash. Needs root,
//! nftables and conntrack, as CI has (scripts/test-packages). Each test has its own namespace
//! and 10.N.0.0/16 block, so they run in parallel.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test builds network namespaces and needs root (CI runs as root)"
    );
}

/// A kernel-datapath load balancer; SIGTERM and a bounded wait on drop, then checks that it
/// removed its namespace.
struct KernelLb {
    child: Child,
    netns: String,
    net: u8,
    admin: SocketAddr,
}

impl KernelLb {
    fn start(netns: &str, net: u8, targets: &[String], extra: &[&str]) -> KernelLb {
        require_root();
        let mut child = common::bin()
            .args([
                "nlb",
                "--datapath",
                "kernel",
                "--quiet",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(["--netns", netns, "--kernel-net", &net.to_string()])
            .args(["--listen", &format!("10.{net}.2.100:443")])
            .args(["--targets", &targets.join(",")])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stampede nlb starts");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut admin = None;
        let mut seen = String::new();
        for _ in 0..4 {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            if let Some(a) = line.trim().strip_prefix("admin on ") {
                admin = a.parse().ok();
                break;
            }
        }
        let Some(admin) = admin else {
            let _ = child.kill();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("no admin line; stdout:\n{seen}\nstderr:\n{err}");
        };
        KernelLb {
            child,
            netns: netns.to_string(),
            net,
            admin,
        }
    }

    fn vip(&self) -> String {
        format!("10.{}.2.100:443", self.net)
    }

    fn sources(&self) -> Value {
        json!({ "addrs": [format!("10.{}.4.1-10.{}.4.4", self.net, self.net)] })
    }

    /// SIGTERM, a bounded wait, and what it left behind (nothing, it must be).
    fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = common::wait_child(&mut self.child, Duration::from_secs(10));
        assert!(status.success(), "nlb exited {status:?}");
        assert!(
            !netns_exists(&self.netns),
            "namespace {} left behind",
            self.netns
        );
        let local = run_out("ip", &["route", "show", "table", "local"]);
        assert!(
            !local.contains(&format!("10.{}.4.0/24", self.net)),
            "client route left behind:\n{local}"
        );
    }
}

impl Drop for KernelLb {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = common::wait_child(&mut self.child, Duration::from_secs(10));
        }
    }
}

fn run_out(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_exists(name: &str) -> bool {
    run_out("ip", &["netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// A sink on the given addresses (which the load balancer made local); killed on drop.
struct Sink(Child);

impl Sink {
    fn start(listen: &[String]) -> Sink {
        let mut cmd = common::bin();
        cmd.args(["sink", "--quiet"]);
        for l in listen {
            cmd.args(["--listen", l]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sink starts");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        common::wait_for_line(&mut out, Duration::from_secs(10), |l| {
            l.contains("listening on")
        });
        std::thread::spawn(move || for _ in out.lines() {});
        Sink(child)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `stampede run --headless --out DIR` of `profile`; its exit code and summary.json.
fn run_profile(dir: &Path, profile: &Value) -> (i32, Value) {
    let file = dir.join("profile.json");
    std::fs::write(&file, serde_json::to_vec_pretty(profile).unwrap()).unwrap();
    let mut child = common::bin()
        .args(["run", "--headless", "--quiet", "--out"])
        .arg(dir.join("out"))
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starts");
    let status = common::wait_child(&mut child, Duration::from_secs(60));
    let summary = common::read_json(&dir.join("out/summary.json"));
    (status.code().unwrap_or(-1), summary)
}

fn profile(lb: &KernelLb, connections: u64, heartbeat: &str, phases: Value) -> Value {
    json!({
        "name": "nlb-kernel",
        "target": { "addrs": [lb.vip()] },
        "connections": connections,
        "sources": lb.sources(),
        "heartbeat": { "interval": heartbeat, "timeout": "2s" },
        "connect_timeout": "2s",
        "phases": phases,
        "nlb": { "admin": lb.admin.to_string() },
    })
}

#[test]
fn the_concurrent_wall_drops_exactly_the_excess_and_counts_each_flow_once() {
    let net = 216;
    let target = format!("10.{net}.1.100:7000");
    let mut lb = KernelLb::start(
        "tkconc",
        net,
        std::slice::from_ref(&target),
        &["--ports-per-target", "200"],
    );
    let _sink = Sink::start(std::slice::from_ref(&target));
    let dir = tempfile::tempdir().unwrap();
    let p = profile(
        &lb,
        300,
        "1s",
        json!([{ "ramp": { "rate": 600 } }, { "hold": { "for": "4s" } }]),
    );
    let (_, s) = run_profile(dir.path(), &p);
    let c = &s["connections"];
    assert_eq!(c["established_slots"], 200, "{c:#}");
    // Dropped SYNs: the client retransmits until its connect timeout, as behind an NLB.
    assert_eq!(s["errors"]["connect_timeout"], 100, "{:#}", s["errors"]);
    let total = &s["nlb"]["total"];
    assert_eq!(total["PortAllocationErrorCount"], 100, "{total:#}");
    assert_eq!(
        total["PortAllocationErrorCount_Concurrent"], 100,
        "{total:#}"
    );
    assert_eq!(total["PortAllocationErrorCount_PerMinute"], 0, "{total:#}");
    assert_eq!(total["NewFlowCount"], 200, "{total:#}");
    assert_eq!(s["nlb"]["targets"][0]["PortAllocationErrorCount"], 100);
    assert!(
        total["ProcessedBytes"].as_u64().unwrap_or(0) > 0,
        "{total:#}"
    );
    lb.stop();
}

/// A closed flow gives its port back: a storm that closes every connection of a pair at 75 %
/// of its ports reconnects them all, which needs the first 150 ports freed (150 + 150 > 200).
/// The reconnects come 1 s after the closes: the kernel frees a deleted slot within a few
/// tenths of a second (its set's garbage collector), and a loaded CI machine must not turn
/// that into refusals.
#[test]
fn a_closed_flow_gives_its_port_back() {
    let net = 222;
    let target = format!("10.{net}.1.100:7000");
    let mut lb = KernelLb::start(
        "tkslot",
        net,
        std::slice::from_ref(&target),
        &["--ports-per-target", "200"],
    );
    let _sink = Sink::start(std::slice::from_ref(&target));
    let dir = tempfile::tempdir().unwrap();
    let mut p = profile(
        &lb,
        150,
        "1s",
        json!([
            { "ramp": { "rate": 600 } },
            { "hold": { "for": "1s" } },
            { "storm": { "fraction": 1.0, "mode": "close", "for": "4s" } },
            { "hold": { "for": "1s" } }
        ]),
    );
    p["reconnect"] =
        json!({ "policy": "exponential", "base": "1s", "cap": "1s", "jitter": "none" });
    let (_, s) = run_profile(dir.path(), &p);
    let c = &s["connections"];
    let total = &s["nlb"]["total"];
    assert_eq!(c["open_at_end"], 150, "{c:#}\n{total:#}");
    assert!(c["reconnects"].as_u64().unwrap_or(0) >= 150, "{c:#}");
    assert_eq!(total["PortAllocationErrorCount"], 0, "{total:#}");
    // Every attempt was a flow the balancer admitted, counted once by its rule.
    assert_eq!(total["NewFlowCount"], c["attempts"], "{total:#}");
    lb.stop();
}

#[test]
fn the_per_minute_wall_is_counted_apart_from_the_concurrent_one() {
    let net = 217;
    let target = format!("10.{net}.1.100:7000");
    let mut lb = KernelLb::start(
        "tkrate",
        net,
        std::slice::from_ref(&target),
        &["--ports-per-target", "1000", "--new-per-minute", "100"],
    );
    let _sink = Sink::start(std::slice::from_ref(&target));
    let dir = tempfile::tempdir().unwrap();
    let p = profile(
        &lb,
        150,
        "1s",
        json!([{ "ramp": { "rate": 300 } }, { "hold": { "for": "4s" } }]),
    );
    let (_, s) = run_profile(dir.path(), &p);
    assert_eq!(
        s["connections"]["established_slots"], 100,
        "{:#}",
        s["connections"]
    );
    assert_eq!(s["errors"]["connect_timeout"], 50, "{:#}", s["errors"]);
    let total = &s["nlb"]["total"];
    assert_eq!(total["PortAllocationErrorCount_PerMinute"], 50, "{total:#}");
    assert_eq!(total["PortAllocationErrorCount_Concurrent"], 0, "{total:#}");
    assert_eq!(total["PortAllocationErrorCount"], 50, "{total:#}");
    lb.stop();
}

#[test]
fn an_idle_flow_is_forgotten_and_its_next_packet_reset() {
    let net = 218;
    let target = format!("10.{net}.1.100:7000");
    let mut lb = KernelLb::start(
        "tkidle",
        net,
        std::slice::from_ref(&target),
        &["--idle-timeout", "2s"],
    );
    let _sink = Sink::start(std::slice::from_ref(&target));
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every 4 s: within 9 s every flow has two 4 s gaps, idle past the 2 s
    // timeout, so each one's next heartbeat meets a forgotten flow.
    let p = profile(
        &lb,
        50,
        "4s",
        json!([{ "ramp": { "rate": 500 } }, { "hold": { "for": "9s" } }]),
    );
    let (code, s) = run_profile(dir.path(), &p);
    assert_eq!(code, 0, "no thresholds: the run itself succeeds");
    assert_eq!(s["connections"]["established_slots"], 50);
    assert_eq!(s["errors"]["reset"], 50, "{:#}", s["errors"]);
    // CloudWatch counts reset packets, not flows: a client whose segment crossed the first
    // reset may send one more and get a second, so at least one per flow, at most two.
    let resets = s["nlb"]["total"]["TCP_ELB_Reset_Count"]
        .as_u64()
        .unwrap_or(0);
    assert!((50..=100).contains(&resets), "{:#}", s["nlb"]["total"]);
    lb.stop();
}

/// Two targets, one deregistered 1 s into a hold; returns the summary and how many flows the
/// deregistered target had.
/// A run that deregisters target A of two; its summary, its flows on A, and the balancer
/// (still running, for the caller to read and stop).
fn deregister_run(netns: &str, net: u8, termination: &str) -> (Value, u64, KernelLb, Sink) {
    let a = format!("10.{net}.1.100:7000");
    let b = format!("10.{net}.1.100:7001");
    let lb = KernelLb::start(
        netns,
        net,
        &[a.clone(), b.clone()],
        &[
            "--deregistration-delay",
            "1s",
            "--connection-termination",
            termination,
        ],
    );
    let sink = Sink::start(&[a.clone(), b]);
    let dir = tempfile::tempdir().unwrap();
    let p = profile(
        &lb,
        100,
        "1s",
        json!([
            { "ramp": { "rate": 500 } },
            { "hold": { "for": "1s" } },
            { "nlb": { "do": "deregister", "target": a, "for": "4s" } }
        ]),
    );
    let (_, s) = run_profile(dir.path(), &p);
    let on_a = s["nlb"]["targets"][0]["NewFlowCount"].as_u64().unwrap_or(0);
    assert_eq!(
        s["nlb"]["targets"][0]["registered"], false,
        "{:#}",
        s["nlb"]
    );
    assert!(
        on_a > 10 && on_a < 90,
        "the hash spreads flows: {on_a} of 100 on A"
    );
    (s, on_a, lb, sink)
}

#[test]
fn deregistration_with_termination_resets_the_targets_flows_after_the_delay() {
    let (s, on_a, mut lb, _sink) = deregister_run("tkdrt", 219, "on");
    // Every flow on B outlived the run and every other one was reset (no reconnects here).
    let reset = s["errors"]["reset"].as_u64().unwrap_or(0);
    let (open, on_b) = (
        s["connections"]["open_at_end"].as_u64().unwrap_or(0),
        s["nlb"]["targets"][1]["NewFlowCount"].as_u64().unwrap_or(0),
    );
    let context = format!("{:#}\n{:#}\n{:#}", s["errors"], s["connections"], s["nlb"]);
    assert_eq!(open, on_b, "{context}");
    assert_eq!(reset, 100 - on_b, "{context}");
    assert!(on_a >= reset, "{context}");
    // Each of A's flows is reset once or twice (its next packet, and one more when a
    // heartbeat and its echo cross the reset); a flow closed at the end of the run can add
    // one (the client's reset of an unread echo makes the target's last packets invalid).
    let resets = s["nlb"]["total"]["TCP_ELB_Reset_Count"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        (on_a..=2 * on_a + (100 - on_a)).contains(&resets),
        "{on_a} flows on A: {:#}",
        s["nlb"]["total"]
    );
    lb.stop();
}

#[test]
fn deregistration_without_termination_lets_existing_flows_continue() {
    let (s, _, mut lb, _sink) = deregister_run("tkdrn", 220, "off");
    assert_eq!(s["errors"]["reset"], 0, "{:#}", s["errors"]);
    assert_eq!(s["connections"]["open_at_end"], 100);
    lb.stop();
}

#[test]
fn a_crashed_run_is_cleaned_up_by_the_next_start() {
    let net = 221;
    let target = format!("10.{net}.1.100:7000");
    let mut first = KernelLb::start("tkcrash", net, std::slice::from_ref(&target), &[]);
    first.child.kill().expect("SIGKILL");
    let _ = first.child.wait();
    assert!(
        netns_exists("tkcrash"),
        "SIGKILL leaves the namespace behind"
    );
    let mut second = KernelLb::start("tkcrash", net, std::slice::from_ref(&target), &[]);
    second.stop();
    let lo = run_out("ip", &["addr", "show", "dev", "lo"]);
    assert!(
        !lo.contains(&format!("10.{net}.1.100")),
        "target address left on lo:\n{lo}"
    );
}

#[test]
fn the_kernel_datapath_refuses_what_it_cannot_route() {
    for (args, expected) in [
        (
            vec![
                "--listen",
                "127.0.0.1:443",
                "--targets",
                "10.222.1.100:7000",
            ],
            "--listen",
        ),
        (
            vec![
                "--listen",
                "10.222.2.100:443",
                "--targets",
                "127.0.0.1:7000",
            ],
            "--targets",
        ),
        (
            vec![
                "--listen",
                "10.222.2.100:443",
                "--targets",
                "10.222.1.100:7000",
                "--client-ip-preservation",
                "on",
            ],
            "--client-ip-preservation",
        ),
        (
            vec![
                "--listen",
                "10.222.2.100:443",
                "--targets",
                "10.222.1.100:7000",
                "--netns",
                "Not-A-Name",
            ],
            "--netns",
        ),
    ] {
        let out = common::bin()
            .args([
                "nlb",
                "--datapath",
                "kernel",
                "--kernel-net",
                "222",
                "--quiet",
            ])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "nothing started for {args:?}");
    }
    assert!(!netns_exists("snlb"));
}
