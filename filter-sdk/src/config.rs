//! The filter's `[stage.config]` table, with typed parsing and errors that name the key, and its
//! `[stage.files]` (the bytes of files the operator names; a filter has no filesystem). It
//! remembers which keys the filter read, so the host can warn about keys no filter code looks at
//! (a misspelt `rulez` would otherwise be ignored in silence).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Key/value pairs from the stage's `[stage.config]`, in file order.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pairs: Vec<(String, String)>,
    /// Whether each pair has been read (same order as `pairs`).
    read: RefCell<Vec<bool>>,
    /// Natively (unit tests), the `[stage.files]` a test gives; in the component the host has them.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    files: BTreeMap<String, Vec<u8>>,
    /// Natively, the `[stage.keys]` a test gives (the host's, in the component, never the filter's).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) keys: BTreeMap<String, Vec<u8>>,
}

/// Equal configurations have equal pairs; what was read does not count.
impl PartialEq for Config {
    fn eq(&self, other: &Config) -> bool {
        self.pairs == other.pairs
    }
}

impl Eq for Config {}

/// A config value that is missing or does not parse; the message is for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The `[stage.config]` key at fault, or `files.NAME` for a `[stage.files]` entry; empty
    /// when no single key is.
    pub key: String,
    pub message: String,
}

/// How a `[stage.files]` entry's key is written in a `ConfigError` (and in the contract's
/// `config-problem`), so the host reports it at that key.
const FILES_PREFIX: &str = "files.";
/// The same for a `[stage.keys]` entry.
const KEYS_PREFIX: &str = "keys.";

impl ConfigError {
    /// An error about the `[stage.files]` entry `name` (a missing file, one that does not parse).
    pub fn file(name: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { key: format!("{FILES_PREFIX}{name}"), message: message.into() }
    }

    /// An error about the `[stage.keys]` entry `name` (a missing key, one of the wrong kind).
    pub fn stage_key(name: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { key: format!("{KEYS_PREFIX}{name}"), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.key.strip_prefix(FILES_PREFIX) {
            return write!(f, "[stage.files] {name}: {}", self.message);
        }
        if let Some(name) = self.key.strip_prefix(KEYS_PREFIX) {
            return write!(f, "[stage.keys] {name}: {}", self.message);
        }
        match self.key.is_empty() {
            true => write!(f, "[stage.config]: {}", self.message),
            false => write!(f, "[stage.config] {}: {}", self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn new(pairs: Vec<(String, String)>) -> Config {
        let read = RefCell::new(vec![false; pairs.len()]);
        Config { pairs, read, files: BTreeMap::new(), keys: BTreeMap::new() }
    }

    /// The configuration with these `[stage.files]` (for native unit tests; in the component the
    /// host holds the files).
    pub fn with_files(mut self, files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Config {
        self.files.extend(files);
        self
    }

    /// The configuration with these `[stage.keys]` (for native unit tests).
    pub fn with_keys(mut self, keys: impl IntoIterator<Item = (String, Vec<u8>)>) -> Config {
        self.keys.extend(keys);
        self
    }

    /// The bytes of the `[stage.files]` entry `name`, if the operator gave one. Ask in `new`, so a
    /// missing or unusable file is refused at load, naming the entry (`ConfigError::file`).
    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::sluice::filter::files::file(name);
        #[cfg(not(target_arch = "wasm32"))]
        return self.files.get(name).cloned();
    }

    /// The bytes of the `[stage.files]` entry `name`; an error naming it when absent.
    pub fn require_file(&self, name: &str) -> Result<Vec<u8>, ConfigError> {
        self.file(name).ok_or_else(|| ConfigError::file(name, "is required: add it to [stage.files]"))
    }

    /// The private key of the `[stage.keys]` entry `name`, held by the host, which signs with it
    /// (`keys`); an error naming the entry when it is absent. Ask in `new`.
    pub fn key(&self, name: &str) -> Result<crate::keys::HostKey, ConfigError> {
        crate::keys::key(self, name)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let index = self.pairs.iter().position(|(k, _)| k == key)?;
        self.read.borrow_mut()[index] = true;
        Some(self.pairs[index].1.as_str())
    }

    /// Every pair, in file order (all count as read).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.read.borrow_mut().fill(true);
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Keys never read through `get`, `parse`, `get_or`, `require` or `pairs`, in file order.
    pub fn unread_keys(&self) -> Vec<String> {
        let read = self.read.borrow();
        self.pairs.iter().zip(read.iter()).filter(|(_, read)| !**read).map(|((k, _), _)| k.clone()).collect()
    }

    /// `key` parsed as `T`, if present.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.get(key)
            .map(|raw| {
                raw.parse::<T>().map_err(|err| {
                    let message = match expected::<T>() {
                        Some(what) => format!("must be {what}, not {raw:?}"),
                        None => format!("invalid value {raw:?}: {err}"),
                    };
                    ConfigError { key: key.into(), message }
                })
            })
            .transpose()
    }

    /// `key` parsed as `T`, or `default` when absent.
    pub fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// `key` parsed as `T`; an error when absent.
    pub fn require<T: FromStr>(&self, key: &str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.parse(key)?.ok_or_else(|| ConfigError { key: key.into(), message: "is required".into() })
    }
}

/// What a value of a primitive type looks like, in an operator's words (the standard library's
/// parse errors say "invalid digit found in string").
fn expected<T>() -> Option<&'static str> {
    match std::any::type_name::<T>() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => Some("a whole number, 0 or more"),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => Some("a whole number"),
        "f32" | "f64" => Some("a number"),
        "bool" => Some("true or false"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_and_errors() {
        let config = Config::new(vec![("n".into(), "42".into()), ("flag".into(), "yes".into())]);
        assert_eq!(config.require::<u32>("n"), Ok(42));
        assert_eq!(config.get_or::<u32>("missing", 7), Ok(7));
        let err = config.parse::<bool>("flag").unwrap_err();
        assert_eq!(err.to_string(), "[stage.config] flag: must be true or false, not \"yes\"");
        let err = config.parse::<u16>("flag").unwrap_err();
        assert_eq!(err.to_string(), "[stage.config] flag: must be a whole number, 0 or more, not \"yes\"");
        let err = config.parse::<std::net::IpAddr>("flag").unwrap_err();
        assert_eq!(err.to_string(), "[stage.config] flag: invalid value \"yes\": invalid IP address syntax");
        assert_eq!(config.require::<String>("absent").unwrap_err().message, "is required");
    }

    #[test]
    fn remembers_which_keys_were_read() {
        let config = Config::new(vec![("rules".into(), "x".into()), ("rulez".into(), "y".into())]);
        assert_eq!(config.unread_keys(), ["rules", "rulez"]);
        assert_eq!(config.get("rules"), Some("x"));
        assert_eq!(config.get("absent"), None);
        assert_eq!(config.unread_keys(), ["rulez"]);
        let _ = config.pairs().count();
        assert!(config.unread_keys().is_empty());
    }

    #[test]
    fn files_are_given_by_name_and_errors_name_the_entry() {
        let config = Config::new(vec![]).with_files([("key".to_string(), b"PEM".to_vec())]);
        assert_eq!(config.file("key").as_deref(), Some(&b"PEM"[..]));
        assert_eq!(config.file("other"), None);
        let err = config.require_file("other").unwrap_err();
        assert_eq!(err.to_string(), "[stage.files] other: is required: add it to [stage.files]");
        assert_eq!(err.key, "files.other");
    }
}
