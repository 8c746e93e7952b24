//! The built-in target: an echo-and-hold TCP server.
//!
//! Every byte received is sent back; connections are held until the client closes them or the
//! sink shuts down. Listeners use `SO_REUSEPORT`, so several sink processes can share a port
//! (one process holds at most its file limit). `run` is the same code for `stampede sink` and
//! for profiles whose target is `"embedded"`. It keeps no per-connection state beyond the task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Listen backlog asked for; the kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 65_535;

/// Counters of a running sink. Written by its tasks, read by whoever prints stats.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    pub bytes: AtomicU64,
    pub accept_errors: AtomicU64,
}

impl SinkStats {
    pub fn line(&self, previous: &mut (u64, u64)) -> String {
        let accepted = self.accepted.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let line = format!(
            "sink: open {} accepted/s {} bytes/s {} accepted {} accept_errors {}",
            self.open.load(Ordering::Relaxed),
            accepted - previous.0,
            bytes - previous.1,
            accepted,
            self.accept_errors.load(Ordering::Relaxed),
        );
        *previous = (accepted, bytes);
        line
    }
}

/// Binds a listener with `SO_REUSEADDR`, `SO_REUSEPORT` and a large backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
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
    let mut accept_loops = JoinSet::new();
    for listener in listeners {
        accept_loops.spawn(accept_loop(listener, stats.clone()));
    }
    shutdown.await;
    accept_loops.shutdown().await;
}

async fn accept_loop(listener: TcpListener, stats: Arc<SinkStats>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    stats.open.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(echo(stream, stats.clone()));
                }
                Err(_) => {
                    // Out of files or buffers: back off a little instead of spinning.
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Keeps `open` right whether a connection ends itself or is dropped at shutdown.
struct OpenGuard(Arc<SinkStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn echo(mut stream: TcpStream, stats: Arc<SinkStats>) {
    let _open = OpenGuard(stats.clone());
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
