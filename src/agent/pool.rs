//! The source-address pool: which (source IP, target) pair each connection slot uses, and how
//! many connections the pool can hold before ports run out.
//!
//! A connection is unique by its 4-tuple; with `IP_BIND_ADDRESS_NO_PORT` the kernel picks the
//! source port at `connect()`, so each (source IP, target) pair has the whole port range to
//! itself. Slots are spread so that every pair fills at the same pace and no pair runs out
//! early.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::profile::SourceSpec;
use crate::profile::sources::PortRange;

/// Why a plan cannot run on this pool.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityError {
    pub message: String,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CapacityError {}

#[derive(Clone, Debug)]
pub struct SourcePool {
    /// `None` means "let the kernel choose" (no `sources` in the profile).
    pub sources: Vec<Option<IpAddr>>,
    pub targets: Vec<SocketAddr>,
    /// For each target, the indices of the sources of its address family.
    compatible: Vec<Vec<usize>>,
    /// The per-socket range to set, already narrowed to the system's ephemeral range.
    pub port_range: Option<PortRange>,
    /// Ports each (source, target) pair can use.
    pub ports_per_pair: u64,
    /// The system's `net.ipv4.ip_local_port_range`.
    pub system_range: PortRange,
    /// Target sets (indices into `targets`): set 0 is the profile's targets, later sets are
    /// cutovers' green targets. A connection uses one set, the one active when it connects.
    sets: Vec<Vec<usize>>,
}

impl SourcePool {
    pub fn new(
        spec: &SourceSpec,
        targets: &[SocketAddr],
        system_range: PortRange,
    ) -> Result<SourcePool, CapacityError> {
        let sources: Vec<Option<IpAddr>> = if spec.addrs.is_empty() {
            vec![None]
        } else {
            spec.addrs.iter().copied().map(Some).collect()
        };
        let port_range = match spec.port_range {
            None => None,
            Some(range) => Some(range.within(system_range).ok_or_else(|| CapacityError {
                message: format!(
                    "sources.port_range {range} lies outside net.ipv4.ip_local_port_range \
                     {system_range}, and the kernel only uses ports inside both; choose a range \
                     inside {system_range}, or widen the system range with \
                     `sysctl -w net.ipv4.ip_local_port_range=\"{} {}\"`",
                    range.first.min(system_range.first),
                    range.last.max(system_range.last)
                ),
            })?),
        };
        let ports_per_pair = port_range.unwrap_or(system_range).len();
        let mut compatible = Vec::with_capacity(targets.len());
        for target in targets {
            let fits: Vec<usize> = sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_none_or(|ip| ip.is_ipv4() == target.is_ipv4()))
                .map(|(i, _)| i)
                .collect();
            if fits.is_empty() {
                return Err(CapacityError {
                    message: format!(
                        "target {target} is {} but no source address is; add a source of that family to sources.addrs",
                        if target.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                });
            }
            compatible.push(fits);
        }
        Ok(SourcePool {
            sources,
            targets: targets.to_vec(),
            compatible,
            port_range,
            ports_per_pair,
            system_range,
            sets: vec![(0..targets.len()).collect()],
        })
    }

    /// Splits `targets` into sets: `sizes[i]` consecutive targets each, in order.
    pub fn with_sets(mut self, sizes: &[usize]) -> SourcePool {
        let mut next = 0;
        let sets: Vec<Vec<usize>> = sizes
            .iter()
            .map(|n| {
                let set: Vec<usize> = (next..next + n).collect();
                next += n;
                set
            })
            .filter(|set| !set.is_empty() && set.iter().all(|t| *t < self.targets.len()))
            .collect();
        if !sets.is_empty() {
            self.sets = sets;
        }
        self
    }

    pub fn set_count(&self) -> usize {
        self.sets.len()
    }

    /// The (source index, target index) of connection slot `slot`. Consecutive slots rotate
    /// over targets, then over each target's sources, so every pair fills evenly.
    #[inline]
    pub fn pair(&self, slot: u64) -> (usize, usize) {
        self.pair_in(slot, 0)
    }

    /// Like `pair`, within target set `set` (a cutover's green targets).
    #[inline]
    pub fn pair_in(&self, slot: u64, set: usize) -> (usize, usize) {
        let set = &self.sets[set.min(self.sets.len() - 1)];
        let targets = set.len() as u64;
        let target = set[(slot % targets) as usize];
        let fits = &self.compatible[target];
        let source = fits[((slot / targets) % fits.len() as u64) as usize];
        (source, target)
    }

    pub fn source_label(&self, index: usize) -> String {
        match self.sources.get(index) {
            Some(Some(ip)) => ip.to_string(),
            _ => "kernel-chosen".to_string(),
        }
    }

