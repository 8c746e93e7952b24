//! The coordinator <-> agent protocol.
//!
//! Frames are a 4-byte big-endian length followed by one serde_json message; a frame over
//! `MAX_FRAME` or a message that does not parse ends that peer's session, never the
//! coordinator. Histograms travel as HdrHistogram V2-deflate bytes (base64 in the JSON), never
//! as percentiles, so merging stays lossless.
//!
//! Authentication is a challenge-response over nonces from both sides with HMAC-SHA256 of a
//! shared token; the token itself never crosses the wire. After the handshake every frame, in
//! both directions, is sealed (`Sealer`, `Opener`): a sequence number and a 16-byte
//! HMAC-SHA256 tag under a key derived from the token, both nonces and the direction, so a
//! frame that is altered, injected, replayed, reordered or taken from another session fails
//! and ends the session. Frames are authenticated, not encrypted: anyone on the path can read
//! profiles and reports.

use std::io;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::metrics::{
    Counts, ErrorDetail, ErrorKind, HIGHEST_US, IntervalData, LOWEST_US, LatencySet, SIGFIGS,
};

/// How long a peer may take over each handshake step.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Wall-clock microseconds since the Unix epoch, as both ends stamp their frames (clock offsets
/// are measured from these).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Bumped whenever a message changes shape; peers with another version are refused.
/// 2: a sixth histogram (handshake), five more error kinds and the protocol failure details.
/// 3: a seventh histogram (delivery) and the published / received message counts.
/// 4: connected vs established: connected and per-slot counts, the open-established gauge and
///    the ramp's own connect count.
/// 5: `AgentInfo.synthetic`; every frame after the handshake is sealed (sequence number and
///    MAC, see `Sealer`).
pub const PROTOCOL_VERSION: u32 = 5;
/// Largest frame either side accepts: a report from an agent with thousands of source
/// addresses fits easily.
pub const MAX_FRAME: usize = 16 << 20;
/// Largest frame a peer may send before it has proven the token (a hello, a challenge or a
/// proof is a few hundred bytes), so a stranger cannot make either side reserve 16 MiB.
pub const HANDSHAKE_MAX_FRAME: usize = 64 << 10;
pub const NONCE_BYTES: usize = 32;
/// How often the coordinator tells each agent it is still there.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// The shortest lease either side accepts: three keepalives, so that one late keepalive on a
/// busy host does not stop every agent.
pub const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(3);
/// The longest lease an agent accepts unless told otherwise (`--max-lease`): how long load may
/// go on after its coordinator has gone.
pub const DEFAULT_MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the {1}-byte limit")]
    TooLarge(usize, usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A sealed frame that does not authenticate, or comes out of sequence.
    #[error("{0}; closing the session")]
    Forged(String),
}

/// An agent's description of itself, sent in its hello.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    pub host: String,
    pub stampede_version: String,
    pub cores: usize,
    /// Open files this agent may use (its RLIMIT_NOFILE after raising the soft limit).
    pub fd_limit: u64,
    /// Source addresses it was told to use (`--sources`), empty for "the profile's".
    pub sources: Vec<String>,
    /// Its clock at the moment it sent this, microseconds since the Unix epoch.
    pub clock_us: u64,
    /// A synthetic reporter (`agent --synthetic`): its figures are made up and it opens no
    /// load, so a run with one cannot pass unless the coordinator allows it.
    pub synthetic: bool,
}

/// What an agent plays: the profile (as JSON, after overrides) scaled to its share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanMsg {
    pub agent_index: usize,
    pub agents: usize,
    /// The profile with connections, ramp targets and rates scaled to this agent's share.
    pub profile: serde_json::Value,
    /// When to start, on the agent's own clock (microseconds since the Unix epoch).
    pub start_at_us: u64,
    /// Capacity weights of every agent, for apportioning the profile exactly.
    pub weights: Vec<u64>,
    /// Silence from the coordinator longer than this stops the agent (dead-man switch).
    pub lease_ms: u64,
    /// Targets to use instead of the profile's (the embedded sink's address in local swarms).
    pub targets: Option<Vec<String>>,
}

