//! The message's header section (RFC 5322 §2.2): split off the start of the content, kept as
//! the raw bytes of each field so an unmodified message serializes byte-exact, and changed by
//! stages through `HeaderChange`s, applied in linear time (fields written by `field`).

use std::collections::{HashMap, VecDeque};

use super::field::{render, MAX_LINE};

use crate::smtp::header_meter::{is_field_start, HeaderMeter};

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

    /// The fields as they are, each with its folds and final CRLF.
    pub fn raw_fields(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.fields.iter().map(Vec::as_slice)
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<String> {
        self.fields().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Ends the section before a body whose first line is `opening` (or starts so) when the body
    /// could otherwise be read as more of the section. A section without its empty line is
    /// followed by a line that is no field (that is how the splitter found its end), but a stage
    /// may have replaced that body, or given a body-less message one.
    pub fn close_before(&mut self, opening: &BodyOpening) {
        let opening = &opening.0[..];
        let continues = matches!(opening.first(), Some(b' ' | b'\t')) || is_field_start(opening);
        if continues && self.separator.is_empty() && !self.fields.is_empty() {
            self.separator = b"\r\n".to_vec();
        }
    }

    /// Applies one answer's changes, in order, in time linear in the section and the changes: the
    /// fields are indexed once by the names the changes mention, so finding the index-th field of
    /// a name, adding, prepending and changing cost O(1) each, and removing the index-th of m
    /// fields of one name moves at most m indices (never field bytes). Names must be valid field
    /// names (`chain::answer` checks every stage's changes before they get here).
    pub fn apply(&mut self, changes: &[HeaderChange]) {
        if changes.is_empty() {
            return;
        }
        let mut edit = Edit::new(std::mem::take(&mut self.fields), changes);
        for change in changes {
            edit.apply(change);
        }
        self.fields = edit.into_fields();
        if !self.fields.is_empty() && self.separator.is_empty() {
            // A section that gained fields needs its end marker before the body.
            self.separator = b"\r\n".to_vec();
        }
    }
}

/// A header section under change. Fields keep their slot for the whole edit; a prepended field
/// is listed apart, so inserting at the top shifts nothing.
struct Edit {
    /// The section's fields, then the added and prepended ones as they came; None once removed.
    slots: Vec<Option<Vec<u8>>>,
    /// Whether a slot was prepended (it is then listed in `top`, not in slot order).
    on_top: Vec<bool>,
    /// Prepended slots, the latest (topmost) last.
    top: Vec<usize>,
    /// The live slots of each name the changes mention (lower-cased), in section order.
    by_name: HashMap<Vec<u8>, VecDeque<usize>>,
}

impl Edit {
    fn new(fields: Vec<Vec<u8>>, changes: &[HeaderChange]) -> Edit {
        let mut by_name: HashMap<Vec<u8>, VecDeque<usize>> =
            changes.iter().map(|change| (name_key(change.name().as_bytes()), VecDeque::new())).collect();
        for (slot, raw) in fields.iter().enumerate() {
            let name = memchr::memchr(b':', raw).map_or(&raw[..], |colon| &raw[..colon]);
            if let Some(slots) = by_name.get_mut(&name_key(name)) {
                slots.push_back(slot);
            }
        }
        let on_top = vec![false; fields.len()];
        Edit { slots: fields.into_iter().map(Some).collect(), on_top, top: Vec::new(), by_name }
    }

    fn apply(&mut self, change: &HeaderChange) {
        let key = name_key(change.name().as_bytes());
        match change {
            HeaderChange::Add { name, value } => self.add(key, render(name, value)),
            HeaderChange::Prepend { name, value } => {
                let slot = self.push(render(name, value), true);
                self.top.push(slot);
                self.named(key).push_front(slot);
            }
            HeaderChange::Change { name, index, value } => {
                let found = self.named(key.clone()).get((*index as usize).saturating_sub(1)).copied();
                match found {
                    Some(slot) => self.slots[slot] = Some(render(name, value)),
                    None => self.add(key, render(name, value)),
                }
            }
            HeaderChange::Remove { name: _, index } => {
                let slots = self.named(key);
                let doomed: Vec<usize> = match index {
                    0 => slots.drain(..).collect(),
                    n => slots.remove(*n as usize - 1).into_iter().collect(),
                };
                for slot in doomed {
                    self.slots[slot] = None;
                }
            }
        }
    }

    fn named(&mut self, key: Vec<u8>) -> &mut VecDeque<usize> {
        self.by_name.entry(key).or_default()
    }

    fn push(&mut self, raw: Vec<u8>, on_top: bool) -> usize {
        self.slots.push(Some(raw));
        self.on_top.push(on_top);
        self.slots.len() - 1
    }

    fn add(&mut self, key: Vec<u8>, raw: Vec<u8>) {
        let slot = self.push(raw, false);
        self.named(key).push_back(slot);
    }

    fn into_fields(self) -> Vec<Vec<u8>> {
        let Edit { mut slots, on_top, top, .. } = self;
        let mut fields: Vec<Vec<u8>> = top.iter().rev().filter_map(|&slot| slots[slot].take()).collect();
        fields.extend(slots.into_iter().zip(on_top).filter(|(_, top)| !top).filter_map(|(raw, _)| raw));
        fields
    }
}

impl HeaderChange {
    pub fn name(&self) -> &str {
        match self {
            HeaderChange::Add { name, .. }
            | HeaderChange::Prepend { name, .. }
            | HeaderChange::Change { name, .. }
            | HeaderChange::Remove { name, .. } => name,
        }
    }
}

/// A field name as the index compares it: trimmed, ASCII letters lower-cased.
fn name_key(name: &[u8]) -> Vec<u8> {
    name.trim_ascii().to_ascii_lowercase()
}

/// A field's name and unfolded, trimmed value.
fn split_field(raw: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(raw);
    let (name, value) = text.split_once(':').unwrap_or((&text, ""));
    let unfolded: String = value.replace("\r\n", "").replace('\n', "");
    (name.trim().to_string(), unfolded.trim().to_string())
}

/// The first line of a body (up to a line's length), gathered from its first chunks.
#[derive(Debug, Default)]
pub struct BodyOpening(Vec<u8>);

impl BodyOpening {
    pub fn see(&mut self, chunk: &[u8]) {
        if self.0.len() <= MAX_LINE && !self.0.contains(&b'\n') {
            let room = MAX_LINE + 1 - self.0.len();
            self.0.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
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
    fn a_section_without_its_empty_line_is_closed_before_a_body_that_would_continue_it() {
        let opening = |pieces: &[&[u8]]| {
            let mut opening = BodyOpening::default();
            pieces.iter().for_each(|piece| opening.see(piece));
            opening
        };
        let cases: &[(&[&[u8]], &[u8])] = &[
            (&[b"X-Inj", b"ected: yes\r\n"], b"Subject: s\r\n\r\n"),
            (&[b" folded on\r\n"], b"Subject: s\r\n\r\n"),
            // What the splitter itself found: the body starts with a line that is no field.
            (&[b"not a field\r\nX-A: 1\r\n"], b"Subject: s\r\n"),
            (&[b""], b"Subject: s\r\n"),
        ];
        for (pieces, head) in cases {
            let mut section = HeaderSection::parse(b"Subject: s\r\n");
            section.close_before(&opening(pieces));
            assert_eq!(section.to_bytes(), *head, "{pieces:?}");
        }
        let mut long = BodyOpening::default();
        long.see(&[b'x'; 5000]);
        assert_eq!(long.0.len(), MAX_LINE + 1);
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
        section.apply(&[
            HeaderChange::Change { name: "X-Tag".into(), index: 2, value: "two".into() },
            HeaderChange::Prepend { name: "X-First".into(), value: "top".into() },
            HeaderChange::Add { name: "X-Last".into(), value: "a\nInjected: no".into() },
            HeaderChange::Remove { name: "X-Tag".into(), index: 1 },
        ]);
        assert_eq!(
            section.to_bytes(),
            b"X-First: top\r\nSubject: a\r\nX-Tag: two\r\nX-Last: a\r\n\tInjected: no\r\n\r\n"
        );
        section.apply(&[
            HeaderChange::Remove { name: "x-tag".into(), index: 0 },
            HeaderChange::Change { name: "X-New".into(), index: 1, value: "added".into() },
        ]);
        assert_eq!(section.get("X-New").as_deref(), Some("added"));
        assert!(section.get("X-Tag").is_none());
        let mut empty = HeaderSection::default();
        empty.apply(&[HeaderChange::Add { name: "X-A".into(), value: "1".into() }]);
        assert_eq!(empty.to_bytes(), b"X-A: 1\r\n\r\n");
    }

    /// The semantics of `apply`, one change at a time with a scan per change (the quadratic way).
    fn apply_by_scanning(fields: &mut Vec<(String, String)>, change: &HeaderChange) {
        let positions = |fields: &Vec<(String, String)>, name: &str| -> Vec<usize> {
            (0..fields.len()).filter(|&i| fields[i].0.eq_ignore_ascii_case(name)).collect()
        };
        match change {
            HeaderChange::Add { name, value } => fields.push((name.clone(), value.clone())),
            HeaderChange::Prepend { name, value } => fields.insert(0, (name.clone(), value.clone())),
            HeaderChange::Change { name, index, value } => {
                match positions(fields, name).get((*index as usize).saturating_sub(1)) {
                    Some(&at) => fields[at] = (name.clone(), value.clone()),
                    None => fields.push((name.clone(), value.clone())),
                }
            }
            HeaderChange::Remove { name, index } => {
                let positions = positions(fields, name);
                let doomed: Vec<usize> = match index {
                    0 => positions,
                    n => positions.get(*n as usize - 1).copied().into_iter().collect(),
                };
                for at in doomed.into_iter().rev() {
                    fields.remove(at);
                }
            }
        }
    }

    #[test]
    fn indexed_application_matches_one_scan_per_change() {
        // A fixed pseudo-random sequence of changes over few names, so indices hit and miss.
        let mut seed: u32 = 7;
        let mut next = move |n: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) % n
        };
        let names = ["A", "b", "X-Tag", "x-tag", "Subject"];
        for round in 0..50 {
            let raw = b"Subject: s\r\nX-Tag: 1\r\nA: a\r\nx-TAG: 2\r\n\r\n";
            let mut section = HeaderSection::parse(raw);
            let mut model: Vec<(String, String)> = section.fields().collect();
            let changes: Vec<HeaderChange> = (0..round)
                .map(|i| {
                    let name = names[next(names.len() as u32) as usize].to_string();
                    let value = format!("v{i}");
                    match next(4) {
                        0 => HeaderChange::Add { name, value },
                        1 => HeaderChange::Prepend { name, value },
                        2 => HeaderChange::Change { name, index: next(4), value },
                        _ => HeaderChange::Remove { name, index: next(4) },
                    }
                })
                .collect();
            changes.iter().for_each(|change| apply_by_scanning(&mut model, change));
            section.apply(&changes);
            let got: Vec<(String, String)> = section.fields().collect();
            let names_only = |fields: &[(String, String)]| -> Vec<(String, String)> {
                fields.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect()
            };
            assert_eq!(names_only(&got), names_only(&model), "round {round}: {changes:?}");
        }
    }

    #[test]
    fn twenty_thousand_changes_on_absent_fields_apply_in_order() {
        let mut section = HeaderSection::parse(&b"X-Present: 1\r\n".repeat(1000));
        let changes: Vec<HeaderChange> = (0..20_000)
            .map(|i| HeaderChange::Change { name: format!("X-Absent-{i}"), index: 1, value: i.to_string() })
            .collect();
        section.apply(&changes);
        let fields: Vec<(String, String)> = section.fields().collect();
        assert_eq!(fields.len(), 21_000);
        assert_eq!(fields[1000], ("X-Absent-0".to_string(), "0".to_string()));
        assert_eq!(fields[20_999], ("X-Absent-19999".to_string(), "19999".to_string()));
    }
}
