//! HTTP/2 with the h2 crate, cleartext with prior knowledge (h2c) or over TLS with ALPN `h2`:
//! one long-lived streaming GET per connection whose response the server never ends, HTTP/2 PING as the heartbeat,
//! server-sent DATA frames reported as messages (timed when stamped), GOAWAY as `h2_goaway`
//! and RST_STREAM as `h2_reset` with the HTTP/2 error code as the detail; and the sink's side
//! (answers 200, sends a stamped DATA frame at once and, if asked, every push interval, keeps
//! the stream open; h2 acks PINGs itself).
//!
//! h2 needs its `Connection` polled to move any frame, and there is no task per connection
//! here to spawn it on: every wait of a session polls the connection alongside what it waits
//! for.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use h2::{Ping, PingPong, RecvStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{Event, Failure};
use crate::metrics::{ErrorDetail, ErrorKind};
use crate::profile::protocol::Http2Options;

/// What HTTP/2 runs on: a TCP connection, or TLS over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// A run's HTTP/2 client settings.
pub struct Client {
    path: String,
    authority: Option<String>,
    headers: BTreeMap<String, String>,
    /// `https`: TLS first, with ALPN `h2` offered (the profile sees to that).
    tls: Option<super::tls::Client>,
}

impl Client {
    pub fn new(options: &Http2Options, tls: Option<super::tls::Client>) -> Client {
        Client {
            path: options.path.clone(),
            authority: options.authority.clone(),
            headers: options.headers.clone(),
            tls,
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn request(&self, target: SocketAddr) -> Result<http::Request<()>, Failure> {
        let authority = self.authority.clone().unwrap_or_else(|| target.to_string());
        let mut request = http::Request::builder().method("GET").uri(format!(
            "{}://{authority}{}",
            self.scheme(),
            self.path
        ));
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        // Validated with the profile; what the http crate still refuses fails the handshake.
        request
            .body(())
            .map_err(|_| Failure::kind(ErrorKind::Other))
    }

    /// TLS if asked for (the server must choose `h2` by ALPN), then the preface and SETTINGS,
    /// then the streaming request up to its response headers.
    pub async fn handshake(&self, tcp: TcpStream, target: SocketAddr) -> Result<Session, Failure> {
        let request = self.request(target)?;
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let stream = tls.handshake(tcp, target).await?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    // The server did not agree to HTTP/2: it would not understand the preface.
                    return Err(Failure {
                        kind: ErrorKind::TlsHandshake,
                        detail: Some(ErrorDetail::NoAlpnH2),
                    });
                }
                stream
            }
        };
        let (mut send, mut conn) = h2::client::Builder::new()
            // One stream per connection: keep h2's per-connection buffers small.
            .initial_window_size(64 * 1024)
            .max_send_buffer_size(16 * 1024)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| classify(&e))?;
        let ping = conn
            .ping_pong()
            .ok_or_else(|| Failure::kind(ErrorKind::Other))?;
        let (response, _body) = send.send_request(request, true).map_err(|e| classify(&e))?;
        let response = tokio::select! {
            response = response => response.map_err(|e| classify(&e))?,
            ended = &mut conn => return Err(ended_with(ended)),
        };
        if !response.status().is_success() {
            return Err(Failure {
                kind: ErrorKind::Other,
                detail: Some(ErrorDetail::HttpStatus(response.status().as_u16())),
            });
        }
        Ok(Session {
            conn,
            _send: send,
            ping,
            body: response.into_body(),
            arrivals: super::Arrivals::default(),
        })
    }
}

/// An h2 failure as a kind: what the server said (GOAWAY, RST_STREAM) or the transport's.
fn classify(error: &h2::Error) -> Failure {
    let detail = error.reason().map(|r| ErrorDetail::H2Reason(u32::from(r)));
    if error.is_go_away() {
        Failure {
            kind: ErrorKind::H2Goaway,
            detail,
        }
    } else if error.is_reset() {
        Failure {
            kind: ErrorKind::H2Reset,
            detail,
        }
    } else if let Some(io) = error.get_io() {
        Failure::io(io)
    } else {
        Failure::kind(ErrorKind::Other)
    }
}

/// The connection future ended: cleanly means the peer closed it.
fn ended_with(result: Result<(), h2::Error>) -> Failure {
    match result {
        Ok(()) => Failure::kind(ErrorKind::ClosedByPeer),
        Err(e) => classify(&e),
    }
}

/// An established HTTP/2 connection with its one streaming response.
pub struct Session {
    conn: Connection<Box<dyn Io>, Bytes>,
    /// Kept: dropping the last request handle lets h2 wind the connection down.
    _send: SendRequest<Bytes>,
    ping: PingPong,
    body: RecvStream,
    /// DATA frames that arrived while a heartbeat waited (see
    /// `protocol::Session::take_arrivals`).
    pub(super) arrivals: super::Arrivals,
}

/// What one wait saw besides its own answer.
enum Seen {
    /// A DATA frame: its age when stamped.
    Data(Option<u64>),
    Pong,
    Ended(Failure),
}

