//! Signing: a [`Signer`] holds the key and the choices (domain, selector, canonicalisation, the
//! header fields to sign, expiration) and turns the header fields and the streamed body hash
//! into a complete, folded `DKIM-Signature` field.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::body::{BodyCanon, BodyHash, BodyHashSpec, BodyHasher};
use crate::header::{field_name, HeaderCanon};
use crate::key::{KeyError, SigningKey};
use crate::signature::{header_hash_input, Algorithm, Canonicalization};

/// The header fields signed by default: RFC 6376 §5.4.1's list and the MIME fields, whenever
/// present. From is always signed, once more than it is present (oversigned), so that no From
/// can be added without breaking the signature.
pub fn default_signed_headers() -> Vec<String> {
    [
        "from",
        "reply-to",
        "subject",
        "date",
        "to",
        "cc",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "resent-date",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "list-id",
        "list-help",
        "list-unsubscribe",
        "list-subscribe",
        "list-post",
        "list-owner",
        "list-archive",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Lines of the signature field are folded before this many columns (RFC 5322 asks for 78).
const FOLD_COLUMN: usize = 78;
const NAME: &str = "DKIM-Signature";

/// A private key that signs, wherever it is held: a [`SigningKey`] in this process, or one the
/// host holds for a filter (`sluice:filter/keys`, which signs natively and never lets the key
/// into the filter's memory).
pub trait Key {
    fn algorithm(&self) -> Algorithm;
    /// Signs `data`: its SHA-256 digest with RSASSA-PKCS1-v1_5, or PureEd25519 over the digest.
    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, KeyError>;
}

impl Key for SigningKey {
    fn algorithm(&self) -> Algorithm {
        SigningKey::algorithm(self)
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        SigningKey::sign(self, data)
    }
}

pub struct Signer {
    key: Box<dyn Key + Send + Sync>,
    domain: String,
    selector: String,
    canonicalization: Canonicalization,
    signed_headers: Vec<String>,
    expiration: Option<u64>,
}

/// A signature ready to be prepended: the value is folded with CRLF and a tab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureField {
    pub value: String,
}

impl SignatureField {
    pub fn name(&self) -> &'static str {
        NAME
    }

    /// The whole field, with its final CRLF, as it is signed.
    pub fn to_field(&self) -> String {
        format!("{NAME}: {}\r\n", self.value)
    }
}

impl Signer {
    /// A signer with relaxed/relaxed canonicalisation and [`default_signed_headers`].
    pub fn new(key: impl Key + Send + Sync + 'static, domain: &str, selector: &str) -> Signer {
        Signer {
            key: Box::new(key),
            domain: domain.to_string(),
            selector: selector.to_string(),
            canonicalization: Canonicalization { header: HeaderCanon::Relaxed, body: BodyCanon::Relaxed },
            signed_headers: default_signed_headers(),
            expiration: None,
        }
    }

    pub fn with_canonicalization(mut self, canonicalization: Canonicalization) -> Signer {
        self.canonicalization = canonicalization;
        self
    }

    /// The names of the fields to sign when present (From is added if missing).
    pub fn with_signed_headers(mut self, names: &[&str]) -> Signer {
        self.signed_headers = names.iter().map(|name| name.to_ascii_lowercase()).collect();
        if !self.signed_headers.iter().any(|name| name == "from") {
            self.signed_headers.insert(0, "from".into());
        }
        self
    }

    /// Signatures expire (`x=`) this many seconds after signing.
    pub fn with_expiration(mut self, seconds: u64) -> Signer {
        self.expiration = Some(seconds);
        self
    }

    /// The hasher the body must be streamed through before [`Signer::sign`].
    pub fn body_hasher(&self) -> BodyHasher {
        BodyHasher::new(BodyHashSpec { canon: self.canonicalization.body, limit: None })
    }

    /// Signs a message: `fields` are its raw header fields, top to bottom; `body` what
    /// [`Signer::body_hasher`] returned; `now` the time in seconds since the epoch (`t=`).
    pub fn sign(&self, fields: &[&[u8]], body: &BodyHash, now: u64) -> Result<SignatureField, KeyError> {
        let h = self.header_list(fields);
        let mut value = Folder::new(NAME.len() + 2);
        value.word(&format!("v=1; a={};", self.key.algorithm().as_str()));
        value.word(&format!("c={};", self.canonicalization));
        value.word(&format!("d={};", self.domain));
        value.word(&format!("s={};", self.selector));
        value.word(&format!("t={now};"));
        if let Some(seconds) = self.expiration {
            value.word(&format!("x={};", now + seconds));
        }
        // h= may fold at its colons (FWS is allowed around them).
        for (i, name) in h.iter().enumerate() {
            let piece = match (i == 0, i + 1 == h.len()) {
                (true, true) => format!("h={name};"),
                (true, false) => format!("h={name}:"),
                (false, true) => format!("{name};"),
                (false, false) => format!("{name}:"),
            };
            if i == 0 {
                value.word(&piece)
            } else {
                value.glued(&piece)
            }
        }
        value.word(&format!("bh={};", body.to_base64()));
        value.word("b=");
        let unsigned = format!("{NAME}: {}\r\n", value.text);
        let input = header_hash_input(self.canonicalization.header, fields, &h, unsigned.as_bytes());
        let b = STANDARD.encode(self.key.sign(&input)?);
        value.base64(&b);
        Ok(SignatureField { value: value.text })
    }

