//! Profiles: JSON scenarios, validated into typed plans.
//!
//! Parsing happens in two steps: serde reads the raw shape (unknown fields are errors), then
//! `validate` turns strings into durations, addresses and thresholds. Every error names the JSON
//! path, the value given and what would be valid. This module opens no sockets.

pub mod duration;
pub mod overrides;
mod phases;
pub mod protocol;
mod raw;
pub mod reconnect;
pub mod sink_action;
pub mod sources;
pub mod threshold;
pub mod timeline;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use duration::{DURATION_HINT, parse_duration};
use reconnect::ReconnectPolicy;
use sources::PortRange;
use threshold::Threshold;

/// The most connections one profile may ask for: the 100-million-device case.
pub const MAX_CONNECTIONS: u64 = 100_000_000;
/// Largest heartbeat payload; bigger is a throughput test, not a heartbeat.
pub const MAX_PAYLOAD_BYTES: u32 = 65_536;

/// A profile error: where in the JSON, and what is wrong there.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileError {
    /// The file the profile came from, if any.
    pub file: Option<String>,
    /// JSON path such as `heartbeat.interval` or `phases[1].ramp.rate`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl ProfileError {
    fn at(path: impl Into<String>, message: impl Into<String>) -> ProfileError {
        ProfileError {
            file: None,
            path: path.into(),
            message: message.into(),
        }
    }

    fn in_file(mut self, file: &Path) -> ProfileError {
        self.file = Some(file.display().to_string());
        self
    }
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "at `{}`: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ProfileError {}

/// Where the load goes.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetSpec {
    /// The built-in sink, started in-process on loopback.
    Embedded,
    Addrs(Vec<SocketAddr>),
}

pub use protocol::{Protocol, ProtocolOptions};
pub use sink_action::SinkAction;

/// Source addresses to bind, and the per-socket port range.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceSpec {
    /// Empty: let the kernel choose the source address.
    pub addrs: Vec<IpAddr>,
    pub port_range: Option<PortRange>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heartbeat {
    pub interval: Duration,
    pub payload_bytes: u32,
    pub timeout: Duration,
}

/// How a storm ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// A normal close (FIN).
    Close,
    /// An abortive close (RST, `SO_LINGER` 0).
    Reset,
}

/// How a drain spreads its closes over the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainShape {
    /// Evenly; with `jitter`, each close at a random moment of the window.
    Uniform { jitter: bool },
    /// Few at first, more and more towards the end (density rising linearly).
    Linear,
}

/// One step of the scenario. New kinds of phase are new variants.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Open (or close) connections at `rate` per second until `to` are open.
    Ramp { to: u64, rate: f64 },
    /// Keep what is open for a while.
    Hold { duration: Duration },
    /// Drop `fraction` of the open connections at once, then let them reconnect per policy
    /// while the phase lasts `duration`.
    Storm {
        fraction: f64,
        mode: CloseMode,
        duration: Duration,
        reconnect: Option<ReconnectPolicy>,
    },
    /// Close and reconnect `fraction` of the connections spread over `over`; the phase lasts
    /// `duration` (at least `over`).
    Drain {
        fraction: f64,
        over: Duration,
        shape: DrainShape,
        duration: Duration,
        reconnect: Option<ReconnectPolicy>,
    },
    /// Move every connection to the `to` targets: reconnects from the phase's start go there;
    /// open connections are closed over `over` (at once when zero) unless `close` is false,
    /// in which case only those the servers drop move.
    Cutover {
        to: Vec<SocketAddr>,
        over: Duration,
        close: bool,
        duration: Duration,
        reconnect: Option<ReconnectPolicy>,
    },
    /// The server side of a deploy: at the phase's start, tell the sink (embedded, or the one
    /// whose admin endpoint is `admin`) to close connections or stop accepting; clients follow
    /// their reconnect policy while the phase lasts `duration`.
    Server {
        action: SinkAction,
        admin: Option<SocketAddr>,
        duration: Duration,
        reconnect: Option<ReconnectPolicy>,
    },
    /// Blue/green through a load balancer: at the phase's start, deregister or register
    /// `target` at the NLB emulator named by the profile's `nlb.admin`.
    Nlb {
        change: TargetChange,
        target: SocketAddr,
        duration: Duration,
        reconnect: Option<ReconnectPolicy>,
    },
}

