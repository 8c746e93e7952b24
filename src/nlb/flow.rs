//! One flow through the emulator: route it, take a source port (preservation off), connect
//! upstream from the node's IP (or the client's), then copy both ways until both sides close,
//! one resets, the flow idles out, or its target's connection termination ends it.
//!
//! Idle tracking costs no timer per byte: each wake-up that moved bytes stamps one `Instant`,
//! and one sleep per flow, armed for the stamp plus the timeout, re-arms itself when it finds
//! the flow was busy. Buffers live on the stack of a poll, not in the flow; only bytes a slow
//! receiver has not taken yet are kept, in a `Vec` that is empty otherwise.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::metrics::Counters;
use super::pool::PortLease;
use super::{Exhaustion, Nlb};
use crate::net::{set_linger_zero, start_connect};

/// How long the emulator waits for a target to accept (a real NLB retries its SYN about as
/// long before giving up on the flow).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const COPY_BUFFER: usize = 64 * 1024;

/// Closes `stream` with a reset (RST) instead of a FIN.
fn reset(stream: TcpStream) {
    set_linger_zero(stream.as_raw_fd());
    drop(stream);
}

/// Counts one event at the flow's node and at its target.
struct Place<'a> {
    node: &'a Counters,
    target: &'a Counters,
}

impl Place<'_> {
    fn add(&self, pick: fn(&Counters) -> &std::sync::atomic::AtomicU64, n: u64) {
        pick(self.node).fetch_add(n, Ordering::Relaxed);
        pick(self.target).fetch_add(n, Ordering::Relaxed);
    }
}