impl Session {
    /// Polls the connection, the stream and (if `pong`) the PING answer; returns the first
    /// thing that happened. Every branch is poll-based, so dropping it loses nothing.
    async fn event(&mut self, pong: bool) -> Seen {
        let Session {
            conn, ping, body, ..
        } = self;
        tokio::select! {
            ended = conn => Seen::Ended(ended_with(ended)),
            data = body.data() => match data {
                Some(Ok(bytes)) => {
                    // Give the window back, or the server stalls after 64 KiB.
                    let _ = body.flow_control().release_capacity(bytes.len());
                    Seen::Data(super::stamp_age_us(&bytes))
                }
                Some(Err(e)) => Seen::Ended(classify(&e)),
                // The server ended the stream: the push channel is gone.
                None => Seen::Ended(Failure::kind(ErrorKind::ClosedByPeer)),
            },
            answered = std::future::poll_fn(|cx| ping.poll_pong(cx)), if pong => match answered {
                Ok(_) => Seen::Pong,
                Err(e) => Seen::Ended(classify(&e)),
            },
        }
    }

    /// An HTTP/2 PING, answered by its ack.
    pub async fn heartbeat(&mut self) -> Result<(), Failure> {
        self.ping
            .send_ping(Ping::opaque())
            .map_err(|e| classify(&e))?;
        loop {
            match self.event(true).await {
                Seen::Pong => return Ok(()),
                Seen::Data(age) => self.arrivals.push(age),
                Seen::Ended(failure) => return Err(failure),
            }
        }
    }

    /// The next DATA frame, or the end of the connection.
    pub async fn next_event(&mut self) -> Event {
        loop {
            match self.event(false).await {
                Seen::Data(age) => return Event::Message(age),
                Seen::Pong => {}
                Seen::Ended(failure) => return Event::Closed(failure),
            }
        }
    }
}

/// What follows the stamp in the sink's DATA frames.
const PUSH_TEXT: &[u8] = b" stampede h2 push\n";

/// A DATA frame stamped with the time it is sent.
fn stamped_frame() -> Bytes {
    let mut frame = vec![0u8; super::STAMP_LEN + PUSH_TEXT.len()];
    super::write_stamp(&mut frame, super::unix_ns_now());
    frame[super::STAMP_LEN..].copy_from_slice(PUSH_TEXT);
    Bytes::from(frame)
}

/// Streams one client connection may hold open on the sink; the client is told in SETTINGS.
const MAX_STREAMS: u32 = 16;

/// Sends a stamped frame on `send` if the client's flow-control window has room for it, and
/// asks for room for the next one. A client that stops reading gets no backlog: its pushes
/// are skipped once its window is full. `Err` when the client reset the stream.
fn push_stamped(send: &mut h2::SendStream<Bytes>, bytes: &AtomicU64) -> Result<(), ()> {
    let frame = stamped_frame();
    let len = frame.len();
    if send.capacity() >= len {
        send.send_data(frame, false).map_err(|_| ())?;
        bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
    send.reserve_capacity(len);
    Ok(())
}

/// Whether the client has reset the stream (checked without waiting).
fn was_reset(send: &mut h2::SendStream<Bytes>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    send.poll_reset(&mut cx).is_ready()
}

/// The sink's HTTP/2 side: answers every request 200 with a stamped DATA frame, sends another
/// on every open stream each `push_interval` if given (within the client's flow-control
/// window), and keeps its streams open until the client goes. `bytes` counts DATA bytes sent.
pub async fn serve(
    io: impl AsyncRead + AsyncWrite + Unpin,
    push_interval: Option<std::time::Duration>,
    bytes: &AtomicU64,
) {
    let Ok(mut conn) = h2::server::Builder::new()
        .initial_window_size(64 * 1024)
        .max_send_buffer_size(16 * 1024)
        .max_concurrent_streams(MAX_STREAMS)
        .handshake::<_, Bytes>(io)
        .await
    else {
        return;
    };
    // Open streams' send halves: dropping one would reset its stream.
    let mut streams: Vec<h2::SendStream<Bytes>> = Vec::new();
    let mut push = push_interval.map(|every| {
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    loop {
        let tick = async {
            match push.as_mut() {
                Some(timer) => timer.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = conn.accept() => {
                let Some(Ok((_request, mut respond))) = accepted else {
                    return;
                };
                let response = http::Response::new(());
                let Ok(mut send) = respond.send_response(response, false) else {
                    continue;
                };
                // The first frame goes out whatever the window: it is the stream's hello.
                let frame = stamped_frame();
                let len = frame.len();
                if send.send_data(frame, false).is_ok() {
                    bytes.fetch_add(len as u64, Ordering::Relaxed);
                }
                send.reserve_capacity(len);
                // Streams the client reset are let go, so a client cannot pile them up.
                streams.retain_mut(|s| !was_reset(s));
                streams.push(send);
            }
            _ = tick => {
                streams.retain_mut(|send| push_stamped(send, bytes).is_ok());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that never reads its stream gets no more pushes than its window holds: the
    /// sink skips them instead of queueing them without bound.
    #[tokio::test]
    async fn pushes_stop_at_a_client_window_that_is_never_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = std::sync::Arc::new(AtomicU64::new(0));
        let counted = bytes.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(tcp, Some(std::time::Duration::from_millis(1)), &counted).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let window = 1024;
        let (mut send, conn) = h2::client::Builder::new()
            .initial_window_size(window)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = http::Request::get("http://sink/").body(()).unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let _body = response.await.unwrap().into_body();
        // 300 push intervals; every one would add a frame without the window check.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let sent = bytes.load(Ordering::Relaxed);
        let frame = stamped_frame().len() as u64;
        assert!(
            sent <= u64::from(window) + frame,
            "{sent} bytes pushed into a {window}-byte window"
        );
        assert!(sent >= u64::from(window) / 2, "only {sent} bytes pushed");
        server.abort();
        driver.abort();
    }
}
