//! The checks of the `config`, `header_section`, `proxy_header` and `milter_reply` fuzz targets,
//! each taking the raw fuzz input. Shared with the main workspace's `gateway/tests/fuzz_smoke.rs` (through a
//! `#[path]` include), which replays the kept corpus (`gateway/fuzz/seeds/`) through them on
//! every `make test`; so this file uses only `sluice` and `std`.

use sluice::chain::headers::{HeaderChange, HeaderSection, HeaderSplitter};
use sluice::config::{self, ConfigError};
use sluice::milter::codec::{decode_reply, DecodeError, PacketReader, Reply};
use sluice::proxy_header::{self, Parsed, MAX_LENGTH};
use sluice::smtp::header_meter::HeaderMeter;

/// Config text (lossy UTF-8) through parsing and validation: never a panic; an error names the
/// file and a line and column inside the text, a key and what is wrong; the same text parses the
/// same way twice.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let first = config::parse("fuzz.toml", &text);
    match &first {
        Ok(config) => {
            for key in ["server.listen", "relay.address", "stage[0].config", "admin.token_file"] {
                assert!(config.locate(key).starts_with("fuzz.toml:"), "{key}");
            }
        }
        Err(ConfigError::Invalid { file, line, column, key, message }) => {
            assert_eq!(file, "fuzz.toml");
            let lines = text.split('\n').count();
            assert!((1..=lines).contains(line), "line {line} of {lines}: {message}");
            assert!(*column >= 1, "column {column}: {message}");
            assert!(!key.is_empty(), "an error naming no key: {message:?}");
            assert!(!message.is_empty(), "an error saying nothing, at line {line} column {column} ({key}) of {text:?}");
            let shown = first.as_ref().unwrap_err().to_string();
            assert!(shown.starts_with(&format!("fuzz.toml:{line}:{column}: ")), "{shown}");
        }
        Err(err @ ConfigError::Read { .. }) => panic!("parsing text read a file: {err}"),
    }
    let again = config::parse("fuzz.toml", &text);
    assert_eq!(first.as_ref().ok(), again.as_ref().ok(), "parsing is not deterministic");
    assert_eq!(first.is_err().then(|| first.as_ref().unwrap_err().to_string()), again.err().map(|e| e.to_string()));
}

/// Message content up to a 0xFF byte (CRLF-normalized and ending in CRLF, as the chain gets
/// it), then a script of header changes. The header section splits off byte-exact however the
/// content is cut, `HeaderMeter` agrees with the splitter, re-parsing is the identity, and after
/// the changes the section holds exactly the fields a naive model predicts, which a re-parse and
/// the meter read back whole (no change can add a field, cut the section short or end it).
pub fn header_section(data: &[u8]) {
    let (content, script) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let content = crlf_content(content);
    let piece = usize::from(script.first().copied().unwrap_or(0) % 13) + 1;
    let (section, body) = split(&content, content.len().max(1));
    assert_eq!([section.to_bytes(), body.clone()].concat(), content, "the split loses or adds bytes");
    for size in [1, piece] {
        assert_eq!(split(&content, size), (section.clone(), body.clone()), "split in pieces of {size}");
    }
    let whole = meter(&content, content.len().max(1));
    for size in [1, piece] {
        let pieces = meter(&content, size);
        assert_eq!(
            (pieces.section(), pieces.section_at_end(), pieces.peak()),
            (whole.section(), whole.section_at_end(), whole.peak()),
            "meter in pieces of {size}"
        );
    }
    let length = section.to_bytes().len() as u64;
    assert_eq!(whole.section().unwrap_or(whole.section_at_end()), length, "meter and splitter disagree");
    assert!(whole.peak() >= length);
    assert_eq!(HeaderSection::parse(&section.to_bytes()), section, "re-parsing a section changes it");

    let changes = changes(script);
    let mut model: Vec<String> = section.fields().map(|(name, _)| name.to_ascii_lowercase()).collect();
    changes.iter().for_each(|change| model_apply(&mut model, change));
    let mut changed = section.clone();
    changed.apply(&changes);
    let names: Vec<String> = changed.fields().map(|(name, _)| name.to_ascii_lowercase()).collect();
    assert_eq!(names, model, "fields after {changes:?}");
    if !changes.is_empty() && !changed.is_empty() {
        let bytes = changed.to_bytes();
        let reparsed: Vec<(String, String)> = HeaderSection::parse(&bytes).fields().collect();
        assert_eq!(reparsed, changed.fields().collect::<Vec<_>>(), "the changed section reads back otherwise");
        let mut meter = HeaderMeter::default();
        meter.feed(&bytes);
        meter.feed(b"body\r\n");
        assert_eq!(meter.section(), Some(bytes.len() as u64), "the changed section ends elsewhere");
    }
}

