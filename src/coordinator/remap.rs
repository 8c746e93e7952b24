//! The run's source list, from the labels each agent sends: what `IntervalData::onto_run`
//! (metrics.rs) moves an agent's per-source counts onto.
//!
//! Interval numbers need no remapping: agents start on the coordinator's corrected clock, so an
//! agent's interval `k` is already second `k` of the run.

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
}
