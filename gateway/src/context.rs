//! Everything sessions share: the metrics, the flow registry, the session book — and the
//! current settings generation (`Settings`: limits, next hop, spool limits, chain), which a
//! reload replaces as one. A session takes the generation current when it is admitted and
//! keeps it; new sessions get the new one; an old generation is dropped with its last session.
//! What cannot change while running is reported by the reload and keeps its running value
//! (`reload::plan`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::chain::answer::ContentRules;
use crate::chain::stage::StageFactory;
use crate::chain::test_stage::TestStageFactory;
use crate::chain::{Chain, StageSpec};
use crate::config::stages::Capability;
use crate::config::stages::StageKind;
use crate::config::{self, Config};
use crate::dns::{Resolver, TxtSource};
use crate::flow::gate::{FlowRegistry, FlowStats};
use crate::message_book::MessageBook;
use crate::metrics::{Metrics, StageLabel};
use crate::milter::address::MilterAddress;
use crate::milter::stage::{check as milter_check, MilterFactory, MilterSettings};
use crate::policy::rate::RateTables;
use crate::relay::RelayPool;
use crate::reload::{self, FileDigests, ReloadReport};
use crate::scanner::clamd::{self, ClamdAddress, ClamdFactory, ClamdSettings};
use crate::sessions::SessionBook;
use crate::settings::{content_rules, Settings, Shared};
use crate::spool::SpoolBudget;
use crate::wasm::{
    default_cache_dir, read_stage_file, read_stage_files, CacheOutcome, ComponentCache, LoadError, Provisions,
    RefusedAt, StageKeys, WasmFilter, WasmLimits,
};

/// The config the current generation was built from, for the next reload to compare with.
struct Running {
    config: Config,
    files: FileDigests,
}

pub struct Context {
    pub flows: Arc<FlowRegistry>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<SessionBook>,
    /// The latest message lines, for the dashboard.
    pub messages: MessageBook,
    /// Per-client rate windows, kept across reloads.
    pub rates: RateTables,
    pub started: Instant,
    /// The config file to reload from (None: the embedded default).
    config_path: Option<PathBuf>,
    current: RwLock<Arc<Settings>>,
    /// Held for a whole reload, so two at once cannot race to the same generation.
    running: tokio::sync::Mutex<Running>,
    shared: Shared,
}

impl Context {
    /// `machine_hostname` stands in for `server.hostname` whenever a config has none.
    pub async fn from_config(
        config: &Config,
        config_path: Option<PathBuf>,
        machine_hostname: String,
    ) -> anyhow::Result<Context> {
        let metrics = Arc::new(Metrics::default());
        let shared = Shared {
            relay_pool: Arc::new(RelayPool::new(metrics.relay_idle.clone())),
            spool_budget: SpoolBudget::new(total_memory_limit(config)),
            machine_hostname,
            generations_alive: metrics.chain_generations_alive.clone(),
        };
        let files = file_digests(config).await;
        let chain = chain_from_config(config, content_rules(config), &metrics).await?;
        let settings = Settings::new(config, 1, chain, &shared, None)?;
        metrics.chain_generation.set(1);
        let flow_stats = FlowStats { pauses: metrics.flow_pauses.clone(), resumes: metrics.flow_resumes.clone() };
        Ok(Context {
            flows: Arc::new(FlowRegistry::with_stats(flow_stats)),
            metrics,
            sessions: Arc::default(),
            messages: MessageBook::default(),
            rates: RateTables::default(),
            started: Instant::now(),
            config_path,
            current: RwLock::new(Arc::new(settings)),
            running: tokio::sync::Mutex::new(Running { config: config.clone(), files }),
            shared,
        })
    }

    /// The generation a new session gets.
    pub fn settings(&self) -> Arc<Settings> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The chain a new session gets.
    pub fn chain(&self) -> Arc<Chain> {
        self.settings().chain.clone()
    }

    pub fn generation(&self) -> u64 {
        self.settings().generation
    }

    /// Re-reads the config, builds the next generation beside the current one and swaps it in
    /// (SIGHUP and `POST /reload` both come here). What needs a restart keeps its running value
    /// and is reported; on any error nothing changes and the error is returned.
    pub async fn reload(&self) -> anyhow::Result<ReloadReport> {
        let mut running = self.running.lock().await;
        let current = self.settings();
        let result = async {
            let config = self.load_config().await?;
            let files = file_digests(&config).await;
            let plan = reload::plan(&running.config, &running.files, config, &files);
            let chain = chain_from_config(&plan.config, content_rules(&plan.config), &self.metrics).await?;
            let settings = Settings::new(&plan.config, current.generation + 1, chain, &self.shared, Some(&current))?;
            anyhow::Ok((plan, files, settings))
        }
        .await;
        let (plan, files, settings) = match result {
            Ok(next) => next,
            Err(err) => {
                warn!(target: "sluice::reload", error = %format!("{err:#}"), "reload failed; the running config stays");
                return Err(err);
            }
        };
        let report = ReloadReport {
            generation: settings.generation,
            stages: settings.chain.stage_names(),
            changes: plan.changes,
        };
        self.shared.spool_budget.set_limit(total_memory_limit(&plan.config));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
        self.metrics.chain_generation.set(report.generation as i64);
        *running = Running { config: plan.config, files };
        log_reload(&report);
        Ok(report)
    }

