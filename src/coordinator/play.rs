//! Stage 5, the run itself: merging reports, keeping leases, marking the lost, obeying
//! controls, and the summary at the end.

use tokio::time::Instant;

use super::{Agent, Settings, Start, Swarm, log, stop_all};
use crate::collect::{Collector, Progress, RunResult};
use crate::live::{AgentRow, Control, ControlRx};
use crate::metrics::{IntervalSnapshot, Latency};
use crate::profile::{AgentLoss, timeline};
use crate::report::summary::{AgentRecord, AgentStatus};
use crate::wire::{self, Message, WireError, WireInterval};

/// What the run stage holds besides the agents.
pub(super) struct Play {
    swarm: Swarm,
    collector: Collector,
    start: Start,
    source_count: usize,
    target_count: usize,
    server_phases: tokio::task::JoinHandle<()>,
    abort_reason: Option<String>,
}

impl Play {
    pub(super) fn new(
        swarm: Swarm,
        o: &mut Settings,
        start: Start,
        source_labels: Vec<String>,
        target_labels: Vec<String>,
    ) -> Play {
        let (source_count, target_count) = (source_labels.len(), target_labels.len());
        let mut collector = Collector::new(
            &o.profile,
            timeline::spans(&o.profile),
            source_labels,
            target_labels,
            swarm.agents.len(),
            start.at,
            o.hlog.take(),
            o.roll.progress,
            o.live_tx.take(),
        );
        if let Some(watch) = &o.nlb_watch {
            collector.set_nlb_live(watch.live());
        }
        collector.set_allow_synthetic(o.roll.allow_synthetic);
        // Server phases need an admin address here: the swarm's sinks are other processes.
        let server_phases = tokio::spawn(crate::stage::play_server_phases(
            o.profile.clone(),
            start.at,
            None,
        ));
        Play {
            swarm,
            collector,
            start,
            source_count,
            target_count,
            server_phases,
            abort_reason: None,
        }
    }

    /// Runs until no agent is live.
    pub(super) async fn run(&mut self, control_rx: &mut ControlRx, o: &Settings) {
        let mut keepalive = tokio::time::interval(wire::KEEPALIVE_INTERVAL);
        let mut controls_open = true;
        while self.swarm.agents.iter().any(Agent::live) {
            tokio::select! {
                event = self.swarm.events_rx.recv() => {
                    let Some((i, message)) = event else { break };
                    self.on_event(i, message, o.profile.on_agent_loss);
                }
                _ = keepalive.tick() => self.on_keepalive(o),
                control = control_rx.recv(), if controls_open => match control {
                    Some(control) => self.on_control(control),
                    None => controls_open = false,
                },
            }
        }
        self.server_phases.abort();
    }

    fn on_event(&mut self, i: usize, message: Result<Message, WireError>, on_loss: AgentLoss) {
        let agent = &mut self.swarm.agents[i];
        agent.last_heard = Instant::now();
        match message {
            Ok(Message::Report(_)) if !agent.live() => {
                // Declared lost already: the intervals this covers were completed without
                // it, so merging it now would rewrite history.
                agent.late_reports += 1;
            }
            Ok(Message::Report(report)) => {
                if !self.on_report(i, &report) {
                    // As before the split: a bad report's loss is weighed at the next event.
                    return;
                }
            }
            Ok(Message::Started { clock_us }) => {
                agent.started_us =
                    Some(clock_us as i64 - agent.offset_us - self.start.unix_us as i64);
            }
            Ok(Message::Refused { reason }) => {
                lose(agent, &mut self.collector, i, &format!("gave up: {reason}"));
            }
            Ok(_) => {}
            Err(e) => {
                let reason = format!("connection lost: {e}");
                lose(agent, &mut self.collector, i, &reason);
            }
        }
        if on_loss == AgentLoss::Abort
            && self.abort_reason.is_none()
            && let Some(lost) = self
                .swarm
                .agents
                .iter()
                .find(|a| a.status == AgentStatus::Lost)
        {
            self.abort_reason = Some(format!(
                "agent {} was lost (on_agent_loss: abort)",
                lost.info.name
            ));
            self.collector.set_stopping();
            stop_all(&self.swarm.agents, "another agent was lost");
        }
    }

