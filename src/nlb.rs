//! `stampede nlb`: an L4 TCP proxy that behaves like an AWS Network Load Balancer where it
//! hurts gateways: per-(node, target) source-port allocation with client-IP preservation off,
//! silent idle timeouts, deregistration with a delay, and CloudWatch-like counters.
//!
//! Model (see README "NLB emulator"): `nodes` nodes, node `k` in zone `k`, each with its own
//! source IP (127.100.0.k+1 by default). Target `i` lives in zone `i mod nodes`. An accepted
//! flow lands on a node by a hash of the client's IP:port; with cross-zone off the node picks
//! among its zone's registered targets (any registered target if its zone has none, as DNS
//! would steer clients away from an empty zone), by a second hash; the flow keeps that
//! target for life. Each flow costs two sockets, so one process holds about half its file
//! limit in flows.
//!
//! - `pool`: the per-(node, target) port pool and its per-minute rate.
//! - `flow`: one flow: routing outcome, upstream connect, the copy loop, idle and termination.
//! - `metrics`: counters and their JSON-line, JSON and Prometheus renderings.
//! - `admin`: the HTTP admin endpoint (metrics, register, deregister) and its client.
//! - `link`: a run's view of the emulator it goes through, for `summary.json`.
//!
//! It must not send traffic anywhere but the configured targets, from the node IPs or (with
//! preservation on) the client's own IP.

mod admin;
mod flow;
pub mod kernel;
mod link;
pub mod metrics;
mod pool;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use crate::profile::TargetChange;
pub use admin::{admin_metrics, admin_target, serve_admin};
pub use link::{NlbLive, NlbSummary, NlbWatch};
use metrics::Counters;
pub use metrics::{CountersSnapshot, NlbMetrics, NodeMetrics, TargetMetrics};
use pool::PortPool;

/// What to do with a flow that gets no source port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Exhaustion {
    /// Never answer: the connection is held without a byte forwarded or echoed (a real NLB
    /// drops the SYN; here the kernel has already completed the handshake), then closed with
    /// a reset once the client gives up or after one idle timeout.
    Drop,
    /// Reset the client at once.
    Reset,
}

/// Everything `stampede nlb` is told on its command line, validated.
#[derive(Clone, Debug)]
pub struct NlbConfig {
    pub targets: Vec<SocketAddr>,
    /// One source address per node; the node count is its length.
    pub node_ips: Vec<IpAddr>,
    pub client_ip_preservation: bool,
    pub ports_per_target: u32,
    pub new_per_minute: u32,
    pub idle_timeout: Duration,
    pub on_exhaustion: Exhaustion,
    pub cross_zone: bool,
    pub deregistration_delay: Duration,
    pub connection_termination: bool,
}

impl NlbConfig {
    /// A configuration with AWS's defaults for `targets` and `nodes` nodes.
    pub fn new(targets: Vec<SocketAddr>, nodes: usize) -> NlbConfig {
        NlbConfig {
            targets,
            node_ips: default_node_ips(nodes),
            client_ip_preservation: false,
            ports_per_target: 55_000,
            new_per_minute: 55_000,
            idle_timeout: Duration::from_secs(350),
            on_exhaustion: Exhaustion::Drop,
            cross_zone: false,
            deregistration_delay: Duration::from_secs(300),
            connection_termination: false,
        }
    }

