//! What stands between the coordinator's port and strangers: a bound on handshakes in flight,
//! and a refusal log that names each kind of refusal once per window and then counts, so a
//! flood of bad peers can neither exhaust the coordinator nor bury its log.
//!
//! It decides nothing about who is admitted (that is the handshake's job); it only limits how
//! much refusing costs.

use std::time::Duration;

use tokio::time::Instant;

/// Handshakes in flight at once; a peer past this is dropped before anything is read. Each one
/// costs at most a task, a socket and a `HANDSHAKE_MAX_FRAME` buffer for `2 x
/// HANDSHAKE_TIMEOUT`, and an honest agent's handshake takes milliseconds.
pub const MAX_PENDING_HANDSHAKES: usize = 128;

/// Each kind of refusal is written once per window; the rest are counted.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not our protocol: garbage, a frame over the limit, a message out of order.
    Malformed,
    /// Too slow to say hello or prove the token.
    Timeout,
    /// Another protocol version.
    Version,
    /// Failed to prove the token, or proved one we do not have.
    Token,
    /// No token, and not on loopback.
    NotLoopback,
    /// Came after every expected agent had joined.
    Full,
    /// Came while `MAX_PENDING_HANDSHAKES` were already in flight.
    Busy,
}

impl RefusalKind {
    const ALL: [RefusalKind; 7] = [
        RefusalKind::Malformed,
        RefusalKind::Timeout,
        RefusalKind::Version,
        RefusalKind::Token,
        RefusalKind::NotLoopback,
        RefusalKind::Full,
        RefusalKind::Busy,
    ];

    fn label(self) -> &'static str {
        match self {
            RefusalKind::Malformed => "malformed",
            RefusalKind::Timeout => "too slow",
            RefusalKind::Version => "wrong version",
            RefusalKind::Token => "wrong token",
            RefusalKind::NotLoopback => "not loopback",
            RefusalKind::Full => "swarm complete",
            RefusalKind::Busy => "too many handshakes",
        }
    }
}

/// Why one peer was turned away.
#[derive(Debug)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub reason: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            reason: reason.into(),
        }
    }
}

#[derive(Default)]
struct Window {
    opened: Option<Instant>,
    suppressed: u64,
}

/// Refusals, rate-limited per kind. Returns the lines to write; the caller writes them.
#[derive(Default)]
pub struct RefusalLog {
    windows: [Window; RefusalKind::ALL.len()],
}

impl RefusalLog {
    /// A refusal at `now`: its line if it is the first of its kind in the window.
    pub fn refused(
        &mut self,
        peer: std::net::SocketAddr,
        refusal: &Refusal,
        now: Instant,
    ) -> Vec<String> {
        let mut lines = self.flush(now);
        let window = &mut self.windows[refusal.kind as usize];
        if window.opened.is_some() {
            window.suppressed += 1;
        } else {
            window.opened = Some(now);
            lines.push(format!("refused {peer}: {}", refusal.reason));
        }
        lines
    }

    /// Closes the windows that have run out, with a count of what they held back.
    pub fn flush(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        for (kind, window) in RefusalKind::ALL.iter().zip(&mut self.windows) {
            let Some(opened) = window.opened else {
                continue;
            };
            if now.saturating_duration_since(opened) < LOG_WINDOW {
                continue;
            }
            if window.suppressed > 0 {
                lines.push(format!(
                    "refused {} more peer(s) ({}) in the last {}s",
                    window.suppressed,
                    kind.label(),
                    LOG_WINDOW.as_secs()
                ));
            }
            *window = Window::default();
        }
        lines
    }
}

/// A peer-given name as it may appear in a log line or a summary: control characters (a
/// terminal escape, a forged newline) become `?`, and it is cut at `max` characters.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_cannot_forge_lines_or_flood_the_log() {
        assert_eq!(printable("agent-1", 64), "agent-1");
        assert_eq!(
            printable("x\nstampede coordinator: agent y joined\u{1b}[2J", 64),
            "x?stampede coordinator: agent y joined?[2J"
        );
        assert_eq!(printable(&"a".repeat(70_000), 64).chars().count(), 65);
    }

    #[test]
    fn each_kind_is_written_once_per_window_then_counted() {
        let mut log = RefusalLog::default();
        let peer = "127.0.0.1:9".parse().unwrap();
        let t0 = Instant::now();
        let token = Refusal::new(RefusalKind::Token, "agent x did not prove the token");
        let junk = Refusal::new(RefusalKind::Malformed, "bad hello");
        assert_eq!(log.refused(peer, &token, t0).len(), 1);
        for i in 0..1000 {
            let at = t0 + Duration::from_millis(i);
            assert!(log.refused(peer, &token, at).is_empty());
        }
        // Another kind still gets its own first line.
        assert_eq!(log.refused(peer, &junk, t0).len(), 1);
        assert!(log.flush(t0 + Duration::from_secs(5)).is_empty());
        let lines = log.flush(t0 + LOG_WINDOW);
        assert_eq!(
            lines,
            vec!["refused 1000 more peer(s) (wrong token) in the last 10s"]
        );
        // A new window starts with a line again.
        let later = t0 + LOG_WINDOW + Duration::from_secs(1);
        assert_eq!(log.refused(peer, &token, later).len(), 1);
    }
}
