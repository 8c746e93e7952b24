//! Plain TCP connections without a task each: a worker's table of connection states, one epoll
//! instance for all their sockets, and one timer queue for all their deadlines.
//!
//! A tokio task per connection costs two allocations that no future can shrink: the task cell
//! (512 B) and the socket's registration (256 B), 768 of the ~810 bytes a held connection cost.
//! Here a connection is one 56-byte `Conn` in a vector indexed by slot, plus at most a couple
//! of 16-byte timer entries; its socket sits in this worker's own epoll set, which tokio sees as
//! a single file descriptor. Connect is timed from the planned instant, heartbeats from their
//! schedule, failures by kind, reconnects by the policy in force, all counted through the
//! shard's accounting (`Shard::connected`, `Shard::up`) as the other protocols' path is.
//!
//! Two levels of up: a connection is *connected* when its TCP handshake completes and
//! *established* when the echo of its first heartbeat, sent at once, comes back. A server
//! whose kernel accepted the connection but which never answers leaves it connected only.
//!
//! Deadlines live in a binary heap with lazy deletion: each connection remembers the deadline of
//! its one live entry (`queued`), and an entry that no longer matches is skipped when it comes
//! up. A heartbeat cycle queues the earlier of its echo timeout and its next send, so with a
//! timeout longer than the interval a connection keeps one entry, not one per heartbeat.
//!
//! Single-threaded like the rest of the shard: it must not be shared across threads, and it
//! never blocks (every socket is non-blocking, `epoll_wait` is called with a zero timeout).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::shard::Shard;
use super::timing::{TIMER_GRANULARITY, from_schedule, heartbeat_offset, micros};
use crate::metrics::{ErrorKind, Latency};

/// No deadline.
const NONE: u64 = u64::MAX;
/// Events taken from the kernel per `epoll_wait`.
const EVENTS: usize = 1024;
/// Bytes read per `read` call; echoes are small, anything more is read again.
const READ_CHUNK: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing: never opened, closed by the plan, or given up.
    Empty,
    /// Waiting to reconnect until `wake`.
    Backoff,
    /// `connect()` in flight since `began`; gives up at `wake`.
    Connecting,
    /// Held without heartbeats: only watching for the peer going away.
    Silent,
    /// Held; the next heartbeat is due at `scheduled` (= `wake`).
    Idle,
    /// Sending the heartbeat sent at `began`; `count` bytes are out.
    Sending,
    /// Waiting for the echo of the heartbeat sent at `began`; `count` bytes are back.
    Echo,
}

/// One slot's connection. Times are microseconds since the shard's start.
#[derive(Clone, Copy, Debug)]
struct Conn {
    fd: RawFd,
    state: State,
    /// The target set this connection was opened in.
    set: u8,
    /// Established: its first heartbeat's echo came back (never, for a silent connection).
    proven: bool,
    count: u32,
    /// Attempts since the last success (0 for a first connection).
    attempt: u32,
    /// The previous backoff, for decorrelated jitter.
    previous_ms: u32,
    /// Start lag beyond the timer's grid, counted into the connect latency.
    lag_us: u32,
    /// When the current state's deadline falls.
    wake: u64,
    /// The deadline of this connection's live timer entry.
    queued: u64,
    /// Connecting: the attempt's planned instant. Held: the next heartbeat's planned send.
    scheduled: u64,
    /// Connecting: when `connect()` was called. Held: when the heartbeat went out.
    began: u64,
}

impl Conn {
    const EMPTY: Conn = Conn {
        fd: -1,
        state: State::Empty,
        set: 0,
        proven: false,
        count: 0,
        attempt: 0,
        previous_ms: 0,
        lag_us: 0,
        wake: NONE,
        queued: NONE,
        scheduled: 0,
        began: 0,
    };

    fn held(&self) -> bool {
        matches!(
            self.state,
            State::Silent | State::Idle | State::Sending | State::Echo
        )
    }

    /// Up as far as it can be: established, or connected when it holds silently. A loss of
    /// an up connection is a disruption; one that never got there is a failed attempt.
    fn is_up(&self) -> bool {
        self.proven || self.state == State::Silent
    }
}

