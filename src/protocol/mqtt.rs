//! MQTT 3.1.1 and 5 over TCP: CONNECT / CONNACK with a client id unique across the swarm,
//! PINGREQ / PINGRESP as the heartbeat, an optional SUBSCRIBE to a per-client topic and to a
//! fan-out topic, PUBLISH packets received (and timed when stamped), the fan-out publisher, a
//! refusing CONNACK classified as `mqtt_connack_refused` with its reason code, and the sink's
//! minimal broker side (CONNACK, PINGRESP, SUBACK, and PUBLISH routed to the subscribers of
//! its exact topic).
//!
//! Packets are encoded and decoded by the `mqttbytes` modules that rumqttc ships (`v4` for
//! 3.1.1, `v5`), not by a hand-written codec: they cover both protocol levels with one API,
//! are the codec of a client and a broker (rumqttd) used in production, and are maintained
//! with rumqttc (0.25, 2025), unlike the standalone `mqttbytes` crate (last release 2021) or
//! `mqttrs` (3.1.1 only). rumqttc is built without default features: only its codec and its
//! small tokio-based dependencies come in; its event loop is never used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{Event, Failure};
use crate::metrics::{ErrorDetail, ErrorKind};
use crate::profile::protocol::{MqttOptions, MqttVersion};

/// Largest packet either side accepts: MQTT here carries pings and small control packets.
const MAX_PACKET: usize = 64 * 1024;

/// A run's MQTT client settings.
pub struct Client {
    options: MqttOptions,
    /// This agent's index in the swarm (0 for a single process), part of every client id.
    agent: usize,
}

impl Client {
    pub fn new(options: &MqttOptions) -> Client {
        Client {
            options: options.clone(),
            agent: 0,
        }
    }

    /// Set by a swarm agent from its plan, so that ids stay unique across agents.
    pub fn set_agent(&mut self, agent: usize) {
        self.agent = agent;
    }

    /// `{prefix}-{agent}-{slot}`: slots are unique within an agent, agents within a swarm.
    pub fn client_id(&self, slot: u64) -> String {
        format!("{}-{}-{slot}", self.options.client_id_prefix, self.agent)
    }

    /// The fan-out probe's settings, if the profile asks for it.
    pub fn fanout(&self) -> Option<&crate::profile::protocol::Fanout> {
        self.options.fanout.as_ref()
    }

    pub fn keep_alive_s(&self) -> u16 {
        self.options.keep_alive_s
    }

    /// Fan-out topic `k` of this agent's publisher: `{topic_prefix}/fanout/{agent}/{k}`.
    pub fn fanout_topic(&self, k: u32) -> String {
        format!("{}/fanout/{}/{k}", self.options.topic_prefix, self.agent)
    }

    /// What slot `slot` subscribes to: its own topic if asked, and its fan-out topic.
    fn topics(&self, slot: u64, client_id: &str) -> Vec<String> {
        let mut topics = Vec::new();
        if self.options.subscribe {
            topics.push(format!("{}/{client_id}", self.options.topic_prefix));
        }
        if let Some(fanout) = &self.options.fanout {
            topics.push(self.fanout_topic((slot % u64::from(fanout.topics)) as u32));
        }
        topics
    }

    /// The fan-out publisher's connection: CONNECT as `{prefix}-{agent}-pub`, no subscription.
    pub async fn publisher(&self, tcp: TcpStream) -> Result<Session, Failure> {
        let client_id = format!("{}-{}-pub", self.options.client_id_prefix, self.agent);
        // Small messages at a steady rate: Nagle's algorithm would hold them back.
        let _ = tcp.set_nodelay(true);
        self.connect(tcp, client_id).await
    }

    /// CONNECT as `client_id` and its accepting CONNACK.
    async fn connect(&self, mut tcp: TcpStream, client_id: String) -> Result<Session, Failure> {
        let connect = self.connect_packet(client_id)?;
        tcp.write_all(&connect).await.map_err(|e| Failure::io(&e))?;
        let mut session = Session::new(tcp, self.options.version);
        session.connack().await?;
        Ok(session)
    }

