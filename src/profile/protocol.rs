//! The `protocol` field and its per-protocol options objects (`tls`, `websocket`, and the
//! `mqtt` / `http2` slots), validated into typed options. Opens no files and no sockets: a CA
//! file is only named here and read when the run builds its connector.
//!
//! Adding a protocol: a `Protocol` variant and its name, a `Raw*` struct with
//! `deny_unknown_fields`, its field on `RawProtocolOptions`, and a branch in `validate`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::{Heartbeat, ProfileError, TargetSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Tls,
    WebSocket,
    Mqtt,
    Http2,
}

impl Protocol {
    pub const NAMES: [&'static str; 5] = ["tcp", "tls", "websocket", "mqtt", "http2"];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::WebSocket => "websocket",
            Protocol::Mqtt => "mqtt",
            Protocol::Http2 => "http2",
        }
    }

    fn parse(text: &str) -> Option<Protocol> {
        match text {
            "tcp" => Some(Protocol::Tcp),
            "tls" => Some(Protocol::Tls),
            "websocket" => Some(Protocol::WebSocket),
            "mqtt" => Some(Protocol::Mqtt),
            "http2" => Some(Protocol::Http2),
            _ => None,
        }
    }
}

/// TLS client settings, for `tls`, for `websocket` with `scheme: "wss"` and for `http2` with
/// `scheme: "https"`.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsOptions {
    /// SNI and the name the certificate must carry; `None` verifies the target's IP address
    /// and sends no SNI (what a client dialling an IP does).
    pub server_name: Option<String>,
    /// Check the server's certificate chain and name. Off rehearses a fleet that pins nothing.
    pub verify: bool,
    /// PEM file of CA certificates to trust, read by each agent on its own host. The embedded
    /// sink's self-signed certificate is trusted without one.
    pub ca_file: Option<PathBuf>,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<String>,
    /// Resume sessions from a client cache shared by all connections of the process; off, every
    /// handshake is a full one (a storm without resumption).
    pub resumption: bool,
}

/// How a WebSocket connection proves it is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsHeartbeat {
    /// A ping control frame of `payload_bytes`, answered by a pong.
    Ping,
    /// A text frame of `payload_bytes`, echoed back by the server.
    Text,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WebSocketOptions {
    /// Over TLS (`wss`), with the profile's `tls` options.
    pub secure: bool,
    /// Request path, with its query if any; starts with `/`.
    pub path: String,
    /// Host header; `None` sends the target's IP:port.
    pub host: Option<String>,
    /// Extra request headers, e.g. an authorisation token.
    pub headers: BTreeMap<String, String>,
    /// Offered in `Sec-WebSocket-Protocol`; the server must accept it.
    pub subprotocol: Option<String>,
    pub heartbeat: WsHeartbeat,
}

/// The MQTT protocol level a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MqttOptions {
    pub version: MqttVersion,
    /// Client ids are `{prefix}-{agent}-{slot}`: unique across the whole swarm.
    pub client_id_prefix: String,
    /// Clean session (3.1.1) / clean start (5).
    pub clean_session: bool,
    /// The CONNECT keep-alive in seconds; 0 disables the broker's idle check.
    pub keep_alive_s: u16,
    /// Subscribe (QoS 0) to `{topic_prefix}/{client id}` right after CONNACK.
    pub subscribe: bool,
    pub topic_prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The push-path probe: a publisher per agent, and every client subscribed to one of its
    /// topics.
    pub fanout: Option<Fanout>,
}

/// The MQTT fan-out probe. Each agent runs one publisher connection that sends `rate` (its
/// share of it) QoS 0 messages a second, round-robin over `topics` topics
/// `{topic_prefix}/fanout/{agent}/{k}`; connection slot `s` subscribes to topic `s % topics`.
/// Each message carries its scheduled send time, so the swarm measures publish-to-receive
/// latency on one clock: a publisher and its subscribers are in one process.
#[derive(Clone, Debug, PartialEq)]
pub struct Fanout {
    pub topics: u32,
    /// Messages a second across the whole run; agents split it like connections.
    pub rate: f64,
    pub payload_bytes: usize,
}

