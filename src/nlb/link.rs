//! A run's view of the NLB emulator it goes through (the profile's `nlb.admin`): a baseline
//! before the first connection, the peak of active flows while the run lasts, and what changed
//! by the end, for `summary.json`.
//!
//! Only reads the admin endpoint; `nlb` phases are played by `run::play_server_phases`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::admin::admin_metrics;
use super::metrics::{CountersSnapshot, NlbMetrics, NodeMetrics, TargetMetrics};

/// How often the run samples the emulator's active flows.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The emulator's counters over one run: differences from the baseline, except
/// `ActiveFlowCount`, which is the level at the end (the peak is `peak_active_flows`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NlbSummary {
    pub admin: String,
    /// Why the figures are missing or stale: the emulator could not be read at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub peak_active_flows: u64,
    pub total: CountersSnapshot,
    pub nodes: Vec<NodeMetrics>,
    pub targets: Vec<TargetMetrics>,
}

pub struct NlbWatch {
    admin: SocketAddr,
    baseline: NlbMetrics,
    /// Written by the sampler task, read at the end.
    peak: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl NlbWatch {
    /// Reads the baseline; an emulator that cannot be reached refuses the run.
    pub async fn start(admin: SocketAddr) -> Result<NlbWatch, String> {
        let baseline = admin_metrics(admin).await.map_err(|e| {
            format!("nlb.admin: {e}; start the emulator first (`stampede nlb --admin {admin} ...`)")
        })?;
        let peak = Arc::new(AtomicU64::new(baseline.total.active));
        let sampled = peak.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                if let Ok(now) = admin_metrics(admin).await {
                    sampled.fetch_max(now.total.active, Ordering::Relaxed);
                }
            }
        });
        Ok(NlbWatch {
            admin,
            baseline,
            peak,
            sampler,
        })
    }

    /// Reads the emulator once more and returns what the run made it count.
    pub async fn finish(self) -> NlbSummary {
        self.sampler.abort();
        let (end, error) = match admin_metrics(self.admin).await {
            Ok(end) => (end, None),
            Err(e) => (self.baseline.clone(), Some(e)),
        };
        let delta = end.since(&self.baseline);
        NlbSummary {
            admin: self.admin.to_string(),
            error,
            peak_active_flows: self.peak.load(Ordering::Relaxed).max(end.total.active),
            total: delta.total,
            nodes: delta.nodes,
            targets: delta.targets,
        }
    }
}
