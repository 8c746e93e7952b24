//! What `run` and a swarm agent (`swarm::session`) both do around the engine: refuse a plan
//! this process cannot hold before anything opens (`preflight`), build the source pool, and play
//! the server-side phases (sink actions, NLB registrations) at their times. `RunError` is how
//! either says a run could not start (exit 2) or broke down (exit 3).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::agent::pool::SourcePool;
use crate::host;
use crate::profile::timeline;
use crate::profile::{Phase, Profile, TargetSpec};
use crate::sink;

/// A run that could not start (exit code 2) or broke down (exit code 3).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The plan does not fit this host or its inputs are unusable; nothing was opened.
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Fatal(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Plan(_) => 2,
            RunError::Fatal(_) => 3,
        }
    }
}

/// Connections, file descriptors and pool checked against this host before anything opens.
pub struct Preflight {
    pub pool: SourcePool,
    pub workers: usize,
}

/// What to check a plan against: where it connects, and how it will be run.
pub struct PreflightInput<'a> {
    pub profile: &'a Profile,
    /// Targets to use; `None` takes the profile's (a placeholder for the embedded sink).
    pub targets: Option<Vec<SocketAddr>>,
    /// Whether the embedded sink runs in this process (its sockets count too).
    pub embedded_here: bool,
    pub workers: Option<usize>,
    pub allow_overcommit: bool,
}

/// Refuses, before anything opens, a plan this process cannot hold: file descriptors, source
/// ports, unbindable source addresses, a kernel without `IP_LOCAL_PORT_RANGE`.
pub fn preflight(input: PreflightInput<'_>) -> Result<Preflight, RunError> {
    let profile = input.profile;
    let peak = profile.peak_connections();
    let embedded = input.embedded_here;
    let limit = host::raise_fd_limit()
        .map_err(|e| RunError::Fatal(format!("cannot read RLIMIT_NOFILE: {e}")))?;
    let sockets_per_connection = if embedded { 2 } else { 1 };
    let need = peak * sockets_per_connection + host::FD_RESERVE;
    if need > limit.soft {
        let fits = (limit.soft.saturating_sub(host::FD_RESERVE)) / sockets_per_connection;
        return Err(RunError::Plan(format!(
            "the plan holds {peak} connections{} and needs {need} file descriptors \
             (including {} in reserve), but this process may open {} (RLIMIT_NOFILE soft {}, \
             hard {}). Fix: raise the hard limit (`ulimit -Hn {need}` as root, LimitNOFILE= \
             in a systemd unit, or nofile in /etc/security/limits.conf), lower `connections` \
             to at most {fits}{}",
            if embedded {
                " plus as many embedded-sink sockets"
            } else {
                ""
            },
            host::FD_RESERVE,
            limit.soft,
            limit.soft,
            limit.hard,
            if embedded {
                ", or run `stampede sink` as separate processes and target them"
            } else {
                ""
            }
        )));
    }
    let targets: Vec<SocketAddr> = match (input.targets, &profile.target) {
        (Some(targets), _) => targets,
        // The embedded sink's port is known once it binds; capacity only needs the count.
        (None, TargetSpec::Embedded) => vec![SocketAddr::from(([127, 0, 0, 1], 1))],
        (None, TargetSpec::Addrs(addrs)) => addrs.clone(),
    };
    if let Some(i) = profile
        .phases
        .iter()
        .position(|p| matches!(p, Phase::Server { admin: None, .. }) && !input.embedded_here)
    {
        return Err(RunError::Plan(format!(
            "phases[{i}].server has no `admin` address, and only the embedded sink of a single \
             process can be told without one; give the sink's admin endpoint \
             (`stampede sink --admin ADDR`)"
        )));
    }
    let pool = source_pool(profile, targets, host::ephemeral_port_range())?;
    if !input.allow_overcommit {
        pool.check(peak)
            .map_err(|e| RunError::Plan(e.to_string()))?;
    }
    let local = host::local_addresses();
    for ip in profile.sources.addrs.iter() {
        if !host::can_bind(*ip, &local) {
            return Err(RunError::Plan(format!(
                "sources.addrs: {ip} is not an address of this host, so sockets cannot bind to \
                 it; add it (`ip addr add {ip}/32 dev lo` for a test, or to the NIC facing the \
                 target) or remove it from the profile"
            )));
        }
    }
    if let Some(range) = pool.port_range {
        crate::net::probe_port_range_support(range).map_err(RunError::Plan)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = input
        .workers
        .unwrap_or(cores)
        .clamp(1, peak.clamp(1, 1024) as usize);
    Ok(Preflight { pool, workers })
}

/// The source pool `profile` (a whole plan, or an agent's share) runs from towards `targets`
/// with this ephemeral port range; cutovers add target sets after the profile's own.
/// `pool.check(profile.peak_connections())` says whether it fits: what every run and agent
/// checks before it opens anything, and what tests/deploy.rs checks each pod's share with.
pub fn source_pool(
    profile: &Profile,
    targets: Vec<SocketAddr>,
    ephemeral: crate::profile::sources::PortRange,
) -> Result<SourcePool, RunError> {
    let mut sizes = vec![targets.len()];
    let mut targets = targets;
    for green in profile.cutover_targets() {
        sizes.push(green.len());
        targets.extend(green);
    }
    Ok(SourcePool::new(&profile.sources, &targets, ephemeral)
        .map_err(|e| RunError::Plan(e.to_string()))?
        .with_sets(&sizes))
}

/// Plays the profile's `server` phases: at each one's start, tells the sink what to do, through
/// `embedded` (the in-process sink) or the phase's admin endpoint. A sink that cannot be
/// reached is reported once and the run goes on: the clients' figures will show it.
pub async fn play_server_phases(
    profile: Profile,
    start: Instant,
    embedded: Option<Arc<sink::SinkControl>>,
) {
    let spans = timeline::spans(&profile);
    for (span, phase) in spans.iter().zip(&profile.phases) {
        if let Phase::Nlb { change, target, .. } = phase {
            tokio::time::sleep_until(start + span.start).await;
            let outcome = match profile.nlb {
                Some(link) => crate::nlb::admin_target(link.admin, *target, *change).await,
                None => Err("the profile names no nlb.admin".to_string()),
            };
            if let Err(e) = outcome {
                let _ = writeln!(
                    std::io::stderr(),
                    "stampede: phase {} (nlb): {e}",
                    span.index + 1
                );
            }
            continue;
        }
        let Phase::Server { action, admin, .. } = phase else {
            continue;
        };
        tokio::time::sleep_until(start + span.start).await;
        let outcome = match (admin, &embedded) {
            (Some(addr), _) => sink::admin_request(*addr, action).await,
            (None, Some(control)) => {
                control.apply(action);
                Ok(())
            }
            (None, None) => Err("no admin address and no embedded sink".to_string()),
        };
        if let Err(e) = outcome {
            let _ = writeln!(
                std::io::stderr(),
                "stampede: phase {} (server): {e}",
                span.index + 1
            );
        }
    }
}