    /// Reads the config file a reload runs, checked as at start.
    async fn load_config(&self) -> anyhow::Result<Config> {
        let config = match &self.config_path {
            Some(path) => config::load_file(path)?,
            None => config::embedded_default()?,
        };
        crate::preflight::check(&config)?;
        Ok(config)
    }

    /// The config file serve runs (None: the embedded default).
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// At shutdown, after the last session: idle next-hop connections say QUIT and close.
    pub async fn close_relay_pool(&self) {
        self.shared.relay_pool.close().await;
    }
}

fn total_memory_limit(config: &Config) -> usize {
    usize::try_from(config.spool.total_memory_limit.0).unwrap_or(usize::MAX)
}

/// One line per reload, each list comma-separated (`-` for none).
fn log_reload(report: &ReloadReport) {
    let c = &report.changes;
    let headline = match c.restart_needed.is_empty() {
        true => "config reloaded",
        false => "config reloaded; some changes need a restart (restart_needed keeps its running value)",
    };
    info!(
        target: "sluice::reload",
        generation = report.generation,
        stages = reload::list(&report.stages).as_str(),
        added = reload::list(&c.stages_added).as_str(),
        removed = reload::list(&c.stages_removed).as_str(),
        changed = reload::list(&c.stages_changed).as_str(),
        applied = reload::list(&c.applied).as_str(),
        restart_needed = reload::list(&c.restart_needed).as_str(),
        "{headline}"
    );
}

