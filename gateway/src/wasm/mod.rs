//! The wasm stage kind: filters as WebAssembly components implementing `sluice:filter`
//! (`wit/filter.wit`). A filter is compiled once at load and pre-linked (`InstancePre`); every
//! message gets a fresh instance in its own `Store` (no state leaks between messages), with a
//! memory bound, a CPU bound per call (epoch interruption that yields to tokio, so a busy filter
//! never blocks other sessions), a time budget per message, and no ambient authority: an empty
//! WASI context (no files, sockets, environment or clock beyond WASI's defaults).
//!
//! Loading checks everything that can be checked before a message: the file is a component,
//! built against this host's contract (or an earlier patch release of it: 0.2.1 and 0.2.2 only
//! added interfaces, and wasmtime links a guest's `@0.2.0` imports and exports to the host's
//! `@0.2.2`),
//! that links, and whose `validate-config` accepts the stage's configuration. The stage's
//! `[stage.files]` are read here too (`read_stage_file`), so a reload reads them anew, and a filter
//! importing a capability (`dns`) the stage is not granted is refused.

mod cache;
mod engine;
mod host;
mod keys;
mod stage;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use wasmtime::component::{Component, Linker};

use crate::chain::stage::{Interests, MessageContext, Stage, StageError, StageEvent, StageFactory};
pub use cache::{default_dir as default_cache_dir, CacheOutcome, ComponentCache};
use host::{bindings, State};
pub use host::{Provisions, StageFiles};
pub use keys::StageKeys;
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

/// The contract this host implements (`wit/filter.wit`); filters must be built against it or
/// an earlier patch release of it.
pub const CONTRACT: &str = "sluice:filter@0.2.2";
const CONTRACT_PREFIX: &str = "sluice:filter/";
/// The SDK release that builds filters for `CONTRACT`.
const SDK: &str = "sluice-filter-sdk 0.2";

/// Largest file a stage may be given in `[stage.files]`: its bytes are held in memory for the
/// life of the loaded filter and copied into every instance that asks, so a path pointing at
/// a huge file by mistake is refused instead.
pub const MAX_STAGE_FILE: u64 = 1 << 20;

/// Reads one `[stage.files]` file, refusing one larger than `MAX_STAGE_FILE` (read through a
/// bound, so a device or a growing file cannot exhaust memory either).
pub fn read_stage_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_STAGE_FILE + 1).read_to_end(&mut bytes).map_err(|err| format!("cannot read {shown}: {err}"))?;
    match bytes.len() as u64 > MAX_STAGE_FILE {
        true => Err(format!(
            "{shown} is larger than {} KiB, the most a stage file may be: check that the key names the right file",
            MAX_STAGE_FILE >> 10
        )),
        false => Ok(bytes),
    }
}

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
    /// The filter imports a capability the stage is not granted.
    #[error("the filter makes {what} (it imports {interface}), which this stage is not granted: add capabilities = [\"{capability}\"] if it should")]
    NotGranted { capability: &'static str, what: &'static str, interface: &'static str },
}

/// The capabilities a filter can import, each only with its grant: (capability, interface, what).
const CAPABILITIES: [(&str, &str, &str); 1] = [("dns", "sluice:filter/dns", "DNS lookups")];

/// Where a filter's refusal of its configuration points: its key is a `[stage.config]` key, or
/// `files.NAME` / `keys.NAME` for a `[stage.files]` / `[stage.keys]` entry (as the contract
/// documents), or empty for the configuration as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedAt<'a> {
    Config,
    ConfigKey(&'a str),
    File(&'a str),
    Key(&'a str),
}

impl RefusedAt<'_> {
    pub fn of(key: &str) -> RefusedAt<'_> {
        if let Some(name) = key.strip_prefix("files.") {
            return RefusedAt::File(name);
        }
        if let Some(name) = key.strip_prefix("keys.") {
            return RefusedAt::Key(name);
        }
        match key.is_empty() {
            true => RefusedAt::Config,
            false => RefusedAt::ConfigKey(key),
        }
    }

    /// The dotted config key under `stage[INDEX]` (for `Config::locate`).
    pub fn dotted(self, index: usize) -> String {
        match self {
            RefusedAt::Config => format!("stage[{index}].config"),
            RefusedAt::ConfigKey(key) => format!("stage[{index}].config.{key}"),
            RefusedAt::File(name) => format!("stage[{index}].files.{name}"),
            RefusedAt::Key(name) => format!("stage[{index}].keys.{name}"),
        }
    }
}

