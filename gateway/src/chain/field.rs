//! One header field as Sluice writes it for a stage (RFC 5322 §2.2): a valid name, and a value
//! whatever a filter sent, folded so that it can neither add a field nor end the section, nor
//! make a line longer than a next hop must accept.

/// The longest line of a header section, without its CRLF (RFC 5322 §2.1.1).
pub const MAX_LINE: usize = 998;
/// White space longer than this before a word is cut to its last character, so that no line of
/// a folded field can be white space only (some readers take such a line for the section's end).
const MAX_SPACE: usize = 78;

/// Renders a field from a valid name and any value. Line breaks in the value become folds, so a
/// value can never inject a field or end the section; blank lines are left out, other control
/// characters than tab dropped. Lines are folded to at most 998 octets, at white space where
/// there is some; a longer run without any is cut, and unfolding it then yields a tab there.
pub fn render(name: &str, value: &str) -> Vec<u8> {
    let mut folder = Folder { out: format!("{name}:").into_bytes(), line_start: 0 };
    let mut empty = true;
    for line in value.split('\n') {
        let line: String = line
            .trim_end_matches('\r')
            .chars()
            .map(|c| if c == '\r' { ' ' } else { c })
            .filter(|&c| c == '\t' || !c.is_control())
            .collect();
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let lead = match (empty, line.starts_with([' ', '\t'])) {
            (true, _) => " ",
            (false, true) => "",
            (false, false) => "\t",
        };
        if !empty {
            folder.fold();
        }
        empty = false;
        let mut words = words(line);
        if let Some(first) = words.next() {
            folder.push(&format!("{lead}{first}"));
        }
        words.for_each(|word| folder.push(word));
    }
    if empty {
        folder.out.push(b' ');
    }
    folder.out.extend_from_slice(b"\r\n");
    folder.out
}

/// The words of a line, each with the white space before it (the first may have none).
fn words(line: &str) -> impl Iterator<Item = &str> {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let mut start = 0;
    std::iter::from_fn(move || {
        let rest = line.as_bytes().get(start..).filter(|rest| !rest.is_empty())?;
        let space = rest.iter().take_while(|b| is_space(b)).count();
        let word = rest[space..].iter().take_while(|b| !is_space(b)).count();
        let token = &line[start..start + space + word];
        start += space + word;
        Some(token)
    })
}

/// Lays words out on folded lines of at most `MAX_LINE` octets.
struct Folder {
    out: Vec<u8>,
    /// Where the current line starts in `out`.
    line_start: usize,
}

impl Folder {
    fn room(&self) -> usize {
        MAX_LINE.saturating_sub(self.out.len() - self.line_start)
    }

    fn fold(&mut self) {
        self.out.extend_from_slice(b"\r\n");
        self.line_start = self.out.len();
    }

