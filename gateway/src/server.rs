//! The listener side: binds the configured addresses, enforces the session limits (421 at
//! greeting), gives each connection its span and task, and runs the SIGTERM drain.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::chain::test_stage::TestStageFactory;
use crate::chain::stage::StageFactory;
use crate::chain::{Chain, StageSpec};
use crate::config::stages::{StageConfig, StageKind};
use crate::config::Config;
use crate::flow::gate::FlowRegistry;
use crate::flow::Watermarks;
use crate::maildir::Maildir;
use crate::next_hop::NextHop;
use crate::relay::{RelayClient, RelayPool, RelaySettings};
use crate::smtp::conn::{Connection, REFUSAL_WRITE_TIMEOUT};
use crate::smtp::session::SessionConfig;
use crate::scanner::clamd::{self, ClamdAddress, ClamdFactory, ClamdSettings};
use crate::spool::Spool;
use crate::wasm::{WasmFilter, WasmLimits};

/// Everything a session needs from the configuration, resolved once.
pub struct Context {
    pub session: SessionConfig,
    pub chain: Arc<Chain>,
    pub watermarks: Watermarks,
    pub flows: Arc<FlowRegistry>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    relay: Option<RelaySettings>,
    relay_pool: Arc<RelayPool>,
    maildir: Option<Arc<Maildir>>,
    spool_memory: usize,
    spool_directory: Option<std::path::PathBuf>,
}

impl Context {
    pub async fn from_config(config: &Config, hostname: String, flows: Arc<FlowRegistry>) -> anyhow::Result<Context> {
        let chain = chain_from_config(config).await?;
        let server = &config.server;
        let relay = config.relay.as_ref().map(|relay| RelaySettings {
            address: relay.address.clone(),
            helo_name: relay.helo_name.clone().unwrap_or_else(|| hostname.clone()),
            connect_timeout: relay.connect_timeout.0,
            command_timeout: relay.command_timeout.0,
        });
        let maildir = match relay {
            Some(_) => None,
            None => {
                let path = &config.maildir.path;
                let maildir = Maildir::open(path, &hostname)
                    .with_context(|| format!("cannot create the maildir at {} (set [maildir] path)", path.display()))?;
                Some(Arc::new(maildir))
            }
        };
        Ok(Context {
            chain: Arc::new(chain),
            watermarks: Watermarks { high: config.flow.high_watermark.0, low: config.flow.low_watermark.0 },
            flows,
            session: SessionConfig {
                hostname,
                max_message_size: server.max_message_size.0,
                max_recipients: server.max_recipients,
                bare_line_endings: server.bare_line_endings,
            },
            command_timeout: server.command_timeout.0,
            data_timeout: server.data_timeout.0,
            relay,
            relay_pool: Arc::default(),
            maildir,
            spool_memory: usize::try_from(config.spool.memory_limit.0).unwrap_or(usize::MAX),
            spool_directory: config.spool.directory.clone(),
        })
    }

    pub fn next_hop(&self) -> NextHop {
        match (&self.relay, &self.maildir) {
            (Some(relay), _) => NextHop::Relay(RelayClient::new(relay.clone(), self.relay_pool.clone())),
            (None, Some(maildir)) => NextHop::Maildir(maildir.clone()),
            (None, None) => unreachable!("Context::from_config sets a relay or a maildir"),
        }
    }

    pub fn spool(&self) -> Spool {
        Spool::new(self.spool_memory, self.spool_directory.clone())
    }
}

/// Builds the chain's stages from `[[stage]]` tables (already validated): wasm filters are
/// compiled and linked here, so a broken filter stops the start with an error naming it.
pub async fn chain_from_config(config: &Config) -> anyhow::Result<Chain> {
    let mut specs = Vec::new();
    for stage in &config.stage {
        let factory: Box<dyn StageFactory> = match stage.kind {
            StageKind::Test => Box::new(TestStageFactory::new(stage.test.clone().unwrap_or_default())),
            StageKind::Wasm => Box::new(Arc::new(load_wasm(config, stage).await?)),
            StageKind::Clamd => {
                let settings = ClamdSettings {
                    stage: stage.name.clone(),
                    address: ClamdAddress::parse(stage.address.as_deref().unwrap_or_default()),
                    action: stage.action.unwrap_or_default(),
                    max_size: stage.max_size.map_or(25 << 20, |size| size.0),
                    oversize: stage.oversize.unwrap_or_default(),
                };
                clamd::check(&settings).await;
                Box::new(ClamdFactory::new(settings))
            }
        };
        specs.push(StageSpec { name: stage.name.clone(), on_error: stage.on_error, timeout: stage.timeout.0, factory });
    }
    Ok(Chain::new(specs))
}

