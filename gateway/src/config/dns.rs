//! `[dns]`: the resolver behind the `dns` capability of filters (servers, a timeout per lookup).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::Span;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Servers to ask, `ip:port`; empty means the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// Bound on one lookup, all servers and retries included.
    pub timeout: Span,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { servers: Vec::new(), timeout: Span(Duration::from_secs(5)) }
    }
}

/// Semantic checks; the error names the key.
pub(super) fn validate(dns: &DnsConfig) -> Result<(), (String, String)> {
    if dns.timeout.0.is_zero() {
        return Err(("dns.timeout".into(), "must be greater than zero, e.g. \"5s\"".into()));
    }
    Ok(())
}
