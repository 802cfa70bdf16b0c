//! The wasm stage kind: filters as WebAssembly components implementing `sluice:filter`
//! (`wit/filter.wit`). A filter is compiled once at load and pre-linked (`InstancePre`); every
//! message gets a fresh instance in its own `Store` (no state leaks between messages), with a
//! memory bound, a CPU bound per call (epoch interruption that yields to tokio, so a busy filter
//! never blocks other sessions), a time budget per message, and no ambient authority: an empty
//! WASI context (no files, sockets, environment or clock beyond WASI's defaults).
//!
//! Loading checks everything that can be checked before a message: the file is a component,
//! built against this host's contract, that links, and whose `validate-config` accepts the
//! stage's configuration.

mod engine;
mod host;
mod stage;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use wasmtime::component::{Component, Linker};

use crate::chain::stage::{Interests, MessageContext, Stage, StageError, StageEvent, StageFactory};
use host::{bindings, State};
pub use stage::WasmStage;

/// Limits of one wasm stage, from its config.
#[derive(Debug, Clone, Copy)]
pub struct WasmLimits {
    pub memory: usize,
    pub cpu_per_call: Duration,
    pub per_message: Duration,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits { memory: 64 << 20, cpu_per_call: Duration::from_secs(1), per_message: Duration::from_secs(60) }
    }
}

/// The contract this host implements (`wit/filter.wit`); filters must be built against it.
pub const CONTRACT: &str = "sluice:filter@0.2.0";
const CONTRACT_PREFIX: &str = "sluice:filter/";
/// The SDK release that builds filters for `CONTRACT`.
const SDK: &str = "sluice-filter-sdk 0.2";

/// Why a filter cannot be loaded; each says what to do about it, in one line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Engine(String),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a WebAssembly component ({found}): build the filter for the wasm32-wasip2 target, which makes one")]
    NotAComponent { path: String, found: &'static str },
    #[error("{path} was built against {found}, but this Sluice needs {CONTRACT}: rebuild it against the current SDK ({SDK})")]
    OldContract { path: String, found: String },
    #[error("{path} is not a usable {CONTRACT} filter: {reason}")]
    Invalid { path: String, reason: String },
    /// The filter's `validate-config` refused the stage's configuration.
    #[error("{}", refusal(key, message))]
    Refused { key: String, message: String },
}

fn refusal(key: &str, message: &str) -> String {
    match key.is_empty() {
        true => format!("[stage.config]: {message}"),
        false => format!("[stage.config] {key}: {message}"),
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, PartialEq, Eq)]
enum FileKind {
    Component,
    CoreModule,
    NotWasm,
}

fn file_kind(bytes: &[u8]) -> FileKind {
    // The preamble: magic, then a version and layer (0x0d 0 1 0 for components, 1 0 0 0 for
    // core modules).
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => FileKind::Component,
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => FileKind::CoreModule,
        _ => FileKind::NotWasm,
    }
}

/// The `sluice:filter` version a component was built against, when it is not ours; `Ok` when
/// it imports or exports only `CONTRACT`'s interfaces and exports the handler.
fn check_contract<'a>(imports: impl Iterator<Item = &'a str>, exports: &[&'a str]) -> Result<(), String> {
    let foreign = imports
        .chain(exports.iter().copied())
        .filter_map(|name| name.strip_prefix(CONTRACT_PREFIX))
        .filter_map(|rest| rest.split_once('@'))
        .map(|(_, version)| version)
        .find(|version| Some(*version) != CONTRACT.split_once('@').map(|(_, v)| v));
    if let Some(version) = foreign {
        return Err(format!("sluice:filter@{version}"));
    }
    Ok(())
}

/// A loaded filter: compiled, linked, ready to instantiate per message.
pub struct WasmFilter {
    stage: Arc<str>,
    pre: bindings::FilterPre<State>,
    config: Arc<Vec<(String, String)>>,
    limits: WasmLimits,
    interests: Interests,
    /// `[stage.config]` keys the filter never read when it checked its configuration.
    unused_config_keys: Vec<String>,
    /// Time to compile the component at load, for the operator's log.
    pub compile_time: Duration,
    /// Where per-message instantiation times go (the gateway's metrics).
    instantiation: Option<Histogram>,
}

