//! The tag=value list of RFC 6376 §3.2, shared by `DKIM-Signature` fields and key records:
//! `;`-separated tags, folding whitespace allowed around names, `=` and values, a trailing `;`.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagListError {
    #[error("tag {0:?} has no \"=\"")]
    NoEquals(String),
    #[error("{0:?} is not a tag name (a letter, then letters, digits or \"_\")")]
    BadName(String),
    #[error("tag {0:?} appears twice")]
    Duplicate(String),
    #[error("empty tag between two \";\"")]
    Empty,
}

/// Parses a tag list into (name, value) pairs in order, values without surrounding whitespace
/// (whitespace inside a value, e.g. folding in `b=`, is the caller's to remove).
pub fn parse_tag_list(text: &str) -> Result<Vec<(&str, &str)>, TagListError> {
    let mut tags: Vec<(&str, &str)> = Vec::new();
    let parts: Vec<&str> = text.split(';').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.trim_matches(is_fws).is_empty() {
            // Only after the last ";" (or an empty list) may a tag be missing.
            if i + 1 == parts.len() {
                break;
            }
            return Err(TagListError::Empty);
        }
        let (name, value) = part.split_once('=').ok_or_else(|| TagListError::NoEquals(part.trim().into()))?;
        let name = name.trim_matches(is_fws);
        let mut chars = name.chars();
        let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !well_formed {
            return Err(TagListError::BadName(name.into()));
        }
        if tags.iter().any(|(seen, _)| *seen == name) {
            return Err(TagListError::Duplicate(name.into()));
        }
        tags.push((name, value.trim_matches(is_fws)));
    }
    Ok(tags)
}

/// Folding whitespace: SP, HTAB and the CRLF of a fold.
pub(crate) fn is_fws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// A value with all folding whitespace removed (base64 values: `b=`, `bh=`, `p=`).
pub(crate) fn without_fws(value: &str) -> String {
    value.chars().filter(|&c| !is_fws(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_folding_whitespace() {
        let text = "v=1; a=rsa-sha256;\r\n\td=example.net ; h = date : message-id : from;\r\n b=dzdV\r\n\t  ZZZ=;";
        assert_eq!(
            parse_tag_list(text).unwrap(),
            [
                ("v", "1"),
                ("a", "rsa-sha256"),
                ("d", "example.net"),
                ("h", "date : message-id : from"),
                ("b", "dzdV\r\n\t  ZZZ=")
            ]
        );
        assert_eq!(parse_tag_list("").unwrap(), []);
        assert_eq!(parse_tag_list("p=").unwrap(), [("p", "")]);
        assert_eq!(without_fws("dzdV\r\n\t  ZZZ="), "dzdVZZZ=");
    }

    #[test]
    fn refuses_malformed_lists() {
        assert_eq!(parse_tag_list("v=1; v=1"), Err(TagListError::Duplicate("v".into())));
        assert_eq!(parse_tag_list("v=1;; a=b"), Err(TagListError::Empty));
        assert_eq!(parse_tag_list("v=1; junk"), Err(TagListError::NoEquals("junk".into())));
        assert_eq!(parse_tag_list("1x=2"), Err(TagListError::BadName("1x".into())));
        assert_eq!(parse_tag_list("=2"), Err(TagListError::BadName("".into())));
    }
}
