//! HTTP/2 with the h2 crate, cleartext with prior knowledge (h2c): one long-lived streaming
//! GET per connection whose response the server never ends, HTTP/2 PING as the heartbeat,
//! server-sent DATA frames counted per session, GOAWAY as `h2_goaway` and RST_STREAM as
//! `h2_reset` with the HTTP/2 error code as the detail; and the sink's side (answers 200, sends
//! one DATA frame, keeps the stream open; h2 acks PINGs itself).
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
use tokio::net::TcpStream;

use super::Failure;
use crate::metrics::{ErrorDetail, ErrorKind};
use crate::profile::protocol::Http2Options;

/// A run's HTTP/2 client settings.
pub struct Client {
    path: String,
    authority: Option<String>,
    headers: BTreeMap<String, String>,
}

impl Client {
    pub fn new(options: &Http2Options) -> Client {
        Client {
            path: options.path.clone(),
            authority: options.authority.clone(),
            headers: options.headers.clone(),
        }
    }

    fn request(&self, target: SocketAddr) -> Result<http::Request<()>, Failure> {
        let authority = self.authority.clone().unwrap_or_else(|| target.to_string());
        let mut request = http::Request::builder()
            .method("GET")
            .uri(format!("http://{authority}{}", self.path));
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        // Validated with the profile; what the http crate still refuses fails the handshake.
        request
            .body(())
            .map_err(|_| Failure::kind(ErrorKind::Other))
    }

    /// Preface and SETTINGS, then the streaming request up to its response headers.
    pub async fn handshake(&self, tcp: TcpStream, target: SocketAddr) -> Result<Session, Failure> {
        let request = self.request(target)?;
        let (mut send, mut conn) = h2::client::Builder::new()
            // One stream per connection: keep h2's per-connection buffers small.
            .initial_window_size(64 * 1024)
            .max_send_buffer_size(16 * 1024)
            .handshake::<_, Bytes>(tcp)
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
            frames: 0,
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
    conn: Connection<TcpStream, Bytes>,
    /// Kept: dropping the last request handle lets h2 wind the connection down.
    _send: SendRequest<Bytes>,
    ping: PingPong,
    body: RecvStream,
    /// DATA frames the server sent on the stream.
    frames: u64,
}

/// What one wait saw besides its own answer.
enum Event {
    Data,
    Pong,
    Ended(Failure),
}

impl Session {
    /// DATA frames received so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Polls the connection, the stream and (if `pong`) the PING answer; returns the first
    /// thing that happened. Every branch is poll-based, so dropping it loses nothing.
    async fn event(&mut self, pong: bool) -> Event {
        let Session {
            conn, ping, body, ..
        } = self;
        tokio::select! {
            ended = conn => Event::Ended(ended_with(ended)),
            data = body.data() => match data {
                Some(Ok(bytes)) => {
                    // Give the window back, or the server stalls after 64 KiB.
                    let _ = body.flow_control().release_capacity(bytes.len());
                    Event::Data
                }
                Some(Err(e)) => Event::Ended(classify(&e)),
                // The server ended the stream: the push channel is gone.
                None => Event::Ended(Failure::kind(ErrorKind::ClosedByPeer)),
            },
            answered = std::future::poll_fn(|cx| ping.poll_pong(cx)), if pong => match answered {
                Ok(_) => Event::Pong,
                Err(e) => Event::Ended(classify(&e)),
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
                Event::Pong => return Ok(()),
                Event::Data => self.frames += 1,
                Event::Ended(failure) => return Err(failure),
            }
        }
    }

    pub async fn closed(&mut self) -> Failure {
        loop {
            match self.event(false).await {
                Event::Data => self.frames += 1,
                Event::Pong => {}
                Event::Ended(failure) => return failure,
            }
        }
    }
}

/// The first DATA frame the sink sends on each stream.
const HELLO: &[u8] = b"stampede h2 stream open\n";

/// The sink's HTTP/2 side: answers every request 200 with one DATA frame and keeps its stream
/// open until the client goes. `bytes` counts DATA bytes sent.
pub async fn serve(tcp: TcpStream, bytes: &AtomicU64) {
    let Ok(mut conn) = h2::server::Builder::new()
        .initial_window_size(64 * 1024)
        .max_send_buffer_size(16 * 1024)
        .handshake::<_, Bytes>(tcp)
        .await
    else {
        return;
    };
    // Open streams' send halves: dropping one would reset its stream.
    let mut streams = Vec::new();
    while let Some(Ok((_request, mut respond))) = conn.accept().await {
        let response = http::Response::new(());
        let Ok(mut send) = respond.send_response(response, false) else {
            continue;
        };
        if send.send_data(Bytes::from_static(HELLO), false).is_ok() {
            bytes.fetch_add(HELLO.len() as u64, Ordering::Relaxed);
        }
        streams.push(send);
    }
}
