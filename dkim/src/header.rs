//! Header fields as DKIM sees them: raw field bytes (name, colon, value with its folding and the
//! final CRLF), their canonical forms (RFC 6376 §3.4.1 simple, §3.4.2 relaxed) and the choice of
//! the instances a signature covers (§5.4.2: bottom-up, a name listed more often than present
//! covers the absence of more).

/// Header canonicalisation algorithm (the part of `c=` before the slash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderCanon {
    Simple,
    Relaxed,
}

/// Splits a header section into raw fields, each with its continuation lines and final CRLF;
/// the empty line ending the section, if it is there, ends the split (so a section can be given
/// with or without it, and the body after it is never taken for fields).
pub fn split_header_section(section: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < section.len() {
        let line_end = section[at..].iter().position(|&b| b == b'\n').map_or(section.len(), |i| at + i + 1);
        if at == start && matches!(&section[at..line_end], b"\r\n" | b"\n") {
            break;
        }
        let continues = matches!(section.get(line_end), Some(b' ' | b'\t'));
        if !continues {
            fields.push(&section[start..line_end]);
            start = line_end;
        }
        at = line_end;
    }
    fields
}

/// The field's name: the bytes before the colon, without trailing whitespace.
pub fn field_name(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    field[..colon].trim_ascii_end()
}

/// Appends the canonical form of one raw field to `out`, with its CRLF.
pub fn canonicalize_field(canon: HeaderCanon, field: &[u8], out: &mut Vec<u8>) {
    match canon {
        HeaderCanon::Simple => {
            out.extend_from_slice(field);
            if !field.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
        HeaderCanon::Relaxed => {
            let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
            out.extend(field[..colon].trim_ascii_end().iter().map(u8::to_ascii_lowercase));
            out.push(b':');
            let value = field.get(colon + 1..).unwrap_or_default();
            // Unfolded (line ends removed), whitespace runs as one SP, none at either end.
            let mut pending_wsp = false;
            let mut started = false;
            for &byte in value {
                match byte {
                    b'\r' | b'\n' => {}
                    b' ' | b'\t' => pending_wsp = started,
                    _ => {
                        if std::mem::take(&mut pending_wsp) {
                            out.push(b' ');
                        }
                        out.push(byte);
                        started = true;
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// For each name of `h=` in order, the index in `fields` (top to bottom) of the instance it
/// covers, or `None` when no instance is left (an oversigned name: it covers the empty string).
pub fn select_fields<S: AsRef<str>>(fields: &[&[u8]], names: &[S]) -> Vec<Option<usize>> {
    let mut used = vec![false; fields.len()];
    names
        .iter()
        .map(|name| {
            let name = name.as_ref().as_bytes();
            let found = (0..fields.len()).rev().find(|&i| !used[i] && field_name(fields[i]).eq_ignore_ascii_case(name));
            if let Some(i) = found {
                used[i] = true;
            }
            found
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_line_ends_the_section() {
        let with_it = b"From: a\r\nSubject: b\r\n c\r\n\r\nBody: not a field\r\n";
        assert_eq!(split_header_section(with_it), [&b"From: a\r\n"[..], b"Subject: b\r\n c\r\n"]);
        assert_eq!(split_header_section(&with_it[..with_it.len() - 21]), split_header_section(with_it));
        assert!(split_header_section(b"\r\nFrom: a\r\n").is_empty());
    }

    fn canonical(canon: HeaderCanon, field: &[u8]) -> String {
        let mut out = Vec::new();
        canonicalize_field(canon, field, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn relaxed_and_simple_forms() {
        let table: &[(&[u8], &str, &str)] = &[
            // RFC 6376 §3.4.5's example.
            (b"A: X\r\n", "a:X\r\n", "A: X\r\n"),
            (b"B : Y\t\r\n\tZ  \r\n", "b:Y Z\r\n", "B : Y\t\r\n\tZ  \r\n"),
            (b"Subject:\r\n", "subject:\r\n", "Subject:\r\n"),
            (b"To:   a@example.org,\r\n    b@example.org\r\n", "to:a@example.org, b@example.org\r\n", ""),
            (b"X-8bit: caf\xc3\xa9 \r\n", "x-8bit:caf\u{e9}\r\n", ""),
            (b"No-Crlf: v", "no-crlf:v\r\n", "No-Crlf: v\r\n"),
        ];
        for (field, relaxed, simple) in table {
            assert_eq!(canonical(HeaderCanon::Relaxed, field), *relaxed);
            if !simple.is_empty() {
                assert_eq!(canonical(HeaderCanon::Simple, field), *simple);
            }
        }
    }

    #[test]
    fn splits_folded_fields() {
        let section = b"From: a@example.org\r\nSubject: one\r\n two\r\n\tthree\r\nTo: b@example.org\r\n";
        let fields = split_header_section(section);
        assert_eq!(
            fields,
            [&b"From: a@example.org\r\n"[..], b"Subject: one\r\n two\r\n\tthree\r\n", b"To: b@example.org\r\n"]
        );
        assert_eq!(field_name(fields[1]), b"Subject");
        assert_eq!(field_name(b"Odd  : x\r\n"), b"Odd");
    }

    #[test]
    fn selection_is_bottom_up_and_oversigned_names_cover_nothing() {
        let fields: [&[u8]; 5] =
            [b"Received: 1\r\n", b"From: x\r\n", b"Received: 2\r\n", b"to: y\r\n", b"Received: 3\r\n"];
        assert_eq!(
            select_fields(&fields, &["received", "From", "received", "from", "To", "subject"]),
            [Some(4), Some(1), Some(2), None, Some(3), None]
        );
    }
}
