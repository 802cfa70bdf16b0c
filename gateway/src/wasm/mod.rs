//! The wasm stage kind: filters as WebAssembly components implementing `sluice:filter`
//! (`wit/filter.wit`). A filter is compiled once at load and pre-linked (`InstancePre`); every
//! message gets a fresh instance in its own `Store` (no state leaks between messages), with a
//! memory bound, a CPU bound per call (epoch interruption that yields to tokio, so a busy filter
//! never blocks other sessions), a time budget per message, and no ambient authority: an empty
//! WASI context (no files, sockets, environment or clock beyond WASI's defaults).

mod engine;
mod host;
mod stage;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use wasmtime::component::{Component, Linker};

use crate::chain::stage::{Interests, MessageContext, Stage, StageError, StageEvent, StageFactory};
use host::{bindings, State};
pub use stage::WasmStage;

/// Limits of one wasm stage, from its config.
#[derive(Debug, Clone, Copy)]
pub struct WasmLimits {
    pub memory: usize,
    pub cpu_per_call: Duration,
    pub per_message: Duration,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits { memory: 64 << 20, cpu_per_call: Duration::from_secs(1), per_message: Duration::from_secs(60) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Engine(String),
    #[error("cannot read {path}: {source}; build the filters first (make filters)")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a usable sluice:filter component: {reason}")]
    Invalid { path: String, reason: String },
}

/// A loaded filter: compiled, linked, ready to instantiate per message.
pub struct WasmFilter {
    stage: Arc<str>,
    pre: bindings::FilterPre<State>,
    config: Arc<Vec<(String, String)>>,
    limits: WasmLimits,
    interests: Interests,
    /// Time to compile the component at load, for the operator's log.
    pub compile_time: Duration,
    /// Where per-message instantiation times go (the gateway's metrics).
    instantiation: Option<Histogram>,
}

impl WasmFilter {
    /// Compiles and links the component, then asks it which events it wants.
    pub async fn load(
        stage: &str,
        path: &Path,
        config: Vec<(String, String)>,
        limits: WasmLimits,
    ) -> Result<WasmFilter, LoadError> {
        let engine = engine::engine().map_err(LoadError::Engine)?;
        let shown = path.display().to_string();
        let invalid = |reason: String| LoadError::Invalid { path: shown.clone(), reason };
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: shown.clone(), source })?;
        let started = Instant::now();
        // Compiling is CPU work: keep it off the async workers that serve SMTP sessions.
        let compiling = engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&compiling, &bytes))
            .await
            .map_err(|e| invalid(format!("compilation task failed: {e}")))?
            .map_err(|e| invalid(format!("{e:#}")))?;
        let compile_time = started.elapsed();
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| invalid(format!("{e:#}")))?;
        bindings::Filter::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut linker, |state| state)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::FilterPre::new)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let mut filter = WasmFilter {
            stage: Arc::from(stage),
            pre,
            config: Arc::new(config),
            limits: WasmLimits { memory: limits.memory.min(engine::MAX_MEMORY), ..limits },
            interests: Interests::ALL,
            compile_time,
            instantiation: None,
        };
        filter.interests = filter.ask_interests().await.map_err(|e| invalid(format!("wants() failed: {e}")))?;
        Ok(filter)
    }

    /// Calls `wants` once in a throwaway instance.
    async fn ask_interests(&self) -> Result<Interests, StageError> {
        let mut instance = stage::Instance::new(self).await?;
        let wants = instance.wants().await?;
        use bindings::exports::sluice::filter::handler::Interests as Wit;
        let table = [
            (Wit::CONNECT, StageEvent::Connect),
            (Wit::HELO, StageEvent::Helo),
            (Wit::MAIL_FROM, StageEvent::Mail),
            (Wit::RCPT_TO, StageEvent::Rcpt),
            (Wit::HEADERS, StageEvent::Headers),
            (Wit::BODY, StageEvent::Body),
            (Wit::END, StageEvent::End),
        ];
        let events: Vec<StageEvent> = table.iter().filter(|(flag, _)| wants.contains(*flag)).map(|(_, e)| *e).collect();
        Ok(Interests::of(&events))
    }

    pub fn interests(&self) -> Interests {
        self.interests
    }

    /// Records each message's instantiation time into `histogram`.
    pub fn observe_instantiation(&mut self, histogram: Histogram) {
        self.instantiation = Some(histogram);
    }
}

impl StageFactory for Arc<WasmFilter> {
    fn instantiate(&self, _context: &MessageContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(WasmStage::new(self.clone())))
    }
}
