//! The filter's `[stage.config]` table, with typed parsing and errors that name the key.

use std::fmt;
use std::str::FromStr;

/// Key/value pairs from the stage's `[stage.config]`, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

/// A config value that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[stage.config] {}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn new(pairs: Vec<(String, String)>) -> Config {
        Config { pairs }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every pair, in file order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `key` parsed as `T`, if present.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.get(key)
            .map(|raw| {
                raw.parse::<T>()
                    .map_err(|err| ConfigError { key: key.into(), message: format!("invalid value {raw:?}: {err}") })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_and_errors() {
        let config = Config::new(vec![("n".into(), "42".into()), ("flag".into(), "yes".into())]);
        assert_eq!(config.require::<u32>("n"), Ok(42));
        assert_eq!(config.get_or::<u32>("missing", 7), Ok(7));
        let err = config.parse::<bool>("flag").unwrap_err();
        assert_eq!(err.key, "flag");
        assert!(err.to_string().starts_with("[stage.config] flag: invalid value \"yes\""));
        assert_eq!(config.require::<String>("absent").unwrap_err().message, "is required");
    }
}
