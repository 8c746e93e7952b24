//! `stampede sink` (one process, or `--workers N` supervised) and `stampede sink-admin`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{bind_admin, cannot_listen, eprint_line, parse_duration_arg};
use crate::protocol::SinkProtocol;
use crate::protocol::tls::{self, SelfSignedFiles};
use crate::sink::{self, SinkAction};

#[derive(Args, Debug)]
pub struct SinkArgs {
    /// Address to listen on; repeat for several.
    #[arg(long, value_name = "ADDR", required = true)]
    pub listen: Vec<SocketAddr>,
    /// No per-second stats lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// Serve the admin endpoint (POST /action, GET /stats) on this address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Close each connection this long after it was accepted.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub lifetime: Option<Duration>,
    /// Close held connections, oldest first, at N per second for as long as any are held.
    #[arg(long, value_name = "N", value_parser = parse_close_rate, allow_negative_numbers = true)]
    pub close_rate: Option<f64>,
    /// Run as N processes sharing the addresses (SO_REUSEPORT), each with its own file
    /// limit; this process supervises them and prints their totals.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Protocol to speak: tcp, tls, ws (WebSocket), wss (WebSocket over TLS), mqtt (a
    /// minimal broker: CONNACK, PINGRESP, SUBACK, and PUBLISH routed to the subscribers of
    /// its exact topic within this process), h2 (HTTP/2 cleartext, prior knowledge) or h2s
    /// (HTTP/2 over TLS, ALPN h2).
    #[arg(long, value_name = "NAME", default_value = "tcp")]
    pub protocol: String,
    /// TLS certificate chain (PEM); without --cert/--key a self-signed one is generated.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM) of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Write the certificate served (PEM) here, for clients to trust (tls.ca_file).
    #[arg(long, value_name = "FILE")]
    pub cert_out: Option<PathBuf>,
    /// WebSocket: upgrade only this path; others are answered 404 (default: any path).
    #[arg(long, value_name = "PATH")]
    pub ws_path: Option<String>,
    /// HTTP/2: send a DATA frame stamped with its send time on every open stream this often
    /// (clients time its delivery); without it, only the one frame at stream open.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub push_interval: Option<Duration>,
}

/// Shortest `--push-interval`: a frame per stream per millisecond is already a flood.
const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(1);

impl SinkArgs {
    /// The sink's protocol settings from its flags.
    fn protocol(&self) -> Result<SinkProtocol, String> {
        if self.push_interval.is_some() && !matches!(self.protocol.as_str(), "h2" | "h2s") {
            return Err(format!(
                "--push-interval needs --protocol h2 or h2s, not {:?}; remove it or speak HTTP/2",
                self.protocol
            ));
        }
        if let Some(every) = self.push_interval
            && every < MIN_PUSH_INTERVAL
        {
            return Err(format!(
                "--push-interval {every:?} is too short; give at least 1ms"
            ));
        }
        Ok(SinkProtocol {
            name: self.protocol.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            ws_path: self.ws_path.clone(),
            push_interval: self.push_interval,
        })
    }

    /// `--cert-out` without a TLS protocol is a usage error.
    fn no_cert_to_write(&self) -> Result<(), String> {
        match &self.cert_out {
            Some(_) => Err(format!(
                "--cert-out needs a TLS protocol (tls, wss or h2s), not {:?}",
                self.protocol
            )),
            None => Ok(()),
        }
    }
}

fn write_cert_out(path: &std::path::Path, pem: String) -> Result<(), String> {
    std::fs::write(path, pem)
        .map_err(|e| format!("--cert-out {}: cannot write: {e}", path.display()))
}

fn parse_close_rate(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| {
            format!("{text:?} is not a rate; expected closes per second, a number > 0 (e.g. 100)")
        })
}

