//! Where a milter listens, as Postfix writes it: `inet:HOST:PORT` (`inet:[::1]:PORT` for IPv6)
//! or `unix:/path/to/socket`.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    /// `host:port`, ready for a TCP connect.
    Inet(String),
    Unix(PathBuf),
}

impl MilterAddress {
    pub fn parse(text: &str) -> Option<MilterAddress> {
        if let Some(path) = text.strip_prefix("unix:") {
            return (!path.is_empty()).then(|| MilterAddress::Unix(PathBuf::from(path)));
        }
        let rest = text.strip_prefix("inet:")?;
        let (host, port) = rest.rsplit_once(':')?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let valid = !host.is_empty() && !host.contains(['[', ']']) && port.parse::<u16>().is_ok_and(|p| p > 0);
        valid.then(|| match host.contains(':') {
            true => MilterAddress::Inet(format!("[{host}]:{port}")),
            false => MilterAddress::Inet(format!("{host}:{port}")),
        })
    }
}

/// As the config spells it.
impl std::fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MilterAddress::Inet(address) => write!(f, "inet:{address}"),
            MilterAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let inet = |s: &str| Some(MilterAddress::Inet(s.into()));
        let cases = [
            ("inet:127.0.0.1:11332", inet("127.0.0.1:11332")),
            ("inet:localhost:8891", inet("localhost:8891")),
            ("inet:[::1]:8891", inet("[::1]:8891")),
            ("unix:/run/opendkim/opendkim.sock", Some(MilterAddress::Unix("/run/opendkim/opendkim.sock".into()))),
            ("127.0.0.1:11332", None),
            ("inet:127.0.0.1", None),
            ("inet::11332", None),
            ("inet:127.0.0.1:0", None),
            ("inet:127.0.0.1:99999", None),
            ("unix:", None),
            ("local:/x", None),
        ];
        for (text, expected) in cases {
            assert_eq!(MilterAddress::parse(text), expected, "{text}");
        }
        assert_eq!(MilterAddress::parse("inet:[::1]:8891").unwrap().to_string(), "inet:[::1]:8891");
    }
}
