//! `stampede agent`: join a coordinator and play a share of its profile.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{eprint_line, parse_duration_arg, read_token};
use crate::collect::Outputs;
use crate::swarm::session::{self, AgentOptions, Cidr};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Coordinator address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: String,
    /// File with the shared secret; required unless the coordinator is on loopback.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Name in the coordinator's reports (default: the host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Source addresses for this agent, replacing the profile's (addresses, CIDRs, ranges).
    #[arg(long, value_name = "SPEC", value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Targets this agent may load; a plan outside them is refused. Default: loopback only.
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub allow_targets: Vec<String>,
    /// The longest lease this agent accepts from a coordinator (at least 3s); a plan with a
    /// longer one is refused, so no coordinator can make load outlive it by more.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration_arg)]
    pub max_lease: Duration,
    /// Keep dialling a coordinator that is not up yet for this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration_arg)]
    pub retry_for: Duration,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Write this agent's own summary.json and latency.hlog (its share only).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Only errors on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Benchmark mode: join as N synthetic agents that send realistic reports and open no
    /// load sockets (see BENCHMARKS.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub synthetic: Option<u16>,
}

/// The agent's options from its flags, or a usage error naming the flag.
fn options(args: AgentArgs, token: Option<Vec<u8>>) -> Result<AgentOptions, String> {
    let mut allow_targets = Vec::new();
    for text in &args.allow_targets {
        allow_targets.push(Cidr::parse(text).map_err(|e| format!("--allow-targets {e}"))?);
    }
    if allow_targets.is_empty() {
        allow_targets = session::loopback_only();
    }
    if args.max_lease < crate::wire::MIN_LEASE {
        return Err(format!(
            "--max-lease {:?} is under {:?} (3 keepalive intervals); no coordinator could be followed",
            args.max_lease,
            crate::wire::MIN_LEASE
        ));
    }
    for spec in &args.sources {
        crate::profile::sources::expand(spec).map_err(|e| format!("--sources {spec:?}: {e}"))?;
    }
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    Ok(AgentOptions {
        coordinator: args.coordinator,
        token,
        name,
        sources: args.sources,
        allow_targets,
        max_lease: args.max_lease,
        retry_for: args.retry_for,
        workers: args.workers.map(usize::from),
        outputs: Outputs {
            out_dir: args.out,
            junit: None,
            // An agent's --out holds its share only; the coordinator reports the run.
            report: false,
            profile_json: None,
        },
        quiet: args.quiet,
        synthetic: args.synthetic.is_some(),
    })
}

pub async fn agent_command(args: AgentArgs) -> i32 {
    let token = match read_token(&args.token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let synthetic = args.synthetic;
    let options = match options(args, token) {
        Ok(options) => options,
        Err(e) => {
            eprint_line(&format!("stampede agent: {e}"));
            return 2;
        }
    };
    let name = options.name.clone();
    let result = match synthetic {
        Some(count) => crate::swarm::synthetic::run(options, usize::from(count)).await,
        None => session::run(options).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprint_line(&format!("stampede agent {name}: {}", e.message));
            e.code
        }
    }
}
