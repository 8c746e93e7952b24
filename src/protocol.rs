//! Protocols above TCP, client and server side: what each one's handshake is, what its
//! heartbeat is, and how its failures are classified.
//!
//! - `tls`: rustls configurations (client verify/CA/SNI/ALPN/resumption; server cert or a
//!   self-signed one) and TLS alert classification.
//! - `websocket`: the upgrade (path, headers, subprotocol), ping/pong or echoed-text
//!   heartbeats, `ws` and `wss`.
//! - `mqtt`: CONNECT / CONNACK, PINGREQ heartbeats, subscriptions, the fan-out publisher, and
//!   the sink's minimal broker.
//! - `http2`: one streaming request per connection, PING heartbeats, server-sent DATA frames.
//!
//! Server-sent messages (MQTT PUBLISH, HTTP/2 DATA) may carry a stamp, `stampede` and the
//! send time, so that the receiving side can time their delivery.
//!
//! Plain TCP never comes here: its connections live in `agent::table` (one epoll set per worker, no task each).
//! A protocol is one file that adds a `Connector` variant (client side, built once per run
//! from the profile), a `Session` variant (an established connection) and an `Acceptor`
//! variant (the sink's side). `agent::layered` drives sessions; this module records nothing.

pub mod http2;
pub mod mqtt;
pub mod tls;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use crate::metrics::{ErrorDetail, ErrorKind};
use crate::profile::{Profile, Protocol};

/// Why a handshake, heartbeat or held connection failed: a counted kind and, for protocol
/// failures, what the peer said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub detail: Option<ErrorDetail>,
}

impl Failure {
    pub fn kind(kind: ErrorKind) -> Failure {
        Failure { kind, detail: None }
    }

    pub fn io(error: &std::io::Error) -> Failure {
        Failure::kind(ErrorKind::from_io(error))
    }
}

/// The client side of a run's protocol, built once from the profile and shared by every
/// connection of every worker.
pub enum Connector {
    Tcp,
    Tls(tls::Client),
    WebSocket(websocket::Client),
    Mqtt(mqtt::Client),
    Http2(http2::Client),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connector::Tcp => "Connector::Tcp",
            Connector::Tls(_) => "Connector::Tls",
            Connector::WebSocket(_) => "Connector::WebSocket",
            Connector::Mqtt(_) => "Connector::Mqtt",
            Connector::Http2(_) => "Connector::Http2",
        })
    }
}

impl Connector {
    /// Builds the connector for `profile`, trusting `extra_roots` besides its CA file (the
    /// embedded sink's certificate). Errors name the profile field at fault.
    pub fn new(
        profile: &Profile,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Connector, String> {
        let options = &profile.protocol_options;
        let tls = options
            .tls
            .as_ref()
            .map(|t| tls::Client::new(t, extra_roots))
            .transpose()?;
        Ok(match (profile.protocol, tls) {
            (Protocol::Tcp, _) => Connector::Tcp,
            (Protocol::Tls, Some(tls)) => Connector::Tls(tls),
            (Protocol::WebSocket, tls) => match &options.websocket {
                Some(ws) => Connector::WebSocket(websocket::Client::new(ws, tls)),
                None => return Err("websocket: options missing".into()),
            },
            (Protocol::Mqtt, _) => match &options.mqtt {
                Some(mqtt) => Connector::Mqtt(mqtt::Client::new(mqtt)),
                None => return Err("mqtt: options missing".into()),
            },
            (Protocol::Http2, tls) => match &options.http2 {
                Some(h2) => Connector::Http2(http2::Client::new(h2, tls)),
                None => return Err("http2: options missing".into()),
            },
            (other, _) => {
                return Err(format!(
                    "protocol {:?} has no client in this build",
                    other.name()
                ));
            }
        })
    }

    /// Sets this process's agent index in the swarm, for identities that must be unique
    /// across it (MQTT client ids).
    pub fn set_agent(&mut self, agent: usize) {
        if let Connector::Mqtt(client) = self {
            client.set_agent(agent);
        }
    }

    /// Runs the protocol's handshake on an established TCP connection to `target` for
    /// connection slot `slot` (unique within the agent).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        target: SocketAddr,
        slot: u64,
    ) -> Result<Session, Failure> {
        match self {
            Connector::Tcp => Err(Failure::kind(ErrorKind::Other)),
            Connector::Tls(client) => client.handshake(tcp, target).await.map(Session::Tls),
            Connector::WebSocket(client) => client.handshake(tcp, target).await.map(Session::Ws),
            Connector::Mqtt(client) => client.handshake(tcp, slot).await.map(Session::Mqtt),
            Connector::Http2(client) => client
                .handshake(tcp, target)
                .await
                .map(|s| Session::H2(Box::new(s))),
        }
    }
}

