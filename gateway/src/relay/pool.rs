//! Idle next-hop connections kept for reuse (like Postfix's connection cache): a client that opens
//! one connection per message then does not cost a connect, greeting and EHLO at the next hop for
//! each message. Only connections between transactions are kept, and only briefly, because the
//! next hop may close idle connections at any time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::wire::Wire;

/// Connections kept at most; more are closed.
const MAX_IDLE: usize = 64;
/// A connection idle longer than this is closed rather than reused.
const IDLE_LIMIT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct RelayPool {
    idle: Mutex<Vec<(Wire, Instant)>>,
}

impl RelayPool {
    /// The most recently parked connection that is still fresh.
    pub fn take(&self) -> Option<Wire> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, since)| since.elapsed() < IDLE_LIMIT);
        idle.pop().map(|(wire, _)| wire)
    }

    /// Parks a connection that is between transactions.
    pub fn give(&self, wire: Wire) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, since)| since.elapsed() < IDLE_LIMIT);
        if idle.len() < MAX_IDLE {
            idle.push((wire, Instant::now()));
        }
    }
}