/// One interval as it travels: counters plus V2-deflate histograms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireInterval {
    pub seq: u64,
    pub last: bool,
    pub open: u64,
    /// Of `open`, the connections established (proved served).
    pub open_established: u64,
    pub totals: Counts,
    pub per_source: Vec<Counts>,
    pub per_target: Vec<Counts>,
    /// Base64 V2-deflate histograms, in `Latency::ALL` order.
    pub histograms: Vec<String>,
    pub first_attempt_us: Option<u64>,
    pub last_established_us: Option<u64>,
    pub ramp_connected: u64,
    pub last_ramp_connected_us: Option<u64>,
    #[serde(default)]
    pub reconnect_attempts: Vec<u64>,
    /// Protocol failure details: (error kind name, detail, count).
    #[serde(default)]
    pub details: Vec<(String, ErrorDetail, u64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Agent -> coordinator, first frame.
    Hello {
        version: u32,
        nonce: String,
        info: AgentInfo,
    },
    /// Coordinator -> agent: its nonce and proof that it knows the token.
    Challenge {
        nonce: String,
        proof: String,
    },
    /// Agent -> coordinator: proof that it knows the token.
    Proof {
        proof: String,
    },
    /// Coordinator -> agent: joined; wait for the plan.
    Welcome,
    /// Either side: the session ends, and why.
    Refused {
        reason: String,
    },
    /// Coordinator -> agent: clock probe. Agent answers `Pong` with its clock.
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
        clock_us: u64,
    },
    Plan(Box<PlanMsg>),
    /// Agent -> coordinator: the plan is accepted and the agent will start at `start_at_us`.
    Ready {
        sources: Vec<String>,
        targets: Vec<String>,
    },
    /// Agent -> coordinator: the moment it actually started, on its clock.
    Started {
        clock_us: u64,
    },
    Report(Box<WireInterval>),
    /// Coordinator -> agent: keeps the lease alive.
    Keepalive,
    Pause,
    Resume,
    /// Coordinator -> agent: stop gracefully and send the last report.
    Stop {
        reason: String,
    },
}

pub async fn write_message<W: AsyncWrite + Unpin>(
    out: &mut W,
    message: &Message,
) -> Result<(), WireError> {
    let body = serde_json::to_vec(message).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len(), MAX_FRAME));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    out.write_all(&frame).await?;
    Ok(())
}

pub async fn read_message<R: AsyncRead + Unpin>(input: &mut R) -> Result<Message, WireError> {
    read_message_limited(input, MAX_FRAME).await
}

/// Reads one frame of at most `limit` bytes. The body buffer grows with what actually arrives,
/// so a peer that announces a large frame and then sends little costs little.
pub async fn read_message_limited<R: AsyncRead + Unpin>(
    input: &mut R,
    limit: usize,
) -> Result<Message, WireError> {
    decode(&read_frame(input, limit).await?)
}

/// One frame's body (after its length), of at most `limit` bytes.
async fn read_frame<R: AsyncRead + Unpin>(
    input: &mut R,
    limit: usize,
) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit.min(MAX_FRAME) {
        return Err(WireError::TooLarge(len, limit.min(MAX_FRAME)));
    }
    let mut body = Vec::with_capacity(len.min(HANDSHAKE_MAX_FRAME));
    (&mut *input)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() < len {
        return Err(WireError::Closed);
    }
    Ok(body)
}

pub fn decode(body: &[u8]) -> Result<Message, WireError> {
    serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Bytes of the truncated HMAC-SHA256 tag on a sealed frame.
pub const TAG_BYTES: usize = 16;
/// A sealed frame's body: sequence number, message, tag.
const SEQ_BYTES: usize = 8;

/// Which end of a session this is, for picking the key of each direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Agent,
    Coordinator,
}

/// The key of one direction: HMAC-SHA256 over a label and both nonces, keyed by the token (an
/// empty token for a loopback swarm without one).
fn direction_key(
    token: &[u8],
    direction: &str,
    agent_nonce: &str,
    coordinator_nonce: &str,
) -> Hmac<Sha256> {
    let secret = mac(token, direction, agent_nonce, coordinator_nonce)
        .finalize()
        .into_bytes();
    <Hmac<Sha256> as KeyInit>::new_from_slice(&secret).expect("HMAC takes any key length")
}

