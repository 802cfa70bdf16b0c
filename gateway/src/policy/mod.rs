//! Who may send what through Sluice, as a session asks it: the relay decision (clients in
//! `trusted_networks` may send to any domain, anyone else only to `relay_domains`) and the
//! per-client limits (connections, messages, recipients per period; messages per session), with
//! the replies that refuse. Pure: addresses, recipients and the time in, decisions and replies
//! out (a refusal writes its own log line); `rate` holds the windows the rates are counted in,
//! shared by all sessions.

pub mod rate;

use std::net::IpAddr;
use std::time::Instant;

use ipnet::IpNet;
use tracing::{debug, info};

use crate::config::policy::{DomainPattern, PolicyConfig, Rate};
use crate::smtp::reply::Reply;
use rate::{RateTable, RateTables};

/// One settings generation's policy.
#[derive(Debug, Clone)]
pub struct Policy {
    relay_domains: Vec<DomainPattern>,
    trusted: Vec<IpNet>,
    connection_rate: Option<Rate>,
    message_rate: Option<Rate>,
    recipient_rate: Option<Rate>,
    max_messages_per_session: Option<u32>,
}

/// May this client send to this recipient?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The client is in `trusted_networks`: any recipient.
    Trusted,
    /// The recipient's domain is one of `relay_domains`.
    RelayDomain,
    Denied(Denied),
}

/// Why a recipient is not relayed for an untrusted client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No domain at all (`<postmaster>`).
    NoDomain,
    /// An address literal (`user@[192.0.2.1]`): never one of relay_domains.
    AddressLiteral,
    /// Not one of relay_domains.
    OtherDomain,
    /// A relay domain, but with routing in the local part (`user%other@…`, `host!user@…`,
    /// `"user@other"@…`), which a next hop trusting Sluice could forward anywhere (Postfix
    /// refuses it from untrusted clients too: `allow_untrusted_routing = no`).
    SenderRouting,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::NoDomain => "no_domain",
            Denied::AddressLiteral => "address_literal",
            Denied::OtherDomain => "not_a_relay_domain",
            Denied::SenderRouting => "sender_routing",
        }
    }
}

/// An event refused by a limit: the reply, and what the log says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reply: Reply,
    /// The limit's config key.
    pub limit: &'static str,
    /// The client's first refusal by this limit in its window (or session): worth an info line;
    /// the rest are logged at debug, so a flood does not flood the log.
    pub first: bool,
}

impl Refusal {
    /// The log line: at info for the client's first refusal by the limit, at debug after it.
    pub fn log(&self, client: IpAddr) {
        let (client, reply) = (client.to_canonical(), self.reply.summary());
        match self.first {
            true => {
                info!(target: "sluice::policy", client = %client, limit = self.limit, reply = reply.as_str(), "refused: limit reached")
            }
            false => {
                debug!(target: "sluice::policy", client = %client, limit = self.limit, reply = reply.as_str(), "refused: limit reached")
            }
        }
    }
}

/// Whether an admitted recipient counts against `recipient_rate`, to be given back when the
/// recipient is refused further on (by a stage or the next hop): the limit counts accepted ones.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    No,
    /// In the window that opened at this instant.
    Yes(Instant),
}

