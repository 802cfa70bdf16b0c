//! DNS lookups through the host (the contract's `dns` interface): the stage needs
//! `capabilities = ["dns"]` in its config, and a lookup blocks the event that makes it, within
//! the stage's `message_timeout`. Natively (unit tests), answers come from `testing::TestHost`.

/// Why a lookup has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist or has no record of the type: a definite answer.
    NotFound,
    /// No server answered in time.
    Timeout,
    /// The servers failed (SERVFAIL, REFUSED, unreachable): try again later.
    ServerFailure,
    /// Not a valid domain name.
    BadName,
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DnsError::NotFound => "no such record",
            DnsError::Timeout => "DNS timeout",
            DnsError::ServerFailure => "DNS server failure",
            DnsError::BadName => "not a valid domain name",
        })
    }
}

impl std::error::Error for DnsError {}

/// The TXT records of `name`, one string per record (its character-strings concatenated).
#[cfg(target_arch = "wasm32")]
pub fn txt(name: &str) -> Result<Vec<String>, DnsError> {
    use crate::bindings::sluice::filter::dns::{self, DnsError as Wit};
    dns::txt(name).map_err(|err| match err {
        Wit::NotFound => DnsError::NotFound,
        Wit::Timeout => DnsError::Timeout,
        Wit::ServerFailure => DnsError::ServerFailure,
        Wit::BadName => DnsError::BadName,
    })
}

/// The TXT records of `name`, one string per record (its character-strings concatenated).
#[cfg(not(target_arch = "wasm32"))]
pub fn txt(name: &str) -> Result<Vec<String>, DnsError> {
    let key = normalize(name);
    ANSWERS.with(|answers| answers.borrow().get(&key).cloned().unwrap_or(Err(DnsError::NotFound)))
}

/// Lower case, without the trailing dot: how names are compared.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    /// The answers `testing::TestHost` gives, by `normalize`d name.
    pub(crate) static ANSWERS: std::cell::RefCell<std::collections::HashMap<String, Result<Vec<String>, DnsError>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}
