//! What a stage may answer: validation at the host boundary, in one place. The runner passes
//! every answer of every stage kind (wasm filter, clamd bridge, built-in test stage) through here
//! before acting on it, because what a filter returns is as untrusted as what a client sends:
//!
//! * a reply must be a reply of its verdict's class, with an enhanced code of that class (or
//!   none), its text cut to reply lines a client reads as one reply;
//! * header changes must name a field and stay within per-answer bounds;
//! * envelope changes (at `end` only) must name one address each, a path a next hop can be sent,
//!   within a per-answer bound;
//! * the body a stage passes on is made CRLF-clean by the very rule the SMTP decoder applies to
//!   client content (`BodyDecoder`), under the same `server.bare_line_endings` policy, as one
//!   stream across chunks and answers, and may not outgrow `server.max_message_size`.
//!
//! Anything else is `Malformed`: a stage failure, handled by the stage's `on_error` like a trap.

use bytes::Bytes;

use super::headers::{HeaderChange, HeaderSection};
use super::stage::{BodyOutput, EnvelopeChange, Reaction, Verdict};
use crate::config::BareLineEndings;
use crate::smtp::parser::{BodyDecoder, Framing};
use crate::smtp::reply::{Reply, MAX_REPLY_LINE};

/// Lines of one reply; the rest of a longer text is dropped.
pub const MAX_REPLY_LINES: usize = 10;
/// Header changes in one answer.
pub const MAX_HEADER_CHANGES: usize = 1000;
/// Octets of field names and values in one answer's header changes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A field name fits the first line of its field, 998 octets, with its colon and a space.
pub const MAX_FIELD_NAME: usize = 996;
/// Envelope changes in one answer.
pub const MAX_ENVELOPE_CHANGES: usize = 1000;
/// A path's address, without its angle brackets (RFC 5321 §4.5.3.1.3: 256 octets with them).
pub const MAX_ADDRESS: usize = 254;

/// Why an answer is not one the host can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{verdict} with non-{class}xx reply {code}")]
    ReplyCode { verdict: &'static str, class: u16, code: u16 },
    #[error("enhanced status code {0:?} is not class.subject.detail")]
    EnhancedSyntax(String),
    #[error("enhanced status code {enhanced} on a {code} reply")]
    EnhancedClass { code: u16, enhanced: String },
    #[error("header change with an empty field name ({0:?} without the characters a name cannot have)")]
    EmptyFieldName(String),
    #[error("header field name of {0} octets (at most {MAX_FIELD_NAME})")]
    LongFieldName(usize),
    #[error("{0} header changes in one answer (at most {MAX_HEADER_CHANGES})")]
    TooManyHeaderChanges(usize),
    #[error("{0} octets of header changes in one answer (at most {MAX_HEADER_BYTES})")]
    HeaderBytes(usize),
    #[error("body output of more than {0} octets (server.max_message_size)")]
    BodyTooLarge(u64),
    #[error("body output with a bare CR or LF (server.bare_line_endings = \"reject\")")]
    BareLineEnding,
    #[error("{0} envelope changes in one answer (at most {MAX_ENVELOPE_CHANGES})")]
    TooManyEnvelopeChanges(usize),
    #[error("envelope change with an address a next hop cannot be sent: {0:?}")]
    BadAddress(String),
}

/// What `[server]` holds every stage's content answers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRules {
    pub max_message_size: u64,
    pub bare_line_endings: BareLineEndings,
}

/// Checks a verdict; a reject or tempfail gets its reply checked and cut to size.
pub fn verdict(verdict: Verdict) -> Result<Verdict, Malformed> {
    Ok(match verdict {
        Verdict::Reject(reply) => Verdict::Reject(reply_of("reject", 5, reply)?),
        Verdict::Tempfail(reply) => Verdict::Tempfail(reply_of("tempfail", 4, reply)?),
        other => other,
    })
}

fn reply_of(verdict: &'static str, class: u16, reply: Reply) -> Result<Reply, Malformed> {
    let Reply { code, enhanced, lines } = reply;
    if code / 100 != class {
        return Err(Malformed::ReplyCode { verdict, class, code });
    }
    // 421 closes the connection (RFC 5321 §3.8), which is not a stage's to decide: the message
    // is refused for now, the session goes on.
    let code = if code == 421 { 451 } else { code };
    let enhanced = enhanced.filter(|e| !e.is_empty());
    if let Some(enhanced) = &enhanced {
        let parts: Vec<&str> = enhanced.split('.').collect();
        let digits =
            |part: &str, most: usize| (1..=most).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
        if !(parts.len() == 3 && digits(parts[0], 1) && digits(parts[1], 3) && digits(parts[2], 3)) {
            return Err(Malformed::EnhancedSyntax(enhanced.clone()));
        }
        if parts[0] != class.to_string() {
            return Err(Malformed::EnhancedClass { code, enhanced: enhanced.clone() });
        }
    }
    // "550-5.7.1 " before the text and CRLF after it.
    let room = MAX_REPLY_LINE - 4 - enhanced.as_ref().map_or(0, |e| e.len() + 1) - 2;
    let mut text: Vec<String> = lines
        .iter()
        .flat_map(|line| line.trim_end_matches(['\r', '\n']).split('\n'))
        .take(MAX_REPLY_LINES)
        .map(|line| cut(line, room))
        .collect();
    if text.is_empty() {
        text.push(String::new());
    }
    Ok(Reply { code, enhanced, lines: text })
}

