//! Authentication-Results fields that claim to come from this gateway: a sender can write any,
//! so those with our authserv-id are removed before ours is added (RFC 8601 §5).

use sluice_filter_sdk::{HeaderChange, Headers};

const NAME: &str = "Authentication-Results";

/// Removals of every Authentication-Results field whose authserv-id is `ours` (without case),
/// the highest index first: the host applies an answer's changes in order, and removing a field
/// renumbers those of its name below it, so bottom-up each index still counts the fields as they
/// were given.
pub fn removals(headers: &Headers, ours: &str) -> Vec<HeaderChange> {
    let mut removals: Vec<HeaderChange> = headers
        .all(NAME)
        .zip(1..)
        .filter(|(value, _)| authserv_id(value).is_some_and(|id| id.eq_ignore_ascii_case(ours)))
        .map(|(_, index)| HeaderChange::Remove { name: NAME.into(), index })
        .collect();
    removals.reverse();
    removals
}

/// The authserv-id a field's value starts with (RFC 8601 §2.2): after white space and comments,
/// a token or a quoted string.
fn authserv_id(value: &str) -> Option<String> {
    let mut chars = value.chars().peekable();
    let mut depth = 0usize;
    while let Some(&c) = chars.peek() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            '\\' if depth > 0 => {
                chars.next();
            }
            _ if depth > 0 || c.is_whitespace() => {}
            _ => break,
        }
        chars.next();
    }
    let mut id = String::new();
    if chars.next_if_eq(&'"').is_some() {
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => id.extend(chars.next()),
                _ => id.push(c),
            }
        }
    } else {
        id.extend(chars.take_while(|c| !c.is_whitespace() && !matches!(c, ';' | '(')));
    }
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_authserv_id() {
        let table = [
            ("mx.example.org; dkim=pass", Some("mx.example.org")),
            ("mx.example.org 1; none", Some("mx.example.org")),
            ("  (a (nested) comment) MX.Example.Org;dkim=pass", Some("MX.Example.Org")),
            ("\"mx.example.org\"; none", Some("mx.example.org")),
            ("mx.example.org(comment); none", Some("mx.example.org")),
            ("; dkim=pass", None),
            ("", None),
        ];
        for (value, id) in table {
            assert_eq!(authserv_id(value).as_deref(), id, "{value}");
        }
    }
}
