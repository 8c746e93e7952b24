//! MQTT 3.1.1 and 5 over TCP: CONNECT / CONNACK with a client id unique across the swarm,
//! PINGREQ / PINGRESP as the heartbeat, an optional SUBSCRIBE to a per-client topic, a refusing
//! CONNACK classified as `mqtt_connack_refused` with its reason code, and the sink's minimal
//! broker side (CONNACK, PINGRESP, SUBACK).
//!
//! Packets are encoded and decoded by the `mqttbytes` modules that rumqttc ships (`v4` for
//! 3.1.1, `v5`), not by a hand-written codec: they cover both protocol levels with one API,
//! are the codec of a client and a broker (rumqttd) used in production, and are maintained
//! with rumqttc (0.25, 2025), unlike the standalone `mqttbytes` crate (last release 2021) or
//! `mqttrs` (3.1.1 only). rumqttc is built without default features: only its codec and its
//! small tokio-based dependencies come in; its event loop is never used.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Failure;
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
    pub async fn handshake(&self, mut tcp: TcpStream, slot: u64) -> Result<Session, Failure> {
        let client_id = self.client_id(slot);
        let topic = self
            .options
            .subscribe
            .then(|| format!("{}/{client_id}", self.options.topic_prefix));
        let connect = self.connect_packet(client_id)?;
        tcp.write_all(&connect).await.map_err(|e| Failure::io(&e))?;
        let mut session = Session {
            tcp,
            buf: BytesMut::with_capacity(256),
            version: self.options.version,
        };
        // The first packet a broker sends must be the CONNACK.
        match session.next().await? {
            Incoming::ConnAck(0) => {}
            Incoming::ConnAck(code) => {
                return Err(Failure {
                    kind: ErrorKind::MqttConnackRefused,
                    detail: Some(ErrorDetail::ReasonCode(code)),
                });
            }
            Incoming::Disconnect => return Err(Failure::kind(ErrorKind::ClosedByPeer)),
            _ => return Err(Failure::kind(ErrorKind::Other)),
        }
        if let Some(topic) = topic {
            let mut buf = BytesMut::with_capacity(64);
            let written = match session.version {
                // Packet id 0 is not allowed; this is the connection's only SUBSCRIBE.
                MqttVersion::V311 => {
                    let mut subscribe =
                        v4::Subscribe::new(topic, rumqttc::mqttbytes::QoS::AtMostOnce);
                    subscribe.pkid = 1;
                    v4::Packet::Subscribe(subscribe)
                        .write(&mut buf, MAX_PACKET)
                        .is_ok()
                }
                MqttVersion::V5 => {
                    let mut subscribe = v5::Subscribe::new(
                        v5::Filter::new(topic, rumqttc::v5::mqttbytes::QoS::AtMostOnce),
                        None,
                    );
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
                    _ => {}
                }
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
    /// PUBLISH and anything else a held client just lets pass.
    Other,
}

/// An established MQTT connection.
pub struct Session {
    tcp: TcpStream,
    /// Bytes read but not yet decoded. Kept across calls, so cancelling a read loses nothing.
    buf: BytesMut,
    version: MqttVersion,
}

impl Session {
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
        // PINGREQ is two fixed bytes at both protocol levels.
        self.tcp
            .write_all(&[0xC0, 0x00])
            .await
            .map_err(|e| Failure::io(&e))?;
        loop {
            match self.next().await? {
                Incoming::PingResp => return Ok(()),
                Incoming::Disconnect => return Err(Failure::kind(ErrorKind::ClosedByPeer)),
                _ => {}
            }
        }
    }

    pub async fn closed(&mut self) -> Failure {
        loop {
            match self.next().await {
                Err(failure) => return failure,
                Ok(Incoming::Disconnect) => return Failure::kind(ErrorKind::ClosedByPeer),
                Ok(_) => {}
            }
        }
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

/// The sink's broker side: accepts any CONNECT at the level it came in, answers PINGREQ and
/// SUBSCRIBE, drops PUBLISH, and ends on DISCONNECT, EOF or anything it cannot decode.
/// `bytes` counts bytes received.
pub async fn serve(mut tcp: TcpStream, bytes: &AtomicU64) {
    let mut buf = BytesMut::with_capacity(256);
    let mut out = BytesMut::with_capacity(64);
    let mut version = None;
    loop {
        let reply = match version {
            None => match accept_connect(&mut buf, &mut out) {
                Ok(Some(v)) => {
                    version = Some(v);
                    true
                }
                Ok(None) => false,
                Err(()) => return,
            },
            Some(v) => match answer(v, &mut buf, &mut out) {
                Ok(Some(())) => true,
                Ok(None) => false,
                Err(()) => return,
            },
        };
        if reply {
            if !out.is_empty() && tcp.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
            continue;
        }
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(256);
        }
        match tcp.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
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

/// Answers one packet of an established client; `Ok(None)` until one is complete.
fn answer(version: MqttVersion, buf: &mut BytesMut, out: &mut BytesMut) -> Result<Option<()>, ()> {
    match version {
        MqttVersion::V311 => match v4::Packet::read(buf, MAX_PACKET) {
            Ok(v4::Packet::PingReq) => v4::Packet::PingResp
                .write(out, MAX_PACKET)
                .map(|_| Some(()))
                .map_err(|_| ()),
            Ok(v4::Packet::Subscribe(sub)) => {
                let codes = sub
                    .filters
                    .iter()
                    .map(|_| v4::SubscribeReasonCode::Success(rumqttc::mqttbytes::QoS::AtMostOnce))
                    .collect();
                v4::Packet::SubAck(v4::SubAck::new(sub.pkid, codes))
                    .write(out, MAX_PACKET)
                    .map(|_| Some(()))
                    .map_err(|_| ())
            }
            Ok(v4::Packet::Disconnect) => Err(()),
            Ok(_) => Ok(Some(())),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(_) => Err(()),
        },
        MqttVersion::V5 => match v5::Packet::read(buf, Some(MAX_PACKET as u32)) {
            Ok(v5::Packet::PingReq(_)) => v5::Packet::PingResp(v5::PingResp)
                .write(out, None)
                .map(|_| Some(()))
                .map_err(|_| ()),
            Ok(v5::Packet::Subscribe(sub)) => {
                let codes = sub
                    .filters
                    .iter()
                    .map(|_| {
                        v5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtMostOnce)
                    })
                    .collect();
                v5::Packet::SubAck(v5::SubAck {
                    pkid: sub.pkid,
                    return_codes: codes,
                    properties: None,
                })
                .write(out, None)
                .map(|_| Some(()))
                .map_err(|_| ())
            }
            Ok(v5::Packet::Disconnect(_)) => Err(()),
            Ok(_) => Ok(Some(())),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(_) => Err(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(version: MqttVersion) -> BytesMut {
        let client = Client::new(&MqttOptions {
            version,
            client_id_prefix: "x".into(),
            clean_session: true,
            keep_alive_s: 10,
            subscribe: false,
            topic_prefix: "t".into(),
            username: None,
            password: None,
        });
        client.connect_packet(client.client_id(3)).unwrap()
    }

    #[test]
    fn the_sink_answers_each_level_at_its_own_level() {
        for version in [MqttVersion::V311, MqttVersion::V5] {
            let mut buf = connect(version);
            let mut partial = BytesMut::from(&buf[..5]);
            let mut out = BytesMut::new();
            assert_eq!(accept_connect(&mut partial, &mut out), Ok(None));
            assert_eq!(accept_connect(&mut buf, &mut out), Ok(Some(version)));
            assert!(buf.is_empty());
            assert_eq!(
                decode(version, &mut out).unwrap(),
                Some(Incoming::ConnAck(0))
            );
        }
    }

    #[test]
    fn every_v5_connack_code_round_trips_through_the_codec() {
        for wire in [0u8, 0x80, 0x85, 0x86, 0x87, 0x8A, 0x9F] {
            let mut buf = BytesMut::from(&[0x20, 0x03, 0x00, wire, 0x00][..]);
            assert_eq!(
                decode(MqttVersion::V5, &mut buf).unwrap(),
                Some(Incoming::ConnAck(wire))
            );
        }
        let mut buf = BytesMut::from(&[0x20, 0x02, 0x00, 0x05][..]);
        assert_eq!(
            decode(MqttVersion::V311, &mut buf).unwrap(),
            Some(Incoming::ConnAck(5))
        );
        let mut partial = BytesMut::from(&[0x20][..]);
        assert_eq!(decode(MqttVersion::V311, &mut partial).unwrap(), None);
    }
}
