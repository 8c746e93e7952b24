//! The source-port pool of one (node IP, target IP:port) pair when client-IP preservation is
//! off: at most `ports` flows at once, and at most `per_minute` new allocations a minute (a
//! token bucket holding a minute's worth, refilled continuously). A flow that finds either
//! exhausted is a port allocation error.
//!
//! This is the emulator's own account, not the kernel's: the upstream socket still gets its
//! port from the kernel (`IP_BIND_ADDRESS_NO_PORT`), whose range must be at least `ports`
//! wide for the pool, not the kernel, to be the wall. It never touches a socket.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// Why a flow got no port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every port of the pair is in use.
    Full,
    /// The pair has made its allocations for this minute.
    Rate,
}

#[derive(Debug)]
struct State {
    in_use: u32,
    tokens: f64,
    refilled: Instant,
}

/// One pair's pool; shared by the flows holding its ports.
#[derive(Debug)]
pub struct PortPool {
    ports: u32,
    per_minute: u32,
    state: Mutex<State>,
}

impl PortPool {
    pub fn new(ports: u32, per_minute: u32) -> Arc<PortPool> {
        Arc::new(PortPool {
            ports,
            per_minute,
            state: Mutex::new(State {
                in_use: 0,
                tokens: f64::from(per_minute),
                refilled: Instant::now(),
            }),
        })
    }

    /// Takes a port for a new flow; the lease gives it back when dropped.
    pub fn allocate(self: &Arc<Self>) -> Result<PortLease, Refusal> {
        self.allocate_at(Instant::now())
    }

    fn allocate_at(self: &Arc<Self>, now: Instant) -> Result<PortLease, Refusal> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        let cap = f64::from(self.per_minute);
        state.tokens = (state.tokens + elapsed * cap / 60.0).min(cap);
        state.refilled = now;
        if state.in_use >= self.ports {
            return Err(Refusal::Full);
        }
        if state.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        state.tokens -= 1.0;
        state.in_use += 1;
        Ok(PortLease { pool: self.clone() })
    }

    #[cfg(test)]
    pub fn in_use(&self) -> u32 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).in_use
    }
}

/// A port held by one flow; returned to its pool on drop.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<PortPool>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_use = state.in_use.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn full_pool_refuses_until_a_port_is_freed() {
        let pool = PortPool::new(3, 1000);
        let leases: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(pool.allocate().unwrap_err(), Refusal::Full);
        assert_eq!(pool.in_use(), 3);
        drop(leases);
        assert_eq!(pool.in_use(), 0);
        assert!(pool.allocate().is_ok());
    }

    #[test]
    fn freed_ports_honour_the_per_minute_rate() {
        let pool = PortPool::new(100, 60);
        let start = Instant::now();
        for _ in 0..60 {
            drop(pool.allocate_at(start).unwrap());
        }
        assert_eq!(pool.allocate_at(start).unwrap_err(), Refusal::Rate);
        let later = start + Duration::from_millis(1_001);
        drop(pool.allocate_at(later).unwrap());
        assert_eq!(pool.allocate_at(later).unwrap_err(), Refusal::Rate);
        // Refilled to a minute's worth, no more.
        let much_later = later + Duration::from_secs(120);
        for _ in 0..60 {
            drop(pool.allocate_at(much_later).unwrap());
        }
        assert_eq!(pool.allocate_at(much_later).unwrap_err(), Refusal::Rate);
    }
}