/// Smallest fan-out payload: the stamp (a marker and the send time) must fit.
pub const MIN_STAMPED_PAYLOAD: usize = 16;
/// Largest fan-out payload: the packet must fit under the client's packet limit.
pub const MAX_FANOUT_PAYLOAD: usize = 60 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct Http2Options {
    /// `https`: HTTP/2 over TLS with ALPN `h2`, under the `tls` options; otherwise cleartext
    /// with prior knowledge (h2c).
    pub secure: bool,
    /// Path of the one long-lived streaming request per connection.
    pub path: String,
    /// `:authority`; `None` sends the target's IP:port.
    pub authority: Option<String>,
    /// Extra request headers (lower-case names, as HTTP/2 requires).
    pub headers: BTreeMap<String, String>,
    /// The embedded sink sends a stamped DATA frame on every stream this often; a real
    /// server sends what it sends, and its frames are counted (and timed when stamped).
    pub push_interval: Option<std::time::Duration>,
}

/// Everything protocol-specific in a profile. `None` for protocols the profile does not use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProtocolOptions {
    pub tls: Option<TlsOptions>,
    pub websocket: Option<WebSocketOptions>,
    pub mqtt: Option<MqttOptions>,
    pub http2: Option<Http2Options>,
}

/// The per-protocol option objects as they appear at the top level of a profile (fields of
/// `RawProfile`, which denies unknown fields, gathered here).
#[derive(Debug, Default)]
pub(super) struct RawProtocolOptions {
    pub tls: Option<RawTls>,
    pub websocket: Option<RawWebSocket>,
    pub mqtt: Option<RawMqtt>,
    pub http2: Option<RawHttp2>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    #[serde(default)]
    version: Option<Value>,
    #[serde(default)]
    client_id_prefix: Option<String>,
    #[serde(default)]
    clean_session: Option<bool>,
    #[serde(default)]
    keep_alive_s: Option<u64>,
    #[serde(default)]
    subscribe: Option<bool>,
    #[serde(default)]
    topic_prefix: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    fanout: Option<RawFanout>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFanout {
    #[serde(default)]
    topics: Option<u64>,
    rate: f64,
    #[serde(default)]
    payload_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp2 {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    push_interval: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default)]
    verify: Option<bool>,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    alpn: Vec<String>,
    #[serde(default)]
    resumption: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebSocket {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    subprotocol: Option<String>,
    #[serde(default)]
    heartbeat: Option<String>,
}

/// Largest WebSocket ping payload (RFC 6455: control frames carry at most 125 bytes).
pub const MAX_PING_BYTES: u32 = 125;

pub(super) fn validate(
    protocol: Option<&str>,
    raw: RawProtocolOptions,
    target: &TargetSpec,
    heartbeat: Option<&Heartbeat>,
) -> Result<(Protocol, ProtocolOptions), ProfileError> {
    let protocol = match protocol {
        None => Protocol::Tcp,
        Some(text) => Protocol::parse(text).ok_or_else(|| {
            ProfileError::at(
                "protocol",
                format!(
                    "{text:?} is not supported; valid protocols: {}",
                    Protocol::NAMES.join(", ")
                ),
            )
        })?,
    };
    for (field, given, wanted) in [
        ("mqtt", raw.mqtt.is_some(), Protocol::Mqtt),
        ("http2", raw.http2.is_some(), Protocol::Http2),
    ] {
        if given && protocol != wanted {
            return Err(ProfileError::at(
                field,
                format!(
                    "given, but the protocol is {:?}; set \"protocol\": \"{field}\" or remove `{field}`",
                    protocol.name()
                ),
            ));
        }
    }
    let mqtt = match (protocol, raw.mqtt) {
        (Protocol::Mqtt, raw) => Some(validate_mqtt(raw.unwrap_or_default(), heartbeat)?),
        _ => None,
    };
    let http2 = match (protocol, raw.http2) {
        (Protocol::Http2, raw) => Some(validate_http2(raw.unwrap_or_default())?),
        _ => None,
    };
    let websocket = match raw.websocket {
        Some(_) if protocol != Protocol::WebSocket => {
            return Err(ProfileError::at(
                "websocket",
                format!(
                    "given, but the protocol is {:?}; set \"protocol\": \"websocket\" or remove `websocket`",
                    protocol.name()
                ),
            ));
        }
        Some(ws) => Some(validate_websocket(ws, heartbeat)?),
        None if protocol == Protocol::WebSocket => Some(validate_websocket(
            RawWebSocket {
                scheme: None,
                path: None,
                host: None,
                headers: BTreeMap::new(),
                subprotocol: None,
                heartbeat: None,
            },
            heartbeat,
        )?),
        None => None,
    };
    let needs_tls = protocol == Protocol::Tls
        || websocket.as_ref().is_some_and(|ws| ws.secure)
        || http2.as_ref().is_some_and(|h2| h2.secure);
    let tls = match raw.tls {
        Some(_) if !needs_tls => {
            return Err(ProfileError::at(
                "tls",
                format!(
                    "given, but protocol {:?} does not use TLS; use \"protocol\": \"tls\", \"websocket\" with \"scheme\": \"wss\" or \"http2\" with \"scheme\": \"https\"",
                    protocol.name()
                ),
            ));
        }
        Some(tls) => Some(validate_tls(tls, target)?),
        None if needs_tls => Some(validate_tls(
            RawTls {
                server_name: None,
                verify: None,
                ca_file: None,
                alpn: Vec::new(),
                resumption: None,
            },
            target,
        )?),
        None => None,
    };
    // HTTP/2 over TLS is chosen by ALPN: offer h2 unless the profile offers its own list,
    // which must then include it.
    let tls = match (tls, http2.as_ref().is_some_and(|h2| h2.secure)) {
        (Some(mut tls), true) => {
            if tls.alpn.is_empty() {
                tls.alpn = vec!["h2".into()];
            } else if !tls.alpn.iter().any(|p| p == "h2") {
                return Err(ProfileError::at(
                    "tls.alpn",
                    format!(
                        "{:?} leaves out \"h2\", which HTTP/2 over TLS is chosen by; add it or remove \"alpn\"",
                        tls.alpn
                    ),
                ));
            }
            Some(tls)
        }
        (tls, _) => tls,
    };
    Ok((
        protocol,
        ProtocolOptions {
            tls,
            websocket,
            mqtt,
            http2,
        },
    ))
}

/// MQTT 3.1.1 limits a client id to 23 bytes only as a floor brokers must accept; real brokers
/// take far longer ones, but a prefix beyond this leaves no room for the agent and slot.
const MAX_CLIENT_ID_PREFIX: usize = 64;

fn validate_mqtt(raw: RawMqtt, heartbeat: Option<&Heartbeat>) -> Result<MqttOptions, ProfileError> {
    let version = match &raw.version {
        None => MqttVersion::V311,
        Some(Value::String(v)) if v == "3.1.1" => MqttVersion::V311,
        Some(Value::String(v)) if v == "5" => MqttVersion::V5,
        Some(Value::Number(n)) if n.as_u64() == Some(5) => MqttVersion::V5,
        Some(other) => {
            return Err(ProfileError::at(
                "mqtt.version",
                format!("{other} is not valid; expected \"3.1.1\" or \"5\""),
            ));
        }
    };
    let prefix = raw.client_id_prefix.unwrap_or_else(|| "stampede".into());
    if prefix.is_empty()
        || prefix.len() > MAX_CLIENT_ID_PREFIX
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ProfileError::at(
            "mqtt.client_id_prefix",
            format!(
                "{prefix:?} is not valid; use 1 to {MAX_CLIENT_ID_PREFIX} letters, digits, - or _ (ids become PREFIX-AGENT-SLOT)"
            ),
        ));
    }
    if raw.topic_prefix.is_some() && raw.subscribe != Some(true) && raw.fanout.is_none() {
        return Err(ProfileError::at(
            "mqtt.topic_prefix",
            "given, but nothing subscribes; add \"subscribe\": true or \"fanout\", or remove \"topic_prefix\"",
        ));
    }
    let fanout = raw.fanout.map(validate_fanout).transpose()?;
    let topic_prefix = raw.topic_prefix.unwrap_or_else(|| "stampede".into());
    if topic_prefix.is_empty()
        || topic_prefix.contains(['+', '#', '\0'])
        || topic_prefix.len() > 1024
    {
        return Err(ProfileError::at(
            "mqtt.topic_prefix",
            format!(
                "{topic_prefix:?} is not valid; give a topic without wildcards (+, #), e.g. \"devices\" (each client subscribes to PREFIX/CLIENT_ID)"
            ),
        ));
    }
    // The heartbeat sends PINGREQ every interval; a broker drops a client silent for 1.5 x
    // keep-alive, so the default leaves room for two missed beats.
    let default_keep_alive =
        heartbeat.map_or(0, |h| (h.interval.as_secs_f64() * 2.0).ceil() as u64);
    let keep_alive_s = raw.keep_alive_s.unwrap_or(default_keep_alive.max(1));
    if keep_alive_s > u64::from(u16::MAX) {
        return Err(ProfileError::at(
            "mqtt.keep_alive_s",
            format!(
                "{keep_alive_s} is too large; MQTT allows at most {} seconds",
                u16::MAX
            ),
        ));
    }
    if let Some(h) = heartbeat
        && keep_alive_s > 0
        && (keep_alive_s as f64) * 1.5 <= h.interval.as_secs_f64()
    {
        return Err(ProfileError::at(
            "mqtt.keep_alive_s",
            format!(
                "{keep_alive_s} s is shorter than the heartbeat interval ({:?}) allows: the broker would drop every client before its PINGREQ; raise it to at least {} or remove it",
                h.interval,
                h.interval.as_secs_f64().ceil() as u64
            ),
        ));
    }
    if raw.password.is_some() && raw.username.is_none() {
        return Err(ProfileError::at(
            "mqtt.password",
            "given without a username; add \"username\" or remove \"password\"",
        ));
    }
    Ok(MqttOptions {
        version,
        client_id_prefix: prefix,
        clean_session: raw.clean_session.unwrap_or(true),
        keep_alive_s: keep_alive_s as u16,
        subscribe: raw.subscribe.unwrap_or(false),
        topic_prefix,
        username: raw.username,
        password: raw.password,
        fanout,
    })
}

