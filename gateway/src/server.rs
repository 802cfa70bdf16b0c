//! The listener side: binds the configured addresses, enforces the session limits (421 at
//! greeting) of the current settings generation, which the admitted session then keeps, gives
//! each connection its span and task, and runs the SIGTERM drain.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument, Span};

use crate::config::Config;
use crate::context::Context;
use crate::logging::SESSION_SPAN;
use crate::settings::Admission;
use crate::smtp::conn::{Connection, REFUSAL_WRITE_TIMEOUT};

/// The two stages of a graceful stop, as sessions see them.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop accepting; idle sessions close now, sessions in a transaction may finish.
    pub draining: CancellationToken,
    /// The grace period is over: every session closes with 421.
    pub deadline: CancellationToken,
}

/// Counts sessions, in all and per client address, against limits a reload may change (a lower
/// limit refuses new sessions until enough have ended); the guard gives the slot back when the
/// session ends.
#[derive(Default)]
struct SessionSlots {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

struct SessionSlot {
    slots: Arc<SessionSlots>,
    ip: IpAddr,
}

/// Which limit refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    Sessions,
    PerIp,
}

impl SessionSlots {
    fn acquire(self: &Arc<Self>, ip: IpAddr, limits: Admission) -> Result<SessionSlot, Full> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.total >= limits.max_sessions {
            return Err(Full::Sessions);
        }
        let count = held.per_ip.entry(ip).or_insert(0);
        if *count >= limits.max_sessions_per_ip {
            return Err(Full::PerIp);
        }
        *count += 1;
        held.total += 1;
        Ok(SessionSlot { slots: self.clone(), ip })
    }

    /// Sessions held in all, and the `top` addresses holding the most, busiest first.
    fn busiest(&self, top: usize) -> (usize, Vec<(IpAddr, usize)>) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut busiest: Vec<(IpAddr, usize)> = held.per_ip.iter().map(|(&ip, &n)| (ip, n)).collect();
        busiest.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        busiest.truncate(top);
        (held.total, busiest)
    }
}

/// Addresses named in the "session limit reached" log line.
const TOP_ADDRESSES: usize = 5;

/// At most one "refused" log line per this interval: a flood of refused connections must not
/// become a flood of log lines; the next line says how many refusals went unlogged.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct RefusalLog {
    /// When the last line was logged, and refusals since then.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// Some(refusals left unlogged since the last line) if this refusal is to be logged.
    fn due(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, unlogged) = &mut *state;
        if last.is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL) {
            *unlogged += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(unlogged))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total -= 1;
        if let Some(count) = held.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.per_ip.remove(&self.ip);
            }
        }
    }
}

pub struct Server {
    listeners: Vec<TcpListener>,
    context: Arc<Context>,
    slots: Arc<SessionSlots>,
    refusals: RefusalLog,
    shutdown: Shutdown,
    tasks: TaskTracker,
}

/// Beyond the next hop's answer, the time a session gets after the deadline to write its last
/// reply to the client.
const LAST_REPLY_WRITE: Duration = Duration::from_secs(10);

/// Which build runs which config: the first thing to know when reading a log, logged before
/// any port is bound.
pub fn log_start(context: &Context) {
    let source = match context.config_path() {
        Some(path) => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string(),
        None => "embedded default".to_string(),
    };
    info!(version = env!("CARGO_PKG_VERSION"), config = %source, "sluice starting");
}

impl Server {
    /// Binds the SMTP listeners; `shutdown` is shared with the admin API's readiness.
    pub async fn bind(config: &Config, context: Arc<Context>, shutdown: Shutdown) -> anyhow::Result<Server> {
        let mut listeners = Vec::new();
        for address in &config.server.listen {
            let listener = TcpListener::bind(address).await.with_context(|| {
                format!("cannot listen on {address}; is another process using it? (set [server] listen)")
            })?;
            info!(target: "sluice::smtp", address = %listener.local_addr()?, "listening");
            listeners.push(listener);
        }
        Ok(Server {
            listeners,
            context,
            slots: Arc::default(),
            refusals: RefusalLog::default(),
            shutdown,
            tasks: TaskTracker::new(),
        })
    }

