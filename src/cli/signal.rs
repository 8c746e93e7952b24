//! SIGINT and SIGTERM, the one way every long-running command learns it should stop.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM handlers, installed when made: create it before building anything a
/// signal must tear down, so that no signal in between kills the process half-built.
pub struct Signals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Signals {
    pub fn new() -> Signals {
        Signals {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Waits for the next SIGINT or SIGTERM and names it.
    pub async fn next(&mut self) -> &'static str {
        async fn recv(s: &mut Option<Signal>) -> Option<()> {
            match s.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            Some(()) = recv(&mut self.interrupt) => "SIGINT",
            Some(()) = recv(&mut self.terminate) => "SIGTERM",
            // Both streams ended: the runtime is going away, and no signal can come.
            else => std::future::pending().await,
        }
    }
}

/// Resolves at the first SIGINT or SIGTERM: the shutdown future of the servers
/// (`sink`, `nlb`).
pub async fn shutdown() {
    Signals::new().next().await;
}
