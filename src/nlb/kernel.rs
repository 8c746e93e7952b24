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

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::{
    Balancer, CountersSnapshot, NlbConfig, NlbMetrics, NodeMetrics, TargetError, TargetMetrics,
    lock,
};

/// Where the kernel datapath lives and what it was asked to balance, validated.
#[derive(Clone, Debug)]
pub struct KernelPlan {
    /// The load balancer's network namespace; also the prefix of its interfaces.
    pub netns: String,
    /// The second octet of the 10.N.0.0/16 block its links and client addresses use.
    pub net: u8,
    pub vip: SocketAddrV4,
    pub targets: Vec<SocketAddrV4>,
    pub nodes: usize,
    pub config: NlbConfig,
}

/// The longest namespace name: interface names (`NS-cl`) must fit the kernel's 15 bytes.
const NETNS_MAX: usize = 10;
/// Node IPs are 10.N.1.10 and up, so the /24 leaves room for 64 of them and the targets.
const NODES_MAX: usize = 64;

impl KernelPlan {
    /// Checks what the kernel datapath can play, naming the flag, the value and a fix.
    pub fn new(
        netns: &str,
        net: u8,
        listen: SocketAddr,
        config: NlbConfig,
    ) -> Result<KernelPlan, String> {
        if netns.is_empty()
            || netns.len() > NETNS_MAX
            || !netns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!(
                "--netns {netns:?}: expected 1 to {NETNS_MAX} lowercase letters or digits (it \
                 prefixes interface names, which the kernel limits to 15 bytes)"
            ));
        }
        if config.client_ip_preservation {
            return Err(
                "--client-ip-preservation on: the kernel datapath plays preservation \
                 off only (the port wall it exists to show); use --datapath userspace for \
                 preservation on"
                    .into(),
            );
        }
        if config.on_exhaustion != super::Exhaustion::Drop {
            return Err(
                "--on-exhaustion reset: the kernel datapath drops a refused SYN, as an \
                 NLB does (the client sees a connect timeout); leave --on-exhaustion out or use \
                 --datapath userspace"
                    .into(),
            );
        }
        let nodes = config.node_ips.len();
        if nodes > NODES_MAX {
            return Err(format!(
                "--nodes {nodes}: the kernel datapath plays at most {NODES_MAX} nodes"
            ));
        }
        let v4 = |addr: SocketAddr, flag: &str| -> Result<SocketAddrV4, String> {
            match addr {
                SocketAddr::V4(a) if !a.ip().is_loopback() && !a.ip().is_unspecified() => Ok(a),
                _ => Err(format!(
                    "{flag} {addr}: the kernel datapath routes flows through its own namespace, \
                     which 127.0.0.0/8, IPv6 and 0.0.0.0 cannot cross; use IPv4 addresses such as \
                     10.{net}.2.100:443 for --listen and 10.{net}.1.100:7000 for --targets (it \
                     makes them reachable)"
                )),
            }
        };
        let vip = v4(listen, "--listen")?;
        let targets = config
            .targets
            .iter()
            .map(|t| v4(*t, "--targets"))
            .collect::<Result<Vec<_>, _>>()?;
        let block = |ip: Ipv4Addr| ip.octets()[0] == 10 && ip.octets()[1] == net;
        let link = |ip: Ipv4Addr| block(ip) && matches!(ip.octets()[2], 0 | 4);
        for (flag, ip) in std::iter::once(("--listen", *vip.ip()))
            .chain(targets.iter().map(|t| ("--targets", *t.ip())))
        {
            let o = ip.octets();
            if link(ip) || (block(ip) && o[2] == 1 && (o[3] < 10 + NODES_MAX as u8 || o[3] == 255))
            {
                return Err(format!(
                    "{flag} {ip}: inside the addresses the kernel datapath uses itself \
                     (10.{net}.0.0/24, 10.{net}.4.0/24, 10.{net}.1.0-73); pick another address, \
                     e.g. 10.{net}.1.100, or another --kernel-net"
                ));
            }
        }
        if targets.iter().any(|t| t == &vip) {
            return Err(format!(
                "--targets {vip}: the same as --listen; give the targets' own addresses"
            ));
        }
        Ok(KernelPlan {
            netns: netns.to_string(),
            net,
            vip,
            targets,
            nodes,
            config,
        })
    }

    fn ip(&self, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, c, d)
    }

    pub fn node_ip(&self, k: usize) -> Ipv4Addr {
        self.ip(1, 10 + k as u8)
    }

    /// The client addresses this host gets: `sources.addrs` for a profile.
    pub fn client_range(&self) -> String {
        format!("{}-{}", self.ip(4, 1), self.ip(4, 254))
    }

    fn undo_file(&self) -> PathBuf {
        PathBuf::from(format!("/run/stampede-nlb-{}.undo", self.netns))
    }
}

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

    /// The whole ruleset: sets, named counters, and the four chains.
    fn ruleset(&self) -> String {
        let p = &self.plan;
        let pairs = || (0..p.nodes).flat_map(|k| (0..p.targets.len()).map(move |i| (k, i)));
        let mut r = String::new();
        let _ = writeln!(r, "table ip nlb {{");
        // The concurrent wall: each (node, target) pair's ports are the elements of a set
        // sized --ports-per-target, keyed by the client's address and port. A SYN that cannot
        // add its element is refused; the release rule deletes it when the flow closes, the
        // slot keeper when conntrack forgets the flow. A deleted element leaves the set's
        // count when the set's garbage collector has run and its batch is freed, which needs
        // a timeout: 1000 days, collected every 100 ms. Measured here: a reconnect 1 s after
        // its close found the port free every time (12 of 12 storms, half of them with the
        // cores saturated), one 0.2 s after it half of the time.
        // (`ct count` would be exact too, but walks every flow of the pair on each new one,
        // up to HZ times a second: at 55,000 flows that takes both cores of a small VM while
        // a ramp lasts.)
        let ports = p.config.ports_per_target;
        for (k, i) in pairs() {
            let _ = writeln!(
                r,
                "  set slots_{k}_{i} {{ type ipv4_addr . inet_service; size {ports}; flags dynamic,timeout; timeout 1000d; gc-interval 100ms; }}"
            );
        }
        let _ = writeln!(
            r,
            "  set rate {{ type mark . ipv4_addr . inet_service; size 65535; flags dynamic,timeout; timeout 10m; }}"
        );
        // A refused SYN's client address, port and initial sequence number: its
        // retransmissions carry the same three and are dropped uncounted, while a later
        // connection from the same port (a new sequence number) is a flow of its own. Kept
        // for longer than a client's SYN retries last (about two minutes on Linux).
        let _ = writeln!(
            r,
            "  set refused {{ typeof ip saddr . tcp sport . tcp sequence; size 4194304; flags dynamic,timeout; timeout 3m; }}"
        );
        let _ = writeln!(r, "  counter elb_rst {{ }}");
        for (k, i) in pairs() {
            for name in ["new", "full", "rate", "crst", "trst", "bin", "bout"] {
                let _ = writeln!(r, "  counter {name}_{k}_{i} {{ }}");
            }
        }
        let _ = writeln!(r, "  chain nat_pre {{");
        let _ = writeln!(
            r,
            "    type nat hook prerouting priority dstnat; policy accept;"
        );
        r.push_str(&self.dnat_rules());
        let _ = writeln!(r, "  }}");
        let _ = writeln!(r, "  chain filter_fwd {{");
        let _ = writeln!(
            r,
            "    type filter hook forward priority filter; policy accept;"
        );
        let _ = writeln!(
            r,
            "    ct state invalid tcp flags & rst == 0 counter name elb_rst reject with tcp reset"
        );
        // A SYN retransmitted before the target answered: its flow was admitted (and marked)
        // by the first one, so it is neither checked against the walls nor counted again.
        let _ = writeln!(r, "    ct state new ct mark != 0 accept");
        let _ = writeln!(
            r,
            "    ct state new ip saddr . tcp sport . tcp sequence @refused drop"
        );
        let per_minute = p.config.new_per_minute;
        for (k, i) in pairs() {
            let t = p.targets[i];
            let pair = format!(
                "meta mark {} ip daddr {} tcp dport {}",
                k + 1,
                t.ip(),
                t.port()
            );
            // The per-minute wall first: a SYN over it is refused before it takes a port.
            let _ = writeln!(
                r,
                "    ct state new {pair} add @rate {{ meta mark . ip daddr . tcp dport limit rate over {per_minute}/minute burst {per_minute} packets }} add @refused {{ ip saddr . tcp sport . tcp sequence }} counter name rate_{k}_{i} drop"
            );
            // A SYN retransmitted before its flow was confirmed (the first was lost on the
            // way) finds its element and is let through uncounted; any other adds one, or
            // is refused when the set is full. So `new_K_I` counts each admitted flow once:
            // `NewFlowCount`, exact at every read.
            let _ = writeln!(
                r,
                "    ct state new {pair} ip saddr . tcp sport @slots_{k}_{i} ct mark set meta mark"
            );
            let _ = writeln!(
                r,
                "    ct state new {pair} ct mark 0 add @slots_{k}_{i} {{ ip saddr . tcp sport }} ct mark set meta mark counter name new_{k}_{i}"
            );
            let _ = writeln!(
                r,
                "    ct state new {pair} ct mark 0 add @refused {{ ip saddr . tcp sport . tcp sequence }} counter name full_{k}_{i} drop"
            );
        }
        for (k, i) in pairs() {
            let t = p.targets[i];
            let to = format!(
                "ct mark and 0xff == {} ip daddr {} tcp dport {}",
                k + 1,
                t.ip(),
                t.port()
            );
            let from = format!(
                "ct mark and 0xff == {} ip saddr {} tcp sport {}",
                k + 1,
                t.ip(),
                t.port()
            );
            // The release: a flow gives its slot back on the packet that closes it, a FIN
            // once each direction has sent one (bits 0x400 and 0x800 of its mark), or a
            // reset; bit 0x200 makes it once per flow. In the kernel, not from conntrack's
            // events, which are late under load and lost now and then (ENOBUFS).
            let flow = format!(
                "ct mark and 0x2ff == {} ct protocol tcp ct reply ip saddr {} ct reply proto-src {}",
                k + 1,
                t.ip(),
                t.port()
            );
            let release = format!(
                "ct mark set ct mark or 0x200 delete @slots_{k}_{i} {{ ct original ip saddr . ct original proto-src }}"
            );
            let fin = "tcp flags & fin == fin";
            let _ = writeln!(
                r,
                "    {flow} ct direction original {fin} ct mark set ct mark or 0x400"
            );
            let _ = writeln!(
                r,
                "    {flow} ct direction reply {fin} ct mark set ct mark or 0x800"
            );
            let _ = writeln!(r, "    {flow} ct mark and 0xc00 == 0xc00 {release}");
            let _ = writeln!(r, "    {flow} tcp flags & rst == rst {release}");
            let _ = writeln!(r, "    {to} tcp flags rst counter name crst_{k}_{i}");
            let _ = writeln!(r, "    {from} tcp flags rst counter name trst_{k}_{i}");
            let _ = writeln!(r, "    {to} counter name bin_{k}_{i}");
            let _ = writeln!(r, "    {from} counter name bout_{k}_{i}");
        }
        let _ = writeln!(r, "  }}");
        // What reaches this namespace's own stack: a forgotten flow's packet to the VIP, or a
        // flow no registered target could take.
        let _ = writeln!(r, "  chain filter_in {{");
        let _ = writeln!(
            r,
            "    type filter hook input priority filter; policy accept;"
        );
        let _ = writeln!(
            r,
            "    ct state invalid tcp flags & rst == 0 counter name elb_rst reject with tcp reset"
        );
        let _ = writeln!(
            r,
            "    ip daddr {} tcp dport {} tcp flags & rst == 0 counter name elb_rst reject with tcp reset",
            p.vip.ip(),
            p.vip.port()
        );
        let _ = writeln!(r, "  }}");
        let _ = writeln!(r, "  chain nat_post {{");
        let _ = writeln!(
            r,
            "    type nat hook postrouting priority srcnat; policy accept;"
        );
        for k in 0..p.nodes {
            let _ = writeln!(
                r,
                "    oifname \"{}-tl\" meta mark {} meta l4proto tcp snat ip to {}:1024-65535",
                p.netns,
                k + 1,
                p.node_ip(k)
            );
        }
        let _ = writeln!(r, "  }}");
        let _ = writeln!(r, "}}");
        r
    }

    /// Node choice, then each node's DNAT over the targets it may use now.
    fn dnat_rules(&self) -> String {
        let p = &self.plan;
        let registered: Vec<bool> = lock(&self.registered).iter().map(|r| r.0).collect();
        let mut r = String::new();
        let vip = format!("ip daddr {} tcp dport {}", p.vip.ip(), p.vip.port());
        let _ = writeln!(
            r,
            "    {vip} meta mark set jhash ip saddr . tcp sport mod {} seed 0x6e6f6465 offset 1",
            p.nodes
        );
        for k in 0..p.nodes {
            let all: Vec<usize> = (0..p.targets.len()).filter(|i| registered[*i]).collect();
            let zone: Vec<usize> = all.iter().copied().filter(|i| i % p.nodes == k).collect();
            let candidates = if p.config.cross_zone || zone.is_empty() {
                all
            } else {
                zone
            };
            if candidates.is_empty() {
                continue; // Left to the input chain: reset and counted.
            }
            let map: Vec<String> = candidates
                .iter()
                .enumerate()
                .map(|(j, i)| format!("{j} : {} . {}", p.targets[*i].ip(), p.targets[*i].port()))
                .collect();
            let _ = writeln!(
                r,
                "    {vip} meta mark {} dnat ip to jhash ip saddr . tcp sport mod {} seed 0x74617267 map {{ {} }}",
                k + 1,
                candidates.len(),
                map.join(", ")
            );
        }
        r
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

    /// Starts the slot keeper: `conntrack -E` in the namespace, read by one thread that
    /// notes each admitted flow (NEW) and, when conntrack forgets it (DESTROY: idle timeout,
    /// termination) or sees it close without the release rule's mark, hands its slot to a
    /// second thread that deletes the elements in batches. Returns once conntrack is
    /// subscribed, so no flow's events are missed.
    fn keep_slots(self: &Arc<Self>) -> Result<(), String> {
        let ns = self.plan.netns.clone();
        let mut child = Command::new("ip")
            // Line-buffered: a pipe would hold a quiet minute's events in stdio's buffer.
            .args([
                "netns",
                "exec",
                &ns,
                "stdbuf",
                "-oL",
                "conntrack",
                "-E",
                "-p",
                "tcp",
            ])
            .args(["-e", "NEW,UPDATE,DESTROY", "-b", "67108864"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `conntrack -E` in {ns}: {e}"))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("conntrack -E: no pipes".into());
        };
        *lock(&self.events) = Some(child);
        // Its first words on stderr (the buffer size it set) come after it subscribed.
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("nlb-kernel-events-err".into())
            .spawn(move || {
                let mut lines = BufReader::new(stderr).lines();
                let _ = ready_tx.send(lines.next().and_then(Result::ok));
                // Events the kernel could not queue are gone: say so once, since the ports of
                // the flows they were about then wait for the next check.
                let mut warned = false;
                for line in lines.map_while(Result::ok) {
                    if !warned && line.contains("ENOBUFS") {
                        warned = true;
                        eprintln!(
                            "stampede nlb: conntrack dropped events (ENOBUFS): the ports of \
                             flows it forgot (idle timeout, termination) wait for the 5 s check"
                        );
                    }
                }
            })
            .map_err(|e| format!("cannot start the event reader: {e}"))?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(line)) if line.contains("buffer size") => {}
            Ok(line) => {
                return Err(format!(
                    "`conntrack -E` in {ns} did not start: {}",
                    line.unwrap_or_default()
                ));
            }
            Err(_) => return Err(format!("`conntrack -E` in {ns} did not answer within 5 s")),
        }
        let (tx, rx) = mpsc::channel::<(usize, SocketAddrV4)>();
        let plan = self.plan.clone();
        std::thread::Builder::new()
            .name("nlb-kernel-events".into())
            .spawn(move || {
                let mut admitted = HashSet::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let (Some(pair), Some(client)) = (flow_pair(&line, &plan), flow_client(&line))
                    else {
                        continue;
                    };
                    let slot = (pair, client);
                    let event = line.split_whitespace().next().unwrap_or_default();
                    // A flow closed by FINs or a reset gave its slot back in the kernel.
                    let closed = (event == "[DESTROY]"
                        || matches!(flow_state(&line), Some("TIME_WAIT" | "CLOSE")))
                        && flow_mark(&line).is_some_and(|m| m & 0x200 == 0);
                    if event == "[NEW]" {
                        admitted.insert(slot);
                    } else if closed && admitted.remove(&slot) && tx.send(slot).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the event reader: {e}"))?;
        let plan = self.plan.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "a plain OS thread batches freed slots for 20 ms of wall time around a blocking recv_timeout"
        )]
        std::thread::Builder::new()
            .name("nlb-kernel-slots".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    let until = std::time::Instant::now() + Duration::from_millis(20);
                    while batch.len() < 4096 {
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(slot) => batch.push(slot),
                            Err(_) => break,
                        }
                    }
                    delete_slots(&plan, &batch);
                }
            })
            .map_err(|e| format!("cannot start the slot keeper: {e}"))?;
        Ok(())
    }

    /// Every pair's slot set as it is now, or None when a set cannot be read.
    fn slot_elements(&self) -> Option<Vec<(usize, SocketAddrV4)>> {
        let p = &self.plan;
        let mut all = Vec::new();
        for pair in 0..p.nodes * p.targets.len() {
            let (k, i) = (pair / p.targets.len(), pair % p.targets.len());
            let json = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &p.netns,
                    "nft",
                    "-j",
                    "list",
                    "set",
                    "ip",
                    "nlb",
                    &format!("slots_{k}_{i}"),
                ],
            )
            .ok()?;
            let value: serde_json::Value = serde_json::from_str(&json).ok()?;
            for item in value["nftables"].as_array().into_iter().flatten() {
                for elem in item["set"]["elem"].as_array().into_iter().flatten() {
                    // With a timeout the element is `{"elem": {"val": {"concat": ..}, ..}}`.
                    let key = elem.pointer("/elem/val").unwrap_or(elem);
                    let parts = key["concat"].as_array();
                    let ip = parts.and_then(|c| c.first()).and_then(|v| v.as_str());
                    let port = parts.and_then(|c| c.get(1)).and_then(|v| v.as_u64());
                    if let (Some(ip), Some(port)) = (ip, port)
                        && let (Ok(ip), Ok(port)) = (ip.parse(), u16::try_from(port))
                    {
                        all.push((pair, SocketAddrV4::new(ip, port)));
                    }
                }
            }
        }
        Some(all)
    }
}

