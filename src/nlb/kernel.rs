//! `stampede nlb --datapath kernel`: the load balancer played by nftables and conntrack in a
//! network namespace of its own, so a flow costs a conntrack entry (a few hundred bytes of
//! kernel memory) instead of two proxy sockets, and a refused flow is what AWS makes it: a SYN
//! dropped, so the client sees a connect timeout.
//!
//! Topology, for namespace `NS` and block 10.N.0.0/16 (`--kernel-net N`):
//!
//! ```text
//!  this host (clients, targets)                 NS (the load balancer)
//!  NS-c 10.N.0.1/24  ---------- veth ---------- NS-cl 10.N.0.2/24, VIP (--listen) on lo
//!  NS-t 10.N.1.1/24  ---------- veth ---------- NS-tl 10.N.1.2/24, node k at 10.N.1.(10+k)
//!  clients bind 10.N.4.1-254 (a local route on lo), targets are this host's addresses
//! ```
//!
//! In NS, for a new flow: prerouting picks the node by a hash of the client's IP and port
//! (the packet's mark, node k = mark k+1) and DNATs to one of the node's registered targets by
//! a second hash (its own zone's with cross-zone off, as the user-space emulator does); the
//! forward chain refuses the flow when its (node, target) pair has spent its `--new-per-minute`
//! allocations (a token bucket holding a minute's worth) or already holds `--ports-per-target`
//! flows (its slot set, sized so, is full), counting it once in a set of refused SYNs so that
//! their retransmissions are dropped uncounted; postrouting SNATs to the node's IP. A closed
//! flow gives its slot back in the kernel, on the packet that closes it (its second FIN, or a
//! reset), so a client reconnecting at once finds the port free. A flow conntrack forgets
//! (idle timeout, termination) gives it back when `conntrack -E` reports it, and a check
//! against conntrack's table every 5 s frees any whose event was lost. Conntrack forgets
//! an established flow after `--idle-timeout`, and a packet of a forgotten flow is answered with
//! a reset (`TCP_ELB_Reset_Count`). Deregistration rebuilds the DNAT rules (existing flows keep
//! their conntrack binding); with termination on, the target's flows are deleted from conntrack
//! when the delay ends, so their next packet is reset.
//!
//! Everything made is recorded in `/run/stampede-nlb-NS.undo` before it is made; a new start
//! with the same namespace first undoes what a crashed run left behind, and `teardown` undoes
//! it on exit. It must not send traffic anywhere but the configured targets.
//!
//! Files: `plan` (the validated request), `ruleset` (the nftables text), `keeper` (conntrack's
//! events and the slots they free); this file makes and unmakes the namespace and reads the
//! counters.

mod keeper;
mod plan;
mod ruleset;

use keeper::{delete_slots, flow_client, flow_pair, flow_state};
pub use plan::KernelPlan;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    Balancer, CountersSnapshot, NlbMetrics, NodeMetrics, TargetError, TargetMetrics, lock,
};

/// Runs a command to completion; an error names it and carries what it printed.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nft -f -` in the namespace: a whole ruleset or a batch, applied atomically.
fn nft(netns: &str, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `ip netns exec {netns} nft`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Undoes what a previous run recorded (newest first), ignoring what is already gone.
fn undo(file: &PathBuf) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    for line in text.lines().rev() {
        let args: Vec<&str> = line.split_whitespace().collect();
        if let Some((program, rest)) = args.split_first() {
            let _ = run(program, rest);
        }
    }
    let _ = std::fs::remove_file(file);
}

/// The running kernel datapath: its plan, registrations and the latest counters.
pub struct KernelNlb {
    plan: KernelPlan,
    registered: Mutex<Vec<(bool, u64)>>,
    latest: Mutex<NlbMetrics>,
    torn_down: AtomicBool,
    /// `conntrack -E` in the namespace, feeding the slot keeper; killed on teardown.
    events: Mutex<Option<Child>>,
}

