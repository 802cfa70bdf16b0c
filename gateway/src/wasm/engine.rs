//! The one wasmtime `Engine` of the process: epoch interruption (for CPU bounds that yield to
//! tokio), the pooling allocator (cheap fresh instances per message), and the epoch clock, which
//! ticks while guest code runs (a `Ticking` guard is alive) and for a moment after: an idle
//! gateway never wakes for it, a busy one does not wake it for every call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// Guest calls running now.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
/// The clock thread is parked on `WAKE` (no call for `LINGER` ticks): a starting call wakes it.
static PARKED: AtomicBool = AtomicBool::new(false);
static PARK: Mutex<()> = Mutex::new(());
static WAKE: Condvar = Condvar::new();
/// Ticks the clock goes on after the last call ended before it parks. Under load calls start and
/// end thousands of times a second; parking and waking the clock thread on each would cost a
/// futex wake and two context switches per call (most of a wasm stage's cost per message at
/// 4 KiB). Idle for this long, the gateway stops waking for the clock at all.
const LINGER: u32 = 100;

/// Keeps the epoch clock ticking while guest code may run: hold one across every call into a
/// store armed with an epoch deadline, or its CPU limit is not enforced.
#[must_use = "the epoch clock ticks only while the guard is held"]
pub struct Ticking(());

impl Ticking {
    pub fn start() -> Ticking {
        // SeqCst on both sides (here: RUNNING then PARKED; the clock: PARKED then RUNNING) means
        // at least one of them sees the other's write: the clock never parks past a running call.
        if RUNNING.fetch_add(1, Ordering::SeqCst) == 0 && PARKED.load(Ordering::SeqCst) {
            let _park = PARK.lock().unwrap_or_else(|p| p.into_inner());
            WAKE.notify_one();
        }
        Ticking(())
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Blocks the clock thread until some call runs.
fn park() {
    let park = PARK.lock().unwrap_or_else(|p| p.into_inner());
    PARKED.store(true, Ordering::SeqCst);
    let _park = WAKE.wait_while(park, |_| RUNNING.load(Ordering::SeqCst) == 0).unwrap_or_else(|p| p.into_inner());
    PARKED.store(false, Ordering::SeqCst);
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
            // A call's first tick may come less than a period after it started (the clock runs
            // on its own while calls come and go): CPU limits are exact to one tick.
            let mut idle = 0;
            loop {
                if idle >= LINGER {
                    park();
                    idle = 0;
                }
                std::thread::sleep(TICK);
                let Some(engine) = clock.upgrade() else { break };
                engine.increment_epoch();
                idle = if RUNNING.load(Ordering::SeqCst) == 0 { idle + 1 } else { 0 };
            }
        })
        .map_err(|err| format!("cannot start the epoch clock: {err}"))?;
    Ok(engine)
}