/// A PROXY header, as a listener reads it: never a panic; a complete header is no longer than
/// the input or `MAX_LENGTH`; `Incomplete` only below `MAX_LENGTH`; and once the bytes so far
/// give an answer, more bytes do not change it, so reading the input in any pieces gives the
/// answer of the whole.
pub fn proxy_header(data: &[u8]) {
    let whole = proxy_header::parse(data);
    match &whole {
        Ok(Parsed::Complete { length, .. }) => assert!(*length >= 1 && *length <= data.len().min(MAX_LENGTH)),
        Ok(Parsed::Incomplete) => assert!(data.len() < MAX_LENGTH, "Incomplete at {} bytes", data.len()),
        Err(err) => assert!(!err.to_string().is_empty()),
    }
    // The listener never has more than MAX_LENGTH bytes to look at.
    let seen = data.len().min(MAX_LENGTH);
    let first = (0..=seen).find(|&end| proxy_header::parse(&data[..end]) != Ok(Parsed::Incomplete));
    match first {
        Some(first) => {
            for end in first..=seen {
                assert_eq!(proxy_header::parse(&data[..end]), whole, "{end} bytes answer otherwise than {first}");
            }
        }
        None => assert_eq!(whole, Ok(Parsed::Incomplete)),
    }
}

/// The packet limit of the `milter_reply` check: a body piece and some.
const MILTER_MAX: usize = 64 * 1024 + 16;

