//! The listener side: binds the configured addresses, reads the PROXY header that names the
//! real client when `[server] proxy_protocol` is on, enforces the session limits (421 at
//! greeting) of the current settings generation, which the admitted session then keeps, gives
//! each connection its span and task, and runs the SIGTERM drain.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument, Span};

use crate::config::Config;
use crate::context::Context;
use crate::logging::SESSION_SPAN;
use crate::proxy_header::{self, Header, HeaderError, Parsed, ProxyProtocol};
use crate::settings::{Admission, Settings};
use crate::smtp::conn::{shutting_down, Connection, REFUSAL_WRITE_TIMEOUT};
use crate::smtp::reply::Reply;

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

/// The longest a connection may take to send its PROXY header, whatever `command_timeout`: a
/// balancer sends it with the connection, so one still arriving after this is a trickle that
/// must not hold the connection.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection that had to begin with a PROXY header was closed without a greeting.
#[derive(Debug, thiserror::Error)]
enum ProxyRefusal {
    #[error("the peer is not in server.proxy_trusted")]
    Untrusted,
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("no complete PROXY header within {}s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the peer closed the connection before its PROXY header was complete")]
    Closed,
    // The balancer's own address would stand in for the client, and it may be trusted.
    #[error("the PROXY header names no client (LOCAL or UNKNOWN); only client connections are served, so point health checks at the admin API's /readyz")]
    NoClient,
    #[error("reading the PROXY header failed: {0}")]
    Read(#[from] std::io::Error),
}

pub struct Server {
    listeners: Vec<TcpListener>,
    context: Arc<Context>,
    slots: Arc<SessionSlots>,
    refusals: RefusalLog,
    /// Its own budget, so refused PROXY connections do not hide session-limit refusals.
    proxy_refusals: RefusalLog,
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
            proxy_refusals: RefusalLog::default(),
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

    /// Starts the session of an accepted connection with the current settings: at once, or once
    /// its PROXY header has named the client. Never waits: the accept loop calls it, so the
    /// header is read in the connection's own task, bounded by a timer.
    fn admit(self: &Arc<Self>, mut stream: TcpStream, peer: SocketAddr, id: u64) {
        let _ = stream.set_nodelay(true);
        let settings = self.context.settings();
        let trusted = match &settings.proxy {
            ProxyProtocol::Off => return self.start(stream, peer, None, id, settings),
            ProxyProtocol::Required { trusted } => trusted.clone(),
        };
        if !proxy_header::is_trusted(peer.ip(), &trusted) {
            // Dropping the stream closes it: a peer that may not connect is told nothing.
            return self.log_proxy_refusal(peer, id, &ProxyRefusal::Untrusted);
        }
        let server = self.clone();
        self.tasks.spawn(async move {
            let bound = PROXY_HEADER_TIMEOUT.min(settings.reads.command_timeout);
            let read = tokio::select! {
                read = timeout(bound, read_proxy_header(&mut stream)) => read.unwrap_or(Err(ProxyRefusal::Timeout(bound))),
                _ = server.shutdown.deadline.cancelled() => return,
            };
            match read {
                // A header completed after SIGTERM: no new session, as for a closed port.
                Ok(Header::Proxied { source, .. }) if server.shutdown.draining.is_cancelled() => {
                    let span = session_span(id, source, Some(peer));
                    server.tasks.spawn(refuse(stream, shutting_down(&settings)).instrument(span));
                }
                Ok(Header::Proxied { source, .. }) => server.start(stream, source, Some(peer), id, settings),
                Ok(Header::Local) => server.log_proxy_refusal(peer, id, &ProxyRefusal::NoClient),
                Err(refusal) => server.log_proxy_refusal(peer, id, &refusal),
            }
        });
    }

    /// Applies the session limits to the client `peer` (reached through the balancer `via`)
    /// and starts the session task.
    fn start(&self, stream: TcpStream, peer: SocketAddr, via: Option<SocketAddr>, id: u64, settings: Arc<Settings>) {
        let span = session_span(id, peer, via);
        let slot = match self.slots.acquire(peer.ip(), settings.admission) {
            Ok(slot) => slot,
            Err(full) => {
                let text = format!("{} Error: too many sessions, try again later", settings.session.hostname);
                if let Some(unlogged) = self.refusals.due(Instant::now()) {
                    self.log_refusal(&span, full, settings.admission, peer.ip(), unlogged);
                }
                self.tasks.spawn(refuse(stream, Reply::new(421, "4.7.0", text)).instrument(span));
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

    /// One line per refused PROXY connection, within the refusal log's budget.
    fn log_proxy_refusal(&self, peer: SocketAddr, id: u64, refusal: &ProxyRefusal) {
        if let Some(unlogged) = self.proxy_refusals.due(Instant::now()) {
            let span = session_span(id, peer, None);
            info!(target: "sluice::smtp", parent: &span, reason = %refusal, unlogged, "refused: closed without a greeting");
        }
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

/// A session's span: the client's address as `peer`, and the balancer's as `proxy` when a
/// PROXY header named the client.
fn session_span(id: u64, peer: SocketAddr, via: Option<SocketAddr>) -> Span {
    let span = info_span!(
        target: SESSION_SPAN,
        "session",
        id = %crate::sessions::format_id(id),
        peer = %peer,
        proxy = tracing::field::Empty
    );
    if let Some(via) = via {
        span.record("proxy", tracing::field::display(via));
    }
    span
}

/// Reads the PROXY header and nothing more: it peeks at what has arrived and consumes only the
/// bytes `proxy_header::parse` says are the header's, so the client's first command stays for
/// the session.
async fn read_proxy_header(stream: &mut TcpStream) -> Result<Header, ProxyRefusal> {
    let mut buffer = [0u8; proxy_header::MAX_LENGTH];
    // The header's bytes consumed so far, at the front of `buffer`.
    let mut consumed = 0;
    loop {
        // Waits for bytes beyond those consumed (`parse` says Incomplete only below MAX_LENGTH).
        let peeked = stream.peek(&mut buffer[consumed..]).await?;
        if peeked == 0 {
            return Err(ProxyRefusal::Closed);
        }
        match proxy_header::parse(&buffer[..consumed + peeked])? {
            Parsed::Complete { header, length } => {
                // `length` is at least `consumed`: parse said all of those were the header's.
                stream.read_exact(&mut buffer[consumed..length.max(consumed)]).await?;
                return Ok(header);
            }
            Parsed::Incomplete => {
                stream.read_exact(&mut buffer[consumed..consumed + peeked]).await?;
                consumed += peeked;
            }
        }
    }
}

/// Writes `reply` (a 421) as the greeting and closes, within a bound.
async fn refuse(mut stream: TcpStream, reply: Reply) {
    let reply = reply.to_wire();
    let _ = timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    })
    .await;
}
