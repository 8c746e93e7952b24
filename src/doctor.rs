//! `stampede doctor`: what this host allows, and with a profile, how much of the plan fits here
//! and the exact commands that fix each shortfall. Reads only; changes nothing.

pub mod plan;

use std::fmt::Write;
use std::net::SocketAddr;

use crate::agent::pool::SourcePool;
use crate::host;
use crate::profile::{Profile, Protocol, TargetSpec};

/// Kernel memory per idle loopback TCP socket, measured on our machines: 513,000 connections
/// held by plain C processes took about 4.8 KB of slab per socket (BENCHMARKS.md, "A million
/// connections", has stampede's own figure: 10,146 B per connection for both ends).
pub const KERNEL_BYTES_PER_SOCKET: u64 = 4_800;

/// stampede's own memory per held connection, client side and built-in sink side, rounded up
/// from what `scripts/bench/hold.sh`, `scripts/bench/million.sh` and
/// `scripts/bench/protocols.sh` measured (BENCHMARKS.md): protocols above TCP keep their
/// TLS, WebSocket and HTTP/2 state per connection, kilobytes each.
pub fn user_bytes_per_connection(profile: &Profile) -> (u64, u64) {
    let o = &profile.protocol_options;
    let wss = o.websocket.as_ref().is_some_and(|w| w.secure);
    let h2s = o.http2.as_ref().is_some_and(|h| h.secure);
    match profile.protocol {
        Protocol::Tcp => (1_024, 1_100),
        Protocol::Tls => (11_000, 13_000),
        Protocol::WebSocket if wss => (25_000, 14_000),
        Protocol::WebSocket => (6_000, 7_300),
        Protocol::Mqtt => (1_900, 9_000),
        Protocol::Http2 if h2s => (26_400, 35_100),
        Protocol::Http2 => (17_300, 28_700),
    }
}

pub struct DoctorReport {
    pub text: String,
    /// 0 when the profile fits (or none was given), 1 when something falls short.
    pub exit_code: i32,
}

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn show(out: &mut String, name: &str, value: Option<String>) {
    let _ = writeln!(
        out,
        "  {name:<34} {}",
        value.unwrap_or_else(|| "(not available)".into())
    );
}