impl KernelNlb {
    /// Builds the namespace, links, routes and rules (after undoing a crashed run's), and
    /// starts reading the kernel's counters. Needs root, `ip`, `nft` and `conntrack`.
    pub fn start(plan: KernelPlan) -> Result<Arc<KernelNlb>, String> {
        for tool in ["ip", "nft", "conntrack"] {
            if run(tool, &["--version"]).is_err() && run(tool, &["-V"]).is_err() {
                return Err(format!(
                    "the kernel datapath needs `{tool}` (apt-get install iproute2 nftables \
                     conntrack), and root"
                ));
            }
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "--datapath kernel builds a network namespace and needs root; run as \
                 root, or use --datapath userspace"
                    .into(),
            );
        }
        let file = plan.undo_file();
        undo(&file);
        let _ = run("ip", &["netns", "delete", &plan.netns]);
        let nlb = Arc::new(KernelNlb {
            registered: Mutex::new(vec![(true, 1); plan.targets.len()]),
            latest: Mutex::new(empty_metrics(&plan, &[true].repeat(plan.targets.len()))),
            plan,
            torn_down: AtomicBool::new(false),
            events: Mutex::new(None),
        });
        if let Err(e) = nlb.build().and_then(|()| nlb.keep_slots()) {
            nlb.teardown();
            return Err(e);
        }
        let poller = Arc::downgrade(&nlb);
        #[expect(
            clippy::disallowed_methods,
            reason = "a plain OS thread polls the kernel's counters; no tokio runtime runs here"
        )]
        std::thread::Builder::new()
            .name("nlb-kernel-poll".into())
            .spawn(move || {
                let mut polls = 0u64;
                while let Some(nlb) = poller.upgrade() {
                    if nlb.torn_down.load(Ordering::Relaxed) {
                        break;
                    }
                    // Every 5 s, the slot sets are checked against conntrack's table.
                    let reconcile = polls % 10 == 9;
                    polls += 1;
                    if let Ok(metrics) = nlb.read_counters(reconcile) {
                        *lock(&nlb.latest) = metrics;
                    }
                    drop(nlb);
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
            .map_err(|e| format!("cannot start the counter reader: {e}"))?;
        Ok(nlb)
    }

    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    fn build(&self) -> Result<(), String> {
        let p = &self.plan;
        let ns = p.netns.as_str();
        let file = p.undo_file();
        let mut undo_log = std::fs::File::create(&file)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        let mut record = |line: &str| -> Result<(), String> {
            writeln!(undo_log, "{line}")
                .and_then(|()| undo_log.sync_data())
                .map_err(|e| format!("cannot write {}: {e}", file.display()))
        };
        let (c, cl, t, tl) = (
            format!("{ns}-c"),
            format!("{ns}-cl"),
            format!("{ns}-t"),
            format!("{ns}-tl"),
        );
        let cidr = |ip: Ipv4Addr, len: u8| format!("{ip}/{len}");
        record(&format!("ip netns delete {ns}"))?;
        run("ip", &["netns", "add", ns])?;
        let nsip = |args: &[&str]| -> Result<String, String> {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        nsip(&["link", "set", "lo", "up"])?;
        for (root, lb, c3) in [(&c, &cl, 0u8), (&t, &tl, 1u8)] {
            record(&format!("ip link delete {root}"))?;
            run(
                "ip",
                &[
                    "link", "add", root, "type", "veth", "peer", "name", lb, "netns", ns,
                ],
            )?;
            run("ip", &["addr", "add", &cidr(p.ip(c3, 1), 24), "dev", root])?;
            run("ip", &["link", "set", root, "up"])?;
            nsip(&["addr", "add", &cidr(p.ip(c3, 2), 24), "dev", lb])?;
            nsip(&["link", "set", lb, "up"])?;
        }
        nsip(&["addr", "add", &cidr(*p.vip.ip(), 32), "dev", "lo"])?;
        for k in 0..p.nodes {
            nsip(&["addr", "add", &cidr(p.node_ip(k), 32), "dev", &tl])?;
        }
        run(
            "ip",
            &[
                "route",
                "add",
                &cidr(*p.vip.ip(), 32),
                "via",
                &p.ip(0, 2).to_string(),
            ],
        )?;
        let clients = format!("10.{}.4.0/24", p.net);
        record(&format!("ip route del local {clients} dev lo"))?;
        run("ip", &["route", "add", "local", &clients, "dev", "lo"])?;
        nsip(&["route", "add", &clients, "via", &p.ip(0, 1).to_string()])?;
        let local = crate::host::local_addresses();
        let mut added: Vec<Ipv4Addr> = Vec::new();
        for target in &p.targets {
            let ip = *target.ip();
            if added.contains(&ip) {
                continue;
            }
            added.push(ip);
            let in_link = ip.octets()[..3] == p.ip(1, 0).octets()[..3];
            if !in_link {
                nsip(&[
                    "route",
                    "add",
                    &cidr(ip, 32),
                    "via",
                    &p.ip(1, 1).to_string(),
                ])?;
            }
            if !local.iter().any(|(_, a)| *a == IpAddr::V4(ip)) {
                record(&format!("ip addr del {} dev lo", cidr(ip, 32)))?;
                run("ip", &["addr", "add", &cidr(ip, 32), "dev", "lo"])?;
            }
        }
        let sysctl = |kv: &str| -> Result<(), String> {
            run("ip", &["netns", "exec", ns, "sysctl", "-qw", kv]).map(drop)
        };
        sysctl("net.ipv4.ip_forward=1")?;
        nft(ns, &self.ruleset())?;
        // Conntrack's sysctls appear in a namespace once it has a conntrack user: the rules.
        sysctl("net.netfilter.nf_conntrack_tcp_loose=0")?;
        sysctl(&format!(
            "net.netfilter.nf_conntrack_tcp_timeout_established={}",
            p.config.idle_timeout.as_secs().max(1)
        ))?;
        Ok(())
    }

    fn reload_dnat(&self) -> Result<(), String> {
        let script = format!(
            "flush chain ip nlb nat_pre\ntable ip nlb {{\n  chain nat_pre {{\n{}  }}\n}}\n",
            self.dnat_rules()
        );
        nft(&self.plan.netns, &script)
    }

    fn target_index(&self, addr: SocketAddr) -> Result<usize, TargetError> {
        self.plan
            .targets
            .iter()
            .position(|t| SocketAddr::V4(*t) == addr)
            .ok_or_else(|| {
                TargetError::unknown(addr, self.plan.targets.iter().map(|t| SocketAddr::V4(*t)))
            })
    }

    /// Every named counter of the table: (packets, bytes) by name.
    fn named_counters(&self) -> Result<HashMap<String, (u64, u64)>, String> {
        let ns = self.plan.netns.as_str();
        let json = run(
            "ip",
            &[
                "netns", "exec", ns, "nft", "-j", "list", "counters", "table", "ip", "nlb",
            ],
        )?;
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("nft -j: {e}"))?;
        let mut counters = HashMap::new();
        for item in value["nftables"].as_array().into_iter().flatten() {
            let c = &item["counter"];
            if let Some(name) = c["name"].as_str() {
                counters.insert(
                    name.to_string(),
                    (
                        c["packets"].as_u64().unwrap_or(0),
                        c["bytes"].as_u64().unwrap_or(0),
                    ),
                );
            }
        }
        Ok(counters)
    }

    /// Reads the named counters and conntrack's established flows.
    fn read_counters(&self, reconcile: bool) -> Result<NlbMetrics, String> {
        let p = &self.plan;
        let ns = p.netns.as_str();
        let counters = self.named_counters()?;
        // The sets before conntrack's table, so every element's flow is in the table by then.
        let slots = if reconcile {
            self.slot_elements()
        } else {
            None
        };
        let conntrack =
            run("ip", &["netns", "exec", ns, "conntrack", "-L", "-p", "tcp"]).unwrap_or_default();
        let mut active = vec![0u64; p.nodes * p.targets.len()];
        let mut holding = HashSet::new();
        for line in conntrack.lines() {
            let Some(pair) = flow_pair(line, p) else {
                continue;
            };
            let state = flow_state(line);
            if state == Some("ESTABLISHED") {
                active[pair] += 1;
            }
            if !matches!(state, Some("TIME_WAIT" | "CLOSE"))
                && let Some(client) = flow_client(line)
            {
                holding.insert((pair, client));
            }
        }
        if let Some(slots) = slots {
            let stale: Vec<_> = slots
                .into_iter()
                .filter(|slot| !holding.contains(slot))
                .collect();
            delete_slots(p, &stale);
        }
        let registered: Vec<bool> = lock(&self.registered).iter().map(|r| r.0).collect();
        let mut metrics = empty_metrics(p, &registered);
        let get = |name: String| counters.get(&name).copied().unwrap_or((0, 0));
        for k in 0..p.nodes {
            for i in 0..p.targets.len() {
                let pair = CountersSnapshot {
                    active: active[k * p.targets.len() + i],
                    new_flows: get(format!("new_{k}_{i}")).0,
                    port_allocation_errors: get(format!("full_{k}_{i}")).0
                        + get(format!("rate_{k}_{i}")).0,
                    port_allocation_errors_concurrent: get(format!("full_{k}_{i}")).0,
                    port_allocation_errors_per_minute: get(format!("rate_{k}_{i}")).0,
                    elb_resets: 0,
                    target_resets: get(format!("trst_{k}_{i}")).0,
                    client_resets: get(format!("crst_{k}_{i}")).0,
                    bytes: get(format!("bin_{k}_{i}")).1 + get(format!("bout_{k}_{i}")).1,
                };
                metrics.nodes[k].counters.add(&pair);
                metrics.targets[i].counters.add(&pair);
                metrics.total.add(&pair);
            }
        }
        // A reset for a forgotten flow cannot be told apart by node or target: the flow is
        // what the kernel forgot. It is counted in the total only.
        metrics.total.elb_resets = get("elb_rst".into()).0;
        Ok(metrics)
    }

    /// Removes everything `start` made; safe to call twice.
    pub fn teardown(&self) {
        if !self.torn_down.swap(true, Ordering::Relaxed) {
            if let Some(mut child) = lock(&self.events).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            undo(&self.plan.undo_file());
        }
    }
}

impl Drop for KernelNlb {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn empty_metrics(p: &KernelPlan, registered: &[bool]) -> NlbMetrics {
    NlbMetrics {
        nodes: (0..p.nodes)
            .map(|k| NodeMetrics {
                node: k,
                ip: p.node_ip(k).to_string(),
                zone: k,
                counters: CountersSnapshot::default(),
            })
            .collect(),
        targets: p
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| TargetMetrics {
                target: t.to_string(),
                zone: i % p.nodes.max(1),
                registered: registered.get(i).copied().unwrap_or(true),
                counters: CountersSnapshot::default(),
            })
            .collect(),
        total: CountersSnapshot::default(),
    }
}

impl Balancer for KernelNlb {
    fn metrics(&self) -> NlbMetrics {
        let mut m = lock(&self.latest).clone();
        // New flows as of now, not of the last poll (one `nft` call): a run's last second
        // counts too.
        let n = self.plan.targets.len();
        m.total.new_flows = 0;
        for node in &mut m.nodes {
            node.counters.new_flows = 0;
        }
        for target in &mut m.targets {
            target.counters.new_flows = 0;
        }
        let Ok(counters) = self.named_counters() else {
            return m;
        };
        for pair in 0..self.plan.nodes * n {
            let (k, i) = (pair / n, pair % n);
            let count = counters.get(&format!("new_{k}_{i}")).map_or(0, |c| c.0);
            m.nodes[pair / n].counters.new_flows += count;
            m.targets[pair % n].counters.new_flows += count;
            m.total.new_flows += count;
        }
        m
    }

    fn register_target(self: Arc<Self>, addr: SocketAddr) -> Result<(), TargetError> {
        let i = self.target_index(addr)?;
        {
            let mut r = lock(&self.registered);
            if r[i].0 {
                return Ok(());
            }
            r[i] = (true, r[i].1 + 1);
        }
        self.reload_dnat().map_err(TargetError::Datapath)?;
        lock(&self.latest).targets[i].registered = true;
        Ok(())
    }

    fn deregister_target(self: Arc<Self>, addr: SocketAddr) -> Result<(), TargetError> {
        let i = self.target_index(addr)?;
        let generation = {
            let mut r = lock(&self.registered);
            if !r[i].0 {
                return Ok(());
            }
            r[i].0 = false;
            r[i].1
        };
        self.reload_dnat().map_err(TargetError::Datapath)?;
        lock(&self.latest).targets[i].registered = false;
        if self.plan.config.connection_termination {
            let nlb = self.clone();
            let delay = self.plan.config.deregistration_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let still = lock(&nlb.registered)[i] == (false, generation);
                if still {
                    let t = nlb.plan.targets[i];
                    let (ip, port) = (t.ip().to_string(), t.port().to_string());
                    let ns = nlb.plan.netns.clone();
                    // Forgotten by conntrack, each flow's next packet is reset (and counted).
                    let _ = tokio::task::spawn_blocking(move || {
                        run(
                            "ip",
                            &[
                                "netns",
                                "exec",
                                &ns,
                                "conntrack",
                                "-D",
                                "-p",
                                "tcp",
                                "--reply-src",
                                &ip,
                                "--reply-port-src",
                                &port,
                            ],
                        )
                    })
                    .await;
                }
            });
        }
        Ok(())
    }
}
