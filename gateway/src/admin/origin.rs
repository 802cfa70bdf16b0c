//! Whether a request to the admin API comes from the API's own page or a tool, not from another
//! web page in the operator's browser, pure. A page elsewhere can send simple requests to
//! 127.0.0.1 (a POST /reload needs no preflight), and a name rebound to 127.0.0.1 makes its
//! requests same-origin for the browser; so: an `Origin`, when sent, must be the API's own, and on
//! a loopback listener `Host` must name loopback.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("cross-origin request (Origin {0}) refused: use the admin API's own page or a tool")]
    CrossOrigin(String),
    #[error("Host {0:?} is not a loopback name: the admin API listens on loopback only")]
    NotLoopback(String),
}

/// `host`, `origin`: the request's headers; `loopback`: whether the API listens on loopback.
pub fn check(host: Option<&str>, origin: Option<&str>, loopback: bool) -> Result<(), Refusal> {
    let host = host.unwrap_or_default();
    if let Some(origin) = origin {
        let own = [format!("http://{host}"), format!("https://{host}")];
        if host.is_empty() || !own.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Err(Refusal::CrossOrigin(origin.chars().take(100).collect()));
        }
    }
    if loopback && !names_loopback(host) {
        return Err(Refusal::NotLoopback(host.chars().take(100).collect()));
    }
    Ok(())
}

/// `127.0.0.1:8025`, `[::1]:8025`, `localhost:8025` (ports optional).
fn names_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| match port.parse::<u16>() {
            Ok(_) => name,
            Err(_) => host,
        }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_page_and_tools_pass_others_do_not() {
        let cases: [(Option<&str>, Option<&str>, bool, bool); 11] = [
            (Some("127.0.0.1:8025"), None, true, true),
            (Some("127.0.0.1:8025"), Some("http://127.0.0.1:8025"), true, true),
            (Some("localhost:8025"), Some("http://localhost:8025"), true, true),
            (Some("[::1]:8025"), None, true, true),
            (Some("127.0.0.2"), None, true, true),
            (Some("127.0.0.1:8025"), Some("https://evil.example"), true, false),
            (Some("127.0.0.1:8025"), Some("null"), true, false),
            (Some("evil.example:8025"), None, true, false),
            (Some("evil.example:8025"), Some("http://evil.example:8025"), true, false),
            (None, None, true, false),
            (Some("mx1.example:8025"), Some("http://mx1.example:8025"), false, true),
        ];
        for (host, origin, loopback, ok) in cases {
            assert_eq!(check(host, origin, loopback).is_ok(), ok, "{host:?} {origin:?} loopback={loopback}");
        }
    }
}
