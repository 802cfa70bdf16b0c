//! Domains as DKIM compares them: the author's domains, read from a From field's mailboxes
//! (RFC 5322 §3.4) the way a mail reader shows them, and whether a name is a domain name. The
//! signer picks its key by them and the verifier its policy: one parser, so both read From alike.

/// The domains of the mailboxes in a From field's value, lower-cased, in order: the domain of
/// each `Display Name <user@Domain>` or bare `user@Domain`. Quoted strings and comments are
/// skipped (`"Bank <x@bank.example>" <me@evil.example>` is `evil.example`), group names too;
/// a mailbox without `@` has no domain.
pub fn mailbox_domains(value: &str) -> Vec<String> {
    let mut domains = Vec::new();
    // The current mailbox's text outside quotes, comments and angle brackets, and its angle-addr.
    let mut bare = String::new();
    let mut angle: Option<String> = None;
    let (mut in_angle, mut quoted, mut escaped) = (false, false, false);
    let mut comment_depth = 0usize;
    let mut end_mailbox = |bare: &mut String, angle: &mut Option<String>| {
        let address = angle.take().unwrap_or_else(|| std::mem::take(bare));
        bare.clear();
        domains.extend(address_domain(&address));
    };
    for c in value.chars() {
        if escaped {
            escaped = false;
        } else if quoted {
            match c {
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
        } else if comment_depth > 0 {
            match c {
                '\\' => escaped = true,
                '(' => comment_depth += 1,
                ')' => comment_depth -= 1,
                _ => {}
            }
        } else {
            match c {
                '"' => quoted = true,
                '(' => comment_depth = 1,
                '>' if in_angle => in_angle = false,
                _ if in_angle => angle.get_or_insert_with(String::new).push(c),
                '<' => {
                    in_angle = true;
                    angle = Some(String::new());
                }
                ',' | ';' => end_mailbox(&mut bare, &mut angle),
                // The end of a group's display name: its mailboxes follow.
                ':' => bare.clear(),
                _ => bare.push(c),
            }
        }
    }
    end_mailbox(&mut bare, &mut angle);
    domains
}

/// The domain of an address (`user@Domain`, or an envelope sender), lower-cased, without a
/// trailing dot; `None` without one.
pub fn address_domain(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// Whether `name` is a domain name (or a DKIM selector, which has the same form): dot-separated
/// labels of 1 to 63 letters, digits, `-` or `_`, 253 octets at most, a trailing dot allowed.
pub fn is_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_fields_as_readers_show_them() {
        let table: &[(&str, &[&str])] = &[
            ("joe@Example.ORG", &["example.org"]),
            ("Joe Sixpack <joe@Example.org>", &["example.org"]),
            ("\"Sixpack, Joe\" <joe@example.org>", &["example.org"]),
            ("\"Bank <x@bank.example>\" <me@evil.example>", &["evil.example"]),
            ("joe@example.org (Joe <joe@other.example>)", &["example.org"]),
            ("<\"odd@local\"@example.org>", &["example.org"]),
            ("a@one.example, B <b@two.example>", &["one.example", "two.example"]),
            ("Friends: a@one.example, b@two.example;", &["one.example", "two.example"]),
            ("<@route.example:joe@example.org>", &["example.org"]),
            ("joe@example.org.", &["example.org"]),
            ("undisclosed", &[]),
            ("", &[]),
        ];
        for (value, domains) in table {
            assert_eq!(mailbox_domains(value), *domains, "{value}");
        }
    }

    #[test]
    fn domain_names() {
        for good in ["example.org", "example.org.", "s1", "mail-2024_a.example", "EXAMPLE.org"] {
            assert!(is_domain_name(good), "{good}");
        }
        for bad in ["", ".", "a..b", "exa mple.org", "a/b", &"a".repeat(64), "é.example"] {
            assert!(!is_domain_name(bad), "{bad}");
        }
        assert_eq!(address_domain("Sender@Example.Org"), Some("example.org".into()));
        assert_eq!(address_domain(""), None);
    }
}
