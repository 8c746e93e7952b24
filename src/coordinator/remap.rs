//! Moving an agent's sources and interval counts onto the run's source and target lists.
//!
//! Interval numbers need no remapping: agents start on the coordinator's corrected clock, so an
//! agent's interval `k` is already second `k` of the run.

use crate::metrics::{Counts, IntervalData};

/// The run's source list, built from the labels each agent sends when it accepts its plan.
#[derive(Debug, Default)]
pub struct SourceLabels {
    labels: Vec<String>,
}

impl SourceLabels {
    /// Adds one agent's source labels and returns the run's index of each. The same address
    /// on two agents is one source; "kernel-chosen" is told apart by the agent's host.
    pub fn add_agent(&mut self, host: &str, sources: &[String]) -> Vec<usize> {
        sources
            .iter()
            .map(|label| {
                let label = if label == "kernel-chosen" {
                    format!("kernel-chosen@{host}")
                } else {
                    label.clone()
                };
                match self.labels.iter().position(|l| *l == label) {
                    Some(at) => at,
                    None => {
                        self.labels.push(label);
                        self.labels.len() - 1
                    }
                }
            })
            .collect()
    }

    pub fn into_labels(self) -> Vec<String> {
        self.labels
    }
}

/// An agent's interval in the run's terms: its per-source counts moved to the run's source
/// indices (`source_map`, from `SourceLabels::add_agent`) and its per-target counts sized to
/// the run's targets. Everything else is already the run's.
pub fn onto_run(
    mut data: IntervalData,
    source_map: &[usize],
    sources: usize,
    targets: usize,
) -> IntervalData {
    let mut per_source = vec![Counts::default(); sources];
    for (local, counts) in data.per_source.iter().enumerate() {
        if let Some(run) = source_map.get(local).and_then(|&at| per_source.get_mut(at)) {
            run.add(counts);
        }
    }
    data.per_source = per_source;
    data.per_target.resize(targets, Counts::default());
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn shared_sources_are_one_and_kernel_chosen_ones_are_per_host() {
        let mut run = SourceLabels::default();
        let a = run.add_agent("alpha", &labels(&["10.0.0.1", "kernel-chosen"]));
        let b = run.add_agent("beta", &labels(&["kernel-chosen", "10.0.0.1"]));
        assert_eq!(a, [0, 1]);
        assert_eq!(b, [2, 0]);
        assert_eq!(
            run.into_labels(),
            ["10.0.0.1", "kernel-chosen@alpha", "kernel-chosen@beta"]
        );
    }

    #[test]
    fn an_interval_lands_on_the_run_sources_and_targets() {
        let mut data = IntervalData::new(2, 1);
        data.count(0, 0, |c| c.attempts += 3);
        data.count(1, 0, |c| c.attempts += 5);
        // The agent's source 0 is the run's 2, its source 1 the run's 0; the run has 3
        // sources and 2 targets.
        let run = onto_run(data, &[2, 0], 3, 2);
        let attempts: Vec<u64> = run.per_source.iter().map(|c| c.attempts).collect();
        assert_eq!(attempts, [5, 0, 3]);
        assert_eq!(run.per_target.len(), 2);
        assert_eq!(run.per_target[0].attempts, 8);
        assert_eq!(run.totals.attempts, 8);
    }

    #[test]
    fn sources_the_map_does_not_know_are_dropped() {
        let mut data = IntervalData::new(2, 0);
        data.count(1, 0, |c| c.attempts += 1);
        let run = onto_run(data, &[0], 1, 0);
        assert_eq!(run.per_source[0].attempts, 0);
        assert_eq!(run.totals.attempts, 1);
    }
}
