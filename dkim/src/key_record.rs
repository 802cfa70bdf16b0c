//! The DKIM key record (RFC 6376 §3.6.1, RFC 8463 for `k=ed25519`): parsing the TXT text a
//! lookup returned, writing it, and the zone-file entry that publishes it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::pkcs8::DecodePublicKey as _;
use thiserror::Error;

use crate::tag_list::{parse_tag_list, without_fws, TagListError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa => "rsa",
            KeyType::Ed25519 => "ed25519",
        }
    }
}

#[derive(Debug, Clone)]
pub enum PublicKey {
    Rsa(Box<rsa::PublicKey>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A parsed key record.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// `k=` (rsa when absent).
    pub key_type: KeyType,
    /// `p=`; `None` when empty: the key is revoked.
    pub public_key: Option<PublicKey>,
    /// `h=`: the hash algorithms allowed (all when absent).
    pub hashes: Option<Vec<String>>,
    /// `t=y`: the domain is testing DKIM.
    pub testing: bool,
    /// `t=s`: `i=` must be exactly `d=`, not a subdomain.
    pub strict_identity: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyRecordError {
    #[error(transparent)]
    TagList(#[from] TagListError),
    #[error("v= must be DKIM1 and the first tag")]
    Version,
    #[error("unknown key type k={0}")]
    KeyType(String),
    #[error("p= is missing")]
    NoKey,
    /// Also an RSA key under 1024 bits (RFC 8301), which the rsa crate refuses to decode.
    #[error("p= is not a usable {0} public key")]
    BadKey(&'static str),
    #[error("s= does not include email or *")]
    Service,
}

impl KeyRecord {
    /// Parses the record's text (the strings of one TXT record, concatenated).
    pub fn parse(text: &str) -> Result<KeyRecord, KeyRecordError> {
        let tags = parse_tag_list(text)?;
        let get = |name: &str| tags.iter().find(|(tag, _)| *tag == name).map(|(_, value)| *value);
        if let Some(i) = tags.iter().position(|(tag, _)| *tag == "v") {
            if i != 0 || tags[i].1 != "DKIM1" {
                return Err(KeyRecordError::Version);
            }
        }
        let key_type = match get("k") {
            None | Some("rsa") => KeyType::Rsa,
            Some("ed25519") => KeyType::Ed25519,
            Some(other) => return Err(KeyRecordError::KeyType(other.into())),
        };
        if let Some(service) = get("s") {
            if !service.split(':').any(|s| matches!(s.trim(), "*" | "email")) {
                return Err(KeyRecordError::Service);
            }
        }
        let p = without_fws(get("p").ok_or(KeyRecordError::NoKey)?);
        let public_key = if p.is_empty() {
            None
        } else {
            let bytes = STANDARD.decode(&p).map_err(|_| KeyRecordError::BadKey(key_type.as_str()))?;
            Some(match key_type {
                KeyType::Rsa => PublicKey::Rsa(Box::new(
                    rsa::PublicKey::from_public_key_der(&bytes)
                        .or_else(|_| rsa::PublicKey::from_pkcs1_der(&bytes))
                        .map_err(|_| KeyRecordError::BadKey("rsa"))?,
                )),
                KeyType::Ed25519 => {
                    let raw: [u8; 32] = bytes.try_into().map_err(|_| KeyRecordError::BadKey("ed25519"))?;
                    PublicKey::Ed25519(
                        ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| KeyRecordError::BadKey("ed25519"))?,
                    )
                }
            })
        };
        let flags: Vec<&str> = get("t").map(|t| t.split(':').map(str::trim).collect()).unwrap_or_default();
        Ok(KeyRecord {
            key_type,
            public_key,
            hashes: get("h").map(|h| h.split(':').map(|x| x.trim().to_string()).collect()),
            testing: flags.contains(&"y"),
            strict_identity: flags.contains(&"s"),
        })
    }
}

/// The record as published: `v=DKIM1; k=…; [h=…; ][t=…; ]p=…`.
impl std::fmt::Display for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v=DKIM1; k={}; ", self.key_type.as_str())?;
        if let Some(hashes) = &self.hashes {
            write!(f, "h={}; ", hashes.join(":"))?;
        }
        let flags: Vec<&str> = [(self.testing, "y"), (self.strict_identity, "s")]
            .into_iter()
            .filter_map(|(on, flag)| on.then_some(flag))
            .collect();
        if !flags.is_empty() {
            write!(f, "t={}; ", flags.join(":"))?;
        }
        let p = self.public_key.as_ref().map(|key| STANDARD.encode(crate::key::public_key_bytes(key)));
        write!(f, "p={}", p.unwrap_or_default())
    }
}

/// The longest character-string of a TXT record (RFC 1035 §3.3).
const TXT_STRING_MAX: usize = 255;

/// The zone-file entry publishing `record` at `<selector>._domainkey.<domain>.`: the tags before
/// `p=` in one string, `p=` split into strings of at most 255 octets, one per line.
pub fn zone_file_entry(selector: &str, domain: &str, record: &str) -> String {
    let (head, key) = match record.find("p=") {
        Some(at) => record.split_at(at),
        None => (record, ""),
    };
    let mut strings: Vec<&str> = Vec::new();
    if !head.is_empty() {
        strings.push(head);
    }
    let mut rest = key;
    while !rest.is_empty() {
        // Records are ASCII (tags and base64), so any byte offset is a character boundary.
        let (string, tail) = rest.split_at(rest.len().min(TXT_STRING_MAX));
        strings.push(string);
        rest = tail;
    }
    let quoted: Vec<String> = strings.iter().map(|s| format!("\"{s}\"")).collect();
    let domain = domain.trim_end_matches('.');
    format!("{selector}._domainkey.{domain}. IN TXT ( {} )", quoted.join("\n\t"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8463 §A.2's Ed25519 public key.
    const ED_RECORD: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    #[test]
    fn parses_records() {
        let record = KeyRecord::parse(ED_RECORD).unwrap();
        assert_eq!(record.key_type, KeyType::Ed25519);
        assert!(matches!(record.public_key, Some(PublicKey::Ed25519(_))));
        assert_eq!(record.to_string(), ED_RECORD);

        let record = KeyRecord::parse("k=rsa; t=y : s; h=sha256; p=").unwrap();
        assert!(record.public_key.is_none(), "empty p= is a revoked key");
        assert!(record.testing && record.strict_identity);
        assert_eq!(record.hashes, Some(vec!["sha256".to_string()]));
        assert_eq!(record.to_string(), "v=DKIM1; k=rsa; h=sha256; t=y:s; p=");
    }

    #[test]
    fn refuses_malformed_records() {
        assert_eq!(KeyRecord::parse("k=rsa; v=DKIM1; p=").unwrap_err(), KeyRecordError::Version);
        assert_eq!(KeyRecord::parse("v=DKIM2; p=").unwrap_err(), KeyRecordError::Version);
        assert_eq!(KeyRecord::parse("v=DKIM1; k=dsa; p=").unwrap_err(), KeyRecordError::KeyType("dsa".into()));
        assert_eq!(KeyRecord::parse("v=DKIM1; k=rsa").unwrap_err(), KeyRecordError::NoKey);
        assert_eq!(KeyRecord::parse("v=DKIM1; k=rsa; p=AAAA").unwrap_err(), KeyRecordError::BadKey("rsa"));
        assert_eq!(KeyRecord::parse("k=ed25519; p=AAAA").unwrap_err(), KeyRecordError::BadKey("ed25519"));
        assert_eq!(KeyRecord::parse("s=tls; p=").unwrap_err(), KeyRecordError::Service);
    }

    #[test]
    fn rsa_keys_under_1024_bits_are_refused() {
        // RFC 8301: verifiers must not accept keys under 1024 bits (the rsa crate's minimum).
        let small = "v=DKIM1; k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAPCl2xq++3Kj8kVUp04J0Y2hrrOo2nkvvwWDvR6/oHcqEl2icUxh6bmGWNuMTQY55kVuwU0VAuZnIB+2XMEV4UUCAwEAAQ==";
        assert_eq!(KeyRecord::parse(small).unwrap_err(), KeyRecordError::BadKey("rsa"));
    }

    #[test]
    fn zone_file_strings_are_at_most_255_octets() {
        let record = format!("v=DKIM1; k=rsa; p={}", "A".repeat(600));
        let entry = zone_file_entry("s1", "example.org.", &record);
        assert!(entry.starts_with("s1._domainkey.example.org. IN TXT ( \"v=DKIM1; k=rsa; \"\n\t\"p=AAA"));
        assert!(entry.ends_with("\" )"));
        let strings: Vec<&str> = entry.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 4);
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert_eq!(strings.concat(), record);
    }
}
