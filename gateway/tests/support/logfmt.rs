//! A logfmt reader for the gateway's log lines, as a log shipper would read them: `key=value`,
//! `key="quoted \"value\""` and bare keys, separated by spaces. Quoted values take the escapes
//! `\"`, `\\`, `\n`, `\r`, `\t`, `\0`, `\'` and `\u{…}`. A line the reader cannot split (an
//! unterminated quote, an unknown escape, a value with a bare quote) is an error, never a guess.

use std::collections::BTreeMap;

/// The pairs of a line, in order; a bare key has no value.
pub fn parse(line: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut pairs = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ').is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != ' ' && *c != '=') {
            if c == '"' {
                return Err(format!("a quote in a key: {line}"));
            }
            key.push(c);
        }
        if chars.next_if_eq(&'=').is_none() {
            pairs.push((key, None));
            continue;
        }
        let value = match chars.next_if_eq(&'"') {
            Some(_) => quoted(&mut chars).ok_or_else(|| format!("bad quoted value for {key}: {line}"))?,
            None => {
                let mut value = String::new();
                while let Some(c) = chars.next_if(|c| *c != ' ') {
                    if c == '"' {
                        return Err(format!("a bare quote in the value of {key}: {line}"));
                    }
                    value.push(c);
                }
                value
            }
        };
        pairs.push((key, Some(value)));
    }
}

fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let mut value = String::new();
    loop {
        match chars.next()? {
            '"' => return chars.peek().is_none_or(|c| *c == ' ').then_some(value),
            '\\' => value.push(match chars.next()? {
                '"' => '"',
                '\\' => '\\',
                '\'' => '\'',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                '0' => '\0',
                'u' => {
                    (chars.next()? == '{').then_some(())?;
                    let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                }
                _ => return None,
            }),
            c => value.push(c),
        }
    }
}

/// The `key=value` fields of the part of a log line after `marker` (e.g. the event's message),
/// each key once.
pub fn fields_after(line: &str, marker: &str) -> BTreeMap<String, String> {
    let (_, rest) = line.split_once(marker).unwrap_or_else(|| panic!("no {marker:?} in {line}"));
    let mut fields = BTreeMap::new();
    for (key, value) in parse(rest).unwrap_or_else(|err| panic!("not logfmt: {err}")) {
        let value = value.unwrap_or_else(|| panic!("bare key {key} in {line}"));
        assert!(fields.insert(key.clone(), value).is_none(), "{key} twice in {line}");
    }
    fields
}

#[test]
fn reads_quoted_and_bare_values() {
    let pairs = parse(r#"a=1 b="x y" c="q\"uote\\ \u{1b}" bare d="""#).unwrap();
    let want = [("a", Some("1")), ("b", Some("x y")), ("c", Some("q\"uote\\ \u{1b}")), ("bare", None), ("d", Some(""))];
    let want: Vec<(String, Option<String>)> =
        want.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect();
    assert_eq!(pairs, want);
    assert!(parse(r#"reply=250 2.0.0 "Ok""#).is_err());
    assert!(parse(r#"a="unterminated"#).is_err());
}
