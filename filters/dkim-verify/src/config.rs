//! `dkim-verify`'s configuration: the authserv-id its Authentication-Results fields are written
//! under, and the optional policy (which domains must carry a passing signature, and what
//! becomes of mail that does not), parsed and checked at once, each error naming its key.

use sluice_filter_sdk::{Config, ConfigError};

use sluice_dkim::is_domain_name;

/// What becomes of mail from a required domain without a passing signature of it (`on_missing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    Reject,
    Tempfail,
}

pub struct Settings {
    pub authserv_id: String,
    /// Lower case, without a trailing dot.
    pub required_domains: Vec<String>,
    pub on_missing: OnMissing,
}

impl Settings {
    pub fn parse(config: &Config) -> Result<Settings, ConfigError> {
        let authserv_id = match config.get("authserv_id") {
            None => {
                return Err(error(
                    "authserv_id",
                    "is required: set it to this gateway's hostname (\"mx.example.org\"), the name its \
                     Authentication-Results fields are written under",
                ))
            }
            Some(id) if !is_domain_name(id) => {
                return Err(error("authserv_id", format!("must be a hostname such as \"mx.example.org\", not {id:?}")))
            }
            Some(id) => id.to_string(),
        };
        let required_domains = config.get("required_domains").map(domain_list).transpose()?.unwrap_or_default();
        let on_missing = match config.get("on_missing") {
            None => OnMissing::Reject,
            Some(_) if required_domains.is_empty() => {
                return Err(error(
                    "on_missing",
                    "applies only with required_domains: set required_domains too, or leave on_missing out",
                ))
            }
            Some("reject") => OnMissing::Reject,
            Some("tempfail") => OnMissing::Tempfail,
            Some(other) => {
                return Err(error("on_missing", format!("must be \"reject\" or \"tempfail\", not {other:?}")))
            }
        };
        Ok(Settings { authserv_id, required_domains, on_missing })
    }

    /// Whether mail From `domain` (lower case) must carry a passing signature of it.
    pub fn requires(&self, domain: &str) -> bool {
        self.required_domains.iter().any(|required| required == domain)
    }
}

fn error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

/// `required_domains = "example.org, example.net"`.
fn domain_list(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut domains: Vec<String> = Vec::new();
    for domain in list.split(',').map(str::trim).filter(|domain| !domain.is_empty()) {
        if !is_domain_name(domain) {
            return Err(error("required_domains", format!("{domain:?} is not a domain name")));
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    if domains.is_empty() {
        return Err(error("required_domains", "lists no domain: write \"example.org, example.net\", or leave it out"));
    }
    Ok(domains)
}
