//! Private signing keys: loading the PEM forms operators have (RSA PKCS#1 or PKCS#8, Ed25519
//! PKCS#8 as `openssl genpkey -algorithm ed25519` writes), generating new ones, writing them as
//! PKCS#8 PEM, and the key record that publishes their public half.

// One pkcs8 crate behind both key types: these traits serve RSA and Ed25519 alike.
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, KeypairBytes};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use thiserror::Error;

use crate::key_record::{KeyRecord, KeyType, PublicKey};
use crate::signature::Algorithm;

/// RSA key sizes accepted for signing, and the size below which a key is weak (RFC 8301 asks
/// for 2048 bits; 1024 is the least verifiers accept).
pub const MIN_RSA_BITS: usize = 1024;
pub const MAX_RSA_BITS: usize = 4096;
pub const WEAK_RSA_BITS: usize = 2048;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("not a PEM private key this signer can use: expected \"-----BEGIN RSA PRIVATE KEY-----\" (PKCS#1) or \"-----BEGIN PRIVATE KEY-----\" (PKCS#8, RSA or Ed25519); write one with `sluice dkim keygen`")]
    Unrecognised,
    #[error("the RSA key has {0} bits; use one of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits (2048 is the usual size)")]
    RsaSize(usize),
    #[error("cannot generate the key: {0}")]
    Generate(String),
    #[error("cannot write the key as PKCS#8 PEM: {0}")]
    Encode(String),
    #[error("cannot sign: {0}")]
    Sign(String),
    /// A key file holding no usable key: what it holds instead.
    #[error("{0}; {EXPECTED_KEY}")]
    NotAKey(String),
}

/// What a key file must hold, for the errors about one that does not.
const EXPECTED_KEY: &str = "expected an unencrypted PEM private key: RSA (\"BEGIN RSA PRIVATE KEY\", PKCS#1, \
     or \"BEGIN PRIVATE KEY\", PKCS#8) or Ed25519 (\"BEGIN PRIVATE KEY\", PKCS#8), as `sluice dkim keygen` \
     and `openssl genpkey` write";

/// A private key that signs.
pub enum SigningKey {
    // Both boxed: each is a few hundred bytes, and a signer holds one for its life.
    Rsa(Box<rsa::PrivateKey>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningKey::Rsa(key) => write!(f, "SigningKey::Rsa({} bits)", key.size() * 8),
            SigningKey::Ed25519(_) => f.write_str("SigningKey::Ed25519"),
        }
    }
}

