//! The compiled-component cache (`[wasm] cache_dir`): a filter compiled once is kept on disk as
//! wasmtime's own serialization, so a start or reload with the same component skips Cranelift
//! (seconds for a Python or JavaScript component). An entry is named by its key — SHA-256 of the
//! component's bytes, the engine's compatibility hash (wasmtime version and every compilation
//! setting) and this format's version — and holds that key again, the SHA-256 and length of the
//! serialized component, then the serialization. Anything that does not check out (truncated,
//! corrupt, another key, refused by wasmtime) is compiled anew and the entry rewritten; it is
//! never handed to wasmtime unchecked.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

const MAGIC: &[u8; 13] = b"SLUICE-CWASM\x01";
const HEADER: usize = MAGIC.len() + 32 + 32 + 8;
/// Entries kept; the least recently written beyond it are removed when one is written.
const MAX_ENTRIES: usize = 64;

/// How a load went, for the `filter loaded` log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// No cache configured (or it could not be used).
    Off,
    Hit,
    Miss,
    /// An entry was there but unusable: compiled anew, entry rewritten.
    Rebuilt(String),
}

impl CacheOutcome {
    pub fn as_str(&self) -> &str {
        match self {
            CacheOutcome::Off => "off",
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Rebuilt(_) => "rebuilt",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the component cache {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("the component cache {path} is writable by other users ({mode:o}): make it private (chmod 700) or set [wasm] cache = false")]
    NotPrivate { path: String, mode: u32 },
    #[error("the component cache {path} belongs to another user: give it to the user sluice runs as or set [wasm] cache_dir")]
    NotOurs { path: String },
}

/// A cache directory, private to the user sluice runs as.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

/// The default directory: `$XDG_CACHE_HOME/sluice/components`, else `~/.cache/sluice/components`.
pub fn default_dir() -> Option<PathBuf> {
    let base =
        std::env::var_os("XDG_CACHE_HOME").filter(|dir| Path::new(dir).is_absolute()).map(PathBuf::from).or_else(
            || std::env::var_os("HOME").filter(|home| !home.is_empty()).map(|home| Path::new(&home).join(".cache")),
        )?;
    Some(base.join("sluice/components"))
}

impl ComponentCache {
    /// Opens (creating, mode 0700) `dir`. Refuses a directory other users could write to or that
    /// is not ours: an entry there is code the gateway runs.
    pub fn open(dir: &Path) -> Result<ComponentCache, CacheError> {
        let shown = dir.display().to_string();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CacheError::Create { path: shown.clone(), source })?;
        let meta = std::fs::metadata(dir).map_err(|source| CacheError::Create { path: shown.clone(), source })?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        if meta.uid() != unsafe { libc::geteuid() } {
            return Err(CacheError::NotOurs { path: shown });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(CacheError::NotPrivate { path: shown, mode });
        }
        Ok(ComponentCache { dir: dir.to_path_buf() })
    }

    /// The component for `bytes`: deserialized from a checked entry, or compiled (and stored).
    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        let key = key(engine, bytes);
        let path = self.dir.join(format!("{}.cwasm", hex(&key)));
        let outcome = match std::fs::read(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => CacheOutcome::Miss,
            Err(err) => CacheOutcome::Rebuilt(format!("unreadable: {err}")),
            Ok(entry) => match checked(&entry, &key) {
                Err(why) => CacheOutcome::Rebuilt(why),
                // SAFETY: `checked` proved these are the exact bytes `Component::serialize` wrote
                // under this key: the SHA-256 and length stored with them match, and the key —
                // which covers the component, the engine's settings and wasmtime's version — is
                // the one asked for. Only the user sluice runs as can write the directory (`open`),
                // so the entry is sluice's own output, which is what `deserialize` requires.
                // wasmtime still checks its header and refuses other versions or settings.
                Ok(serialized) => match unsafe { Component::deserialize(engine, serialized) } {
                    Ok(component) => return Ok((component, CacheOutcome::Hit)),
                    Err(err) => CacheOutcome::Rebuilt(format!("refused by wasmtime: {err}")),
                },
            },
        };
        let component = Component::new(engine, bytes)?;
        if let Err(err) = self.store(&path, &key, &component.serialize()?) {
            tracing::warn!(target: "sluice::filters", path = %path.display(), "cannot write the component cache: {err}");
        }
        Ok((component, outcome))
    }

