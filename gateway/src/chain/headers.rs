//! The message's header section (RFC 5322 §2.2): split off the start of the content, kept as
//! the raw bytes of each field so an unmodified message serializes byte-exact, and changed by
//! stages through `HeaderChange`s.

use crate::smtp::header_meter::HeaderMeter;

/// The most header section the splitter holds, and so the highest `server.max_header_size`. The
/// session refuses a section over `max_header_size` and stops passing content on at that point,
/// so this is only a backstop: the splitter never has to cut a section short.
pub const HEADER_LIMIT: usize = 4 << 20;

/// A change a stage asks for. `index` counts occurrences of `name` from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChange {
    /// Append a field at the end of the header section.
    Add { name: String, value: String },
    /// Insert a field at the top (trace-style fields: signatures, Received).
    Prepend { name: String, value: String },
    /// Replace the value of the index-th `name` field; adds the field if there is none.
    Change { name: String, index: u32, value: String },
    /// Remove the index-th `name` field; index 0 removes all of them.
    Remove { name: String, index: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderSection {
    /// Raw fields, each with its folded continuation lines and final CRLF.
    fields: Vec<Vec<u8>>,
    /// The empty line ending the section, if the content had one.
    separator: Vec<u8>,
}

impl HeaderSection {
    /// Parses a complete header section (as found by `HeaderSplitter`).
    pub fn parse(raw: &[u8]) -> HeaderSection {
        let mut section = HeaderSection::default();
        for line in raw.split_inclusive(|&b| b == b'\n') {
            if line == b"\r\n" || line == b"\n" {
                section.separator = line.to_vec();
            } else if matches!(line.first(), Some(b' ' | b'\t')) && !section.fields.is_empty() {
                section.fields.last_mut().map(|f| f.extend_from_slice(line));
            } else {
                section.fields.push(line.to_vec());
            }
        }
        section
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for field in &self.fields {
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&self.separator);
        out
    }

    pub fn len(&self) -> usize {
        self.fields.iter().map(Vec::len).sum::<usize>() + self.separator.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (name, unfolded value) pairs in order.
    pub fn fields(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.fields.iter().map(|raw| split_field(raw))
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<String> {
        self.fields().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    fn positions(&self, name: &str) -> Vec<usize> {
        (0..self.fields.len()).filter(|&i| split_field(&self.fields[i]).0.eq_ignore_ascii_case(name)).collect()
    }

    pub fn apply(&mut self, change: &HeaderChange) {
        match change {
            HeaderChange::Add { name, value } => self.fields.push(render(name, value)),
            HeaderChange::Prepend { name, value } => self.fields.insert(0, render(name, value)),
            HeaderChange::Change { name, index, value } => {
                match self.positions(name).get((*index as usize).saturating_sub(1)) {
                    Some(&at) => self.fields[at] = render(name, value),
                    None => self.fields.push(render(name, value)),
                }
            }
            HeaderChange::Remove { name, index } => {
                let positions = self.positions(name);
                let doomed: Vec<usize> = match index {
                    0 => positions,
                    n => positions.get(*n as usize - 1).copied().into_iter().collect(),
                };
                for at in doomed.into_iter().rev() {
                    self.fields.remove(at);
                }
            }
        }
        if !self.fields.is_empty() && self.separator.is_empty() {
            // A section that gained fields needs its end marker before the body.
            self.separator = b"\r\n".to_vec();
        }
    }
}

/// A field's name and unfolded, trimmed value.
fn split_field(raw: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(raw);
    let (name, value) = text.split_once(':').unwrap_or((&text, ""));
    let unfolded: String = value.replace("\r\n", "").replace('\n', "");
    (name.trim().to_string(), unfolded.trim().to_string())
}

/// Renders a field; line breaks in the value become folds, so a value can never inject a field.
fn render(name: &str, value: &str) -> Vec<u8> {
    let name: String = name.chars().filter(|c| c.is_ascii_graphic() && *c != ':').collect();
    let mut out = format!("{name}: ").into_bytes();
    for (i, line) in value.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if i > 0 {
            out.extend_from_slice(b"\r\n");
            if !line.starts_with([' ', '\t']) {
                out.push(b'\t');
            }
        }
        out.extend_from_slice(line.replace('\r', " ").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Finds where the header section ends in content that arrives in pieces; `HeaderMeter` decides
/// where, as it does for the session's limit, so the two always agree.
#[derive(Debug, Default)]
pub struct HeaderSplitter {
    buffer: Vec<u8>,
    meter: HeaderMeter,
    /// The section outgrew `HEADER_LIMIT`: nothing more is buffered, there is no section to give.
    overflowed: bool,
}

impl HeaderSplitter {
    /// Adds content; once the header section is complete returns it and the body bytes after it.
    pub fn push(&mut self, chunk: &[u8]) -> Option<(HeaderSection, Vec<u8>)> {
        if self.overflowed {
            return None;
        }
        self.meter.feed(chunk);
        if self.meter.peak() > HEADER_LIMIT as u64 {
            self.overflowed = true;
            self.buffer = Vec::new();
            return None;
        }
        self.buffer.extend_from_slice(chunk);
        let end = self.meter.section()?;
        Some(self.split_at(end as usize))
    }

    /// True once the section outgrew `HEADER_LIMIT`: the message must not be delivered.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// At end of content: whatever was buffered is the header section (a body-less message);
    /// after an overflow, nothing is.
    pub fn finish(&mut self) -> (HeaderSection, Vec<u8>) {
        let end = (self.meter.section_at_end() as usize).min(self.buffer.len());
        self.split_at(end)
    }

    fn split_at(&mut self, at: usize) -> (HeaderSection, Vec<u8>) {
        let rest = self.buffer.split_off(at);
        let section = HeaderSection::parse(&std::mem::take(&mut self.buffer));
        self.meter = HeaderMeter::default();
        (section, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(content: &[u8], piece: usize) -> (HeaderSection, Vec<u8>) {
        let mut splitter = HeaderSplitter::default();
        let mut body = Vec::new();
        let mut section = None;
        for chunk in content.chunks(piece.max(1)) {
            match &section {
                Some(_) => body.extend_from_slice(chunk),
                None => {
                    if let Some((s, rest)) = splitter.push(chunk) {
                        section = Some(s);
                        body = rest;
                    }
                }
            }
        }
        match section {
            Some(s) => (s, body),
            None => splitter.finish(),
        }
    }

    #[test]
    fn splits_byte_exact_however_the_content_is_cut() {
        let cases: &[&[u8]] = &[
            b"Subject: a\r\nX-Folded: one\r\n two\r\n\r\nbody\r\n",
            b"Subject: no body\r\n",
            b"not a header line\r\nSubject: x\r\n",
            b"Subject: a\r\nnot a header\r\nmore\r\n",
            b"\r\nbody only\r\n",
            b"",
        ];
        for content in cases {
            for piece in [1, 2, 5, 100] {
                let (section, body) = split(content, piece);
                let mut joined = section.to_bytes();
                joined.extend_from_slice(&body);
                assert_eq!(&joined, content, "piece {piece}: {:?}", String::from_utf8_lossy(content));
            }
        }
        let (section, body) = split(cases[0], 3);
        assert_eq!(section.get("x-folded").as_deref(), Some("one two"));
        assert_eq!(body, b"body\r\n");
        assert!(split(cases[2], 4).0.is_empty());
    }

    #[test]
    fn a_big_section_is_never_cut() {
        let mut content = Vec::new();
        for n in 0..5000 {
            content.extend_from_slice(format!("X-Pad-{n}: {}\r\n", "p".repeat(80)).as_bytes());
        }
        content.extend_from_slice(b"Subject: last\r\n\r\nbody\r\n");
        for piece in [4096, 64 * 1024] {
            let (section, body) = split(&content, piece);
            assert_eq!(section.get("subject").as_deref(), Some("last"), "piece {piece}");
            assert_eq!(body, b"body\r\n");
        }
    }

    #[test]
    fn past_the_limit_nothing_more_is_held() {
        let mut splitter = HeaderSplitter::default();
        let line = format!("X-Pad: {}\r\n", "p".repeat(1000));
        for _ in 0..=HEADER_LIMIT / line.len() {
            assert!(splitter.push(line.as_bytes()).is_none());
        }
        assert!(splitter.overflowed() && splitter.buffer.is_empty());
        assert!(splitter.push(b"\r\nbody\r\n").is_none(), "no section comes out of an overflowed splitter");
    }

    #[test]
    fn changes() {
        let (mut section, _) = split(b"Subject: a\r\nX-Tag: 1\r\nX-Tag: 2\r\n\r\n", 7);
        section.apply(&HeaderChange::Change { name: "X-Tag".into(), index: 2, value: "two".into() });
        section.apply(&HeaderChange::Prepend { name: "X-First".into(), value: "top".into() });
        section.apply(&HeaderChange::Add { name: "X-Last".into(), value: "a\nInjected: no".into() });
        section.apply(&HeaderChange::Remove { name: "X-Tag".into(), index: 1 });
        assert_eq!(
            section.to_bytes(),
            b"X-First: top\r\nSubject: a\r\nX-Tag: two\r\nX-Last: a\r\n\tInjected: no\r\n\r\n"
        );
        section.apply(&HeaderChange::Remove { name: "x-tag".into(), index: 0 });
        section.apply(&HeaderChange::Change { name: "X-New".into(), index: 1, value: "added".into() });
        assert_eq!(section.get("X-New").as_deref(), Some("added"));
        assert!(section.get("X-Tag").is_none());
        let mut empty = HeaderSection::default();
        empty.apply(&HeaderChange::Add { name: "X-A".into(), value: "1".into() });
        assert_eq!(empty.to_bytes(), b"X-A: 1\r\n\r\n");
    }
}
