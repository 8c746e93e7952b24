//! The emulator's CloudWatch-like counters, per node and per target, and their three
//! renderings: JSON lines each period (deltas, like CloudWatch sums), Prometheus text and a
//! JSON document (running totals) for the admin endpoint.
//!
//! Flows write with relaxed atomics, at most once per wake-up for bytes; readers take a
//! snapshot. Nothing here allocates on a flow's path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Written by flow tasks, read by the reporter and the admin endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    pub active: AtomicU64,
    pub new_flows: AtomicU64,
    pub port_allocation_errors: AtomicU64,
    pub port_allocation_errors_concurrent: AtomicU64,
    pub port_allocation_errors_per_minute: AtomicU64,
    pub elb_resets: AtomicU64,
    pub target_resets: AtomicU64,
    pub client_resets: AtomicU64,
    pub bytes: AtomicU64,
}

/// Names as in CloudWatch, so dashboards and runbooks read the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersSnapshot {
    #[serde(rename = "ActiveFlowCount")]
    pub active: u64,
    #[serde(rename = "NewFlowCount")]
    pub new_flows: u64,
    #[serde(rename = "PortAllocationErrorCount")]
    pub port_allocation_errors: u64,
    /// Of those, refused because the pair held its `--ports-per-target` flows at once (the
    /// concurrent wall); not a CloudWatch metric, which counts both walls as one.
    #[serde(rename = "PortAllocationErrorCount_Concurrent", default)]
    pub port_allocation_errors_concurrent: u64,
    /// Of those, refused because the pair had made its `--new-per-minute` allocations.
    #[serde(rename = "PortAllocationErrorCount_PerMinute", default)]
    pub port_allocation_errors_per_minute: u64,
    #[serde(rename = "TCP_ELB_Reset_Count")]
    pub elb_resets: u64,
    #[serde(rename = "TCP_Target_Reset_Count")]
    pub target_resets: u64,
    #[serde(rename = "TCP_Client_Reset_Count")]
    pub client_resets: u64,
    #[serde(rename = "ProcessedBytes")]
    pub bytes: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            active: get(&self.active),
            new_flows: get(&self.new_flows),
            port_allocation_errors: get(&self.port_allocation_errors),
            port_allocation_errors_concurrent: get(&self.port_allocation_errors_concurrent),
            port_allocation_errors_per_minute: get(&self.port_allocation_errors_per_minute),
            elb_resets: get(&self.elb_resets),
            target_resets: get(&self.target_resets),
            client_resets: get(&self.client_resets),
            bytes: get(&self.bytes),
        }
    }
}

impl CountersSnapshot {
    /// What happened since `earlier`; the active count stays a level.
    pub fn since(&self, earlier: &CountersSnapshot) -> CountersSnapshot {
        CountersSnapshot {
            active: self.active,
            new_flows: self.new_flows.saturating_sub(earlier.new_flows),
            port_allocation_errors: self
                .port_allocation_errors
                .saturating_sub(earlier.port_allocation_errors),
            port_allocation_errors_concurrent: self
                .port_allocation_errors_concurrent
                .saturating_sub(earlier.port_allocation_errors_concurrent),
            port_allocation_errors_per_minute: self
                .port_allocation_errors_per_minute
                .saturating_sub(earlier.port_allocation_errors_per_minute),
            elb_resets: self.elb_resets.saturating_sub(earlier.elb_resets),
            target_resets: self.target_resets.saturating_sub(earlier.target_resets),
            client_resets: self.client_resets.saturating_sub(earlier.client_resets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }

    pub fn add(&mut self, other: &CountersSnapshot) {
        self.active += other.active;
        self.new_flows += other.new_flows;
        self.port_allocation_errors += other.port_allocation_errors;
        self.port_allocation_errors_concurrent += other.port_allocation_errors_concurrent;
        self.port_allocation_errors_per_minute += other.port_allocation_errors_per_minute;
        self.elb_resets += other.elb_resets;
        self.target_resets += other.target_resets;
        self.client_resets += other.client_resets;
        self.bytes += other.bytes;
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeMetrics {
    pub node: usize,
    pub ip: String,
    pub zone: usize,
    #[serde(flatten)]
    pub counters: CountersSnapshot,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetMetrics {
    pub target: String,
    pub zone: usize,
    pub registered: bool,
    #[serde(flatten)]
    pub counters: CountersSnapshot,
}

/// Everything at one instant: `GET /metrics.json`, and what a run puts in `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NlbMetrics {
    pub nodes: Vec<NodeMetrics>,
    pub targets: Vec<TargetMetrics>,
    /// Per-node counters summed (each flow counts once, at its node).
    pub total: CountersSnapshot,
}

impl NlbMetrics {
    /// What changed since `earlier` (matched by node and by target); active flows stay levels.
    pub fn since(&self, earlier: &NlbMetrics) -> NlbMetrics {
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let before = earlier
                    .nodes
                    .iter()
                    .find(|e| e.node == n.node)
                    .map_or_else(CountersSnapshot::default, |e| e.counters);
                NodeMetrics {
                    counters: n.counters.since(&before),
                    ..n.clone()
                }
            })
            .collect();
        let targets = self
            .targets
            .iter()
            .map(|t| {
                let before = earlier
                    .targets
                    .iter()
                    .find(|e| e.target == t.target)
                    .map_or_else(CountersSnapshot::default, |e| e.counters);
                TargetMetrics {
                    counters: t.counters.since(&before),
                    ..t.clone()
                }
            })
            .collect();
        NlbMetrics {
            nodes,
            targets,
            total: self.total.since(&earlier.total),
        }
    }

    /// One JSON line per node and per target, with counts since `earlier`.
    pub fn period_lines(&self, earlier: &NlbMetrics, unix_seconds: u64, period: f64) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let before = earlier
                .nodes
                .iter()
                .find(|n| n.node == node.node)
                .map_or_else(CountersSnapshot::default, |n| n.counters);
            let line = serde_json::json!({
                "time": unix_seconds,
                "period_s": period,
                "node": node.node,
                "ip": node.ip,
                "zone": node.zone,
                "metrics": node.counters.since(&before),
            });
            let _ = writeln!(out, "{line}");
        }
        for target in &self.targets {
            let before = earlier
                .targets
                .iter()
                .find(|t| t.target == target.target)
                .map_or_else(CountersSnapshot::default, |t| t.counters);
            let line = serde_json::json!({
                "time": unix_seconds,
                "period_s": period,
                "target": target.target,
                "zone": target.zone,
                "registered": target.registered,
                "metrics": target.counters.since(&before),
            });
            let _ = writeln!(out, "{line}");
        }
        out
    }