impl WasmFilter {
    /// Compiles and links the component, has it check its configuration, then asks it which
    /// events it wants.
    pub async fn load(
        stage: &str,
        path: &Path,
        config: Vec<(String, String)>,
        limits: WasmLimits,
    ) -> Result<WasmFilter, LoadError> {
        let engine = engine::engine().map_err(LoadError::Engine)?;
        let shown = path.display().to_string();
        let invalid = |reason: String| LoadError::Invalid { path: shown.clone(), reason };
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: shown.clone(), source })?;
        let found = match file_kind(&bytes) {
            FileKind::Component => None,
            FileKind::CoreModule => Some("it is a core wasm module"),
            FileKind::NotWasm => Some("it is not a wasm file at all"),
        };
        if let Some(found) = found {
            return Err(LoadError::NotAComponent { path: shown, found });
        }
        let started = Instant::now();
        // Compiling is CPU work: keep it off the async workers that serve SMTP sessions.
        let compiling = engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&compiling, &bytes))
            .await
            .map_err(|e| invalid(format!("compilation task failed: {e}")))?
            .map_err(|e| invalid(format!("{e:#}")))?;
        let compile_time = started.elapsed();
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(&engine).map(|(name, _)| name).collect();
        check_contract(ty.imports(&engine).map(|(name, _)| name), &exports)
            .map_err(|found| LoadError::OldContract { path: shown.clone(), found })?;
        let handler = format!("{CONTRACT_PREFIX}handler@{}", CONTRACT.split_once('@').map_or("", |(_, v)| v));
        if !exports.contains(&handler.as_str()) {
            return Err(invalid(format!("it does not export {handler}: is it a Sluice filter?")));
        }
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| invalid(format!("{e:#}")))?;
        bindings::Filter::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut linker, |state| state)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::FilterPre::new)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let mut filter = WasmFilter {
            stage: Arc::from(stage),
            pre,
            config: Arc::new(config),
            limits: WasmLimits { memory: limits.memory.min(engine::MAX_MEMORY), ..limits },
            interests: Interests::ALL,
            unused_config_keys: Vec::new(),
            compile_time,
            instantiation: None,
        };
        let mut checking =
            stage::Instance::new(&filter).await.map_err(|e| invalid(format!("cannot instantiate: {e}")))?;
        match checking.validate_config().await.map_err(|e| invalid(format!("validate-config failed: {e}")))? {
            Ok(report) => filter.unused_config_keys = report.unused_keys,
            Err(problem) => return Err(LoadError::Refused { key: problem.key, message: problem.message }),
        }
        filter.interests = filter.ask_interests().await.map_err(|e| invalid(format!("wants() failed: {e}")))?;
        Ok(filter)
    }

    /// `[stage.config]` keys the filter never read: unknown or misspelt keys.
    pub fn unused_config_keys(&self) -> &[String] {
        &self.unused_config_keys
    }

    /// Calls `wants` once in a throwaway instance.
    async fn ask_interests(&self) -> Result<Interests, StageError> {
        let mut instance = stage::Instance::new(self).await?;
        let wants = instance.wants().await?;
        use bindings::exports::sluice::filter::handler::Interests as Wit;
        let table = [
            (Wit::CONNECT, StageEvent::Connect),
            (Wit::HELO, StageEvent::Helo),
            (Wit::MAIL_FROM, StageEvent::Mail),
            (Wit::RCPT_TO, StageEvent::Rcpt),
            (Wit::HEADERS, StageEvent::Headers),
            (Wit::BODY, StageEvent::Body),
            (Wit::END, StageEvent::End),
        ];
        let events: Vec<StageEvent> = table.iter().filter(|(flag, _)| wants.contains(*flag)).map(|(_, e)| *e).collect();
        Ok(Interests::of(&events))
    }

    pub fn interests(&self) -> Interests {
        self.interests
    }

    /// Records each message's instantiation time into `histogram`.
    pub fn observe_instantiation(&mut self, histogram: Histogram) {
        self.instantiation = Some(histogram);
    }
}

impl StageFactory for Arc<WasmFilter> {
    fn instantiate(&self, _context: &MessageContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(WasmStage::new(self.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_is_the_wit_files_package() {
        let wit = include_str!("../../../wit/filter.wit");
        assert!(wit.contains(&format!("\npackage {CONTRACT};\n")), "wit/filter.wit declares another package");
    }

    #[test]
    fn file_kinds_from_the_preamble() {
        assert_eq!(file_kind(b"\0asm\x0d\0\x01\0rest"), FileKind::Component);
        assert_eq!(file_kind(b"\0asm\x01\0\0\0"), FileKind::CoreModule);
        assert_eq!(file_kind(b"hello, I am a text file\n"), FileKind::NotWasm);
        assert_eq!(file_kind(b"\0asm"), FileKind::NotWasm);
    }

    #[test]
    fn an_old_contract_is_named() {
        let ours = ["sluice:filter/handler@0.2.0"];
        assert_eq!(check_contract(["wasi:io/streams@0.2.6", "sluice:filter/host@0.2.0"].into_iter(), &ours), Ok(()));
        let old = check_contract(["sluice:filter/host@0.1.0"].into_iter(), &["sluice:filter/handler@0.1.0"]);
        assert_eq!(old, Err("sluice:filter@0.1.0".to_string()));
    }
}
