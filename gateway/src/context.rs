//! Everything sessions share, resolved once from the config: protocol limits, the next hop, the
//! spool, the metrics and session book — and the chain, which hot reload replaces. A session
//! takes the chain current when it starts and keeps it; new sessions get the new one; an old
//! chain is dropped when its last session ends.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::Context as _;
use tracing::{info, warn};

use crate::chain::answer::ContentRules;
use crate::chain::stage::StageFactory;
use crate::chain::test_stage::TestStageFactory;
use crate::chain::{Chain, StageSpec};
use crate::config::stages::StageKind;
use crate::config::{self, Config};
use crate::flow::gate::{FlowRegistry, FlowStats};
use crate::flow::Watermarks;
use crate::maildir::Maildir;
use crate::metrics::Metrics;
use crate::next_hop::NextHop;
use crate::relay::{RelayClient, RelayPool, RelaySettings};
use crate::scanner::clamd::{self, ClamdAddress, ClamdFactory, ClamdSettings};
use crate::sessions::SessionBook;
use crate::smtp::deadline::ReadLimits;
use crate::smtp::session::SessionConfig;
use crate::spool::{Spool, SpoolBudget};
use crate::wasm::{LoadError, WasmFilter, WasmLimits};

/// The loaded chain and its generation (1 at start, +1 per successful reload).
struct Loaded {
    chain: Arc<Chain>,
    generation: u64,
}

pub struct Context {
    pub session: SessionConfig,
    pub watermarks: Watermarks,
    pub flows: Arc<FlowRegistry>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<SessionBook>,
    pub reads: ReadLimits,
    pub started: Instant,
    /// The config file to reload the chain from (None: the embedded default).
    config_path: Option<PathBuf>,
    loaded: RwLock<Loaded>,
    /// Serialises reloads, so two at once cannot race to the same generation.
    reloading: tokio::sync::Mutex<()>,
    relay: Option<RelaySettings>,
    relay_pool: Arc<RelayPool>,
    maildir: Option<Arc<Maildir>>,
    spool_memory: usize,
    /// Memory all sessions' spools share.
    spool_budget: SpoolBudget,
    spool_directory: Option<PathBuf>,
}

impl Context {
    pub async fn from_config(
        config: &Config,
        config_path: Option<PathBuf>,
        hostname: String,
    ) -> anyhow::Result<Context> {
        let metrics = Arc::new(Metrics::default());
        let server = &config.server;
        let content =
            ContentRules { max_message_size: server.max_message_size.0, bare_line_endings: server.bare_line_endings };
        let chain = chain_from_config(config, content, &metrics).await?;
        metrics.chain_generation.set(1);
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
        let relay_pool = Arc::new(RelayPool::new(metrics.relay_idle.clone()));
        let flow_stats = FlowStats { pauses: metrics.flow_pauses.clone(), resumes: metrics.flow_resumes.clone() };
        Ok(Context {
            session: SessionConfig {
                hostname,
                max_message_size: server.max_message_size.0,
                max_header_size: server.max_header_size.0,
                max_recipients: server.max_recipients,
                bare_line_endings: server.bare_line_endings,
            },
            watermarks: Watermarks { high: config.flow.high_watermark.0, low: config.flow.low_watermark.0 },
            flows: Arc::new(FlowRegistry::with_stats(flow_stats)),
            metrics,
            sessions: Arc::default(),
            reads: ReadLimits {
                command_timeout: server.command_timeout.0,
                data_timeout: server.data_timeout.0,
                min_data_rate: server.min_data_rate.0,
                min_data_rate_grace: server.min_data_rate_grace.0,
            },
            started: Instant::now(),
            config_path,
            loaded: RwLock::new(Loaded { chain: Arc::new(chain), generation: 1 }),
            reloading: tokio::sync::Mutex::new(()),
            relay,
            relay_pool,
            maildir,
            spool_memory: usize::try_from(config.spool.memory_limit.0).unwrap_or(usize::MAX),
            spool_budget: SpoolBudget::new(usize::try_from(config.spool.total_memory_limit.0).unwrap_or(usize::MAX)),
            spool_directory: config.spool.directory.clone(),
        })
    }

