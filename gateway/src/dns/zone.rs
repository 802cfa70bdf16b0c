//! TXT answers from a zone file, for `sluice filter-test --zone`: a verifier tried offline gets
//! what a server loaded with that file would answer. Only what TXT records need of RFC 1035's
//! master-file syntax is read: `$ORIGIN`, `$TTL`, `@`, relative and blank owners, optional TTL
//! and class, parentheses across lines, quoted strings with `\"`, `\\` and `\DDD` escapes, `;`
//! comments; records of other types are skipped. (hickory's zone parser, tried first, splits
//! quoted strings inside parentheses at `;` and needs a TTL on every record, so it cannot read
//! the records `sluice dkim keygen` prints.)

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;

use super::{LookupError, TxtSource};

pub struct ZoneFile {
    /// Lower-case fully qualified name → its TXT records.
    txt: HashMap<String, Vec<Vec<Vec<u8>>>>,
}

/// A token of a logical line: a bare word or a quoted string (unescaped).
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(Vec<u8>),
}

impl ZoneFile {
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<ZoneFile> {
        let mut txt: HashMap<String, Vec<Vec<Vec<u8>>>> = HashMap::new();
        let mut origin = ".".to_string();
        let mut owner: Option<String> = None;
        for (line_no, blank_owner, tokens) in
            logical_lines(text).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?
        {
            let at = |why: String| anyhow::anyhow!("{}:{line_no}: {why}", path.display());
            let mut tokens = tokens.into_iter().peekable();
            if let Some(Token::Word(directive)) = tokens.peek().filter(|_| !blank_owner) {
                if directive.eq_ignore_ascii_case("$ORIGIN") {
                    tokens.next();
                    match tokens.next() {
                        Some(Token::Word(name)) => origin = absolute(&name, &origin),
                        _ => return Err(at("$ORIGIN needs a domain name".into())),
                    }
                    continue;
                }
                if directive.starts_with('$') {
                    continue; // $TTL, $INCLUDE… : nothing a TXT answer here needs.
                }
            }
            if !blank_owner {
                match tokens.next() {
                    Some(Token::Word(name)) => owner = Some(absolute(&name, &origin)),
                    _ => return Err(at("a record starts with its owner name".into())),
                }
            }
            let owner = owner.clone().ok_or_else(|| at("the first record needs an owner name".into()))?;
            // Optional TTL and class, in either order, then the type.
            let kind = loop {
                match tokens.next() {
                    Some(Token::Word(word))
                        if word.bytes().all(|b| b.is_ascii_alphanumeric()) && is_ttl_or_class(&word) => {}
                    Some(Token::Word(word)) => break word,
                    _ => return Err(at("a record needs a type, e.g. TXT".into())),
                }
            };
            if !kind.eq_ignore_ascii_case("TXT") {
                continue;
            }
            let strings: Vec<Vec<u8>> = tokens
                .map(|token| match token {
                    Token::Quoted(bytes) => bytes,
                    Token::Word(word) => word.into_bytes(),
                })
                .collect();
            if strings.is_empty() {
                return Err(at("a TXT record needs at least one string".into()));
            }
            txt.entry(owner.to_ascii_lowercase()).or_default().push(strings);
        }
        Ok(ZoneFile { txt })
    }

    pub fn read(path: &Path) -> anyhow::Result<ZoneFile> {
        let text =
            std::fs::read_to_string(path).map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))?;
        ZoneFile::parse(&text, path)
    }
}

fn is_ttl_or_class(word: &str) -> bool {
    let classes = ["IN", "CH", "HS", "CS"];
    classes.iter().any(|c| word.eq_ignore_ascii_case(c))
        || (word.bytes().next().is_some_and(|b| b.is_ascii_digit())
            && word.bytes().all(|b| b.is_ascii_digit() || b"smhdwSMHDW".contains(&b)))
}

/// `name` made absolute against `origin` (`@` is the origin itself).
fn absolute(name: &str, origin: &str) -> String {
    match name {
        "@" => origin.to_string(),
        _ if name.ends_with('.') => name.to_string(),
        _ if origin == "." => format!("{name}."),
        _ => format!("{name}.{origin}"),
    }
}

