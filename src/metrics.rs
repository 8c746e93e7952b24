//! Measurements: error kinds, counters, HDR latency histograms, interval snapshots and the
//! aggregate that merges them.
//!
//! Connection tasks record into their worker's `IntervalData` (no locks, no per-sample
//! messages); once a second the worker swaps it out and sends one `IntervalSnapshot`. The
//! `Aggregate` merges snapshots losslessly with `Histogram::add`; it never averages percentiles.

use std::collections::BTreeMap;
use std::io;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest and highest trackable latency, in microseconds: 1 µs to 1 h.
pub const LOWEST_US: u64 = 1;
pub const HIGHEST_US: u64 = 3_600_000_000;
pub const SIGFIGS: u8 = 3;

/// Why a connection attempt or an established connection failed. Counted, never formatted, on
/// the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    AddrNotAvailable,
    AddrInUse,
    Refused,
    ConnectTimeout,
    Reset,
    ClosedByPeer,
    HeartbeatTimeout,
    FdLimit,
    Other,
    /// The TLS handshake failed: an alert received or sent, a bad certificate, a timeout.
    TlsHandshake,
    /// The server answered the WebSocket upgrade with something other than 101.
    WsUpgradeRejected,
    /// The MQTT broker answered CONNECT with a refusing CONNACK.
    MqttConnackRefused,
    /// The HTTP/2 server sent GOAWAY.
    H2Goaway,
    /// The HTTP/2 server reset the stream.
    H2Reset,
}

impl ErrorKind {
    pub const COUNT: usize = 14;
    pub const ALL: [ErrorKind; ErrorKind::COUNT] = [
        ErrorKind::AddrNotAvailable,
        ErrorKind::AddrInUse,
        ErrorKind::Refused,
        ErrorKind::ConnectTimeout,
        ErrorKind::Reset,
        ErrorKind::ClosedByPeer,
        ErrorKind::HeartbeatTimeout,
        ErrorKind::FdLimit,
        ErrorKind::Other,
        ErrorKind::TlsHandshake,
        ErrorKind::WsUpgradeRejected,
        ErrorKind::MqttConnackRefused,
        ErrorKind::H2Goaway,
        ErrorKind::H2Reset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::AddrNotAvailable => "addr_not_available",
            ErrorKind::AddrInUse => "addr_in_use",
            ErrorKind::Refused => "refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::ClosedByPeer => "closed_by_peer",
            ErrorKind::HeartbeatTimeout => "heartbeat_timeout",
            ErrorKind::FdLimit => "fd_limit",
            ErrorKind::Other => "other",
            ErrorKind::TlsHandshake => "tls_handshake",
            ErrorKind::WsUpgradeRejected => "ws_upgrade_rejected",
            ErrorKind::MqttConnackRefused => "mqtt_connack_refused",
            ErrorKind::H2Goaway => "h2_goaway",
            ErrorKind::H2Reset => "h2_reset",
        }
    }

    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Classifies an I/O error from `socket`, `connect`, `read` or `write`.
    pub fn from_io(error: &io::Error) -> ErrorKind {
        match error.raw_os_error() {
            Some(libc::EADDRNOTAVAIL) => ErrorKind::AddrNotAvailable,
            Some(libc::EADDRINUSE) => ErrorKind::AddrInUse,
            Some(libc::ECONNREFUSED) => ErrorKind::Refused,
            Some(libc::ETIMEDOUT) => ErrorKind::ConnectTimeout,
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => ErrorKind::Reset,
            Some(libc::EMFILE | libc::ENFILE) => ErrorKind::FdLimit,
            _ => match error.kind() {
                io::ErrorKind::UnexpectedEof => ErrorKind::ClosedByPeer,
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
                io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
                io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
                _ => ErrorKind::Other,
            },
        }
    }
}

/// What a protocol failure said: the TLS alert, the HTTP status, the reason code. A `Copy`
/// code, so failures stay unformatted on the hot path; `label` names it for reports.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorDetail {
    /// A TLS alert from the peer (its code).
    AlertReceived(u8),
    /// A TLS alert this side sent, e.g. refusing the peer's certificate (its code).
    AlertSent(u8),
    /// The handshake did not finish within the connect timeout.
    HandshakeTimeout,
    /// The HTTP status a refused upgrade or request got.
    HttpStatus(u16),
    /// An MQTT CONNACK return code (3.1.1) or reason code (5).
    ReasonCode(u8),
    /// An HTTP/2 error code (GOAWAY or RST_STREAM).
    H2Reason(u32),
    /// The TLS server did not choose `h2` by ALPN, so HTTP/2 cannot start.
    NoAlpnH2,
}

