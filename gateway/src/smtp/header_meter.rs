//! Finds where the header section of message content ends, and measures it, as the content
//! streams, without buffering it. The session uses it to refuse a section over
//! `server.max_header_size` whatever the chunk boundaries, DATA and BDAT alike; the chain's
//! `HeaderSplitter` uses it to split the section off, so both agree on where it ends.
//!
//! The section ends after the empty line, or before the first line that is neither a field
//! (`name:`) nor a fold of one. A line is decided by its first bytes (the name up to ':'); while
//! it is undecided it counts, because the splitter has to hold it until then: `peak` is the most
//! the splitter can ever buffer.

/// Where the meter stands in the line it is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line; `first` until a field has been seen (a fold needs one to extend).
    Start { first: bool },
    /// A CR at a line start: the empty line ending the section if LF follows.
    StartCr,
    /// Reading what may be a field name: undecided.
    Name,
    /// Inside a line known to belong to the section.
    Field,
    /// The section is over: nothing more is counted.
    Ended,
}

#[derive(Debug, Clone)]
pub struct HeaderMeter {
    line: Line,
    /// Bytes of complete lines known to be in the section.
    section: u64,
    /// Bytes of the current line while it belongs, or may still belong, to the section.
    pending: u64,
    /// The most `section + pending` was before an undecided line turned out to be body.
    peak: u64,
}

impl Default for HeaderMeter {
    fn default() -> Self {
        HeaderMeter { line: Line::Start { first: true }, section: 0, pending: 0, peak: 0 }
    }
}

impl HeaderMeter {
    /// Measures the next decoded content bytes (CRLF line endings).
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.line != Line::Ended {
            if self.line == Line::Field {
                // Fast path: the rest of a field line is counted up to its LF.
                let run = memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1);
                self.pending += run as u64;
                if bytes[run - 1] == b'\n' {
                    self.end_line(Line::Start { first: false });
                }
                bytes = &bytes[run..];
                continue;
            }
            self.step(bytes[0]);
            bytes = &bytes[1..];
        }
    }

    /// The most bytes the header section has held, counting lines while they were undecided.
    pub fn peak(&self) -> u64 {
        self.peak.max(self.section + self.pending)
    }

    /// The section's length, once its end has been seen.
    pub fn section(&self) -> Option<u64> {
        (self.line == Line::Ended).then_some(self.section)
    }

    /// The section's length if the content ends here: a last field without a line end belongs
    /// to it, a last undecided line does not.
    pub fn section_at_end(&self) -> u64 {
        match self.line {
            Line::Field => self.section + self.pending,
            _ => self.section,
        }
    }

    fn step(&mut self, byte: u8) {
        self.line = match (self.line, byte) {
            (Line::Start { .. }, b'\r') => Line::StartCr,
            (Line::StartCr, b'\n') => {
                self.pending += 1;
                self.end_line(Line::Ended);
                return;
            }
            (Line::Start { first: false }, b' ' | b'\t') => Line::Field,
            (Line::Start { .. }, b) if is_name_byte(b) => Line::Name,
            (Line::Name, b':') => Line::Field,
            (Line::Name, b) if is_name_byte(b) => Line::Name,
            // Anything else (a fold with no field before it, an empty name, a byte no name may
            // hold, a CR not followed by LF) makes this line the first of the body.
            _ => {
                self.peak = self.peak.max(self.section + self.pending);
                self.pending = 0;
                self.line = Line::Ended;
                return;
            }
        };
        self.pending += 1;
    }

    fn end_line(&mut self, next: Line) {
        self.section += std::mem::take(&mut self.pending);
        self.line = next;
    }
}

/// Whether `line` starts with a field name and its colon, so it would be read as a field.
pub fn is_field_start(line: &[u8]) -> bool {
    match memchr::memchr(b':', line) {
        Some(colon) if colon > 0 => line[..colon].iter().all(|&b| is_name_byte(b)),
        _ => false,
    }
}

/// RFC 5322 §3.6.8: a field name is printable ASCII other than ':'.
fn is_name_byte(byte: u8) -> bool {
    (33..=126).contains(&byte) && byte != b':'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(content: &[u8], piece: usize) -> HeaderMeter {
        let mut meter = HeaderMeter::default();
        content.chunks(piece.max(1)).for_each(|chunk| meter.feed(chunk));
        meter
    }

    #[test]
    fn finds_the_end_however_the_content_is_cut() {
        #[rustfmt::skip]
        let cases: &[(&[u8], Option<u64>, u64)] = &[
            // content, section once its end is seen, peak
            (b"Subject: a\r\nX-Folded: one\r\n two\r\n\r\nbody\r\n", Some(35), 35),
            (b"Subject: no body\r\n", None, 18),
            (b"not a header line\r\nSubject: x\r\n", Some(0), 3),
            (b"Subject: a\r\nnot a header\r\nmore\r\n", Some(12), 15),
            (b"\r\nbody only\r\n", Some(2), 2),
            (b" fold first\r\nSubject: x\r\n\r\n", Some(0), 0),
            (b":empty name\r\n\r\n", Some(0), 0),
            (b"Subject: a\r\n\tfolded\r\n\r\n\r\n", Some(23), 23),
            (b"Subject: \xff8-bit value\r\nX\xffbad: name\r\n\r\n", Some(23), 24),
            (b"Subject: a\r\n\rx\r\n", Some(12), 13),
            (b"", None, 0),
        ];
        for (content, section, peak) in cases {
            for piece in [1, 2, 3, 7, 100] {
                let meter = meter(content, piece);
                let shown = String::from_utf8_lossy(content);
                assert_eq!((meter.section(), meter.peak()), (*section, *peak), "piece {piece}: {shown:?}");
            }
        }
    }

    #[test]
    fn at_the_end_a_last_field_belongs_to_the_section() {
        assert_eq!(meter(b"Subject: a\r\nX-Last: no line end", 4).section_at_end(), 31);
        assert_eq!(meter(b"Subject: a\r\nundecided", 4).section_at_end(), 12);
        assert_eq!(meter(b"Subject: a\r\n", 4).section_at_end(), 12);
    }

    #[test]
    fn an_undecided_line_counts_while_it_lasts() {
        // A name-like run with no colon yet: the splitter must hold it, so it counts.
        let mut content = b"Subject: a\r\n".to_vec();
        content.extend(std::iter::repeat_n(b'n', 1000));
        content.extend_from_slice(b" then a space\r\n\r\n");
        for piece in [1, 64, content.len()] {
            let meter = meter(&content, piece);
            assert_eq!((meter.section(), meter.peak()), (Some(12), 12 + 1000), "piece {piece}");
        }
    }

    #[test]
    fn long_sections_and_folds_count_across_chunks() {
        let mut content = Vec::new();
        for n in 0..1000 {
            content.extend_from_slice(format!("X-Field-{n}: value\r\n\t continued {n}\r\n").as_bytes());
        }
        let section = content.len() as u64 + 2;
        content.extend_from_slice(b"\r\nbody: not a field\r\n");
        for piece in [1, 5, 4096, content.len()] {
            let meter = meter(&content, piece);
            assert_eq!((meter.section(), meter.peak()), (Some(section), section), "piece {piece}");
        }
    }
}