    /// Adds a word with its leading white space: on this line if it fits, else on the next
    /// (the fold goes before its white space); a word no line can hold is cut over lines.
    fn push(&mut self, word: &str) {
        let space = word.len() - word.trim_start_matches([' ', '\t']).len();
        let mut rest = if space > MAX_SPACE { &word[space - 1..] } else { word };
        if rest.len() > self.room() && rest.len() <= MAX_LINE && space > 0 {
            self.fold();
        }
        while rest.len() > self.room() {
            let cut = rest.floor_char_boundary(self.room());
            self.out.extend_from_slice(&rest.as_bytes()[..cut]);
            rest = &rest[cut..];
            self.fold();
            self.out.push(b'\t');
        }
        self.out.extend_from_slice(rest.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DKIM-Signature prepended by a filter is relayed exactly as it was signed: `render`
    /// keeps the signer's CRLF TAB folds and lines, or `simple` header canonicalisation would
    /// break on every message. Keys of every size the signer allows, long names, `x=`, and an
    /// `h=` of every default field.
    #[test]
    fn a_dkim_signature_value_is_rendered_as_signed() {
        use sluice_dkim::{default_signed_headers, split_header_section, BodyHasher, Signer, SigningKey};
        let keys = [SigningKey::generate_ed25519(), SigningKey::generate_rsa(2048), SigningKey::generate_rsa(4096)];
        let keys: Vec<String> = keys.into_iter().map(|key| key.unwrap().to_pkcs8_pem().unwrap()).collect();
        let key = |pem: &str| SigningKey::from_pem(pem).unwrap();
        let long_domain = format!("{}.example.org", "sub-domain-label".repeat(3));
        let every: String =
            default_signed_headers().iter().map(|name| format!("{name}: x@{long_domain}\r\n")).collect();
        for pem in &keys {
            for (domain, selector, head) in [
                ("example.org", "s1", "From: a@example.org\r\nSubject: x\r\n".to_string()),
                (long_domain.as_str(), "a-rather-long-selector-2026-12", every.clone()),
            ] {
                let fields = split_header_section(head.as_bytes());
                let signer = Signer::new(key(pem), domain, selector).with_expiration(7 * 86400);
                let body = BodyHasher::new(signer.body_hasher().spec()).finish();
                let field = signer.sign(&fields, &body, 1_800_000_000).unwrap();
                let rendered = String::from_utf8(render(field.name(), &field.value)).unwrap();
                assert_eq!(rendered, field.to_field(), "{domain} {selector}");
                assert!(rendered.lines().all(|line| line.len() <= 78), "{rendered}");
            }
        }
    }

    /// The lines of a rendered field, without their CRLF.
    fn lines(raw: &[u8]) -> Vec<&[u8]> {
        assert!(raw.ends_with(b"\r\n"));
        raw[..raw.len() - 2].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect()
    }

    #[test]
    fn values_are_folded_to_lines_of_at_most_998_octets() {
        let words = "word ".repeat(400);
        let token = "é".repeat(1200);
        let spaced = format!("a{}b", " ".repeat(3000));
        let cases = [
            ("X-Words", words.as_str()),
            ("X-Token", token.as_str()),
            ("X-Spaced", spaced.as_str()),
            ("X-Blank", "a\n\n \r\n\t\nb"),
            ("X-Control", "a\x00b\x1b\rc\x7f"),
            (&*"N".repeat(996), "value"),
        ];
        for (name, value) in cases {
            let raw = render(name, value);
            let text = std::str::from_utf8(&raw).expect("folded at character boundaries");
            for (i, line) in lines(&raw).iter().enumerate() {
                assert!(line.len() <= MAX_LINE, "{name}: a line of {} octets", line.len());
                if i > 0 {
                    assert!(line.starts_with(b" ") || line.starts_with(b"\t"), "{name}: a continuation is folded");
                    assert!(line.iter().any(|b| !b" \t".contains(b)), "{name}: a white-space-only line");
                }
            }
            assert!(!text[..text.len() - 2].contains(|c: char| c.is_control() && c != '\t' && c != '\r' && c != '\n'));
        }
        // Folds at white space keep the value; unfolding (removing CRLF) gives it back.
        let unfold = |raw: &[u8]| String::from_utf8(raw.to_vec()).unwrap().replace("\r\n", "");
        assert_eq!(
            unfold(&render("X-Words", &words)),
            format!("X-Words: {}\r\n", words.trim_end()).replace("\r\n", "")
        );
        assert_eq!(unfold(&render("X-Token", &token)).matches('é').count(), 1200);
        assert_eq!(render("X-Blank", "a\n\n \r\n\t\nb"), b"X-Blank: a\r\n\tb\r\n");
        assert_eq!(render("X-Control", "a\x00b\x1b\rc\x7f"), b"X-Control: ab c\r\n");
        assert_eq!(render("X-Empty", ""), b"X-Empty: \r\n");
        assert_eq!(render("X-Short", "one two"), b"X-Short: one two\r\n");
        assert_eq!(render("X-Cont", " indented\nplain"), b"X-Cont:  indented\r\n\tplain\r\n");
    }
}
