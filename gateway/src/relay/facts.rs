//! What the next hop is told of the client a transaction came from (XFORWARD, `Received:`), so
//! its logs and policy apply to the real client, not to Sluice. The session driver builds these
//! facts from its session and passes them with each transaction.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFacts {
    pub addr: IpAddr,
    pub port: u16,
    /// The client's reverse name; None: not known (Sluice does no lookups).
    pub name: Option<String>,
    /// The name the client gave in HELO/EHLO (empty if it gave none).
    pub helo: String,
    pub proto: Proto,
    /// The client's own STARTTLS, as `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`
    /// (`relay::tls::describe`); None: plain text.
    pub tls: Option<String>,
}

/// How the client introduced itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HELO.
    Smtp,
    /// EHLO.
    Esmtp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Smtp => "SMTP",
            Proto::Esmtp => "ESMTP",
        }
    }
}

impl ClientFacts {
    /// The address as SMTP writes it inside brackets: `192.0.2.1`, `IPv6:2001:db8::1`.
    pub fn address_literal(&self) -> String {
        match self.addr.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("IPv6:{v6}"),
        }
    }
}
