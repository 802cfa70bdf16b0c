//! `[policy]`: who may send through Sluice to which domains (`relay_domains`,
//! `trusted_networks`, `allow_open_relay`) and the per-client rate limits (`"COUNT/PERIOD"`).
//! The types and their parsing only: the decisions are `crate::policy`'s, and the refusal of a
//! config that would make an open relay is `preflight`'s (it needs the listeners too).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::Span;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Recipient domains accepted from any client.
    pub relay_domains: Vec<DomainPattern>,
    /// Clients that may send to any domain (and are exempt from the rate limits).
    pub trusted_networks: Vec<Network>,
    /// Lets `check-config` accept trusted networks that cover every address on a listener that
    /// is not loopback; it opens nothing by itself.
    pub allow_open_relay: bool,
    /// Connections per client address.
    pub connection_rate: Option<Rate>,
    /// MAIL commands per client address.
    pub message_rate: Option<Rate>,
    /// Accepted recipients per client address.
    pub recipient_rate: Option<Rate>,
    /// MAIL commands in one session.
    pub max_messages_per_session: Option<u32>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            relay_domains: Vec::new(),
            // Loopback only: out of the box nothing but local clients may relay.
            trusted_networks: vec![
                Network(IpNet::V4(Ipv4Net::new([127, 0, 0, 0].into(), 8).expect("prefix"))),
                Network(IpNet::V6(Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).expect("prefix"))),
            ],
            allow_open_relay: false,
            connection_rate: None,
            message_rate: None,
            recipient_rate: None,
            max_messages_per_session: None,
        }
    }
}

/// A `relay_domains` entry: `example.com` is that domain alone, `.example.com` its subdomains
/// (at any depth) but not itself. Kept lower-case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPattern {
    pub domain: String,
    pub subdomains: bool,
}

/// A `trusted_networks` entry: a CIDR, or one address. An IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) is kept as the IPv4 network it means, as client addresses are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(pub IpNet);

/// A rate limit: at most `count` events per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

const DOMAIN_HELP: &str = "write a domain such as \"example.com\", or \".example.com\" for all its subdomains";
const NETWORK_HELP: &str = "write a network such as \"192.0.2.0/24\" or \"2001:db8::/32\", or one address";
const RATE_HELP: &str = "write COUNT/PERIOD with a unit ms, s, m or h, e.g. \"30/1m\"";

impl DomainPattern {
    pub fn parse(text: &str) -> Result<DomainPattern, String> {
        let invalid = || format!("invalid domain {text:?}: {DOMAIN_HELP}");
        let lower = text.trim().to_lowercase();
        let (subdomains, name) = match lower.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let label_ok = |label: &str| {
            !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(invalid());
        }
        Ok(DomainPattern { domain: name.to_string(), subdomains })
    }
}

impl Network {
    pub fn parse(text: &str) -> Result<Network, String> {
        let text = text.trim();
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => text
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| format!("invalid network {text:?}: {NETWORK_HELP}"))?,
        };
        Ok(Network(canonical(net)))
    }
}

/// `::ffff:a.b.c.d/p` (p ≥ 96) as the IPv4 network `a.b.c.d/(p-96)`; other networks as they are.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix at most 32")),
            None => net,
        },
        _ => net,
    }
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        let invalid = || format!("invalid rate {text:?}: {RATE_HELP}");
        let (count, period) = text.split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        let period = period.trim();
        // "30/m" reads as "30/1m".
        let period = match period.starts_with(|c: char| c.is_ascii_digit()) {
            true => Span::parse(period),
            false => Span::parse(&format!("1{period}")),
        }
        .map_err(|_| invalid())?;
        if count == 0 || period.0.is_zero() {
            return Err(format!(
                "invalid rate {text:?}: COUNT and PERIOD must be greater than zero (leave the key out for no limit)"
            ));
        }
        Ok(Rate { count, period: period.0 })
    }
}

/// Deserializes a string through `parse`, whose error text is the config error's.
macro_rules! from_string {
    ($type:ty) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                <$type>::parse(&text).map_err(de::Error::custom)
            }
        }
    };
}

from_string!(DomainPattern);
from_string!(Network);
from_string!(Rate);

/// Semantic checks; the error names the key.
pub(super) fn validate(policy: &PolicyConfig) -> Result<(), (String, String)> {
    if policy.max_messages_per_session == Some(0) {
        let message = "must be at least 1 (leave it out for no limit)";
        return Err(("policy.max_messages_per_session".into(), message.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let pattern = |domain: &str, subdomains| DomainPattern { domain: domain.into(), subdomains };
        assert_eq!(DomainPattern::parse("Example.COM."), Ok(pattern("example.com", false)));
        assert_eq!(DomainPattern::parse(".example.org"), Ok(pattern("example.org", true)));
        assert_eq!(DomainPattern::parse("BÜCHER.example"), Ok(pattern("bücher.example", false)));
        for bad in ["", ".", "*.example.com", "a..b", "user@example.com", "[192.0.2.1]", "a b"] {
            let err = DomainPattern::parse(bad).unwrap_err();
            assert!(err.starts_with(&format!("invalid domain {bad:?}: write a domain")), "{err}");
        }
    }

    #[test]
    fn networks() {
        let net = |text: &str| Network::parse(text).unwrap().0.to_string();
        assert_eq!(net("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(net("192.0.2.7"), "192.0.2.7/32");
        assert_eq!(net("::1"), "::1/128");
        assert_eq!(net("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(net("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(net("::ffff:0:0/96"), "0.0.0.0/0");
        assert!(Network::parse("10.0.0.0/33").unwrap_err().contains("write a network such as"));
        assert!(Network::parse("localhost").is_err());
    }

    #[test]
    fn rates() {
        let rate = |count, secs| Rate { count, period: Duration::from_secs(secs) };
        assert_eq!(Rate::parse("30/1m"), Ok(rate(30, 60)));
        assert_eq!(Rate::parse("30/m"), Ok(rate(30, 60)));
        assert_eq!(Rate::parse(" 3 / 2s "), Ok(rate(3, 2)));
        assert_eq!(Rate::parse("100/1h"), Ok(rate(100, 3600)));
        for bad in ["30", "30/", "x/1m", "30/1 minute", "-1/1m", "30/5"] {
            assert!(Rate::parse(bad).unwrap_err().contains("write COUNT/PERIOD"), "{bad}");
        }
        assert!(Rate::parse("0/1m").unwrap_err().contains("must be greater than zero"));
        assert!(Rate::parse("5/0s").unwrap_err().contains("must be greater than zero"));
    }

    #[test]
    fn defaults_trust_loopback_only_and_limit_nothing() {
        let policy = PolicyConfig::default();
        let nets: Vec<String> = policy.trusted_networks.iter().map(|n| n.0.to_string()).collect();
        assert_eq!(nets, ["127.0.0.0/8", "::1/128"]);
        assert!(policy.relay_domains.is_empty() && !policy.allow_open_relay);
        assert_eq!((policy.connection_rate, policy.message_rate, policy.recipient_rate), (None, None, None));
    }
}
