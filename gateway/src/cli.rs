//! Command-line interface: `serve` and `check-config`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::server::{Context, Server};

#[derive(Parser)]
#[command(name = "sluice", version, about = "A streaming SMTP gateway with a WebAssembly filter chain")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the embedded default config when --config is absent).
    Serve {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a config file: exit 0 if valid, 1 with FILE:LINE:COLUMN: key: error otherwise.
    CheckConfig { file: PathBuf },
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve { config } => {
                let config = match &config {
                    Some(path) => config::load_file(path)?,
                    None => config::embedded_default()?,
                };
                serve(config)
            }
            Command::CheckConfig { file } => {
                config::load_file(&file)?;
                println!("{}: ok", file.display());
                Ok(())
            }
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let hostname = config.server.hostname.clone().unwrap_or_else(machine_hostname);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async {
        let stop = stop_signal()?;
        let context = Context::from_config(&config, hostname, Arc::default()).await?;
        let server = Server::bind(&config, context).await?;
        server.run(stop).await;
        Ok(())
    })
}

fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Registers for SIGTERM and SIGINT now (before any session can start, so an early signal is
/// never the default "terminate at once"); the future resolves when one arrives.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
