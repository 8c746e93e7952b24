//! `stampede profile check`: the expanded plan of a profile, as a person reads it.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::agent::pool::SourcePool;
use crate::host;
use crate::profile::duration::Human;
use crate::profile::timeline;
use crate::profile::{Profile, TargetSpec};

pub fn render(profile: &Profile) -> PlanCheck {
    let mut out = String::new();
    let mut fits = true;
    let spans = timeline::spans(profile);
    let peak = profile.peak_connections();
    let _ = writeln!(out, "profile     {}: valid", profile.name);
    if let Some(text) = &profile.description {
        let _ = writeln!(out, "            {text}");
    }
    let targets: Vec<SocketAddr> = match &profile.target {
        TargetSpec::Embedded => {
            let _ = writeln!(
                out,
                "target      embedded sink on 127.0.0.1 (port chosen at start)"
            );
            vec![SocketAddr::from(([127, 0, 0, 1], 1))]
        }
        TargetSpec::Addrs(addrs) => {
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "target      {}", list.join(", "));
            addrs.clone()
        }
    };
    let _ = writeln!(
        out,
        "protocol    {}{}",
        profile.protocol.name(),
        protocol_details(profile)
    );
    let _ = writeln!(
        out,
        "connections {} (peak held {peak})",
        profile.connections
    );
    match &profile.heartbeat {
        Some(h) => {
            let _ = writeln!(
                out,
                "heartbeat   every {}, {} bytes, echo timeout {} ({:.0} heartbeats/s at peak)",
                Human(h.interval),
                h.payload_bytes,
                Human(h.timeout),
                peak as f64 / h.interval.as_secs_f64()
            );
        }
        None => {
            let _ = writeln!(out, "heartbeat   none (connections are held silently)");
        }
    }
    let _ = writeln!(
        out,
        "connect     timeout {}",
        Human(profile.connect_timeout)
    );
    let _ = writeln!(out, "phases");
    for span in &spans {
        let detail = match span.rate {
            Some(rate) => format!("{} -> {} at {rate}/s", span.from, span.to),
            None => format!("hold {} for {}", span.to, Human(span.end - span.start)),
        };
        let _ = writeln!(
            out,
            "  {:>2} {:<5} {:>9} -> {:<9} {detail}",
            span.index + 1,
            span.kind,
            format!("{:.1}s", span.start.as_secs_f64()),
            format!("{:.1}s", span.end.as_secs_f64()),
        );
    }
    let _ = writeln!(
        out,
        "duration    {:.1}s planned",
        timeline::total(&spans).as_secs_f64()
    );
    match SourcePool::new(&profile.sources, &targets, host::ephemeral_port_range()) {
        Ok(pool) => {
            let sources = pool.sources.len();
            let _ = writeln!(
                out,
                "sources     {} ({})",
                if profile.sources.addrs.is_empty() {
                    "kernel-chosen".to_string()
                } else {
                    format!("{sources} address(es)")
                },
                match pool.port_range {
                    Some(r) => format!("per-socket port range {r}, {} ports", r.len()),
                    None => format!(
                        "ephemeral range {}, {} ports",
                        pool.system_range, pool.ports_per_pair
                    ),
                }
            );
            let busiest = pool.busiest_pair(peak);
            let _ = writeln!(
                out,
                "capacity    {} connections = {sources} source(s) x {} ports x {} target(s); \
                 each source IP needs up to {busiest} ports per target ({} connections per source IP)",
                pool.capacity(),
                pool.ports_per_pair,
                pool.targets.len(),
                peak.div_ceil(sources as u64),
            );
            match pool.check(peak) {
                Ok(()) => {
                    let _ = writeln!(out, "            fits");
                }
                Err(e) => {
                    fits = false;
                    let _ = writeln!(out, "            DOES NOT FIT: {e}");
                }
            }
        }
        Err(e) => {
            fits = false;
            let _ = writeln!(out, "sources     DOES NOT FIT: {e}");
        }
    }
    let per_connection = if profile.target == TargetSpec::Embedded {
        2
    } else {
        1
    };
    let need = peak * per_connection + host::FD_RESERVE;
    let limit = host::fd_limit().map_or(0, |l| l.hard);
    let _ = writeln!(
        out,
        "files       needs {need} descriptors{}; this host allows {limit} per process",
        if per_connection == 2 {
            " (the embedded sink doubles the sockets)"
        } else {
            ""
        }
    );
    if profile.thresholds.is_empty() {
        let _ = writeln!(out, "thresholds  none");
    } else {
        let list: Vec<&str> = profile.thresholds.iter().map(|t| t.text.as_str()).collect();
        let _ = writeln!(out, "thresholds  {}", list.join(", "));
    }
    let _ = writeln!(
        out,
        "established {}",
        match profile.established_by() {
            "first_heartbeat_echo" => "when the first heartbeat's echo comes back",
            "protocol_handshake" => "when the protocol's handshake completes",
            _ => "never: plain TCP without heartbeats only shows connected (add a heartbeat)",
        }
    );
    PlanCheck { text: out, fits }
}

/// The expanded plan, and whether it fits this host's source ports.
pub struct PlanCheck {
    pub text: String,
    pub fits: bool,
}

/// The protocol options worth seeing before a run: TLS checks and resumption, the upgrade.
fn protocol_details(profile: &Profile) -> String {
    let options = &profile.protocol_options;
    let mut parts = Vec::new();
    if let Some(ws) = &options.websocket {
        parts.push(format!(
            "{} {} (heartbeat {})",
            if ws.secure { "wss" } else { "ws" },
            ws.path,
            match ws.heartbeat {
                crate::profile::protocol::WsHeartbeat::Ping => "ping",
                crate::profile::protocol::WsHeartbeat::Text => "text",
            }
        ));
    }
    if let Some(tls) = &options.tls {
        let name = tls.server_name.as_deref().unwrap_or("the target's IP");
        let verify = match (&tls.verify, &tls.ca_file) {
            (false, _) => "no verification".to_string(),
            (true, Some(ca)) => format!("verified against {}", ca.display()),
            (true, None) => "verified against the embedded sink's certificate".to_string(),
        };
        let resumption = if tls.resumption {
            "resumption on"
        } else {
            "resumption off"
        };
        parts.push(format!("TLS to {name}, {verify}, {resumption}"));
    }
    if let Some(mqtt) = &options.mqtt {
        let version = match mqtt.version {
            crate::profile::protocol::MqttVersion::V311 => "3.1.1",
            crate::profile::protocol::MqttVersion::V5 => "5",
        };
        parts.push(format!("MQTT {version}"));
        if let Some(f) = &mqtt.fanout {
            parts.push(format!(
                "fan-out {} msg/s of {} bytes over {} topic(s) per agent, \
                 about {} subscriber(s) each in a single process",
                f.rate,
                f.payload_bytes,
                f.topics,
                profile.connections.div_ceil(u64::from(f.topics))
            ));
        }
    }
    if let Some(h2) = &options.http2 {
        parts.push(if h2.secure {
            "HTTP/2 over TLS (ALPN h2)".to_string()
        } else {
            "HTTP/2 cleartext (h2c, prior knowledge)".to_string()
        });
    }
    if let Some(h2) = options.http2.as_ref().and_then(|h| h.push_interval) {
        parts.push(format!(
            "the embedded sink pushes a frame every {}",
            Human(h2)
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}
