//! The slot keeper: follows conntrack's events in the namespace and gives each forgotten or
//! closed flow's (node, target) slot back, plus the parsing of conntrack's lines it needs.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddrV4;
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::{KernelNlb, KernelPlan, nft, run};
use crate::nlb::lock;

impl KernelNlb {
    /// Starts the slot keeper: `conntrack -E` in the namespace, read by one thread that
    /// notes each admitted flow (NEW) and, when conntrack forgets it (DESTROY: idle timeout,
    /// termination) or sees it close without the release rule's mark, hands its slot to a
    /// second thread that deletes the elements in batches. Returns once conntrack is
    /// subscribed, so no flow's events are missed.
    pub(super) fn keep_slots(self: &Arc<Self>) -> Result<(), String> {
        let ns = self.plan.netns.clone();
        let mut child = Command::new("ip")
            // Line-buffered: a pipe would hold a quiet minute's events in stdio's buffer.
            .args([
                "netns",
                "exec",
                &ns,
                "stdbuf",
                "-oL",
                "conntrack",
                "-E",
                "-p",
                "tcp",
            ])
            .args(["-e", "NEW,UPDATE,DESTROY", "-b", "67108864"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `conntrack -E` in {ns}: {e}"))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("conntrack -E: no pipes".into());
        };
        *lock(&self.events) = Some(child);
        // Its first words on stderr (the buffer size it set) come after it subscribed.
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("nlb-kernel-events-err".into())
            .spawn(move || {
                let mut lines = BufReader::new(stderr).lines();
                let _ = ready_tx.send(lines.next().and_then(Result::ok));
                // Events the kernel could not queue are gone: say so once, since the ports of
                // the flows they were about then wait for the next check.
                let mut warned = false;
                for line in lines.map_while(Result::ok) {
                    if !warned && line.contains("ENOBUFS") {
                        warned = true;
                        eprintln!(
                            "stampede nlb: conntrack dropped events (ENOBUFS): the ports of \
                             flows it forgot (idle timeout, termination) wait for the 5 s check"
                        );
                    }
                }
            })
            .map_err(|e| format!("cannot start the event reader: {e}"))?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(line)) if line.contains("buffer size") => {}
            Ok(line) => {
                return Err(format!(
                    "`conntrack -E` in {ns} did not start: {}",
                    line.unwrap_or_default()
                ));
            }
            Err(_) => return Err(format!("`conntrack -E` in {ns} did not answer within 5 s")),
        }
        let (tx, rx) = mpsc::channel::<(usize, SocketAddrV4)>();
        let plan = self.plan.clone();
        std::thread::Builder::new()
            .name("nlb-kernel-events".into())
            .spawn(move || {
                let mut admitted = HashSet::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let (Some(pair), Some(client)) = (flow_pair(&line, &plan), flow_client(&line))
                    else {
                        continue;
                    };
                    let slot = (pair, client);
                    let event = line.split_whitespace().next().unwrap_or_default();
                    // A flow closed by FINs or a reset gave its slot back in the kernel.
                    let closed = (event == "[DESTROY]"
                        || matches!(flow_state(&line), Some("TIME_WAIT" | "CLOSE")))
                        && flow_mark(&line).is_some_and(|m| m & 0x200 == 0);
                    if event == "[NEW]" {
                        admitted.insert(slot);
                    } else if closed && admitted.remove(&slot) && tx.send(slot).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the event reader: {e}"))?;
        let plan = self.plan.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "a plain OS thread batches freed slots for 20 ms of wall time around a blocking recv_timeout"
        )]
        std::thread::Builder::new()
            .name("nlb-kernel-slots".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    let until = std::time::Instant::now() + Duration::from_millis(20);
                    while batch.len() < 4096 {
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(slot) => batch.push(slot),
                            Err(_) => break,
                        }
                    }
                    delete_slots(&plan, &batch);
                }
            })
            .map_err(|e| format!("cannot start the slot keeper: {e}"))?;
        Ok(())
    }

    /// Every pair's slot set as it is now, or None when a set cannot be read.
    pub(super) fn slot_elements(&self) -> Option<Vec<(usize, SocketAddrV4)>> {
        let p = &self.plan;
        let mut all = Vec::new();
        for pair in 0..p.nodes * p.targets.len() {
            let (k, i) = (pair / p.targets.len(), pair % p.targets.len());
            let json = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &p.netns,
                    "nft",
                    "-j",
                    "list",
                    "set",
                    "ip",
                    "nlb",
                    &format!("slots_{k}_{i}"),
                ],
            )
            .ok()?;
            let value: serde_json::Value = serde_json::from_str(&json).ok()?;
            for item in value["nftables"].as_array().into_iter().flatten() {
                for elem in item["set"]["elem"].as_array().into_iter().flatten() {
                    // With a timeout the element is `{"elem": {"val": {"concat": ..}, ..}}`.
                    let key = elem.pointer("/elem/val").unwrap_or(elem);
                    let parts = key["concat"].as_array();
                    let ip = parts.and_then(|c| c.first()).and_then(|v| v.as_str());
                    let port = parts.and_then(|c| c.get(1)).and_then(|v| v.as_u64());
                    if let (Some(ip), Some(port)) = (ip, port)
                        && let (Ok(ip), Ok(port)) = (ip.parse(), u16::try_from(port))
                    {
                        all.push((pair, SocketAddrV4::new(ip, port)));
                    }
                }
            }
        }
        Some(all)
    }
}

