//! `stampede nlb`: the NLB emulator, as a user-space proxy or a kernel datapath.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::signal::Signals;
use super::{bind_admin, cannot_listen, eprint_line, parse_duration_arg, parse_duration_or_zero};
use crate::nlb::kernel::{KernelNlb, KernelPlan};
use crate::nlb::{Balancer, NlbConfig};

pub const NLB_HELP: &str = "Examples:
  stampede nlb --listen 127.0.0.1:7100 --targets 127.0.0.1:7000
  stampede nlb --listen 127.0.0.1:7100 --targets 127.0.0.1:7000,127.0.0.1:7001 --nodes 2 \\
      --ports-per-target 1000 --on-exhaustion reset --admin 127.0.0.1:7101 --metrics-period 5s
  stampede nlb --listen 127.0.0.1:7100 --targets 127.0.0.1:7000 --idle-timeout 2s
  curl -X POST http://127.0.0.1:7101/targets/127.0.0.1:7000/deregister
  curl http://127.0.0.1:7101/metrics

Node k (from 0) sends from 127.100.0.(k+1) unless --node-ips says otherwise; target i is in
zone i mod nodes. With client-IP preservation off, each (node, target) pair has
--ports-per-target source ports and --new-per-minute new allocations a minute; a flow that
finds none is dropped or reset and counts in PortAllocationErrorCount.
The first lines printed are `listening on ADDR` (and `admin on ADDR`), then one JSON line per
node and per target each --metrics-period. The admin endpoint (GET /metrics, GET /metrics.json,
POST /targets/ADDR/register|deregister) has no authentication: keep it on loopback.

Limit: every flow holds two sockets, so one process holds about half its file limit in flows
(about 9,900 with a 20,000 limit). Run one process per node (--nodes 1 --node-ips IP, all on
the same --listen, which SO_REUSEPORT spreads over them, each with its own --admin) to go
further, or use --datapath kernel (nftables and conntrack, no socket per flow; root).";

/// `on` or `off`, as AWS writes target-group attributes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn on(self) -> bool {
        self == OnOff::On
    }
}

#[derive(Args, Debug)]
pub struct NlbArgs {
    /// Address clients connect to (the load balancer's listener).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Target addresses (IP:PORT), comma-separated or repeated.
    #[arg(long, value_name = "ADDR", value_delimiter = ',', required = true)]
    pub targets: Vec<SocketAddr>,
    /// Load-balancer nodes (one per availability zone).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=254))]
    pub nodes: u16,
    /// Source address of each node, one per node (default 127.100.0.1, 127.100.0.2, ...).
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub node_ips: Vec<std::net::IpAddr>,
    /// Connect to targets from the client's own IP (on) or the node's (off).
    #[arg(long, value_enum, value_name = "on|off", default_value = "off")]
    pub client_ip_preservation: OnOff,
    /// With preservation off: simultaneous flows per (node, target) pair.
    #[arg(long, value_name = "N", default_value_t = 55_000)]
    pub ports_per_target: u32,
    /// With preservation off: new port allocations per (node, target) pair per minute.
    #[arg(long, value_name = "N", default_value_t = 55_000)]
    pub new_per_minute: u32,
    /// Forget a flow with no bytes either way for this long (AWS: 350s; sub-minute values
    /// are allowed for rehearsals and tests).
    #[arg(long, value_name = "DURATION", default_value = "350s", value_parser = parse_duration_arg)]
    pub idle_timeout: Duration,
    /// A flow that gets no port: `drop` (held unanswered, as a dropped SYN looks to a client
    /// that already connected) or `reset`.
    #[arg(long, value_enum, value_name = "drop|reset", default_value = "drop")]
    pub on_exhaustion: crate::nlb::Exhaustion,
    /// Let every node use every target (on), or only its own zone's (off).
    #[arg(long, value_enum, value_name = "on|off", default_value = "off")]
    pub cross_zone: OnOff,
    /// After a deregistration, how long existing flows may continue.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration_or_zero)]
    pub deregistration_delay: Duration,
    /// Close a deregistered target's flows (with resets) when the delay ends.
    #[arg(long, value_enum, value_name = "on|off", default_value = "off")]
    pub connection_termination: OnOff,
    /// Serve the admin endpoint (metrics, register, deregister) on this address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// How often to print the counters as JSON lines on stdout.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration_arg)]
    pub metrics_period: Duration,
    /// No JSON metric lines on stdout.
    #[arg(long, short)]
    pub quiet: bool,
    /// Who carries the flows: `userspace` (a proxy, two sockets per flow, no root) or
    /// `kernel` (nftables and conntrack in a network namespace of its own; root, Linux).
    #[arg(
        long,
        value_enum,
        value_name = "userspace|kernel",
        default_value = "userspace"
    )]
    pub datapath: Datapath,
    /// Kernel datapath: the load balancer's network namespace (also its interfaces' prefix).
    #[arg(long, value_name = "NAME", default_value = "snlb")]
    pub netns: String,
    /// Kernel datapath: N in the 10.N.0.0/16 block its links and client addresses use.
    #[arg(long, value_name = "N", default_value_t = 215)]
    pub kernel_net: u8,
}

/// `stampede nlb --datapath`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datapath {
    Userspace,
    Kernel,
}

