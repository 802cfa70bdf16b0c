//! Command-line interface: `serve` and `check-config`.

use std::path::PathBuf;

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
                    None => config::parse("(embedded default)", config::EMBEDDED_DEFAULT)?,
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
        let context = Context::from_config(&config, hostname)?;
        let server = Server::bind(&config, context).await?;
        server.run(stop_signal()).await;
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

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