impl ErrorDetail {
    /// How reports name it, e.g. `received alert UnknownCA (48)` or `HTTP 404`.
    pub fn label(self) -> String {
        match self {
            ErrorDetail::AlertReceived(code) => format!(
                "received alert {:?} ({code})",
                rustls::AlertDescription::from(code)
            ),
            ErrorDetail::AlertSent(code) => {
                format!(
                    "sent alert {:?} ({code})",
                    rustls::AlertDescription::from(code)
                )
            }
            ErrorDetail::HandshakeTimeout => "timeout".into(),
            ErrorDetail::HttpStatus(status) => format!("HTTP {status}"),
            ErrorDetail::ReasonCode(code) => format!("reason code {code:#04x}"),
            ErrorDetail::H2Reason(code) => format!("error code {code:#x}"),
            ErrorDetail::NoAlpnH2 => "server did not choose h2 by ALPN".into(),
        }
    }
}

/// Counters for one interval (or, summed, a whole run), for one scope: a worker, a source IP or
/// a target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    pub attempts: u64,
    /// TCP handshakes completed (every connection, reconnects included).
    #[serde(default)]
    pub connected: u64,
    /// Connections that proved they are served: the first heartbeat echo for plain TCP, the
    /// protocol's handshake otherwise (reconnects included). Plain TCP without heartbeats
    /// never gets here: nothing it does can show a server answering.
    pub established: u64,
    /// Connection slots connected at least once, and established at least once: what the
    /// `*_ratio` figures divide by the slots requested, so that reconnects never lift them.
    #[serde(default)]
    pub slots_connected: u64,
    #[serde(default)]
    pub slots_established: u64,
    /// Established connections that ended before the run's own teardown.
    pub closed: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_answered: u64,
    /// Heartbeats still awaiting their answer when the run ended (only in a reporter's last
    /// snapshot, and only in the totals): neither answered nor failed.
    #[serde(default)]
    pub heartbeats_in_flight_at_end: u64,
    /// Connections back up after a failure, a close or a storm's kick (each counts in
    /// `established` too; for plain TCP without heartbeats, in `connected`).
    #[serde(default)]
    pub reconnects: u64,
    /// Connections that stopped retrying: their reconnect policy ran out of attempts.
    #[serde(default)]
    pub given_up: u64,
    /// Messages the run's own publisher sent (MQTT fan-out).
    #[serde(default)]
    pub published: u64,
    /// Server-sent messages that arrived: MQTT PUBLISH, HTTP/2 DATA frames (stamped or not).
    #[serde(default)]
    pub received: u64,
    pub errors: [u64; ErrorKind::COUNT],
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.attempts += other.attempts;
        self.connected += other.connected;
        self.established += other.established;
        self.slots_connected += other.slots_connected;
        self.slots_established += other.slots_established;
        self.closed += other.closed;
        self.heartbeats_sent += other.heartbeats_sent;
        self.heartbeats_answered += other.heartbeats_answered;
        self.heartbeats_in_flight_at_end += other.heartbeats_in_flight_at_end;
        self.reconnects += other.reconnects;
        self.given_up += other.given_up;
        self.published += other.published;
        self.received += other.received;
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    pub fn error(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize]
    }
}

/// The latency histograms every run keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// From the *scheduled* attempt time to established (coordinated-omission aware).
    Connect,
    /// From the actual `connect()` call to established: the plain service time.
    ConnectService,
    /// From the scheduled heartbeat send to the full echo (or the protocol's own keepalive
    /// answer: a WebSocket pong, an MQTT PINGRESP, an HTTP/2 PING ack).
    HeartbeatRtt,
    /// When each reconnection completed, counted from the start of the phase it happened in:
    /// how long a storm, drain or cutover took to heal.
    Recovery,
    /// When each connection went down (kicked by a phase, or closed or failed under it),
    /// counted from the start of its phase. With `Recovery` it gives how many were down when.
    Disconnect,
    /// The protocol's handshake on an established TCP connection (TLS, WebSocket upgrade,
    /// MQTT CONNECT/CONNACK, HTTP/2 preface and settings); never recorded for plain TCP.
    Handshake,
    /// From a server-sent message's send time, stamped in it, to its arrival: MQTT fan-out
    /// publish-to-receive, HTTP/2 DATA frames from the sink. Only stamped messages count.
    Delivery,
}