/// Deletes slots from their pairs' sets in one batch; if one of them is already gone (the
/// batch is refused whole), one by one.
pub(super) fn delete_slots(p: &KernelPlan, slots: &[(usize, SocketAddrV4)]) {
    if slots.is_empty() {
        return;
    }
    let line = |(pair, client): &(usize, SocketAddrV4)| {
        let (k, i) = (pair / p.targets.len(), pair % p.targets.len());
        format!(
            "delete element ip nlb slots_{k}_{i} {{ {} . {} }}\n",
            client.ip(),
            client.port()
        )
    };
    let batch: String = slots.iter().map(line).collect();
    if nft(&p.netns, &batch).is_err() {
        for slot in slots {
            let _ = nft(&p.netns, &line(slot));
        }
    }
}

/// A conntrack line's TCP state (`ESTABLISHED`, `TIME_WAIT`, ...), when it has one.
pub(super) fn flow_state(line: &str) -> Option<&str> {
    line.split_whitespace().find(|w| {
        matches!(
            *w,
            "SYN_SENT"
                | "SYN_RECV"
                | "ESTABLISHED"
                | "FIN_WAIT"
                | "CLOSE_WAIT"
                | "LAST_ACK"
                | "TIME_WAIT"
                | "CLOSE"
                | "SYN_SENT2"
        )
    })
}

/// A conntrack line's mark.
pub(super) fn flow_mark(line: &str) -> Option<usize> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("mark="))
        .and_then(|v| v.parse().ok())
}

/// A conntrack line's client: the original direction's source address and port.
pub(super) fn flow_client(line: &str) -> Option<SocketAddrV4> {
    let words = || line.split_whitespace();
    let ip = words().find_map(|w| w.strip_prefix("src="))?;
    let port = words().find_map(|w| w.strip_prefix("sport="))?;
    format!("{ip}:{port}").parse().ok()
}

/// Which (node, target) pair an `conntrack -L` line belongs to: its mark and reply source.
pub(super) fn flow_pair(line: &str, p: &KernelPlan) -> Option<usize> {
    // The low byte names the node; higher bits are the release rule's.
    let mark = flow_mark(line).map(|m| m & 0xff);
    let mut srcs = Vec::new();
    let mut sports = Vec::new();
    for field in line.split_whitespace() {
        if let Some(v) = field.strip_prefix("src=") {
            srcs.push(v);
        } else if let Some(v) = field.strip_prefix("sport=") {
            sports.push(v);
        }
    }
    let k = mark?.checked_sub(1).filter(|k| *k < p.nodes)?;
    let reply: SocketAddrV4 = format!("{}:{}", srcs.get(1)?, sports.get(1)?)
        .parse()
        .ok()?;
    let i = p.targets.iter().position(|t| *t == reply)?;
    Some(k * p.targets.len() + i)
}
