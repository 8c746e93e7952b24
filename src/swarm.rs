//! The agent's side of a swarm (`stampede agent`), beside the coordinator's: it joins a
//! coordinator, takes its share of the plan, plays it on the engine (`agent`) and reports.
//! - `session`: the link to a coordinator (handshake, plan, reports, lease, target allowlist).
//! - `synthetic`: reporters without sockets, for benchmarking the coordinator.

pub mod session;
pub mod synthetic;