impl Latency {
    pub const COUNT: usize = 7;
    pub const ALL: [Latency; Latency::COUNT] = [
        Latency::Connect,
        Latency::ConnectService,
        Latency::HeartbeatRtt,
        Latency::Recovery,
        Latency::Disconnect,
        Latency::Handshake,
        Latency::Delivery,
    ];

    /// Tag in the hlog and key in `summary.json`.
    pub fn tag(self) -> &'static str {
        match self {
            Latency::Connect => "connect",
            Latency::ConnectService => "connect_service",
            Latency::HeartbeatRtt => "heartbeat_rtt",
            Latency::Recovery => "recovery",
            Latency::Disconnect => "disconnect",
            Latency::Handshake => "handshake",
            Latency::Delivery => "delivery",
        }
    }

    /// Name used in threshold expressions (`heartbeat_p99`).
    pub fn threshold_family(self) -> &'static str {
        match self {
            Latency::Connect => "connect",
            Latency::ConnectService => "connect_service",
            Latency::HeartbeatRtt => "heartbeat",
            Latency::Recovery => "recovery",
            Latency::Disconnect => "disconnect",
            Latency::Handshake => "handshake",
            Latency::Delivery => "delivery",
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that the crate accepts; a failure here is a programming error.
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIGS).expect("valid histogram bounds")
}

/// Adds `source` into `into` by writing only the buckets that hold counts.
///
/// `Histogram::add` copies the whole counts array when `into` is empty, which makes every
/// page of a fresh histogram resident (about 190 KB each at 1 µs–1 h, 3 digits). Interval
/// histograms are mostly empty, so walking the recorded values keeps a merged or cloned
/// histogram as small in RSS as what was recorded into it. The result is the same: each
/// value lands in the bucket it came from.
pub fn add_sparse(into: &mut Histogram<u64>, source: &Histogram<u64>) {
    if source.is_empty() {
        return;
    }
    for value in source.iter_recorded() {
        into.saturating_record_n(value.value_iterated_to(), value.count_at_value());
    }
}

/// One histogram per `Latency`, in microseconds.
#[derive(Debug)]
pub struct LatencySet {
    pub hists: [Histogram<u64>; Latency::COUNT],
}

impl Default for LatencySet {
    fn default() -> Self {
        LatencySet {
            hists: std::array::from_fn(|_| new_histogram()),
        }
    }
}

/// A sparse copy (see `add_sparse`): a derived clone would copy, and make resident, every
/// bucket of all five histograms.
impl Clone for LatencySet {
    fn clone(&self) -> Self {
        let mut copy = LatencySet::default();
        copy.add(self);
        copy
    }
}

impl LatencySet {
    pub fn record(&mut self, metric: Latency, micros: u64) {
        self.hists[metric as usize].saturating_record(micros.clamp(LOWEST_US, HIGHEST_US));
    }

    pub fn get(&self, metric: Latency) -> &Histogram<u64> {
        &self.hists[metric as usize]
    }

    /// Lossless merge: counts are added bucket by bucket.
    pub fn add(&mut self, other: &LatencySet) {
        for (mine, theirs) in self.hists.iter_mut().zip(&other.hists) {
            add_sparse(mine, theirs);
        }
    }
}

/// Everything one reporter measured in one interval.
#[derive(Clone, Debug)]
pub struct IntervalData {
    pub totals: Counts,
    /// Indexed like the run's source list.
    pub per_source: Vec<Counts>,
    /// Indexed like the run's target list.
    pub per_target: Vec<Counts>,
    pub latency: LatencySet,
    /// Microseconds from the run's start to the first `connect()` of the interval, if any.
    pub first_attempt_us: Option<u64>,
    /// Microseconds from the run's start to the last connection established in the interval.
    pub last_established_us: Option<u64>,
    /// Connections that completed their TCP handshake while a ramp phase was playing, and the
    /// last moment one did (microseconds from the run's start): the ramp's connect rate, which
    /// reconnects under storms and drains must not inflate.
    pub ramp_connected: u64,
    pub last_ramp_connected_us: Option<u64>,
    /// Reconnections by the number of attempts they took: index `n - 1` for `n` attempts, the
    /// last bucket for `RECONNECT_BUCKETS` or more.
    pub reconnect_attempts: [u64; RECONNECT_BUCKETS],
    /// Protocol failures by what they said (the alert, the status, the reason code). Empty
    /// for plain TCP; a handful of entries otherwise, since the details seen are few.
    pub details: BTreeMap<(ErrorKind, ErrorDetail), u64>,
}