impl SigningKey {
    /// Reads a PEM private key. Both RSA and Ed25519 PKCS#8 say "PRIVATE KEY": the algorithm
    /// identifier inside decides.
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        let key = if let Ok(key) = rsa::PrivateKey::from_pkcs1_pem(pem) {
            SigningKey::Rsa(Box::new(key))
        } else if let Ok(key) = rsa::PrivateKey::from_pkcs8_pem(pem) {
            SigningKey::Rsa(Box::new(key))
        } else if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            SigningKey::Ed25519(Box::new(key))
        } else {
            return Err(KeyError::Unrecognised);
        };
        match key.rsa_bits() {
            Some(bits) if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) => Err(KeyError::RsaSize(bits)),
            _ => Ok(key),
        }
    }

    /// Reads the bytes of a key file; a file holding no usable key is `NotAKey`, saying what it
    /// holds instead (for the operator who configured it).
    pub fn from_pem_file(bytes: &[u8]) -> Result<SigningKey, KeyError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KeyError::NotAKey("is not text".into()))?;
        SigningKey::from_pem(text).map_err(|err| match err {
            KeyError::Unrecognised => KeyError::NotAKey(what_pem_holds(text)),
            other => other,
        })
    }

    /// A new RSA key of `bits` bits, from the operating system's random source.
    pub fn generate_rsa(bits: usize) -> Result<SigningKey, KeyError> {
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(KeyError::RsaSize(bits));
        }
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits).map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(SigningKey::Rsa(Box::new(key)))
    }

    /// A new Ed25519 key, from the operating system's random source.
    pub fn generate_ed25519() -> Result<SigningKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(SigningKey::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed))))
    }

    /// The key as PKCS#8 PEM (for Ed25519 the RFC 8410 form without the public key, as
    /// OpenSSL writes it).
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        let pem = match self {
            SigningKey::Rsa(key) => key.to_pkcs8_pem(LineEnding::LF),
            SigningKey::Ed25519(key) => {
                KeypairBytes { secret_key: key.to_bytes(), public_key: None }.to_pkcs8_pem(LineEnding::LF)
            }
        };
        pem.map(|pem| pem.to_string()).map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// The key as PKCS#8 DER, for a native signer to load it (the gateway's, with ring).
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        let der = match self {
            SigningKey::Rsa(key) => key.to_pkcs8_der(),
            SigningKey::Ed25519(key) => KeypairBytes { secret_key: key.to_bytes(), public_key: None }.to_pkcs8_der(),
        };
        der.map(|der| der.as_bytes().to_vec()).map_err(|e| KeyError::Encode(e.to_string()))
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Rsa(_) => Algorithm::RsaSha256,
            SigningKey::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }

    /// The modulus size of an RSA key.
    pub fn rsa_bits(&self) -> Option<usize> {
        match self {
            SigningKey::Rsa(key) => Some(key.size() * 8),
            SigningKey::Ed25519(_) => None,
        }
    }

    /// An RSA key under 2048 bits: it signs, but the operator should be told.
    pub fn weak_key(&self) -> bool {
        self.rsa_bits().is_some_and(|bits| bits < WEAK_RSA_BITS)
    }

    /// Signs `data`: its SHA-256 digest with RSASSA-PKCS1-v1_5, or for Ed25519 PureEd25519 over
    /// the digest (RFC 8463 §3).
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        use sha2::Digest as _;
        self.sign_digest(&sha2::Sha256::digest(data))
    }

    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        use ed25519_dalek::Signer as _;
        match self {
            SigningKey::Rsa(key) => {
                key.sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), digest).map_err(|e| KeyError::Sign(e.to_string()))
            }
            SigningKey::Ed25519(key) => Ok(key.sign(digest).to_bytes().to_vec()),
        }
    }

    /// The key record to publish for this key (`v=DKIM1; k=…; p=…`).
    pub fn key_record(&self) -> KeyRecord {
        let (key_type, public_key) = match self {
            SigningKey::Rsa(key) => (KeyType::Rsa, PublicKey::Rsa(Box::new(key.to_public_key()))),
            SigningKey::Ed25519(key) => (KeyType::Ed25519, PublicKey::Ed25519(key.verifying_key())),
        };
        KeyRecord { key_type, public_key: Some(public_key), hashes: None, testing: false, strict_identity: false }
    }
}

/// What a PEM file that is no usable key holds, from its first `BEGIN` line.
fn what_pem_holds(text: &str) -> String {
    let label = text.lines().find_map(|line| line.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"));
    match label {
        None => "has no PEM \"-----BEGIN ...-----\" line".into(),
        Some("ENCRYPTED PRIVATE KEY") => "holds an encrypted key (\"ENCRYPTED PRIVATE KEY\")".into(),
        Some(label @ ("PRIVATE KEY" | "RSA PRIVATE KEY")) => {
            format!("holds a {label:?} that is neither an RSA nor an Ed25519 key, or is damaged")
        }
        Some(label) => format!("holds a PEM {label:?}"),
    }
}

/// The public key as `p=` carries it: SubjectPublicKeyInfo DER for RSA, the raw 32 octets for
/// Ed25519 (RFC 8463 §4.2).
pub(crate) fn public_key_bytes(key: &PublicKey) -> Vec<u8> {
    match key {
        // Encoding a key that exists cannot fail; were it to, the empty p= would read as revoked.
        PublicKey::Rsa(key) => key.to_public_key_der().map(|der| der.into_vec()).unwrap_or_default(),
        PublicKey::Ed25519(key) => key.to_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pkcs8_pem() {
        let ed = SigningKey::generate_ed25519().unwrap();
        let pem = ed.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let SigningKey::Ed25519(back) = SigningKey::from_pem(&pem).unwrap() else { panic!("not ed25519") };
        let SigningKey::Ed25519(orig) = &ed else { unreachable!() };
        assert_eq!(back.to_bytes(), orig.to_bytes());

        let rsa = SigningKey::generate_rsa(1024).unwrap();
        assert!(rsa.weak_key());
        let back = SigningKey::from_pem(&rsa.to_pkcs8_pem().unwrap()).unwrap();
        assert_eq!(back.rsa_bits(), Some(1024));
        assert_eq!(back.algorithm(), Algorithm::RsaSha256);
    }

    #[test]
    fn refuses_bad_sizes_and_other_pem() {
        assert!(matches!(SigningKey::generate_rsa(512), Err(KeyError::RsaSize(512))));
        assert!(matches!(SigningKey::generate_rsa(8192), Err(KeyError::RsaSize(8192))));
        assert!(matches!(
            SigningKey::from_pem("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
            Err(KeyError::Unrecognised)
        ));
    }
}
