//! `stampede sink --workers N`: one sink as N processes sharing its ports through `SO_REUSEPORT`.
//!
//! A process holds at most its file limit of connections, so a sink for a million connections
//! is many processes. The parent binds each `--listen` address first (to resolve port 0 and to
//! fail early on a taken port), starts N children of this same binary on the resolved
//! addresses, waits for each to say it listens, then closes its own listeners before it says
//! it listens itself, so no client connection can land in a socket nobody accepts from. Each
//! child serves a private admin endpoint on loopback; the parent reads their counters from it
//! once a second and prints the totals. Children die with the parent (`PR_SET_PDEATHSIG`).
//!
//! It must not hold connections itself: the parent's file limit is for its children's pipes.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use super::SinkStatus;
use super::admin::admin_stats;

/// What the parent passes on to every worker besides the addresses.
pub struct WorkerArgs {
    pub listen: Vec<SocketAddr>,
    /// Extra arguments for each child (`--lifetime`, `--close-rate`), already validated.
    pub pass_on: Vec<String>,
    pub workers: usize,
}

/// The running workers; killed and reaped when dropped.
pub struct Workers {
    children: Vec<Child>,
    admins: Vec<SocketAddr>,
    /// The addresses every worker listens on, port 0 resolved.
    pub listening: Vec<SocketAddr>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// Why the workers did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A `--listen` address cannot be bound: the user's to fix.
    #[error(
        "--listen {addr}: cannot listen: {error}; choose a free port or an address of this host"
    )]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// A worker could not be started or died before it listened.
    #[error("{0}")]
    Worker(String),
}

impl StartError {
    /// 2 for bad input (nothing was started), 3 when the host let a worker down.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Listen { .. } => 2,
            StartError::Worker(_) => 3,
        }
    }
}

/// Starts the workers and waits until every one listens on every address. Call it from a
/// thread that lives as long as the workers should: they are killed when it exits.
pub fn start(args: &WorkerArgs) -> Result<Workers, StartError> {
    let exe = std::env::current_exe()
        .map_err(|e| StartError::Worker(format!("cannot find this program: {e}")))?;
    // Held until the children listen: the port stays ours while they start.
    let mut reserved = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        let listener = super::bind_std(*addr, true)
            .map_err(|error| StartError::Listen { addr: *addr, error })?;
        let bound = listener.local_addr().map_or(*addr, |a| a);
        reserved.push((listener, bound));
    }
    let listening: Vec<SocketAddr> = reserved.iter().map(|(_, a)| *a).collect();
    let mut workers = Workers {
        children: Vec::with_capacity(args.workers),
        admins: Vec::with_capacity(args.workers),
        listening: listening.clone(),
    };
    for index in 0..args.workers {
        let mut command = Command::new(&exe);
        command.args(["sink", "--quiet", "--admin", "127.0.0.1:0"]);
        for addr in &listening {
            command.arg("--listen").arg(addr.to_string());
        }
        command
            .args(&args.pass_on)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| StartError::Worker(format!("cannot start sink worker {index}: {e}")))?;
        let stdout = child.stdout.take();
        workers.children.push(child);
        let admin = stdout
            .ok_or_else(|| format!("sink worker {index} has no output"))
            .and_then(|out| ready(index, out, listening.len()))
            .map_err(StartError::Worker)?;
        workers.admins.push(admin);
    }
    drop(reserved);
    Ok(workers)
}

/// Reads a worker's readiness lines: one `listening on` per address, then `admin on ADDR`.
fn ready(index: usize, stdout: ChildStdout, addresses: usize) -> Result<SocketAddr, String> {
    let mut lines = BufReader::new(stdout).lines();
    let mut listening = 0;
    for line in lines.by_ref() {
        let line = line.map_err(|e| format!("sink worker {index}: {e}"))?;
        if line.starts_with("listening on ") {
            listening += 1;
        } else if let Some(addr) = line.strip_prefix("admin on ") {
            if listening != addresses {
                break;
            }
            return addr
                .parse()
                .map_err(|_| format!("sink worker {index} said {line:?}"));
        }
    }
    Err(format!(
        "sink worker {index} exited before it listened (its error is above)"
    ))
}

impl Workers {
    /// Watches the workers until `stop`: says which ones exit, and unless `quiet` prints their
    /// totals once a second. An error when every worker has exited.
    pub async fn supervise(
        &mut self,
        quiet: bool,
        stop: impl Future<Output = ()>,
    ) -> Result<(), String> {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut previous = (0, 0);
        let mut reported = 0;
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                _ = tick.tick() => {}
            }
            let exited = self.exited();
            for (index, status) in exited.iter().skip(reported) {
                say(&format!(
                    "stampede sink: worker {index} exited ({status}); its connections are gone"
                ));
            }
            reported = reported.max(exited.len());
            if exited.len() == self.len() {
                return Err("every worker has exited".to_string());
            }
            if !quiet {
                let (total, answered) = self.totals().await;
                say(&format!(
                    "sink: open {} accepted/s {} bytes/s {} accepted {} accept_errors {} workers {answered}/{}",
                    total.open,
                    total.accepted.saturating_sub(previous.0),
                    total.bytes.saturating_sub(previous.1),
                    total.accepted,
                    total.accept_errors,
                    self.len(),
                ));
                previous = (total.accepted, total.bytes);
            }
        }
    }

    /// Every worker's counters summed, and how many workers answered.
    pub async fn totals(&self) -> (SinkStatus, usize) {
        let mut total = SinkStatus::default();
        let mut answered = 0;
        for admin in &self.admins {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(1), admin_stats(*admin)).await
            {
                answered += 1;
                total.open += s.open;
                total.accepted += s.accepted;
                total.bytes += s.bytes;
                total.closed_by_sink += s.closed_by_sink;
                total.accept_errors += s.accept_errors;
                total.accepting |= s.accepting;
            }
        }
        (total, answered)
    }

    /// Workers that have exited, by index, with their status.
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        self.children
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| match c.try_wait() {
                Ok(Some(status)) => Some((i, status.to_string())),
                _ => None,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

/// One line on stderr; a closed stderr is no reason to stop supervising.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