/// Buckets of the reconnect-attempts distribution.
pub const RECONNECT_BUCKETS: usize = 16;

impl IntervalData {
    /// Counts a reconnection that took `attempts` attempts.
    pub fn reconnected(&mut self, source: usize, target: usize, attempts: u32) {
        let bucket = (attempts.max(1) as usize - 1).min(RECONNECT_BUCKETS - 1);
        self.reconnect_attempts[bucket] += 1;
        self.count(source, target, |c| c.reconnects += 1);
    }
}

impl IntervalData {
    /// A swarm agent's interval in the run's terms: its per-source counts moved to the run's source
    /// indices (`source_map`, from `SourceLabels::add_agent`) and its per-target counts sized to
    /// the run's targets. Everything else is already the run's.
    pub fn onto_run(
        mut self,
        source_map: &[usize],
        sources: usize,
        targets: usize,
    ) -> IntervalData {
        let mut per_source = vec![Counts::default(); sources];
        for (local, counts) in self.per_source.iter().enumerate() {
            if let Some(run) = source_map.get(local).and_then(|&at| per_source.get_mut(at)) {
                run.add(counts);
            }
        }
        self.per_source = per_source;
        self.per_target.resize(targets, Counts::default());
        self
    }

    pub fn new(sources: usize, targets: usize) -> IntervalData {
        IntervalData {
            totals: Counts::default(),
            per_source: vec![Counts::default(); sources],
            per_target: vec![Counts::default(); targets],
            latency: LatencySet::default(),
            first_attempt_us: None,
            last_established_us: None,
            ramp_connected: 0,
            last_ramp_connected_us: None,
            reconnect_attempts: [0; RECONNECT_BUCKETS],
            details: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, other: &IntervalData) {
        self.totals.add(&other.totals);
        for (mine, theirs) in self.per_source.iter_mut().zip(&other.per_source) {
            mine.add(theirs);
        }
        for (mine, theirs) in self.per_target.iter_mut().zip(&other.per_target) {
            mine.add(theirs);
        }
        self.latency.add(&other.latency);
        self.first_attempt_us = match (self.first_attempt_us, other.first_attempt_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_established_us = self.last_established_us.max(other.last_established_us);
        self.ramp_connected += other.ramp_connected;
        self.last_ramp_connected_us = self
            .last_ramp_connected_us
            .max(other.last_ramp_connected_us);
        for (mine, theirs) in self
            .reconnect_attempts
            .iter_mut()
            .zip(other.reconnect_attempts)
        {
            *mine += theirs;
        }
        for (key, n) in &other.details {
            *self.details.entry(*key).or_insert(0) += n;
        }
    }

    /// Applies `f` to the run, source and target counters of one event.
    #[inline]
    pub fn count(&mut self, source: usize, target: usize, f: impl Fn(&mut Counts)) {
        f(&mut self.totals);
        if let Some(c) = self.per_source.get_mut(source) {
            f(c);
        }
        if let Some(c) = self.per_target.get_mut(target) {
            f(c);
        }
    }
}

/// What one reporter (a worker, later an agent) sends for interval `seq`.
#[derive(Clone, Debug)]
pub struct IntervalSnapshot {
    pub reporter: usize,
    /// Interval number: interval `k` covers seconds `[k, k+1)` of the run.
    pub seq: u64,
    /// The reporter's last snapshot; it reports no more intervals after this one.
    pub last: bool,
    /// Connections open at the end of the interval (for the last one: before teardown).
    pub open: u64,
    /// Of those, the ones that have proved they are served (see `Counts::established`).
    pub open_established: u64,
    pub data: IntervalData,
}

/// One interval of the whole run, once every live reporter has sent it.
#[derive(Clone, Debug)]
pub struct CompletedInterval {
    pub seq: u64,
    pub open: u64,
    pub open_established: u64,
    pub data: IntervalData,
}

struct Pending {
    reported: Vec<bool>,
    open: u64,
    open_established: u64,
    data: IntervalData,
}

/// A point of the per-second timeline.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct TimelinePoint {
    pub second: u64,
    /// Connections open (TCP connected and held) at the end of the second.
    pub open: u64,
    /// Of those, the ones established (proved served).
    pub open_established: u64,
    pub attempts: u64,
    /// TCP handshakes completed in the second, reconnects included.
    pub connects: u64,
    /// Of those, reconnections (after a failure, a close or a storm's kick).
    pub reconnects: u64,
    pub closes: u64,
    pub errors: u64,
    /// `errors` by kind; only the kinds that occurred are written.
    #[serde(skip_serializing_if = "ErrorsByKind::is_empty")]
    pub error_kinds: ErrorsByKind,
    /// Connections the plan wanted open at the end of the second (filled in by the summary,
    /// which knows the phases).
    pub wanted: u64,
}

/// Error counts by kind, written as an object holding only the kinds that occurred (a
/// timeline has one per second, so the zeros would dominate the file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorsByKind(pub [u64; ErrorKind::COUNT]);

impl ErrorsByKind {
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }
}