/// The marker that starts a stamped server-sent message; the send time follows it.
const STAMP_MARKER: &[u8; 8] = b"stampede";
/// Marker and send time: the bytes a stamped message starts with.
pub const STAMP_LEN: usize = 16;

/// Nanoseconds since the Unix epoch now. Stamps use the wall clock so that a stamp written by
/// one process (the sink) reads right in another on the same host.
pub fn unix_ns_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes the stamp for send time `unix_ns` at the front of `payload` (at least `STAMP_LEN`
/// bytes).
pub fn write_stamp(payload: &mut [u8], unix_ns: u64) {
    if let Some(head) = payload.get_mut(..STAMP_LEN) {
        head[..8].copy_from_slice(STAMP_MARKER);
        head[8..].copy_from_slice(&unix_ns.to_be_bytes());
    }
}

/// Microseconds from the send time stamped in `payload` to now, or `None` for a message
/// without a stamp. A stamp from a clock ahead of ours reads as 0.
pub fn stamp_age_us(payload: &[u8]) -> Option<u64> {
    let head = payload.get(..STAMP_LEN)?;
    if &head[..8] != STAMP_MARKER {
        return None;
    }
    let sent = u64::from_be_bytes(head[8..].try_into().ok()?);
    Some(unix_ns_now().saturating_sub(sent) / 1000)
}

/// Server-sent messages that arrived while a handshake or heartbeat waited, kept until the
/// connection's holder records them. Bounded whatever the server sends: past `MAX_KEPT` ages
/// only the count grows.
#[derive(Debug, Default)]
pub struct Arrivals {
    pub count: u64,
    /// Ages in microseconds of the stamped ones.
    pub ages: Vec<u64>,
}

impl Arrivals {
    const MAX_KEPT: usize = 1024;

    pub fn push(&mut self, age: Option<u64>) {
        self.count += 1;
        if let Some(age) = age
            && self.ages.len() < Arrivals::MAX_KEPT
        {
            self.ages.push(age);
        }
    }
}

/// What a held session saw between heartbeats.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer closed or broke the connection.
    Closed(Failure),
    /// A server-sent message arrived (MQTT PUBLISH, HTTP/2 DATA frame): its age in
    /// microseconds when it carried a send-time stamp.
    Message(Option<u64>),
}

/// An established connection of a protocol above TCP.
pub enum Session {
    Tls(Box<tls::ClientStream>),
    Ws(websocket::Session),
    Mqtt(mqtt::Session),
    H2(Box<http2::Session>),
}

impl Session {
    /// Sends one heartbeat and waits for its answer (the caller bounds the wait).
    pub async fn heartbeat(&mut self, payload: &[u8]) -> Result<(), Failure> {
        match self {
            Session::Tls(stream) => tls::echo(stream, payload).await,
            Session::Ws(session) => session.heartbeat(payload).await,
            Session::Mqtt(session) => session.heartbeat().await,
            Session::H2(session) => session.heartbeat().await,
        }
    }

    /// Waits for the next server-sent message, or until the peer closes or breaks the
    /// connection; other traffic is discarded. Cancel-safe: dropped between heartbeats
    /// without losing anything that matters.
    pub async fn next_event(&mut self) -> Event {
        match self {
            Session::Tls(stream) => Event::Closed(tls::closed(stream).await),
            Session::Ws(session) => Event::Closed(session.closed().await),
            Session::Mqtt(session) => session.next_event().await,
            Session::H2(session) => session.next_event().await,
        }
    }

