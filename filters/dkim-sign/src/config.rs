//! `dkim-sign`'s configuration: the signing domains with their selectors and keys, and the
//! choices all its signatures share (canonicalisation, signed fields, expiration, whose domain
//! picks the key), parsed and checked at once, each error naming the setting or key at fault.

use sluice_dkim::{is_domain_name, Algorithm, Canonicalization, Key, KeyError, Signer};
use sluice_filter_sdk::keys::{self, HostKey};
use sluice_filter_sdk::{Config, ConfigError};

/// Whose domain must be a configured one for a message to be signed (`sign_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignBy {
    HeaderFrom,
    EnvelopeFrom,
}

/// One signing domain and its key.
pub struct Domain {
    /// Lower case, without a trailing dot: as `d=` and as messages' domains are compared.
    pub name: String,
    /// What its key is.
    pub key: keys::KeyInfo,
    /// The `[stage.keys]` entry of its key.
    pub key_name: String,
    pub signer: Signer,
}

/// A key the host holds and signs with: its secret never enters the filter.
struct FilterKey(HostKey);

impl Key for FilterKey {
    fn algorithm(&self) -> Algorithm {
        match self.0.info().algorithm {
            keys::Algorithm::RsaSha256 => Algorithm::RsaSha256,
            keys::Algorithm::Ed25519Sha256 => Algorithm::Ed25519Sha256,
        }
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.0.sign(data).map_err(KeyError::Sign)
    }
}

/// The whole configuration.
pub struct Settings {
    pub domains: Vec<Domain>,
    pub sign_by: SignBy,
}

/// The longest `expiration`: well inside the 12 digits RFC 6376 allows `x=`.
const MAX_EXPIRATION: u64 = 3650 * 86_400;

impl Settings {
    /// Reads and checks every key; each signing key is the host's, from its `[stage.keys]` entry.
    pub fn parse(config: &Config) -> Result<Settings, ConfigError> {
        let canonicalization = config.get("canonicalization").map(canonicalization).transpose()?;
        let headers = config.get("headers").map(signed_headers).transpose()?;
        let expiration = config.get("expiration").map(expiration).transpose()?;
        let sign_by = config.get("sign_by").map(sign_by).transpose()?.unwrap_or(SignBy::HeaderFrom);
        let mut domains = Vec::new();
        for Entry { domain, selector, key_name } in entries(config)? {
            let host_key = config.key(&key_name)?;
            let key = host_key.info();
            let mut signer = Signer::new(FilterKey(host_key), &domain, &selector);
            if let Some(canonicalization) = canonicalization {
                signer = signer.with_canonicalization(canonicalization);
            }
            if let Some(headers) = &headers {
                signer = signer.with_signed_headers(&headers.iter().map(String::as_str).collect::<Vec<_>>());
            }
            if let Some(seconds) = expiration {
                signer = signer.with_expiration(seconds);
            }
            domains.push(Domain { name: domain, key, key_name, signer });
        }
        Ok(Settings { domains, sign_by })
    }

