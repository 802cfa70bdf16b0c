//! `[relay]`: the next hop — its address, our EHLO name, timeouts, STARTTLS to it and the
//! `Received:` field naming the client — and the checks its values need.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Span;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The next hop, `host:port`.
    pub address: String,
    /// Name we send in EHLO to the next hop; defaults to `server.hostname`.
    pub helo_name: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Span,
    /// Bound on each next-hop reply (Postfix's smtp_*_timeout); the final reply after DATA too.
    #[serde(default = "default_relay_command_timeout")]
    pub command_timeout: Span,
    /// STARTTLS to the next hop.
    #[serde(default)]
    pub tls: RelayTls,
    /// PEM file of the CAs that sign the next hop's certificate (`tls = "required"`); the
    /// system's roots when absent.
    pub ca_file: Option<PathBuf>,
    /// The name the next hop's certificate must carry (and SNI); the host of `address` when
    /// absent, an IP address then verified against the certificate's IP addresses.
    pub server_name: Option<String>,
    /// Prepend a `Received:` field naming the client to the relayed content.
    #[serde(default)]
    pub add_received: bool,
}

/// How the relay uses STARTTLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Never: plain text even when offered.
    None,
    /// When offered, encrypted without checking the certificate (Postfix's `may`); plain text
    /// when not offered.
    #[default]
    Opportunistic,
    /// Always, with the certificate verified (Postfix's `secure`): a next hop offering no
    /// STARTTLS, or with a certificate that does not verify, gets nothing.
    Required,
}

impl RelayConfig {
    /// The host part of `address`, without the brackets of an IPv6 literal.
    pub fn host(&self) -> &str {
        let host = self.address.rsplit_once(':').map_or(self.address.as_str(), |(host, _)| host);
        host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
    }

    /// The name the next hop's certificate is checked against.
    pub fn tls_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or_else(|| self.host())
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, message: String| Err((key.to_string(), message));
        if self.address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
            return fail("relay.address", "must be host:port, e.g. \"127.0.0.1:10026\"".into());
        }
        if self.command_timeout.0.is_zero() || self.connect_timeout.0.is_zero() {
            return fail("relay.command_timeout", "relay timeouts must be greater than zero".into());
        }
        if self.ca_file.is_some() && self.tls != RelayTls::Required {
            return fail(
                "relay.ca_file",
                "certificates are checked only with tls = \"required\" (opportunistic TLS encrypts \
                 without checking); set tls = \"required\" or remove ca_file"
                    .into(),
            );
        }
        if self.server_name.is_some() && self.tls == RelayTls::None {
            return fail("relay.server_name", "is used only for TLS; tls = \"none\" here".into());
        }
        let name = self.tls_name();
        if self.tls != RelayTls::None && rustls_pki_types::ServerName::try_from(name).is_err() {
            let key = if self.server_name.is_some() { "relay.server_name" } else { "relay.address" };
            return fail(
                key,
                format!("{name:?} is not a host name or IP address a certificate can carry; set relay.server_name"),
            );
        }
        Ok(())
    }
}

fn default_connect_timeout() -> Span {
    Span(Duration::from_secs(30))
}

fn default_relay_command_timeout() -> Span {
    Span(Duration::from_secs(300))
}