/// Both directions' keys for `role`'s end of the session the two nonces belong to.
pub fn session_keys(
    token: &[u8],
    agent_nonce: &str,
    coordinator_nonce: &str,
    role: Role,
) -> (Sealer, Opener) {
    let up = direction_key(
        token,
        "frames agent->coordinator",
        agent_nonce,
        coordinator_nonce,
    );
    let down = direction_key(
        token,
        "frames coordinator->agent",
        agent_nonce,
        coordinator_nonce,
    );
    let (send, receive) = match role {
        Role::Agent => (up, down),
        Role::Coordinator => (down, up),
    };
    (
        Sealer { key: send, seq: 0 },
        Opener {
            key: receive,
            seq: 0,
        },
    )
}

fn tag(key: &Hmac<Sha256>, seq_and_body: &[u8]) -> Hmac<Sha256> {
    let mut mac = key.clone();
    mac.update(seq_and_body);
    mac
}

/// Seals the frames one side sends: `len | seq (8 bytes, big-endian) | JSON | tag`, the tag
/// the first 16 bytes of HMAC-SHA256 over seq and JSON. Owned by the session's writer.
pub struct Sealer {
    key: Hmac<Sha256>,
    seq: u64,
}

impl Sealer {
    /// The frame for `message`, consuming the next sequence number.
    pub fn seal(&mut self, message: &Message) -> Result<Vec<u8>, WireError> {
        let mut frame = Vec::with_capacity(256);
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&self.seq.to_be_bytes());
        serde_json::to_writer(&mut frame, message)
            .map_err(|e| WireError::Malformed(e.to_string()))?;
        let len = frame.len() - 4 + TAG_BYTES;
        if len > MAX_FRAME {
            return Err(WireError::TooLarge(len, MAX_FRAME));
        }
        let tag = tag(&self.key, &frame[4..]).finalize().into_bytes();
        frame.extend_from_slice(&tag[..TAG_BYTES]);
        frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
        self.seq += 1;
        Ok(frame)
    }

    pub async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        out: &mut W,
        message: &Message,
    ) -> Result<(), WireError> {
        let frame = self.seal(message)?;
        out.write_all(&frame).await?;
        Ok(())
    }
}

/// Checks the frames the other side sends (see `Sealer`): the tag first, then that the
/// sequence number is the next one due. Owned by the session's reader.
pub struct Opener {
    key: Hmac<Sha256>,
    seq: u64,
}

impl Opener {
    /// The message in one sealed frame body (everything after the length).
    pub fn open(&mut self, body: &[u8]) -> Result<Message, WireError> {
        let expected = self.seq;
        if body.len() < SEQ_BYTES + TAG_BYTES {
            return Err(WireError::Forged(format!(
                "frame {expected} is {} bytes, too short to be sealed (injected?)",
                body.len()
            )));
        }
        let (sealed, given) = body.split_at(body.len() - TAG_BYTES);
        if tag(&self.key, sealed).verify_truncated_left(given).is_err() {
            return Err(WireError::Forged(format!(
                "frame {expected} failed authentication (altered, injected or from another session)"
            )));
        }
        let mut seq = [0u8; SEQ_BYTES];
        seq.copy_from_slice(&sealed[..SEQ_BYTES]);
        let seq = u64::from_be_bytes(seq);
        if seq != expected {
            return Err(WireError::Forged(format!(
                "frame {seq} arrived where frame {expected} was due (replayed, reordered or dropped)"
            )));
        }
        self.seq += 1;
        decode(&sealed[SEQ_BYTES..])
    }

    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        input: &mut R,
    ) -> Result<Message, WireError> {
        let body = read_frame(input, MAX_FRAME).await?;
        self.open(&body)
    }
}

pub fn nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    // The OS random source failing is not something to continue from.
    getrandom::fill(&mut bytes).expect("the OS random source works");
    BASE64.encode(bytes)
}

/// HMAC-SHA256 over a role label and both nonces, keyed by the token. Each side proves with a
/// different label, so a proof cannot be reflected back.
fn mac(token: &[u8], role: &str, first: &str, second: &str) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(token).expect("HMAC takes any key length");
    for part in [role, first, second] {
        mac.update(part.as_bytes());
        mac.update(b"\0");
    }
    mac
}

pub fn proof(token: &[u8], role: &str, first: &str, second: &str) -> String {
    BASE64.encode(mac(token, role, first, second).finalize().into_bytes())
}

/// Constant-time check of a proof.
pub fn verify(token: &[u8], role: &str, first: &str, second: &str, given: &str) -> bool {
    BASE64
        .decode(given)
        .is_ok_and(|given| mac(token, role, first, second).verify_slice(&given).is_ok())
}

