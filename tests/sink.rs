//! `stampede sink` as a user runs it: readiness line, echo, and the per-second stats line.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use common::{bin, wait_for_line};

#[test]
fn sink_echoes_holds_and_reports_each_second() {
    let mut child = bin()
        .args(["sink", "--listen", "127.0.0.1:0", "--listen", "[::1]:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let v4 = wait_for_line(&mut stdout, Duration::from_secs(5), |l| {
        l.starts_with("listening on 127.0.0.1:")
    });
    wait_for_line(&mut stdout, Duration::from_secs(5), |l| {
        l.starts_with("listening on [::1]:")
    });
    let addr: std::net::SocketAddr = common::listening_addr(&v4);

    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    clients[0].write_all(b"heartbeat").unwrap();
    let mut echo = [0u8; 9];
    clients[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    clients[0].read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"heartbeat");

    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let line = wait_for_line(&mut stderr, Duration::from_secs(5), |l| {
        l.contains("open 3 ")
    });
    assert!(
        line.contains("accepted 3") && line.contains("bytes/s"),
        "{line}"
    );
    drop(clients);
    wait_for_line(&mut stderr, Duration::from_secs(5), |l| {
        l.contains("open 0 ")
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sink_refuses_an_address_it_cannot_listen_on() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Without SO_REUSEPORT on the first socket, the sink cannot share its port.
    let addr = taken.local_addr().unwrap();
    let out = bin()
        .args(["sink", "--listen", &addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen"), "{stderr}");
}

/// Child pids of `pid`, whichever of its threads started them, from /proc (Linux 3.5+).
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    children
}

/// Sockets a process holds, from its descriptor table.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn sink_workers_share_the_port_report_totals_and_die_with_their_parent() {
    let mut child = bin()
        .args(["sink", "--listen", "127.0.0.1:0", "--workers", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = wait_for_line(&mut stdout, Duration::from_secs(10), |l| {
        l.starts_with("listening on ")
    });
    let addr: std::net::SocketAddr = line["listening on ".len()..].trim().parse().unwrap();
    wait_for_line(&mut stdout, Duration::from_secs(5), |l| l == "workers 3\n");
    let workers = children_of(child.id());
    assert_eq!(workers.len(), 3, "{workers:?}");

    // Different source ports hash to different workers: 300 connections reach all three.
    let mut clients: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    for client in clients.iter_mut().step_by(37) {
        client.write_all(b"ping").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut echo = [0u8; 4];
        client.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping");
    }
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let totals = wait_for_line(&mut stderr, Duration::from_secs(10), |l| {
        l.contains("open 300 ")
    });
    assert!(
        totals.contains("accepted 300 ") && totals.contains("workers 3/3"),
        "{totals}"
    );
    for worker in &workers {
        // Each worker holds some: its listener and admin socket plus accepted connections.
        assert!(
            sockets_of(*worker) > 2 + 30,
            "worker {worker} holds too few"
        );
    }

    // A killed supervisor leaves no worker behind.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while workers
        .iter()
        .any(|w| std::path::Path::new(&format!("/proc/{w}")).exists())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "workers outlived their parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(clients);
}

#[test]
fn sink_workers_serve_one_certificate_that_cert_out_writes() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("sink.pem");
    let mut child = bin()
        .args([
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--quiet",
        ])
        .args(["--protocol", "tls", "--cert-out"])
        .arg(&pem)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = wait_for_line(&mut stdout, Duration::from_secs(10), |l| {
        l.starts_with("listening on ")
    });
    let addr = line["listening on ".len()..].trim().to_string();
    wait_for_line(&mut stdout, Duration::from_secs(5), |l| l == "workers 2\n");
    // Trusting only the written certificate, every connection (spread over both workers by
    // SO_REUSEPORT) completes its handshake: both workers serve that one certificate.
    let profile = dir.path().join("tls.json");
    std::fs::write(
        &profile,
        serde_json::json!({
            "name": "workers-tls",
            "target": {"addrs": [addr]},
            "protocol": "tls",
            "tls": {"server_name": "localhost", "ca_file": pem},
            "connections": 100,
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "500ms"}}],
            "thresholds": ["errors <= 0", "established_ratio >= 1"]
        })
        .to_string(),
    )
    .unwrap();
    let out = bin()
        .args(["run", "--quiet"])
        .arg(&profile)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
