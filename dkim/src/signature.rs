//! The `DKIM-Signature` field (RFC 6376 §3.5): its tags parsed and checked (§6.1.1), the raw
//! field kept for the header hash.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use thiserror::Error;

use crate::body::{BodyCanon, BodyHashSpec};
use crate::header::{canonicalize_field, field_name, select_fields, HeaderCanon};
use crate::tag_list::{parse_tag_list, without_fws, TagListError};

/// The signing algorithms supported (`a=`); `rsa-sha1` is refused, as RFC 8301 requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RsaSha256,
    Ed25519Sha256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// `c=`: header and body canonicalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Canonicalization {
    pub header: HeaderCanon,
    pub body: BodyCanon,
}

impl Canonicalization {
    /// Parses `relaxed/simple` and the like; a missing body part means simple (§3.5).
    pub fn parse(text: &str) -> Result<Canonicalization, SignatureError> {
        let (header, body) = text.split_once('/').unwrap_or((text, "simple"));
        let header = match header.trim() {
            "simple" => HeaderCanon::Simple,
            "relaxed" => HeaderCanon::Relaxed,
            _ => return Err(SignatureError::Canonicalization(text.into())),
        };
        let body = match body.trim() {
            "simple" => BodyCanon::Simple,
            "relaxed" => BodyCanon::Relaxed,
            _ => return Err(SignatureError::Canonicalization(text.into())),
        };
        Ok(Canonicalization { header, body })
    }
}