    /// Serves until `stop` resolves, then drains: idle sessions close at once, the rest get
    /// `shutdown_timeout` to finish before they are closed with 421 — all but deliveries past
    /// their final dot, which get the next hop's answer first (`RelayClient::data`). So the
    /// process exits within `shutdown_timeout` plus one bounded delivery, enforced here too.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        // Each accept task owns its listener, so the port closes as soon as draining begins.
        let listeners = std::mem::take(&mut self.listeners);
        let server = Arc::new(self);
        let session_ids = Arc::new(AtomicU64::new(1));
        let accepting = CancellationToken::new();
        let mut accept_tasks = Vec::new();
        for listener in listeners {
            let server = server.clone();
            let ids = session_ids.clone();
            let accepting = accepting.clone();
            accept_tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => server.admit(stream, peer, ids.fetch_add(1, Ordering::Relaxed)),
                            Err(err) => {
                                warn!(target: "sluice::smtp", error = %err, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                        _ = accepting.cancelled() => break,
                    }
                }
            }));
        }
        stop.await;
        accepting.cancel();
        for task in accept_tasks {
            let _ = task.await;
        }
        server.shutdown.draining.cancel();
        // Logged once it is true: the ports are closed and readiness says draining.
        info!(target: "sluice::smtp", sessions = server.tasks.len(), "shutting down: no longer accepting");
        server.tasks.close();
        let settings = server.context.settings();
        if timeout(settings.shutdown_timeout, server.tasks.wait()).await.is_err() {
            warn!(target: "sluice::smtp", sessions = server.tasks.len(), "grace period over; closing remaining sessions with 421");
            server.shutdown.deadline.cancel();
            // What a session may still need: a delivery past its final dot waits for the next
            // hop's answer, then writes it.
            let last_delivery = settings.relay_answer_timeout() + LAST_REPLY_WRITE;
            if timeout(last_delivery, server.tasks.wait()).await.is_err() {
                // Every wait of a session is bounded, so this is a bug's safety net.
                warn!(target: "sluice::smtp", sessions = server.tasks.len(), "sessions still running past every bound; stopping anyway");
            }
        }
        server.context.close_relay_pool().await;
        let flow = server.context.flows.report();
        info!(target: "sluice::smtp", flow_pauses = flow.pauses, flow_resumes = flow.resumes, "stopped");
    }

    /// Applies the session limits and starts the session task with the current settings.
    fn admit(&self, stream: TcpStream, peer: SocketAddr, id: u64) {
        let _ = stream.set_nodelay(true);
        let span = info_span!(target: SESSION_SPAN, "session", id = %crate::sessions::format_id(id), peer = %peer);
        let settings = self.context.settings();
        let slot = match self.slots.acquire(peer.ip(), settings.admission) {
            Ok(slot) => slot,
            Err(full) => {
                let text = format!("{} Error: too many sessions, try again later", settings.session.hostname);
                if let Some(unlogged) = self.refusals.due(Instant::now()) {
                    self.log_refusal(&span, full, settings.admission, peer.ip(), unlogged);
                }
                self.tasks.spawn(refuse(stream, text).instrument(span));
                return;
            }
        };
        let metrics = self.context.metrics.clone();
        metrics.sessions_total.inc();
        metrics.sessions_current.inc();
        let connection = Connection::new(stream, peer, id, self.context.clone(), settings, self.shutdown.clone());
        self.tasks.spawn(
            async move {
                let flow = connection.run().await;
                metrics.sessions_current.dec();
                drop(slot);
                // Logged after the slots are free: a client that sees this line can connect again.
                info!(target: "sluice::smtp", pauses = flow.pauses, resumes = flow.resumes, "session closed");
            }
            .instrument(span),
        );
    }

    /// Says which limit refused a client and who holds the sessions, so an operator can see a
    /// flood (many sessions from few addresses) at a glance.
    fn log_refusal(&self, span: &Span, full: Full, limits: Admission, ip: IpAddr, unlogged: u64) {
        if full == Full::Sessions {
            let (sessions, busiest) = self.slots.busiest(TOP_ADDRESSES);
            let top: Vec<String> = busiest.iter().map(|(ip, n)| format!("{ip}={n}")).collect();
            info!(
                target: "sluice::smtp",
                parent: span,
                sessions,
                max_sessions = limits.max_sessions,
                top_addresses = top.join(", ").as_str(),
                unlogged,
                "refused: session limit reached"
            );
        } else {
            info!(
                target: "sluice::smtp",
                parent: span,
                address = %ip,
                max_sessions_per_ip = limits.max_sessions_per_ip,
                unlogged,
                "refused: per-address session limit reached"
            );
        }
    }
}

async fn refuse(mut stream: TcpStream, text: String) {
    let reply = crate::smtp::reply::Reply::new(421, "4.7.0", text).to_wire();
    let _ = timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    })
    .await;
}
