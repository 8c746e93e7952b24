//! Synthetic reporters, for benchmarking the coordinator without opening load sockets:
//! `stampede agent --synthetic N` joins N agents over real sessions (handshake, clock probe,
//! plan) and each sends one report a second with realistic histograms (log-normal-ish connect
//! and heartbeat latencies, ~1% slow outliers) and counters that follow its share of the plan.
//! Nothing is sent to any target.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::session::{AgentExit, AgentOptions, Link, await_plan, dial, join};
use crate::metrics::{IntervalData, Latency};
use crate::profile::{Profile, timeline};
use crate::wire::unix_us;
use crate::wire::{Message, WireInterval};

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A latency in microseconds around `median`, with a long tail.
    fn latency(&mut self, median: f64) -> u64 {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        let spread = if self.next().is_multiple_of(100) {
            40.0
        } else {
            1.0
        };
        (median * (0.3 + 1.4 * u) * spread).max(1.0) as u64
    }
}

async fn one(options: &AgentOptions, index: usize) -> Result<(), AgentExit> {
    let (mut stream, _) = dial(options).await?;
    let named = AgentOptions {
        name: format!("{}-{index}", options.name),
        coordinator: options.coordinator.clone(),
        token: options.token.clone(),
        sources: Vec::new(),
        allow_targets: Vec::new(),
        max_lease: options.max_lease,
        retry_for: options.retry_for,
        workers: None,
        outputs: Default::default(),
        quiet: true,
        synthetic: true,
    };
    let mut link = join(&mut stream, &named, 1_000_000).await?;
    let plan = await_plan(&mut stream, &mut link).await?;
    let profile = Profile::from_value(plan.profile.clone())
        .map_err(|e| AgentExit {
            code: 2,
            message: e.to_string(),
            hung_up: false,
        })?
        .share(&plan.weights, plan.agent_index);
    let targets = plan.targets.clone().unwrap_or_default();
    link.sealer
        .write(
            &mut stream,
            &Message::Ready {
                sources: vec![format!("synthetic-{index}")],
                targets: targets.clone(),
            },
        )
        .await
        .map_err(|e| AgentExit {
            code: 3,
            message: e.to_string(),
            hung_up: false,
        })?;
    let now = unix_us();
    let start = Instant::now() + Duration::from_micros(plan.start_at_us.saturating_sub(now));
    sleep_until(start).await;
    let _ = link
        .sealer
        .write(
            &mut stream,
            &Message::Started {
                clock_us: unix_us(),
            },
        )
        .await;
    let spans = timeline::spans(&profile);
    let seconds = timeline::total(&spans).as_secs_f64().ceil().max(1.0) as u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
    let (mut reader, mut writer) = stream.into_split();
    let Link {
        mut sealer,
        mut opener,
    } = link;
    // Keep the session's read side drained so keepalives never back up.
    let drain = tokio::spawn(async move { while opener.read(&mut reader).await.is_ok() {} });
    let mut open = 0u64;
    for seq in 0..seconds {
        sleep_until(start + Duration::from_secs(seq + 1)).await;
        let at = Duration::from_secs(seq + 1);
        let wanted = timeline::phase_level(&spans, at);
        let connects = wanted.saturating_sub(open);
        open = wanted;
        let mut data = IntervalData::new(1, targets.len().max(1));
        data.count(0, 0, |c| {
            c.attempts += connects;
            c.connected += connects;
            c.established += connects;
            c.slots_connected += connects;
            c.slots_established += connects;
        });
        for _ in 0..connects {
            data.latency.record(Latency::Connect, rng.latency(400.0));
            data.latency
                .record(Latency::ConnectService, rng.latency(150.0));
        }
        let heartbeats = profile
            .heartbeat
            .map_or(0, |h| (open as f64 / h.interval.as_secs_f64()) as u64);
        data.count(0, 0, |c| {
            c.heartbeats_sent += heartbeats;
            c.heartbeats_answered += heartbeats;
        });
        // Record a bounded sample of heartbeats: the histogram's shape, not every one.
        for _ in 0..heartbeats.min(2_000) {
            data.latency
                .record(Latency::HeartbeatRtt, rng.latency(250.0));
        }
        let last = seq + 1 == seconds;
        let report = WireInterval::encode(seq, last, open, open, &data);
        if sealer
            .write(&mut writer, &Message::Report(Box::new(report)))
            .await
            .is_err()
        {
            break;
        }
    }
    drain.abort();
    Ok(())
}

/// Runs `count` synthetic agents in this process until their plans end.
pub async fn run(options: AgentOptions, count: usize) -> Result<(), AgentExit> {
    let options = std::sync::Arc::new(options);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        let options = options.clone();
        tasks.spawn(async move { one(&options, index).await });
    }
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