    /// Prometheus text exposition (0.0.4): a gauge for active flows, counters for the rest,
    /// each labelled by node or by target.
    pub fn prometheus(&self) -> String {
        type Field = fn(&CountersSnapshot) -> u64;
        let families: [(&str, &str, &str, Field); 9] = [
            (
                "stampede_nlb_active_flows",
                "gauge",
                "ActiveFlowCount: flows connecting or established.",
                |c| c.active,
            ),
            (
                "stampede_nlb_new_flows_total",
                "counter",
                "NewFlowCount: flows admitted.",
                |c| c.new_flows,
            ),
            (
                "stampede_nlb_port_allocation_errors_total",
                "counter",
                "PortAllocationErrorCount: flows refused for want of a source port.",
                |c| c.port_allocation_errors,
            ),
            (
                "stampede_nlb_port_allocation_errors_concurrent_total",
                "counter",
                "Of PortAllocationErrorCount, flows refused at the concurrent-ports wall.",
                |c| c.port_allocation_errors_concurrent,
            ),
            (
                "stampede_nlb_port_allocation_errors_per_minute_total",
                "counter",
                "Of PortAllocationErrorCount, flows refused at the new-flows-per-minute wall.",
                |c| c.port_allocation_errors_per_minute,
            ),
            (
                "stampede_nlb_elb_resets_total",
                "counter",
                "TCP_ELB_Reset_Count: resets made by the load balancer.",
                |c| c.elb_resets,
            ),
            (
                "stampede_nlb_target_resets_total",
                "counter",
                "TCP_Target_Reset_Count: resets from targets passed to clients.",
                |c| c.target_resets,
            ),
            (
                "stampede_nlb_client_resets_total",
                "counter",
                "TCP_Client_Reset_Count: resets from clients passed to targets.",
                |c| c.client_resets,
            ),
            (
                "stampede_nlb_processed_bytes_total",
                "counter",
                "ProcessedBytes: bytes forwarded either way.",
                |c| c.bytes,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, field) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for node in &self.nodes {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{}\",zone=\"{}\"}} {}",
                    node.ip,
                    node.zone,
                    field(&node.counters)
                );
            }
            for target in &self.targets {
                let _ = writeln!(
                    out,
                    "{name}{{target=\"{}\",zone=\"{}\"}} {}",
                    target.target,
                    target.zone,
                    field(&target.counters)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(new_flows: u64) -> NlbMetrics {
        let counters = CountersSnapshot {
            active: 2,
            new_flows,
            ..CountersSnapshot::default()
        };
        NlbMetrics {
            nodes: vec![NodeMetrics {
                node: 0,
                ip: "127.100.0.1".into(),
                zone: 0,
                counters,
            }],
            targets: vec![TargetMetrics {
                target: "127.0.0.1:7000".into(),
                zone: 0,
                registered: true,
                counters,
            }],
            total: counters,
        }
    }

    #[test]
    fn period_lines_carry_deltas_and_the_active_level() {
        let text = sample(10).period_lines(&sample(4), 1, 60.0);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for line in &lines {
            assert_eq!(line["metrics"]["NewFlowCount"], 6);
            assert_eq!(line["metrics"]["ActiveFlowCount"], 2);
            assert_eq!(line["metrics"]["TCP_ELB_Reset_Count"], 0);
        }
        assert_eq!(lines[0]["ip"], "127.100.0.1");
        assert_eq!(lines[1]["target"], "127.0.0.1:7000");
    }

    #[test]
    fn prometheus_text_labels_nodes_and_targets() {
        let text = sample(3).prometheus();
        assert!(text.contains("# TYPE stampede_nlb_active_flows gauge"));
        assert!(text.contains("stampede_nlb_new_flows_total{node=\"127.100.0.1\",zone=\"0\"} 3"));
        assert!(
            text.contains("stampede_nlb_new_flows_total{target=\"127.0.0.1:7000\",zone=\"0\"} 3")
        );
    }
}
