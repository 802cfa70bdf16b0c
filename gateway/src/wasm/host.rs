//! What the host gives a filter instance: the generated bindings, the per-message store data
//! (empty WASI context, resource table, memory limiter, CPU accounting) and the imports: `host`
//! (`log` into the gateway's `filters` subsystem, the stage's config), `files` (the bytes of the
//! stage's `[stage.files]`, read by the host at load), `dns` (TXT lookups, for a stage granted
//! the capability, bounded by what is left of the message's time), `raw` (the header section
//! as this stage was given it) and `keys` (signing with a key of `[stage.keys]`, `keys.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter-with-dns",
        imports: { default: async },
        exports: { default: async },
    });
}

use super::keys::{Signing, StageKeys};
use crate::dns::{LookupError, TxtSource};
use bindings::sluice::filter::dns::DnsError;
use bindings::sluice::filter::host::Level;
use bindings::sluice::filter::keys::{Algorithm as KeyAlgorithm, KeyInfo};
use sluice_dkim::Algorithm;

/// Log lines a filter may write per message; the rest are dropped (a chatty filter cannot flood).
const MAX_LOG_LINES: u32 = 100;
const MAX_LOG_LINE: usize = 2000;

/// A stage's `[stage.files]`: name → the file's bytes, read once per load (so once per reload).
pub type StageFiles = BTreeMap<String, Vec<u8>>;

/// The store's limits (`StoreLimits`, the stage's memory bound), remembering how much linear
/// memory the instance grew to in all, for the `wasm_instance_memory_peak_bytes` metric.
pub struct MeteredLimits {
    limits: StoreLimits,
    now: usize,
    pub peak: usize,
}

impl MeteredLimits {
    pub fn new(limits: StoreLimits) -> MeteredLimits {
        MeteredLimits { limits, now: 0, peak: 0 }
    }
}

impl ResourceLimiter for MeteredLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.now = (self.now + desired).saturating_sub(current);
            self.peak = self.peak.max(self.now);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// What the operator gives one stage's filter besides its message, fixed per load.
pub struct Provisions {
    /// `[stage.config]`, as `host.config` gives it.
    pub config: Vec<(String, String)>,
    pub files: StageFiles,
    /// `[stage.keys]`, as `keys` signs with them.
    pub keys: StageKeys,
    /// The resolver, if the stage is granted `dns`.
    pub dns: Option<Arc<dyn TxtSource>>,
}

impl Provisions {
    pub fn new(
        config: Vec<(String, String)>,
        files: StageFiles,
        keys: StageKeys,
        dns: Option<Arc<dyn TxtSource>>,
    ) -> Provisions {
        Provisions { config, files, keys, dns }
    }
}

/// Per-message store data.
pub struct State {
    pub stage: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: MeteredLimits,
    provisions: Arc<Provisions>,
    /// The header section given at `on-headers`, for `raw.header-section`.
    pub header_section: Vec<u8>,
    /// This message's signatures so far, against `keys`'s bounds.
    signing: Signing,
    /// When the message's time runs out (set before each call): a DNS lookup ends before it.
    pub deadline: Option<Instant>,
    /// Epoch ticks the current call has run; reset before every call.
    pub ticks_used: u64,
    pub tick_budget: u64,
    logged: u32,
    /// The guest's stderr (a Rust panic message lands here), capped, for the failure report.
    pub stderr: MemoryOutputPipe,
}

impl State {
    pub fn new(stage: Arc<str>, provisions: Arc<Provisions>, limits: StoreLimits, tick_budget: u64) -> State {
        // Capped: a guest writing more than this to stderr traps (a stage failure).
        let stderr = MemoryOutputPipe::new(64 * 1024);
        State {
            stage,
            // No preopens, environment, arguments or sockets: no ambient authority.
            wasi: WasiCtx::builder().stderr(stderr.clone()).allow_tcp(false).allow_udp(false).build(),
            table: ResourceTable::new(),
            limits: MeteredLimits::new(limits),
            provisions,
            header_section: Vec::new(),
            signing: Signing::default(),
            deadline: None,
            ticks_used: 0,
            tick_budget,
            logged: 0,
            stderr,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl bindings::sluice::filter::types::Host for State {}

impl bindings::sluice::filter::host::Host for State {
    async fn log(&mut self, level: Level, message: String) {
        self.logged += 1;
        if self.logged > MAX_LOG_LINES {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let cut = (0..=MAX_LOG_LINE).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
            message.truncate(cut);
        }
        let stage = &*self.stage;
        match level {
            Level::Trace => tracing::trace!(target: "sluice::filters", stage, "{message}"),
            Level::Debug => tracing::debug!(target: "sluice::filters", stage, "{message}"),
            Level::Info => tracing::info!(target: "sluice::filters", stage, "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::filters", stage, "{message}"),
            Level::Error => tracing::error!(target: "sluice::filters", stage, "{message}"),
        }
    }

    async fn config(&mut self) -> Vec<(String, String)> {
        self.provisions.config.clone()
    }

    async fn config_get(&mut self, key: String) -> Option<String> {
        self.provisions.config.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }
}

impl bindings::sluice::filter::files::Host for State {
    async fn file(&mut self, name: String) -> Option<Vec<u8>> {
        self.provisions.files.get(&name).cloned()
    }
}

impl bindings::sluice::filter::raw::Host for State {
    async fn header_section(&mut self) -> Vec<u8> {
        self.header_section.clone()
    }
}

impl bindings::sluice::filter::keys::Host for State {
    async fn key(&mut self, name: String) -> Result<KeyInfo, String> {
        let info = self.provisions.keys.info(&name, &self.provisions.files)?;
        let algorithm = match info.algorithm {
            Algorithm::RsaSha256 => KeyAlgorithm::RsaSha256,
            Algorithm::Ed25519Sha256 => KeyAlgorithm::Ed25519Sha256,
        };
        Ok(KeyInfo { algorithm, bits: info.bits })
    }

    async fn sign(&mut self, name: String, data: Vec<u8>) -> Result<Vec<u8>, String> {
        self.provisions.keys.sign(&name, &data, &self.provisions.files, &mut self.signing)
    }
}

impl bindings::sluice::filter::dns::Host for State {
    async fn txt(&mut self, name: String) -> Result<Vec<String>, DnsError> {
        // Loading refuses a filter that imports `dns` without the grant, so this is a backstop.
        let Some(source) = self.provisions.dns.clone() else { return Err(DnsError::ServerFailure) };
        // A tenth of what is left stays for the filter to answer after a timeout, so the
        // message's own bound does not end the call first.
        let left = self.deadline.map_or(Duration::MAX, |deadline| deadline.saturating_duration_since(Instant::now()));
        let bound = left.saturating_sub(left / 10);
        let answer = match tokio::time::timeout(bound, crate::dns::txt(&*source, &name)).await {
            Ok(answer) => answer,
            Err(_) => Err(LookupError::Timeout),
        };
        tracing::debug!(target: "sluice::filters", stage = &*self.stage, name = name.as_str(), answer = ?answer, "dns lookup");
        answer.map_err(|err| match err {
            LookupError::NotFound => DnsError::NotFound,
            LookupError::Timeout => DnsError::Timeout,
            LookupError::ServerFailure => DnsError::ServerFailure,
            LookupError::BadName => DnsError::BadName,
        })
    }
}