fn validate_fanout(raw: RawFanout) -> Result<Fanout, ProfileError> {
    let topics = raw.topics.unwrap_or(1);
    if !(1..=1_000_000).contains(&topics) {
        return Err(ProfileError::at(
            "mqtt.fanout.topics",
            format!("{topics} is out of range; expected 1 to 1000000 topics"),
        ));
    }
    if !(raw.rate.is_finite() && raw.rate >= 0.01 && raw.rate <= 1_000_000.0) {
        return Err(ProfileError::at(
            "mqtt.fanout.rate",
            format!(
                "{} is out of range; expected messages a second from 0.01 to 1000000, e.g. 100",
                raw.rate
            ),
        ));
    }
    let payload_bytes = raw.payload_bytes.unwrap_or(64);
    if !(MIN_STAMPED_PAYLOAD as u64..=MAX_FANOUT_PAYLOAD as u64).contains(&payload_bytes) {
        return Err(ProfileError::at(
            "mqtt.fanout.payload_bytes",
            format!(
                "{payload_bytes} is out of range; expected {MIN_STAMPED_PAYLOAD} (room for the send-time stamp) to {MAX_FANOUT_PAYLOAD}"
            ),
        ));
    }
    Ok(Fanout {
        topics: topics as u32,
        rate: raw.rate,
        payload_bytes: payload_bytes as usize,
    })
}