/// A milter's reply stream after a split-pattern byte, pushed into a `PacketReader` in the
/// pieces the pattern cuts, as the socket would deliver it: never a panic; every reply re-encodes
/// to exactly the frame it came from, or, for the one spare NUL after a last string the decoder
/// tolerates, to that frame without it, and decodes back to itself; the reader's frames are
/// `decode_reply`'s; a bad length is refused as soon as its 4 bytes are in, consumes nothing and
/// stays refused; a frame that does not decode is consumed whole; `None` only while the buffered
/// bytes hold no whole frame. Reading stops at the first error.
pub fn milter_reply(data: &[u8]) {
    let Some((&pattern, stream)) = data.split_first() else { return };
    let mut reader = PacketReader::new(MILTER_MAX);
    let (mut pushed, mut consumed) = (0, 0);
    for size in milter_pieces(pattern, stream.len()) {
        reader.push(&stream[pushed..pushed + size]);
        pushed += size;
        loop {
            let result = reader.next_reply();
            let now = pushed - reader.buffered();
            match result {
                Ok(None) => {
                    assert_eq!(now, consumed, "None after consuming bytes");
                    let rest = &stream[consumed..pushed];
                    assert!(rest.len() < 4 || rest.len() - 4 < frame_length(rest), "None with a whole frame in");
                    break;
                }
                Ok(Some(reply)) => {
                    milter_frame(&stream[consumed..now], &reply);
                    consumed = now;
                }
                Err(err) => {
                    let rest = &stream[consumed..pushed];
                    match err {
                        DecodeError::Empty | DecodeError::TooLong { .. } => {
                            assert_eq!(now, consumed, "{err}: bytes consumed");
                            assert!(pushed - size < consumed + 4, "{err}: not refused when its length came in");
                            match err {
                                DecodeError::TooLong { length, max } => {
                                    assert_eq!((length, max), (frame_length(rest), MILTER_MAX));
                                    assert!(length > max);
                                }
                                _ => assert_eq!(frame_length(rest), 0),
                            }
                            assert_eq!(reader.next_reply(), Err(err), "a bad length refused once only");
                        }
                        err => {
                            let frame = &stream[consumed..now];
                            assert!(
                                frame.len() >= 5 && frame_length(frame) == frame.len() - 4,
                                "{err} after a part frame"
                            );
                            assert_eq!(decode_reply(frame[4], &frame[5..]), Err(err));
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// How the split-pattern byte cuts `len` bytes: its low 2 bits pick all at once, byte by byte,
/// pieces of `step` (the other 6 bits, plus 1) or pieces growing 1, 2, .. `step` over and over.
fn milter_pieces(pattern: u8, len: usize) -> Vec<usize> {
    let step = usize::from(pattern >> 2) + 1;
    let mut sizes = Vec::new();
    let mut left = len;
    while left > 0 {
        let size = match pattern & 3 {
            0 => left,
            1 => 1,
            2 => step,
            _ => sizes.len() % step + 1,
        };
        sizes.push(size.min(left));
        left -= size.min(left);
    }
    sizes
}

/// The length field at the start of at least 4 bytes.
fn frame_length(bytes: &[u8]) -> usize {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize
}

/// A reply against the frame it was read from.
fn milter_frame(frame: &[u8], reply: &Reply) {
    assert!(frame.len() >= 5 && frame_length(frame) == frame.len() - 4, "a reply from a part frame");
    assert_eq!(frame[4], reply.code(), "{}", reply.name());
    assert_eq!(decode_reply(frame[4], &frame[5..]).as_ref(), Ok(reply), "the reader and decode_reply disagree");
    let mut encoded = Vec::new();
    reply.encode(&mut encoded);
    if encoded != frame {
        assert_eq!([&encoded[5..], &[0][..]].concat(), &frame[5..], "{reply:?} re-encodes otherwise");
    }
    assert_eq!(decode_reply(encoded[4], &encoded[5..]).as_ref(), Ok(reply), "decode(encode({reply:?}))");
}

/// Content as the chain sees it: every bare CR or LF made CRLF, and a line end at the end.
fn crlf_content(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 2);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' | b'\n' => {
                i += usize::from(raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n'));
                out.extend_from_slice(b"\r\n");
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn split(content: &[u8], piece: usize) -> (HeaderSection, Vec<u8>) {
    let mut splitter = HeaderSplitter::default();
    let mut chunks = content.chunks(piece);
    for chunk in chunks.by_ref() {
        if let Some((section, mut body)) = splitter.push(chunk) {
            chunks.for_each(|rest| body.extend_from_slice(rest));
            return (section, body);
        }
    }
    splitter.finish()
}

fn meter(content: &[u8], piece: usize) -> HeaderMeter {
    let mut meter = HeaderMeter::default();
    content.chunks(piece).for_each(|chunk| meter.feed(chunk));
    meter
}

/// Names that collide, in different cases, with each other and with common fields.
const NAMES: [&str; 5] = ["Subject", "X-Tag", "x-tag", "Received", "X-A"];

/// Changes from a script: per change an opcode byte, an index byte and a length-prefixed value.
fn changes(script: &[u8]) -> Vec<HeaderChange> {
    let mut changes = Vec::new();
    let mut rest = script.get(1..).unwrap_or_default();
    while let [op, index, length, tail @ ..] = rest {
        let (value, tail) = tail.split_at(usize::from(*length).min(tail.len()));
        let name = NAMES[usize::from(*op / 4) % NAMES.len()].to_string();
        let value = String::from_utf8_lossy(value).into_owned();
        let index = u32::from(*index % 4);
        changes.push(match op % 4 {
            0 => HeaderChange::Add { name, value },
            1 => HeaderChange::Prepend { name, value },
            2 => HeaderChange::Change { name, index, value },
            _ => HeaderChange::Remove { name, index },
        });
        rest = tail;
    }
    changes
}

/// What `HeaderSection::apply` does to the list of field names, one change at a time.
fn model_apply(names: &mut Vec<String>, change: &HeaderChange) {
    let key = change.name().to_ascii_lowercase();
    let positions: Vec<usize> = (0..names.len()).filter(|&i| names[i] == key).collect();
    match change {
        HeaderChange::Add { .. } => names.push(key),
        HeaderChange::Prepend { .. } => names.insert(0, key),
        HeaderChange::Change { index, .. } => {
            if positions.get((*index as usize).saturating_sub(1)).is_none() {
                names.push(key);
            }
        }
        HeaderChange::Remove { index: 0, .. } => names.retain(|name| *name != key),
        HeaderChange::Remove { index, .. } => {
            if let Some(&at) = positions.get(*index as usize - 1) {
                names.remove(at);
            }
        }
    }
}