impl Serialize for ErrorsByKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let present = self.0.iter().filter(|n| **n > 0).count();
        let mut map = serializer.serialize_map(Some(present))?;
        for kind in ErrorKind::ALL {
            let n = self.0[kind as usize];
            if n > 0 {
                map.serialize_entry(kind.name(), &n)?;
            }
        }
        map.end()
    }
}

/// Merges snapshots from many reporters into run totals, interval by interval.
pub struct Aggregate {
    sources: usize,
    targets: usize,
    live: Vec<bool>,
    pending: BTreeMap<u64, Pending>,
    /// Everything merged so far.
    pub totals: IntervalData,
    pub peak_open: u64,
    pub open: u64,
    pub open_established: u64,
    pub timeline: Vec<TimelinePoint>,
}

impl Aggregate {
    pub fn new(reporters: usize, sources: usize, targets: usize) -> Aggregate {
        Aggregate {
            sources,
            targets,
            live: vec![true; reporters],
            pending: BTreeMap::new(),
            totals: IntervalData::new(sources, targets),
            peak_open: 0,
            open: 0,
            open_established: 0,
            timeline: Vec::new(),
        }
    }

    /// Takes one snapshot; returns the intervals it completed, oldest first.
    pub fn push(&mut self, snapshot: IntervalSnapshot) -> Vec<CompletedInterval> {
        let reporters = self.live.len();
        if snapshot.reporter >= reporters {
            return Vec::new();
        }
        let (sources, targets) = (self.sources, self.targets);
        let pending = self.pending.entry(snapshot.seq).or_insert_with(|| Pending {
            reported: vec![false; reporters],
            open: 0,
            open_established: 0,
            data: IntervalData::new(sources, targets),
        });
        pending.reported[snapshot.reporter] = true;
        pending.open += snapshot.open;
        pending.open_established += snapshot.open_established;
        pending.data.add(&snapshot.data);
        if snapshot.last {
            self.live[snapshot.reporter] = false;
        }
        self.drain(false)
    }

    /// Marks a reporter gone (it will send nothing more) and completes what waited for it.
    pub fn reporter_gone(&mut self, reporter: usize) -> Vec<CompletedInterval> {
        if let Some(live) = self.live.get_mut(reporter) {
            *live = false;
        }
        self.drain(false)
    }

    /// Completes every pending interval, whoever is missing.
    pub fn finish(&mut self) -> Vec<CompletedInterval> {
        self.drain(true)
    }

