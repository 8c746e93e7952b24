//! Protocols above TCP end to end: TLS, WebSocket (ws and wss) against the embedded sink and
//! through a real nginx in front of the sink, failures classified with their alert or status,
//! and a storm per protocol (every connection dropped by the sink, re-established, every
//! handshake timed).

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]

mod common;

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stampede::protocol::SinkProtocol;
use stampede::protocol::tls::self_signed_pem;
use stampede::report::summary::Summary;

use common::{assert_schema, read_json, run_json};

/// An in-process sink speaking `protocol`; dropping it stops the sink.
struct Sink {
    addr: SocketAddr,
    /// PEM of the certificate it serves, written to a file (TLS protocols only).
    ca_file: Option<PathBuf>,
    stats: Arc<stampede::sink::SinkStats>,
    _stop_tx: tokio::sync::oneshot::Sender<()>,
}

impl Sink {
    async fn start(dir: &Path, name: &str, ws_path: Option<&str>) -> Sink {
        let protocol = SinkProtocol {
            name: name.into(),
            ws_path: ws_path.map(Into::into),
            ..SinkProtocol::default()
        };
        let (acceptor, cert) = protocol.acceptor().unwrap();
        let ca_file = cert.map(|cert| {
            let path = dir.join(format!("sink-{name}.pem"));
            std::fs::write(&path, stampede::protocol::tls::pem(&cert)).unwrap();
            path
        });
        let listener = stampede::sink::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stats = Arc::new(stampede::sink::SinkStats::default());
        tokio::spawn(stampede::sink::run_protocol(
            vec![listener],
            stats.clone(),
            stampede::sink::SinkControl::new(),
            acceptor,
            async {
                let _ = stop_rx.await;
            },
        ));
        Sink {
            addr,
            ca_file,
            stats,
            _stop_tx: stop_tx,
        }
    }
}

