//! Idle next-hop connections kept for reuse (like Postfix's connection cache): a client that opens
//! one connection per message then does not cost a connect, greeting and EHLO at the next hop for
//! each message. Only connections between transactions are kept, and only briefly, and each only
//! for sessions with the settings it was opened with: after a reload changes the next hop's
//! address, HELO name or timeouts, no session gets a connection made under the old ones; and a
//! connection secured with STARTTLS only goes to sessions of the generation whose TLS settings
//! (CA roots read at that reload) checked it. A connection keeps its TLS while parked.
//!
//! Each parked connection has a watcher task that owns it until a session takes it back. The
//! watcher is what enforces the bounds: at the idle limit it says QUIT and closes; when the next
//! hop closes the connection (or says anything unasked, like an idle-timeout 421) it closes our
//! side at once, so nothing lingers half-closed; when the gateway stops it says QUIT and closes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::Wire;
use super::RelaySettings;

/// Connections kept at most; more are closed.
const MAX_IDLE: usize = 64;
/// A connection idle this long is closed rather than reused.
const IDLE_LIMIT: Duration = Duration::from_secs(5);

/// A session asking a watcher for its connection: the watcher answers on the enclosed channel.
type Recall = oneshot::Sender<oneshot::Sender<Wire>>;

/// A parked connection as the pool sees it; the connection itself is with its watcher.
struct Parked {
    id: u64,
    /// What the connection was opened with: only sessions with the same get it.
    settings: RelaySettings,
    recall: Recall,
}

/// What ended a watcher's wait.
enum Wake {
    /// A session takes the connection back.
    Taken(oneshot::Sender<Wire>),
    Leave(Leave),
}

/// Why a connection leaves the pool closed.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// The next hop closed it or spoke unasked.
    HungUp,
    /// Idle for `IDLE_LIMIT`.
    Expired,
    /// `MAX_IDLE` are parked already.
    Full,
    /// The gateway is stopping.
    Stopping,
}

impl Leave {
    fn name(self) -> &'static str {
        match self {
            Leave::HungUp => "hung up",
            Leave::Expired => "idle limit",
            Leave::Full => "pool full",
            Leave::Stopping => "stopping",
        }
    }
}

pub struct RelayPool {
    /// Newest last: sessions take the most recently parked connection.
    idle: Mutex<Vec<Parked>>,
    next_id: AtomicU64,
    /// Connections parked now, in /metrics.
    gauge: Gauge,
    stop: CancellationToken,
    watchers: TaskTracker,
}

