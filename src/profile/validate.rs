//! From the raw JSON shape to a `Profile`: the top-level fields, the target, sources,
//! heartbeat and thresholds here; each phase kind in `phases.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::raw::{RawHeartbeat, RawProfile, RawSources};
use super::sources::{self, PortRange};
use super::threshold::Threshold;
use super::{
    AgentLoss, Heartbeat, MAX_CONNECTIONS, MAX_PAYLOAD_BYTES, NlbLink, Phase, Profile,
    ProfileError, Protocol, SourceSpec, TargetSpec, duration_at, phases, protocol,
};

pub(super) fn validate(raw: RawProfile) -> Result<Profile, ProfileError> {
    if raw.name.trim().is_empty() {
        return Err(ProfileError::at(
            "name",
            "\"\" is empty; give the scenario a name",
        ));
    }
    let target = validate_target(&raw.target)?;
    if raw.connections == 0 || raw.connections > MAX_CONNECTIONS {
        return Err(ProfileError::at(
            "connections",
            format!(
                "{} is out of range; expected 1 to {MAX_CONNECTIONS}",
                raw.connections
            ),
        ));
    }
    let sources = match raw.sources {
        None => SourceSpec::default(),
        Some(raw_sources) => validate_sources(raw_sources)?,
    };
    let heartbeat = raw.heartbeat.map(validate_heartbeat).transpose()?;
    let (protocol, protocol_options) = protocol::validate(
        raw.protocol.as_deref(),
        protocol::RawProtocolOptions {
            tls: raw.tls,
            websocket: raw.websocket,
            mqtt: raw.mqtt,
            http2: raw.http2,
        },
        &target,
        heartbeat.as_ref(),
    )?;
    let connect_timeout = match raw.connect_timeout.as_deref() {
        None => Duration::from_secs(10),
        Some(text) => duration_at("connect_timeout", text)?,
    };
    if raw.phases.is_empty() {
        return Err(ProfileError::at(
            "phases",
            "[] is empty; add at least one phase, e.g. {\"ramp\": {\"rate\": 1000}}",
        ));
    }
    let context = phases::Context {
        connections: raw.connections,
        has_nlb: raw.nlb.is_some(),
    };
    let mut phases = Vec::with_capacity(raw.phases.len());
    for (i, phase) in raw.phases.into_iter().enumerate() {
        phases.push(phases::validate(i, phase, &context)?);
    }
    let thresholds = thresholds(
        &raw.thresholds,
        &phases,
        heartbeat.is_some() || protocol != Protocol::Tcp,
    )?;
    let reconnect = raw
        .reconnect
        .map(|r| r.validate("reconnect"))
        .transpose()?
        .unwrap_or_default();
    let nlb = match &raw.nlb {
        None => None,
        Some(link) => Some(NlbLink {
            admin: link.admin.parse::<SocketAddr>().map_err(|_| {
                ProfileError::at(
                    "nlb.admin",
                    format!(
                        "{:?} is not the IP:port of an emulator's admin endpoint (`stampede nlb --admin IP:PORT`)",
                        link.admin
                    ),
                )
            })?,
        }),
    };
    let on_agent_loss = match raw.on_agent_loss.as_deref() {
        None | Some("continue") => AgentLoss::Continue,
        Some("abort") => AgentLoss::Abort,
        Some(other) => {
            return Err(ProfileError::at(
                "on_agent_loss",
                format!("{other:?} is not valid; expected \"continue\" or \"abort\""),
            ));
        }
    };
    Ok(Profile {
        name: raw.name,
        description: raw.description,
        target,
        protocol,
        protocol_options,
        connections: raw.connections,
        sources,
        heartbeat,
        connect_timeout,
        phases,
        thresholds,
        on_agent_loss,
        reconnect,
        nlb,
    })
}

/// The thresholds, each checked against what the profile can measure: an established gate
/// needs connections that prove they are served, a phase gate a disruptive phase.
fn thresholds(
    texts: &[String],
    phases: &[Phase],
    proves_service: bool,
) -> Result<Vec<Threshold>, ProfileError> {
    let mut thresholds = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        thresholds.push(
            Threshold::parse(text).map_err(|e| {
                ProfileError::at(format!("thresholds[{i}]"), format!("{text:?}: {e}"))
            })?,
        );
    }
    for (i, t) in thresholds.iter().enumerate() {
        let at = format!("thresholds[{i}]");
        if t.subject.needs_established() && !proves_service {
            return Err(ProfileError::at(
                at,
                format!(
                    "{:?}: plain TCP without heartbeats only shows that the kernel accepted a \
                     connection (connected), never that a server answers on it (established); \
                     add \"heartbeat\" so each connection proves it is served, or gate on \
                     connected_ratio",
                    t.text
                ),
            ));
        }
        if let crate::profile::threshold::Subject::Phase { index, .. } = t.subject {
            match phases.get(index) {
                Some(phase) if phase.is_disruptive() => {}
                Some(phase) => {
                    return Err(ProfileError::at(
                        at,
                        format!(
                            "{:?}: phase {index} is a {}, which disrupts nothing and has no \
                             recovery; name a storm, drain, cutover or server phase ({})",
                            t.text,
                            phase.kind(),
                            disruptive_list(phases)
                        ),
                    ));
                }
                None => {
                    return Err(ProfileError::at(
                        at,
                        format!(
                            "{:?}: there is no phase {index} (phases count from 0; this \
                             profile has {}); disruptive phases: {}",
                            t.text,
                            phases.len(),
                            disruptive_list(phases)
                        ),
                    ));
                }
            }
        }
    }
    Ok(thresholds)
}

