//! Command-line interface: `serve`, `check-config`, `ctl`, `filter-test` and `dkim keygen`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::admin::AdminApi;
use crate::config::{self, Config};
use crate::context::Context;
use crate::filter_test::{Fate, FilterTest};
use crate::logging::{self, LogFormat};
use crate::preflight;
use crate::server::{Server, Shutdown};

#[derive(Parser)]
#[command(name = "sluice", version, about = "A streaming SMTP gateway with a WebAssembly filter chain")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the embedded default config when --config is absent). Before it binds
    /// any port it checks the config as check-config does, and exits 1 on a problem.
    Serve {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Stay in the foreground and log to stderr (without it, log to stdout for a service
        /// manager such as systemd/journald).
        #[arg(short = 'd')]
        foreground: bool,
        /// Verbose: debug lines from every subsystem.
        #[arg(short = 'v')]
        verbose: bool,
        /// Trace subsystems: smtp, io, filters, flow, scanner, relay, reload, admin, all
        /// (comma-separated). `sluice ctl trace` changes them at run time.
        #[arg(short = 'T', value_name = "SUBSYSTEM[,…]", default_value = "")]
        trace: String,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config file as `serve` does before it serves, and a reload before it swaps:
    /// syntax and values, every file it names, the spool and maildir directories, and each
    /// filter (loaded, linked against the contract, its [stage.config] accepted).
    ///
    /// Exit 0 if valid (with a warning on stderr for each [stage.config] key a filter does not
    /// use), 1 otherwise, with a line per problem: FILE:LINE[:COLUMN]: KEY: what is wrong.
    CheckConfig { file: PathBuf },
    /// Talk to a running gateway's admin API (stats, sessions, reload, trace).
    Ctl(crate::ctl::CtlArgs),
    /// DKIM keys.
    #[command(subcommand)]
    Dkim(DkimCommand),
    /// Run a wasm filter on a message offline and print every verdict and change.
    ///
    /// Exit codes: 0 the message would be delivered; 1 it would be refused (reject, tempfail,
    /// discard); 2 the run could not be made: the filter file is not a usable component, the
    /// filter refused its --config (a missing or bad key), the filter failed (trap, limit,
    /// malformed answer), or the message could not be read.
    FilterTest {
        /// The filter component (.wasm).
        filter: PathBuf,
        /// The message (RFC 5322; LF line endings are taken as CRLF).
        #[arg(long, value_name = "MESSAGE")]
        eml: PathBuf,
        /// A [stage.config] entry; repeat for several.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_pair)]
        config: Vec<(String, String)>,
        /// A [stage.files] entry: the filter gets PATH's bytes under NAME; repeat for several.
        #[arg(long = "file", value_name = "NAME=PATH", value_parser = parse_pair)]
        files: Vec<(String, String)>,
        /// A [stage.keys] entry: the host signs for the filter with the private key in PATH,
        /// named NAME; repeat for several.
        #[arg(long = "key", value_name = "NAME=PATH", value_parser = parse_pair)]
        keys: Vec<(String, String)>,
        /// A zone file answering the filter's DNS lookups (TXT records), so it runs offline.
        #[arg(long, value_name = "FILE")]
        zone: Option<PathBuf>,
        #[arg(long, default_value = "192.0.2.1:40000")]
        peer: std::net::SocketAddr,
        #[arg(long, default_value = "client.example")]
        helo: String,
        #[arg(long, default_value = "sender@example.org")]
        from: String,
        /// A recipient; repeat for several.
        #[arg(long, default_values_t = vec!["rcpt@example.net".to_string()])]
        to: Vec<String>,
        /// Write the message as the filter left it to this file.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Generate a signing key: writes the private key (PKCS#8 PEM, mode 0600) to --out and
    /// prints the DNS TXT record to publish, zone-file ready, on stdout.
    Keygen(crate::dkim_keygen::KeygenArgs),
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE with a non-empty KEY, got {text:?}")),
    }
}

impl Cli {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Serve { config: path, foreground, verbose, trace, log_format } => {
                logging::init(verbose, logging::parse_subsystems(&trace)?, log_format, foreground);
                let config = match &path {
                    Some(path) => config::load_file(path)?,
                    None => config::embedded_default()?,
                };
                preflight::check(&config)?;
                serve(config, path).map(|()| ExitCode::SUCCESS)
            }
            Command::CheckConfig { file } => {
                let config = config::load_file(&file)?;
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let warnings = runtime.block_on(preflight::check_all(&config))?;
                for warning in warnings {
                    eprintln!("warning: {warning}");
                }
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Command::Ctl(args) => crate::ctl::run(args),
            Command::Dkim(DkimCommand::Keygen(args)) => crate::dkim_keygen::run(args).map(|()| ExitCode::SUCCESS),
            Command::FilterTest { filter, eml, config, files, keys, zone, peer, helo, from, to, output } => {
                logging::init(false, Default::default(), LogFormat::Text, true);
                let files = files.into_iter().map(|(name, path)| (name, PathBuf::from(path))).collect();
                let keys = keys.into_iter().map(|(name, path)| (name, PathBuf::from(path))).collect();
                let test = FilterTest { filter, eml, config, files, keys, zone, peer, helo, from, to, output };
                let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                Ok(match runtime.block_on(test.run())? {
                    Fate::Delivered => ExitCode::SUCCESS,
                    Fate::Refused => ExitCode::from(1),
                })
            }
        }
    }
}

/// Threads for blocking work (spool files, maildir writes, name lookups). Tokio's default, 512,
/// lets a burst of sessions spilling to disk start hundreds of threads, each leaving allocator
/// memory behind when it exits; on a few cores more than this gains nothing.
const MAX_BLOCKING_THREADS: usize = 64;

fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .on_thread_park(crate::allocator::collect_this_thread)
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let stop = stop_signal()?;
        let token = preflight::admin_token(&config).map_err(anyhow::Error::msg)?;
        let context = Arc::new(Context::from_config(&config, path, crate::settings::machine_hostname()).await?);
        // Before anything listens: a SIGHUP sent once the port is seen must reload, not kill.
        tokio::spawn(reload_on_sighup(context.clone())?);
        crate::server::log_start(&context);
        // The admin port first: if it is taken, the start fails before any client can connect.
        let shutdown = Shutdown::default();
        let admin = match &config.admin {
            Some(admin) => Some(AdminApi::bind(admin.listen, token, context.clone(), shutdown.clone()).await?),
            None => None,
        };
        let server = Server::bind(&config, context.clone(), shutdown).await?;
        if let Some(api) = admin {
            tokio::spawn(api.run());
        }
        tokio::spawn(crate::allocator::purge_every_second());
        server.run(stop).await;
        Ok(())
    })
}

/// SIGHUP reloads the config, by the same path as the admin API's POST /reload.
fn reload_on_sighup(context: Arc<Context>) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            tracing::info!(target: "sluice::reload", "SIGHUP received: reloading the config");
            // The outcome is logged by reload itself.
            let _ = context.reload().await;
        }
    })
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
