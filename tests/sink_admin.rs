//! The sink playing a deploy from its side, on real loopback sockets: closing all, a fraction,
//! at a rate or after a lifetime reaches clients as an orderly close (EOF); stopping accepting
//! refuses new connections and keeps held ones; the admin endpoint and `stampede sink-admin`
//! drive it and name the field of a bad request.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, wait_child, wait_for_line};
use stampede::sink::{self, SinkAction, SinkControl, SinkStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(5);

/// An in-process sink with its admin endpoint; dropping it stops both.
struct AdminSink {
    addr: SocketAddr,
    admin: SocketAddr,
    _stop_tx: tokio::sync::watch::Sender<bool>,
}

impl AdminSink {
    async fn start() -> AdminSink {
        let listener = sink::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let stats = Arc::new(SinkStats::default());
        let control = SinkControl::new();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        tokio::spawn(sink::serve_admin(
            admin_listener,
            control.clone(),
            stats.clone(),
            stopped(stop_rx.clone()),
        ));
        tokio::spawn(sink::run_controlled(
            vec![listener],
            stats,
            control,
            stopped(stop_rx),
        ));
        AdminSink {
            addr,
            admin,
            _stop_tx: stop_tx,
        }
    }

    async fn apply(&self, action: SinkAction) -> sink::SinkStatus {
        sink::admin_apply(self.admin, &action).await.unwrap()
    }

    async fn stats(&self) -> sink::SinkStatus {
        sink::admin_stats(self.admin).await.unwrap()
    }
}

/// One echo round trip: proves the sink has accepted and holds this connection.
async fn echo(stream: &mut TcpStream) {
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(LIMIT, stream.read_exact(&mut buf))
        .await
        .expect("echo within the limit")
        .expect("echo");
    assert_eq!(&buf, b"ping");
}

/// `n` connections the sink holds.
async fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    for client in &mut clients {
        echo(client).await;
    }
    clients
}

/// Waits for the sink to close `stream`: an orderly close (EOF), not a reset.
async fn assert_closed_by_peer(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    let n = timeout(LIMIT, stream.read(&mut buf))
        .await
        .expect("closed within the limit")
        .expect("an orderly close, not a reset");
    assert_eq!(n, 0, "EOF");
}

/// How a client's first read ended: its index, the bytes read (0: EOF), and when.
type FirstRead = (usize, std::io::Result<usize>, Instant);