/// The value deploy/kubernetes/secret.yaml once carried; refused wherever it turns up.
pub const PLACEHOLDER_TOKEN: &str = "REPLACE-WITH-32-RANDOM-BYTES-BASE64";
/// The command every token refusal suggests.
pub const MAKE_TOKEN: &str = "head -c 32 /dev/urandom | base64";

/// Why a token is too weak to stand between a stranger and the swarm, or `None`.
///
/// A rough check against tokens nobody chose at random, not an entropy proof: the shipped
/// placeholder, fewer than 16 bytes, fewer than 16 distinct bytes (in the text and, for
/// base64 text, in what it decodes to), or a run of 8 repeated or consecutive bytes
/// (`aaaaaaaa`, `12345678`). 32 random bytes in base64 pass with overwhelming probability.
pub fn weak_token(token: &[u8]) -> Option<String> {
    if token.is_empty() {
        return Some("is empty".into());
    }
    if token
        .windows(b"REPLACE-WITH".len())
        .any(|w| w.eq_ignore_ascii_case(b"REPLACE-WITH"))
    {
        return Some("is the shipped placeholder, which anyone can read".into());
    }
    if token.len() < 16 {
        return Some(format!("has {} bytes; use at least 16", token.len()));
    }
    let distinct = |bytes: &[u8]| {
        let mut seen = [false; 256];
        bytes.iter().for_each(|b| seen[usize::from(*b)] = true);
        seen.iter().filter(|s| **s).count()
    };
    let decoded = BASE64.decode(token).ok().filter(|d| d.len() >= 16);
    let most = distinct(token).max(decoded.as_deref().map_or(0, distinct));
    if most < 16 {
        return Some(format!(
            "has only {most} distinct byte values; a random token has many more"
        ));
    }
    let mut run = 1;
    for w in token.windows(3) {
        let (a, b, c) = (i16::from(w[0]), i16::from(w[1]), i16::from(w[2]));
        let step = b - a;
        if step.abs() <= 1 && c - b == step {
            run += 1;
            if run + 1 >= 8 {
                return Some(format!(
                    "has a run of 8 repeated or consecutive bytes ({:?}...)",
                    String::from_utf8_lossy(&w[..2])
                ));
            }
        } else {
            run = 1;
        }
    }
    None
}

/// Reads a token file (whitespace around it trimmed) and refuses a weak token (`weak_token`).
pub fn read_token(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let token = text.trim_ascii().to_vec();
    if let Some(why) = weak_token(&token) {
        return Err(format!(
            "--token-file {}: the token {why}; make a random one with `{MAKE_TOKEN} > {}` and give the same file to the coordinator and every agent",
            path.display(),
            path.display()
        ));
    }
    Ok(token)
}

fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serialising our own in-range histogram into a Vec cannot fail.
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .expect("histogram serialises");
    BASE64.encode(bytes)
}

/// HdrHistogram's V2 cookies (plain and deflate-compressed), and the plain header's size.
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9304 | 0x10;
const V2_HEADER: usize = 40;

