//! Logging set-up and the trace subsystems an operator switches on (`-T flow,relay`, or at run
//! time with `sluice ctl trace flow on`), mapped onto `tracing` targets. `RUST_LOG` still works:
//! it replaces the base filter. Message bodies are never logged; the `io` subsystem logs sizes.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// The target of the `session{id=… peer=…}` span. It is always enabled, whatever RUST_LOG or the
/// traced subsystems say, so that every line of a session carries it: a span is filtered by its
/// own target, and filters such as `sluice::smtp=trace` would otherwise drop it.
pub const SESSION_SPAN: &str = "sluice::session";

/// Subsystems and the targets they switch to `trace`.
pub const SUBSYSTEMS: &[(&str, &[&str])] = &[
    ("smtp", &["sluice::smtp", "sluice::server"]),
    ("io", &["sluice::io"]),
    ("filters", &["sluice::filters", "sluice::chain"]),
    ("flow", &["sluice::flow"]),
    ("scanner", &["sluice::scanner"]),
    ("relay", &["sluice::relay"]),
    ("reload", &["sluice::reload"]),
    ("admin", &["sluice::admin"]),
    ("all", &["sluice"]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    #[error("unknown trace subsystem {0:?}; known: smtp, io, filters, flow, scanner, relay, reload, admin, all")]
    Unknown(String),
    #[error("logging is not set up for run-time changes")]
    NotInitialised,
    #[error("cannot apply the new filter: {0}")]
    Apply(String),
}

/// The filter's parts: the base (RUST_LOG or the verbosity) and the subsystems traced.
struct Tracing {
    base: String,
    on: BTreeSet<String>,
    handle: reload::Handle<EnvFilter, Registry>,
}

static TRACING: OnceLock<Mutex<Tracing>> = OnceLock::new();

fn check(subsystem: &str) -> Result<(), TraceError> {
    match SUBSYSTEMS.iter().any(|(name, _)| *name == subsystem) {
        true => Ok(()),
        false => Err(TraceError::Unknown(subsystem.to_string())),
    }
}

/// The filter text for a base and a set of traced subsystems.
pub fn directives(base: &str, on: &BTreeSet<String>) -> String {
    let mut text = format!("{base},{SESSION_SPAN}=trace");
    for (name, targets) in SUBSYSTEMS {
        if on.contains(*name) {
            for target in *targets {
                text.push_str(&format!(",{target}=trace"));
            }
        }
    }
    text
}

/// Parses `-T smtp,flow` into subsystem names.
pub fn parse_subsystems(list: &str) -> Result<BTreeSet<String>, TraceError> {
    let mut on = BTreeSet::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        check(name)?;
        on.insert(name.to_string());
    }
    Ok(on)
}

/// Installs the global subscriber. `foreground` (-d): human lines on stderr; otherwise lines
/// for a service manager on stdout (no colours; journald adds its own timestamps).
pub fn init(verbose: bool, subsystems: BTreeSet<String>, format: LogFormat, foreground: bool) {
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| if verbose { "info,sluice=debug" } else { "info" }.into());
    let filter = EnvFilter::try_new(directives(&base, &subsystems)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = foreground && std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let result = match (format, foreground) {
        (LogFormat::Json, true) => registry.with(fmt::layer().json().with_writer(std::io::stderr)).try_init(),
        (LogFormat::Json, false) => registry.with(fmt::layer().json().with_writer(std::io::stdout)).try_init(),
        (LogFormat::Text, true) => registry.with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).try_init(),
        (LogFormat::Text, false) => {
            registry.with(fmt::layer().with_ansi(false).without_time().with_writer(std::io::stdout)).try_init()
        }
    };
    if result.is_ok() {
        let _ = TRACING.set(Mutex::new(Tracing { base, on: subsystems, handle }));
    }
}

/// Switches tracing of a subsystem on or off at run time; returns the new filter.
pub fn set_trace(subsystem: &str, enabled: bool) -> Result<String, TraceError> {
    check(subsystem)?;
    let tracing = TRACING.get().ok_or(TraceError::NotInitialised)?;
    let mut tracing = tracing.lock().unwrap_or_else(|p| p.into_inner());
    match enabled {
        true => tracing.on.insert(subsystem.to_string()),
        false => tracing.on.remove(subsystem),
    };
    let text = directives(&tracing.base, &tracing.on);
    let filter = EnvFilter::try_new(&text).map_err(|e| TraceError::Apply(e.to_string()))?;
    tracing.handle.reload(filter).map_err(|e| TraceError::Apply(e.to_string()))?;
    tracing::info!(target: "sluice::admin", subsystem, enabled, filter = %text, "trace changed");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsystems_map_to_targets() {
        let on = parse_subsystems("flow, relay").unwrap();
        let span = "sluice::session=trace";
        assert_eq!(directives("info", &on), format!("info,{span},sluice::flow=trace,sluice::relay=trace"));
        assert_eq!(parse_subsystems("flow,bogus"), Err(TraceError::Unknown("bogus".into())));
        assert_eq!(directives("warn", &parse_subsystems("all").unwrap()), format!("warn,{span},sluice=trace"));
    }
}