/// Keeps a flow in `ActiveFlowCount` (and its port leased) while it lives.
struct Active<'a> {
    place: &'a Place<'a>,
    _lease: Option<PortLease>,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.place.node.active.fetch_sub(1, Ordering::Relaxed);
        self.place.target.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn serve(nlb: Arc<Nlb>, client: TcpStream, peer: SocketAddr) {
    let route = nlb.route(peer);
    let node = &nlb.nodes[route.node];
    let Some((target_index, generation)) = route.target else {
        // No registered target anywhere: nothing can take the flow.
        node.counters.elb_resets.fetch_add(1, Ordering::Relaxed);
        reset(client);
        return;
    };
    let target = &nlb.targets[target_index];
    let place = Place {
        node: &node.counters,
        target: &target.counters,
    };
    let lease = match nlb.pool(route.node, target_index) {
        None => None,
        Some(pool) => match pool.allocate() {
            Ok(lease) => Some(lease),
            Err(refusal) => {
                place.add(|c| &c.port_allocation_errors, 1);
                match refusal {
                    super::pool::Refusal::Full => {
                        place.add(|c| &c.port_allocation_errors_concurrent, 1)
                    }
                    super::pool::Refusal::Rate => {
                        place.add(|c| &c.port_allocation_errors_per_minute, 1)
                    }
                }
                refuse(&nlb, client, &place).await;
                return;
            }
        },
    };
    place.add(|c| &c.new_flows, 1);
    place.add(|c| &c.active, 1);
    let active = Active {
        place: &place,
        _lease: lease,
    };
    let source = if nlb.config.client_ip_preservation {
        peer.ip()
    } else {
        node.ip
    };
    let upstream = match connect(source, target.addr).await {
        Ok(upstream) => upstream,
        Err(e) => {
            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                // The kernel ran out of ports before the pool did: a concurrent wall too.
                place.add(|c| &c.port_allocation_errors, 1);
                place.add(|c| &c.port_allocation_errors_concurrent, 1);
            } else if e.kind() == io::ErrorKind::ConnectionRefused {
                place.add(|c| &c.target_resets, 1);
            } else {
                place.add(|c| &c.elb_resets, 1);
            }
            reset(client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let terminate_rx = target.terminate_tx.subscribe();
    let mut counted = Counted {
        flow: Flow {
            client,
            upstream,
            up: Pipe::default(),
            down: Pipe::default(),
            last: Instant::now(),
        },
        place: &place,
    };
    let idle = nlb.config.idle_timeout;
    let end = until_end(&mut counted, idle, terminate_rx, generation).await;
    let Flow {
        client, upstream, ..
    } = counted.flow;
    match end {
        End::Closed => {}
        End::Client => {
            place.add(|c| &c.client_resets, 1);
            reset(upstream);
            reset(client);
        }
        End::Target => {
            place.add(|c| &c.target_resets, 1);
            reset(client);
            reset(upstream);
        }
        End::Terminated => {
            place.add(|c| &c.elb_resets, 2);
            reset(client);
            reset(upstream);
        }
        End::Idle => {
            // Forgotten: out of the active count, its port free again, at once.
            drop(active);
            forgotten(client, upstream, idle, &place).await;
        }
    }
}

/// What `until_end` needs of a flow's copy: the real one (`Counted`), or a stand-in without
/// sockets so that tests can run the idle and termination clocks on a paused clock.
trait Copying {
    /// Moves what can move now; ready once the flow is over.
    fn pump(&mut self, cx: &mut Context<'_>) -> Poll<End>;
    /// When bytes last moved either way.
    fn last(&self) -> Instant;
}

/// A flow's copy, counting its bytes at its place.
struct Counted<'a> {
    flow: Flow,
    place: &'a Place<'a>,
}

impl Copying for Counted<'_> {
    fn pump(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.flow.pump(self.place, cx)
    }

    fn last(&self) -> Instant {
        self.flow.last
    }
}

/// Copies until the flow ends: both ends closed or one reset, no bytes moved for `idle`, or
/// its target's termination (`terminate_rx`) reached the flow's `generation`.
async fn until_end(
    copy: &mut impl Copying,
    idle: Duration,
    mut terminate_rx: watch::Receiver<u64>,
    generation: u64,
) -> End {
    // The termination may have come while this flow was still connecting, before it watched.
    if *terminate_rx.borrow_and_update() >= generation {
        return End::Terminated;
    }
    let sleep = tokio::time::sleep_until(copy.last() + idle);
    tokio::pin!(sleep);
    let mut watching = true;
    loop {
        let wake = tokio::select! {
            end = std::future::poll_fn(|cx| copy.pump(cx)) => Wake::Ended(end),
            () = &mut sleep => Wake::Timer,
            changed = terminate_rx.changed(), if watching => Wake::Termination(changed.is_ok()),
        };
        match wake {
            Wake::Ended(end) => return end,
            Wake::Timer => {
                let due = copy.last() + idle;
                if Instant::now() < due {
                    sleep.as_mut().reset(due);
                } else {
                    return End::Idle;
                }
            }
            Wake::Termination(false) => watching = false,
            Wake::Termination(true) => {
                if *terminate_rx.borrow_and_update() >= generation {
                    return End::Terminated;
                }
            }
        }
    }
}

/// A flow that got no port: reset it, or hold it unanswered (see `Exhaustion::Drop`).
async fn refuse(nlb: &Nlb, client: TcpStream, place: &Place<'_>) {
    match nlb.config.on_exhaustion {
        Exhaustion::Reset => {
            place.add(|c| &c.elb_resets, 1);
            reset(client);
        }
        Exhaustion::Drop => {
            let silent = async {
                let mut buf = [0u8; 1024];
                loop {
                    if client.readable().await.is_err() {
                        return;
                    }
                    match client.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            };
            let _ = tokio::time::timeout(nlb.config.idle_timeout, silent).await;
            reset(client);
        }
    }
}

async fn connect(source: std::net::IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let stream = start_connect(Some(source), target, None)?;
    let connected = async {
        stream.writable().await?;
        match stream.take_error()? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connected).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// The flow after its idle timeout: the emulator has forgotten it, the ends have not. Each
/// end's next packet (data or FIN) is answered with a reset. An end still silent one more
/// timeout later is reset without counting, so the emulator does not keep its descriptor
/// forever (a real NLB keeps none; that end would be reset on its next packet all the same).
async fn forgotten(client: TcpStream, upstream: TcpStream, idle: Duration, place: &Place<'_>) {
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    let mut client = Some(client);
    let mut upstream = Some(upstream);
    while client.is_some() || upstream.is_some() {
        let client_sent = async {
            match &client {
                Some(s) => next_packet(s).await,
                None => std::future::pending().await,
            }
        };
        let upstream_sent = async {
            match &upstream {
                Some(s) => next_packet(s).await,
                None => std::future::pending().await,
            }
        };
        let which = tokio::select! {
            () = client_sent => Some(true),
            () = upstream_sent => Some(false),
            () = &mut deadline => None,
        };
        let side = match which {
            Some(true) => client.take(),
            Some(false) => upstream.take(),
            None => break,
        };
        if let Some(stream) = side {
            place.add(|c| &c.elb_resets, 1);
            reset(stream);
        }
    }
    for stream in [client, upstream].into_iter().flatten() {
        reset(stream);
    }
}

/// Waits until the peer has sent something (data, a FIN or a reset).
async fn next_packet(stream: &TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            _ => return,
        }
    }
}

enum Wake {
    Ended(End),
    Timer,
    Termination(bool),
}

/// How a flow ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Both ends closed in order.
    Closed,
    /// The client reset (or broke) the flow.
    Client,
    /// The target reset (or broke) the flow.
    Target,
    Idle,
    Terminated,
}

