//! What live views (the terminal dashboard, the metrics endpoint) see of a running test, and
//! what they may ask of it.
//!
//! The run publishes one `LiveSnapshot` per completed interval on a `watch` channel; views only
//! read it and never block the load. Views send `Control`s back on an unbounded channel.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{Counts, LatencySet};
use crate::profile::timeline::PhaseSpan;
use crate::report::Summary;

/// Requests to a running test, from a view or a signal handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop gracefully: close what is held, write the summary. The text is the reason.
    Stop(String),
    /// Hold planned opens and closes until `Resume`.
    Pause,
    Resume,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// Stop requested; workers are closing their connections.
    Stopping,
    /// The summary is final.
    Finished,
}

/// One agent's row, for swarm runs. A local run has none.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRow {
    pub name: String,
    pub open: u64,
    pub connects_per_s: u64,
    pub errors: u64,
    pub connect_p99_us: Option<u64>,
    /// Seconds since its last report.
    pub last_report_s: f64,
    pub status: crate::report::summary::AgentStatus,
}

/// The run as of its latest completed interval.
#[derive(Clone, Debug)]
pub struct LiveSnapshot {
    /// Cumulative figures so far, with thresholds evaluated on them. Its `outcome` is
    /// provisional until `state` is `Finished`.
    pub summary: Summary,
    pub state: RunState,
    /// Time since the run's start, and the planned length (both grow by any pause).
    pub elapsed: Duration,
    pub planned: Duration,
    pub spans: Arc<Vec<PhaseSpan>>,
    /// Index into `spans` of the phase now playing, if any.
    pub phase: Option<usize>,
    /// Connections the plan wants open now.
    pub wanted: u64,
    /// Connections open at the end of the last interval, and of those the established ones.
    pub open: u64,
    pub open_established: u64,
    /// The last completed interval: its counters and latency histograms.
    pub interval: Counts,
    pub interval_latency: LatencySet,
    /// Whole-run histograms, for distribution plots.
    pub total_latency: LatencySet,
    pub agents: Vec<AgentRow>,
    pub agents_expected: usize,
}

pub type LiveTx = tokio::sync::watch::Sender<Option<Arc<LiveSnapshot>>>;
pub type LiveRx = tokio::sync::watch::Receiver<Option<Arc<LiveSnapshot>>>;
pub type ControlTx = tokio::sync::mpsc::UnboundedSender<Control>;
pub type ControlRx = tokio::sync::mpsc::UnboundedReceiver<Control>;