/// The largest V2 payload a histogram of our bounds can have: every count a 9-byte varint.
fn max_payload() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| crate::metrics::new_histogram().distinct_values() * 9)
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The plain V2 bytes of a V2 or V2-deflate histogram, checked before HdrHistogram's decoder
/// sees them: that decoder trusts the header and reserves (and zeroes) the announced payload
/// length, so 40 bytes announcing 4 GiB cost 4 GiB and seconds; and a deflate stream may
/// expand without bound. Only our bounds and payloads that fit them get through.
fn checked_v2(bytes: Vec<u8>) -> Result<Vec<u8>, WireError> {
    let malformed = |what: String| WireError::Malformed(format!("histogram {what}"));
    let plain = match be_u32(&bytes, 0) {
        Some(V2_COOKIE) => bytes,
        Some(V2_DEFLATE_COOKIE) => {
            use std::io::Read as _;
            let len = be_u32(&bytes, 4).ok_or_else(|| malformed("is truncated".into()))?;
            let end = bytes.len().min(8usize.saturating_add(len as usize));
            let limit = (V2_HEADER + max_payload()) as u64;
            let mut plain = Vec::new();
            flate2::read::ZlibDecoder::new(&bytes[8..end])
                .take(limit + 1)
                .read_to_end(&mut plain)
                .map_err(|e| malformed(format!("does not inflate: {e}")))?;
            if plain.len() as u64 > limit {
                return Err(malformed(format!("inflates past {limit} bytes")));
            }
            plain
        }
        _ => return Err(malformed("is not HdrHistogram V2".into())),
    };
    let header = (|| {
        Some((
            be_u32(&plain, 0)?,
            be_u32(&plain, 4)? as usize,
            be_u32(&plain, 12)?,
            be_u64(&plain, 16)?,
            be_u64(&plain, 24)?,
        ))
    })();
    let Some((cookie, payload, digits, low, high)) = header else {
        return Err(malformed("header is truncated".into()));
    };
    if cookie != V2_COOKIE {
        return Err(malformed("is not HdrHistogram V2".into()));
    }
    if (low, high, digits) != (LOWEST_US, HIGHEST_US, u32::from(SIGFIGS)) {
        return Err(malformed(format!(
            "bounds {low}..{high} at {digits} digits differ from {LOWEST_US}..{HIGHEST_US} at {SIGFIGS}"
        )));
    }
    if payload > plain.len() - V2_HEADER || payload > max_payload() {
        return Err(malformed(format!(
            "announces {payload} bytes of counts but carries {}",
            plain.len() - V2_HEADER
        )));
    }
    Ok(plain)
}

/// One V2(-deflate) histogram as it arrives in a report; anything but our bounds is refused.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, WireError> {
    let bytes = BASE64
        .decode(text)
        .map_err(|e| WireError::Malformed(format!("histogram is not base64: {e}")))?;
    let plain = checked_v2(bytes)?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &plain[..])
        .map_err(|e| WireError::Malformed(format!("histogram does not decode: {e:?}")))?;
    if h.low() != LOWEST_US || h.high() != HIGHEST_US || h.sigfig() != SIGFIGS {
        return Err(WireError::Malformed(format!(
            "histogram bounds {}..{} at {} digits differ from {LOWEST_US}..{HIGHEST_US} at {SIGFIGS}",
            h.low(),
            h.high(),
            h.sigfig()
        )));
    }
    Ok(h)
}

impl WireInterval {
    pub fn encode(
        seq: u64,
        last: bool,
        open: u64,
        open_established: u64,
        data: &IntervalData,
    ) -> WireInterval {
        WireInterval {
            seq,
            last,
            open,
            open_established,
            totals: data.totals,
            per_source: data.per_source.clone(),
            per_target: data.per_target.clone(),
            histograms: data.latency.hists.iter().map(encode_histogram).collect(),
            first_attempt_us: data.first_attempt_us,
            last_established_us: data.last_established_us,
            ramp_connected: data.ramp_connected,
            last_ramp_connected_us: data.last_ramp_connected_us,
            reconnect_attempts: data.reconnect_attempts.to_vec(),
            details: data
                .details
                .iter()
                .map(|((kind, detail), n)| (kind.name().to_string(), *detail, *n))
                .collect(),
        }
    }

    pub fn decode(&self) -> Result<IntervalData, WireError> {
        let expected = crate::metrics::Latency::ALL.len();
        if self.histograms.len() != expected {
            return Err(WireError::Malformed(format!(
                "{} histograms instead of {expected}",
                self.histograms.len()
            )));
        }
        let mut latency = LatencySet::default();
        for (slot, text) in latency.hists.iter_mut().zip(&self.histograms) {
            *slot = decode_histogram(text)?;
        }
        Ok(IntervalData {
            totals: self.totals,
            per_source: self.per_source.clone(),
            per_target: self.per_target.clone(),
            latency,
            first_attempt_us: self.first_attempt_us,
            last_established_us: self.last_established_us,
            ramp_connected: self.ramp_connected,
            last_ramp_connected_us: self.last_ramp_connected_us,
            reconnect_attempts: {
                let mut buckets = [0u64; crate::metrics::RECONNECT_BUCKETS];
                for (slot, n) in buckets.iter_mut().zip(&self.reconnect_attempts) {
                    *slot = *n;
                }
                buckets
            },
            // A kind this build does not know is dropped here; its count is in `totals`.
            details: self
                .details
                .iter()
                .filter_map(|(name, detail, n)| {
                    ErrorKind::from_name(name).map(|kind| ((kind, *detail), *n))
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests;
