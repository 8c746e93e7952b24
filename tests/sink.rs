//! `stampede sink` as a user runs it: readiness line, echo, and the per-second stats line.

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
    let addr: std::net::SocketAddr = v4
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();

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
