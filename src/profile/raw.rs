//! The profile's JSON shape as serde reads it: unknown fields are errors, values are still
//! text. `validate` turns it into a `Profile`.

use serde::Deserialize;
use serde_json::Value;

use super::protocol;
use super::reconnect::RawReconnect;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: Option<String>,
    pub(super) target: Value,
    #[serde(default)]
    pub(super) protocol: Option<String>,
    #[serde(default)]
    pub(super) tls: Option<protocol::RawTls>,
    #[serde(default)]
    pub(super) websocket: Option<protocol::RawWebSocket>,
    #[serde(default)]
    pub(super) mqtt: Option<protocol::RawMqtt>,
    #[serde(default)]
    pub(super) http2: Option<protocol::RawHttp2>,
    pub(super) connections: u64,
    #[serde(default)]
    pub(super) sources: Option<RawSources>,
    #[serde(default)]
    pub(super) heartbeat: Option<RawHeartbeat>,
    #[serde(default)]
    pub(super) connect_timeout: Option<String>,
    pub(super) phases: Vec<RawPhase>,
    #[serde(default)]
    pub(super) thresholds: Vec<String>,
    #[serde(default)]
    pub(super) on_agent_loss: Option<String>,
    #[serde(default)]
    pub(super) reconnect: Option<RawReconnect>,
    #[serde(default)]
    pub(super) nlb: Option<RawNlb>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNlb {
    pub(super) admin: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNlbPhase {
    #[serde(rename = "do")]
    pub(super) action: String,
    pub(super) target: String,
    #[serde(rename = "for")]
    pub(super) duration: String,
    #[serde(default)]
    pub(super) reconnect: Option<RawReconnect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSources {
    pub(super) addrs: Vec<String>,
    #[serde(default)]
    pub(super) port_range: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeartbeat {
    pub(super) interval: String,
    #[serde(default)]
    pub(super) payload_bytes: Option<u32>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) enum RawPhase {
    Ramp(RawRamp),
    Hold(RawHold),
    Storm(RawStorm),
    Drain(RawDrain),
    Cutover(RawCutover),
    Server(RawServer),
    Nlb(RawNlbPhase),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    #[serde(rename = "do")]
    pub(super) action: String,
    #[serde(default)]
    pub(super) fraction: Option<f64>,
    #[serde(default)]
    pub(super) per_second: Option<f64>,
    #[serde(default)]
    pub(super) lifetime: Option<String>,
    #[serde(default)]
    pub(super) admin: Option<String>,
    #[serde(rename = "for")]
    pub(super) duration: String,
    #[serde(default)]
    pub(super) reconnect: Option<RawReconnect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorm {
    #[serde(default)]
    pub(super) fraction: Option<f64>,
    #[serde(default)]
    pub(super) mode: Option<String>,
    #[serde(rename = "for")]
    pub(super) duration: String,
    #[serde(default)]
    pub(super) reconnect: Option<RawReconnect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    #[serde(default)]
    pub(super) fraction: Option<f64>,
    pub(super) over: String,
    #[serde(default)]
    pub(super) shape: Option<String>,
    #[serde(default)]
    pub(super) jitter: Option<bool>,
    #[serde(default, rename = "for")]
    pub(super) duration: Option<String>,
    #[serde(default)]
    pub(super) reconnect: Option<RawReconnect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCutover {
    pub(super) to: Vec<String>,
    #[serde(default)]
    pub(super) over: Option<String>,
    #[serde(default)]
    pub(super) close: Option<bool>,
    #[serde(rename = "for")]
    pub(super) duration: String,
    #[serde(default)]
    pub(super) reconnect: Option<RawReconnect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRamp {
    #[serde(default)]
    pub(super) to: Option<u64>,
    pub(super) rate: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHold {
    #[serde(rename = "for")]
    pub(super) duration: String,
}