pub fn report(profile: Option<&Profile>) -> DoctorReport {
    let mut out = String::new();
    let limit = host::raise_fd_limit().or_else(|_| host::fd_limit()).ok();
    let range = host::ephemeral_port_range();
    let conntrack_max = host::sysctl_u64("net.netfilter.nf_conntrack_max");
    let memory = mem_available();
    let _ = writeln!(out, "host");
    show(
        &mut out,
        "RLIMIT_NOFILE (soft/hard)",
        limit.map(|l| format!("{} / {} (stampede raises soft to hard)", l.soft, l.hard)),
    );
    show(&mut out, "fs.nr_open", host::sysctl("fs.nr_open"));
    show(&mut out, "fs.file-max", host::sysctl("fs.file-max"));
    show(
        &mut out,
        "net.ipv4.ip_local_port_range",
        Some(format!(
            "{range} ({} ports per source IP and target)",
            range.len()
        )),
    );
    show(
        &mut out,
        "net.ipv4.ip_local_reserved_ports",
        host::sysctl("net.ipv4.ip_local_reserved_ports"),
    );
    show(
        &mut out,
        "net.core.somaxconn",
        host::sysctl("net.core.somaxconn"),
    );
    show(
        &mut out,
        "net.ipv4.tcp_max_syn_backlog",
        host::sysctl("net.ipv4.tcp_max_syn_backlog"),
    );
    show(
        &mut out,
        "net.ipv4.tcp_mem (pages)",
        host::sysctl("net.ipv4.tcp_mem"),
    );
    show(
        &mut out,
        "net.ipv4.tcp_tw_reuse",
        host::sysctl("net.ipv4.tcp_tw_reuse"),
    );
    show(
        &mut out,
        "conntrack (count / max)",
        conntrack_max
            .map(|max| {
                format!(
                    "{} / {max}",
                    host::sysctl("net.netfilter.nf_conntrack_count").unwrap_or_else(|| "?".into())
                )
            })
            .or_else(|| Some("not loaded (no flow cap)".into())),
    );
    show(
        &mut out,
        "memory available",
        memory.map(|m| format!("{} MiB", m / (1 << 20))),
    );
    let addresses = host::local_addresses();
    let list: Vec<String> = addresses
        .iter()
        .map(|(name, ip)| format!("{ip} ({name})"))
        .collect();
    show(&mut out, "local addresses", Some(list.join(", ")));
    let _ = writeln!(
        out,
        "  {:<34} all of 127.0.0.0/8 (loopback)",
        "bindable for loopback tests"
    );

    let Some(profile) = profile else {
        return DoctorReport {
            text: out,
            exit_code: 0,
        };
    };
    let peak = profile.peak_connections();
    let embedded = profile.target == TargetSpec::Embedded;
    let per_connection = if embedded { 2 } else { 1 };
    let _ = writeln!(
        out,
        "\nprofile {}: holds {peak} connections at peak",
        profile.name
    );
    let mut limits: Vec<(String, u64, Vec<String>)> = Vec::new();

    if let Some(l) = limit {
        let fits = l.hard.saturating_sub(host::FD_RESERVE) / per_connection;
        let need = peak * per_connection + host::FD_RESERVE;
        limits.push((
            format!("file descriptors ({} per process{})", l.hard, if embedded { ", embedded sink doubles sockets" } else { "" }),
            fits,
            vec![
                format!("ulimit -Hn {need} && ulimit -n {need}   # as root, in the shell that runs stampede"),
                format!("sysctl -w fs.nr_open={}   # if {need} is above fs.nr_open", need.max(1_048_576)),
                "or split the plan over several processes (agents)".to_string(),
            ],
        ));
    }
    let targets: Vec<SocketAddr> = match &profile.target {
        TargetSpec::Embedded => vec![SocketAddr::from(([127, 0, 0, 1], 1))],
        TargetSpec::Addrs(a) => a.clone(),
    };
    match SourcePool::new(&profile.sources, &targets, range) {
        Ok(pool) => {
            let sources = pool.sources.len() as u64;
            let wanted_sources = peak
                .div_ceil(targets.len() as u64)
                .div_ceil(pool.ports_per_pair.max(1));
            let mut fixes = Vec::new();
            match pool.port_range {
                Some(r) => fixes.push(format!(
                    "widen sources.port_range (now {r}, {} ports) toward the system range {}",
                    r.len(),
                    pool.system_range
                )),
                None => fixes.push(format!(
                    "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"   # {} ports per source IP and target",
                    65535 - 1024 + 1
                )),
            }
            if wanted_sources > sources {
                let loopback = targets.iter().all(|t| t.ip().is_loopback());
                fixes.push(if loopback {
                    format!(
                        "list {wanted_sources} source addresses, e.g. \"sources\": {{\"addrs\": [\"127.0.1.1-127.0.1.{}\"]}} (all of 127.0.0.0/8 binds on loopback)",
                        wanted_sources.min(254)
                    )
                } else {
                    format!(
                        "add {} more addresses to the NIC that faces the target (ip addr add ADDR/32 dev IFACE) and list them in sources.addrs",
                        wanted_sources - sources
                    )
                });
            }
            limits.push((
                format!(
                    "source ports ({sources} source(s) x {} ports x {} target(s))",
                    pool.ports_per_pair,
                    targets.len()
                ),
                pool.capacity(),
                fixes,
            ));
        }
        Err(e) => {
            let _ = writeln!(out, "  sources: {e}");
        }
    }
    if let Some(m) = memory {
        let (client, sink) = user_bytes_per_connection(profile);
        let user = client + if embedded { sink } else { 0 };
        let per = KERNEL_BYTES_PER_SOCKET * per_connection + user;
        limits.push((
            format!(
                "memory ({} MiB available, ~{per} bytes per {} connection: {} kernel, {user} stampede{})",
                m / (1 << 20),
                profile.protocol.name(),
                KERNEL_BYTES_PER_SOCKET * per_connection,
                if embedded { " with the embedded sink" } else { "" }
            ),
            m / per,
            vec!["use more hosts (agents), or a bigger machine".to_string()],
        ));
    }
    if let Some(max) = conntrack_max {
        limits.push((
            "conntrack table".to_string(),
            max,
            vec![format!(
                "sysctl -w net.netfilter.nf_conntrack_max={}",
                peak * 2
            )],
        ));
    }
    let mut short = false;
    for (name, fits, fixes) in &limits {
        let ok = *fits >= peak;
        short |= !ok;
        let _ = writeln!(
            out,
            "  {} {name}: up to {fits} connections",
            if ok { "ok   " } else { "SHORT" }
        );
        if !ok {
            for fix in fixes {
                let _ = writeln!(out, "        fix: {fix}");
            }
        }
    }
    let most = limits
        .iter()
        .map(|(_, fits, _)| *fits)
        .min()
        .unwrap_or(peak);
    if let Some(backlog) = host::sysctl_u64("net.core.somaxconn")
        && embedded
        && backlog < 65_535
    {
        let _ = writeln!(
            out,
            "  note  the sink's accept backlog is capped at somaxconn {backlog}; for fast ramps: sysctl -w net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535"
        );
    }
    let _ = writeln!(
        out,
        "verdict: this host can hold {} of the {peak} connections in one process{}",
        most.min(peak),
        if short { "; apply the fixes above" } else { "" }
    );
    DoctorReport {
        text: out,
        exit_code: i32::from(short),
    }
}