pub async fn sink_command(args: SinkArgs) -> i32 {
    if let Some(workers) = args.workers.filter(|n| *n > 1) {
        return sink_workers_command(args, usize::from(workers)).await;
    }
    if let Err(e) = crate::host::raise_fd_limit() {
        eprint_line(&format!("stampede sink: cannot raise RLIMIT_NOFILE: {e}"));
    }
    let built = args
        .protocol()
        .and_then(|p| p.acceptor())
        .and_then(|(acceptor, cert)| {
            match (&args.cert_out, &cert) {
                (Some(path), Some(cert)) => write_cert_out(path, tls::pem(cert))?,
                (_, None) => args.no_cert_to_write()?,
                (None, Some(_)) => {}
            }
            Ok(acceptor)
        });
    let acceptor = match built {
        Ok(acceptor) => acceptor,
        Err(e) => {
            eprint_line(&format!("stampede sink: {e}"));
            return 2;
        }
    };
    let mut listeners = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        match sink::bind(*addr) {
            Ok(listener) => {
                let bound = listener.local_addr().map_or(*addr, |a| a);
                println!("listening on {bound}");
                listeners.push(listener);
            }
            Err(e) => return cannot_listen("sink", "--listen", *addr, &e),
        }
    }
    let control = sink::SinkControl::new();
    if let Some(lifetime) = args.lifetime {
        control.apply(&SinkAction::Lifetime {
            seconds: Some(lifetime.as_secs_f64()),
        });
    }
    if let Some(per_second) = args.close_rate {
        control.apply(&SinkAction::CloseRate { per_second });
    }
    let stats = Arc::new(sink::SinkStats::default());
    let admin = match bind_admin("sink", args.admin).await {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    if let (Some(listener), Some(addr)) = (admin, args.admin) {
        let bound = listener.local_addr().map_or(addr, |a| a);
        println!("admin on {bound}");
        if !bound.ip().is_loopback() {
            eprint_line(&format!(
                "stampede sink: the admin endpoint on {bound} has no authentication; anyone who reaches it can close connections"
            ));
        }
        tokio::spawn(sink::serve_admin(
            listener,
            control.clone(),
            stats.clone(),
            std::future::pending(),
        ));
    }
    let _ = std::io::stdout().flush();
    if !args.quiet {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut previous = (0, 0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprint_line(&stats.line(&mut previous));
            }
        });
    }
    sink::run_protocol(
        listeners,
        stats,
        control,
        acceptor,
        super::signal::shutdown(),
    )
    .await;
    0
}

/// `sink --workers N`: supervise N sink processes until SIGINT or SIGTERM.
async fn sink_workers_command(args: SinkArgs, workers: usize) -> i32 {
    if let Some(admin) = args.admin {
        eprint_line(&format!(
            "stampede sink: --admin {admin} with --workers {workers}: actions are not forwarded to worker processes yet; run sinks with --admin one process each, or drop --workers"
        ));
        return 2;
    }
    let flags = args.protocol().map(|p| p.flags()).and_then(|mut pass_on| {
        let files = workers_certificate(&args)?.map(|(files, cert, key)| {
            pass_on.extend(["--cert".to_string(), cert, "--key".to_string(), key]);
            files
        });
        Ok((pass_on, files))
    });
    // Every worker must serve the same certificate: checked here (bad input is exit 2 before
    // any worker starts); generated files live as long as `_cert_files`.
    let (mut pass_on, _cert_files) = match flags {
        Ok(flags) => flags,
        Err(e) => {
            eprint_line(&format!("stampede sink: {e}"));
            return 2;
        }
    };
    if let Some(lifetime) = args.lifetime {
        pass_on.extend([
            "--lifetime".to_string(),
            format!("{}ms", lifetime.as_millis()),
        ]);
    }
    if let Some(rate) = args.close_rate {
        pass_on.extend(["--close-rate".to_string(), rate.to_string()]);
    }
    let start = sink::workers::WorkerArgs {
        listen: args.listen.clone(),
        pass_on,
        workers,
    };
    // Created before the workers start, so that a signal while they start still tears down.
    let mut signals = super::signal::Signals::new();
    // Started on this runtime thread, not in spawn_blocking: PR_SET_PDEATHSIG fires when the
    // *thread* that forked a child exits, and idle blocking-pool threads exit after 10 s.
    // Nothing else runs yet, so blocking here while the workers start costs nothing.
    let mut running = match sink::workers::start(&start) {
        Ok(running) => running,
        Err(e) => {
            eprint_line(&format!("stampede sink: {e}"));
            return e.exit_code();
        }
    };
    for addr in &running.listening {
        println!("listening on {addr}");
    }
    println!("workers {}", running.len());
    let _ = std::io::stdout().flush();
    let stop = async {
        signals.next().await;
    };
    match running.supervise(args.quiet, stop).await {
        Ok(()) => 0,
        Err(e) => {
            eprint_line(&format!("stampede sink: {e}"));
            3
        }
    }
}

