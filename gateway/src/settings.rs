//! One generation of everything a session reads, built together from one config and swapped in
//! as one by a reload: protocol limits, read deadlines, flow watermarks, admission limits, the
//! shutdown grace, the next hop, the spool's limits and the chain. A session takes the
//! generation current when it is admitted and keeps it for its life, so it never sees half of
//! a reload; each generation alive is counted in `sluice_chain_generations_alive`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::metrics::gauge::Gauge;

use crate::chain::answer::ContentRules;
use crate::chain::Chain;
use crate::config::Config;
use crate::flow::Watermarks;
use crate::maildir::Maildir;
use crate::next_hop::NextHop;
use crate::policy::Policy;
use crate::proxy_header::ProxyProtocol;
use crate::relay::{RelayClient, RelayPool, RelaySettings};
use crate::smtp::deadline::ReadLimits;
use crate::smtp::session::{SessionConfig, TlsPolicy};
use crate::spool::{Spool, SpoolBudget};

/// What every generation shares: reloads change their limits, never replace them.
pub struct Shared {
    /// Idle next-hop connections, kept per relay settings (`RelayPool::take`).
    pub relay_pool: Arc<RelayPool>,
    /// Memory all sessions' spools share, old generations' and new (its limit set by `Context`).
    pub spool_budget: SpoolBudget,
    /// `server.hostname` when the config has none.
    pub machine_hostname: String,
    pub generations_alive: Gauge,
}

/// Session admission, applied by the listener.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
}

enum Destination {
    Relay(RelaySettings),
    Maildir(Arc<Maildir>),
}

pub struct Settings {
    /// 1 at start, +1 per successful reload.
    pub generation: u64,
    pub session: SessionConfig,
    pub reads: ReadLimits,
    pub watermarks: Watermarks,
    pub admission: Admission,
    /// Whether connections begin with a PROXY header, and from which balancers.
    pub proxy: ProxyProtocol,
    /// How long SIGTERM waits for sessions in a transaction.
    pub shutdown_timeout: Duration,
    pub chain: Arc<Chain>,
    /// Relay policy and rate limits (the rate tables are the context's: they outlive this).
    pub policy: Policy,
    /// STARTTLS's certificate, read for this generation; None when `[tls]` is absent.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    destination: Destination,
    relay_pool: Arc<RelayPool>,
    spool_memory: usize,
    spool_budget: SpoolBudget,
    spool_directory: Option<PathBuf>,
    _alive: Alive,
}

/// The content rules a chain built for `config` must keep: the same limits its sessions use.
pub fn content_rules(config: &Config) -> ContentRules {
    ContentRules {
        max_message_size: config.server.max_message_size.0,
        bare_line_endings: config.server.bare_line_endings,
    }
}

impl Settings {
    /// A generation from `config` and a chain built for it (`content_rules`). `previous` lends
    /// its maildir when path and host name are the same, so one delivery sequence goes on (two
    /// `Maildir`s on one directory could pick the same file name).
    pub fn new(
        config: &Config,
        generation: u64,
        chain: Chain,
        shared: &Shared,
        previous: Option<&Settings>,
    ) -> anyhow::Result<Settings> {
        let server = &config.server;
        let hostname = server.hostname.clone().unwrap_or_else(|| shared.machine_hostname.clone());
        let destination = match &config.relay {
            Some(relay) => Destination::Relay(RelaySettings {
                address: relay.address.clone(),
                helo_name: relay.helo_name.clone().unwrap_or_else(|| hostname.clone()),
                connect_timeout: relay.connect_timeout.0,
                command_timeout: relay.command_timeout.0,
                tls: crate::relay::TlsPolicy::from_config(config, relay)?,
                received_by: relay.add_received.then(|| hostname.clone()),
            }),
            None => {
                let path = &config.maildir.path;
                let reused = previous.and_then(|previous| match &previous.destination {
                    Destination::Maildir(maildir) if maildir.is_at(path, &hostname) => Some(maildir.clone()),
                    _ => None,
                });
                let maildir = match reused {
                    Some(maildir) => maildir,
                    None => Arc::new(Maildir::open(path, &hostname).with_context(|| {
                        format!("cannot create the maildir at {} (set [maildir] path)", path.display())
                    })?),
                };
                Destination::Maildir(maildir)
            }
        };
        let tls = crate::inbound_tls::acceptor(config).map_err(anyhow::Error::msg)?;
        let tls_policy = match (&tls, server.require_tls) {
            (None, _) => TlsPolicy::Off,
            (Some(_), false) => TlsPolicy::Offered,
            (Some(_), true) => TlsPolicy::Required,
        };
        Ok(Settings {
            generation,
            session: SessionConfig {
                hostname,
                max_message_size: server.max_message_size.0,
                max_header_size: server.max_header_size.0,
                max_recipients: server.max_recipients,
                bare_line_endings: server.bare_line_endings,
                tls: tls_policy,
            },
            reads: ReadLimits {
                command_timeout: server.command_timeout.0,
                data_timeout: server.data_timeout.0,
                min_data_rate: server.min_data_rate.0,
                min_data_rate_grace: server.min_data_rate_grace.0,
            },
            watermarks: Watermarks { high: config.flow.high_watermark.0, low: config.flow.low_watermark.0 },
            admission: Admission { max_sessions: server.max_sessions, max_sessions_per_ip: server.max_sessions_per_ip },
            proxy: ProxyProtocol::new(
                server.proxy_protocol,
                &server.proxy_trusted.iter().map(|network| network.0).collect::<Vec<_>>(),
            ),
            shutdown_timeout: server.shutdown_timeout.0,
            chain: Arc::new(chain),
            policy: Policy::new(&config.policy),
            tls,
            destination,
            relay_pool: shared.relay_pool.clone(),
            spool_memory: usize::try_from(config.spool.memory_limit.0).unwrap_or(usize::MAX),
            spool_budget: shared.spool_budget.clone(),
            spool_directory: config.spool.directory.clone(),
            _alive: Alive::new(shared.generations_alive.clone()),
        })
    }

    pub fn next_hop(&self) -> NextHop {
        match &self.destination {
            Destination::Relay(relay) => {
                NextHop::Relay(Box::new(RelayClient::new(relay.clone(), self.relay_pool.clone())))
            }
            Destination::Maildir(maildir) => NextHop::Maildir(maildir.clone()),
        }
    }

    /// The longest a delivery past its final dot may wait for the next hop's answer.
    pub fn relay_answer_timeout(&self) -> Duration {
        match &self.destination {
            Destination::Relay(relay) => relay.command_timeout,
            Destination::Maildir(_) => Duration::ZERO,
        }
    }

    pub fn spool(&self) -> Spool {
        Spool::new(self.spool_memory, self.spool_budget.clone(), self.spool_directory.clone())
    }
}

/// Held by each generation while it exists: the gauge counts generations alive, and dropping
/// the last reference (the last session on an old generation ending) is what lowers it.
struct Alive(Gauge);

impl Alive {
    fn new(gauge: Gauge) -> Alive {
        gauge.inc();
        Alive(gauge)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The machine's host name, for `server.hostname` when the config has none.
pub fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