impl Drop for KernelNlb {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Deletes slots from their pairs' sets in one batch; if one of them is already gone (the
/// batch is refused whole), one by one.
fn delete_slots(p: &KernelPlan, slots: &[(usize, SocketAddrV4)]) {
    if slots.is_empty() {
        return;
    }
    let line = |(pair, client): &(usize, SocketAddrV4)| {
        let (k, i) = (pair / p.targets.len(), pair % p.targets.len());
        format!(
            "delete element ip nlb slots_{k}_{i} {{ {} . {} }}\n",
            client.ip(),
            client.port()
        )
    };
    let batch: String = slots.iter().map(line).collect();
    if nft(&p.netns, &batch).is_err() {
        for slot in slots {
            let _ = nft(&p.netns, &line(slot));
        }
    }
}

/// A conntrack line's TCP state (`ESTABLISHED`, `TIME_WAIT`, ...), when it has one.
fn flow_state(line: &str) -> Option<&str> {
    line.split_whitespace().find(|w| {
        matches!(
            *w,
            "SYN_SENT"
                | "SYN_RECV"
                | "ESTABLISHED"
                | "FIN_WAIT"
                | "CLOSE_WAIT"
                | "LAST_ACK"
                | "TIME_WAIT"
                | "CLOSE"
                | "SYN_SENT2"
        )
    })
}

/// A conntrack line's mark.
fn flow_mark(line: &str) -> Option<usize> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("mark="))
        .and_then(|v| v.parse().ok())
}