impl NlbArgs {
    /// The load balancer's settings from its flags, checked; a usage error names the flag.
    fn config(&self) -> Result<NlbConfig, String> {
        let nodes = usize::from(self.nodes);
        let node_ips = if self.node_ips.is_empty() {
            crate::nlb::default_node_ips(nodes)
        } else if self.datapath == Datapath::Kernel {
            return Err("--node-ips: the kernel datapath numbers its nodes itself \
                 (10.N.1.10 and up); leave --node-ips out"
                .to_string());
        } else if self.node_ips.len() == nodes {
            self.node_ips.clone()
        } else {
            return Err(format!(
                "--node-ips: {} addresses for --nodes {nodes}; give one per node",
                self.node_ips.len()
            ));
        };
        let config = NlbConfig {
            targets: self.targets.clone(),
            node_ips,
            client_ip_preservation: self.client_ip_preservation.on(),
            ports_per_target: self.ports_per_target,
            new_per_minute: self.new_per_minute,
            idle_timeout: self.idle_timeout,
            on_exhaustion: self.on_exhaustion,
            cross_zone: self.cross_zone.on(),
            deregistration_delay: self.deregistration_delay,
            connection_termination: self.connection_termination.on(),
        };
        config.validate()?;
        Ok(config)
    }
}

pub async fn nlb_command(args: NlbArgs) -> i32 {
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            eprint_line(&format!("stampede nlb: {e}"));
            return 2;
        }
    };
    match args.datapath {
        Datapath::Userspace => userspace(&args, config).await,
        Datapath::Kernel => kernel(&args, config).await,
    }
}

/// The user-space proxy: two sockets per flow, no root.
async fn userspace(args: &NlbArgs, config: NlbConfig) -> i32 {
    if let Err(e) = crate::host::raise_fd_limit() {
        eprint_line(&format!("stampede nlb: cannot raise RLIMIT_NOFILE: {e}"));
    }
    let listener = match crate::sink::bind(args.listen) {
        Ok(listener) => listener,
        Err(e) => return cannot_listen("nlb", "--listen", args.listen, &e),
    };
    let admin = match bind_admin("nlb", args.admin).await {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    let range = crate::host::ephemeral_port_range();
    let kernel_ports = u32::from(range.last.saturating_sub(range.first)) + 1;
    if !config.client_ip_preservation && config.ports_per_target > kernel_ports {
        eprint_line(&format!(
            "stampede nlb: --ports-per-target {} is above this host's ephemeral range \
             ({}-{}, {kernel_ports} ports): the kernel will run out first (also counted as \
             port allocation errors); widen net.ipv4.ip_local_port_range for an exact wall",
            config.ports_per_target, range.first, range.last
        ));
    }
    let nlb = crate::nlb::Nlb::new(config);
    println!(
        "listening on {}",
        listener.local_addr().map_or(args.listen, |a| a)
    );
    serve(args, admin, nlb.clone());
    crate::nlb::run(listener, nlb, super::signal::shutdown()).await;
    0
}

/// The kernel datapath: builds the namespace and rules, serves the same admin endpoint and
/// metric lines, and removes everything on SIGINT or SIGTERM.
async fn kernel(args: &NlbArgs, config: NlbConfig) -> i32 {
    let plan = match KernelPlan::new(&args.netns, args.kernel_net, args.listen, config) {
        Ok(plan) => plan,
        Err(e) => {
            eprint_line(&format!("stampede nlb: {e}"));
            return 2;
        }
    };
    let admin = match bind_admin("nlb", args.admin).await {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    // Before anything is built, so that a signal at any moment after it tears down.
    let mut signals = Signals::new();
    let nlb = match tokio::task::spawn_blocking(move || KernelNlb::start(plan)).await {
        Ok(Ok(nlb)) => nlb,
        Ok(Err(e)) => {
            eprint_line(&format!("stampede nlb: --datapath kernel: {e}"));
            return 2;
        }
        Err(e) => {
            eprint_line(&format!("stampede nlb: --datapath kernel: {e}"));
            return 3;
        }
    };
    let plan = nlb.plan();
    println!(
        "listening on {} (kernel datapath, namespace {})",
        plan.vip, plan.netns
    );
    println!(
        "clients bind {} (sources.addrs); node IPs {}",
        plan.client_range(),
        (0..plan.nodes)
            .map(|k| plan.node_ip(k).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    serve(args, admin, nlb.clone());
    signals.next().await;
    nlb.teardown();
    eprint_line(&format!(
        "stampede nlb: removed namespace {} and its routes",
        nlb.plan().netns
    ));
    0
}

/// After `listening on`: the admin endpoint (`admin on ADDR`) and the metric lines.
fn serve(args: &NlbArgs, admin: Option<tokio::net::TcpListener>, nlb: Arc<dyn Balancer>) {
    if let Some(admin) = admin {
        if let Ok(bound) = admin.local_addr() {
            println!("admin on {bound}");
        }
        tokio::spawn(crate::nlb::serve_admin(
            admin,
            nlb.clone(),
            std::future::pending(),
        ));
    }
    let _ = std::io::stdout().flush();
    if !args.quiet {
        tokio::spawn(crate::nlb::report_metrics(
            nlb,
            args.metrics_period,
            |lines| {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(lines.as_bytes());
                let _ = stdout.flush();
            },
        ));
    }
}