impl RelayPool {
    pub fn new(gauge: Gauge) -> RelayPool {
        RelayPool {
            idle: Mutex::default(),
            next_id: AtomicU64::new(0),
            gauge,
            stop: CancellationToken::new(),
            watchers: TaskTracker::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Parked>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes a parked entry (taken, or its watcher let go) and keeps the gauge exact.
    fn remove(&self, idle: &mut Vec<Parked>, index: usize) -> Parked {
        let parked = idle.remove(index);
        self.gauge.set(idle.len() as i64);
        parked
    }

    /// The most recently parked connection opened with `settings` that is still open.
    pub async fn take(&self, settings: &RelaySettings) -> Option<Wire> {
        loop {
            let parked = {
                let mut idle = self.lock();
                let newest = idle.iter().rposition(|parked| &parked.settings == settings)?;
                self.remove(&mut idle, newest)
            };
            let (back, returned) = oneshot::channel();
            // A watcher that let go meanwhile drops `back`: then try the next one.
            if parked.recall.send(back).is_ok() {
                if let Ok(wire) = returned.await {
                    return Some(wire);
                }
            }
        }
    }

    /// Parks a connection that is between transactions, opened with `settings`.
    pub fn give(self: &Arc<Self>, wire: Wire, settings: &RelaySettings) {
        let (recall, recalled) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let refused = {
            let mut idle = self.lock();
            let refused = match (self.stop.is_cancelled(), idle.len() >= MAX_IDLE) {
                (true, _) => Some(Leave::Stopping),
                (false, true) => Some(Leave::Full),
                (false, false) => None,
            };
            if refused.is_none() {
                idle.push(Parked { id, settings: settings.clone(), recall });
                self.gauge.set(idle.len() as i64);
            }
            refused
        };
        match refused {
            Some(why) => {
                self.watchers.spawn(let_go(wire, why));
            }
            None => {
                tracing::debug!(target: "sluice::relay", "parked next-hop connection");
                self.watchers.spawn(self.clone().watch(id, wire, recalled));
            }
        }
    }

    /// Stops the pool when the gateway stops: every parked connection (and any given later)
    /// says QUIT and is closed; returns when all are.
    pub async fn close(&self) {
        self.stop.cancel();
        self.watchers.close();
        self.watchers.wait().await;
    }

    /// Owns a parked connection until a session takes it or it must go.
    async fn watch(self: Arc<Self>, id: u64, mut wire: Wire, mut recalled: oneshot::Receiver<oneshot::Sender<Wire>>) {
        let wake = tokio::select! {
            // A connection that is readable is not handed out: it is closing.
            biased;
            () = wire.hung_up() => Wake::Leave(Leave::HungUp),
            () = self.stop.cancelled() => Wake::Leave(Leave::Stopping),
            Ok(back) = &mut recalled => Wake::Taken(back),
            () = tokio::time::sleep(IDLE_LIMIT) => Wake::Leave(Leave::Expired),
        };
        // A session asking from now on gets nothing and tries the next connection.
        drop(recalled);
        let why = match wake {
            Wake::Taken(back) => {
                // `take` removed the entry; if that session is gone meanwhile, the connection closes.
                let _ = back.send(wire);
                return;
            }
            Wake::Leave(why) => why,
        };
        {
            let mut idle = self.lock();
            if let Some(index) = idle.iter().position(|parked| parked.id == id) {
                self.remove(&mut idle, index);
            }
        }
        let_go(wire, why).await;
    }
}

/// Closes a connection that leaves the pool other than by being taken: with QUIT, unless the
/// next hop closed it first.
async fn let_go(wire: Wire, why: Leave) {
    let said_quit = match why {
        Leave::HungUp => {
            tracing::debug!(target: "sluice::relay", "next hop closed a parked connection");
            return;
        }
        Leave::Expired | Leave::Full => wire.quit().await.map(drop),
        // The gateway is exiting: the QUIT is a courtesy, its reply is not waited for.
        Leave::Stopping => wire.quit_now().await,
    };
    match said_quit {
        Ok(()) => {
            tracing::debug!(target: "sluice::relay", why = why.name(), "idle next-hop connection closed with QUIT")
        }
        Err(err) => {
            tracing::debug!(target: "sluice::relay", why = why.name(), error = %err, "idle next-hop connection closed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::time::timeout;

    const BOUND: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn the_gauge_counts_parked_connections_only_their_settings_get_them_and_a_hang_up_is_noticed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (hang_up, hung_up) = oneshot::channel::<()>();
        let hop = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"220 hop\r\n").await.unwrap();
            lines.next_line().await.unwrap();
            write.write_all(b"250 hop\r\n").await.unwrap();
            // Dropping both halves closes the connection.
            let _ = hung_up.await;
        });
        let pool = Arc::new(RelayPool::new(Gauge::default()));
        let settings = RelaySettings {
            address,
            helo_name: "gw.test".into(),
            connect_timeout: BOUND,
            command_timeout: BOUND,
            tls: super::super::TlsPolicy::none(),
            received_by: None,
        };
        let wire = Wire::open(&settings, settings.tls.mode).await.unwrap();
        pool.give(wire, &settings);
        assert_eq!(pool.gauge.get(), 1);
        // A reload moved the next hop: a connection to the old one is not handed out.
        let moved = RelaySettings { address: "127.0.0.1:1".into(), ..settings.clone() };
        assert!(pool.take(&moved).await.is_none());
        assert_eq!(pool.gauge.get(), 1);
        let wire = pool.take(&settings).await.expect("the parked connection");
        assert_eq!(pool.gauge.get(), 0);
        pool.give(wire, &settings);
        assert_eq!(pool.gauge.get(), 1);
        hang_up.send(()).unwrap();
        hop.await.unwrap();
        // Nobody uses the pool: its watcher notices the close by itself.
        timeout(BOUND, async {
            while pool.gauge.get() != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the closed connection left the pool");
        assert!(pool.take(&settings).await.is_none());
        timeout(BOUND, pool.close()).await.expect("the pool closes");
    }
}
