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

use std::io::{BufRead, BufReader};
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

/// Starts the workers and waits until every one listens on every address. Call it from a
/// thread that lives as long as the workers should: they are killed when it exits.
pub fn start(args: &WorkerArgs) -> Result<Workers, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    // Held until the children listen: the port stays ours while they start.
    let mut reserved = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        let listener = super::bind_std(*addr, true).map_err(|e| {
            format!(
                "--listen {addr}: cannot listen: {e}; choose a free port or an address of this host"
            )
        })?;
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
            .map_err(|e| format!("cannot start sink worker {index}: {e}"))?;
        let stdout = child.stdout.take();
        workers.children.push(child);
        let admin = stdout
            .ok_or_else(|| format!("sink worker {index} has no output"))
            .and_then(|out| ready(index, out, listening.len()))?;
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
