//! Verification of one signature (RFC 6376 §6.1.3) once the body has streamed by: the body hash
//! computed for its [`crate::BodyHashSpec`], the header fields, the key record text the caller
//! looked up and the time give pass, fail (with why) or permerror.

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::auth_results::DkimResult;
use crate::body::BodyHash;
use crate::key_record::{KeyRecord, KeyRecordError, KeyType, PublicKey};
use crate::signature::{header_hash_input, Algorithm, Signature};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(FailReason),
    PermError(PermErrorReason),
}

impl Verdict {
    /// The RFC 8601 result this verdict is reported as.
    pub fn result(&self) -> DkimResult {
        match self {
            Verdict::Pass => DkimResult::Pass,
            Verdict::Fail(_) => DkimResult::Fail,
            Verdict::PermError(_) => DkimResult::PermError,
        }
    }

    /// Why it did not pass, for a `reason=` or a log line.
    pub fn reason(&self) -> Option<String> {
        match self {
            Verdict::Pass => None,
            Verdict::Fail(reason) => Some(reason.to_string()),
            Verdict::PermError(reason) => Some(reason.to_string()),
        }
    }
}

/// The signature was checked and is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FailReason {
    #[error("body hash mismatch")]
    BodyHashMismatch,
    #[error("bad signature")]
    BadSignature,
    #[error("signature expired")]
    Expired,
}

/// The signature cannot be checked: its key record is unusable or does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PermErrorReason {
    #[error("key record: {0}")]
    KeyRecord(#[from] KeyRecordError),
    #[error("key revoked")]
    KeyRevoked,
    #[error("algorithm mismatch: a={signature} but k={key}")]
    AlgorithmMismatch { signature: &'static str, key: &'static str },
    #[error("the key record does not allow sha256 (h=)")]
    HashNotAllowed,
    #[error("the key record demands i= equal to d= (t=s)")]
    IdentityNotStrict,
}

/// Checks `signature` against the message's raw header `fields` (top to bottom, the signature's
/// own field among them), the hash of its body computed for [`Signature::body_hash_spec`], the
/// text of its key record (the strings of the TXT record concatenated) and `now` (seconds since
/// the epoch). A key lookup that failed is the caller's to report (permerror when there is no
/// record, temperror when the lookup failed).
pub fn verify(signature: &Signature, fields: &[&[u8]], body: &BodyHash, key_record: &str, now: u64) -> Verdict {
    match check(signature, fields, body, key_record, now) {
        Ok(()) => Verdict::Pass,
        Err(Problem::Fail(reason)) => Verdict::Fail(reason),
        Err(Problem::PermError(reason)) => Verdict::PermError(reason),
    }
}

enum Problem {
    Fail(FailReason),
    PermError(PermErrorReason),
}

impl From<PermErrorReason> for Problem {
    fn from(reason: PermErrorReason) -> Problem {
        Problem::PermError(reason)
    }
}

