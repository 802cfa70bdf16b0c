//! Incremental framing of the client's byte stream, with no I/O: command lines (bounded at 512
//! octets, RFC 5321 §4.5.3.1.4, with framing kept after an overlong line) and message content
//! (DATA: dot-unstuffing and `CRLF.CRLF` detection; BDAT: raw octets).
//!
//! Content leaves the decoder with CRLF-only line endings: a bare CR or LF is rewritten to CRLF and
//! reported, so nothing downstream can meet a lone `LF.LF` that a lenient next hop would read as
//! end-of-data (SMTP smuggling). Only `CRLF.CRLF` ends DATA.

use bytes::BytesMut;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// One framed command line, or notice that an overlong one was skipped.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandFrame {
    Line(Vec<u8>),
    TooLong,
}

/// Splits command lines off the input buffer.
#[derive(Debug, Default)]
pub struct CommandFramer {
    /// Inside an overlong line: drop bytes until its end, then report it once.
    discarding: bool,
}

impl CommandFramer {
    /// True inside an overlong line: its bytes are dropped from the input as they come, but the
    /// line is still being read.
    pub fn discarding(&self) -> bool {
        self.discarding
    }

    /// Takes the next complete line (without CRLF / LF) from `input`; None means "need more".
    pub fn next(&mut self, input: &mut BytesMut) -> Option<CommandFrame> {
        loop {
            let newline = memchr::memchr(b'\n', input);
            if self.discarding {
                match newline {
                    Some(i) => {
                        let _ = input.split_to(i + 1);
                        self.discarding = false;
                        return Some(CommandFrame::TooLong);
                    }
                    None => {
                        input.clear();
                        return None;
                    }
                }
            }
            match newline {
                Some(i) if i < MAX_COMMAND_LINE => {
                    let line = input.split_to(i + 1);
                    let end = if i > 0 && line[i - 1] == b'\r' { i - 1 } else { i };
                    return Some(CommandFrame::Line(line[..end].to_vec()));
                }
                Some(_) => self.discarding = true,
                None if input.len() >= MAX_COMMAND_LINE => self.discarding = true,
                None => return None,
            }
        }
    }
}

/// How the content is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// DATA: dot-stuffed, ended by CRLF.CRLF.
    DotTerminated,
    /// BDAT: counted octets; the session tells where chunks end.
    Counted,
}

/// Where in a line the decoder stands (what the previous input bytes were).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// At the start of a line: after CRLF, or at the start of the content.
    Start,
    /// A line start followed by '.'.
    StartDot,
    /// A line start followed by ".\r": LF now ends DATA.
    StartDotCr,
    /// Inside a line.
    Middle,
    /// Inside a line after a CR.
    MiddleCr,
}