/// Register or deregister a target of the NLB emulator (an `nlb` phase, `admin_target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetChange {
    Register,
    Deregister,
}

impl TargetChange {
    pub fn verb(self) -> &'static str {
        match self {
            TargetChange::Register => "register",
            TargetChange::Deregister => "deregister",
        }
    }
}

/// The NLB emulator (`stampede nlb`) a profile runs through: its admin endpoint, scraped into
/// the summary and told about `nlb` phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NlbLink {
    pub admin: SocketAddr,
}

impl Phase {
    pub fn kind(&self) -> &'static str {
        match self {
            Phase::Ramp { .. } => "ramp",
            Phase::Hold { .. } => "hold",
            Phase::Storm { .. } => "storm",
            Phase::Drain { .. } => "drain",
            Phase::Cutover { .. } => "cutover",
            Phase::Server { .. } => "server",
            Phase::Nlb { .. } => "nlb",
        }
    }

    /// Whether the phase disrupts held connections, so that it has recovery figures.
    pub fn is_disruptive(&self) -> bool {
        matches!(
            self,
            Phase::Storm { .. }
                | Phase::Drain { .. }
                | Phase::Cutover { .. }
                | Phase::Server { .. }
        )
    }

    /// The reconnect policy this phase sets, if it overrides the profile's.
    pub fn reconnect(&self) -> Option<ReconnectPolicy> {
        match self {
            Phase::Storm { reconnect, .. }
            | Phase::Drain { reconnect, .. }
            | Phase::Cutover { reconnect, .. }
            | Phase::Server { reconnect, .. }
            | Phase::Nlb { reconnect, .. } => *reconnect,
            Phase::Ramp { .. } | Phase::Hold { .. } => None,
        }
    }
}

/// An address a profile names, and the JSON path that names it (`phases[2].cutover.to[0]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanAddress {
    pub at: String,
    pub addr: SocketAddr,
}

impl PlanAddress {
    pub fn new(at: impl Into<String>, addr: SocketAddr) -> PlanAddress {
        PlanAddress {
            at: at.into(),
            addr,
        }
    }
}

/// What a swarm does when an agent is lost mid-run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentLoss {
    /// Keep its data up to its last report and finish with the others.
    #[default]
    Continue,
    /// Stop the whole run (outcome `aborted`).
    Abort,
}

/// A validated profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    pub target: TargetSpec,
    pub protocol: Protocol,
    /// The options of `protocol` (TLS, WebSocket, ...); all `None` for plain TCP.
    pub protocol_options: ProtocolOptions,
    pub connections: u64,
    pub sources: SourceSpec,
    pub heartbeat: Option<Heartbeat>,
    pub connect_timeout: Duration,
    pub phases: Vec<Phase>,
    pub thresholds: Vec<Threshold>,
    pub on_agent_loss: AgentLoss,
    /// What a failed or closed connection does; phases may override it.
    pub reconnect: ReconnectPolicy,
    pub nlb: Option<NlbLink>,
}