    /// Merges one live agent's report; false if it was bad and the agent is lost for it.
    fn on_report(&mut self, i: usize, report: &WireInterval) -> bool {
        let agent = &mut self.swarm.agents[i];
        let data = match report.decode() {
            Ok(data) => data,
            Err(e) => {
                let reason = format!("sent a bad report: {e}");
                lose(agent, &mut self.collector, i, &reason);
                return false;
            }
        };
        let data = data.onto_run(&agent.source_map, self.source_count, self.target_count);
        agent.established += data.totals.established;
        agent.errors += data.totals.error_total();
        agent.open = report.open;
        agent.interval_connects = data.totals.connected;
        let h = data.latency.get(Latency::Connect);
        agent.interval_p99 = (!h.is_empty()).then(|| h.value_at_quantile(0.99));
        agent.last_report = Some(Instant::now());
        agent.intervals_received += 1;
        agent.last_interval = Some(report.seq);
        if report.last {
            agent.status = if self.abort_reason.is_some() {
                AgentStatus::Stopped
            } else {
                AgentStatus::Finished
            };
        }
        self.collector.push(IntervalSnapshot {
            reporter: i,
            seq: report.seq,
            last: report.last,
            open: report.open,
            open_established: report.open_established,
            data,
        });
        true
    }

    /// Loses agents silent past their lease, keeps the others' leases, refreshes the rows.
    fn on_keepalive(&mut self, o: &Settings) {
        for (i, agent) in self.swarm.agents.iter_mut().enumerate() {
            if !agent.live() {
                continue;
            }
            if agent.last_heard.elapsed() > o.lease {
                let reason = format!("silent for {:?} (lease)", o.lease);
                lose(agent, &mut self.collector, i, &reason);
                continue;
            }
            let _ = agent.out_tx.send(Message::Keepalive);
        }
        let rows = self
            .swarm
            .agents
            .iter()
            .map(|a| AgentRow {
                name: a.info.name.clone(),
                open: a.open,
                connects_per_s: a.interval_connects,
                errors: a.errors,
                connect_p99_us: a.interval_p99,
                last_report_s: a
                    .last_report
                    .map_or(f64::NAN, |t| t.elapsed().as_secs_f64()),
                status: a.status,
            })
            .collect();
        self.collector.set_agents(o.roll.expected, rows);
    }

    fn on_control(&mut self, control: Control) {
        let agents = &self.swarm.agents;
        match control {
            Control::Stop(reason) => {
                if self.abort_reason.is_none() {
                    stop_all(agents, &reason);
                    self.abort_reason = Some(reason);
                    self.collector.set_stopping();
                }
            }
            Control::Pause => {
                for a in agents {
                    let _ = a.out_tx.send(Message::Pause);
                }
                self.collector.set_paused(true);
            }
            Control::Resume => {
                for a in agents {
                    let _ = a.out_tx.send(Message::Resume);
                }
                self.collector.set_paused(false);
            }
        }
    }

    /// Records every agent, the NLB's counts and the lost, then writes the summary.
    pub(super) async fn conclude(mut self, o: Settings) -> RunResult {
        let agents = &self.swarm.agents;
        let run_start = self.start.at;
        let starts: Vec<i64> = agents.iter().filter_map(|a| a.started_us).collect();
        let spread = match (starts.iter().min(), starts.iter().max()) {
            (Some(lo), Some(hi)) if starts.len() == agents.len() => Some((hi - lo) as f64 / 1000.0),
            _ => None,
        };
        let records = agents
            .iter()
            .map(|a| AgentRecord {
                name: a.info.name.clone(),
                host: a.info.host.clone(),
                share: a.share,
                established: a.established,
                errors: a.errors,
                last_report_s: a
                    .last_report
                    .map(|t| t.saturating_duration_since(run_start).as_secs_f64()),
                status: a.status,
                start_offset_ms: a.started_us.map(|us| us as f64 / 1000.0),
                intervals_received: a.intervals_received,
                last_interval: a.last_interval,
                late_reports: a.late_reports,
                synthetic: a.info.synthetic,
            })
            .collect();
        self.collector.set_agent_records(records, spread);
        if let Some(watch) = o.nlb_watch {
            self.collector.set_nlb(watch.finish().await);
        }
        let lost = |a: &&Agent| a.status == AgentStatus::Lost;
        if let Some(names) = agents
            .iter()
            .filter(lost)
            .map(|a| a.info.name.clone())
            .reduce(|a, b| a + ", " + &b)
            && o.roll.progress != Progress::Silent
        {
            log(&format!(
                "finished without agent(s) {names}: their data up to their last report is kept"
            ));
        }
        // With every agent lost, nothing played the plan to its end: whatever the thresholds
        // say of the few seconds that arrived, the run did not happen as asked.
        if self.abort_reason.is_none() && !agents.is_empty() && agents.iter().all(|a| lost(&a)) {
            self.abort_reason = Some("every agent was lost before the run's end".into());
        }
        self.collector.finish(self.abort_reason, &o.outputs)
    }
}

fn lose(agent: &mut Agent, collector: &mut Collector, index: usize, reason: &str) {
    if !agent.live() {
        return;
    }
    log(&format!("agent {} lost: {reason}", agent.info.name));
    agent.status = AgentStatus::Lost;
    // Dropping our side tells it too, if it can still hear.
    let _ = agent.out_tx.send(Message::Stop {
        reason: reason.to_string(),
    });
    collector.reporter_gone(index);
}