/// The 550 for a recipient the client may not relay to (Postfix's wording).
pub fn relay_denied(rcpt: &str) -> Reply {
    Reply::new(550, "5.7.1", format!("<{rcpt}>: Relay access denied"))
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Policy {
        Policy {
            relay_domains: config.relay_domains.clone(),
            trusted: config.trusted_networks.iter().map(|network| network.0).collect(),
            connection_rate: config.connection_rate,
            message_rate: config.message_rate,
            recipient_rate: config.recipient_rate,
            max_messages_per_session: config.max_messages_per_session,
        }
    }

    /// The client is in `trusted_networks` (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn trusts(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.trusted.iter().any(|network| network.contains(&client))
    }

    /// The relay decision for one recipient (a mailbox as parsed from RCPT, no angle brackets).
    /// Its domain is what follows the last `@` (a quoted local part may hold one), compared
    /// without case (Unicode lower-casing, for UTF-8 domains) and without a trailing dot.
    pub fn relay(&self, client: IpAddr, rcpt: &str) -> Decision {
        if self.trusts(client) {
            return Decision::Trusted;
        }
        let Some((local, domain)) = rcpt.rsplit_once('@') else { return Decision::Denied(Denied::NoDomain) };
        if domain.starts_with('[') {
            return Decision::Denied(Denied::AddressLiteral);
        }
        let domain = domain.to_lowercase();
        let domain = domain.strip_suffix('.').unwrap_or(&domain);
        if !self.relay_domains.iter().any(|pattern| matches(pattern, domain)) {
            return Decision::Denied(Denied::OtherDomain);
        }
        if local.contains(['@', '%', '!']) {
            return Decision::Denied(Denied::SenderRouting);
        }
        Decision::RelayDomain
    }

    /// A new connection, before the greeting: `connection_rate`.
    pub fn connect(&self, tables: &RateTables, client: IpAddr, hostname: &str, now: Instant) -> Result<(), Refusal> {
        let reply = || {
            let text = format!("{hostname} Error: too many connections from {}", client.to_canonical());
            Reply::new(421, "4.7.0", text)
        };
        self.count(&tables.connections, self.connection_rate, "policy.connection_rate", client, now, reply)
    }

    /// A MAIL command, the session's `number`th (from 1, refused ones included):
    /// `max_messages_per_session`, then `message_rate`.
    pub fn mail(&self, tables: &RateTables, client: IpAddr, number: u32, now: Instant) -> Result<(), Refusal> {
        if self.trusts(client) {
            return Ok(());
        }
        if let Some(max) = self.max_messages_per_session.filter(|&max| number > max) {
            let text = format!("Error: too many messages in one session (at most {max}); send the rest in a new one");
            let first = number == max + 1;
            return Err(Refusal {
                reply: Reply::new(451, "4.7.1", text),
                limit: "policy.max_messages_per_session",
                first,
            });
        }
        let reply = || Reply::new(451, "4.7.1", format!("Error: too much mail from {}", client.to_canonical()));
        self.count(&tables.messages, self.message_rate, "policy.message_rate", client, now, reply)
    }

    /// A recipient the relay decision let through, before the chain and the next hop see it:
    /// `recipient_rate`.
    pub fn recipient(&self, tables: &RateTables, client: IpAddr, now: Instant) -> Result<Counted, Refusal> {
        if self.recipient_rate.is_none() || self.trusts(client) {
            return Ok(Counted::No);
        }
        let Some(rate) = self.recipient_rate else { return Ok(Counted::No) };
        match tables.recipients.admit(client, rate, now) {
            Ok(window) => Ok(Counted::Yes(window)),
            Err(tripped) => {
                let reply =
                    Reply::new(451, "4.7.1", format!("Error: too many recipients from {}", client.to_canonical()));
                Err(Refusal { reply, limit: "policy.recipient_rate", first: tripped.first })
            }
        }
    }

    /// Gives back a recipient counted by `recipient` that was then refused.
    pub fn uncount_recipient(&self, tables: &RateTables, client: IpAddr, counted: Counted) {
        if let Counted::Yes(window) = counted {
            tables.recipients.refund(client, window);
        }
    }

    /// One event against `rate` (none: no limit); trusted clients are not counted.
    fn count(
        &self,
        table: &RateTable,
        rate: Option<Rate>,
        limit: &'static str,
        client: IpAddr,
        now: Instant,
        reply: impl FnOnce() -> Reply,
    ) -> Result<(), Refusal> {
        let Some(rate) = rate.filter(|_| !self.trusts(client)) else { return Ok(()) };
        table.hit(client, rate, now).map_err(|tripped| Refusal { reply: reply(), limit, first: tripped.first })
    }
}

