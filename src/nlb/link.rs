//! A run's view of the NLB emulator it goes through (the profile's `nlb.admin`): a baseline
//! before the first connection, the peak of active flows while the run lasts, and what changed
//! by the end, for `summary.json`.
//!
//! Only reads the admin endpoint; `nlb` phases are played by `stage::play_server_phases`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

impl NlbSummary {
    fn of(admin: SocketAddr, baseline: &NlbMetrics, now: &NlbMetrics, peak: u64) -> NlbSummary {
        let delta = now.since(baseline);
        NlbSummary {
            admin: admin.to_string(),
            error: None,
            peak_active_flows: peak.max(now.total.active),
            total: delta.total,
            nodes: delta.nodes,
            targets: delta.targets,
        }
    }
}

/// The latest sample, for live views. Written by the sampler task, read by the collector.
#[derive(Clone, Debug, Default)]
pub struct NlbLive(Arc<Mutex<Option<NlbSummary>>>);

impl NlbLive {
    pub fn get(&self) -> Option<NlbSummary> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, summary: NlbSummary) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary);
    }
}

pub struct NlbWatch {
    admin: SocketAddr,
    baseline: NlbMetrics,
    /// Written by the sampler task, read at the end.
    peak: Arc<AtomicU64>,
    live: NlbLive,
    sampler: tokio::task::JoinHandle<()>,
}

impl NlbWatch {
    /// Watches the emulator the profile names in `nlb`, if it names one.
    pub async fn for_profile(
        profile: &crate::profile::Profile,
    ) -> Result<Option<NlbWatch>, String> {
        match profile.nlb {
            Some(link) => NlbWatch::start(link.admin).await.map(Some),
            None => Ok(None),
        }
    }

    /// Reads the baseline; an emulator that cannot be reached refuses the run.
    pub async fn start(admin: SocketAddr) -> Result<NlbWatch, String> {
        let baseline = admin_metrics(admin).await.map_err(|e| {
            format!("nlb.admin: {e}; start the emulator first (`stampede nlb --admin {admin} ...`)")
        })?;
        let peak = Arc::new(AtomicU64::new(baseline.total.active));
        let live = NlbLive::default();
        let sampled = peak.clone();
        let (live_tx, since) = (live.clone(), baseline.clone());
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                if let Ok(now) = admin_metrics(admin).await {
                    let peak = sampled.fetch_max(now.total.active, Ordering::Relaxed);
                    live_tx.set(NlbSummary::of(admin, &since, &now, peak));
                }
            }
        });
        Ok(NlbWatch {
            admin,
            baseline,
            peak,
            live,
            sampler,
        })
    }

    /// The latest sample, for the dashboard and the metrics endpoint.
    pub fn live(&self) -> NlbLive {
        self.live.clone()
    }

    /// Reads the emulator once more and returns what the run made it count.
    pub async fn finish(self) -> NlbSummary {
        self.sampler.abort();
        let peak = self.peak.load(Ordering::Relaxed);
        match admin_metrics(self.admin).await {
            Ok(end) => NlbSummary::of(self.admin, &self.baseline, &end, peak),
            Err(e) => NlbSummary {
                error: Some(e),
                ..self.live.get().unwrap_or_else(|| {
                    NlbSummary::of(self.admin, &self.baseline, &self.baseline, peak)
                })
            },
        }
    }
}