fn validate_http2(raw: RawHttp2) -> Result<Http2Options, ProfileError> {
    let path = raw.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ProfileError::at(
            "http2.path",
            format!(
                "{path:?} is not a request path; expected one starting with / and without spaces, e.g. \"/stream?v=1\""
            ),
        ));
    }
    if let Some(authority) = &raw.authority
        && http::uri::Authority::try_from(authority.as_str()).is_err()
    {
        return Err(ProfileError::at(
            "http2.authority",
            format!("{authority:?} is not a valid authority; give host or host:port"),
        ));
    }
    for (name, value) in &raw.headers {
        if http::HeaderName::try_from(name.as_str()).is_err()
            || name.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(ProfileError::at(
                format!("http2.headers.{name}"),
                format!(
                    "{name:?} is not a valid HTTP/2 header name; use lower-case letters, digits and -"
                ),
            ));
        }
        if http::HeaderValue::try_from(value.as_str()).is_err() {
            return Err(ProfileError::at(
                format!("http2.headers.{name}"),
                format!("{value:?} is not a valid header value; give visible ASCII on one line"),
            ));
        }
    }
    let push_interval = raw
        .push_interval
        .map(|text| super::duration_at("http2.push_interval", &text))
        .transpose()?;
    if let Some(every) = push_interval
        && every < std::time::Duration::from_millis(1)
    {
        return Err(ProfileError::at(
            "http2.push_interval",
            format!("{every:?} is too short; give at least \"1ms\""),
        ));
    }
    let secure = match raw.scheme.as_deref() {
        None | Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(ProfileError::at(
                "http2.scheme",
                format!(
                    "{other:?} is not valid; expected \"http\" (h2c, prior knowledge) or \"https\" (over TLS, ALPN h2)"
                ),
            ));
        }
    };
    Ok(Http2Options {
        secure,
        path,
        authority: raw.authority,
        headers: raw.headers,
        push_interval,
    })
}