/// `example.com` matches that domain only; `.example.com` any name below it, not itself.
fn matches(pattern: &DomainPattern, domain: &str) -> bool {
    match pattern.subdomains {
        false => domain == pattern.domain,
        true => domain
            .strip_suffix(pattern.domain.as_str())
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::policy::Network;

    fn policy(trusted: &[&str], domains: &[&str]) -> Policy {
        Policy::new(&PolicyConfig {
            trusted_networks: trusted.iter().map(|n| Network::parse(n).unwrap()).collect(),
            relay_domains: domains.iter().map(|d| DomainPattern::parse(d).unwrap()).collect(),
            ..PolicyConfig::default()
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const OTHER: Decision = Decision::Denied(Denied::OtherDomain);

    #[test]
    fn trusted_clients_may_send_anywhere() {
        let policy = policy(&["127.0.0.0/8", "::1/128", "2001:db8::/32", "::ffff:10.0.0.0/104"], &[]);
        let cases = [
            ("127.0.0.1", Decision::Trusted),
            ("127.255.0.9", Decision::Trusted),
            ("::1", Decision::Trusted),
            // A dual-stack listener sees IPv4 clients as mapped addresses.
            ("::ffff:127.0.0.1", Decision::Trusted),
            ("::ffff:192.0.2.1", OTHER),
            ("2001:db8:ffff::5", Decision::Trusted),
            ("2001:db9::5", OTHER),
            ("10.1.2.3", Decision::Trusted),
            ("::ffff:10.1.2.3", Decision::Trusted),
            ("11.0.0.1", OTHER),
            ("192.0.2.1", OTHER),
            ("::2", OTHER),
        ];
        for (client, expected) in cases {
            assert_eq!(policy.relay(ip(client), "x@other.test"), expected, "{client}");
        }
        assert_eq!(policy.relay(ip("127.0.0.1"), "postmaster"), Decision::Trusted);
        assert_eq!(policy.relay(ip("127.0.0.1"), "x@[192.0.2.1]"), Decision::Trusted);
    }

    #[test]
    fn untrusted_clients_only_to_relay_domains() {
        let policy = policy(&["127.0.0.0/8"], &["relay.test", ".example.org", "BÜCHER.example"]);
        let relay = Decision::RelayDomain;
        let cases = [
            ("x@relay.test", relay),
            ("x@RELAY.Test", relay),
            ("x@relay.test.", relay),
            ("x@sub.relay.test", OTHER),
            ("x@relay.test.evil", OTHER),
            ("x@xrelay.test", OTHER),
            ("x@mx.example.org", relay),
            ("x@a.b.example.org", relay),
            ("x@MX.Example.ORG.", relay),
            ("x@example.org", OTHER),
            ("x@badexample.org", OTHER),
            ("x@.example.org", OTHER),
            ("x@bücher.example", relay),
            ("x@BÜCHER.EXAMPLE", relay),
            ("x@other.test", OTHER),
            ("\"john doe\"@relay.test", relay),
            ("\"x@relay.test\"@other.test", OTHER),
            ("\"x@other.test\"@relay.test", Decision::Denied(Denied::SenderRouting)),
            ("x%other.test@relay.test", Decision::Denied(Denied::SenderRouting)),
            ("other.test!x@relay.test", Decision::Denied(Denied::SenderRouting)),
            ("x@[192.0.2.1]", Decision::Denied(Denied::AddressLiteral)),
            ("x@[IPv6:2001:db8::1]", Decision::Denied(Denied::AddressLiteral)),
            ("postmaster", Decision::Denied(Denied::NoDomain)),
            ("Postmaster", Decision::Denied(Denied::NoDomain)),
        ];
        for (rcpt, expected) in cases {
            assert_eq!(policy.relay(ip("192.0.2.1"), rcpt), expected, "{rcpt}");
        }
        assert_eq!(relay_denied("x@other.test").to_wire(), b"550 5.7.1 <x@other.test>: Relay access denied\r\n");
    }

    #[test]
    fn the_default_trusts_loopback_only() {
        let policy = Policy::new(&PolicyConfig::default());
        assert_eq!(policy.relay(ip("127.0.0.1"), "x@anywhere.test"), Decision::Trusted);
        assert_eq!(policy.relay(ip("::1"), "x@anywhere.test"), Decision::Trusted);
        assert_eq!(policy.relay(ip("192.168.1.1"), "x@anywhere.test"), OTHER);
        assert_eq!(policy.relay(ip("192.168.1.1"), "postmaster"), Decision::Denied(Denied::NoDomain));
    }

    fn limited(config: &str) -> Policy {
        let text = format!("[policy]\ntrusted_networks = [\"127.0.0.1\"]\n{config}");
        Policy::new(&crate::config::parse("test.toml", &text).unwrap().policy)
    }

    #[test]
    fn limits_refuse_with_their_replies_and_spare_trusted_clients() {
        let policy = limited(
            "connection_rate = \"2/1m\"\nmessage_rate = \"1/1m\"\nrecipient_rate = \"1/1m\"\nmax_messages_per_session = 2\n",
        );
        let tables = RateTables::default();
        let now = Instant::now();
        let client = ip("::ffff:192.0.2.7");
        let wire =
            |refusal: Refusal| (String::from_utf8(refusal.reply.to_wire()).unwrap(), refusal.limit, refusal.first);

        assert_eq!(policy.connect(&tables, client, "gw.test", now), Ok(()));
        assert_eq!(policy.connect(&tables, client, "gw.test", now), Ok(()));
        let refused = policy.connect(&tables, client, "gw.test", now).unwrap_err();
        let text = "421 4.7.0 gw.test Error: too many connections from 192.0.2.7\r\n";
        assert_eq!(wire(refused), (text.into(), "policy.connection_rate", true));
        assert!(!policy.connect(&tables, client, "gw.test", now).unwrap_err().first);

        assert_eq!(policy.mail(&tables, client, 1, now), Ok(()));
        let refused = policy.mail(&tables, client, 2, now).unwrap_err();
        let text = "451 4.7.1 Error: too much mail from 192.0.2.7\r\n";
        assert_eq!(wire(refused), (text.into(), "policy.message_rate", true));
        let refused = policy.mail(&tables, client, 3, now).unwrap_err();
        let text = "451 4.7.1 Error: too many messages in one session (at most 2); send the rest in a new one\r\n";
        assert_eq!(wire(refused), (text.into(), "policy.max_messages_per_session", true));
        assert!(!policy.mail(&tables, client, 4, now).unwrap_err().first);

        // A recipient refused further on is given back; an accepted one counts.
        let counted = policy.recipient(&tables, client, now).unwrap();
        assert_eq!(counted, Counted::Yes(now));
        policy.uncount_recipient(&tables, client, counted);
        let _accepted = policy.recipient(&tables, client, now).unwrap();
        let refused = policy.recipient(&tables, client, now).unwrap_err();
        let text = "451 4.7.1 Error: too many recipients from 192.0.2.7\r\n";
        assert_eq!(wire(refused), (text.into(), "policy.recipient_rate", true));

        // A minute on, the windows are over.
        let later = now + Duration::from_secs(60);
        assert_eq!(policy.connect(&tables, client, "gw.test", later), Ok(()));
        assert_eq!(policy.mail(&tables, client, 1, later), Ok(()));
        assert_eq!(policy.recipient(&tables, client, later), Ok(Counted::Yes(later)));

        let trusted = ip("127.0.0.1");
        for number in 1..10 {
            assert_eq!(policy.connect(&tables, trusted, "gw.test", now), Ok(()));
            assert_eq!(policy.mail(&tables, trusted, number, now), Ok(()));
            assert_eq!(policy.recipient(&tables, trusted, now), Ok(Counted::No));
        }
    }

    #[test]
    fn no_limits_by_default() {
        let policy = Policy::new(&PolicyConfig::default());
        let tables = RateTables::default();
        let now = Instant::now();
        let client = ip("192.0.2.7");
        for number in 1..1000 {
            assert_eq!(policy.connect(&tables, client, "gw.test", now), Ok(()));
            assert_eq!(policy.mail(&tables, client, number, now), Ok(()));
            assert_eq!(policy.recipient(&tables, client, now), Ok(Counted::No));
        }
    }
}