    fn connect_packet(&self, client_id: String) -> Result<BytesMut, Failure> {
        let o = &self.options;
        let mut buf = BytesMut::with_capacity(64);
        let written = match o.version {
            MqttVersion::V311 => {
                let login = o
                    .username
                    .as_ref()
                    .map(|u| v4::Login::new(u.clone(), o.password.clone().unwrap_or_default()));
                v4::Packet::Connect(v4::Connect {
                    protocol: rumqttc::mqttbytes::Protocol::V4,
                    keep_alive: o.keep_alive_s,
                    client_id,
                    clean_session: o.clean_session,
                    last_will: None,
                    login,
                })
                .write(&mut buf, MAX_PACKET)
                .is_ok()
            }
            MqttVersion::V5 => {
                let login = o
                    .username
                    .as_ref()
                    .map(|u| v5::Login::new(u.clone(), o.password.clone().unwrap_or_default()));
                v5::Packet::Connect(
                    v5::Connect {
                        keep_alive: o.keep_alive_s,
                        client_id,
                        clean_start: o.clean_session,
                        properties: None,
                    },
                    None,
                    login,
                )
                .write(&mut buf, None)
                .is_ok()
            }
        };
        if !written {
            return Err(Failure::kind(ErrorKind::Other));
        }
        Ok(buf)
    }

    /// CONNECT, CONNACK, and SUBSCRIBE / SUBACK if asked for.
    pub async fn handshake(&self, tcp: TcpStream, slot: u64) -> Result<Session, Failure> {
        let client_id = self.client_id(slot);
        let topics = self.topics(slot, &client_id);
        let mut session = self.connect(tcp, client_id).await?;
        if topics.is_empty() {
            return Ok(session);
        }
        let mut buf = BytesMut::with_capacity(64);
        // Packet id 0 is not allowed; this is the connection's only SUBSCRIBE.
        let written = match session.version {
            MqttVersion::V311 => {
                let filters = topics
                    .into_iter()
                    .map(|t| v4::SubscribeFilter::new(t, rumqttc::mqttbytes::QoS::AtMostOnce));
                let mut subscribe = v4::Subscribe::new_many(filters);
                subscribe.pkid = 1;
                v4::Packet::Subscribe(subscribe)
                    .write(&mut buf, MAX_PACKET)
                    .is_ok()
            }
            MqttVersion::V5 => {
                let filters = topics
                    .into_iter()
                    .map(|t| v5::Filter::new(t, rumqttc::v5::mqttbytes::QoS::AtMostOnce));
                let mut subscribe = v5::Subscribe::new_many(filters, None);
                subscribe.pkid = 1;
                v5::Packet::Subscribe(subscribe)
                    .write(&mut buf, None)
                    .is_ok()
            }
        };
        if !written {
            return Err(Failure::kind(ErrorKind::Other));
        }
        session
            .tcp
            .write_all(&buf)
            .await
            .map_err(|e| Failure::io(&e))?;
        loop {
            match session.next().await? {
                Incoming::SubAck { granted: true } => break,
                // A broker refusing the subscription is refusing this client's session.
                Incoming::SubAck { granted: false } => {
                    return Err(Failure {
                        kind: ErrorKind::MqttConnackRefused,
                        detail: Some(ErrorDetail::ReasonCode(0x80)),
                    });
                }
                Incoming::Disconnect => return Err(Failure::kind(ErrorKind::ClosedByPeer)),
                Incoming::Publish(age) => session.arrivals.push(age),
                _ => {}
            }
        }
        Ok(session)
    }
}

/// What the client side cares about in a received packet.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    /// The CONNACK's return code (3.1.1) or reason code (5); 0 accepts.
    ConnAck(u8),
    PingResp,
    SubAck {
        granted: bool,
    },
    Disconnect,
    /// A PUBLISH: its age in microseconds when it carried a send-time stamp.
    Publish(Option<u64>),
    /// Anything else a held client just lets pass.
    Other,
}

/// An established MQTT connection.
pub struct Session {
    tcp: TcpStream,
    /// Bytes read but not yet decoded. Kept across calls, so cancelling a read loses nothing.
    buf: BytesMut,
    version: MqttVersion,
    /// PUBLISH packets that arrived while a handshake or heartbeat waited (see
    /// `protocol::Session::take_arrivals`).
    pub(super) arrivals: super::Arrivals,
}

