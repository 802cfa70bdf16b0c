//! `footer`: appends a text footer to plain-text messages (no Content-Type, or `text/plain`, in
//! 7bit/8bit transfer encoding). Multipart and encoded bodies pass unchanged: a footer appended
//! there would land outside any part or corrupt the encoding. It shows body replacement through
//! chunks: the footer is the chunk the filter adds at the end of the message.
//!
//! Config: `text` (required) — the footer; `\n` in it starts a new line. `separator` (optional,
//! default "-- ") — a line put before the footer; empty for none.

use sluice_filter_sdk::{export_filter, Config, ConfigError, Event, Filter, Headers, Interests, Reaction};

pub struct Footer {
    footer: Vec<u8>,
    applies: bool,
    /// Whether the body so far ends with a line break (or is empty).
    at_line_start: bool,
}

impl Filter for Footer {
    fn interests(_config: &Config) -> Interests {
        Interests::NONE.with(Event::Headers).with(Event::Body).with(Event::End)
    }

    fn new(config: &Config) -> Result<Self, ConfigError> {
        let text: String = config.require("text")?;
        let separator = config.get_or("separator", "-- ".to_string())?;
        let mut footer = String::new();
        if !separator.is_empty() {
            footer.push_str(&separator);
            footer.push('\n');
        }
        footer.push_str(text.trim_end_matches('\n'));
        footer.push('\n');
        let footer = footer.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes();
        Ok(Footer { footer, applies: false, at_line_start: true })
    }

    fn on_headers(&mut self, headers: &Headers) -> Reaction {
        let content_type = headers.get("Content-Type").unwrap_or("text/plain").to_ascii_lowercase();
        let encoding = headers.get("Content-Transfer-Encoding").unwrap_or("7bit").to_ascii_lowercase();
        self.applies =
            content_type.trim_start().starts_with("text/plain") && matches!(encoding.trim(), "7bit" | "8bit");
        Reaction::carry_on()
    }

    fn on_body_chunk(&mut self, chunk: &[u8]) -> Reaction {
        if let Some(&last) = chunk.last() {
            self.at_line_start = last == b'\n';
        }
        Reaction::carry_on()
    }

    fn on_end(&mut self) -> Reaction {
        if !self.applies {
            return Reaction::carry_on();
        }
        let mut tail = Vec::with_capacity(self.footer.len() + 2);
        if !self.at_line_start {
            tail.extend_from_slice(b"\r\n");
        }
        tail.extend_from_slice(&self.footer);
        Reaction::carry_on().replace_body(vec![tail])
    }
}

export_filter!(Footer);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_filter_sdk::testing::{run, TestMessage};

    #[test]
    fn appends_to_plain_text() {
        let outcome = run::<Footer>(
            &[("text", "Scanned by Sluice\nhttps://example.org")],
            &TestMessage::new("Subject: s\r\n\r\nHello\r\n").chunked(2),
        )
        .unwrap();
        assert_eq!(outcome.body, b"Hello\r\n-- \r\nScanned by Sluice\r\nhttps://example.org\r\n");
    }

    #[test]
    fn leaves_multipart_and_encoded_bodies_alone() {
        for head in ["Content-Type: multipart/mixed; boundary=x", "Content-Transfer-Encoding: base64"] {
            let content = format!("Subject: s\r\n{head}\r\n\r\nSGVsbG8=\r\n");
            let outcome = run::<Footer>(&[("text", "f")], &TestMessage::new(content)).unwrap();
            assert_eq!(outcome.body, b"SGVsbG8=\r\n", "{head}");
        }
    }

    #[test]
    fn needs_text() {
        assert_eq!(run::<Footer>(&[], &TestMessage::new("\r\n")).unwrap_err().key, "text");
        let config = Config::new(vec![("text".into(), "f".into()), ("seperator".into(), "==".into())]);
        assert_eq!(sluice_filter_sdk::check_config::<Footer>(&config), Ok(vec!["seperator".to_string()]));
    }
}