    /// The chain a new session uses.
    pub fn chain(&self) -> Arc<Chain> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).chain.clone()
    }

    pub fn generation(&self) -> u64 {
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).generation
    }

    /// Builds a new chain from the config file beside the old one and swaps it in; on any error
    /// the old chain stays and the error is returned. Only the chain is reloaded: listeners,
    /// limits and the next hop need a restart.
    pub async fn reload(&self) -> anyhow::Result<(u64, Vec<String>)> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = async {
            let config = match &self.config_path {
                Some(path) => config::load_file(path)?,
                None => config::embedded_default()?,
            };
            crate::preflight::check(&config)?;
            // The server's limits are not reloaded: the chain keeps to those the sessions use.
            let content = ContentRules {
                max_message_size: self.session.max_message_size,
                bare_line_endings: self.session.bare_line_endings,
            };
            chain_from_config(&config, content, &self.metrics).await
        }
        .await;
        match result {
            Ok(chain) => {
                let names = chain.stage_names();
                let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
                loaded.generation += 1;
                loaded.chain = Arc::new(chain);
                self.metrics.chain_generation.set(loaded.generation as i64);
                info!(target: "sluice::reload", generation = loaded.generation, stages = ?names, "chain reloaded");
                Ok((loaded.generation, names))
            }
            Err(err) => {
                warn!(target: "sluice::reload", error = %format!("{err:#}"), "reload failed; the running chain stays");
                Err(err)
            }
        }
    }

    pub fn next_hop(&self) -> NextHop {
        match (&self.relay, &self.maildir) {
            (Some(relay), _) => NextHop::Relay(RelayClient::new(relay.clone(), self.relay_pool.clone())),
            (None, Some(maildir)) => NextHop::Maildir(maildir.clone()),
            (None, None) => unreachable!("Context::from_config sets a relay or a maildir"),
        }
    }

    /// At shutdown, after the last session: idle next-hop connections say QUIT and close.
    pub async fn close_relay_pool(&self) {
        self.relay_pool.close().await;
    }

    pub fn spool(&self) -> Spool {
        Spool::new(self.spool_memory, self.spool_budget.clone(), self.spool_directory.clone())
    }
}

/// Builds the chain from `[[stage]]` tables (already validated), logging `load_stages`'
/// warnings: a broken filter stops the start (or the reload) with an error naming it.
pub async fn chain_from_config(
    config: &Config,
    content: ContentRules,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Chain> {
    let (specs, warnings) = load_stages(config, content, metrics).await?;
    for warning in warnings {
        warn!(target: "sluice::filters", "{warning}");
    }
    Ok(Chain::new(specs))
}

/// The chain's stages from `[[stage]]` tables: wasm filters are compiled, linked and have their
/// configuration checked here. Returns them with warnings for the operator (`[stage.config]`
/// keys a filter never reads), each `FILE:LINE: stage "NAME": …`; an error is one such line.
pub async fn load_stages(
    config: &Config,
    content: ContentRules,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Vec<StageSpec>, Vec<String>)> {
    let mut specs = Vec::new();
    let mut warnings = Vec::new();
    for (index, stage) in config.stage.iter().enumerate() {
        let factory: Box<dyn StageFactory> = match stage.kind {
            StageKind::Test => Box::new(TestStageFactory::new(stage.test.clone().unwrap_or_default())),
            StageKind::Wasm => {
                let filter = load_wasm(config, index, metrics).await?;
                warnings.extend(filter.unused_config_keys().iter().map(|key| {
                    let at = config.locate(&format!("stage[{index}].config.{key}"));
                    format!("{at}: unknown key, not used by the filter")
                }));
                Box::new(Arc::new(filter))
            }
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
        specs.push(StageSpec {
            name: stage.name.clone(),
            on_error: stage.on_error,
            timeout: stage.timeout.0,
            content,
            factory,
            metrics: metrics.clone(),
        });
    }
    Ok((specs, warnings))
}

/// Loads the wasm filter of stage `index`; errors point at its `path` or, when the filter refuses
/// its configuration, at the `[stage.config]` key it names.
async fn load_wasm(config: &Config, index: usize, metrics: &Arc<Metrics>) -> anyhow::Result<WasmFilter> {
    let stage = &config.stage[index];
    let defaults = WasmLimits::default();
    let limits = WasmLimits {
        memory: stage.memory_limit.map_or(defaults.memory, |m| usize::try_from(m.0).unwrap_or(usize::MAX)),
        cpu_per_call: stage.cpu_limit.map_or(defaults.cpu_per_call, |c| c.0),
        per_message: stage.message_timeout.map_or(defaults.per_message, |m| m.0),
    };
    let path = config.resolve(stage.path.as_deref().unwrap_or(std::path::Path::new("")));
    let mut filter = match WasmFilter::load(&stage.name, &path, stage.filter_config(), limits).await {
        Ok(filter) => filter,
        Err(LoadError::Refused { key, message }) if key.is_empty() => {
            anyhow::bail!("{}: {message}", config.locate(&format!("stage[{index}].config")))
        }
        Err(LoadError::Refused { key, message }) => {
            anyhow::bail!("{}: {message}", config.locate(&format!("stage[{index}].config.{key}")))
        }
        Err(err) => anyhow::bail!("{}: {err}", config.locate(&format!("stage[{index}].path"))),
    };
    filter.observe_instantiation(metrics.wasm_instantiation.clone());
    info!(target: "sluice::filters", stage = %stage.name, path = %path.display(), compile_ms = filter.compile_time.as_millis() as u64, "filter loaded");
    Ok(filter)
}
