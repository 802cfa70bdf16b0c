//! Oracles shared by the fuzz targets: line-ending checks and a deliberately naive reference
//! model of DATA / BDAT content decoding, written independently of `sluice::smtp::parser` so the
//! two can be compared byte for byte. `checks` holds whole checks of the targets that the main
//! workspace's smoke test replays too.

pub mod checks;

use std::ops::Range;

/// True when every CR is followed by LF and every LF is preceded by CR.
pub fn crlf_clean(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

/// True when the content is empty or ends with CRLF, as DATA relay needs.
pub fn ends_with_line_end(bytes: &[u8]) -> bool {
    bytes.is_empty() || bytes.ends_with(b"\r\n")
}

/// Rewrites every bare CR or LF to CRLF (a CR immediately followed by LF is a pair, scanning left
/// to right); returns the result and how many bare ones there were.
pub fn normalize(content: &[u8]) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(content.len() + 16);
    let mut bare = 0;
    let mut i = 0;
    while i < content.len() {
        match &content[i..] {
            [b'\r', b'\n', ..] => i += 1,
            [b'\r' | b'\n', ..] => bare += 1,
            [b, ..] => {
                out.push(*b);
                i += 1;
                continue;
            }
            [] => unreachable!(),
        }
        out.extend_from_slice(b"\r\n");
        i += 1;
    }
    (out, bare)
}

/// RFC 5321 §4.5.2 transparency: doubles a '.' at the start of every line, where a line starts at
/// the beginning of the content and after each CRLF (a bare CR or LF does not start a line).
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 16);
    let mut line_start = true;
    for (i, &b) in content.iter().enumerate() {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n' && i > 0 && content[i - 1] == b'\r';
    }
    out
}

/// What decoding DATA content produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub out: Vec<u8>,
    /// Input bytes used: up to and including the end-of-data line if `ended`, else all of them.
    pub consumed: usize,
    pub ended: bool,
    pub bare: u64,
}

/// Reference decoder for dot-terminated content, over the whole input at once. A trailing CR is
/// withheld (the next byte decides whether it is bare), as a streaming decoder must.
pub fn reference_data(wire: &[u8]) -> Decoded {
    let mut out = Vec::with_capacity(wire.len());
    let mut bare = 0;
    let mut i = 0;
    let mut line_start = true;
    while i < wire.len() {
        let rest = &wire[i..];
        if std::mem::take(&mut line_start) && rest[0] == b'.' {
            if rest.starts_with(b".\r\n") {
                return Decoded { out, consumed: i + 3, ended: true, bare };
            }
            // Transparency dot: dropped; what follows is ordinary line content.
            i += 1;
            continue;
        }
        match rest {
            [b'\r', b'\n', ..] => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                line_start = true;
            }
            [b'\r'] => break,
            [b'\r' | b'\n', ..] => {
                out.extend_from_slice(b"\r\n");
                bare += 1;
                i += 1;
            }
            [b, ..] => {
                out.push(*b);
                i += 1;
            }
            [] => unreachable!(),
        }
    }
    Decoded { out, consumed: wire.len(), ended: false, bare }
}

/// Reference for counted (BDAT) content including `finish`: normalized, and a last line without
/// a line end gets CRLF. Returns the content and the bare line-ending count.
pub fn reference_counted(wire: &[u8]) -> (Vec<u8>, u64) {
    let (mut out, bare) = normalize(wire);
    if !ends_with_line_end(&out) {
        out.extend_from_slice(b"\r\n");
    }
    (out, bare)
}

/// Cuts `0..len` into consecutive pieces whose sizes cycle through `sizes` (0 counts as 1; no
/// sizes means one byte at a time).
pub fn pieces<T: Copy + Into<usize>>(len: usize, sizes: &[T]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    let mut n = 0;
    std::iter::from_fn(move || {
        if start >= len {
            return None;
        }
        let size = sizes.get(n % sizes.len().max(1)).map_or(1, |&s| s.into().max(1));
        n += 1;
        let range = start..(start + size).min(len);
        start = range.end;
        Some(range)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_checks() {
        assert!(crlf_clean(b"a\r\nb\r\n"));
        assert!(!crlf_clean(b"a\nb"));
        assert!(!crlf_clean(b"a\r"));
        assert!(!crlf_clean(b"\r\r\n"));
        assert!(!crlf_clean(b"\n"));
    }

    #[test]
    fn normalize_and_stuff() {
        assert_eq!(normalize(b"a\r\r\nb\nc\r"), (b"a\r\n\r\nb\r\nc\r\n".to_vec(), 3));
        assert_eq!(dot_stuff(b".a\r\n.\r\nx\n.y\r.z\r\n"), b"..a\r\n..\r\nx\n.y\r.z\r\n");
    }

    #[test]
    fn reference_matches_the_rfc_examples() {
        let d = reference_data(b"a\r\n..b\r\n.\r\nQUIT\r\n");
        assert_eq!((d.out.as_slice(), d.consumed, d.ended, d.bare), (&b"a\r\n.b\r\n"[..], 11, true, 0));
        let d = reference_data(b"a\n.\nb\r\n.\r");
        assert_eq!((d.out.as_slice(), d.ended, d.bare), (&b"a\r\n.\r\nb\r\n"[..], false, 2));
        assert_eq!(reference_counted(b"x\r"), (b"x\r\n".to_vec(), 1));
        assert_eq!(reference_counted(b""), (Vec::new(), 0));
    }

    #[test]
    fn piece_sizes_cycle() {
        let got: Vec<_> = pieces(7, &[2u8, 0]).collect();
        assert_eq!(got, vec![0..2, 2..3, 3..5, 5..6, 6..7]);
        assert_eq!(pieces::<u8>(3, &[]).count(), 3);
    }
}