/// A reply line without control characters, at most `room` octets long.
fn cut(line: &str, room: usize) -> String {
    let mut out = String::with_capacity(line.len().min(room));
    for c in line.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > room {
            break;
        }
        out.push(c);
    }
    out
}

/// Checks one answer's header changes: bounded in number and size, each naming a field (the
/// characters a field name cannot have are dropped; none left is malformed).
fn header_changes(changes: Vec<HeaderChange>) -> Result<Vec<HeaderChange>, Malformed> {
    if changes.len() > MAX_HEADER_CHANGES {
        return Err(Malformed::TooManyHeaderChanges(changes.len()));
    }
    let bytes: usize = changes
        .iter()
        .map(|change| match change {
            HeaderChange::Add { name, value }
            | HeaderChange::Prepend { name, value }
            | HeaderChange::Change { name, value, .. } => name.len() + value.len(),
            HeaderChange::Remove { name, .. } => name.len(),
        })
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Malformed::HeaderBytes(bytes));
    }
    changes
        .into_iter()
        .map(|change| {
            Ok(match change {
                HeaderChange::Add { name, value } => HeaderChange::Add { name: field_name(&name)?, value },
                HeaderChange::Prepend { name, value } => HeaderChange::Prepend { name: field_name(&name)?, value },
                HeaderChange::Change { name, index, value } => {
                    HeaderChange::Change { name: field_name(&name)?, index, value }
                }
                HeaderChange::Remove { name, index } => HeaderChange::Remove { name: field_name(&name)?, index },
            })
        })
        .collect()
}

/// Checks an answer's envelope changes: bounded in number, each address without its angle
/// brackets, non-empty (but for the null sender), no longer than a path allows, and free of
/// white space, controls and brackets, so that it is one `RCPT TO:<…>` or `MAIL FROM:<…>`.
fn envelope_changes(changes: Vec<EnvelopeChange>) -> Result<Vec<EnvelopeChange>, Malformed> {
    if changes.len() > MAX_ENVELOPE_CHANGES {
        return Err(Malformed::TooManyEnvelopeChanges(changes.len()));
    }
    let address = |raw: String, null_allowed: bool| -> Result<String, Malformed> {
        let trimmed = raw.trim();
        let bare = trimmed.strip_prefix('<').and_then(|a| a.strip_suffix('>')).unwrap_or(trimmed);
        let valid = (!bare.is_empty() || null_allowed)
            && bare.len() <= MAX_ADDRESS
            && bare.chars().all(|c| !c.is_control() && !c.is_whitespace() && !"<>".contains(c));
        match valid {
            true => Ok(bare.to_string()),
            false => Err(Malformed::BadAddress(raw.chars().take(80).collect())),
        }
    };
    changes
        .into_iter()
        .map(|change| {
            Ok(match change {
                EnvelopeChange::AddRecipient(a) => EnvelopeChange::AddRecipient(address(a, false)?),
                EnvelopeChange::RemoveRecipient(a) => EnvelopeChange::RemoveRecipient(address(a, false)?),
                EnvelopeChange::ChangeSender(a) => EnvelopeChange::ChangeSender(address(a, true)?),
            })
        })
        .collect()
}

/// Printable ASCII other than ':' (RFC 5322 §3.6.8).
fn field_name(name: &str) -> Result<String, Malformed> {
    let clean: String = name.chars().filter(|c| c.is_ascii_graphic() && *c != ':').collect();
    match clean.len() {
        0 => Err(Malformed::EmptyFieldName(name.chars().take(40).collect())),
        n if n > MAX_FIELD_NAME => Err(Malformed::LongFieldName(n)),
        _ => Ok(clean),
    }
}

/// One stage's content answers over one message. The body it passes on is one stream, checked
/// and normalised across chunks and answers.
pub struct ContentAnswers {
    rules: ContentRules,
    /// The client-content rule (counted framing: no dot handling) over the stage's output.
    decoder: BodyDecoder,
    /// Whether the output has differed from the input. Until then it *is* the input, already
    /// clean, and passes without a copy while `decoder` is kept in step with it.
    diverged: bool,
    /// Whether the input passed on last ended with a CR that `decoder` holds back, waiting for
    /// what follows: its next output starts with that CR, which was sent already.
    cr_sent: bool,
    /// Body octets passed on so far.
    written: u64,
    scratch: Vec<u8>,
}