fn validate_tls(raw: RawTls, target: &TargetSpec) -> Result<TlsOptions, ProfileError> {
    if let Some(name) = &raw.server_name
        && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(ProfileError::at(
            "tls.server_name",
            format!(
                "{name:?} is not a DNS name or IP address; give the name the server's certificate carries"
            ),
        ));
    }
    let verify = raw.verify.unwrap_or(true);
    if verify && raw.ca_file.is_none() && *target != TargetSpec::Embedded {
        return Err(ProfileError::at(
            "tls.ca_file",
            "missing: with \"verify\": true a target other than the embedded sink needs a CA file to trust; give \"ca_file\": \"ca.pem\", or set \"verify\": false",
        ));
    }
    if !verify && raw.ca_file.is_some() {
        return Err(ProfileError::at(
            "tls.ca_file",
            "given with \"verify\": false, where nothing is checked; remove one of them",
        ));
    }
    for (i, proto) in raw.alpn.iter().enumerate() {
        if proto.is_empty() || proto.len() > 255 {
            return Err(ProfileError::at(
                format!("tls.alpn[{i}]"),
                format!(
                    "{proto:?} is not a valid ALPN protocol; expected 1 to 255 bytes such as \"h2\" or \"http/1.1\""
                ),
            ));
        }
    }
    Ok(TlsOptions {
        server_name: raw.server_name,
        verify,
        ca_file: raw.ca_file.map(PathBuf::from),
        alpn: raw.alpn,
        resumption: raw.resumption.unwrap_or(true),
    })
}

fn validate_websocket(
    raw: RawWebSocket,
    heartbeat: Option<&Heartbeat>,
) -> Result<WebSocketOptions, ProfileError> {
    let secure = match raw.scheme.as_deref() {
        None | Some("ws") => false,
        Some("wss") => true,
        Some(other) => {
            return Err(ProfileError::at(
                "websocket.scheme",
                format!("{other:?} is not valid; expected \"ws\" or \"wss\" (over TLS)"),
            ));
        }
    };
    let path = raw.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ProfileError::at(
            "websocket.path",
            format!(
                "{path:?} is not a request path; expected one starting with / and without spaces, e.g. \"/push?v=2\""
            ),
        ));
    }
    for (name, value) in &raw.headers {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(ProfileError::at(
                format!("websocket.headers.{name}"),
                format!("{name:?} is not a valid header name; use letters, digits and -"),
            ));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ProfileError::at(
                format!("websocket.headers.{name}"),
                format!("{value:?} contains a line break; give a single-line value"),
            ));
        }
    }
    let heartbeat_kind = match raw.heartbeat.as_deref() {
        None | Some("ping") => WsHeartbeat::Ping,
        Some("text") => WsHeartbeat::Text,
        Some(other) => {
            return Err(ProfileError::at(
                "websocket.heartbeat",
                format!(
                    "{other:?} is not valid; expected \"ping\" (ping/pong) or \"text\" (an echoed text frame)"
                ),
            ));
        }
    };
    if heartbeat_kind == WsHeartbeat::Ping
        && let Some(h) = heartbeat
        && h.payload_bytes > MAX_PING_BYTES
    {
        return Err(ProfileError::at(
            "heartbeat.payload_bytes",
            format!(
                "{} is too large for a WebSocket ping (at most {MAX_PING_BYTES}); lower it or set \"websocket\": {{\"heartbeat\": \"text\"}}",
                h.payload_bytes
            ),
        ));
    }
    Ok(WebSocketOptions {
        secure,
        path,
        host: raw.host,
        headers: raw.headers,
        subprotocol: raw.subprotocol,
        heartbeat: heartbeat_kind,
    })
}

#[cfg(test)]
mod tests;