    /// `h=`: each configured name once per instance present, From once more.
    fn header_list(&self, fields: &[&[u8]]) -> Vec<String> {
        let mut h = Vec::new();
        for name in &self.signed_headers {
            let present = fields.iter().filter(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes())).count();
            let times = if name == "from" { present + 1 } else { present };
            h.extend(std::iter::repeat_n(name.clone(), times));
        }
        h
    }
}

/// Builds a folded field value: words separated by a space, a fold (CRLF TAB) before a word
/// that would cross [`FOLD_COLUMN`].
struct Folder {
    text: String,
    column: usize,
}

impl Folder {
    fn new(column: usize) -> Folder {
        Folder { text: String::new(), column }
    }

    fn word(&mut self, word: &str) {
        if !self.text.is_empty() {
            if self.column + 1 + word.len() > FOLD_COLUMN {
                self.fold();
            } else {
                self.text.push(' ');
                self.column += 1;
            }
        }
        self.push(word);
    }

    /// A word that follows the last without a space (folding whitespace only when needed).
    fn glued(&mut self, word: &str) {
        if self.column + word.len() > FOLD_COLUMN {
            self.fold();
        }
        self.push(word);
    }

    /// Base64, broken wherever a line is full.
    fn base64(&mut self, mut data: &str) {
        while !data.is_empty() {
            if self.column >= FOLD_COLUMN {
                self.fold();
            }
            let (line, rest) = data.split_at((FOLD_COLUMN - self.column).min(data.len()));
            self.push(line);
            data = rest;
        }
    }

    fn fold(&mut self) {
        self.text.push_str("\r\n\t");
        self.column = 1;
    }

    fn push(&mut self, word: &str) {
        self.text.push_str(word);
        self.column += word.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::split_header_section;
    use crate::signature::Signature;
    use crate::verify::{verify, Verdict};

    const MESSAGE_HEAD: &[u8] = b"From: Joe <joe@example.org>\r\nTo: you@example.net\r\nSubject: a\r\n  folded subject\r\nDate: Wed, 2 Dec 2026 04:00:00 +0000\r\n";

    fn body_hash(signer: &Signer, body: &[u8]) -> BodyHash {
        let mut hasher = signer.body_hasher();
        hasher.update(body);
        hasher.finish()
    }

    #[test]
    fn signs_folded_fields_that_verify() {
        let key = SigningKey::generate_ed25519().unwrap();
        let record = key.key_record().to_string();
        let signer = Signer::new(key, "example.org", "s1").with_expiration(3600);
        let fields = split_header_section(MESSAGE_HEAD);
        let body = body_hash(&signer, b"Hello\r\n");
        let field = signer.sign(&fields, &body, 1_000_000).unwrap();
        let text = field.to_field();
        assert!(text.lines().all(|line| line.len() <= FOLD_COLUMN), "{text}");
        assert!(!text.contains(" \r\n"), "no trailing whitespace: {text}");

        let sig = Signature::parse_field(text.as_bytes()).unwrap();
        assert_eq!(sig.signed_headers, ["from", "from", "subject", "date", "to"]);
        assert_eq!((sig.timestamp, sig.expiration), (Some(1_000_000), Some(1_003_600)));
        assert_eq!(verify(&sig, &fields, &body, &record, 1_000_001), Verdict::Pass);
        // A second From, added below: the oversigned From covers its absence.
        let mut added = fields.clone();
        added.push(b"From: evil@example.com\r\n");
        assert!(matches!(verify(&sig, &added, &body, &record, 1_000_001), Verdict::Fail(_)));
    }

    #[test]
    fn a_long_header_list_folds_at_its_colons() {
        let key = SigningKey::generate_ed25519().unwrap();
        let record = key.key_record().to_string();
        let signer = Signer::new(key, "example.org", "s1")
            .with_canonicalization(Canonicalization { header: HeaderCanon::Simple, body: BodyCanon::Simple });
        let head: String = default_signed_headers().iter().map(|name| format!("{name}: x\r\n")).collect();
        let fields = split_header_section(head.as_bytes());
        let body = body_hash(&signer, b"");
        let field = signer.sign(&fields, &body, 7).unwrap().to_field();
        assert!(field.lines().count() > 4 && field.lines().all(|line| line.len() <= FOLD_COLUMN), "{field}");
        let sig = Signature::parse_field(field.as_bytes()).unwrap();
        assert_eq!(sig.signed_headers.len(), default_signed_headers().len() + 1);
        assert_eq!(verify(&sig, &fields, &body, &record, 8), Verdict::Pass);
    }

    #[test]
    fn configured_list_always_has_from() {
        let key = SigningKey::generate_ed25519().unwrap();
        let signer = Signer::new(key, "example.org", "s1").with_signed_headers(&["Subject", "X-Absent"]);
        assert_eq!(signer.header_list(&split_header_section(MESSAGE_HEAD)), ["from", "from", "subject"]);
    }
}
