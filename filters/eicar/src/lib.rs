//! `eicar`: rejects messages that carry the EICAR anti-virus test file, in the clear or inside a
//! base64-encoded MIME part (as a mail client attaches it). The scanner-less demo filter: it shows
//! a body filter at work without a ClamAV installation.
//!
//! Config (`[stage.config]`, all optional): `reply` — text of the 554 reply
//! (default "Virus found: Eicar-Test-Signature").

use base64::Engine as _;
use sluice_filter_sdk::{export_filter, log, Config, ConfigError, Event, Filter, Interests, Reaction, Verdict};

/// The 68-byte EICAR test file.
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// Longest base64 line we try to decode (RFC 2045 says 76; be generous).
const MAX_B64_LINE: usize = 1000;

pub struct Eicar {
    reply: String,
    /// The tail of the raw body, so a match across chunk boundaries is found.
    raw_tail: Vec<u8>,
    /// The incomplete last line of the body so far.
    line: Vec<u8>,
    /// The tail of the decoded base64 lines (a match may span encoded lines).
    decoded_tail: Vec<u8>,
    found: bool,
}

impl Filter for Eicar {
    fn interests(_config: &Config) -> Interests {
        Interests::NONE.with(Event::Body).with(Event::End)
    }

    fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(Eicar {
            reply: config.get_or("reply", "Virus found: Eicar-Test-Signature".to_string())?,
            raw_tail: Vec::new(),
            line: Vec::new(),
            decoded_tail: Vec::new(),
            found: false,
        })
    }

    fn on_body_chunk(&mut self, chunk: &[u8]) -> Reaction {
        self.found = self.found || scan(&mut self.raw_tail, chunk);
        for &byte in chunk {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.base64_line(&line);
            } else if self.line.len() <= MAX_B64_LINE {
                self.line.push(byte);
            }
        }
        self.verdict()
    }

    fn on_end(&mut self) -> Reaction {
        let line = std::mem::take(&mut self.line);
        self.base64_line(&line);
        self.verdict()
    }
}

impl Eicar {
    fn base64_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let is_base64 = !line.is_empty()
            && line.len().is_multiple_of(4)
            && line.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        if !is_base64 {
            // Not base64 (a boundary or a header line): a match cannot span it.
            self.decoded_tail.clear();
            return;
        }
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(line) {
            self.found = self.found || scan(&mut self.decoded_tail, &decoded);
        }
    }

    fn verdict(&self) -> Reaction {
        if self.found {
            log::info("EICAR test file found");
            return Verdict::reject(554, "5.7.1", self.reply.clone()).into();
        }
        Reaction::carry_on()
    }
}

/// Searches `tail + data` for EICAR, then keeps the last bytes of it as the new tail.
fn scan(tail: &mut Vec<u8>, data: &[u8]) -> bool {
    tail.extend_from_slice(data);
    let found = tail.windows(EICAR.len()).any(|w| w == EICAR);
    let keep = EICAR.len() - 1;
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    found
}

export_filter!(Eicar);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_filter_sdk::testing::{run, TestMessage};

    fn verdict(content: &[u8], chunk: usize) -> Verdict {
        run::<Eicar>(&[], &TestMessage::new(content).chunked(chunk)).unwrap().verdict
    }

    #[test]
    fn finds_eicar_in_the_clear_across_chunks() {
        let mut content = b"Subject: t\r\n\r\nsome text\r\n".to_vec();
        content.extend_from_slice(EICAR);
        content.extend_from_slice(b"\r\n");
        for chunk in [1, 7, 50, 4096] {
            assert!(matches!(verdict(&content, chunk), Verdict::Reject(r) if r.code == 554), "chunk {chunk}");
        }
    }

    #[test]
    fn finds_eicar_in_a_base64_attachment() {
        let encoded = base64::engine::general_purpose::STANDARD.encode([b"prefix bytes ".as_slice(), EICAR].concat());
        let mut content = b"Subject: t\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        for line in encoded.as_bytes().chunks(20) {
            content.extend_from_slice(line);
            content.extend_from_slice(b"\r\n");
        }
        content.extend_from_slice(b"--b--\r\n");
        for chunk in [3, 64, 100_000] {
            assert!(matches!(verdict(&content, chunk), Verdict::Reject(_)), "chunk {chunk}");
        }
    }

    #[test]
    fn reports_keys_it_does_not_know() {
        let config = Config::new(vec![("reply".into(), "No".into()), ("action".into(), "tag".into())]);
        assert_eq!(sluice_filter_sdk::check_config::<Eicar>(&config), Ok(vec!["action".to_string()]));
    }

    #[test]
    fn clean_mail_continues_and_body_is_untouched() {
        let content = b"Subject: t\r\n\r\nX5O!P%@AP[4 almost but not quite\r\nQUJD\r\n";
        let outcome = run::<Eicar>(&[], &TestMessage::new(content)).unwrap();
        assert_eq!(outcome.verdict, Verdict::Continue);
        assert_eq!(outcome.body, b"X5O!P%@AP[4 almost but not quite\r\nQUJD\r\n");
    }
}