    /// Connections the pool can hold, spread as `pair` spreads them.
    pub fn capacity(&self) -> u64 {
        self.compatible
            .iter()
            .map(|fits| fits.len() as u64 * self.ports_per_pair)
            .sum()
    }

    /// Busiest (source, target) pair's share of `connections`, in the busiest target set.
    pub fn busiest_pair(&self, connections: u64) -> u64 {
        self.sets
            .iter()
            .flat_map(|set| {
                let targets = set.len() as u64;
                set.iter().enumerate().map(move |(i, t)| {
                    let per_target =
                        connections / targets + u64::from((i as u64) < connections % targets);
                    per_target.div_ceil(self.compatible[*t].len() as u64)
                })
            })
            .max()
            .unwrap_or(0)
    }

    /// Refuses a plan whose busiest pair needs more ports than it has, saying what to add.
    pub fn check(&self, connections: u64) -> Result<(), CapacityError> {
        let busiest = self.busiest_pair(connections);
        if busiest <= self.ports_per_pair {
            return Ok(());
        }
        let sources = self.sources.iter().flatten().count().max(1);
        let targets = self.targets.len();
        let range_text = match self.port_range {
            Some(r) => format!("sources.port_range {r}"),
            None => format!("net.ipv4.ip_local_port_range {}", self.system_range),
        };
        let per_target_sources = self.compatible.iter().map(Vec::len).min().unwrap_or(1) as u64;
        let needed_sources = connections
            .div_ceil(targets as u64)
            .div_ceil(self.ports_per_pair);
        let more = needed_sources.saturating_sub(per_target_sources).max(1);
        let total = per_target_sources + more;
        let example = match self.sources.iter().flatten().next() {
            Some(IpAddr::V4(first)) => {
                let last = u32::from(*first).saturating_add(total as u32 - 1);
                format!("\"{first}-{}\"", std::net::Ipv4Addr::from(last))
            }
            _ => format!("{total} addresses"),
        };
        Err(CapacityError {
            message: format!(
                "the plan needs {connections} connections but the source pool holds {}: {sources} \
                 source address(es) x {} ports ({range_text}) x {targets} target(s), so a \
                 (source, target) pair would need {busiest} ports. Add {more} more source \
                 address(es) to sources.addrs ({total} in all, e.g. {example}), widen the port \
                 range, or add targets; pass --allow-overcommit to run it anyway and count the \
                 excess as addr_not_available",
                self.capacity(),
                self.ports_per_pair,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addrs: &[&str], range: Option<&str>) -> SourceSpec {
        SourceSpec {
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            port_range: range.map(|r| PortRange::parse(r).unwrap()),
        }
    }

    fn system() -> PortRange {
        PortRange::parse("32768-60999").unwrap()
    }

    #[test]
    fn spreads_slots_over_every_pair() {
        let targets: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let pool = SourcePool::new(
            &spec(&["127.0.0.2", "127.0.0.3", "127.0.0.4"], None),
            &targets,
            system(),
        )
        .unwrap();
        let mut seen = std::collections::HashMap::new();
        for slot in 0..6 {
            *seen.entry(pool.pair(slot)).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 6);
        assert!(seen.values().all(|n| *n == 1));
    }

    #[test]
    fn knows_its_capacity_and_says_what_to_add() {
        let targets: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let pool = SourcePool::new(
            &spec(&["127.0.0.2"], Some("40000-40499")),
            &targets,
            system(),
        )
        .unwrap();
        assert_eq!(pool.capacity(), 500);
        assert!(pool.check(500).is_ok());
        let err = pool.check(1500).unwrap_err().message;
        assert!(err.contains("holds 500"), "{err}");
        assert!(err.contains("Add 2 more source address(es) to sources.addrs (3 in all, e.g. \"127.0.0.2-127.0.0.4\")"), "{err}");
        let pool = SourcePool::new(
            &spec(
                &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
                Some("40000-40499"),
            ),
            &targets,
            system(),
        )
        .unwrap();
        assert!(pool.check(1500).is_ok());
        assert!(pool.check(1501).is_err());
    }

    #[test]
    fn refuses_ranges_outside_the_system_range_and_family_mismatch() {
        let targets: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let err = SourcePool::new(&spec(&["127.0.0.2"], Some("1000-2000")), &targets, system())
            .unwrap_err();
        assert!(
            err.message.contains("outside net.ipv4.ip_local_port_range"),
            "{err}"
        );
        let v6: Vec<SocketAddr> = vec!["[::1]:1".parse().unwrap()];
        assert!(SourcePool::new(&spec(&["127.0.0.2"], None), &v6, system()).is_err());
        assert!(SourcePool::new(&spec(&[], None), &v6, system()).is_ok());
    }
}