fn refusal(key: &str, message: &str) -> String {
    match RefusedAt::of(key) {
        RefusedAt::Config => format!("[stage.config]: {message}"),
        RefusedAt::ConfigKey(key) => format!("[stage.config] {key}: {message}"),
        RefusedAt::File(name) => format!("[stage.files] {name}: {message}"),
        RefusedAt::Key(name) => format!("[stage.keys] {name}: {message}"),
    }
}

/// Reads a stage's named files (`[stage.files]` or `[stage.keys]`), each with
/// `read_stage_file`; the first that cannot be read, or a name given twice, is `(name, why)`.
pub fn read_stage_files(entries: impl IntoIterator<Item = (String, PathBuf)>) -> Result<StageFiles, (String, String)> {
    let mut read = StageFiles::new();
    for (name, path) in entries {
        let bytes = match read_stage_file(&path) {
            Ok(bytes) => bytes,
            Err(why) => return Err((name, why)),
        };
        if read.contains_key(&name) {
            return Err((name, "given twice; name each entry once".into()));
        }
        read.insert(name, bytes);
    }
    Ok(read)
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

/// Whether a filter built against `sluice:filter@{version}` runs in this host: the same
/// `major.minor` as `CONTRACT` and a patch no later than ours (patch releases only add).
fn compatible(version: &str) -> bool {
    let ours = CONTRACT.split_once('@').map_or("", |(_, v)| v);
    match (version.rsplit_once('.'), ours.rsplit_once('.')) {
        (Some((series, patch)), Some((our_series, our_patch))) => {
            series == our_series
                && patch.parse::<u32>().ok().zip(our_patch.parse::<u32>().ok()).is_some_and(|(p, o)| p <= o)
        }
        _ => false,
    }
}

/// The `sluice:filter` version a component was built against, when this host cannot run it;
/// `Ok` when it imports or exports only `compatible` versions of the contract's interfaces.
fn check_contract<'a>(imports: impl Iterator<Item = &'a str>, exports: &[&'a str]) -> Result<(), String> {
    let foreign = imports
        .chain(exports.iter().copied())
        .filter_map(|name| name.strip_prefix(CONTRACT_PREFIX))
        .filter_map(|rest| rest.split_once('@'))
        .map(|(_, version)| version)
        .find(|version| !compatible(version));
    if let Some(version) = foreign {
        return Err(format!("sluice:filter@{version}"));
    }
    Ok(())
}

/// Whether the component exports the contract's `handler` (of a `compatible` version).
fn exports_handler(exports: &[&str]) -> bool {
    let handler = format!("{CONTRACT_PREFIX}handler@");
    exports.iter().filter_map(|name| name.strip_prefix(handler.as_str())).any(compatible)
}

fn granted(provisions: &Provisions, capability: &str) -> bool {
    match capability {
        "dns" => provisions.dns.is_some(),
        _ => false,
    }
}

/// Whether `imports` has `interface` (`sluice:filter/dns`) at any version.
fn imports_interface(imports: &[&str], interface: &str) -> bool {
    imports.iter().any(|name| name.strip_prefix(interface).is_some_and(|rest| rest.starts_with('@')))
}

/// A loaded filter: compiled, linked, ready to instantiate per message.
pub struct WasmFilter {
    stage: Arc<str>,
    pre: bindings::FilterWithDnsPre<State>,
    provisions: Arc<Provisions>,
    /// Whether the component imports `raw`: only then is each message's header section copied
    /// into its store.
    reads_raw: bool,
    limits: WasmLimits,
    interests: Interests,
    /// `[stage.config]` keys the filter never read when it checked its configuration.
    unused_config_keys: Vec<String>,
    /// Time to compile the component (or take it from the cache) at load, for the operator's log.
    pub compile_time: Duration,
    /// Whether the compiled component came from the cache.
    pub cache_outcome: CacheOutcome,
    /// Where per-message instantiation times go (the gateway's metrics).
    instantiation: Option<Histogram>,
    /// Where each message's instance's peak linear memory goes.
    memory_peak: Option<Histogram>,
}

impl WasmFilter {
    /// Compiles and links the component, checks it imports no capability it is not granted, has
    /// it check its configuration (and its `files`, the stage's `[stage.files]` already read),
    /// then asks it which events it wants.
    pub async fn load(
        stage: &str,
        path: &Path,
        provisions: Provisions,
        limits: WasmLimits,
        cache: Option<&ComponentCache>,
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
        let cache = cache.cloned();
        let (component, cache_outcome) = tokio::task::spawn_blocking(move || match cache {
            Some(cache) => cache.load(&compiling, &bytes),
            None => Component::new(&compiling, &bytes).map(|component| (component, CacheOutcome::Off)),
        })
        .await
        .map_err(|e| invalid(format!("compilation task failed: {e}")))?
        .map_err(|e| invalid(format!("{e:#}")))?;
        let compile_time = started.elapsed();
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(&engine).map(|(name, _)| name).collect();
        check_contract(ty.imports(&engine).map(|(name, _)| name), &exports)
            .map_err(|found| LoadError::OldContract { path: shown.clone(), found })?;
        if !exports_handler(&exports) {
            return Err(invalid(format!("it does not export {CONTRACT_PREFIX}handler: is it a Sluice filter?")));
        }
        let imports: Vec<&str> = ty.imports(&engine).map(|(name, _)| name).collect();
        if let Some(&(capability, interface, what)) = CAPABILITIES.iter().find(|(capability, interface, _)| {
            !granted(&provisions, capability) && imports_interface(&imports, interface)
        }) {
            return Err(LoadError::NotGranted { capability, what, interface });
        }
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| invalid(format!("{e:#}")))?;
        bindings::FilterWithDns::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut linker, |state| {
            state
        })
        .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::FilterWithDnsPre::new)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let mut filter = WasmFilter {
            stage: Arc::from(stage),
            pre,
            provisions: Arc::new(provisions),
            reads_raw: imports_interface(&imports, "sluice:filter/raw"),
            limits: WasmLimits { memory: limits.memory.min(engine::MAX_MEMORY), ..limits },
            interests: Interests::ALL,
            unused_config_keys: Vec::new(),
            compile_time,
            cache_outcome,
            instantiation: None,
            memory_peak: None,
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

    /// Records each message's instance's peak linear memory into `histogram`.
    pub fn observe_memory(&mut self, histogram: Histogram) {
        self.memory_peak = Some(histogram);
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
        let ours = ["sluice:filter/handler@0.2.2"];
        let imports = ["wasi:io/streams@0.2.6", "sluice:filter/host@0.2.2", "sluice:filter/files@0.2.2"];
        assert_eq!(check_contract(imports.into_iter(), &ours), Ok(()));
        let old = check_contract(["sluice:filter/host@0.1.0"].into_iter(), &["sluice:filter/handler@0.1.0"]);
        assert_eq!(old, Err("sluice:filter@0.1.0".to_string()));
        assert!(imports_interface(&["sluice:filter/dns@0.2.2"], "sluice:filter/dns"));
        assert!(!imports_interface(&["sluice:filter/dnssec@0.2.2", "sluice:filter/host@0.2.2"], "sluice:filter/dns"));
        let newer = check_contract(["sluice:filter/host@0.2.3"].into_iter(), &["sluice:filter/handler@0.2.3"]);
        assert_eq!(newer, Err("sluice:filter@0.2.3".to_string()));
    }

    #[test]
    fn an_earlier_patch_release_still_loads() {
        let earlier = ["sluice:filter/handler@0.2.0"];
        assert_eq!(check_contract(["sluice:filter/host@0.2.0"].into_iter(), &earlier), Ok(()));
        assert!(exports_handler(&earlier));
        assert!(exports_handler(&["sluice:filter/handler@0.2.2"]));
        assert!(!exports_handler(&["sluice:filter/handler@0.3.0", "sluice:filter/handler@0.1.9"]));
        assert!(!exports_handler(&["sluice:filter/host@0.2.2"]));
    }

    #[test]
    fn a_stage_file_is_read_up_to_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"key bytes").unwrap();
        assert_eq!(read_stage_file(&small).unwrap(), b"key bytes");
        let exact = dir.path().join("exact");
        std::fs::write(&exact, vec![7u8; MAX_STAGE_FILE as usize]).unwrap();
        assert_eq!(read_stage_file(&exact).unwrap().len() as u64, MAX_STAGE_FILE);
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![7u8; MAX_STAGE_FILE as usize + 1]).unwrap();
        let err = read_stage_file(&huge).unwrap_err();
        assert!(err.contains("huge is larger than 1024 KiB"), "{err}");
        // A device reports no size: the bound is on what is read.
        let err = read_stage_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.contains("larger than 1024 KiB"), "{err}");
    }
}