/// For `sink --workers` with TLS: the `--cert` and `--key` every worker gets, after
/// `--cert-out` is written; generated files are removed when the first value is dropped.
/// `None` for protocols without TLS.
fn workers_certificate(
    args: &SinkArgs,
) -> Result<Option<(Option<SelfSignedFiles>, String, String)>, String> {
    let (_, served) = args.protocol()?.acceptor()?;
    let Some(served) = served else {
        return args.no_cert_to_write().map(|()| None);
    };
    let (files, cert, key, pem) = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => (
            None,
            cert.display().to_string(),
            key.display().to_string(),
            tls::pem(&served),
        ),
        // The workers serve one generated pair, not the one `acceptor` made for the check.
        _ => {
            let files = SelfSignedFiles::create("sink")?;
            let pem = files.cert_pem()?;
            let (cert, key) = (
                files.cert.display().to_string(),
                files.key.display().to_string(),
            );
            (Some(files), cert, key, pem)
        }
    };
    if let Some(path) = &args.cert_out {
        write_cert_out(path, pem)?;
    }
    Ok(Some((files, cert, key)))
}

#[derive(Args, Debug)]
pub struct SinkAdminArgs {
    /// The sink's admin address (its --admin).
    #[arg(value_name = "ADDR")]
    pub admin: SocketAddr,
    /// What to do.
    #[arg(value_enum, value_name = "ACTION")]
    pub action: SinkAdminAction,
    /// close-fraction: a fraction from 0 to 1; close-rate: closes per second (0 stops);
    /// lifetime: a duration (30s, 5m) or `off`.
    #[arg(value_name = "VALUE", allow_negative_numbers = true)]
    pub value: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkAdminAction {
    CloseAll,
    CloseFraction,
    CloseRate,
    Lifetime,
    StopAccepting,
    StartAccepting,
    Stats,
}

/// The action `sink-admin` sends (None for `stats`), or a usage error naming the value.
pub fn sink_admin_action(
    action: SinkAdminAction,
    value: Option<&str>,
) -> Result<Option<SinkAction>, String> {
    if action == SinkAdminAction::Stats {
        return match value {
            None => Ok(None),
            Some(v) => Err(format!("stats takes no value; got {v:?}")),
        };
    }
    let possible = clap::ValueEnum::to_possible_value(&action).expect("no action is skipped");
    SinkAction::from_words(possible.get_name(), value).map(Some)
}

pub async fn sink_admin_command(args: SinkAdminArgs) -> i32 {
    let action = match sink_admin_action(args.action, args.value.as_deref()) {
        Ok(action) => action,
        Err(e) => {
            eprint_line(&format!("stampede sink-admin: {e}"));
            return 2;
        }
    };
    let result = match &action {
        Some(action) => sink::admin_apply(args.admin, action).await,
        None => sink::admin_stats(args.admin).await,
    };
    match result.and_then(|status| serde_json::to_string(&status).map_err(|e| e.to_string())) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprint_line(&format!("stampede sink-admin: {e}"));
            1
        }
    }
}
