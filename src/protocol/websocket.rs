//! WebSocket with tokio-tungstenite, over TCP (`ws`) or TLS (`wss`): the client upgrade (path,
//! Host, extra headers, subprotocol), heartbeats as ping/pong or as an echoed text frame, the
//! sink's side (upgrade on any path or one path only, echo), and `ws_upgrade_rejected` with
//! the HTTP status the server answered.
//!
//! Buffers are set small: tungstenite's defaults (128 KiB to read and to write) are sized for
//! throughput, and one of these lives per held connection (see `config`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Failure, tls};
use crate::metrics::{ErrorDetail, ErrorKind};
use crate::profile::protocol::{WebSocketOptions, WsHeartbeat};

/// tungstenite zero-fills its whole read buffer before each read, so every page of it is
/// resident in every connection: 512 bytes holds a heartbeat frame many times over, and larger
/// frames grow it as they need.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// A run's WebSocket client settings.
pub struct Client {
    path: String,
    host: Option<String>,
    headers: BTreeMap<String, String>,
    subprotocol: Option<String>,
    heartbeat: WsHeartbeat,
    tls: Option<tls::Client>,
}

impl Client {
    pub fn new(options: &WebSocketOptions, tls: Option<tls::Client>) -> Client {
        Client {
            path: options.path.clone(),
            host: options.host.clone(),
            headers: options.headers.clone(),
            subprotocol: options.subprotocol.clone(),
            heartbeat: options.heartbeat,
            tls: if options.secure { tls } else { None },
        }
    }

    fn request(&self, target: SocketAddr) -> Result<Request, Failure> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let host = self.host.clone().unwrap_or_else(|| target.to_string());
        let mut request = format!("{scheme}://{host}{}", self.path)
            .into_client_request()
            .map_err(|_| Failure::kind(ErrorKind::WsUpgradeRejected))?;
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            // Validated with the profile; a header the http crate still refuses is skipped.
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                headers.insert(name, value);
            }
        }
        if let Some(sub) = &self.subprotocol
            && let Ok(value) = HeaderValue::try_from(sub.as_str())
        {
            headers.insert("sec-websocket-protocol", value);
        }
        Ok(request)
    }

    pub async fn handshake(&self, tcp: TcpStream, target: SocketAddr) -> Result<Session, Failure> {
        let request = self.request(target)?;
        let stream = match &self.tls {
            None => Stream::Plain(Box::new(upgrade(request, tcp).await?)),
            Some(tls) => {
                let secured = tls.handshake(tcp, target).await?;
                Stream::Tls(Box::new(upgrade(request, *secured).await?))
            }
        };
        Ok(Session {
            stream,
            heartbeat: self.heartbeat,
        })
    }
}

async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    request: Request,
    stream: S,
) -> Result<WebSocketStream<S>, Failure> {
    tokio_tungstenite::client_async_with_config(request, stream, Some(config()))
        .await
        .map(|(ws, _response)| ws)
        .map_err(|e| classify(&e, true))
}

/// A failure as a kind: during the upgrade, anything but a transport error is a rejection.
fn classify(error: &WsError, upgrading: bool) -> Failure {
    match error {
        WsError::Http(response) => Failure {
            kind: ErrorKind::WsUpgradeRejected,
            detail: Some(ErrorDetail::HttpStatus(response.status().as_u16())),
        },
        WsError::Io(e) => Failure::io(e),
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(
            tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => Failure::kind(ErrorKind::ClosedByPeer),
        _ if upgrading => Failure::kind(ErrorKind::WsUpgradeRejected),
        _ => Failure::kind(ErrorKind::Other),
    }
}

/// Boxed: the session lives for the connection's whole life, and the future holding it is
/// smaller if its state is behind a pointer.
enum Stream {
    Plain(Box<WebSocketStream<TcpStream>>),
    Tls(Box<WebSocketStream<tls::ClientStream>>),
}

/// An upgraded client connection.
pub struct Session {
    stream: Stream,
    heartbeat: WsHeartbeat,
}

impl Session {
    pub async fn heartbeat(&mut self, payload: &[u8]) -> Result<(), Failure> {
        let heartbeat = self.heartbeat;
        match &mut self.stream {
            Stream::Plain(ws) => beat(ws.as_mut(), heartbeat, payload).await,
            Stream::Tls(ws) => beat(ws.as_mut(), heartbeat, payload).await,
        }
    }

    pub async fn closed(&mut self) -> Failure {
        match &mut self.stream {
            Stream::Plain(ws) => closed(ws.as_mut()).await,
            Stream::Tls(ws) => closed(ws.as_mut()).await,
        }
    }
}

async fn beat<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    heartbeat: WsHeartbeat,
    payload: &[u8],
) -> Result<(), Failure> {
    let message = match heartbeat {
        WsHeartbeat::Ping => Message::Ping(payload.to_vec().into()),
        WsHeartbeat::Text => Message::Text(String::from_utf8_lossy(payload).into_owned().into()),
    };
    ws.send(message).await.map_err(|e| classify(&e, false))?;
    loop {
        match ws.next().await {
            None => return Err(Failure::kind(ErrorKind::ClosedByPeer)),
            Some(Err(e)) => return Err(classify(&e, false)),
            Some(Ok(Message::Close(_))) => return Err(Failure::kind(ErrorKind::ClosedByPeer)),
            Some(Ok(Message::Pong(_))) if heartbeat == WsHeartbeat::Ping => return Ok(()),
            Some(Ok(Message::Text(text))) if heartbeat == WsHeartbeat::Text => {
                if text.len() == payload.len() {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
        }
    }
}

async fn closed<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Failure {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Failure::kind(ErrorKind::ClosedByPeer),
            Some(Err(e)) => return classify(&e, false),
            Some(Ok(_)) => {}
        }
    }
}

/// The sink's WebSocket side.
pub struct Server {
    /// `wss`: TLS first.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Upgrade only this path (with its query); others are answered 404.
    pub path: Option<String>,
}

impl Server {
    pub async fn serve(&self, tcp: TcpStream, stats: &super::SinkStats) {
        match &self.tls {
            None => self.upgrade_and_echo(tcp, &stats.bytes).await,
            Some(config) => {
                if let Some(stream) = Box::pin(tls::accept(config.clone(), tcp, stats)).await {
                    self.upgrade_and_echo(stream, &stats.bytes).await;
                }
            }
        }
    }

    async fn upgrade_and_echo<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        bytes: &AtomicU64,
    ) {
        let path = self.path.as_deref();
        // The refusal type is tungstenite's, large or not.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| {
            let asked = request.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Some(path) = path
                && asked != path
            {
                let mut refusal = ErrorResponse::new(Some(format!("no WebSocket at {asked}")));
                *refusal.status_mut() = StatusCode::NOT_FOUND;
                return Err(refusal);
            }
            // Accept the first subprotocol offered, as a server that speaks it would.
            if let Some(first) = request
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| HeaderValue::try_from(v.trim()).ok())
            {
                response
                    .headers_mut()
                    .insert("sec-websocket-protocol", first);
            }
            Ok(response)
        };
        // Boxed so the upgrade's state is freed, not kept in every held connection's task.
        let Ok(mut ws) = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(config()),
        ))
        .await
        else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            let echo = match message {
                Message::Text(_) | Message::Binary(_) => message,
                // Pings are answered by tungstenite itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(_) => break,
            };
            bytes.fetch_add(echo.len() as u64, Ordering::Relaxed);
            if ws.send(echo).await.is_err() {
                break;
            }
        }
    }
}
