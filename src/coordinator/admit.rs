//! Admission: the accept loop and the handshake that authenticates each peer before it joins.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::gate::{self, Refusal, RefusalKind, RefusalLog};
use super::log;
use crate::wire::HANDSHAKE_TIMEOUT;
use crate::wire::{self, AgentInfo, Message, Opener, PROTOCOL_VERSION, Role, Sealer, WireError};

/// A peer that passed the handshake.
pub(super) struct Joined {
    pub info: AgentInfo,
    pub peer: SocketAddr,
    pub stream: TcpStream,
    /// The session's sealing ends: every frame after the handshake is authenticated.
    pub sealer: Sealer,
    pub opener: Opener,
}

async fn refuse(
    mut stream: TcpStream,
    kind: RefusalKind,
    reason: String,
) -> Result<Joined, Refusal> {
    // A peer that does not read must not hold this task: the refusal is best effort.
    let refused = Message::Refused {
        reason: reason.clone(),
    };
    let _ = timeout(
        Duration::from_secs(1),
        wire::write_message(&mut stream, &refused),
    )
    .await;
    Err(Refusal::new(kind, reason))
}

/// Authenticates one peer. Without a token only loopback peers are admitted.
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    token: Option<&[u8]>,
) -> Result<Joined, Refusal> {
    let step = |what: &'static str| {
        move |_| {
            Refusal::new(
                RefusalKind::Timeout,
                format!("no {what} within {HANDSHAKE_TIMEOUT:?}"),
            )
        }
    };
    let bad = |what: &'static str| {
        move |e: WireError| Refusal::new(RefusalKind::Malformed, format!("bad {what}: {e}"))
    };
    let hello = timeout(
        HANDSHAKE_TIMEOUT,
        wire::read_message_limited(&mut stream, wire::HANDSHAKE_MAX_FRAME),
    )
    .await
    .map_err(step("hello"))?
    .map_err(bad("hello"))?;
    let Message::Hello {
        version,
        nonce: agent_nonce,
        mut info,
    } = hello
    else {
        return Err(Refusal::new(
            RefusalKind::Malformed,
            "the first message was not a hello",
        ));
    };
    // Before a peer has proven anything its name is only text to print, and printed safely.
    info.name = gate::printable(&info.name, 128);
    info.host = gate::printable(&info.host, 255);
    if version != PROTOCOL_VERSION {
        return refuse(stream, RefusalKind::Version, format!(
            "agent {} speaks protocol version {version}, this coordinator speaks {PROTOCOL_VERSION}; run the same stampede release on both sides",
            info.name
        ))
        .await;
    }
    if token.is_none() && !peer.ip().is_loopback() {
        return refuse(stream, RefusalKind::NotLoopback, format!(
            "agent {} connects from {}, but this coordinator has no token and admits only loopback agents; give both sides the same --token-file",
            info.name,
            peer.ip()
        ))
        .await;
    }
    let nonce = wire::nonce();
    let proof = token.map_or_else(String::new, |t| {
        wire::proof(t, "coordinator", &agent_nonce, &nonce)
    });
    wire::write_message(
        &mut stream,
        &Message::Challenge {
            nonce: nonce.clone(),
            proof,
        },
    )
    .await
    .map_err(bad("stream"))?;
    let answer = timeout(
        HANDSHAKE_TIMEOUT,
        wire::read_message_limited(&mut stream, wire::HANDSHAKE_MAX_FRAME),
    )
    .await
    .map_err(step("proof"))?
    .map_err(bad("proof"))?;
    let given = match answer {
        Message::Proof { proof } => proof,
        Message::Refused { reason } => {
            return Err(Refusal::new(
                RefusalKind::Token,
                format!("agent {} gave up: {reason}", info.name),
            ));
        }
        _ => {
            return Err(Refusal::new(RefusalKind::Malformed, "expected a proof"));
        }
    };
    match token {
        Some(t) if !wire::verify(t, "agent", &nonce, &agent_nonce, &given) => {
            return refuse(
                stream,
                RefusalKind::Token,
                format!(
                    "agent {} did not prove the token (wrong or missing --token-file)",
                    info.name
                ),
            )
            .await;
        }
        None if !given.is_empty() => {
            return refuse(stream, RefusalKind::Token, format!(
                "agent {} has a token but this coordinator has none; give both sides the same --token-file",
                info.name
            ))
            .await;
        }
        _ => {}
    }
    wire::write_message(&mut stream, &Message::Welcome)
        .await
        .map_err(bad("stream"))?;
    let (sealer, opener) = wire::session_keys(
        token.unwrap_or_default(),
        &agent_nonce,
        &nonce,
        Role::Coordinator,
    );
    Ok(Joined {
        info,
        peer,
        stream,
        sealer,
        opener,
    })
}

/// Accepts peers, authenticates each on its own task, and hands the admitted ones over until
/// the swarm is full. Later peers are refused. Handshakes in flight are bounded and refusals
/// are logged once per kind and window (see `gate`).
pub(super) async fn accept_loop(
    listener: TcpListener,
    token: Option<Vec<u8>>,
    joined_tx: mpsc::Sender<Joined>,
    full: Arc<AtomicBool>,
) {
    let token: Option<Arc<[u8]>> = token.map(Into::into);
    let refusals = Arc::new(std::sync::Mutex::new(RefusalLog::default()));
    let pending = Arc::new(tokio::sync::Semaphore::new(gate::MAX_PENDING_HANDSHAKES));
    let note = |refusals: &std::sync::Mutex<RefusalLog>, peer, refusal: &Refusal| {
        let lines = match refusals.lock() {
            Ok(mut log) => log.refused(peer, refusal, Instant::now()),
            Err(_) => Vec::new(),
        };
        lines.iter().for_each(|l| log(l));
    };
    let mut flush = tokio::time::interval(gate::LOG_WINDOW);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = flush.tick() => {
                let lines = refusals.lock().map(|mut l| l.flush(Instant::now())).unwrap_or_default();
                lines.iter().for_each(|l| log(l));
                continue;
            }
        };
        let Ok((stream, peer)) = accepted else {
            // Out of files for a moment: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            drop(stream);
            let busy = Refusal::new(
                RefusalKind::Busy,
                format!(
                    "{} handshakes already in flight; dropped without reading",
                    gate::MAX_PENDING_HANDSHAKES
                ),
            );
            note(&refusals, peer, &busy);
            continue;
        };
        let token = token.clone();
        let joined_tx = joined_tx.clone();
        let full = full.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = if full.load(Ordering::Relaxed) {
                refuse(
                    stream,
                    RefusalKind::Full,
                    "the swarm is already complete".into(),
                )
                .await
            } else {
                handshake(stream, peer, token.as_deref()).await
            };
            match outcome {
                Ok(joined) => {
                    let _ = joined_tx.send(joined).await;
                }
                Err(refusal) => note(&refusals, peer, &refusal),
            }
        });
    }
}
