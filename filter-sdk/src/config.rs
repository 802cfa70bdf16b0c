//! The filter's `[stage.config]` table, with typed parsing and errors that name the key. It
//! remembers which keys the filter read, so the host can warn about keys no filter code looks at
//! (a misspelt `rulez` would otherwise be ignored in silence).

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

/// Key/value pairs from the stage's `[stage.config]`, in file order.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pairs: Vec<(String, String)>,
    /// Whether each pair has been read (same order as `pairs`).
    read: RefCell<Vec<bool>>,
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
    /// The `[stage.config]` key at fault; empty when no single key is.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        Config { pairs, read }
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
}