/// Reads each client on its own task until its first read ends. The write halves stay with
/// the caller.
fn watch_reads(
    clients: Vec<TcpStream>,
) -> (JoinSet<FirstRead>, Vec<tokio::net::tcp::OwnedWriteHalf>) {
    let mut reads = JoinSet::new();
    let mut writers = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let (mut reader, writer) = client.into_split();
        writers.push(writer);
        reads.spawn(async move {
            let mut buf = [0u8; 16];
            let result = reader.read(&mut buf).await;
            (i, result, Instant::now())
        });
    }
    (reads, writers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_all_closes_every_held_connection() {
    let sink = AdminSink::start().await;
    let mut clients = hold(sink.addr, 50).await;
    assert_eq!(sink.stats().await.open, 50);
    let after = sink.apply(SinkAction::CloseAll).await;
    assert_eq!(after.open, 0);
    assert_eq!(after.closed_by_sink, 50);
    for client in &mut clients {
        assert_closed_by_peer(client).await;
    }
    // Closing is not refusing: the next client is held as usual.
    assert!(after.accepting);
    hold(sink.addr, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fraction_closes_that_share_at_random() {
    let sink = AdminSink::start().await;
    let clients = hold(sink.addr, 40).await;
    let (mut reads, mut writers) = watch_reads(clients);
    let after = sink
        .apply(SinkAction::CloseFraction { fraction: 0.25 })
        .await;
    // round(0.25 * 40) = 10, gone from the count at once.
    assert_eq!(after.open, 30);
    let mut closed = BTreeSet::new();
    while closed.len() < 10 {
        let (i, result, _) = timeout(LIMIT, reads.join_next())
            .await
            .expect("ten clients closed within the limit")
            .unwrap()
            .unwrap();
        assert_eq!(result.expect("an orderly close"), 0, "client {i} got data");
        closed.insert(i);
    }
    // At random: neither the oldest nor the newest ten.
    assert_ne!(closed, (0..10).collect());
    assert_ne!(closed, (30..40).collect());
    // The other thirty are still held: each echoes.
    for (i, writer) in writers.iter_mut().enumerate() {
        if !closed.contains(&i) {
            writer.write_all(b"ping").await.unwrap();
        }
    }
    let mut alive = 0;
    while let Some(joined) = timeout(LIMIT, reads.join_next())
        .await
        .expect("echoes within the limit")
    {
        let (i, result, _) = joined.unwrap();
        assert_eq!(result.unwrap(), 4, "client {i} should have been echoed");
        alive += 1;
    }
    assert_eq!(alive, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_rate_closes_at_about_the_rate() {
    let sink = AdminSink::start().await;
    let clients = hold(sink.addr, 200).await;
    let (mut reads, _writers) = watch_reads(clients);
    let start = Instant::now();
    sink.apply(SinkAction::CloseRate { per_second: 100.0 })
        .await;
    let mut times = Vec::new();
    while let Some(joined) = timeout(Duration::from_secs(10), reads.join_next())
        .await
        .expect("all closed within 10 s")
    {
        let (i, result, at) = joined.unwrap();
        assert_eq!(result.expect("an orderly close"), 0, "client {i} got data");
        times.push(at - start);
    }
    times.sort();
    assert_eq!(times.len(), 200);
    let (first, half, last) = (times[0], times[99], times[199]);
    // 200 at 100/s: one every 10 ms, the last at about 2 s.
    assert!(
        first < Duration::from_millis(500),
        "first close after {first:?}"
    );
    assert!(
        half > Duration::from_millis(600) && half < Duration::from_millis(2000),
        "100th close after {half:?}"
    );
    assert!(
        last > Duration::from_millis(1500) && last < Duration::from_millis(3000),
        "200th close after {last:?}"
    );
    let stats = sink.stats().await;
    assert_eq!((stats.open, stats.closed_by_sink), (0, 200));
    assert_eq!(stats.close_rate, 100.0);
    assert_eq!(
        sink.apply(SinkAction::CloseRate { per_second: 0.0 })
            .await
            .close_rate,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_closes_each_connection_after_its_own_lifetime() {
    let sink = AdminSink::start().await;
    let status = sink
        .apply(SinkAction::Lifetime { seconds: Some(0.5) })
        .await;
    assert_eq!(status.lifetime_seconds, Some(0.5));
    // Two waves, the second opened as the first is closed: each lives its own 0.5 s.
    for wave in 0..2 {
        let opened = Instant::now();
        let clients = hold(sink.addr, 10).await;
        let held = opened.elapsed();
        let (mut reads, _writers) = watch_reads(clients);
        while let Some(joined) = timeout(LIMIT, reads.join_next())
            .await
            .expect("closed within the limit")
        {
            let (i, result, at) = joined.unwrap();
            assert_eq!(
                result.expect("an orderly close"),
                0,
                "wave {wave} client {i}"
            );
            let lived = at - opened;
            assert!(
                lived >= Duration::from_millis(450) && lived < held + Duration::from_millis(1500),
                "wave {wave} client {i} lived {lived:?}"
            );
        }
    }
    let status = sink.apply(SinkAction::Lifetime { seconds: None }).await;
    assert_eq!((status.lifetime_seconds, status.closed_by_sink), (None, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_accepting_refuses_new_connections_and_start_admits_again() {
    let sink = AdminSink::start().await;
    let mut held = hold(sink.addr, 5).await;
    let status = sink.apply(SinkAction::StopAccepting).await;
    assert!(!status.accepting);
    let refused = timeout(LIMIT, TcpStream::connect(sink.addr))
        .await
        .expect("refused at once, not left hanging");
    assert_eq!(
        refused.expect_err("no listener").kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    for client in &mut held {
        echo(client).await;
    }
    // Stopping twice is harmless.
    assert!(!sink.apply(SinkAction::StopAccepting).await.accepting);

    let status = sink.apply(SinkAction::StartAccepting).await;
    assert!(status.accepting);
    // Listening again on the same address, before the answer came back.
    let mut again = timeout(LIMIT, TcpStream::connect(sink.addr))
        .await
        .unwrap()
        .expect("accepted again");
    echo(&mut again).await;
    for client in &mut held {
        echo(client).await;
    }
    let stats = sink.stats().await;
    assert_eq!((stats.open, stats.accepted, stats.accept_errors), (6, 6, 0));
}

/// One raw HTTP exchange with the admin endpoint: (status code, headers and body).
async fn http(admin: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    timeout(LIMIT, stream.read_to_string(&mut response))
        .await
        .expect("answer within the limit")
        .unwrap();
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    (code, response)
}

fn post(body: &str) -> String {
    format!(
        "POST /action HTTP/1.1\r\nHost: sink\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_bad_requests_naming_the_field() {
    let sink = AdminSink::start().await;
    let _held = hold(sink.addr, 2).await;
    for (body, field, hint) in [
        (
            "{\"action\":\"close_fraction\"}",
            "fraction: missing",
            "0 to 1",
        ),
        (
            "{\"action\":\"close_fraction\",\"fraction\":1.5}",
            "fraction: 1.5",
            "0 to 1",
        ),
        (
            "{\"action\":\"close_fraction\",\"fraction\":\"half\"}",
            "fraction: \\\"half\\\"",
            "0 to 1",
        ),
        (
            "{\"action\":\"close_rate\",\"per_second\":-5}",
            "per_second: -5",
            ">= 0",
        ),
        (
            "{\"action\":\"close_rate\",\"rate\":5}",
            "per_second: missing",
            "per second",
        ),
        (
            "{\"action\":\"lifetime\",\"seconds\":\"30s\"}",
            "seconds: \\\"30s\\\"",
            "null",
        ),
        (
            "{\"action\":\"explode\"}",
            "action: \\\"explode\\\"",
            "close_all",
        ),
        ("{\"fraction\":0.5}", "action: missing", "close_fraction"),
        ("close all please", "body: not JSON", "\\\"action\\\""),
    ] {
        let (code, response) = http(sink.admin, &post(body)).await;
        assert_eq!(code, 400, "{body}: {response}");
        assert!(response.contains("application/json"), "{response}");
        assert!(
            response.contains(&format!("{{\"error\":\"{field}")),
            "{body}: {response}"
        );
        assert!(response.contains(hint), "{body}: {response}");
    }
    // Nothing was applied.
    let stats = sink.stats().await;
    assert_eq!((stats.open, stats.closed_by_sink), (2, 0));

    let (code, response) = http(sink.admin, "GET /stats HTTP/1.1\r\nHost: sink\r\n\r\n").await;
    assert_eq!(code, 200, "{response}");
    let body: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["open"], 2);
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["accepting"], true);
    assert_eq!(body["bytes"], 8);

    let (code, response) = http(sink.admin, "GET /action HTTP/1.1\r\n\r\n").await;
    assert_eq!(code, 405, "{response}");
    assert!(response.contains("Allow: POST"), "{response}");
    let (code, _) = http(sink.admin, &post("{}").replace("/action", "/stats")).await;
    assert_eq!(code, 405);
    let (code, _) = http(sink.admin, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(code, 404);
    let (code, _) = http(sink.admin, "hello\r\n\r\n").await;
    assert_eq!(code, 400);
    let huge = format!(
        "{{\"action\":\"close_all\",\"pad\":\"{}\"}}",
        "x".repeat(5000)
    );
    let (code, _) = http(sink.admin, &post(&huge)).await;
    assert_eq!(code, 413);
    let (code, _) = http(
        sink.admin,
        "POST /action HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(code, 411);
    assert_eq!(sink.stats().await.open, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_client_fails_within_its_bound() {
    // Nothing listens: refused at once.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let err = sink::admin_request(addr, &SinkAction::CloseAll)
        .await
        .unwrap_err();
    assert!(err.contains("cannot connect"), "{err}");
    // Something listens and never answers: the client gives up on its own.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let started = Instant::now();
    let err = timeout(
        Duration::from_secs(10),
        sink::admin_request(addr, &SinkAction::CloseAll),
    )
    .await
    .expect("the client's own bound is shorter")
    .unwrap_err();
    assert!(err.contains("no answer within"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(4), "{err}");
}

/// A `stampede sink` child with `--admin`, killed on drop.
struct SinkChild {
    child: std::process::Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl SinkChild {
    fn start(extra: &[&str]) -> SinkChild {
        let mut child = bin()
            .args(["sink", "--listen", "127.0.0.1:0", "--quiet"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let addr_of = |line: String, prefix: &str| -> SocketAddr {
            line.trim().strip_prefix(prefix).unwrap().parse().unwrap()
        };
        let listening = wait_for_line(&mut stdout, LIMIT, |l| l.starts_with("listening on "));
        let addr = addr_of(listening, "listening on ");
        let admin = if extra.contains(&"--admin") {
            let line = wait_for_line(&mut stdout, LIMIT, |l| l.starts_with("admin on "));
            addr_of(line, "admin on ")
        } else {
            addr
        };
        SinkChild { child, addr, admin }
    }

    /// Runs `stampede sink-admin ADMIN args...`: (exit code, stdout, stderr).
    fn admin(&self, args: &[&str]) -> (i32, String, String) {
        let mut command = bin();
        command
            .arg("sink-admin")
            .arg(self.admin.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let status = wait_child(&mut child, Duration::from_secs(10));
        let mut out = String::new();
        let mut err = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code().unwrap_or(-1), out, err)
    }
}

impl Drop for SinkChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn std_hold(addr: SocketAddr) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).unwrap();
    stream
}

fn std_assert_closed_by_peer(stream: &mut std::net::TcpStream) {
    let mut buf = [0u8; 8];
    assert_eq!(stream.read(&mut buf).expect("EOF within the limit"), 0);
}

fn status_json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn sink_admin_cli_drives_a_running_sink() {
    let sink = SinkChild::start(&["--admin", "127.0.0.1:0"]);
    let mut clients: Vec<_> = (0..4).map(|_| std_hold(sink.addr)).collect();

    let (code, out, err) = sink.admin(&["stats"]);
    assert_eq!(code, 0, "{err}");
    let stats = status_json(&out);
    assert_eq!(
        (stats["open"].as_u64(), stats["accepting"].as_bool()),
        (Some(4), Some(true))
    );

    let (code, out, err) = sink.admin(&["close-fraction", "0.5"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_json(&out)["open"], 2);

    let (code, out, err) = sink.admin(&["close-all"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_json(&out)["open"], 0);
    for client in &mut clients {
        std_assert_closed_by_peer(client);
    }

    let (code, out, err) = sink.admin(&["stop-accepting"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_json(&out)["accepting"], false);
    let refused = std::net::TcpStream::connect_timeout(&sink.addr, LIMIT).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let (code, _, err) = sink.admin(&["start-accepting"]);
    assert_eq!(code, 0, "{err}");
    let _client = std_hold(sink.addr);

    let (code, out, err) = sink.admin(&["lifetime", "30s"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_json(&out)["lifetime_seconds"], 30.0);
    let (code, out, _) = sink.admin(&["lifetime", "off"]);
    assert_eq!(
        (code, status_json(&out)["lifetime_seconds"].is_null()),
        (0, true)
    );
    let (code, out, _) = sink.admin(&["close-rate", "0"]);
    assert_eq!(
        (code, status_json(&out)["close_rate"].as_f64()),
        (0, Some(0.0))
    );

    // Bad input: exit 2, naming the value and what is valid; nothing is sent.
    for (args, mentions) in [
        (&["close-fraction", "1.5"][..], ["\"1.5\"", "0 to 1"]),
        (&["close-fraction", "half"][..], ["\"half\"", "0 to 1"]),
        (
            &["close-fraction"][..],
            ["close-fraction needs a value", "0 to 1"],
        ),
        (&["close-rate", "-5"][..], ["\"-5\"", ">= 0"]),
        (&["lifetime", "soon"][..], ["\"soon\"", "off"]),
        (
            &["close-all", "now"][..],
            ["close-all takes no value", "\"now\""],
        ),
        (&["explode"][..], ["explode", "close-fraction"]),
    ] {
        let (code, _, err) = sink.admin(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        for text in mentions {
            assert!(err.contains(text), "{args:?}: {err}");
        }
    }
    let (code, out, _) = sink.admin(&["stats"]);
    assert_eq!(code, 0);
    assert_eq!(status_json(&out)["open"], 1);
}

#[test]
fn a_run_counts_the_sinks_closes_as_closed_by_peer() {
    let sink = SinkChild::start(&["--admin", "127.0.0.1:0"]);
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.json");
    std::fs::write(
        &profile,
        serde_json::json!({
            "name": "sink-closes",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 100,
            "heartbeat": {"interval": "200ms"},
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "3s"}}]
        })
        .to_string(),
    )
    .unwrap();
    let (mut run, mut progress) = common::run_until_held(dir.path(), &profile, 100);
    let (code, out, err) = sink.admin(&["close-all"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_json(&out)["closed_by_sink"], 100);
    // Keep reading progress so the run never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut progress, &mut std::io::sink()));
    wait_child(&mut run, Duration::from_secs(15));
    let summary = common::read_json(&dir.path().join("summary.json"));
    assert_eq!(summary["connections"]["closed"], 100);
    // An orderly close (FIN), never a reset.
    let errors = &summary["errors"];
    assert_eq!(errors["closed_by_peer"], 100, "{errors}");
    assert_eq!(errors["reset"], 0, "{errors}");
}

#[test]
fn sink_admin_cli_reports_an_unreachable_sink() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let out = bin()
        .args(["sink-admin", &addr.to_string(), "close-all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr.to_string()) && err.contains("cannot connect"),
        "{err}"
    );
}

#[test]
fn sink_lifetime_flag_closes_connections_from_the_start() {
    let sink = SinkChild::start(&["--lifetime", "300ms"]);
    let opened = Instant::now();
    let mut client = std_hold(sink.addr);
    std_assert_closed_by_peer(&mut client);
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(250) && lived < Duration::from_secs(3),
        "lived {lived:?}"
    );
}

#[test]
fn sink_close_rate_flag_drains_held_connections() {
    let sink = SinkChild::start(&["--close-rate", "50", "--admin", "127.0.0.1:0"]);
    let start = Instant::now();
    let mut clients: Vec<_> = (0..20)
        .map(|_| {
            let stream = std::net::TcpStream::connect(sink.addr).unwrap();
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            stream
        })
        .collect();
    for client in &mut clients {
        std_assert_closed_by_peer(client);
    }
    // 20 at 50/s: about 0.4 s after the first was accepted.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    let (_, out, _) = sink.admin(&["stats"]);
    assert_eq!(status_json(&out)["closed_by_sink"], 20);
}

#[test]
fn sink_refuses_bad_start_settings() {
    for (args, mentions) in [
        (&["--close-rate", "-5"][..], "\"-5\""),
        (&["--close-rate", "0"][..], "\"0\""),
        (&["--lifetime", "0s"][..], "\"0s\""),
        (&["--admin", "nowhere"][..], "nowhere"),
        (
            &["--push-interval", "1s"][..],
            "--push-interval needs --protocol h2",
        ),
        (
            &[
                "--push-interval",
                "1s",
                "--protocol",
                "ws",
                "--workers",
                "2",
            ][..],
            "--push-interval needs --protocol h2",
        ),
        (
            &["--push-interval", "soon", "--protocol", "h2"][..],
            "\"soon\"",
        ),
    ] {
        let out = bin()
            .args(["sink", "--listen", "127.0.0.1:0", "--quiet"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(mentions), "{args:?}: {err}");
    }
}
