//! stampede: a load-test harness for massive numbers of always-on connections.
//!
//! Map of the crate:
//! - `cli`: argument definitions and glue from a command to the library (main.rs is thin).
//! - `profile`: JSON scenarios, validated into typed plans (durations, sources, thresholds,
//!   `--set` overrides) and laid on the clock (`profile::timeline`).
//! - `agent`: the engine that opens and holds connections: source-address pool, socket2
//!   sockets, the connection table for plain TCP, the per-connection path of other protocols,
//!   the MQTT fan-out publisher, and per-thread workers.
//! - `protocol`: protocols above TCP (TLS, WebSocket, MQTT, HTTP/2): handshakes, heartbeats,
//!   server-sent messages and their send-time stamps, failure classification, client and sink
//!   side.
//! - `net`: client sockets with socket2 (`IP_BIND_ADDRESS_NO_PORT`, `IP_LOCAL_PORT_RANGE`).
//! - `metrics`: error kinds, counters, HDR histograms, interval snapshots, lossless merging.
//! - `run`: one process playing a profile end to end.
//! - `stage`: what `run` and a swarm agent share around the engine: preflight, the source
//!   pool, the server-side phases, `RunError`.
//! - `collect`: merges interval snapshots from workers or agents into every output.
//! - `wire`, `coordinator` and `swarm`: the swarm protocol, the process that drives agents,
//!   and an agent's side of it (`stampede agent`).
//! - `live`: per-second snapshots for live views, and the controls they send back.
//! - `tui`: the live terminal dashboard (ratatui), a consumer of live snapshots.
//! - `prometheus`: live snapshots as Prometheus metrics (`--metrics-listen`).
//! - `views`: starts the dashboard and the metrics endpoint around a run, and drives it.
//! - `report`: `summary.json`, the human summary, the HdrHistogram log, JUnit, the HTML report
//!   and `compare`.
//! - `sink`: the built-in echo-and-hold target.
//! - `nlb`: an AWS Network Load Balancer emulator (port allocation, idle timeout, draining).
//! - `http`: the tiny HTTP/1.1 server and client behind the admin and metrics endpoints.
//! - `host` and `doctor`: this host's limits and whether a plan fits (`doctor::plan` is
//!   `profile check`'s text).

pub mod agent;
pub mod cli;
pub mod collect;
pub mod coordinator;
pub mod doctor;
pub mod host;
pub mod http;
pub mod live;
pub mod metrics;
pub mod net;
pub mod nlb;
pub mod profile;
pub mod prometheus;
pub mod protocol;
pub mod report;
pub mod run;
pub mod sink;
pub mod stage;
pub mod swarm;
pub mod tui;
pub mod views;
pub mod wire;