fn check(signature: &Signature, fields: &[&[u8]], body: &BodyHash, key_record: &str, now: u64) -> Result<(), Problem> {
    if signature.expiration.is_some_and(|x| x < now) {
        return Err(Problem::Fail(FailReason::Expired));
    }
    let record = KeyRecord::parse(key_record).map_err(PermErrorReason::from)?;
    let key = record.public_key.as_ref().ok_or(PermErrorReason::KeyRevoked)?;
    let expected = match signature.algorithm {
        Algorithm::RsaSha256 => KeyType::Rsa,
        Algorithm::Ed25519Sha256 => KeyType::Ed25519,
    };
    if record.key_type != expected {
        return Err(PermErrorReason::AlgorithmMismatch {
            signature: signature.algorithm.as_str(),
            key: record.key_type.as_str(),
        }
        .into());
    }
    if record.hashes.as_ref().is_some_and(|hashes| !hashes.iter().any(|h| h == "sha256")) {
        return Err(PermErrorReason::HashNotAllowed.into());
    }
    if record.strict_identity {
        let identity_domain = signature.identity.as_deref().and_then(|i| i.rsplit_once('@')).map(|(_, d)| d);
        if identity_domain.is_some_and(|d| !d.eq_ignore_ascii_case(&signature.domain)) {
            return Err(PermErrorReason::IdentityNotStrict.into());
        }
    }
    if body.digest[..] != signature.body_hash[..] {
        return Err(Problem::Fail(FailReason::BodyHashMismatch));
    }
    let input = header_hash_input(signature.canonicalization.header, fields, &signature.signed_headers, &signature.raw);
    let digest = Sha256::digest(&input);
    let good = match key {
        PublicKey::Rsa(key) => key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, &signature.signature).is_ok(),
        PublicKey::Ed25519(key) => <[u8; 64]>::try_from(signature.signature.as_slice())
            .is_ok_and(|b| key.verify_strict(&digest, &ed25519_dalek::Signature::from_bytes(&b)).is_ok()),
    };
    if good {
        Ok(())
    } else {
        Err(Problem::Fail(FailReason::BadSignature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{BodyCanon, BodyHashSpec, BodyHasher};
    use crate::header::split_header_section;

    // RFC 8463 §A.3: the ed25519-sha256 signed example, with its key record (§A.2).
    const RFC8463_MESSAGE: &[u8] = b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n d=football.example.com; i=@football.example.com;\r\n q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n subject : date : message-id : from : subject : date;\r\n bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\nFrom: Joe SixPack <joe@football.example.com>\r\nTo: Suzie Q <suzie@shopping.example.net>\r\nSubject: Is dinner ready?\r\nDate: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\nMessage-ID: <20030712040037.46341.5F8J@football.example.com>\r\n";
    const RFC8463_BODY: &[u8] = b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n";
    const RFC8463_KEY: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn rfc8463() -> (Signature, Vec<&'static [u8]>, BodyHash) {
        let fields = split_header_section(RFC8463_MESSAGE);
        let signature = Signature::parse_field(fields[0]).unwrap();
        let mut hasher = BodyHasher::new(BodyHashSpec { canon: BodyCanon::Relaxed, limit: None });
        hasher.update(RFC8463_BODY);
        (signature, fields, hasher.finish())
    }

    #[test]
    fn verifies_the_rfc_8463_example() {
        let (signature, fields, body) = rfc8463();
        assert_eq!(body.to_base64(), "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
        assert_eq!(verify(&signature, &fields, &body, RFC8463_KEY, 1528637909), Verdict::Pass);
    }

    #[test]
    fn reports_each_failure() {
        let (signature, fields, body) = rfc8463();
        let now = 1528637909;
        let mut changed = fields.clone();
        changed[3] = b"Subject: Is dinner ready??\r\n";
        assert_eq!(verify(&signature, &changed, &body, RFC8463_KEY, now), Verdict::Fail(FailReason::BadSignature));
        let other_body = BodyHash { digest: [0; 32], ..body };
        assert_eq!(
            verify(&signature, &fields, &other_body, RFC8463_KEY, now),
            Verdict::Fail(FailReason::BodyHashMismatch)
        );
        assert_eq!(
            verify(&signature, &fields, &body, "v=DKIM1; k=ed25519; p=", now),
            Verdict::PermError(PermErrorReason::KeyRevoked)
        );
        assert!(matches!(
            verify(&signature, &fields, &body, "v=DKIM1; p=MIIB", now),
            Verdict::PermError(PermErrorReason::KeyRecord(_))
        ));
        let rsa = crate::key::SigningKey::generate_rsa(1024).unwrap().key_record().to_string();
        assert_eq!(
            verify(&signature, &fields, &body, &rsa, now),
            Verdict::PermError(PermErrorReason::AlgorithmMismatch { signature: "ed25519-sha256", key: "rsa" })
        );
        assert_eq!(
            verify(&signature, &fields, &body, &format!("{RFC8463_KEY}; h=sha1"), now),
            Verdict::PermError(PermErrorReason::HashNotAllowed)
        );
        let mut expiring = signature.clone();
        expiring.expiration = Some(now + 10);
        assert_eq!(verify(&expiring, &fields, &body, RFC8463_KEY, now + 11), Verdict::Fail(FailReason::Expired));
        assert_eq!(Verdict::Fail(FailReason::Expired).result(), DkimResult::Fail);
        assert_eq!(Verdict::PermError(PermErrorReason::KeyRevoked).result(), DkimResult::PermError);
    }
}