    /// Messages that arrived while a handshake or heartbeat waited for its answer.
    pub fn take_arrivals(&mut self) -> Arrivals {
        match self {
            Session::Mqtt(session) => std::mem::take(&mut session.arrivals),
            Session::H2(session) => std::mem::take(&mut session.arrivals),
            Session::Tls(_) | Session::Ws(_) => Arrivals::default(),
        }
    }
}

/// The sink's side of a protocol: what it runs on each accepted connection.
#[derive(Clone)]
pub enum Acceptor {
    Tcp,
    Tls(Arc<rustls::ServerConfig>),
    WebSocket(Arc<websocket::Server>),
    /// Topics and their subscribers are shared by every connection of the sink process.
    Mqtt(Arc<mqtt::Broker>),
    /// With a push interval, every stream gets a stamped DATA frame that often; with a TLS
    /// configuration (ALPN `h2`), HTTP/2 runs over TLS.
    Http2 {
        push: Option<std::time::Duration>,
        tls: Option<Arc<rustls::ServerConfig>>,
    },
}

impl Acceptor {
    pub fn name(&self) -> &'static str {
        match self {
            Acceptor::Tcp => "tcp",
            Acceptor::Tls(_) => "tls",
            Acceptor::WebSocket(server) if server.tls.is_some() => "wss",
            Acceptor::WebSocket(_) => "ws",
            Acceptor::Mqtt(_) => "mqtt",
            Acceptor::Http2 { tls: Some(_), .. } => "h2s",
            Acceptor::Http2 { tls: None, .. } => "h2",
        }
    }

    /// Handshakes and then echoes until the client goes away or the task is aborted,
    /// counting echoed bytes and TLS handshakes in `stats`.
    pub async fn serve(&self, tcp: TcpStream, stats: &SinkStats) {
        let _ = tcp.set_nodelay(true);
        match self {
            // The sink keeps its own lean path for plain TCP.
            Acceptor::Tcp => {}
            Acceptor::Tls(config) => {
                // Handshakes are boxed so their state is freed, not kept in every held task.
                if let Some(stream) = Box::pin(tls::accept(config.clone(), tcp, stats)).await {
                    tls::serve(stream, &stats.bytes).await;
                }
            }
            Acceptor::WebSocket(server) => server.serve(tcp, stats).await,
            Acceptor::Mqtt(broker) => mqtt::serve(tcp, broker, &stats.bytes).await,
            Acceptor::Http2 { push, tls: None } => http2::serve(tcp, *push, &stats.bytes).await,
            Acceptor::Http2 {
                push,
                tls: Some(config),
            } => {
                if let Some(stream) = Box::pin(tls::accept(config.clone(), tcp, stats)).await {
                    http2::serve(stream, *push, &stats.bytes).await;
                }
            }
        }
    }
}

/// The sink's protocol settings as `stampede sink` flags or the embedded target give them.
#[derive(Clone, Debug, Default)]
pub struct SinkProtocol {
    /// One of `SINK_PROTOCOLS`.
    pub name: String,
    /// PEM certificate chain and key; both `None` generates a self-signed certificate.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// WebSocket: upgrade only this path (others get 404); `None` accepts any.
    pub ws_path: Option<String>,
    /// HTTP/2: send a stamped DATA frame on every stream this often.
    pub push_interval: Option<std::time::Duration>,
}

/// Names `stampede sink --protocol` accepts.
pub const SINK_PROTOCOLS: [&str; 7] = ["tcp", "tls", "ws", "wss", "mqtt", "h2", "h2s"];

