//! What the host gives a filter instance: the generated bindings, the per-message store data
//! (empty WASI context, resource table, memory limiter, CPU accounting) and the `host` imports
//! (`log` into the gateway's `filters` subsystem, the stage's config).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter",
        imports: { default: async },
        exports: { default: async },
    });
}

use bindings::sluice::filter::host::Level;

/// Log lines a filter may write per message; the rest are dropped (a chatty filter cannot flood).
const MAX_LOG_LINES: u32 = 100;
const MAX_LOG_LINE: usize = 2000;

/// Per-message store data.
pub struct State {
    pub stage: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    config: Arc<Vec<(String, String)>>,
    /// Epoch ticks the current call has run; reset before every call.
    pub ticks_used: u64,
    pub tick_budget: u64,
    logged: u32,
    /// The guest's stderr (a Rust panic message lands here), capped, for the failure report.
    pub stderr: MemoryOutputPipe,
}

impl State {
    pub fn new(stage: Arc<str>, config: Arc<Vec<(String, String)>>, limits: StoreLimits, tick_budget: u64) -> State {
        // Capped: a guest writing more than this to stderr traps (a stage failure).
        let stderr = MemoryOutputPipe::new(64 * 1024);
        State {
            stage,
            // No preopens, environment, arguments or sockets: no ambient authority.
            wasi: WasiCtx::builder().stderr(stderr.clone()).allow_tcp(false).allow_udp(false).build(),
            table: ResourceTable::new(),
            limits,
            config,
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
        self.config.as_ref().clone()
    }

    async fn config_get(&mut self, key: String) -> Option<String> {
        self.config.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }
}