    /// Refuses what cannot work, naming the flag, the value and a fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("--targets: give at least one target ADDR (e.g. 127.0.0.1:7000)".into());
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].contains(t) {
                return Err(format!(
                    "--targets: {t} is listed twice; list each target once"
                ));
            }
        }
        if self.node_ips.is_empty() || self.node_ips.len() > 254 {
            return Err(format!(
                "--nodes: {} nodes; expected 1 to 254",
                self.node_ips.len()
            ));
        }
        if self.ports_per_target == 0 || self.ports_per_target > 65_535 {
            return Err(format!(
                "--ports-per-target: {}; expected 1 to 65535 (AWS allows about 55000)",
                self.ports_per_target
            ));
        }
        if self.new_per_minute == 0 {
            return Err("--new-per-minute: 0; expected at least 1 (AWS allows about 55000)".into());
        }
        if !self.client_ip_preservation {
            for t in &self.targets {
                if let Some(ip) = self.node_ips.iter().find(|ip| ip.is_ipv4() != t.is_ipv4()) {
                    return Err(format!(
                        "--targets: {t} cannot be reached from node address {ip} (another \
                         address family); give --node-ips of the same family as the targets"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// 127.100.0.1, 127.100.0.2, ...: loopback addresses Linux answers on without configuration.
pub fn default_node_ips(nodes: usize) -> Vec<IpAddr> {
    (0..nodes.min(254))
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, 100, 0, (k + 1) as u8)))
        .collect()
}

struct Node {
    ip: IpAddr,
    counters: Counters,
}

/// Registration state of one target. Generations tell flows admitted before a deregistration
/// from flows admitted after the target came back.
#[derive(Debug)]
struct Registration {
    registered: bool,
    generation: u64,
}

struct Target {
    addr: SocketAddr,
    zone: usize,
    counters: Counters,
    registration: Mutex<Registration>,
    /// Raised to generation `g` when the flows of generations up to `g` must close
    /// (connection termination at the end of the deregistration delay). Written by the
    /// deregistration task, watched by every flow to this target.
    terminate_tx: watch::Sender<u64>,
}

/// A running emulator's shared state: routing, pools, registrations and counters.
pub struct Nlb {
    config: NlbConfig,
    nodes: Vec<Node>,
    targets: Vec<Target>,
    /// Indexed `node * targets + target`; empty with client-IP preservation on.
    pools: Vec<Arc<PortPool>>,
}

/// Where a new flow goes.
struct Route {
    node: usize,
    target: Option<(usize, u64)>,
}

impl Nlb {
    pub fn new(config: NlbConfig) -> Arc<Nlb> {
        let nodes: Vec<Node> = config
            .node_ips
            .iter()
            .map(|ip| Node {
                ip: *ip,
                counters: Counters::default(),
            })
            .collect();
        let targets: Vec<Target> = config
            .targets
            .iter()
            .enumerate()
            .map(|(i, addr)| Target {
                addr: *addr,
                zone: i % nodes.len().max(1),
                counters: Counters::default(),
                registration: Mutex::new(Registration {
                    registered: true,
                    generation: 1,
                }),
                terminate_tx: watch::Sender::new(0),
            })
            .collect();
        let pools = if config.client_ip_preservation {
            Vec::new()
        } else {
            (0..nodes.len() * targets.len())
                .map(|_| PortPool::new(config.ports_per_target, config.new_per_minute))
                .collect()
        };
        Arc::new(Nlb {
            config,
            nodes,
            targets,
            pools,
        })
    }

    pub fn config(&self) -> &NlbConfig {
        &self.config
    }

    fn route(&self, client: SocketAddr) -> Route {
        let node = (flow_hash(client, 0x6e6f_6465) % self.nodes.len() as u64) as usize;
        let registered: Vec<(usize, u64)> = self
            .targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let r = lock(&t.registration);
                r.registered.then_some((i, r.generation))
            })
            .collect();
        let in_zone: Vec<(usize, u64)> = if self.config.cross_zone {
            Vec::new()
        } else {
            registered
                .iter()
                .copied()
                .filter(|(i, _)| self.targets[*i].zone == node)
                .collect()
        };
        let candidates = if in_zone.is_empty() {
            registered
        } else {
            in_zone
        };
        let target = (!candidates.is_empty()).then(|| {
            candidates[(flow_hash(client, 0x7461_7267) % candidates.len() as u64) as usize]
        });
        Route { node, target }
    }

    fn pool(&self, node: usize, target: usize) -> Option<&Arc<PortPool>> {
        self.pools.get(node * self.targets.len() + target)
    }

    fn target_index(&self, addr: SocketAddr) -> Option<usize> {
        self.targets.iter().position(|t| t.addr == addr)
    }

    /// Stops new flows to `addr` at once; with connection termination on, closes its older
    /// flows when the deregistration delay ends (unless it was registered again meanwhile).
    /// Must be called within a tokio runtime.
    pub fn deregister(self: &Arc<Self>, addr: SocketAddr) -> Result<(), TargetError> {
        let i = self.target_index(addr).ok_or_else(|| self.unknown(addr))?;
        let generation = {
            let mut r = lock(&self.targets[i].registration);
            if !r.registered {
                return Ok(());
            }
            r.registered = false;
            r.generation
        };
        if self.config.connection_termination {
            let nlb = self.clone();
            let delay = self.config.deregistration_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let target = &nlb.targets[i];
                let still = {
                    let r = lock(&target.registration);
                    !r.registered && r.generation == generation
                };
                if still {
                    target.terminate_tx.send_replace(generation);
                }
            });
        }
        Ok(())
    }

    /// Lets new flows reach `addr` again.
    pub fn register(&self, addr: SocketAddr) -> Result<(), TargetError> {
        let i = self.target_index(addr).ok_or_else(|| self.unknown(addr))?;
        let mut r = lock(&self.targets[i].registration);
        if !r.registered {
            r.registered = true;
            r.generation += 1;
        }
        Ok(())
    }

    fn unknown(&self, addr: SocketAddr) -> TargetError {
        TargetError::unknown(addr, self.targets.iter().map(|t| t.addr))
    }

    /// All counters now.
    pub fn metrics(&self) -> NlbMetrics {
        let nodes: Vec<NodeMetrics> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(k, n)| NodeMetrics {
                node: k,
                ip: n.ip.to_string(),
                zone: k,
                counters: n.counters.snapshot(),
            })
            .collect();
        let targets = self
            .targets
            .iter()
            .map(|t| TargetMetrics {
                target: t.addr.to_string(),
                zone: t.zone,
                registered: lock(&t.registration).registered,
                counters: t.counters.snapshot(),
            })
            .collect();
        let mut total = CountersSnapshot::default();
        for n in &nodes {
            total.add(&n.counters);
        }
        NlbMetrics {
            nodes,
            targets,
            total,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fixed, seeded mix of the client's IP and port (splitmix64 finalizer): the same flow
/// always hashes the same, in every process, so runs are repeatable.
fn flow_hash(client: SocketAddr, salt: u64) -> u64 {
    let ip = match client.ip() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let mut x =
        salt ^ (ip as u64) ^ ((ip >> 64) as u64).rotate_left(17) ^ (u64::from(client.port()) << 40);
    for _ in 0..2 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

/// Accepts flows on `listener` until `shutdown` completes, then closes every flow.
pub async fn run(listener: TcpListener, nlb: Arc<Nlb>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut flows = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = flows.join_next(), if !flows.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    flows.spawn(flow::serve(nlb.clone(), stream, peer));
                }
                // Out of descriptors, most likely: back off a little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
        }
    }
    flows.shutdown().await;
}