impl Profile {
    /// What proves a connection of this profile is served, as reports name it: the echo of
    /// its first heartbeat (plain TCP), its protocol's handshake, or nothing (plain TCP
    /// without heartbeats: connections only ever reach connected).
    pub fn established_by(&self) -> &'static str {
        match (self.protocol, self.heartbeat) {
            (Protocol::Tcp, Some(_)) => "first_heartbeat_echo",
            (Protocol::Tcp, None) => "none",
            _ => "protocol_handshake",
        }
    }

    /// Reads a profile file and applies `--set` overrides before validating.
    pub fn load(file: &Path, overrides: &[String]) -> Result<Profile, ProfileError> {
        Profile::load_with_json(file, overrides).map(|(profile, _)| profile)
    }

    /// Like `load`, also returning the JSON after overrides (what a swarm sends its agents).
    pub fn load_with_json(
        file: &Path,
        overrides: &[String],
    ) -> Result<(Profile, Value), ProfileError> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ProfileError::at("", format!("cannot read the profile: {e}")).in_file(file)
        })?;
        let value = json_with_overrides(&text, overrides).map_err(|e| e.in_file(file))?;
        let profile = Profile::from_value(value.clone()).map_err(|e| e.in_file(file))?;
        Ok((profile, value))
    }

    /// Parses profile JSON text, applying `--set PATH=VALUE` overrides first.
    pub fn from_json(text: &str, overrides: &[String]) -> Result<Profile, ProfileError> {
        Profile::from_value(json_with_overrides(text, overrides)?)
    }

    pub fn from_value(value: Value) -> Result<Profile, ProfileError> {
        let raw: raw::RawProfile = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ProfileError::at(path, e.into_inner().to_string())
        })?;
        validate::validate(raw)
    }

    /// This profile's share for agent `index` of a swarm whose capacities are `weights`:
    /// connections and every ramp target are apportioned by largest remainder (so the shares
    /// add up exactly), and rates scale by the agent's weight.
    pub fn share(&self, weights: &[u64], index: usize) -> Profile {
        let total: u64 = weights.iter().sum();
        let fraction = if total == 0 {
            0.0
        } else {
            weights.get(index).copied().unwrap_or(0) as f64 / total as f64
        };
        let mut out = self.clone();
        out.connections = apportion(self.connections, weights)[index];
        for phase in &mut out.phases {
            if let Phase::Ramp { to, rate } = phase {
                *to = apportion(*to, weights)[index].min(out.connections);
                *rate *= fraction;
            }
        }
        if let Some(fanout) = out
            .protocol_options
            .mqtt
            .as_mut()
            .and_then(|m| m.fanout.as_mut())
        {
            fanout.rate *= fraction;
        }
        out
    }

    /// Every target the plan may connect to: the profile's, then each cutover's, without repeats.
    /// Target sets are ranges of this list (see `target_sets`).
    pub fn cutover_targets(&self) -> Vec<Vec<SocketAddr>> {
        self.phases
            .iter()
            .filter_map(|p| match p {
                Phase::Cutover { to, .. } => Some(to.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every address this profile names for a run to reach, each with the JSON path it comes
    /// from: the targets, each cutover's `to`, the sinks' and the NLB emulator's admin
    /// endpoints and the targets an `nlb` phase registers. An agent checks all of them against
    /// its `--allow-targets`, so a field that names an address must be listed here; the test
    /// `every_address_field_is_listed` fails when one is not.
    pub fn addresses(&self) -> Vec<PlanAddress> {
        let mut out = Vec::new();
        if let TargetSpec::Addrs(addrs) = &self.target {
            for (i, addr) in addrs.iter().enumerate() {
                out.push(PlanAddress::new(format!("target.addrs[{i}]"), *addr));
            }
        }
        for (i, phase) in self.phases.iter().enumerate() {
            match phase {
                Phase::Cutover { to, .. } => {
                    for (j, addr) in to.iter().enumerate() {
                        out.push(PlanAddress::new(
                            format!("phases[{i}].cutover.to[{j}]"),
                            *addr,
                        ));
                    }
                }
                Phase::Server {
                    admin: Some(addr), ..
                } => out.push(PlanAddress::new(format!("phases[{i}].server.admin"), *addr)),
                Phase::Nlb { target, .. } => {
                    out.push(PlanAddress::new(format!("phases[{i}].nlb.target"), *target));
                }
                Phase::Ramp { .. }
                | Phase::Hold { .. }
                | Phase::Storm { .. }
                | Phase::Drain { .. }
                | Phase::Server { admin: None, .. } => {}
            }
        }
        if let Some(link) = &self.nlb {
            out.push(PlanAddress::new("nlb.admin", link.admin));
        }
        out
    }

    /// Peak number of connections any phase asks to hold open at once.
    pub fn peak_connections(&self) -> u64 {
        self.phases
            .iter()
            .filter_map(|p| match p {
                Phase::Ramp { to, .. } => Some(*to),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// Splits `total` in proportion to `weights` by largest remainder: the parts add up to `total`
/// exactly and differ from the exact proportion by less than one. Ties go to the lower index.
pub fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<(u64, u128)> = weights
        .iter()
        .map(|w| {
            let scaled = u128::from(total) * u128::from(*w);
            ((scaled / sum) as u64, scaled % sum)
        })
        .collect();
    let mut parts: Vec<u64> = exact.iter().map(|(q, _)| *q).collect();
    let mut left = total - parts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| exact[*b].1.cmp(&exact[*a].1).then(a.cmp(b)));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

fn json_with_overrides(text: &str, overrides: &[String]) -> Result<Value, ProfileError> {
    let mut value: Value = serde_json::from_str(text).map_err(|e| {
        ProfileError::at(
            "",
            format!(
                "not valid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    for item in overrides {
        overrides::apply(&mut value, item)?;
    }
    Ok(value)
}

pub(crate) fn duration_at(path: &str, text: &str) -> Result<Duration, ProfileError> {
    match parse_duration(text) {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err(ProfileError::at(
            path,
            format!("{text:?} is zero; expected a positive duration, {DURATION_HINT}"),
        )),
        None => Err(ProfileError::at(
            path,
            format!("{text:?} is not a duration; expected {DURATION_HINT}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = r#"{
        "name": "t", "target": "embedded", "connections": 10,
        "heartbeat": {"interval": "1s"},
        "phases": [{"ramp": {"rate": 100}}, {"hold": {"for": "2s"}}],
        "thresholds": ["errors <= 0"]
    }"#;

    #[test]
    fn parses_a_profile() {
        let p = Profile::from_json(SMOKE, &[]).unwrap();
        assert_eq!(p.connections, 10);
        assert_eq!(
            p.phases[0],
            Phase::Ramp {
                to: 10,
                rate: 100.0
            }
        );
        assert_eq!(p.heartbeat.unwrap().timeout, Duration::from_secs(1));
        assert_eq!(p.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_path_value_and_fix() {
        let err = Profile::from_json(SMOKE, &["heartbeat.interval=5x".into()]).unwrap_err();
        assert_eq!(err.path, "heartbeat.interval");
        assert!(err.message.contains("\"5x\" is not a duration"), "{err}");
        let err = Profile::from_json(SMOKE, &["phases.1.hold.forr=2s".into()]).unwrap_err();
        assert_eq!(err.path, "phases[1].hold.forr");
        assert!(err.message.contains("unknown field `forr`"), "{err}");
    }

    #[test]
    fn shares_add_up_exactly() {
        assert_eq!(apportion(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(
            apportion(1_000_000, &[19_936, 19_936, 9_968]),
            vec![400_000, 400_000, 200_000]
        );
        assert_eq!(apportion(7, &[0, 5]), vec![0, 7]);
        let p = Profile::from_json(SMOKE, &["connections=1001".into()]).unwrap();
        let shares: Vec<Profile> = (0..3).map(|i| p.share(&[2, 2, 1], i)).collect();
        assert_eq!(shares.iter().map(|s| s.connections).sum::<u64>(), 1001);
        let rates: f64 = shares
            .iter()
            .map(|s| match s.phases[0] {
                Phase::Ramp { rate, .. } => rate,
                _ => 0.0,
            })
            .sum();
        assert!((rates - 100.0).abs() < 1e-9);
    }

    #[test]
    fn overrides_apply() {
        let p = Profile::from_json(
            SMOKE,
            &["connections=50".into(), "heartbeat.interval=5s".into()],
        )
        .unwrap();
        assert_eq!(p.connections, 50);
        assert_eq!(
            p.phases[0],
            Phase::Ramp {
                to: 50,
                rate: 100.0
            }
        );
        assert_eq!(p.heartbeat.unwrap().interval, Duration::from_secs(5));
    }

    #[test]
    #[expect(
        clippy::disallowed_methods,
        reason = "measures real CPU time spent validating; no runtime involved"
    )]
    fn the_largest_source_list_validates_in_linear_time() {
        let profile = |addrs: serde_json::Value| {
            serde_json::json!({
                "name": "wide", "target": "embedded", "connections": 10,
                "sources": {"addrs": addrs}, "phases": [{"ramp": {"rate": 10}}]
            })
        };
        let started = std::time::Instant::now();
        let wide =
            Profile::from_value(profile(serde_json::json!(["127.0.0.0-127.0.255.255"]))).unwrap();
        assert_eq!(wide.sources.addrs.len(), sources::MAX_SOURCE_ADDRS);
        // Quadratic, this took over a second in release; linear, a few milliseconds.
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_millis(500), "{took:?}");
        let repeated = profile(serde_json::json!(["127.0.0.1-127.0.0.9", "127.0.0.5"]));
        let error = Profile::from_value(repeated).unwrap_err().to_string();
        assert!(error.contains("repeats 127.0.0.5"), "{error}");
    }

    /// The schema's object definitions, shared by every field that refers to them.
    const SHARED_DEFS: [&str; 1] = ["reconnect"];

    /// The paths a JSON Schema node allows (`phases[].cutover.to`), `$ref`s followed.
    fn schema_paths(node: &Value, defs: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(name) = node.get("$ref").and_then(Value::as_str) {
            // A shared definition is covered once, wherever a fixture sets it.
            let name = name.trim_start_matches("#/$defs/");
            return schema_paths(&defs[name], defs, &format!("${name}"), out);
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (key, child) in props {
                let path = format!("{prefix}.{key}");
                out.push(path.clone());
                schema_paths(child, defs, &path, out);
            }
        }
        if let Some(items) = node.get("items") {
            schema_paths(items, defs, &format!("{prefix}[]"), out);
        }
        for variant in node
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            schema_paths(variant, defs, prefix, out);
        }
    }

    /// The paths a JSON value sets, and every string in it. Under a key named like a shared
    /// object definition (`reconnect`), paths start at `$reconnect` as `schema_paths` has them.
    fn value_paths(
        value: &Value,
        prefix: &str,
        paths: &mut Vec<String>,
        strings: &mut Vec<String>,
    ) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = format!("{prefix}.{key}");
                    paths.push(path.clone());
                    let inner = if SHARED_DEFS.contains(&key.as_str()) {
                        format!("${key}")
                    } else {
                        path
                    };
                    value_paths(child, &inner, paths, strings);
                }
            }
            Value::Array(items) => {
                for item in items {
                    value_paths(item, &format!("{prefix}[]"), paths, strings);
                }
            }
            Value::String(text) => strings.push(text.clone()),
            _ => {}
        }
    }

    /// The fixtures in tests/fixtures/profiles/every-field set every field the schema has, so
    /// a new field (schema and parser go together, see tests/profiles.rs) fails here until a
    /// fixture sets it. Any socket address in a fixture, or anywhere in the parsed profile,
    /// must then be one `addresses()` lists: that is what `--allow-targets` is checked against.
    #[test]
    fn every_address_field_is_listed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("schemas/profile.schema.json")).unwrap(),
        )
        .unwrap();
        let mut wanted = Vec::new();
        schema_paths(&schema, &schema["$defs"], "", &mut wanted);
        let defs = schema["$defs"].as_object().unwrap();
        let objects: Vec<&str> = defs
            .keys()
            .filter(|k| defs[*k].get("properties").is_some())
            .map(String::as_str)
            .collect();
        assert_eq!(objects, SHARED_DEFS, "update SHARED_DEFS");
        let dir = root.join("tests/fixtures/profiles/every-field");
        let mut set = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            let mut strings = Vec::new();
            value_paths(&value, "", &mut set, &mut strings);
            let profile =
                Profile::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let listed: Vec<SocketAddr> = profile.addresses().iter().map(|a| a.addr).collect();
            // Addresses as the profile holds them, whatever the field's type: the Debug text
            // of every SocketAddr field, split into candidate tokens.
            let debug = format!("{profile:?}");
            let tokens = debug
                .split(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
                .map(str::to_string);
            for text in strings.into_iter().chain(tokens) {
                if let Ok(addr) = text.parse::<SocketAddr>() {
                    assert!(
                        listed.contains(&addr),
                        "{}: {addr} is in the profile but not in Profile::addresses(): \
                         list its field there so --allow-targets covers it",
                        file.display()
                    );
                }
            }
        }
        let unset: Vec<&String> = wanted.iter().filter(|p| !set.contains(p)).collect();
        assert!(
            unset.is_empty(),
            "no fixture in {} sets {unset:?}; set it (an address field must also go into \
             Profile::addresses())",
            dir.display()
        );
    }
}