impl std::fmt::Display for Canonicalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |relaxed: bool| if relaxed { "relaxed" } else { "simple" };
        write!(f, "{}/{}", name(self.header == HeaderCanon::Relaxed), name(self.body == BodyCanon::Relaxed))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("the field is not a DKIM-Signature")]
    NotASignature,
    #[error("the field is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    TagList(#[from] TagListError),
    #[error("required tag {0}= is missing")]
    Missing(&'static str),
    #[error("unsupported version v={0}")]
    Version(String),
    #[error("unsupported algorithm a={0}")]
    Algorithm(String),
    #[error("unknown canonicalization c={0}")]
    Canonicalization(String),
    #[error("{0}= is not valid base64")]
    Base64(&'static str),
    #[error("h= does not include From")]
    FromNotSigned,
    #[error("i={identity} is not in d={domain} or a subdomain of it")]
    IdentityOutsideDomain { identity: String, domain: String },
    #[error("{0}= is not a number")]
    Number(&'static str),
    #[error("q={0} does not include dns/txt")]
    Query(String),
    #[error("x= is not after t=")]
    ExpiresBeforeSigned,
}

/// A parsed, checked `DKIM-Signature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub algorithm: Algorithm,
    /// `b=`, decoded.
    pub signature: Vec<u8>,
    /// `bh=`, decoded.
    pub body_hash: Vec<u8>,
    pub canonicalization: Canonicalization,
    /// `d=`, as written.
    pub domain: String,
    /// `h=`, in order, as written (compared without case).
    pub signed_headers: Vec<String>,
    /// `i=`, as written; `None` means `@d`.
    pub identity: Option<String>,
    /// `l=`.
    pub body_length: Option<u64>,
    /// `s=`.
    pub selector: String,
    /// `t=`, seconds since the epoch.
    pub timestamp: Option<u64>,
    /// `x=`, seconds since the epoch.
    pub expiration: Option<u64>,
    /// The whole field as received, for the header hash.
    pub raw: Vec<u8>,
}

impl Signature {
    /// Parses a raw `DKIM-Signature` field (name, colon, value with folding, final CRLF).
    pub fn parse_field(field: &[u8]) -> Result<Signature, SignatureError> {
        if !field_name(field).eq_ignore_ascii_case(b"DKIM-Signature") {
            return Err(SignatureError::NotASignature);
        }
        let colon = field.iter().position(|&b| b == b':').ok_or(SignatureError::NotASignature)?;
        let value = std::str::from_utf8(&field[colon + 1..]).map_err(|_| SignatureError::NotUtf8)?;
        let tags = parse_tag_list(value)?;
        let get = |name: &str| tags.iter().find(|(tag, _)| *tag == name).map(|(_, value)| *value);
        let require = |name: &'static str| get(name).ok_or(SignatureError::Missing(name));
        let base64 =
            |name: &'static str| STANDARD.decode(without_fws(require(name)?)).map_err(|_| SignatureError::Base64(name));
        let number = |name: &'static str| {
            get(name).map(|v| v.parse::<u64>().map_err(|_| SignatureError::Number(name))).transpose()
        };

        let version = require("v")?;
        if version != "1" {
            return Err(SignatureError::Version(version.into()));
        }
        let algorithm = match require("a")? {
            "rsa-sha256" => Algorithm::RsaSha256,
            "ed25519-sha256" => Algorithm::Ed25519Sha256,
            other => return Err(SignatureError::Algorithm(other.into())),
        };
        let signature = base64("b")?;
        let body_hash = base64("bh")?;
        let canonicalization = match get("c") {
            Some(c) => Canonicalization::parse(c)?,
            None => Canonicalization { header: HeaderCanon::Simple, body: BodyCanon::Simple },
        };
        let domain = require("d")?.to_string();
        let signed_headers: Vec<String> =
            require("h")?.split(':').map(without_fws).filter(|name| !name.is_empty()).collect();
        if !signed_headers.iter().any(|name| name.eq_ignore_ascii_case("from")) {
            return Err(SignatureError::FromNotSigned);
        }
        let identity = get("i").map(str::to_string);
        if let Some(identity) = &identity {
            let identity_domain = identity.rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
            let lower = domain.to_ascii_lowercase();
            if identity_domain != lower && !identity_domain.ends_with(&format!(".{lower}")) {
                return Err(SignatureError::IdentityOutsideDomain { identity: identity.clone(), domain });
            }
        }
        if let Some(query) = get("q") {
            if !query.split(':').any(|q| q.trim_matches(crate::tag_list::is_fws) == "dns/txt") {
                return Err(SignatureError::Query(query.into()));
            }
        }
        let timestamp = number("t")?;
        let expiration = number("x")?;
        if let (Some(t), Some(x)) = (timestamp, expiration) {
            if x <= t {
                return Err(SignatureError::ExpiresBeforeSigned);
            }
        }
        Ok(Signature {
            algorithm,
            signature,
            body_hash,
            canonicalization,
            domain,
            signed_headers,
            identity,
            body_length: number("l")?,
            selector: require("s")?.to_string(),
            timestamp,
            expiration,
            raw: field.to_vec(),
        })
    }

    /// The body hash this signature needs: one [`crate::BodyHasher`] per distinct spec.
    pub fn body_hash_spec(&self) -> BodyHashSpec {
        BodyHashSpec { canon: self.canonicalization.body, limit: self.body_length }
    }

    /// Where the key record is published: `<s>._domainkey.<d>`.
    pub fn key_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The first characters of `b=`, as `header.b` of RFC 6008 (8 is what it suggests).
    pub fn b_prefix(&self, len: usize) -> String {
        let mut b = STANDARD.encode(&self.signature);
        b.truncate(len);
        b
    }
}

/// What the signature signs (§3.7): the canonical forms of the header fields `h=` selects, then
/// the signature field itself with an empty `b=` and without its final CRLF. One function for
/// signer and verifier, so both hash the same bytes.
pub(crate) fn header_hash_input<S: AsRef<str>>(
    canon: HeaderCanon,
    fields: &[&[u8]],
    signed_headers: &[S],
    signature_field: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    for index in select_fields(fields, signed_headers).into_iter().flatten() {
        canonicalize_field(canon, fields[index], &mut out);
    }
    canonicalize_field(canon, &without_b_value(signature_field), &mut out);
    out.truncate(out.len() - 2);
    out
}