impl Session {
    fn new(tcp: TcpStream, version: MqttVersion) -> Session {
        Session {
            tcp,
            buf: BytesMut::with_capacity(256),
            version,
            arrivals: super::Arrivals::default(),
        }
    }

    /// The first packet a broker sends must be the CONNACK.
    async fn connack(&mut self) -> Result<(), Failure> {
        match self.next().await? {
            Incoming::ConnAck(0) => Ok(()),
            Incoming::ConnAck(code) => Err(Failure {
                kind: ErrorKind::MqttConnackRefused,
                detail: Some(ErrorDetail::ReasonCode(code)),
            }),
            Incoming::Disconnect => Err(Failure::kind(ErrorKind::ClosedByPeer)),
            _ => Err(Failure::kind(ErrorKind::Other)),
        }
    }

    /// Decodes the next packet, reading more as needed.
    async fn next(&mut self) -> Result<Incoming, Failure> {
        loop {
            if let Some(packet) = decode(self.version, &mut self.buf)? {
                return Ok(packet);
            }
            if self.buf.capacity() - self.buf.len() < 64 {
                self.buf.reserve(256);
            }
            match self.tcp.read_buf(&mut self.buf).await {
                Ok(0) => return Err(Failure::kind(ErrorKind::ClosedByPeer)),
                Ok(_) => {}
                Err(e) => return Err(Failure::io(&e)),
            }
        }
    }

    /// PINGREQ, answered by PINGRESP.
    pub async fn heartbeat(&mut self) -> Result<(), Failure> {
        self.ping().await?;
        loop {
            match self.next().await? {
                Incoming::PingResp => return Ok(()),
                Incoming::Disconnect => return Err(Failure::kind(ErrorKind::ClosedByPeer)),
                Incoming::Publish(age) => self.arrivals.push(age),
                _ => {}
            }
        }
    }

    /// The next PUBLISH, or the end of the connection.
    pub async fn next_event(&mut self) -> Event {
        loop {
            match self.next().await {
                Err(failure) => return Event::Closed(failure),
                Ok(Incoming::Disconnect) => {
                    return Event::Closed(Failure::kind(ErrorKind::ClosedByPeer));
                }
                Ok(Incoming::Publish(age)) => return Event::Message(age),
                Ok(_) => {}
            }
        }
    }

    /// A QoS 0 PUBLISH of `payload` to `topic`.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), Failure> {
        let packet = encode_publish(self.version, topic, payload)
            .ok_or_else(|| Failure::kind(ErrorKind::Other))?;
        self.tcp
            .write_all(&packet)
            .await
            .map_err(|e| Failure::io(&e))
    }

    /// A PINGREQ (two fixed bytes at both protocol levels), its answer left to the reader:
    /// `heartbeat` waits for it, an idle publisher sends it to keep its session alive.
    pub async fn ping(&mut self) -> Result<(), Failure> {
        self.tcp
            .write_all(&[0xC0, 0x00])
            .await
            .map_err(|e| Failure::io(&e))
    }
}

/// One packet off the front of `buf`, `None` if it is not complete yet.
fn decode(version: MqttVersion, buf: &mut BytesMut) -> Result<Option<Incoming>, Failure> {
    let malformed = || Failure::kind(ErrorKind::Other);
    match version {
        MqttVersion::V311 => match v4::Packet::read(buf, MAX_PACKET) {
            Ok(v4::Packet::ConnAck(ack)) => Ok(Some(Incoming::ConnAck(ack.code as u8))),
            Ok(v4::Packet::PingResp) => Ok(Some(Incoming::PingResp)),
            Ok(v4::Packet::SubAck(ack)) => Ok(Some(Incoming::SubAck {
                granted: ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, v4::SubscribeReasonCode::Success(_))),
            })),
            Ok(v4::Packet::Disconnect) => Ok(Some(Incoming::Disconnect)),
            Ok(v4::Packet::Publish(p)) => {
                Ok(Some(Incoming::Publish(super::stamp_age_us(&p.payload))))
            }
            Ok(_) => Ok(Some(Incoming::Other)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            // A return code the codec does not know is still a refusal, and says which.
            Err(rumqttc::mqttbytes::Error::InvalidConnectReturnCode(code)) => {
                Ok(Some(Incoming::ConnAck(code)))
            }
            Err(_) => Err(malformed()),
        },
        MqttVersion::V5 => match v5::Packet::read(buf, Some(MAX_PACKET as u32)) {
            Ok(v5::Packet::ConnAck(ack)) => Ok(Some(Incoming::ConnAck(v5_code(ack.code)))),
            Ok(v5::Packet::PingResp(_)) => Ok(Some(Incoming::PingResp)),
            Ok(v5::Packet::SubAck(ack)) => Ok(Some(Incoming::SubAck {
                granted: ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, v5::SubscribeReasonCode::Success(_))),
            })),
            Ok(v5::Packet::Disconnect(_)) => Ok(Some(Incoming::Disconnect)),
            Ok(v5::Packet::Publish(p)) => {
                Ok(Some(Incoming::Publish(super::stamp_age_us(&p.payload))))
            }
            Ok(_) => Ok(Some(Incoming::Other)),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::v5::mqttbytes::Error::InvalidConnectReturnCode(code)) => {
                Ok(Some(Incoming::ConnAck(code)))
            }
            Err(_) => Err(malformed()),
        },
    }
}

