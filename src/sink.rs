//! The built-in target: an echo-and-hold TCP server, which can also play a deploy from its side.
//!
//! Every byte received is sent back; connections are held until the client closes them, the
//! sink closes them (`control`: all, a fraction, a rate, a lifetime) or the sink shuts down.
//! Listeners use `SO_REUSEPORT`, so several sink processes can share a port (one process holds
//! at most its file limit). `run` is the same code for `stampede sink` and for profiles whose
//! target is `"embedded"`. Per connection it keeps the task and one registry entry, no timer.
//! Plain TCP is echoed here; other protocols (`run_protocol`) handshake and echo in
//! `crate::protocol`, under the same registry and actions.
//!
//! - The actions (close_all, close_fraction, ...) are `profile::SinkAction`, re-exported here.
//! - `control`: carries actions out: the connection registry, the closer task, the listeners.
//! - `admin`: the HTTP admin endpoint (`POST /action`, `GET /stats`) and its client.
//! - `workers`: `stampede sink --workers N`, one sink as N processes sharing its ports.

pub(crate) mod admin;
mod control;
pub mod workers;

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub use crate::profile::sink_action::{ACTION_NAMES, SinkAction};
use crate::protocol::Acceptor;
pub use crate::protocol::SinkStats;
pub use admin::{admin_apply, admin_request, admin_stats, serve_admin};
use control::{ConnId, ListenerRx};
pub use control::{ControlError, SinkControl, SinkStatus};

/// Listen backlog asked for; the kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 65_535;

/// Binds a listener with `SO_REUSEADDR`, `SO_REUSEPORT` and a large backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, true)?)
}

