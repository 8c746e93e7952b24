//! The kernel datapath's plan: the namespace, address block, VIP, targets and nodes it was
//! asked for, checked before anything is made, and the addresses derived from them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use crate::nlb::NlbConfig;

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
        if config.on_exhaustion != crate::nlb::Exhaustion::Drop {
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

    pub(super) fn ip(&self, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, c, d)
    }

    pub fn node_ip(&self, k: usize) -> Ipv4Addr {
        self.ip(1, 10 + k as u8)
    }

    /// The client addresses this host gets: `sources.addrs` for a profile.
    pub fn client_range(&self) -> String {
        format!("{}-{}", self.ip(4, 1), self.ip(4, 254))
    }

    pub(super) fn undo_file(&self) -> PathBuf {
        PathBuf::from(format!("/run/stampede-nlb-{}.undo", self.netns))
    }
}