/// A conntrack line's client: the original direction's source address and port.
fn flow_client(line: &str) -> Option<SocketAddrV4> {
    let words = || line.split_whitespace();
    let ip = words().find_map(|w| w.strip_prefix("src="))?;
    let port = words().find_map(|w| w.strip_prefix("sport="))?;
    format!("{ip}:{port}").parse().ok()
}

/// Which (node, target) pair an `conntrack -L` line belongs to: its mark and reply source.
fn flow_pair(line: &str, p: &KernelPlan) -> Option<usize> {
    // The low byte names the node; higher bits are the release rule's.
    let mark = flow_mark(line).map(|m| m & 0xff);
    let mut srcs = Vec::new();
    let mut sports = Vec::new();
    for field in line.split_whitespace() {
        if let Some(v) = field.strip_prefix("src=") {
            srcs.push(v);
        } else if let Some(v) = field.strip_prefix("sport=") {
            sports.push(v);
        }
    }
    let k = mark?.checked_sub(1).filter(|k| *k < p.nodes)?;
    let reply: SocketAddrV4 = format!("{}:{}", srcs.get(1)?, sports.get(1)?)
        .parse()
        .ok()?;
    let i = p.targets.iter().position(|t| *t == reply)?;
    Some(k * p.targets.len() + i)
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
