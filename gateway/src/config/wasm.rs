//! `[wasm]`: settings of the wasm host shared by every wasm stage (the compiled-component cache).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasmConfig {
    /// Keep compiled components on disk, so a start or reload skips compiling an unchanged filter.
    pub cache: bool,
    /// Where (relative to the config file); default `$XDG_CACHE_HOME/sluice/components` or
    /// `~/.cache/sluice/components`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig { cache: true, cache_dir: None }
    }
}
