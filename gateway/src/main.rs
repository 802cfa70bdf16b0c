//! The `sluice` binary: the CLI (logging is set up by the subcommands that serve).

use clap::Parser;

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