impl ContentAnswers {
    pub fn new(rules: ContentRules) -> ContentAnswers {
        ContentAnswers {
            rules,
            decoder: BodyDecoder::new(Framing::Counted),
            diverged: false,
            cr_sent: false,
            written: 0,
            scratch: Vec::new(),
        }
    }

    /// The answer to the header section, checked, and the section with its changes applied.
    pub fn headers(&self, reaction: Reaction, section: &HeaderSection) -> Result<(Reaction, HeaderSection), Malformed> {
        let verdict = verdict(reaction.verdict)?;
        let header_changes = header_changes(reaction.header_changes)?;
        let mut changed = section.clone();
        changed.apply(&header_changes);
        Ok((Reaction { header_changes, ..Reaction::verdict(verdict) }, changed))
    }

    /// The answer to a body chunk (`carry_on` for a chunk the stage is not called for): `Pass`
    /// for the chunk unchanged, or the clean bytes to pass on instead. Header changes are not
    /// allowed here and dropped.
    pub fn body(&mut self, chunk: &Bytes, reaction: Reaction) -> Result<Reaction, Malformed> {
        let verdict = verdict(reaction.verdict)?;
        if verdict.is_final() {
            return Ok(Reaction::verdict(verdict));
        }
        let body = match reaction.body {
            BodyOutput::Pass if !self.diverged => {
                self.follow(chunk);
                self.written += chunk.len() as u64;
                BodyOutput::Pass
            }
            BodyOutput::Pass => self.clean(std::slice::from_ref(chunk), false)?,
            BodyOutput::Replace(pieces) => {
                self.diverged = true;
                self.clean(&pieces, false)?
            }
        };
        Ok(Reaction { body, ..Reaction::verdict(verdict) })
    }

    /// The answer at the end of the body: header and envelope changes checked, appended bytes
    /// made clean, and a line end added if the stage's output left its last line open.
    pub fn end(&mut self, reaction: Reaction) -> Result<Reaction, Malformed> {
        let verdict = verdict(reaction.verdict)?;
        if verdict.is_final() {
            return Ok(Reaction::verdict(verdict));
        }
        let header_changes = header_changes(reaction.header_changes)?;
        let envelope = envelope_changes(reaction.envelope)?;
        let body = match reaction.body {
            BodyOutput::Replace(pieces) if !pieces.is_empty() => {
                self.diverged = true;
                self.clean(&pieces, true)?
            }
            _ if self.diverged => self.clean(&[], true)?,
            _ => BodyOutput::Pass,
        };
        Ok(Reaction { verdict, header_changes, body, envelope })
    }

    /// Keeps `decoder` where it would be after the clean input passed so far, without copying:
    /// a line end resets it, so only the bytes after the chunk's last LF need decoding.
    fn follow(&mut self, chunk: &[u8]) {
        let tail = match memchr::memrchr(b'\n', chunk) {
            Some(at) => {
                self.decoder = BodyDecoder::new(Framing::Counted);
                &chunk[at + 1..]
            }
            None => chunk,
        };
        self.scratch.clear();
        self.decoder.decode(tail, &mut self.scratch);
        self.cr_sent = chunk.ends_with(b"\r");
    }

    /// Runs output through the decoder (and its end, with `last`), within the size bound.
    fn clean(&mut self, pieces: &[Bytes], last: bool) -> Result<BodyOutput, Malformed> {
        let limit = self.rules.max_message_size;
        let raw: u64 = pieces.iter().map(|piece| piece.len() as u64).sum();
        // Normalising only adds octets: refuse an oversized answer before touching it.
        if self.written + raw > limit {
            return Err(Malformed::BodyTooLarge(limit));
        }
        let mut out = Vec::with_capacity(raw as usize + 2);
        for piece in pieces {
            self.decoder.decode(piece, &mut out);
        }
        if last {
            self.decoder.finish(&mut out);
        }
        if self.rules.bare_line_endings == BareLineEndings::Reject && self.decoder.bare_line_endings() > 0 {
            return Err(Malformed::BareLineEnding);
        }
        let mut out = Bytes::from(out);
        if self.cr_sent && !out.is_empty() {
            self.cr_sent = false;
            out = out.slice(1..);
        }
        self.written += out.len() as u64;
        if self.written > limit {
            return Err(Malformed::BodyTooLarge(limit));
        }
        Ok(BodyOutput::Replace(if out.is_empty() { Vec::new() } else { vec![out] }))
    }
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
