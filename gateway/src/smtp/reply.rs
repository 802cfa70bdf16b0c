//! SMTP replies: code, enhanced status code (RFC 3463) and text, rendered with multi-line framing,
//! and parsed back when they come from the next hop.

use std::fmt;

/// The longest reply line, code and CRLF included (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as "2.0.0"; kept as text so next-hop codes pass through intact.
    pub enhanced: Option<String>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply { code, enhanced: Some(enhanced.to_string()), lines: vec![text.into()] }
    }

    /// A reply without an enhanced code (greeting, EHLO, 354 — RFC 2034 excludes those).
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply { code, enhanced: None, lines: vec![text.into()] }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Wire form, CRLF-terminated, one line per text line. Control bytes in the text are left
    /// out: whoever wrote it (a filter, the next hop), a reply line can never end early or carry
    /// a second reply.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}", self.code, sep).as_bytes());
            if let Some(enhanced) = &self.enhanced {
                out.extend_from_slice(enhanced.as_bytes());
                out.push(b' ');
            }
            out.extend(line.bytes().filter(|b| !b.is_ascii_control()));
            out.extend_from_slice(b"\r\n");
        }
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
        }
        out
    }

    /// Parses complete reply lines (without CRLF) from a next hop; None if malformed.
    pub fn parse_lines(raw: &[String]) -> Option<Reply> {
        let mut code = None;
        let mut enhanced = None;
        let mut lines = Vec::with_capacity(raw.len());
        for line in raw {
            let this: u16 = line.get(..3)?.parse().ok()?;
            if !(200..600).contains(&this) || *code.get_or_insert(this) != this {
                return None;
            }
            let text = line.get(4..).unwrap_or("");
            let (this_enhanced, rest) = split_enhanced(this, text);
            if enhanced.is_none() {
                enhanced = this_enhanced;
            }
            lines.push(rest.to_string());
        }
        Some(Reply { code: code?, enhanced, lines })
    }

    /// The text of all lines joined, for logs.
    pub fn summary(&self) -> String {
        let text = self.lines.join(" / ");
        match &self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, text),
            None => format!("{} {}", self.code, text),
        }
    }
}

/// Splits a leading "x.y.z " enhanced code whose class matches the reply code's first digit.
fn split_enhanced(code: u16, text: &str) -> (Option<String>, &str) {
    let (candidate, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = candidate.split('.');
    let class = parts.next();
    let well_formed = candidate.split('.').count() == 3
        && candidate.split('.').all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if well_formed && class == Some(&(code / 100).to_string()) {
        (Some(candidate.to_string()), rest)
    } else {
        (None, text)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_multiline() {
        let reply =
            Reply { code: 250, enhanced: None, lines: vec!["gw Hello".into(), "PIPELINING".into(), "CHUNKING".into()] };
        assert_eq!(reply.to_wire(), b"250-gw Hello\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
        assert_eq!(Reply::new(550, "5.1.1", "no").to_wire(), b"550 5.1.1 no\r\n");
        // A next hop's "250 ok\r250 injected" read as one line stays one line on our wire.
        let reply = Reply::parse_lines(&["250 ok\r250 injected\x00".into()]).unwrap();
        assert_eq!(reply.to_wire(), b"250 ok250 injected\r\n");
    }

    #[test]
    fn parses_next_hop_replies() {
        let reply = Reply::parse_lines(&["451-4.3.0 first".into(), "451 4.3.0 second".into()]).unwrap();
        assert_eq!(reply.code, 451);
        assert_eq!(reply.enhanced.as_deref(), Some("4.3.0"));
        assert_eq!(reply.lines, vec!["first", "second"]);
        let reply = Reply::parse_lines(&["250 Ok".into()]).unwrap();
        assert_eq!((reply.enhanced, reply.lines), (None, vec!["Ok".to_string()]));
        assert!(Reply::parse_lines(&["250-a".into(), "550 b".into()]).is_none());
        assert!(Reply::parse_lines(&["xyz".into()]).is_none());
        // A 5.x.x code on a 250 reply is text, not an enhanced code.
        let reply = Reply::parse_lines(&["250 5.1.1 odd".into()]).unwrap();
        assert_eq!(reply.enhanced, None);
    }
}