/// Binds a non-blocking listener; needs no runtime, so `SinkControl::apply` can listen again.
fn bind_std(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds the embedded sink on loopback, on a port *below* the ephemeral range: a listener's
/// port is skipped by every `connect()` autobind on the host, so a sink inside the range would
/// take one port from the very pool the run draws on. No `SO_REUSEPORT`: nothing shares it.
pub fn bind_embedded() -> io::Result<TcpListener> {
    let first_ephemeral = crate::host::ephemeral_port_range().first;
    if first_ephemeral > 2048 {
        let span = u32::from(first_ephemeral - 1024);
        for _ in 0..64 {
            let mut bytes = [0u8; 4];
            if getrandom::fill(&mut bytes).is_err() {
                break;
            }
            let port = 1024 + (u32::from_le_bytes(bytes) % span) as u16;
            let socket = Socket::new(
                Domain::IPV4,
                Type::STREAM.nonblocking().cloexec(),
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            if socket
                .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
                .is_ok()
            {
                socket.listen(BACKLOG)?;
                return TcpListener::from_std(socket.into());
            }
        }
    }
    bind(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Serves `listeners` until `shutdown` completes, then drops every connection.
pub async fn run(
    listeners: Vec<TcpListener>,
    stats: Arc<SinkStats>,
    shutdown: impl Future<Output = ()>,
) {
    run_controlled(listeners, stats, SinkControl::new(), shutdown).await;
}

/// Serves `listeners` under `control` until `shutdown` completes (or this future is dropped),
/// then closes the listeners and every connection.
pub async fn run_controlled(
    listeners: Vec<TcpListener>,
    stats: Arc<SinkStats>,
    control: Arc<SinkControl>,
    shutdown: impl Future<Output = ()>,
) {
    run_protocol(listeners, stats, control, Acceptor::Tcp, shutdown).await;
}

/// Like `run_controlled`, speaking `acceptor`'s protocol on every accepted connection.
pub async fn run_protocol(
    listeners: Vec<TcpListener>,
    stats: Arc<SinkStats>,
    control: Arc<SinkControl>,
    acceptor: Acceptor,
    shutdown: impl Future<Output = ()>,
) {
    let listeners = control.install(listeners, &stats);
    // Declared before the tasks, so dropped after them: loops stop, then everything closes.
    let _stopped = Uninstall(control.clone());
    let mut tasks = JoinSet::new();
    for current_rx in listeners {
        tasks.spawn(accept_loop(
            current_rx,
            stats.clone(),
            control.clone(),
            acceptor.clone(),
        ));
    }
    let closer = control.clone();
    tasks.spawn(async move { closer.run_closer().await });
    shutdown.await;
    tasks.shutdown().await;
}

struct Uninstall(Arc<SinkControl>);

impl Drop for Uninstall {
    fn drop(&mut self) {
        self.0.uninstall();
    }
}

/// Accepts on one listener while the control has a socket for it; waits while it has none.
async fn accept_loop(
    mut current_rx: ListenerRx,
    stats: Arc<SinkStats>,
    control: Arc<SinkControl>,
    acceptor: Acceptor,
) {
    loop {
        let current = current_rx.borrow_and_update().clone();
        let Some(shared) = current else {
            if current_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        // A duplicate descriptor of our own: the control keeps the original to stop it.
        let listener = match shared.try_clone().and_then(TcpListener::from_std) {
            Ok(listener) => listener,
            Err(_) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    changed = current_rx.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        drop(shared);
        loop {
            tokio::select! {
                changed = current_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => match acceptor {
                        Acceptor::Tcp => admit(stream, &stats, &control),
                        _ => admit_protocol(stream, &stats, &control, &acceptor),
                    },
                    // Stopped under us: the socket left the listening state.
                    Err(_) if current_rx.has_changed().unwrap_or(true) => break,
                    Err(_) => {
                        // Out of files or buffers: back off a little instead of spinning.
                        stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                },
            }
        }
    }
}

fn admit(stream: TcpStream, stats: &Arc<SinkStats>, control: &Arc<SinkControl>) {
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    stats.open.fetch_add(1, Ordering::Relaxed);
    let id = control.admit();
    let held = Held {
        stream,
        id,
        stats: stats.clone(),
        control: control.clone(),
    };
    let task = tokio::spawn(echo(held));
    control.attach(id, task.abort_handle());
}

/// Admits a connection of a protocol above TCP: its task handshakes and echoes; the guard
/// keeps the counters and the registry right however it ends.
fn admit_protocol(
    stream: TcpStream,
    stats: &Arc<SinkStats>,
    control: &Arc<SinkControl>,
    acceptor: &Acceptor,
) {
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    stats.open.fetch_add(1, Ordering::Relaxed);
    let id = control.admit();
    let guard = Admitted {
        id,
        stats: stats.clone(),
        control: control.clone(),
    };
    let acceptor = acceptor.clone();
    let task = tokio::spawn(async move {
        acceptor.serve(stream, &guard.stats).await;
        drop(guard);
    });
    control.attach(id, task.abort_handle());
}

/// A protocol connection's place in the counters and the registry.
struct Admitted {
    id: ConnId,
    stats: Arc<SinkStats>,
    control: Arc<SinkControl>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.control.forget(self.id);
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One held connection. Dropping it, whether the client closed, the sink closed it (its task
/// aborted) or the sink shut down, keeps the counters right and closes the socket with a FIN.
struct Held {
    stream: TcpStream,
    id: ConnId,
    stats: Arc<SinkStats>,
    control: Arc<SinkControl>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.control.forget(self.id);
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        // close() with unread input sends a reset instead of a FIN, and a heartbeat can land
        // between any drain and the close. So the FIN goes first: the client reads EOF even
        // if a late heartbeat turns the close into a reset. Then what is queued is read, so
        // that the close itself is clean whenever nothing lands in between.
        let socket = SockRef::from(&self.stream);
        let _ = socket.shutdown(std::net::Shutdown::Write);
        let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
        for _ in 0..64 {
            match socket.recv(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
}

async fn echo(mut held: Held) {
    let _ = held.stream.set_nodelay(true);
    loop {
        let rest = std::future::poll_fn(|cx| echo_arrived(&mut held, cx)).await;
        match rest {
            None => break,
            // The client is not reading as fast as it sends: finish this echo before the next
            // read, so a slow reader is slowed down rather than buffered for.
            Some(rest) if !rest.is_empty() => {
                if held.stream.write_all(&rest).await.is_err() {
                    break;
                }
            }
            Some(_) => {}
        }
    }
}

/// Reads what has arrived and echoes as much of it as the socket takes now; ready with what is
/// left to send (almost always nothing), or None once the connection is over. The read buffer
/// lives only for this call, not in the connection's future, which keeps every held
/// connection's task within a smaller allocation.
fn echo_arrived(held: &mut Held, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
    let mut buf = [0u8; 256];
    let mut read = ReadBuf::new(&mut buf);
    match Pin::new(&mut held.stream).poll_read(cx, &mut read) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(Err(_)) => return Poll::Ready(None),
        Poll::Ready(Ok(())) => {}
    }
    let data = read.filled();
    if data.is_empty() {
        return Poll::Ready(None);
    }
    held.stats
        .bytes
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    let mut sent = 0;
    while sent < data.len() {
        match held.stream.try_write(&data[sent..]) {
            Ok(n) if n > 0 => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Ok(_) | Err(_) => return Poll::Ready(None),
        }
    }
    Poll::Ready(Some(data[sent..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn echoes_and_counts() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(SinkStats::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(vec![listener], stats.clone(), async {
            let _ = stop_rx.await;
        }));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
        stop_tx.send(()).unwrap();
        server.await.unwrap();
        // Shutdown drops the connection: the client sees the close.
        let n = client.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn echoes_a_burst_larger_than_the_socket_buffers_in_order() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(SinkStats::default());
        let (_stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run(vec![listener], stats.clone(), async {
            let _ = stop_rx.await;
        }));
        let sent: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
        let to_send = sent.clone();
        let writing = tokio::spawn(async move { writer.write_all(&to_send).await });
        let mut echoed = vec![0u8; sent.len()];
        tokio::time::timeout(Duration::from_secs(30), reader.read_exact(&mut echoed))
            .await
            .expect("echoed within the bound")
            .unwrap();
        writing.await.unwrap().unwrap();
        assert!(echoed == sent, "the echo differs from what was sent");
        assert_eq!(stats.bytes.load(Ordering::Relaxed), sent.len() as u64);
    }

    #[tokio::test]
    async fn a_listener_without_reuseport_stops_and_listens_again_on_its_port() {
        // As the embedded sink binds: SO_REUSEADDR only, while a held connection keeps the port.
        let listener =
            TcpListener::from_std(bind_std("127.0.0.1:0".parse().unwrap(), false).unwrap())
                .unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(SinkStats::default());
        let control = SinkControl::new();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run_controlled(
            vec![listener],
            stats.clone(),
            control.clone(),
            async {
                let _ = stop_rx.await;
            },
        ));
        let mut held = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 2];
        held.write_all(b"hi").await.unwrap();
        held.read_exact(&mut buf).await.unwrap();

        control.try_apply(&SinkAction::StopAccepting).unwrap();
        let refused = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert!(!control.status(&stats).accepting);
        control.try_apply(&SinkAction::StartAccepting).unwrap();
        assert!(control.status(&stats).accepting);
        let mut again = TcpStream::connect(addr).await.unwrap();
        for client in [&mut held, &mut again] {
            client.write_all(b"hi").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
        }
        assert_eq!(control.open(), 2);

        stop_tx.send(()).unwrap();
        server.await.unwrap();
        assert_eq!(control.open(), 0);
        for client in [&mut held, &mut again] {
            assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        }
        // Stopped for good: the port is closed.
        let refused = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }
}