async fn load_wasm(config: &Config, stage: &StageConfig) -> anyhow::Result<WasmFilter> {
    let defaults = WasmLimits::default();
    let limits = WasmLimits {
        memory: stage.memory_limit.map_or(defaults.memory, |m| usize::try_from(m.0).unwrap_or(usize::MAX)),
        cpu_per_call: stage.cpu_limit.map_or(defaults.cpu_per_call, |c| c.0),
        per_message: stage.message_timeout.map_or(defaults.per_message, |m| m.0),
    };
    let path = config.resolve(stage.path.as_deref().unwrap_or(std::path::Path::new("")));
    let filter = WasmFilter::load(&stage.name, &path, stage.filter_config(), limits)
        .await
        .with_context(|| format!("stage {:?}: cannot load its wasm filter", stage.name))?;
    info!(target: "sluice::filters", stage = %stage.name, path = %path.display(), compile_ms = filter.compile_time.as_millis() as u64, "filter loaded");
    Ok(filter)
}

/// The two stages of a graceful stop, as sessions see them.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop accepting; idle sessions close now, sessions in a transaction may finish.
    pub draining: CancellationToken,
    /// The grace period is over: every session closes with 421.
    pub deadline: CancellationToken,
}

/// Counts sessions per client address; the guard gives the slot back when the session ends.
#[derive(Default)]
struct PerIpLimit {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct PerIpSlot {
    limit: Arc<PerIpLimit>,
    ip: IpAddr,
}

impl PerIpLimit {
    fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PerIpSlot { limit: self.clone(), ip })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut counts = self.limit.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

pub struct Server {
    listeners: Vec<TcpListener>,
    context: Arc<Context>,
    max_sessions: Arc<Semaphore>,
    max_sessions_per_ip: usize,
    per_ip: Arc<PerIpLimit>,
    shutdown_timeout: Duration,
    shutdown: Shutdown,
    tasks: TaskTracker,
}

impl Server {
    pub async fn bind(config: &Config, context: Context) -> anyhow::Result<Server> {
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
            context: Arc::new(context),
            max_sessions: Arc::new(Semaphore::new(config.server.max_sessions)),
            max_sessions_per_ip: config.server.max_sessions_per_ip,
            per_ip: Arc::default(),
            shutdown_timeout: config.server.shutdown_timeout.0,
            shutdown: Shutdown::default(),
            tasks: TaskTracker::new(),
        })
    }

    /// Serves until `stop` resolves, then drains: idle sessions close at once, the rest get
    /// `shutdown_timeout` to finish before they are closed with 421.
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
        info!(target: "sluice::smtp", sessions = server.tasks.len(), "shutting down: no longer accepting");
        accepting.cancel();
        for task in accept_tasks {
            let _ = task.await;
        }
        server.shutdown.draining.cancel();
        server.tasks.close();
        if timeout(server.shutdown_timeout, server.tasks.wait()).await.is_err() {
            warn!(target: "sluice::smtp", sessions = server.tasks.len(), "grace period over; closing remaining sessions with 421");
            server.shutdown.deadline.cancel();
            server.tasks.wait().await;
        }
        let flow = server.context.flows.report();
        info!(target: "sluice::smtp", flow_pauses = flow.pauses, flow_resumes = flow.resumes, "stopped");
    }

    /// Applies the session limits and starts the session task.
    fn admit(&self, stream: TcpStream, peer: SocketAddr, id: u64) {
        let _ = stream.set_nodelay(true);
        let span = info_span!("session", id = %format!("{id:08x}"), peer = %peer);
        let hostname = self.context.session.hostname.clone();
        let permit: Option<OwnedSemaphorePermit> = self.max_sessions.clone().try_acquire_owned().ok();
        let slot = permit.as_ref().and_then(|_| self.per_ip.acquire(peer.ip(), self.max_sessions_per_ip));
        let (Some(permit), Some(slot)) = (permit, slot) else {
            let text = format!("{hostname} Error: too many sessions, try again later");
            info!(target: "sluice::smtp", parent: &span, "refused: session limit");
            self.tasks.spawn(refuse(stream, text).instrument(span));
            return;
        };
        let connection = Connection::new(stream, peer, id, self.context.clone(), self.shutdown.clone());
        self.tasks.spawn(
            async move {
                connection.run().await;
                drop((permit, slot));
            }
            .instrument(span),
        );
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