/// The MQTT 5 reason code on the wire (the codec keeps it only as an enum).
fn v5_code(code: v5::ConnectReturnCode) -> u8 {
    use v5::ConnectReturnCode as C;
    match code {
        C::Success => 0,
        // 3.1.1 names the codec shares between levels; a v5 broker does not send them.
        C::RefusedProtocolVersion => 0x84,
        C::BadClientId => 0x85,
        C::ServiceUnavailable => 0x88,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}

/// The sink's topics: who subscribed to what, shared by every connection of the process.
/// Topics match exactly (no wildcards); delivery is QoS 0, so a subscriber whose queue is
/// full loses the message, as a broker may drop QoS 0 traffic for a slow client.
#[derive(Default)]
pub struct Broker {
    /// Per topic, its subscribers by connection: a connection leaves in O(1) however many
    /// share its topic.
    topics: Mutex<HashMap<String, HashMap<u64, Subscriber>>>,
    next_id: AtomicU64,
}

struct Subscriber {
    version: MqttVersion,
    outbox: mpsc::Sender<Bytes>,
}

/// Packets queued for one subscriber before further messages to it are dropped.
const OUTBOX: usize = 64;
/// Topics one connection may subscribe to; filters past it get a failure code in the SUBACK,
/// so a client cannot grow the sink's topic table without bound.
const MAX_TOPICS_PER_CONNECTION: usize = 16;

impl Broker {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, Subscriber>>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `payload` to every subscriber of `topic`, encoded at each one's level; returns
    /// how many it reached.
    fn publish(&self, topic: &str, payload: &Bytes) -> usize {
        let mut topics = self.topics();
        let Some(subscribers) = topics.get_mut(topic) else {
            return 0;
        };
        let mut encoded: [Option<Bytes>; 2] = [None, None];
        let mut reached = 0;
        subscribers.retain(|_, s| {
            let slot = &mut encoded[usize::from(s.version == MqttVersion::V5)];
            if slot.is_none() {
                *slot = encode_publish(s.version, topic, payload);
            }
            let Some(packet) = slot.clone() else {
                return true;
            };
            match s.outbox.try_send(packet) {
                Ok(()) => {
                    reached += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => true,
                // Its connection is gone.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if subscribers.is_empty() {
            topics.remove(topic);
        }
        reached
    }

    fn leave(&self, connection: u64, subscribed: &[String]) {
        let mut topics = self.topics();
        for topic in subscribed {
            if let Some(subscribers) = topics.get_mut(topic) {
                subscribers.remove(&connection);
                if subscribers.is_empty() {
                    topics.remove(topic);
                }
            }
        }
    }
}

/// A QoS 0 PUBLISH packet at `version`; `None` if the codec refuses it (too large).
fn encode_publish(version: MqttVersion, topic: &str, payload: &[u8]) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(payload.len() + topic.len() + 16);
    let written = match version {
        MqttVersion::V311 => v4::Packet::Publish(v4::Publish::new(
            topic,
            rumqttc::mqttbytes::QoS::AtMostOnce,
            payload,
        ))
        .write(&mut out, MAX_PACKET)
        .is_ok(),
        MqttVersion::V5 => v5::Packet::Publish(v5::Publish::new(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            Bytes::copy_from_slice(payload),
            None,
        ))
        .write(&mut out, None)
        .is_ok(),
    };
    written.then(|| out.freeze())
}

/// One connection's place in the broker, given up however the connection ends.
struct Membership<'a> {
    broker: &'a Broker,
    connection: u64,
    subscribed: Vec<String>,
    /// Created with the first SUBSCRIBE: connections that never subscribe pay nothing.
    inbox: Option<mpsc::Receiver<Bytes>>,
    outbox: Option<mpsc::Sender<Bytes>>,
}

impl<'a> Membership<'a> {
    fn new(broker: &'a Broker) -> Membership<'a> {
        Membership {
            broker,
            connection: broker.next_id.fetch_add(1, Ordering::Relaxed),
            subscribed: Vec::new(),
            inbox: None,
            outbox: None,
        }
    }

    fn subscribe(&mut self, version: MqttVersion, topics: Vec<String>) {
        let outbox = match &self.outbox {
            Some(outbox) => outbox.clone(),
            None => {
                let (tx, rx) = mpsc::channel(OUTBOX);
                self.inbox = Some(rx);
                self.outbox = Some(tx.clone());
                tx
            }
        };
        let mut all = self.broker.topics();
        for topic in topics {
            if self.subscribed.contains(&topic) {
                continue;
            }
            all.entry(topic.clone()).or_default().insert(
                self.connection,
                Subscriber {
                    version,
                    outbox: outbox.clone(),
                },
            );
            self.subscribed.push(topic);
        }
    }

    /// How many more topics this connection may subscribe to.
    fn room(&self) -> usize {
        MAX_TOPICS_PER_CONNECTION.saturating_sub(self.subscribed.len())
    }

    async fn delivery(&mut self) -> Option<Bytes> {
        match &mut self.inbox {
            Some(inbox) => inbox.recv().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        if !self.subscribed.is_empty() {
            self.broker.leave(self.connection, &self.subscribed);
        }
    }
}

/// The sink's broker side: accepts any CONNECT at the level it came in, answers PINGREQ and
/// SUBSCRIBE, routes PUBLISH to the subscribers of its topic, and ends on DISCONNECT, EOF or
/// anything it cannot decode. `bytes` counts bytes received.
pub async fn serve(mut tcp: TcpStream, broker: &Broker, bytes: &AtomicU64) {
    let mut buf = BytesMut::with_capacity(256);
    let mut out = BytesMut::with_capacity(64);
    let mut version = None;
    let mut member = Membership::new(broker);
    loop {
        let progressed = match version {
            None => match accept_connect(&mut buf, &mut out) {
                Ok(Some(v)) => {
                    version = Some(v);
                    true
                }
                Ok(None) => false,
                Err(()) => return,
            },
            Some(v) => match answer(v, &mut buf, &mut out, member.room()) {
                Ok(Some(Inbound::Answered)) => true,
                Ok(Some(Inbound::Subscribed(topics))) => {
                    member.subscribe(v, topics);
                    true
                }
                Ok(Some(Inbound::Published { topic, payload })) => {
                    broker.publish(&topic, &payload);
                    true
                }
                Ok(None) => false,
                Err(()) => return,
            },
        };
        if progressed {
            if !out.is_empty() && tcp.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
            continue;
        }
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(256);
        }
        tokio::select! {
            read = tcp.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            },
            Some(packet) = member.delivery() => {
                if tcp.write_all(&packet).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The protocol level of a CONNECT at the front of `buf`: after the fixed header (a type byte
/// and a 1 to 4 byte remaining length) come the protocol name "MQTT" (2 + 4 bytes) and the
/// level. `None` until those bytes are in.
fn connect_level(buf: &[u8]) -> Option<u8> {
    let length_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    buf.get(1 + length_bytes + 6).copied()
}

/// Decodes a CONNECT of either level and writes its accepting CONNACK.
fn accept_connect(buf: &mut BytesMut, out: &mut BytesMut) -> Result<Option<MqttVersion>, ()> {
    // The v4 decoder takes a level-5 CONNECT too (reading its properties as payload), so the
    // level byte decides.
    match connect_level(buf) {
        None => Ok(None),
        Some(3 | 4) => match v4::Packet::read(buf, MAX_PACKET) {
            Ok(v4::Packet::Connect(_)) => {
                v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, false))
                    .write(out, MAX_PACKET)
                    .map_err(|_| ())?;
                Ok(Some(MqttVersion::V311))
            }
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            _ => Err(()),
        },
        Some(5) => accept_v5(buf, out),
        Some(_) => Err(()),
    }
}

fn accept_v5(buf: &mut BytesMut, out: &mut BytesMut) -> Result<Option<MqttVersion>, ()> {
    match v5::Packet::read(buf, Some(MAX_PACKET as u32)) {
        Ok(v5::Packet::Connect(..)) => {
            v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code: v5::ConnectReturnCode::Success,
                properties: None,
            })
            .write(out, None)
            .map_err(|_| ())?;
            Ok(Some(MqttVersion::V5))
        }
        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        _ => Err(()),
    }
}

/// What an established client's packet asked of the broker.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    /// Answered in `out`, or nothing to do.
    Answered,
    /// SUBACK written to `out`; these topics are to be added.
    Subscribed(Vec<String>),
    Published {
        topic: String,
        payload: Bytes,
    },
}

/// Handles one packet of an established client; `Ok(None)` until one is complete. A SUBSCRIBE
/// is granted for its first `room` filters and refused for the rest.
fn answer(
    version: MqttVersion,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    room: usize,
) -> Result<Option<Inbound>, ()> {
    match version {
        MqttVersion::V311 => match v4::Packet::read(buf, MAX_PACKET) {
            Ok(v4::Packet::PingReq) => v4::Packet::PingResp
                .write(out, MAX_PACKET)
                .map(|_| Some(Inbound::Answered))
                .map_err(|_| ()),
            Ok(v4::Packet::Subscribe(sub)) => {
                let codes = (0..sub.filters.len())
                    .map(|i| {
                        if i < room {
                            v4::SubscribeReasonCode::Success(rumqttc::mqttbytes::QoS::AtMostOnce)
                        } else {
                            v4::SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                v4::Packet::SubAck(v4::SubAck::new(sub.pkid, codes))
                    .write(out, MAX_PACKET)
                    .map_err(|_| ())?;
                Ok(Some(Inbound::Subscribed(
                    sub.filters.into_iter().take(room).map(|f| f.path).collect(),
                )))
            }
            Ok(v4::Packet::Publish(p)) => Ok(Some(Inbound::Published {
                topic: p.topic,
                payload: p.payload,
            })),
            Ok(v4::Packet::Disconnect) => Err(()),
            Ok(_) => Ok(Some(Inbound::Answered)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(_) => Err(()),
        },
        MqttVersion::V5 => match v5::Packet::read(buf, Some(MAX_PACKET as u32)) {
            Ok(v5::Packet::PingReq(_)) => v5::Packet::PingResp(v5::PingResp)
                .write(out, None)
                .map(|_| Some(Inbound::Answered))
                .map_err(|_| ()),
            Ok(v5::Packet::Subscribe(sub)) => {
                let codes = (0..sub.filters.len())
                    .map(|i| {
                        if i < room {
                            v5::SubscribeReasonCode::Success(
                                rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                            )
                        } else {
                            v5::SubscribeReasonCode::QuotaExceeded
                        }
                    })
                    .collect();
                v5::Packet::SubAck(v5::SubAck {
                    pkid: sub.pkid,
                    return_codes: codes,
                    properties: None,
                })
                .write(out, None)
                .map_err(|_| ())?;
                Ok(Some(Inbound::Subscribed(
                    sub.filters.into_iter().take(room).map(|f| f.path).collect(),
                )))
            }
            Ok(v5::Packet::Publish(p)) => match String::from_utf8(p.topic.to_vec()) {
                Ok(topic) => Ok(Some(Inbound::Published {
                    topic,
                    payload: p.payload,
                })),
                Err(_) => Err(()),
            },
            Ok(v5::Packet::Disconnect(_)) => Err(()),
            Ok(_) => Ok(Some(Inbound::Answered)),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(_) => Err(()),
        },
    }
}

#[cfg(test)]
mod tests;