/// Why a registration change was not made: the admin endpoint answers 404 for an address that
/// is not a target and 500 when the datapath could not apply it.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{addr} is not a target of this load balancer; its targets are {known}")]
    Unknown { addr: SocketAddr, known: String },
    #[error("{0}")]
    Datapath(String),
}

impl TargetError {
    /// The error for `addr`, which is none of `targets`.
    pub fn unknown(addr: SocketAddr, targets: impl IntoIterator<Item = SocketAddr>) -> TargetError {
        let known: Vec<String> = targets.into_iter().map(|t| t.to_string()).collect();
        TargetError::Unknown {
            addr,
            known: known.join(", "),
        }
    }
}

/// What the admin endpoint and the metric lines need of a load balancer, whichever datapath
/// carries its flows: the user-space proxy here (`Nlb`) or nftables and conntrack
/// (`kernel::KernelNlb`).
pub trait Balancer: Send + Sync + 'static {
    /// Every counter now.
    fn metrics(&self) -> NlbMetrics;
    /// Lets new flows reach `addr` again.
    fn register_target(self: Arc<Self>, addr: SocketAddr) -> Result<(), TargetError>;
    /// Stops new flows to `addr`; existing ones follow the deregistration delay and
    /// connection termination settings. Must be called within a tokio runtime.
    fn deregister_target(self: Arc<Self>, addr: SocketAddr) -> Result<(), TargetError>;
}

impl Balancer for Nlb {
    fn metrics(&self) -> NlbMetrics {
        Nlb::metrics(self)
    }

    fn register_target(self: Arc<Self>, addr: SocketAddr) -> Result<(), TargetError> {
        self.register(addr)
    }

    fn deregister_target(self: Arc<Self>, addr: SocketAddr) -> Result<(), TargetError> {
        self.deregister(addr)
    }
}

/// Emits the counters of each `period` (one JSON line per node and per target) to `emit`,
/// forever; cancel by dropping. The first period also counts what came before it.
pub async fn report_metrics(nlb: Arc<dyn Balancer>, period: Duration, mut emit: impl FnMut(&str)) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    let mut earlier = NlbMetrics {
        nodes: Vec::new(),
        targets: Vec::new(),
        total: CountersSnapshot::default(),
    };
    loop {
        tick.tick().await;
        let now = nlb.metrics();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        emit(&now.period_lines(&earlier, unix, period.as_secs_f64()));
        earlier = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn routing_keeps_nodes_to_their_zone_and_is_repeatable() {
        let targets: Vec<SocketAddr> = (0..4)
            .map(|i| addr(&format!("127.0.0.1:{}", 7000 + i)))
            .collect();
        let nlb = Nlb::new(NlbConfig::new(targets, 2));
        let mut seen = [[0u32; 4]; 2];
        for port in 20_000..22_000 {
            let client = addr(&format!("127.0.0.9:{port}"));
            let route = nlb.route(client);
            let (target, _) = route.target.unwrap();
            assert_eq!(target % 2, route.node, "cross-zone off keeps to the zone");
            let again = nlb.route(client);
            assert_eq!((again.node, again.target), (route.node, route.target));
            seen[route.node][target] += 1;
        }
        // Both nodes and both targets of each zone get a fair share.
        for (node, row) in seen.iter().enumerate() {
            for target in (node..4).step_by(2) {
                assert!(row[target] > 350, "{seen:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_node_with_an_empty_zone_uses_the_other_zones() {
        let a = addr("127.0.0.1:7000");
        let b = addr("127.0.0.1:7001");
        let nlb = Nlb::new(NlbConfig::new(vec![a, b], 2));
        nlb.deregister(b).unwrap();
        for port in 20_000..20_200 {
            let route = nlb.route(addr(&format!("127.0.0.9:{port}")));
            assert_eq!(route.target.map(|t| t.0), Some(0));
        }
        nlb.deregister(a).unwrap();
        assert!(nlb.route(addr("127.0.0.9:1")).target.is_none());
        nlb.register(b).unwrap();
        assert_eq!(nlb.route(addr("127.0.0.9:1")).target, Some((1, 2)));
        assert!(
            nlb.register(addr("127.0.0.1:1"))
                .unwrap_err()
                .to_string()
                .contains("7000")
        );
    }
}
