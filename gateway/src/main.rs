//! The `sluice` binary: the CLI (logging is set up by the subcommands that serve).

use clap::Parser;

/// mimalloc instead of glibc's malloc. Under load glibc spreads allocations over per-thread arenas
/// and raises its mmap threshold after large frees, so memory freed after a burst of mail stays in
/// the process for good (~140 MiB after 200 concurrent 2 MiB messages, `bench/memory-after-load`);
/// mimalloc purges freed pages back to the OS shortly after they are freed. Maintained by
/// Microsoft, one C file built by `cc`, no configuration needed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match sluice::cli::Cli::parse().run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sluice: {err:#}");
            // 1 is "refused" for filter-test; errors of any command are 2 there, 1 elsewhere.
            std::process::ExitCode::from(if std::env::args().nth(1).as_deref() == Some("filter-test") { 2 } else { 1 })
        }
    }
}
