//! The one wasmtime `Engine` of the process: epoch interruption (for CPU bounds that yield to
//! tokio), the pooling allocator (cheap fresh instances per message), and the epoch clock, which
//! ticks only while some guest code runs (a `Ticking` guard is alive): an idle gateway never wakes
//! for it.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// The epoch clock's period: CPU limits are counted in these ticks.
pub const TICK: Duration = Duration::from_millis(1);

/// Largest linear memory any instance may have; stage `memory_limit`s are bounded by it.
pub const MAX_MEMORY: usize = 1 << 30;

/// Component instances alive at once (one per message per wasm stage); beyond it, instantiation
/// fails and the stage's `on_error` applies.
const POOL_INSTANCES: u32 = 2000;

/// Bytes of each pooled memory and table reset in place (dirty pages zeroed, found with Linux's
/// PAGEMAP_SCAN where the kernel has it, ≥ 6.7) instead of given back with madvise: the next
/// message's instance then takes no page faults on them. bench/wasm-host here: instantiation
/// 50 → 22 µs, the first 64 KiB chunk of a message 52 → 6 µs (31 µs and 39 µs with memset
/// alone, on older kernels). The price is at most this much resident per slot in use.
const KEEP_RESIDENT: usize = 128 << 10;

static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();

/// Guest calls running now; the clock thread sleeps on `WAKE` while it is 0.
static RUNNING: Mutex<usize> = Mutex::new(0);
static WAKE: Condvar = Condvar::new();

/// Keeps the epoch clock ticking while guest code may run: hold one across every call into a
/// store armed with an epoch deadline, or its CPU limit is not enforced.
#[must_use = "the epoch clock ticks only while the guard is held"]
pub struct Ticking(());

impl Ticking {
    pub fn start() -> Ticking {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        *running += 1;
        if *running == 1 {
            WAKE.notify_one();
        }
        Ticking(())
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
    }
}

/// Blocks the clock thread until some call runs.
fn wait_for_calls() {
    let running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    let _running = WAKE.wait_while(running, |running| *running == 0).unwrap_or_else(|p| p.into_inner());
}

/// The shared engine, created (with its epoch clock thread) on first use.
pub fn engine() -> Result<Engine, String> {
    ENGINE.get_or_init(build).clone()
}

fn build() -> Result<Engine, String> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::new();
    // A Rust wasip2 component holds a few core instances (program, adapter shims) and 1 memory.
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * 4)
        .total_memories(POOL_INSTANCES * 2)
        .total_tables(POOL_INSTANCES * 4)
        .total_stacks(POOL_INSTANCES)
        .max_memory_size(MAX_MEMORY)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).map_err(|err| format!("cannot start the wasm engine: {err}"))?;
    let clock = engine.weak();
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            // A tick is a whole period after the call started: the first one is not early.
            loop {
                wait_for_calls();
                std::thread::sleep(TICK);
                let Some(engine) = clock.upgrade() else { break };
                engine.increment_epoch();
            }
        })
        .map_err(|err| format!("cannot start the epoch clock: {err}"))?;
    Ok(engine)
}
