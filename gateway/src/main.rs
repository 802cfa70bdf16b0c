//! The `sluice` binary: logging set-up, then the CLI.

use std::io::IsTerminal;

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match sluice::cli::Cli::parse().run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sluice: {err:#}");
            // 1 is "refused" for filter-test; errors of any command are 2 there, 1 elsewhere.
            std::process::ExitCode::from(if std::env::args().nth(1).as_deref() == Some("filter-test") { 2 } else { 1 })
        }
    }
}
