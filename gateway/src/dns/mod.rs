//! The `dns` capability of filters: what a filter may ask (TXT records of a name), the typed
//! answers it gets, and the bounds on an answer. Two sources answer: the gateway's resolver
//! (`resolver`, hickory with its TTL-honouring cache, per `[dns]`) and, for `sluice filter-test`,
//! a zone file (`zone`), so authors can try a verifier without a DNS server.

mod resolver;
mod zone;

use async_trait::async_trait;

pub use resolver::Resolver;
pub use zone::ZoneFile;

/// The most records one answer gives a filter, and the most text in all: a name with more is
/// no DKIM or SPF record, and a filter's memory is not the resolver's to fill.
pub const MAX_RECORDS: usize = 64;
pub const MAX_ANSWER: usize = 64 * 1024;

/// Why a lookup has no answer (the contract's `dns-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no such record")]
    NotFound,
    #[error("timed out")]
    Timeout,
    #[error("server failure")]
    ServerFailure,
    #[error("not a valid domain name")]
    BadName,
}

/// Something that answers TXT lookups.
#[async_trait]
pub trait TxtSource: Send + Sync {
    /// The TXT records of `name`, each one's character-strings as given (not yet bounded).
    async fn txt_records(&self, name: &str) -> Result<Vec<Vec<Vec<u8>>>, LookupError>;
}

/// A lookup as a filter sees it: one string per record, its character-strings concatenated
/// (bytes that are not UTF-8 replaced), at most `MAX_RECORDS` records and `MAX_ANSWER` bytes.
pub async fn txt(source: &dyn TxtSource, name: &str) -> Result<Vec<String>, LookupError> {
    if !valid_name(name) {
        return Err(LookupError::BadName);
    }
    let records = source.txt_records(name).await?;
    Ok(bounded(records))
}

fn bounded(records: Vec<Vec<Vec<u8>>>) -> Vec<String> {
    let mut total = 0;
    let mut out = Vec::new();
    for record in records.into_iter().take(MAX_RECORDS) {
        let text = String::from_utf8_lossy(&record.concat()).into_owned();
        total += text.len();
        if total > MAX_ANSWER {
            break;
        }
        out.push(text);
    }
    out
}

/// A domain name a resolver can be asked: labels of 1–63 octets, 253 in all, no spaces or
/// control characters (underscores are fine: `s1._domainkey.example.org`).
fn valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| (1..=63).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<Vec<Vec<u8>>>);

    #[async_trait]
    impl TxtSource for Fixed {
        async fn txt_records(&self, _name: &str) -> Result<Vec<Vec<Vec<u8>>>, LookupError> {
            Ok(self.0.clone())
        }
    }

    #[tokio::test]
    async fn records_are_joined_and_bounded() {
        let split = Fixed(vec![vec![b"v=DKIM1; ".to_vec(), b"p=AB".to_vec()], vec![b"\xff".to_vec()]]);
        assert_eq!(txt(&split, "s1._domainkey.example.org.").await.unwrap(), ["v=DKIM1; p=AB", "\u{fffd}"]);
        let many = Fixed(vec![vec![b"x".to_vec()]; 100]);
        assert_eq!(txt(&many, "example.org").await.unwrap().len(), MAX_RECORDS);
        let huge = Fixed(vec![vec![vec![b'a'; 40 * 1024]]; 3]);
        assert_eq!(txt(&huge, "example.org").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bad_names_are_refused_before_any_lookup() {
        let source = Fixed(vec![]);
        for name in ["", ".", "a..b", "has space.org", &"a".repeat(64), &format!("{}.org", "a.".repeat(130))] {
            assert_eq!(txt(&source, name).await, Err(LookupError::BadName), "{name:?}");
        }
        assert_eq!(txt(&source, "s1._domainkey.example.org").await, Ok(vec![]));
    }
}
