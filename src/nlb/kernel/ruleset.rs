//! The nftables text the kernel datapath installs: sets, named counters, the four chains, and
//! the DNAT rules rebuilt on each registration change.

use std::fmt::Write as _;

use super::KernelNlb;
use crate::nlb::lock;

impl KernelNlb {
    /// The whole ruleset: sets, named counters, and the four chains.
    pub(super) fn ruleset(&self) -> String {
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
    pub(super) fn dnat_rules(&self) -> String {
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
}