    fn drain(&mut self, force: bool) -> Vec<CompletedInterval> {
        let mut done = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            let complete = entry
                .get()
                .reported
                .iter()
                .zip(&self.live)
                .all(|(reported, live)| *reported || !*live);
            if !(complete || force) {
                break;
            }
            let seq = *entry.key();
            let pending = entry.remove();
            self.totals.add(&pending.data);
            self.open = pending.open;
            self.open_established = pending.open_established;
            self.peak_open = self.peak_open.max(pending.open);
            let c = &pending.data.totals;
            self.timeline.push(TimelinePoint {
                second: seq,
                open: pending.open,
                open_established: pending.open_established,
                attempts: c.attempts,
                connects: c.connected,
                reconnects: c.reconnects,
                closes: c.closed,
                errors: c.error_total(),
                error_kinds: ErrorsByKind(c.errors),
                wanted: 0,
            });
            done.push(CompletedInterval {
                seq,
                open: pending.open,
                open_established: pending.open_established,
                data: pending.data,
            });
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(reporter: usize, seq: u64, last: bool, samples: &[u64]) -> IntervalSnapshot {
        let mut data = IntervalData::new(1, 1);
        for s in samples {
            data.latency.record(Latency::Connect, *s);
            data.count(0, 0, |c| c.established += 1);
        }
        IntervalSnapshot {
            reporter,
            seq,
            last,
            open: samples.len() as u64,
            open_established: samples.len() as u64,
            data,
        }
    }

    #[test]
    fn completes_intervals_when_all_reporters_sent_them() {
        let mut agg = Aggregate::new(2, 1, 1);
        assert!(agg.push(snapshot(0, 0, false, &[10, 20])).is_empty());
        assert!(agg.push(snapshot(0, 1, false, &[30])).is_empty());
        let done = agg.push(snapshot(1, 0, false, &[40]));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].open, 3);
        let done = agg.push(snapshot(1, 1, true, &[50]));
        assert_eq!(done.len(), 1);
        assert_eq!(agg.totals.totals.established, 5);
        assert_eq!(agg.peak_open, 3);
    }

    #[test]
    fn merge_equals_recording_in_one_place() {
        let mut agg = Aggregate::new(3, 1, 1);
        let mut all = new_histogram();
        let mut seed = 7u64;
        for seq in 0..4 {
            for reporter in 0..3 {
                let samples: Vec<u64> = (0..500)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        1 + (seed >> 33) % 2_000_000
                    })
                    .collect();
                for s in &samples {
                    all.record(*s).unwrap();
                }
                agg.push(snapshot(reporter, seq, seq == 3, &samples));
            }
        }
        let merged = agg.totals.latency.get(Latency::Connect);
        assert_eq!(merged, &all);
        for q in [0.5, 0.9, 0.99, 0.999] {
            assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q));
        }
    }

    #[test]
    fn a_sparse_clone_keeps_every_bucket_and_extreme() {
        let mut set = LatencySet::default();
        for micros in [
            1,
            2,
            999,
            1_000,
            2_047,
            2_048,
            65_537,
            3_600_000_000,
            7_000_000_000,
        ] {
            set.record(Latency::HeartbeatRtt, micros);
        }
        set.record(Latency::Connect, 42);
        let copy = set.clone();
        for metric in Latency::ALL {
            let (a, b) = (set.get(metric), copy.get(metric));
            assert_eq!(a, b, "{metric:?}");
            assert_eq!((a.min(), a.max(), a.len()), (b.min(), b.max(), b.len()));
        }
    }

    #[test]
    fn a_gone_reporter_does_not_block_intervals() {
        let mut agg = Aggregate::new(2, 1, 1);
        agg.push(snapshot(0, 0, false, &[1]));
        let done = agg.reporter_gone(1);
        assert_eq!(done.len(), 1);
    }

    #[test]
    fn classifies_errors() {
        let e = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert_eq!(ErrorKind::from_io(&e), ErrorKind::AddrNotAvailable);
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(ErrorKind::from_io(&e), ErrorKind::FdLimit);
        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(ErrorKind::from_io(&e), ErrorKind::ClosedByPeer);
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(k.name()), Some(k));
        }
    }

    #[test]
    fn an_interval_lands_on_the_run_sources_and_targets() {
        let mut data = IntervalData::new(2, 1);
        data.count(0, 0, |c| c.attempts += 3);
        data.count(1, 0, |c| c.attempts += 5);
        // The agent's source 0 is the run's 2, its source 1 the run's 0; the run has 3
        // sources and 2 targets.
        let run = data.onto_run(&[2, 0], 3, 2);
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
        let run = data.onto_run(&[0], 1, 0);
        assert_eq!(run.per_source[0].attempts, 0);
        assert_eq!(run.totals.attempts, 1);
    }
}
