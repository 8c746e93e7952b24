//! The engine: opens, holds and measures connections, for `run` and for a swarm's agents (`swarm`).
//!
//! - `pool`: which source address and target each connection slot uses, and capacity.
//! - `timing`: heartbeat spreading and latency from the schedule (a leaf, shared by all).
//! - `shard`: a worker's state and its one accounting path (`connected`, `up`, `unserved`,
//!   `fail`), the reconnect backoff, its histograms.
//! - `table`: plain TCP connections without a task each: one epoll set and one timer queue
//!   per worker.
//! - `layered`: one connection of a protocol above TCP (connect, handshake, its heartbeats).
//! - `publisher`: the MQTT fan-out publisher, one per agent on its first worker.
//! - `worker`: a worker thread's loop, which plays its share of the schedule on the shard and
//!   starts the table, the protocol tasks and the publisher.
//!
//! Imports go one way: `worker` -> `table`, `layered`, `publisher` -> `shard` -> `timing`.
//!
//! The engine gets the plan and its share, never a pre-expanded list of work. It does not
//! print, decide outcomes or write files: it sends interval snapshots.

mod layered;
pub mod pool;
mod publisher;
pub(crate) mod shard;
mod table;
pub mod timing;
mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::IntervalSnapshot;
use crate::profile::timeline::PhaseSpan;
use crate::profile::{Heartbeat, Profile};
use crate::protocol::Connector;
use pool::SourcePool;

/// What every worker needs to play its share of a profile.
#[derive(Debug)]
pub struct EnginePlan {
    pub spans: Vec<PhaseSpan>,
    pub pool: SourcePool,
    pub heartbeat: Option<Heartbeat>,
    pub connect_timeout: Duration,
    /// The (share of the) profile: phases and reconnect policies.
    pub profile: Profile,
    /// The protocol's client side, shared by every connection.
    pub connector: Connector,
}

impl EnginePlan {
    /// A plain TCP plan, or any protocol's with `with_connector`.
    pub fn new(profile: &Profile, pool: SourcePool) -> EnginePlan {
        EnginePlan {
            spans: crate::profile::timeline::spans(profile),
            pool,
            heartbeat: profile.heartbeat,
            connect_timeout: profile.connect_timeout,
            profile: profile.clone(),
            connector: Connector::Tcp,
        }
    }

    pub fn with_connector(mut self, connector: Connector) -> EnginePlan {
        self.connector = connector;
        self
    }
}

/// What the workers are told while they run. Written by `Engine`, read by every worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineControl {
    /// Stop opening, close everything, send the last snapshot.
    pub stop: bool,
    /// Hold planned events (opens and closes) until resumed; the plan shifts by the pause.
    pub paused: bool,
}

/// Running workers. Dropping it without `join` leaves the threads to finish on their own.
pub struct Engine {
    threads: Vec<JoinHandle<()>>,
    control_tx: watch::Sender<EngineControl>,
}

impl Engine {
    /// Starts `workers` threads that begin the plan at `start` and report on `snapshot_tx`.
    pub fn start(
        plan: Arc<EnginePlan>,
        workers: usize,
        start: Instant,
        snapshot_tx: mpsc::UnboundedSender<IntervalSnapshot>,
    ) -> std::io::Result<Engine> {
        let (control_tx, control_rx) = watch::channel(EngineControl::default());
        let mut threads = Vec::with_capacity(workers);
        for worker in 0..workers {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let plan = plan.clone();
            let snapshot_tx = snapshot_tx.clone();
            let control_rx = control_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("stampede-worker-{worker}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(
                        &runtime,
                        worker::run(plan, worker, workers, start, snapshot_tx, control_rx),
                    );
                })?;
            threads.push(thread);
        }
        Ok(Engine {
            threads,
            control_tx,
        })
    }

    /// Asks every worker to stop opening, close what it holds and send its last snapshot.
    pub fn stop(&self) {
        self.control_tx.send_modify(|c| c.stop = true);
    }

    /// Holds (or releases) every planned open and close.
    pub fn set_paused(&self, paused: bool) {
        self.control_tx.send_modify(|c| c.paused = paused);
    }

    /// Waits for the worker threads; call after their last snapshots arrived.
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}