impl SinkProtocol {
    /// What the embedded sink must speak for `profile`.
    pub fn for_profile(profile: &Profile) -> SinkProtocol {
        let name = match profile.protocol {
            Protocol::Tls => "tls",
            Protocol::WebSocket
                if profile
                    .protocol_options
                    .websocket
                    .as_ref()
                    .is_some_and(|w| w.secure) =>
            {
                "wss"
            }
            Protocol::WebSocket => "ws",
            Protocol::Mqtt => "mqtt",
            Protocol::Http2
                if profile
                    .protocol_options
                    .http2
                    .as_ref()
                    .is_some_and(|h| h.secure) =>
            {
                "h2s"
            }
            Protocol::Http2 => "h2",
            _ => "tcp",
        };
        SinkProtocol {
            name: name.into(),
            push_interval: profile
                .protocol_options
                .http2
                .as_ref()
                .and_then(|h| h.push_interval),
            ..SinkProtocol::default()
        }
    }

    /// Whether the sink serves a certificate (which clients must trust).
    pub fn uses_tls(&self) -> bool {
        matches!(self.name.as_str(), "tls" | "wss" | "h2s")
    }

    /// The `stampede sink` flags that make another sink process speak this protocol
    /// (certificate files aside, which the caller shares).
    pub fn flags(&self) -> Vec<String> {
        let mut args = vec!["--protocol".to_string(), self.name.clone()];
        if let Some(path) = &self.ws_path {
            args.extend(["--ws-path".to_string(), path.clone()]);
        }
        if let Some(every) = self.push_interval {
            args.extend([
                "--push-interval".to_string(),
                format!("{}us", every.as_micros()),
            ]);
        }
        args
    }

    /// Builds the acceptor; the certificate it serves (to trust on the client side) comes
    /// back too when TLS is involved.
    pub fn acceptor(
        &self,
    ) -> Result<(Acceptor, Option<rustls::pki_types::CertificateDer<'static>>), String> {
        let tls = || tls::server_config(self.cert.as_deref(), self.key.as_deref());
        Ok(match self.name.as_str() {
            "tcp" => (Acceptor::Tcp, None),
            "mqtt" => (Acceptor::Mqtt(Arc::new(mqtt::Broker::default())), None),
            "h2" => (
                Acceptor::Http2 {
                    push: self.push_interval,
                    tls: None,
                },
                None,
            ),
            "h2s" => {
                let (config, cert) = tls()?;
                // HTTP/2 over TLS is agreed by ALPN.
                let mut config = Arc::unwrap_or_clone(config);
                config.alpn_protocols = vec![b"h2".to_vec()];
                (
                    Acceptor::Http2 {
                        push: self.push_interval,
                        tls: Some(Arc::new(config)),
                    },
                    Some(cert),
                )
            }
            "tls" => {
                let (config, cert) = tls()?;
                (Acceptor::Tls(config), Some(cert))
            }
            "ws" => (
                Acceptor::WebSocket(Arc::new(websocket::Server {
                    tls: None,
                    path: self.ws_path.clone(),
                })),
                None,
            ),
            "wss" => {
                let (config, cert) = tls()?;
                (
                    Acceptor::WebSocket(Arc::new(websocket::Server {
                        tls: Some(config),
                        path: self.ws_path.clone(),
                    })),
                    Some(cert),
                )
            }
            other => {
                return Err(format!(
                    "--protocol {other:?} is not valid; expected one of {}",
                    SINK_PROTOCOLS.join(", ")
                ));
            }
        })
    }
}

/// Counters of a running sink (`sink::SinkStats`). Written by its tasks, the protocol servers
/// here among them, and read by whoever prints stats.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    pub bytes: AtomicU64,
    pub accept_errors: AtomicU64,
    /// TLS handshakes completed (tls and wss), and how many of them resumed a session.
    pub tls_handshakes: AtomicU64,
    pub tls_resumed: AtomicU64,
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
        let handshakes = self.tls_handshakes.load(Ordering::Relaxed);
        if handshakes > 0 {
            let resumed = self.tls_resumed.load(Ordering::Relaxed);
            return format!("{line} tls_handshakes {handshakes} tls_resumed {resumed}");
        }
        line
    }
}