/// The worker's connections. Owned by the shard loop; see the module comment.
pub(crate) struct Table {
    epoll: AsyncFd<OwnedFd>,
    conns: Vec<Conn>,
    timers: BinaryHeap<Reverse<(u64, u32)>>,
    events: Vec<libc::epoll_event>,
    /// Events taken by the last `poll_io`, not yet handled.
    pending: usize,
    worker: u64,
    workers: u64,
}

impl Drop for Table {
    fn drop(&mut self) {
        for conn in &self.conns {
            if conn.fd >= 0 {
                // SAFETY: the table owns every fd it stores and closes each once.
                unsafe { libc::close(conn.fd) };
            }
        }
    }
}

impl Table {
    /// An empty table for shard `worker` of `workers`. Needs a tokio runtime with I/O enabled.
    pub fn new(worker: usize, workers: usize) -> io::Result<Table> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd keeps its fd open, and the same one, until it is dropped with
        // the AsyncFd.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Table {
            epoll,
            conns: Vec::new(),
            timers: BinaryHeap::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            pending: 0,
            worker: worker as u64,
            workers: workers.max(1) as u64,
        })
    }

    fn slot(&self, index: usize) -> u64 {
        index as u64 * self.workers + self.worker
    }

    fn index(&self, slot: u64) -> usize {
        (slot / self.workers) as usize
    }

    fn now(shard: &Shard) -> u64 {
        micros(Instant::now().saturating_duration_since(shard.start))
    }

    fn instant(shard: &Shard, us: u64) -> Instant {
        shard.start + Duration::from_micros(us)
    }

    /// The earliest deadline queued, stale or not (a stale one costs one early wake-up).
    pub fn next_deadline(&self, shard: &Shard) -> Option<Instant> {
        self.timers
            .peek()
            .map(|Reverse((at, _))| Self::instant(shard, *at))
    }

    /// Queues `at` for connection `index` unless an entry at or before it is already queued;
    /// that entry re-queues the rest when it comes up.
    fn arm(&mut self, index: usize, at: u64) {
        let conn = &mut self.conns[index];
        if at < conn.queued {
            conn.queued = at;
            self.timers.push(Reverse((at, index as u32)));
        }
    }

    /// Plan event: slot `slot`'s first connection, planned for `intended`.
    pub fn open(&mut self, shard: &Shard, slot: u64, intended: Instant) {
        let index = self.index(slot);
        if self.conns.len() <= index {
            self.conns.resize(index + 1, Conn::EMPTY);
        }
        self.release(shard, index);
        self.conns[index] = Conn::EMPTY;
        let planned = micros(intended.saturating_duration_since(shard.start));
        self.connect(shard, index, planned);
    }

    /// Plan event: the slot's connection ends (a drain or the plan's end), whatever its state.
    pub fn close(&mut self, shard: &Shard, slot: u64) {
        let index = self.index(slot);
        if index < self.conns.len() {
            self.release(shard, index);
            self.conns[index] = Conn::EMPTY;
        }
    }

    /// Plan event: a storm. An established connection is closed (with a reset if asked) and
    /// reconnects under the policy in force; one that is not established keeps its own course.
    pub fn kick(&mut self, shard: &Shard, slot: u64, reset: bool) {
        let index = self.index(slot);
        if !self.conns.get(index).is_some_and(Conn::held) {
            return;
        }
        if reset {
            crate::net::set_linger_zero(self.conns[index].fd);
        }
        if self.conns[index].is_up() {
            shard.went_down();
        }
        self.release(shard, index);
        let conn = &mut self.conns[index];
        conn.state = State::Empty;
        conn.attempt = 1;
        conn.previous_ms = 0;
        self.reconnect_later(shard, index);
    }

    /// Closes everything at the run's end. The shard has set `tearing_down`, so these closes
    /// are not counted as the peer's.
    pub fn teardown(&mut self, shard: &Shard) {
        for index in 0..self.conns.len() {
            self.release(shard, index);
            self.conns[index] = Conn::EMPTY;
        }
        self.timers.clear();
    }

    /// Closes the connection's socket, keeping the open gauge and the close count right.
    fn release(&mut self, shard: &Shard, index: usize) {
        let conn = &mut self.conns[index];
        if conn.fd < 0 {
            return;
        }
        if matches!(conn.state, State::Sending | State::Echo) {
            shard.heartbeat_settled();
        }
        if conn.proven {
            shard.unserved();
            conn.proven = false;
        }
        if conn.held() {
            shard.open.set(shard.open.get() - 1);
            if !shard.tearing_down.get() {
                let slot = index as u64 * self.workers + self.worker;
                let (source, target) = shard.plan.pool.pair_in(slot, conn.set as usize);
                shard
                    .data
                    .borrow_mut()
                    .count(source, target, |c| c.closed += 1);
            }
        }
        // SAFETY: the table owns this fd; it is forgotten right after, so it is closed once.
        // Closing removes it from the epoll set.
        unsafe { libc::close(conn.fd) };
        conn.fd = -1;
        conn.wake = NONE;
    }

    /// Starts a connect attempt planned for `planned`.
    fn connect(&mut self, shard: &Shard, index: usize, planned: u64) {
        let slot = self.slot(index);
        let set = shard.target_set.get();
        let (source, target) = shard.plan.pool.pair_in(slot, set);
        let began = Self::now(shard);
        let lag = began
            .saturating_sub(planned)
            .saturating_sub(micros(TIMER_GRANULARITY));
        {
            let mut data = shard.data.borrow_mut();
            data.count(source, target, |c| c.attempts += 1);
            if data.first_attempt_us.is_none() {
                data.first_attempt_us = Some(began);
            }
        }
        let pool = &shard.plan.pool;
        let started = crate::net::start_connect_fd(
            pool.sources[source],
            pool.targets[target],
            pool.port_range,
        )
        .and_then(|fd| self.register(fd, index));
        match started {
            Ok(fd) => {
                let conn = &mut self.conns[index];
                conn.fd = fd;
                conn.state = State::Connecting;
                conn.set = set as u8;
                conn.began = began;
                conn.scheduled = planned;
                conn.lag_us = u32::try_from(lag).unwrap_or(u32::MAX);
                conn.wake = began + micros(shard.plan.connect_timeout);
                self.arm(index, began + micros(shard.plan.connect_timeout));
            }
            Err(e) => {
                shard.fail(source, target, ErrorKind::from_io(&e));
                self.conns[index].state = State::Empty;
                self.after_failure(shard, index);
            }
        }
    }

    /// Adds a socket to the epoll set; the event carries the slot index and the fd.
    fn register(&self, fd: OwnedFd, index: usize) -> io::Result<RawFd> {
        let raw = fd.as_raw_fd();
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: ((index as u64) << 32) | u64::from(raw as u32),
        };
        // SAFETY: both fds are open; `event` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.get_ref().as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                raw,
                &mut event,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd.into_raw_fd())
    }

    /// After a failed attempt or a lost connection: one more attempt, later, or none.
    fn after_failure(&mut self, shard: &Shard, index: usize) {
        self.conns[index].attempt += 1;
        self.reconnect_later(shard, index);
    }

    fn reconnect_later(&mut self, shard: &Shard, index: usize) {
        let slot = self.slot(index);
        let conn = &mut self.conns[index];
        match shard.backoff(slot, conn.attempt, &mut conn.previous_ms) {
            Some(wait) => {
                let at = Self::now(shard) + micros(wait);
                conn.state = State::Backoff;
                conn.wake = at;
                self.arm(index, at);
            }
            None => conn.state = State::Empty,
        }
    }

    /// A held connection failed: counted, closed, and reconnected per policy. One that was
    /// never up (its first echo never came) goes on counting attempts.
    fn lose(&mut self, shard: &Shard, index: usize, kind: ErrorKind) {
        if self.conns[index].is_up() {
            shard.went_down();
            self.conns[index].attempt = 0;
        }
        self.connect_failed(shard, index, kind);
    }

    /// A connection (or an attempt at one) failed: the failure is counted against the pair the
    /// connection used, its socket closed, and one more attempt made later, or none.
    fn connect_failed(&mut self, shard: &Shard, index: usize, kind: ErrorKind) {
        let slot = self.slot(index);
        let (source, target) = shard
            .plan
            .pool
            .pair_in(slot, self.conns[index].set as usize);
        shard.fail(source, target, kind);
        self.release(shard, index);
        self.conns[index].state = State::Empty;
        self.after_failure(shard, index);
    }

    /// The TCP handshake completed: times it and starts holding. With heartbeats the first one
    /// goes out at once, since its echo is what proves the connection is served; without, the
    /// connection is as up as plain TCP can show.
    fn connected(&mut self, shard: &Shard, index: usize) {
        let slot = self.slot(index);
        let now = Self::now(shard);
        let conn = self.conns[index];
        let (source, target) = shard.plan.pool.pair_in(slot, conn.set as usize);
        let service = now.saturating_sub(conn.began);
        shard.connected(slot, source, target, service, u64::from(conn.lag_us));
        shard.open.set(shard.open.get() + 1);
        let conn = &mut self.conns[index];
        match shard.plan.heartbeat {
            Some(_) => {
                conn.scheduled = now;
                conn.began = now;
                conn.count = 0;
                conn.state = State::Sending;
                shard.heartbeat_sent(source, target);
                self.send(shard, index);
            }
            None => {
                shard.up(slot, source, target, conn.attempt, false);
                conn.attempt = 0;
                conn.state = State::Silent;
                conn.wake = NONE;
            }
        }
    }

    /// Takes what the kernel has ready. `Ready` once there are events to handle.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut guard = match self.epoll.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                // The reactor is gone (runtime shutting down): nothing more will come.
                Poll::Ready(Err(_)) => return Poll::Pending,
                Poll::Pending => return Poll::Pending,
            };
            // SAFETY: the buffer holds EVENTS entries; a zero timeout never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    guard.get_inner().as_raw_fd(),
                    self.events.as_mut_ptr(),
                    EVENTS as libc::c_int,
                    0,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                guard.clear_ready();
                return Poll::Pending;
            }
            let n = n as usize;
            if n < EVENTS {
                // Drained: wait for tokio to see the epoll fd readable again.
                guard.clear_ready();
            }
            if n > 0 {
                self.pending = n;
                return Poll::Ready(());
            }
        }
    }

    /// Handles the events `poll_io` took.
    pub fn process_io(&mut self, shard: &Shard) {
        let pending = std::mem::take(&mut self.pending);
        for i in 0..pending {
            let event = self.events[i];
            let (bits, data) = (event.events, event.u64);
            let index = (data >> 32) as usize;
            let fd = data as u32 as RawFd;
            // An event for a socket this slot no longer has (closed earlier in this batch).
            if self.conns.get(index).is_none_or(|c| c.fd != fd) {
                continue;
            }
            self.on_event(shard, index, bits);
        }
    }

    fn on_event(&mut self, shard: &Shard, index: usize, bits: u32) {
        let fd = self.conns[index].fd;
        let writable = bits & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        match self.conns[index].state {
            State::Connecting => {
                if writable {
                    match socket_error(fd) {
                        Ok(()) => self.connected(shard, index),
                        Err(e) => self.connect_failed(shard, index, ErrorKind::from_io(&e)),
                    }
                }
                // A connection accepted and written to at once: read what came with it.
                if self.conns[index].held() && bits & libc::EPOLLIN as u32 != 0 {
                    self.readable(shard, index);
                }
            }
            State::Silent | State::Idle | State::Echo => self.readable(shard, index),
            State::Sending => {
                if writable {
                    self.send(shard, index);
                }
                if self.conns[index].held() {
                    self.readable(shard, index);
                }
            }
            State::Empty | State::Backoff => {}
        }
    }

    /// Reads until the socket is drained: echo bytes count only while an echo is awaited.
    fn readable(&mut self, shard: &Shard, index: usize) {
        let fd = self.conns[index].fd;
        let mut buf = [0u8; READ_CHUNK];
        loop {
            // SAFETY: `buf` is valid for its length; `fd` is an open socket of this table.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let conn = &mut self.conns[index];
                if conn.state == State::Echo {
                    conn.count = conn.count.saturating_add(n as u32);
                }
                if (n as usize) < buf.len() {
                    break;
                }
                continue;
            }
            if n == 0 {
                return self.lose(shard, index, ErrorKind::ClosedByPeer);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => continue,
                _ => return self.lose(shard, index, ErrorKind::from_io(&e)),
            }
        }
        let payload = shard.payload.len();
        let conn = self.conns[index];
        if conn.state == State::Echo && conn.count as usize >= payload {
            self.answered(shard, index);
        }
    }

    /// The echo is complete: RTT from the planned send, and the next heartbeat queued. The
    /// first echo establishes the connection; the next heartbeat then falls at the slot's
    /// own offset into the interval, so that heartbeats stay spread.
    fn answered(&mut self, shard: &Shard, index: usize) {
        let slot = self.slot(index);
        let now = Self::now(shard);
        let interval = shard.plan.heartbeat.map_or(Duration::ZERO, |h| h.interval);
        let conn = &mut self.conns[index];
        let (source, target) = shard.plan.pool.pair_in(slot, conn.set as usize);
        {
            let mut data = shard.data.borrow_mut();
            let rtt = from_schedule(
                Self::instant(shard, conn.scheduled),
                Self::instant(shard, conn.began),
                Self::instant(shard, now),
            );
            data.latency.record(Latency::HeartbeatRtt, micros(rtt));
            data.count(source, target, |c| c.heartbeats_answered += 1);
        }
        shard.heartbeat_settled();
        if conn.proven {
            conn.scheduled += micros(interval);
        } else {
            conn.proven = true;
            shard.up(slot, source, target, conn.attempt, true);
            conn.attempt = 0;
            conn.scheduled += micros(heartbeat_offset(slot, interval));
            if conn.scheduled <= now {
                conn.scheduled += micros(interval);
            }
        }
        conn.state = State::Idle;
        conn.wake = conn.scheduled;
        let next = conn.scheduled;
        self.arm(index, next);
    }

    /// Sends (the rest of) the heartbeat; then waits for its echo.
    fn send(&mut self, shard: &Shard, index: usize) {
        let payload = &shard.payload[..];
        let conn = self.conns[index];
        let mut done = conn.count as usize;
        while done < payload.len() {
            let rest = &payload[done..];
            // SAFETY: `rest` is valid for its length; `fd` is an open socket of this table.
            let n = unsafe {
                libc::send(
                    conn.fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                done += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => {
                    // The rest goes out when the socket is writable (the echo timeout runs).
                    self.conns[index].count = done as u32;
                    return;
                }
                io::ErrorKind::Interrupted => continue,
                _ => return self.lose(shard, index, ErrorKind::from_io(&e)),
            }
        }
        let h = shard.plan.heartbeat.unwrap_or(crate::profile::Heartbeat {
            interval: Duration::ZERO,
            payload_bytes: 0,
            timeout: Duration::ZERO,
        });
        let conn = &mut self.conns[index];
        conn.state = State::Echo;
        conn.count = 0;
        conn.wake = conn.began + micros(h.timeout);
        // Whichever comes first: the timeout, or the next send (the echo is usually back by
        // then, and one entry then serves the whole cycle).
        let at = conn.wake.min(conn.scheduled + micros(h.interval));
        self.arm(index, at);
    }

    /// Fires every deadline that has come.
    pub fn process_timers(&mut self, shard: &Shard) {
        let now = Self::now(shard);
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let index = index as usize;
            let slot = self.slot(index);
            let conn = &mut self.conns[index];
            if conn.queued != at {
                continue;
            }
            conn.queued = NONE;
            if conn.wake == NONE {
                continue;
            }
            if conn.wake > now {
                let wake = conn.wake;
                self.arm(index, wake);
                continue;
            }
            match conn.state {
                State::Backoff => {
                    let planned = conn.wake;
                    self.connect(shard, index, planned);
                }
                State::Connecting => self.connect_failed(shard, index, ErrorKind::ConnectTimeout),
                State::Idle => {
                    conn.began = now;
                    conn.count = 0;
                    conn.state = State::Sending;
                    let (source, target) = shard.plan.pool.pair_in(slot, conn.set as usize);
                    shard.heartbeat_sent(source, target);
                    self.send(shard, index);
                }
                State::Sending | State::Echo => {
                    self.lose(shard, index, ErrorKind::HeartbeatTimeout)
                }
                State::Empty | State::Silent => {}
            }
        }
    }
}

/// The outcome of a non-blocking connect, from `SO_ERROR`.
fn socket_error(fd: RawFd) -> io::Result<()> {
    let mut error: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is open; `error` and `len` are valid for writing.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut error as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_costs_56_bytes() {
        assert!(
            std::mem::size_of::<Conn>() <= 56,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