    /// Writes an entry atomically (a temporary file renamed into place), then prunes.
    fn store(&self, path: &Path, key: &[u8; 32], serialized: &[u8]) -> std::io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(MAGIC)?;
        file.write_all(key)?;
        file.write_all(&Sha256::digest(serialized))?;
        file.write_all(&(serialized.len() as u64).to_le_bytes())?;
        file.write_all(serialized)?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|err| err.error)?;
        self.prune();
        Ok(())
    }

    /// Removes the oldest entries beyond `MAX_ENTRIES` (components no longer loaded).
    fn prune(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = dir
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if entries.len() <= MAX_ENTRIES {
            return;
        }
        entries.sort();
        for (_, path) in &entries[..entries.len() - MAX_ENTRIES] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The serialization in `entry` if its magic, key, length and SHA-256 check out.
fn checked<'a>(entry: &'a [u8], key: &[u8; 32]) -> Result<&'a [u8], String> {
    if entry.len() < HEADER || &entry[..MAGIC.len()] != MAGIC {
        return Err("not a Sluice cache entry (or truncated)".into());
    }
    let (stored_key, rest) = entry[MAGIC.len()..].split_at(32);
    let (digest, rest) = rest.split_at(32);
    let (length, serialized) = rest.split_at(8);
    if stored_key != key {
        return Err("made for another component or engine".into());
    }
    if u64::from_le_bytes(length.try_into().expect("8 bytes")) != serialized.len() as u64 {
        return Err("truncated".into());
    }
    if Sha256::digest(serialized).as_slice() != digest {
        return Err("corrupt (checksum mismatch)".into());
    }
    Ok(serialized)
}

/// The entry key: the component, the engine's compatibility hash, the format.
fn key(engine: &Engine, bytes: &[u8]) -> [u8; 32] {
    struct Feed(Sha256);
    impl Hasher for Feed {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut feed = Feed(Sha256::new());
    feed.0.update(MAGIC);
    feed.0.update(Sha256::digest(bytes));
    engine.precompile_compatibility_hash().hash(&mut feed);
    feed.0.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny component: an empty one is enough for the cache (no filter contract needed).
    fn component_bytes() -> Vec<u8> {
        wasm_encoder::Component::new().finish()
    }

    fn entry_path(cache: &ComponentCache) -> PathBuf {
        let entries: Vec<PathBuf> = std::fs::read_dir(&cache.dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries[0].clone()
    }

    #[test]
    fn a_miss_is_stored_and_then_hit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(&dir.path().join("c")).unwrap();
        let engine = Engine::default();
        let bytes = component_bytes();
        assert_eq!(cache.load(&engine, &bytes).unwrap().1, CacheOutcome::Miss);
        assert_eq!(cache.load(&engine, &bytes).unwrap().1, CacheOutcome::Hit);
        let mode = std::fs::metadata(dir.path().join("c")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn corrupt_truncated_and_foreign_entries_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(dir.path()).unwrap();
        let engine = Engine::default();
        let bytes = component_bytes();
        cache.load(&engine, &bytes).unwrap();
        let path = entry_path(&cache);
        let good = std::fs::read(&path).unwrap();
        let rebuilt = |entry: &[u8]| {
            std::fs::write(&path, entry).unwrap();
            let outcome = cache.load(&engine, &bytes).unwrap().1;
            assert_eq!(cache.load(&engine, &bytes).unwrap().1, CacheOutcome::Hit, "rewritten after {outcome:?}");
            match outcome {
                CacheOutcome::Rebuilt(why) => why,
                other => panic!("{other:?}"),
            }
        };
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(rebuilt(&flipped), "corrupt (checksum mismatch)");
        assert_eq!(rebuilt(&good[..good.len() - 1]), "truncated");
        assert_eq!(rebuilt(&good[..10]), "not a Sluice cache entry (or truncated)");
        let mut other_key = good.clone();
        other_key[MAGIC.len()] ^= 1;
        assert_eq!(rebuilt(&other_key), "made for another component or engine");
    }

    #[test]
    fn another_engine_has_other_keys() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let other = Engine::new(&config).unwrap();
        assert_ne!(key(&Engine::default(), &component_bytes()), key(&other, &component_bytes()));
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ComponentCache::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is writable by other users (777)"), "{err}");
    }
}