    /// The configured domains, for log lines: `example.org, example.net`.
    pub fn names(&self) -> String {
        self.domains.iter().map(|domain| domain.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

fn error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

/// A domain with its selector and the `[stage.keys]` entry of its key.
struct Entry {
    domain: String,
    selector: String,
    key_name: String,
}

/// `domain`, `selector` (the key `key`), or `domains`: never both forms.
fn entries(config: &Config) -> Result<Vec<Entry>, ConfigError> {
    let (domain, selector) = (config.get("domain"), config.get("selector"));
    match (config.get("domains"), domain, selector) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(error(
            "domains",
            "cannot be combined with domain and selector: use domain, selector and [stage.keys] key for one \
             domain, or domains alone for several",
        )),
        (Some(list), None, None) => domain_list(list),
        (None, Some(domain), Some(selector)) => {
            let entry = entry("domain", domain, "selector", selector, "key")?;
            Ok(vec![entry])
        }
        (None, Some(_), None) => Err(error("selector", "is required with domain")),
        (None, None, Some(_)) => Err(error("domain", "is required with selector")),
        (None, None, None) => Err(error(
            "domain",
            "is required: set domain and selector (the key in [stage.keys] key), or domains = \
             \"DOMAIN SELECTOR KEY-NAME, ...\" for several domains",
        )),
    }
}

/// `domains = "example.org s1 org, example.net s2 net"`.
fn domain_list(list: &str) -> Result<Vec<Entry>, ConfigError> {
    let mut entries: Vec<Entry> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let words: Vec<&str> = item.split_whitespace().collect();
        let [domain, selector, key_name] = words[..] else {
            return Err(error(
                "domains",
                format!("{item:?} is not \"DOMAIN SELECTOR KEY-NAME\" (KEY-NAME a [stage.keys] entry)"),
            ));
        };
        let entry = entry("domains", domain, "domains", selector, key_name)?;
        if entries.iter().any(|seen| seen.domain == entry.domain) {
            return Err(error("domains", format!("{} is listed twice", entry.domain)));
        }
        entries.push(entry);
    }
    if entries.is_empty() {
        return Err(error("domains", "lists no domain: write \"DOMAIN SELECTOR KEY-NAME, ...\""));
    }
    Ok(entries)
}

/// One checked entry; `domain_key` and `selector_key` name the config keys for errors.
fn entry(
    domain_key: &str,
    domain: &str,
    selector_key: &str,
    selector: &str,
    key_name: &str,
) -> Result<Entry, ConfigError> {
    if !is_domain_name(domain) {
        return Err(error(domain_key, format!("{domain:?} is not a domain name")));
    }
    if !is_domain_name(selector) {
        return Err(error(
            selector_key,
            format!("{selector:?} is not a selector (dot-separated labels of letters, digits, \"-\" and \"_\")"),
        ));
    }
    Ok(Entry {
        domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        selector: selector.trim_end_matches('.').to_string(),
        key_name: key_name.to_string(),
    })
}

fn canonicalization(raw: &str) -> Result<Canonicalization, ConfigError> {
    Canonicalization::parse(raw).map_err(|_| {
        error(
            "canonicalization",
            format!(
                "must be \"relaxed/relaxed\", \"relaxed/simple\", \"simple/relaxed\" or \"simple/simple\" \
                 (\"relaxed\" or \"simple\" alone means a simple body), not {raw:?}"
            ),
        )
    })
}

/// `headers = "from:to:subject"`: the names of the fields to sign.
fn signed_headers(raw: &str) -> Result<Vec<String>, ConfigError> {
    let names: Vec<String> = raw.split(':').map(str::trim).filter(|name| !name.is_empty()).map(String::from).collect();
    if let Some(bad) = names.iter().find(|name| !name.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(error("headers", format!("{bad:?} is not a header field name")));
    }
    if names.is_empty() {
        return Err(error("headers", "lists no header field: write names separated by \":\" (\"from:to:subject\")"));
    }
    Ok(names)
}

/// `expiration = "7d"`: seconds, from a whole number with an `s`, `m`, `h` or `d` suffix.
fn expiration(raw: &str) -> Result<u64, ConfigError> {
    let text = raw.trim();
    let seconds = [('s', 1), ('m', 60), ('h', 3600), ('d', 86_400)]
        .into_iter()
        .find_map(|(unit, scale)| Some((text.strip_suffix(unit)?, scale)))
        .and_then(|(number, scale)| number.parse::<u64>().ok()?.checked_mul(scale));
    match seconds {
        Some(seconds) if (1..=MAX_EXPIRATION).contains(&seconds) => Ok(seconds),
        _ => Err(error(
            "expiration",
            format!("must be a time from 1s to 3650d, a whole number with s, m, h or d (\"7d\", \"12h\"), not {raw:?}"),
        )),
    }
}

fn sign_by(raw: &str) -> Result<SignBy, ConfigError> {
    match raw {
        "header-from" => Ok(SignBy::HeaderFrom),
        "envelope-from" => Ok(SignBy::EnvelopeFrom),
        _ => Err(error("sign_by", format!("must be \"header-from\" or \"envelope-from\", not {raw:?}"))),
    }
}