/// Digests of the files each stage names (its filter, its `[stage.files]` and `[stage.keys]`), so a reload can
/// tell a rebuilt filter or a replaced key file from the same ones. A file that cannot be read
/// counts as empty (loading it reports the error).
async fn file_digests(config: &Config) -> FileDigests {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut digests = FileDigests::new();
    for stage in &config.stage {
        let Some(path) = &stage.path else { continue };
        // `DefaultHasher::new()` is the same in every run of one binary, which is all a
        // comparison between two reloads needs.
        let mut hasher = DefaultHasher::new();
        let Ok(bytes) = tokio::fs::read(config.resolve(path)).await else { continue };
        bytes.hash(&mut hasher);
        // Read within the stage-file bound: a key naming /dev/zero is refused by the load, not
        // read without end here.
        for (name, path) in stage.files.iter().flatten().chain(stage.keys.iter().flatten()) {
            name.hash(&mut hasher);
            read_stage_file(&config.resolve(path)).unwrap_or_default().hash(&mut hasher);
        }
        digests.insert(stage.name.clone(), hasher.finish());
    }
    digests
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
    // One resolver (and so one cache) per generation, shared by the stages granted `dns`.
    let resolver: Option<Arc<dyn TxtSource>> = match config.stage.iter().any(|s| s.granted(Capability::Dns)) {
        true => Some(Resolver::new(&config.dns).map_err(|err| anyhow::anyhow!("{}: {err}", config.locate("dns")))?),
        false => None,
    };
    let cache = match config.stage.iter().any(|s| s.kind == StageKind::Wasm) {
        true => component_cache(config)?,
        false => None,
    };
    for (index, stage) in config.stage.iter().enumerate() {
        let factory: Box<dyn StageFactory> = match stage.kind {
            StageKind::Test => Box::new(TestStageFactory::new(stage.test.clone().unwrap_or_default())),
            StageKind::Wasm => {
                let filter = load_wasm(config, index, resolver.clone(), cache.as_ref(), metrics).await?;
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
            StageKind::Milter => {
                let address = stage.address.as_deref().and_then(MilterAddress::parse);
                let address = address.ok_or_else(|| {
                    anyhow::anyhow!("{}: bad milter address", config.locate(&format!("stage[{index}].address")))
                })?;
                let settings = MilterSettings {
                    stage: stage.name.clone(),
                    address,
                    timeout: stage.timeout.0,
                    hostname: config.server.hostname.clone().unwrap_or_else(crate::settings::machine_hostname),
                    macros: stage.macros.clone().unwrap_or_default().into_iter().collect(),
                    quarantine: stage.quarantine.unwrap_or_default(),
                    replace_body: stage.replace_body.unwrap_or(false),
                    max_message_size: content.max_message_size,
                };
                milter_check(&settings).await;
                Box::new(MilterFactory::new(settings))
            }
        };
        // A milter's `timeout` bounds each wait for one of its packets; its call may last up to
        // `call_limit` while it keeps sending progress.
        let call_bound = match stage.kind {
            StageKind::Milter => stage.call_limit.map_or(Duration::from_secs(300), |limit| limit.0),
            _ => stage.timeout.0,
        };
        specs.push(StageSpec {
            name: stage.name.clone(),
            kind: stage.kind,
            on_error: stage.on_error,
            timeout: call_bound,
            content,
            factory,
            meters: metrics.stage_meters(&stage.name),
            metrics: metrics.clone(),
        });
    }
    Ok((specs, warnings))
}

/// The compiled-component cache `[wasm]` asks for: an explicit `cache_dir` that cannot be used
/// is a config error; the default one only costs a warning (the gateway then compiles every time).
fn component_cache(config: &Config) -> anyhow::Result<Option<ComponentCache>> {
    if !config.wasm.cache {
        return Ok(None);
    }
    match &config.wasm.cache_dir {
        Some(dir) => ComponentCache::open(&config.resolve(dir))
            .map(Some)
            .map_err(|err| anyhow::anyhow!("{}: {err}", config.locate("wasm.cache_dir"))),
        None => Ok(default_cache_dir().and_then(|dir| {
            ComponentCache::open(&dir)
                .map_err(|err| warn!(target: "sluice::filters", "compiled-component cache off: {err}"))
                .ok()
        })),
    }
}

/// Loads the wasm filter of stage `index` with its `[stage.files]` read; errors point at its
/// `path`, at a file's key, or, when the filter refuses its configuration, at the key it names
/// (`files.NAME` for a file, otherwise a `[stage.config]` key).
async fn load_wasm(
    config: &Config,
    index: usize,
    resolver: Option<Arc<dyn TxtSource>>,
    cache: Option<&ComponentCache>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<WasmFilter> {
    let stage = &config.stage[index];
    let defaults = WasmLimits::default();
    let limits = WasmLimits {
        memory: stage.memory_limit.map_or(defaults.memory, |m| usize::try_from(m.0).unwrap_or(usize::MAX)),
        cpu_per_call: stage.cpu_limit.map_or(defaults.cpu_per_call, |c| c.0),
        per_message: stage.message_timeout.map_or(defaults.per_message, |m| m.0),
    };
    let path = config.resolve(stage.path.as_deref().unwrap_or(std::path::Path::new("")));
    let at = |table: &'static str| {
        move |(name, why): (String, String)| {
            anyhow::anyhow!("{}: {why}", config.locate(&format!("stage[{index}].{table}.{name}")))
        }
    };
    let resolved = |(name, file): (&String, &std::path::PathBuf)| (name.clone(), config.resolve(file));
    let files = read_stage_files(stage.files.iter().flatten().map(resolved)).map_err(at("files"))?;
    let keys =
        read_stage_files(stage.keys.iter().flatten().map(resolved)).and_then(StageKeys::read).map_err(at("keys"))?;
    let dns = resolver.filter(|_| stage.granted(Capability::Dns));
    let provisions = Provisions::new(stage.filter_config(), files, keys, dns);
    let mut filter = match WasmFilter::load(&stage.name, &path, provisions, limits, cache).await {
        Ok(filter) => filter,
        Err(err @ LoadError::NotGranted { .. }) => {
            anyhow::bail!("{}: {err}", config.locate(&format!("stage[{index}].capabilities")))
        }
        Err(LoadError::Refused { key, message }) => {
            anyhow::bail!("{}: {message}", config.locate(&RefusedAt::of(&key).dotted(index)))
        }
        Err(err) => anyhow::bail!("{}: {err}", config.locate(&format!("stage[{index}].path"))),
    };
    filter.observe_instantiation(metrics.wasm_instantiation.clone());
    filter.observe_memory(metrics.wasm_memory_peak.get_or_create(&StageLabel { stage: stage.name.clone() }).clone());
    info!(target: "sluice::filters", stage = %stage.name, path = %path.display(), compile_ms = filter.compile_time.as_millis() as u64, cache = %filter.cache_outcome.as_str(), "filter loaded");
    if let CacheOutcome::Rebuilt(why) = &filter.cache_outcome {
        warn!(target: "sluice::filters", stage = %stage.name, "the cached compilation was unusable ({why}): compiled anew");
    }
    Ok(filter)
}