/// The raw field with the value of `b=` removed (and the final CRLF), as it is hashed (§3.7).
pub(crate) fn without_b_value(field: &[u8]) -> Vec<u8> {
    let colon = field.iter().position(|&b| b == b':').map_or(0, |i| i + 1);
    let mut out = field[..colon].to_vec();
    for (i, tag) in field[colon..].split(|&b| b == b';').enumerate() {
        if i > 0 {
            out.push(b';');
        }
        let eq = tag.iter().position(|&b| b == b'=');
        match eq {
            Some(eq) if tag[..eq].trim_ascii() == b"b" => out.extend_from_slice(&tag[..=eq]),
            _ => out.extend_from_slice(tag),
        }
    }
    while out.ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DKIMPY_STYLE: &[u8] = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.com;\r\n i=@mail.example.com; l=12; q=dns/txt; s=sel; t=100; x=200;\r\n h=date : message-id : from;\r\n bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n b=dzdVyOfAKCdLXdJOc9G2q8LoXSlEniSbav+yuU4zGeeruD00lszZVoG4ZHRNiYzR\r\n\r\n";

    #[test]
    fn parses_every_tag() {
        let sig = Signature::parse_field(DKIMPY_STYLE).unwrap();
        assert_eq!(sig.algorithm, Algorithm::RsaSha256);
        assert_eq!(sig.canonicalization.to_string(), "relaxed/simple");
        assert_eq!(sig.domain, "example.com");
        assert_eq!(sig.signed_headers, ["date", "message-id", "from"]);
        assert_eq!(sig.identity.as_deref(), Some("@mail.example.com"));
        assert_eq!(sig.body_hash_spec(), BodyHashSpec { canon: BodyCanon::Simple, limit: Some(12) });
        assert_eq!((sig.timestamp, sig.expiration), (Some(100), Some(200)));
        assert_eq!(sig.key_name(), "sel._domainkey.example.com");
        assert_eq!(sig.body_hash.len(), 32);
        assert_eq!(sig.b_prefix(8), "dzdVyOfA");
    }

    #[test]
    fn defaults_and_refusals() {
        let sig = |tags: &str| Signature::parse_field(format!("DKIM-Signature: {tags}\r\n").as_bytes());
        let base = "v=1; a=ed25519-sha256; d=example.com; s=s; h=From; bh=AAAA; b=AAAA";
        let parsed = sig(base).unwrap();
        assert_eq!(parsed.canonicalization.to_string(), "simple/simple");
        assert_eq!(sig(&format!("{base}; c=relaxed")).unwrap().canonicalization.to_string(), "relaxed/simple");
        assert_eq!(sig(&base.replace("v=1", "v=2")), Err(SignatureError::Version("2".into())));
        assert_eq!(sig(&base.replace("ed25519-sha256", "rsa-sha1")), Err(SignatureError::Algorithm("rsa-sha1".into())));
        assert_eq!(sig(&base.replace("h=From", "h=To")), Err(SignatureError::FromNotSigned));
        assert_eq!(sig(&base.replace("; s=s", "")), Err(SignatureError::Missing("s")));
        assert_eq!(sig(&base.replace("b=AAAA", "b=A!AA")), Err(SignatureError::Base64("b")));
        assert!(matches!(sig(&format!("{base}; i=a@other.com")), Err(SignatureError::IdentityOutsideDomain { .. })));
        assert!(sig(&format!("{base}; i=a@sub.example.com")).is_ok());
        assert_eq!(sig(&format!("{base}; t=5; x=5")), Err(SignatureError::ExpiresBeforeSigned));
        assert_eq!(sig(&format!("{base}; q=dns/xyz")), Err(SignatureError::Query("dns/xyz".into())));
        assert_eq!(sig(&format!("{base}; c=weird")), Err(SignatureError::Canonicalization("weird".into())));
        assert_eq!(Signature::parse_field(b"From: x\r\n"), Err(SignatureError::NotASignature));
    }

    #[test]
    fn b_value_removed_for_hashing() {
        assert_eq!(
            without_b_value(b"DKIM-Signature: a=1; bh=xyz; b=abc\r\n\tdef; s=x\r\n"),
            b"DKIM-Signature: a=1; bh=xyz; b=; s=x"
        );
        assert_eq!(without_b_value(b"DKIM-Signature: a=1;\r\n b =abc\r\n"), b"DKIM-Signature: a=1;\r\n b =");
    }
}