/// The file's logical lines (parentheses joined), each with its first line's number, whether
/// it starts with white space (the previous owner), and its tokens.
fn logical_lines(text: &str) -> Result<Vec<(usize, bool, Vec<Token>)>, String> {
    let mut lines = Vec::new();
    let mut bytes = text.bytes().peekable();
    let (mut line_no, mut start_no) = (1, 1);
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut at_line_start = true;
    let mut blank_owner = false;
    while let Some(b) = bytes.next() {
        if at_line_start && depth == 0 {
            blank_owner = b == b' ' || b == b'\t';
            start_no = line_no;
        }
        at_line_start = false;
        match b {
            b'\n' => {
                line_no += 1;
                at_line_start = true;
                if depth == 0 && !tokens.is_empty() {
                    lines.push((start_no, blank_owner, std::mem::take(&mut tokens)));
                }
            }
            b' ' | b'\t' | b'\r' => {}
            b';' => {
                while bytes.peek().is_some_and(|&b| b != b'\n') {
                    bytes.next();
                }
            }
            b'(' => depth += 1,
            b')' => depth = depth.checked_sub(1).ok_or(format!("line {line_no}: ')' without '('"))?,
            b'"' => {
                let mut string = Vec::new();
                loop {
                    match bytes.next() {
                        None => return Err(format!("line {start_no}: a quoted string is not closed")),
                        Some(b'"') => break,
                        Some(b'\\') => string.push(escaped(&mut bytes).ok_or(format!("line {line_no}: bad escape"))?),
                        Some(b'\n') => {
                            line_no += 1;
                            string.push(b'\n');
                        }
                        Some(other) => string.push(other),
                    }
                }
                tokens.push(Token::Quoted(string));
            }
            _ => {
                let mut word = vec![b];
                while let Some(&next) = bytes.peek().filter(|&&n| !b" \t\r\n;()\"".contains(&n)) {
                    word.push(next);
                    bytes.next();
                }
                tokens.push(Token::Word(String::from_utf8_lossy(&word).into_owned()));
            }
        }
    }
    if depth > 0 {
        return Err(format!("line {start_no}: '(' is not closed"));
    }
    if !tokens.is_empty() {
        lines.push((start_no, blank_owner, tokens));
    }
    Ok(lines)
}

/// After a backslash: `\DDD` (a decimal byte) or the character itself.
fn escaped(bytes: &mut std::iter::Peekable<std::str::Bytes<'_>>) -> Option<u8> {
    let first = bytes.next()?;
    if !first.is_ascii_digit() {
        return Some(first);
    }
    let (second, third) = (bytes.next()?, bytes.next()?);
    let digits = [first, second, third];
    digits.iter().all(u8::is_ascii_digit).then(|| std::str::from_utf8(&digits).ok()?.parse::<u8>().ok())?
}

#[async_trait]
impl TxtSource for ZoneFile {
    async fn txt_records(&self, name: &str) -> Result<Vec<Vec<Vec<u8>>>, LookupError> {
        let fqdn = match name.ends_with('.') {
            true => name.to_ascii_lowercase(),
            false => format!("{}.", name.to_ascii_lowercase()),
        };
        self.txt.get(&fqdn).cloned().ok_or(LookupError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(text: &str) -> ZoneFile {
        ZoneFile::parse(text, Path::new("keys.zone")).unwrap()
    }

    async fn txt(zone: &ZoneFile, name: &str) -> Result<Vec<Vec<Vec<u8>>>, LookupError> {
        zone.txt_records(name).await
    }

    #[tokio::test]
    async fn keygen_style_records_are_answered() {
        let printed = sluice_dkim::zone_file_entry("s1", "example.org", "v=DKIM1; k=rsa; p=ABCD");
        let zone = zone(&format!("; keys\n{printed}\n$ORIGIN example.net.\n$TTL 300\ns2._domainkey 3600 IN TXT \"v=DKIM1; k=ed25519; \" \"p=XYZ\" ; comment\n"));
        let joined = |records: Vec<Vec<Vec<u8>>>| records.iter().map(|r| r.concat()).collect::<Vec<_>>();
        assert_eq!(
            joined(txt(&zone, "S1._domainkey.example.org").await.unwrap()),
            [b"v=DKIM1; k=rsa; p=ABCD".to_vec()]
        );
        assert_eq!(
            txt(&zone, "s2._domainkey.example.net.").await.unwrap(),
            [vec![b"v=DKIM1; k=ed25519; ".to_vec(), b"p=XYZ".to_vec()]]
        );
        assert_eq!(txt(&zone, "s3._domainkey.example.net").await, Err(LookupError::NotFound));
    }

    #[tokio::test]
    async fn owners_escapes_and_other_types() {
        let zone = zone(
            "$ORIGIN example.test.\n@ IN SOA ns hostmaster ( 1 2 3 4 5 )\n@ IN TXT \"at \\\"origin\\\"\"\n  IN TXT \"second\\059\"\nhost IN A 192.0.2.1\n",
        );
        assert_eq!(
            txt(&zone, "example.test").await.unwrap(),
            [vec![b"at \"origin\"".to_vec()], vec![b"second;".to_vec()]]
        );
        assert_eq!(txt(&zone, "host.example.test").await, Err(LookupError::NotFound));
    }

    #[test]
    fn broken_files_name_the_line() {
        let err = |text: &str| ZoneFile::parse(text, Path::new("bad.zone")).err().unwrap().to_string();
        assert_eq!(err("a. IN TXT ( \"x\"\n"), "bad.zone: line 1: '(' is not closed");
        assert_eq!(err("a. IN TXT \"x\n"), "bad.zone: line 1: a quoted string is not closed");
        assert_eq!(err("\n\na. IN TXT\n"), "bad.zone:3: a TXT record needs at least one string");
        assert_eq!(err("  IN TXT \"x\"\n"), "bad.zone:1: the first record needs an owner name");
    }
}
