//! The process's memory allocator: mimalloc, kept giving memory back after a burst of mail.
//!
//! glibc's malloc keeps what a burst freed: allocations spread over per-thread arenas that are
//! only trimmed from the top, and a large free raises its mmap threshold so later large buffers
//! come from those arenas too. After 200 concurrent 2 MiB messages RSS stayed ~180–210 MiB above
//! its baseline for good (`bench/memory-after-load`). mimalloc (maintained by Microsoft; one C file,
//! built by `cc`) returns freed pages to the OS, but lazily: from inside later allocator calls of
//! the thread whose heap holds them, and only once a purge delay (1 s) has passed — a gateway
//! that goes idle makes no such calls. So each runtime worker collects its heap when it runs out
//! of work (`collect_this_thread`), and `purge_every_second` purges what is due, however idle.
//! The heap is kept out of transparent huge pages (crate feature `no_thp`): purging part of a
//! huge page frees nothing until the kernel splits it under memory pressure.

use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands the calling thread's free pages back to mimalloc's shared arenas (to be purged there).
/// Tokio calls it when a worker thread parks: between bursts of work, and when it goes idle.
pub fn collect_this_thread() {
    // SAFETY: mi_collect has no preconditions; it works on mimalloc's own structures only.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// Purges freed memory back to the OS once a second, delay or not, so an idle gateway's RSS
/// returns near its baseline within about a second of its last message.
pub async fn purge_every_second() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        // SAFETY: as above; `true` also purges pages whose purge delay has not passed yet.
        unsafe { libmimalloc_sys::mi_collect(true) }
    }
}