/// A real nginx (Debian's package) run from a temp dir with its own config; killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with `body` (an `http { ... }` or `stream { ... }` block in which `{PORT}`
    /// stands for its listening port) and waits, bounded, until the port accepts.
    fn start(dir: &Path, body: &str) -> Nginx {
        // nginx cannot report a port it chose; take a free one from the kernel and hand it on.
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             worker_processes 1;\n\
             error_log {dir}/error.log warn;\n\
             pid {dir}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             {body}\n",
            dir = dir.display(),
            body = body.replace("{PORT}", &port.to_string()),
        );
        let conf = conf.replace(
            "http {",
            &format!(
                "http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; \
                 fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;",
                d = dir.display()
            ),
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&file)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx runs (scripts/test installs nginx-light and libnginx-mod-stream)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut nginx = Nginx {
            child,
            addr,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while StdStream::connect(addr).is_err() {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                panic!("nginx exited with {status}: {}", nginx.log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                nginx.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a certificate for `localhost` / 127.0.0.1 and its key into `dir`.
fn cert_files(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = self_signed_pem(&["localhost", "127.0.0.1"]).unwrap();
    let (cert_file, key_file) = (dir.join("proxy.pem"), dir.join("proxy.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    (cert_file, key_file)
}

/// A profile of `connections` held for a second with heartbeats every 200 ms.
fn profile(target: Value, protocol: Value, connections: u64) -> Value {
    let mut p = json!({
        "name": "protocols",
        "target": target,
        "connections": connections,
        "heartbeat": {"interval": "200ms", "payload_bytes": 32, "timeout": "2s"},
        "connect_timeout": "5s",
        "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "1s"}}],
        "reconnect": {"policy": "none"}
    });
    for (key, value) in protocol.as_object().unwrap() {
        p[key] = value.clone();
    }
    p
}

fn addrs(addr: SocketAddr) -> Value {
    json!({"addrs": [addr.to_string()]})
}

/// Every connection established with its handshake timed, heartbeats answered, no errors.
fn assert_clean(s: &Summary, connections: u64) {
    assert_eq!(
        s.connections.established, connections,
        "errors {:?} {:?}",
        s.errors, s.error_details
    );
    assert_eq!(s.error_total(), 0, "{:?} {:?}", s.errors, s.error_details);
    assert_eq!(s.latency_us.handshake.count, connections);
    assert!(s.heartbeats.answered >= connections, "{:?}", s.heartbeats);
    common::assert_heartbeats_answered(s, connections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_websockets_hold_against_the_embedded_sink() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        json!({"protocol": "tls", "tls": {"server_name": "localhost", "alpn": ["push/1"]}}),
        json!({"protocol": "tls", "tls": {"verify": false, "resumption": false}}),
        json!({"protocol": "websocket", "websocket": {"path": "/push", "subprotocol": "push.v1",
               "headers": {"Authorization": "Bearer t"}}}),
        json!({"protocol": "websocket", "websocket": {"heartbeat": "text"}}),
        json!({"protocol": "websocket", "websocket": {"scheme": "wss", "heartbeat": "text"}}),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        let result = run_json(
            &profile(json!("embedded"), case.clone(), 100),
            false,
            Some(&out),
        )
        .await;
        let s = &result.summary;
        assert_clean(s, 100);
        let summary = read_json(&out.join("summary.json"));
        assert_schema("summary.schema.json", &summary);
        assert_eq!(summary["latency_us"]["handshake"]["count"], 100, "{case}");
        let hlog = std::fs::read_to_string(out.join("latency.hlog")).unwrap();
        assert!(hlog.contains("Tag=handshake"), "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_against_a_ca_file_and_through_nginx() {
    let dir = tempfile::tempdir().unwrap();
    // Straight to a TLS sink, trusting the certificate it wrote out.
    let sink = Sink::start(dir.path(), "tls", None).await;
    let ca = sink.ca_file.clone().unwrap();
    let tls = json!({"protocol": "tls", "tls": {"server_name": "localhost", "ca_file": ca}});
    let result = run_json(&profile(addrs(sink.addr), tls, 100), false, None).await;
    assert_clean(&result.summary, 100);

    // nginx terminates TLS (stream module) with its own certificate and proxies to a TCP sink,
    // as a gateway's TLS listener would.
    let plain = Sink::start(dir.path(), "tcp", None).await;
    let (cert, key) = cert_files(dir.path());
    let nginx = Nginx::start(
        dir.path(),
        &format!(
            "stream {{ server {{ listen 127.0.0.1:{{PORT}} ssl; ssl_certificate {}; \
             ssl_certificate_key {}; proxy_pass {}; }} }}",
            cert.display(),
            key.display(),
            plain.addr
        ),
    );
    for resumption in [true, false] {
        let tls = json!({"protocol": "tls", "tls": {"server_name": "localhost",
                         "ca_file": cert, "resumption": resumption, "alpn": ["push/1"]}});
        let result = run_json(&profile(addrs(nginx.addr), tls, 100), false, None).await;
        assert_clean(&result.summary, 100);
    }
    drop(nginx);

    // A gateway that only speaks another application protocol refuses the handshake with an
    // alert of its own: the alert received is what the summary keeps.
    let alpn_dir = dir.path().join("alpn");
    std::fs::create_dir(&alpn_dir).unwrap();
    let strict = Nginx::start(
        &alpn_dir,
        &format!(
            "stream {{ server {{ listen 127.0.0.1:{{PORT}} ssl; ssl_certificate {}; \
             ssl_certificate_key {}; ssl_alpn push/2; proxy_pass {}; }} }}",
            cert.display(),
            key.display(),
            plain.addr
        ),
    );
    let tls = json!({"protocol": "tls", "tls": {"server_name": "localhost",
                     "ca_file": cert, "alpn": ["push/1"]}});
    let s = run_json(&profile(addrs(strict.addr), tls, 10), false, None)
        .await
        .summary;
    assert_eq!(
        s.errors.0[stampede::metrics::ErrorKind::TlsHandshake as usize],
        10
    );
    assert_eq!(
        s.error_details["tls_handshake"].get("received alert NoApplicationProtocol (120)"),
        Some(&10),
        "{:?}",
        s.error_details
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_go_through_nginx_plain_and_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "ws", Some("/push")).await;
    let (cert, key) = cert_files(dir.path());
    let location = format!(
        "location /push {{ proxy_pass http://{}; proxy_http_version 1.1; \
         proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; \
         proxy_read_timeout 60s; }}",
        sink.addr
    );
    let ws_nginx = Nginx::start(
        dir.path(),
        &format!("http {{ server {{ listen 127.0.0.1:{{PORT}}; {location} }} }}"),
    );
    let ws = json!({"protocol": "websocket", "websocket": {"path": "/push"}});
    let result = run_json(&profile(addrs(ws_nginx.addr), ws, 100), false, None).await;
    assert_clean(&result.summary, 100);
    drop(ws_nginx);

    // wss: nginx terminates TLS, then upgrades to the plain ws sink.
    let wss_dir = dir.path().join("wss");
    std::fs::create_dir(&wss_dir).unwrap();
    let wss_nginx = Nginx::start(
        &wss_dir,
        &format!(
            "http {{ server {{ listen 127.0.0.1:{{PORT}} ssl; ssl_certificate {}; \
             ssl_certificate_key {}; {location} }} }}",
            cert.display(),
            key.display()
        ),
    );
    let wss = json!({"protocol": "websocket",
                     "websocket": {"scheme": "wss", "path": "/push", "heartbeat": "text"},
                     "tls": {"server_name": "localhost", "ca_file": cert}});
    let result = run_json(&profile(addrs(wss_nginx.addr), wss, 100), false, None).await;
    assert_clean(&result.summary, 100);

    // A path nginx has no location for: the upgrade is refused with nginx's own 404.
    let wrong = json!({"protocol": "websocket",
                       "websocket": {"scheme": "wss", "path": "/elsewhere"},
                       "tls": {"server_name": "localhost", "ca_file": cert}});
    let result = run_json(&profile(addrs(wss_nginx.addr), wrong, 20), false, None).await;
    let s = &result.summary;
    assert_eq!(s.connections.established, 0);
    assert_eq!(
        s.errors.0[stampede::metrics::ErrorKind::WsUpgradeRejected as usize],
        20
    );
    assert_eq!(
        s.error_details["ws_upgrade_rejected"]["HTTP 404"], 20,
        "{:?}",
        s.error_details
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified_with_their_alert_or_status() {
    use stampede::metrics::ErrorKind;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "tls", None).await;
    let ca = sink.ca_file.clone().unwrap();
    let failed = |tls: Value| {
        let profile = profile(addrs(sink.addr), json!({"protocol": "tls", "tls": tls}), 10);
        async move { run_json(&profile, false, None).await.summary }
    };
    // A name the certificate does not carry: the client refuses it.
    let s = failed(json!({"server_name": "push.example.com", "ca_file": ca})).await;
    assert_eq!(s.connections.established, 0);
    assert_eq!(s.errors.0[ErrorKind::TlsHandshake as usize], 10);
    assert_eq!(
        s.error_details["tls_handshake"].get("sent alert BadCertificate (42)"),
        Some(&10),
        "{:?}",
        s.error_details
    );
    // A CA that did not sign the sink's certificate (named otherwise: a CA of the same name
    // would be tried and fail on the signature instead).
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "another CA");
    let other = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other).unwrap();
    let s = failed(json!({"server_name": "localhost", "ca_file": other_ca})).await;
    assert_eq!(s.errors.0[ErrorKind::TlsHandshake as usize], 10);
    assert_eq!(
        s.error_details["tls_handshake"].get("sent alert UnknownCA (48)"),
        Some(&10),
        "{:?}",
        s.error_details
    );
    // TLS spoken to a plain TCP echo: the echoed ClientHello is no ServerHello.
    let plain = Sink::start(dir.path(), "tcp", None).await;
    let profile_plain = profile(
        addrs(plain.addr),
        json!({"protocol": "tls", "tls": {"verify": false}}),
        10,
    );
    let s = run_json(&profile_plain, false, None).await.summary;
    assert_eq!(
        s.errors.0[ErrorKind::TlsHandshake as usize],
        10,
        "{:?}",
        s.errors
    );

    // A WebSocket path the server does not serve.
    let ws = Sink::start(dir.path(), "ws", Some("/push")).await;
    let wrong = json!({"protocol": "websocket", "websocket": {"path": "/pull"}});
    let s = run_json(&profile(addrs(ws.addr), wrong, 10), false, None)
        .await
        .summary;
    assert_eq!(s.errors.0[ErrorKind::WsUpgradeRejected as usize], 10);
    assert_eq!(s.error_details["ws_upgrade_rejected"]["HTTP 404"], 10);
    let text = stampede::report::text::render(&s);
    assert!(
        text.contains("ws_upgrade_rejected    HTTP 404 10"),
        "{text}"
    );
}

/// The sink drops every connection; each reconnects and handshakes again.
async fn storm(protocol: Value) -> Summary {
    let connections = 200;
    let mut p = profile(json!("embedded"), protocol, connections);
    p["phases"] = json!([
        {"ramp": {"rate": 2000}},
        {"hold": {"for": "500ms"}},
        {"server": {"do": "close_all", "for": "3s",
                    "reconnect": {"policy": "exponential", "base": "20ms", "cap": "200ms",
                                  "jitter": "full", "max_attempts": 20}}}
    ]);
    let s = run_json(&p, false, None).await.summary;
    let phase = s.phases.iter().find(|p| p.name == "server").unwrap();
    assert_eq!(
        phase.reconnects, connections,
        "{:?} {:?}",
        s.errors, s.error_details
    );
    assert_eq!(s.connections.given_up, 0);
    assert_eq!(s.connections.open_at_end, connections);
    // Every connection was handshaken twice: once at the ramp, once after the storm.
    assert_eq!(s.latency_us.handshake.count, 2 * connections);
    assert!(phase.recovery_100_s.is_some(), "{phase:?}");
    use stampede::metrics::ErrorKind;
    let dropped =
        s.errors.0[ErrorKind::ClosedByPeer as usize] + s.errors.0[ErrorKind::Reset as usize];
    assert_eq!(dropped, connections, "{:?}", s.errors);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_storm_reconnects_and_handshakes_again() {
    storm(json!({"protocol": "tls", "tls": {"server_name": "localhost"}})).await;
    storm(json!({"protocol": "tls", "tls": {"server_name": "localhost", "resumption": false}}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_resumes_sessions_only_when_asked() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    for resumption in [true, false] {
        let sink = Sink::start(dir.path(), "tls", None).await;
        let tls = json!({"protocol": "tls", "tls": {"server_name": "localhost",
                         "ca_file": sink.ca_file.clone().unwrap(), "resumption": resumption}});
        let mut p = profile(addrs(sink.addr), tls, 200);
        p["phases"] = json!([
            {"ramp": {"rate": 2000}},
            {"hold": {"for": "500ms"}},
            {"storm": {"fraction": 1.0, "for": "2s", "reconnect": {"policy": "immediate"}}}
        ]);
        let s = run_json(&p, false, None).await.summary;
        assert_eq!(s.connections.reconnects, 200, "{:?}", s.error_details);
        let handshakes = sink.stats.tls_handshakes.load(Ordering::Relaxed);
        let resumed = sink.stats.tls_resumed.load(Ordering::Relaxed);
        assert_eq!(handshakes, 400);
        if resumption {
            // The shared store hands a ticket to every reconnection (and to most of the
            // first round too, from earlier handshakes); the very first is always full.
            assert!((200..400).contains(&resumed), "resumption on: {resumed}");
        } else {
            assert_eq!(resumed, 0, "resumption off");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_storm_reconnects_and_handshakes_again() {
    storm(json!({"protocol": "websocket"})).await;
    storm(json!({"protocol": "websocket", "websocket": {"scheme": "wss"}})).await;

    // The client's own reset storm: every upgraded connection aborted with an RST (the socket
    // registry holds their descriptors as it does for TCP), all reconnected.
    let mut p = profile(json!("embedded"), json!({"protocol": "websocket"}), 200);
    p["phases"] = json!([
        {"ramp": {"rate": 2000}},
        {"hold": {"for": "500ms"}},
        {"storm": {"fraction": 1.0, "mode": "reset", "for": "2s",
                   "reconnect": {"policy": "immediate"}}}
    ]);
    let s = run_json(&p, false, None).await.summary;
    assert_eq!(s.connections.reconnects, 200, "{:?}", s.errors);
    assert_eq!(s.connections.open_at_end, 200);
    assert_eq!(s.latency_us.handshake.count, 400);
}

#[test]
fn the_sink_binary_speaks_tls_and_writes_its_certificate() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("sink.pem");
    let mut child = common::bin()
        .args([
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--quiet",
            "--protocol",
            "tls",
            "--cert-out",
        ])
        .arg(&pem)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = common::listening_addr(&line);
    let profile_file = dir.path().join("p.json");
    let p = profile(
        addrs(addr),
        json!({"protocol": "tls", "tls": {"server_name": "localhost", "ca_file": pem}}),
        20,
    );
    std::fs::write(&profile_file, p.to_string()).unwrap();
    let out = dir.path().join("out");
    let status = common::bin()
        .args(["run", "--headless", "--out"])
        .arg(&out)
        .arg(&profile_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.success());
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["connections"]["established"], 20);
    assert_eq!(summary["latency_us"]["handshake"]["count"], 20);

    // Bad flags: exit 2, naming the flag.
    let bad = common::bin()
        .args(["sink", "--listen", "127.0.0.1:0", "--protocol", "quic"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--protocol \"quic\""));
    let bad = common::bin()
        .args([
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--protocol",
            "tls",
            "--cert",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--cert needs --key"));
}

#[test]
fn a_local_swarm_serves_the_protocol_from_its_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        json!({"protocol": "tls", "tls": {"server_name": "localhost"}}),
        json!({"protocol": "websocket", "websocket": {"scheme": "wss", "heartbeat": "text"}}),
        json!({"protocol": "websocket"}),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("p{i}.json"));
        std::fs::write(
            &file,
            profile(json!("embedded"), case.clone(), 60).to_string(),
        )
        .unwrap();
        let out_dir = dir.path().join(format!("out{i}"));
        let out = common::bin()
            .args(["run", "--headless", "--agents", "2", "--out"])
            .arg(&out_dir)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = read_json(&out_dir.join("summary.json"));
        assert_eq!(summary["connections"]["established"], 60, "{case}");
        assert_eq!(summary["latency_us"]["handshake"]["count"], 60, "{case}");
        assert_eq!(summary["agents"].as_array().unwrap().len(), 2);
    }
}