/// One direction of a flow.
#[derive(Default)]
struct Pipe {
    /// Bytes read but not yet taken by the receiver; empty unless the receiver is slow.
    pending: Vec<u8>,
    /// The sender closed its side; a FIN is still to be passed on.
    eof: bool,
    /// The FIN was passed on: this direction is over.
    done: bool,
}

struct Flow {
    client: TcpStream,
    upstream: TcpStream,
    /// Client to target.
    up: Pipe,
    /// Target to client.
    down: Pipe,
    /// When bytes last moved either way.
    last: Instant,
}

/// Which end failed a copy: the one read from, or the one written to.
enum Fault {
    Read,
    Write,
}

impl Flow {
    /// Moves what can move now; ready once the flow is over.
    fn pump(&mut self, place: &Place<'_>, cx: &mut Context<'_>) -> Poll<End> {
        let mut moved = 0u64;
        let up = copy(
            &mut self.client,
            &mut self.upstream,
            &mut self.up,
            &mut moved,
            cx,
        );
        let down = copy(
            &mut self.upstream,
            &mut self.client,
            &mut self.down,
            &mut moved,
            cx,
        );
        if moved > 0 {
            self.last = Instant::now();
            place.add(|c| &c.bytes, moved);
        }
        match (up, down) {
            (Poll::Ready(Err(Fault::Read)), _) | (_, Poll::Ready(Err(Fault::Write))) => {
                Poll::Ready(End::Client)
            }
            (Poll::Ready(Err(Fault::Write)), _) | (_, Poll::Ready(Err(Fault::Read))) => {
                Poll::Ready(End::Target)
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(End::Closed),
            _ => Poll::Pending,
        }
    }
}

/// Copies `from` to `to` until `from` has nothing more now; ready once the direction is over
/// (its FIN passed on) or failed.
fn copy(
    from: &mut TcpStream,
    to: &mut TcpStream,
    pipe: &mut Pipe,
    moved: &mut u64,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Fault>> {
    let mut buf = [0u8; COPY_BUFFER];
    loop {
        if pipe.done {
            return Poll::Ready(Ok(()));
        }
        while !pipe.pending.is_empty() {
            match Pin::new(&mut *to).poll_write(cx, &pipe.pending) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => {
                    pipe.pending.drain(..n);
                }
                Poll::Ready(_) => return Poll::Ready(Err(Fault::Write)),
            }
        }
        if pipe.eof {
            return match Pin::new(&mut *to).poll_shutdown(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) => {
                    pipe.done = true;
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(_)) => Poll::Ready(Err(Fault::Write)),
            };
        }
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *from).poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(Fault::Read)),
            Poll::Ready(Ok(())) => {}
        }
        let data = read.filled();
        if data.is_empty() {
            pipe.eof = true;
            continue;
        }
        *moved += data.len() as u64;
        let mut sent = 0;
        while sent < data.len() {
            match to.try_write(&data[sent..]) {
                Ok(n) if n > 0 => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Ok(_) | Err(_) => return Poll::Ready(Err(Fault::Write)),
            }
        }
        if sent < data.len() {
            pipe.pending.extend_from_slice(&data[sent..]);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The idle timeout and the deregistration delay on a paused clock, with AWS's numbers,
    //! to the second. Flows here are `Fake` copies, not sockets: a paused clock jumps ahead
    //! whenever the runtime has nothing to do, and a runtime waiting on the kernel counts as
    //! such, so real I/O would let these timers fire early.

    use std::net::SocketAddr;

    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio::time::sleep;

    use super::*;
    use crate::nlb::{NlbConfig, Route};

    const A: &str = "127.0.0.1:7000";
    const B: &str = "127.0.0.1:7001";

    /// A flow's copy without sockets: each `()` received is bytes moved now; the flow closes
    /// in order once the sender is dropped.
    struct Fake {
        bytes_rx: mpsc::UnboundedReceiver<()>,
        last: Instant,
    }

    impl Copying for Fake {
        fn pump(&mut self, cx: &mut Context<'_>) -> Poll<End> {
            loop {
                match self.bytes_rx.poll_recv(cx) {
                    Poll::Ready(Some(())) => self.last = Instant::now(),
                    Poll::Ready(None) => return Poll::Ready(End::Closed),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }

        fn last(&self) -> Instant {
            self.last
        }
    }

    type Ended = JoinHandle<(End, Instant)>;

    /// A flow of `generation` starting now on its own task: the sender that moves bytes on it,
    /// and how and when it ends.
    fn flow(
        idle: Duration,
        terminate_rx: watch::Receiver<u64>,
        generation: u64,
    ) -> (mpsc::UnboundedSender<()>, Ended) {
        let (bytes_tx, bytes_rx) = mpsc::unbounded_channel();
        let mut fake = Fake {
            bytes_rx,
            last: Instant::now(),
        };
        let ended = tokio::spawn(async move {
            let end = until_end(&mut fake, idle, terminate_rx, generation).await;
            (end, Instant::now())
        });
        (bytes_tx, ended)
    }

    /// How and when `ended` ends: bounded in virtual time, so that a flow that never ends
    /// fails the test at once instead of hanging it.
    async fn end_of(ended: Ended) -> (End, Instant) {
        tokio::time::timeout(Duration::from_secs(24 * 3600), ended)
            .await
            .expect("the flow ends within a (virtual) day")
            .unwrap()
    }

    /// Moves bytes on a flow every `every` until the flow has ended.
    fn heartbeat(bytes_tx: mpsc::UnboundedSender<()>, every: Duration) {
        tokio::spawn(async move {
            loop {
                sleep(every).await;
                if bytes_tx.send(()).is_err() {
                    return;
                }
            }
        });
    }

    /// An emulator with AWS's defaults for targets a and b on one node.
    fn aws(connection_termination: bool) -> Arc<Nlb> {
        let mut config = NlbConfig::new(vec![A.parse().unwrap(), B.parse().unwrap()], 1);
        assert_eq!(config.idle_timeout, Duration::from_secs(350));
        assert_eq!(config.deregistration_delay, Duration::from_secs(300));
        config.connection_termination = connection_termination;
        Nlb::new(config)
    }

    /// A flow admitted now that the emulator routes to `target` (by its index), as `serve`
    /// admits one: that target's termination watched, the generation of its registration.
    fn admit(nlb: &Nlb, target: usize) -> (mpsc::UnboundedSender<()>, Ended) {
        let (index, generation) = (20_000..30_000)
            .find_map(|port| {
                let client = SocketAddr::from(([127, 0, 0, 9], port));
                match nlb.route(client) {
                    Route {
                        target: Some((index, generation)),
                        ..
                    } if index == target => Some((index, generation)),
                    _ => None,
                }
            })
            .expect("a client port routed to the target");
        let terminate_rx = nlb.targets[index].terminate_tx.subscribe();
        flow(nlb.config.idle_timeout, terminate_rx, generation)
    }

    /// Whether new flows, from any of a hundred clients, all avoid target a.
    fn new_flows_avoid_a(nlb: &Nlb) -> bool {
        (40_000..40_100).all(|port| {
            let client = SocketAddr::from(([127, 0, 0, 9], port));
            nlb.route(client).target.map(|t| t.0) != Some(0)
        })
    }

    fn terminated_generation(nlb: &Nlb, target: usize) -> u64 {
        *nlb.targets[target].terminate_tx.borrow()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_flow_is_forgotten_at_350_s_and_not_at_349_s() {
        let nlb = aws(false);
        let started = Instant::now();
        let (_bytes_tx, ended) = admit(&nlb, 0);
        sleep(Duration::from_secs(349)).await;
        assert!(!ended.is_finished(), "forgotten before its idle timeout");
        assert_eq!(
            end_of(ended).await,
            (End::Idle, started + Duration::from_secs(350))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_moved_restart_the_idle_clock() {
        let nlb = aws(false);
        let (bytes_tx, ended) = admit(&nlb, 0);
        // Bytes each 349 s, just within the timeout each time, keep the flow...
        for _ in 0..3 {
            sleep(Duration::from_secs(349)).await;
            bytes_tx.send(()).unwrap();
        }
        let last_moved = Instant::now();
        sleep(Duration::from_secs(349)).await;
        assert!(
            !ended.is_finished(),
            "forgotten though bytes moved 349 s ago"
        );
        // ...which is forgotten 350 s after the last of them.
        assert_eq!(
            end_of(ended).await,
            (End::Idle, last_moved + Duration::from_secs(350))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_termination_ends_the_flows_of_its_generation_and_older_only() {
        let idle = Duration::from_secs(350);
        let started = Instant::now();
        let (terminate_tx, terminate_rx) = watch::channel(0);
        let (_old_tx, old) = flow(idle, terminate_rx.clone(), 1);
        let (young_tx, young) = flow(idle, terminate_rx.clone(), 2);
        sleep(Duration::from_secs(10)).await;
        terminate_tx.send_replace(1);
        let at = started + Duration::from_secs(10);
        assert_eq!(end_of(old).await, (End::Terminated, at));
        // A flow of that generation that watches only after the termination ends at once.
        let (_late_tx, late) = flow(idle, terminate_rx, 1);
        assert_eq!(end_of(late).await, (End::Terminated, at));
        assert!(!young.is_finished(), "a younger generation is spared");
        drop(young_tx);
        assert_eq!(end_of(young).await, (End::Closed, at));
    }

    #[tokio::test(start_paused = true)]
    async fn with_connection_termination_a_deregistered_targets_flows_end_at_300_s() {
        let nlb = aws(true);
        let (on_a_tx, on_a) = admit(&nlb, 0);
        let (on_b_tx, on_b) = admit(&nlb, 1);
        // Both flows busy, so that neither idles out.
        heartbeat(on_a_tx, Duration::from_secs(100));
        heartbeat(on_b_tx, Duration::from_secs(100));
        sleep(Duration::from_secs(150)).await;
        nlb.deregister(A.parse().unwrap()).unwrap();
        let deregistered = Instant::now();
        assert!(new_flows_avoid_a(&nlb));
        sleep(Duration::from_secs(299)).await;
        assert!(!on_a.is_finished(), "terminated before the delay ended");
        assert_eq!(terminated_generation(&nlb, 0), 0);
        assert_eq!(
            end_of(on_a).await,
            (End::Terminated, deregistered + Duration::from_secs(300))
        );
        assert_eq!(terminated_generation(&nlb, 0), 1);
        sleep(Duration::from_secs(1000)).await;
        assert!(!on_b.is_finished(), "b's flow untouched");
    }

    #[tokio::test(start_paused = true)]
    async fn without_connection_termination_deregistered_flows_outlive_the_delay() {
        let nlb = aws(false);
        let (bytes_tx, ended) = admit(&nlb, 0);
        nlb.deregister(A.parse().unwrap()).unwrap();
        sleep(Duration::from_secs(340)).await;
        bytes_tx.send(()).unwrap();
        let last_moved = Instant::now();
        sleep(Duration::from_secs(349)).await;
        assert!(!ended.is_finished());
        assert_eq!(terminated_generation(&nlb, 0), 0);
        // Only its own idle timeout ends it.
        assert_eq!(
            end_of(ended).await,
            (End::Idle, last_moved + Duration::from_secs(350))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn registering_again_within_the_delay_cancels_the_termination() {
        let nlb = aws(true);
        let a: SocketAddr = A.parse().unwrap();
        let started = Instant::now();
        let (old_tx, old) = admit(&nlb, 0);
        heartbeat(old_tx, Duration::from_secs(100));
        nlb.deregister(a).unwrap();
        sleep(Duration::from_secs(100)).await;
        nlb.register(a).unwrap();
        let (young_tx, young) = admit(&nlb, 0);
        heartbeat(young_tx, Duration::from_secs(100));
        // Past the first delay: nothing terminated.
        sleep(Duration::from_secs(250)).await;
        assert_eq!(terminated_generation(&nlb, 0), 0);
        assert!(!old.is_finished() && !young.is_finished());
        // Deregistered again at 350 s: a delay of its own, not the rest of the first one.
        nlb.deregister(a).unwrap();
        let again = Instant::now();
        assert_eq!(again, started + Duration::from_secs(350));
        sleep(Duration::from_secs(299)).await;
        assert_eq!(terminated_generation(&nlb, 0), 0);
        let end = (End::Terminated, again + Duration::from_secs(300));
        assert_eq!(end_of(old).await, end);
        assert_eq!(end_of(young).await, end);
        assert_eq!(terminated_generation(&nlb, 0), 2);
    }
}