/// Turns wire content into message bytes with CRLF-only line endings.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    framing: Framing,
    state: LineState,
    bare_line_endings: u64,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        BodyDecoder { framing, state: LineState::Start, bare_line_endings: 0 }
    }

    /// How many bare CR or LF were rewritten so far.
    pub fn bare_line_endings(&self) -> u64 {
        self.bare_line_endings
    }

    /// Decodes from `input`, appending message bytes to `out`. Returns how many input bytes were
    /// consumed and whether the end of DATA (`CRLF.CRLF`) was reached (never for `Counted`).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            if self.state == LineState::Middle {
                // Fast path: copy the run of ordinary bytes up to the next CR or LF.
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                out.extend_from_slice(&input[i..i + run]);
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let byte = input[i];
            i += 1;
            if self.step(byte, out) {
                return (i, true);
            }
        }
        (i, false)
    }

    /// One byte through the line state machine; true when it ended DATA.
    fn step(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        use LineState::*;
        let dots = self.framing == Framing::DotTerminated;
        self.state = match (self.state, byte) {
            (Start, b'.') if dots => StartDot,
            (StartDot, b'\r') => StartDotCr,
            (StartDotCr, b'\n') => return true,
            (StartDotCr, _) => {
                // ".<CR>x": the dot was stuffing; the CR was bare.
                self.bare(out);
                self.state = Middle;
                return self.step(byte, out);
            }
            // ".x" at a line start: the dot is transparency stuffing and is dropped.
            (StartDot, _) => {
                self.state = Middle;
                return self.step(byte, out);
            }
            (Start | Middle, b'\r') => MiddleCr,
            (MiddleCr, b'\n') => {
                out.extend_from_slice(b"\r\n");
                Start
            }
            (MiddleCr, b'\r') => {
                self.bare(out);
                MiddleCr
            }
            (MiddleCr, _) => {
                self.bare(out);
                self.state = Middle;
                return self.step(byte, out);
            }
            // A bare LF is not a line end on the wire, so a dot after it is not at a line start.
            // Counted content has no dot handling, and a line start there only means "nothing
            // to add at the end".
            (Start | Middle, b'\n') => {
                self.bare(out);
                if dots {
                    Middle
                } else {
                    Start
                }
            }
            (Start | Middle, _) => {
                out.push(byte);
                Middle
            }
        };
        false
    }

    fn bare(&mut self, out: &mut Vec<u8>) {
        self.bare_line_endings += 1;
        out.extend_from_slice(b"\r\n");
    }

    /// Ends counted content: a trailing bare CR becomes CRLF and a last line without a line end
    /// gets CRLF, so the message always ends with CRLF (or is empty) as DATA relay needs.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            LineState::MiddleCr | LineState::StartDotCr => self.bare(out),
            LineState::Middle | LineState::StartDot => out.extend_from_slice(b"\r\n"),
            LineState::Start => {}
        }
        self.state = LineState::Start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer_lines(input: &[u8]) -> (Vec<CommandFrame>, BytesMut) {
        let mut framer = CommandFramer::default();
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        while let Some(frame) = framer.next(&mut buf) {
            frames.push(frame);
        }
        (frames, buf)
    }

    #[test]
    fn command_lines() {
        let (frames, rest) = framer_lines(b"EHLO a\r\nNOOP\nQUI");
        assert_eq!(frames, vec![CommandFrame::Line(b"EHLO a".to_vec()), CommandFrame::Line(b"NOOP".to_vec())]);
        assert_eq!(&rest[..], b"QUI");
    }

    #[test]
    fn overlong_line_keeps_framing() {
        let mut input = vec![b'X'; 2000];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let (frames, _) = framer_lines(&input);
        assert_eq!(frames, vec![CommandFrame::TooLong, CommandFrame::Line(b"NOOP".to_vec())]);
        // Exactly 512 octets with CRLF is allowed; 513 is not.
        let mut ok = vec![b'N'; 510];
        ok.extend_from_slice(b"\r\n");
        assert!(matches!(framer_lines(&ok).0[..], [CommandFrame::Line(_)]));
        let mut long = vec![b'N'; 511];
        long.extend_from_slice(b"\r\n");
        assert_eq!(framer_lines(&long).0, vec![CommandFrame::TooLong]);
    }

    #[test]
    fn overlong_line_split_across_reads() {
        let mut framer = CommandFramer::default();
        let mut buf = BytesMut::from(&[b'Y'; 600][..]);
        assert_eq!(framer.next(&mut buf), None);
        assert!(buf.is_empty(), "discarded bytes are not kept");
        buf.extend_from_slice(b"YYY\r\nRSET\r\n");
        assert_eq!(framer.next(&mut buf), Some(CommandFrame::TooLong));
        assert_eq!(framer.next(&mut buf), Some(CommandFrame::Line(b"RSET".to_vec())));
    }

    /// Decodes DATA content fed in pieces of `step` bytes; returns output, end flag, leftover.
    fn decode_data(input: &[u8], step: usize) -> (Vec<u8>, bool, Vec<u8>, u64) {
        let mut decoder = BodyDecoder::new(Framing::DotTerminated);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let (used, done) = decoder.decode(&input[pos..end], &mut out);
            pos += used;
            if done {
                return (out, true, input[pos..].to_vec(), decoder.bare_line_endings());
            }
        }
        (out, false, Vec::new(), decoder.bare_line_endings())
    }

    #[test]
    fn data_table() {
        #[rustfmt::skip]
        let cases: &[(&[u8], &[u8], bool, &[u8], u64)] = &[
            // input, content, ended, leftover, bare line endings
            (b".\r\n", b"", true, b"", 0),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", true, b"QUIT\r\n", 0),
            (b"..x\r\n.\r\n", b".x\r\n", true, b"", 0),
            (b"..\r\n.\r\n", b".\r\n", true, b"", 0),
            (b".x\r\n.\r\n", b"x\r\n", true, b"", 0),
            (b"a\r\n\r\n.\r\n", b"a\r\n\r\n", true, b"", 0),
            (b"\xff\xfe\r\n.\r\n", b"\xff\xfe\r\n", true, b"", 0),
            // Smuggling shapes never end DATA; their bare line ends become CRLF.
            (b"a\n.\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", true, b"", 2),
            (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n", true, b"", 1),
            (b"a\n.\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", true, b"", 1),
            (b"a\r.\r\n.\r\n", b"a\r\n.\r\n", true, b"", 1),
            (b"a\r\r\n.\r\n", b"a\r\n\r\n", true, b"", 1),
            (b".\rx\r\n.\r\n", b"\r\nx\r\n", true, b"", 1),
            (b"no end\r\n", b"no end\r\n", false, b"", 0),
        ];
        for (input, content, ended, leftover, bare) in cases {
            for step in [1, 2, 3, 7, input.len()] {
                let got = decode_data(input, step);
                assert_eq!(
                    (got.0.as_slice(), got.1, got.2.as_slice(), got.3),
                    (*content, *ended, *leftover, *bare),
                    "input {:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn counted_content_is_raw_but_normalized() {
        let mut decoder = BodyDecoder::new(Framing::Counted);
        let mut out = Vec::new();
        assert_eq!(decoder.decode(b".\r\n..x\r\nbare\nend\r", &mut out), (17, false));
        decoder.finish(&mut out);
        assert_eq!(out, b".\r\n..x\r\nbare\r\nend\r\n");
        assert_eq!(decoder.bare_line_endings(), 2);
        let mut out = Vec::new();
        let mut decoder = BodyDecoder::new(Framing::Counted);
        decoder.decode(b"no final newline", &mut out);
        decoder.finish(&mut out);
        assert_eq!(out, b"no final newline\r\n");
        // Found by fuzzing: a final bare LF is the line end, not a reason to add another.
        let mut out = Vec::new();
        let mut decoder = BodyDecoder::new(Framing::Counted);
        decoder.decode(b"hello\n", &mut out);
        decoder.finish(&mut out);
        assert_eq!(out, b"hello\r\n");
    }
}