/// The disruptive phases as `N (kind)`, for messages.
fn disruptive_list(phases: &[Phase]) -> String {
    let list: Vec<String> = phases
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_disruptive())
        .map(|(i, p)| format!("{i} ({})", p.kind()))
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn validate_target(value: &Value) -> Result<TargetSpec, ProfileError> {
    const HINT: &str =
        "expected \"embedded\" or {\"addrs\": [\"127.0.0.1:7000\", ...]} (IP:port, [IPv6]:port)";
    match value {
        Value::String(s) if s == "embedded" => Ok(TargetSpec::Embedded),
        Value::Object(map) => {
            if let Some(key) = map.keys().find(|k| k.as_str() != "addrs") {
                return Err(ProfileError::at(
                    format!("target.{key}"),
                    format!("unknown field `{key}`, expected `addrs`"),
                ));
            }
            let addrs = map
                .get("addrs")
                .and_then(Value::as_array)
                .ok_or_else(|| ProfileError::at("target.addrs", format!("missing; {HINT}")))?;
            if addrs.is_empty() {
                return Err(ProfileError::at(
                    "target.addrs",
                    format!("[] is empty; {HINT}"),
                ));
            }
            let mut parsed = Vec::with_capacity(addrs.len());
            for (i, item) in addrs.iter().enumerate() {
                let addr = item
                    .as_str()
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                    .filter(|a| a.port() != 0)
                    .ok_or_else(|| {
                        ProfileError::at(
                            format!("target.addrs[{i}]"),
                            format!("{item} is not an IP:port with a non-zero port; {HINT}"),
                        )
                    })?;
                if parsed.contains(&addr) {
                    return Err(ProfileError::at(
                        format!("target.addrs[{i}]"),
                        format!("{item} is listed twice; list each target once"),
                    ));
                }
                parsed.push(addr);
            }
            Ok(TargetSpec::Addrs(parsed))
        }
        other => Err(ProfileError::at(
            "target",
            format!("{other} is not valid; {HINT}"),
        )),
    }
}

fn validate_sources(raw: RawSources) -> Result<SourceSpec, ProfileError> {
    let mut addrs = Vec::new();
    // A set, not `addrs.contains`: up to 65,536 addresses made that check quadratic (seconds
    // per profile; found by fuzzing).
    let mut seen = std::collections::HashSet::new();
    for (i, spec) in raw.addrs.iter().enumerate() {
        let expanded = sources::expand(spec).map_err(|e| {
            ProfileError::at(
                format!("sources.addrs[{i}]"),
                format!("{spec:?}: {e}; expected an address (127.0.0.2), a CIDR (127.0.1.0/24) or a range (127.0.2.1-127.0.2.50)"),
            )
        })?;
        for ip in expanded {
            if !seen.insert(ip) {
                return Err(ProfileError::at(
                    format!("sources.addrs[{i}]"),
                    format!("{spec:?} repeats {ip}; list each source address once"),
                ));
            }
            addrs.push(ip);
        }
        if addrs.len() > sources::MAX_SOURCE_ADDRS {
            return Err(ProfileError::at(
                format!("sources.addrs[{i}]"),
                format!(
                    "more than {} source addresses in all",
                    sources::MAX_SOURCE_ADDRS
                ),
            ));
        }
    }
    if addrs.is_empty() {
        return Err(ProfileError::at(
            "sources.addrs",
            "[] is empty; list source addresses or leave `sources` out to let the kernel choose",
        ));
    }
    let port_range = raw
        .port_range
        .as_deref()
        .map(|text| {
            PortRange::parse(text)
                .map_err(|e| ProfileError::at("sources.port_range", format!("{text:?}: {e}")))
        })
        .transpose()?;
    Ok(SourceSpec { addrs, port_range })
}

fn validate_heartbeat(raw: RawHeartbeat) -> Result<Heartbeat, ProfileError> {
    let interval = duration_at("heartbeat.interval", &raw.interval)?;
    if interval < Duration::from_millis(10) {
        return Err(ProfileError::at(
            "heartbeat.interval",
            format!(
                "{:?} is shorter than 10ms; heartbeats are for holding connections, not for throughput",
                raw.interval
            ),
        ));
    }
    let payload_bytes = raw.payload_bytes.unwrap_or(16);
    if payload_bytes == 0 || payload_bytes > MAX_PAYLOAD_BYTES {
        return Err(ProfileError::at(
            "heartbeat.payload_bytes",
            format!("{payload_bytes} is out of range; expected 1 to {MAX_PAYLOAD_BYTES}"),
        ));
    }
    let timeout = match raw.timeout.as_deref() {
        None => interval,
        Some(text) => duration_at("heartbeat.timeout", text)?,
    };
    Ok(Heartbeat {
        interval,
        payload_bytes,
        timeout,
    })
}
