//! The contract's `keys` interface: the private keys of a stage's `[stage.keys]`, read and
//! parsed at load (so at every reload) and signing in native code, so a DKIM signer neither pays
//! for RSA compiled to wasm (~13 ms a signature here, against ~0.7 ms with ring) nor ever holds
//! the key: `[stage.keys]` is not `[stage.files]`, and nothing hands a filter its bytes. What a
//! filter asks of it is bounded per message: every call counts against a number of calls, and
//! the data against a number of bytes (what the host hashes), both checked before any work.

use std::collections::BTreeMap;

use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use sluice_dkim::{Algorithm, SigningKey};

use super::host::StageFiles;

/// Calls to `sign` one message's instance may make (a DKIM signer makes one per signing domain;
/// refused calls count too).
pub const MAX_SIGNATURES: u32 = 8;
/// The most a filter may hand in to be signed in all, per message: the largest header section a
/// message may have (`chain::headers::HEADER_LIMIT`), which a DKIM header hash input does not
/// exceed. Hashing it costs the host ~10 ms, the most one message's signing can take beyond the
/// signatures themselves.
pub const MAX_SIGNED_BYTES: usize = crate::chain::headers::HEADER_LIMIT;

/// A key as the filter may see it: what it is, never what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    pub algorithm: Algorithm,
    /// The RSA modulus size; 256 for Ed25519.
    pub bits: u32,
}

/// A key ready to sign.
struct LoadedKey {
    info: KeyInfo,
    signer: Native,
}

enum Native {
    /// RSA keys ring takes (2048 bits and more, e ≥ 65537, balanced primes): its
    /// constant-time, assembly-backed implementation.
    Ring(RsaKeyPair),
    /// Ed25519, and the RSA keys ring refuses (under 2048 bits, uncommon sizes): sluice-dkim's
    /// RustCrypto keys, which signed every key before.
    Local(SigningKey),
}

/// The keys of one loaded stage, by their `[stage.keys]` name.
#[derive(Default)]
pub struct StageKeys {
    keys: BTreeMap<String, LoadedKey>,
}

/// Per-message bookkeeping of the bounds.
#[derive(Debug, Default)]
pub struct Signing {
    calls: u32,
    bytes: usize,
}

impl StageKeys {
    /// Parses every key file's bytes; the first that is no usable key is `(name, why)`.
    pub fn read(files: StageFiles) -> Result<StageKeys, (String, String)> {
        let mut keys = BTreeMap::new();
        for (name, bytes) in files {
            let key = LoadedKey::read(&bytes).map_err(|why| (name.clone(), why))?;
            keys.insert(name, key);
        }
        Ok(StageKeys { keys })
    }

    /// What the key `name` is; `files` (the stage's `[stage.files]`) only improves the error
    /// for a key configured there by mistake.
    pub fn info(&self, name: &str, files: &StageFiles) -> Result<KeyInfo, String> {
        self.get(name, files).map(|key| key.info)
    }

    /// Signs `data` with the key `name`, within this message's bounds.
    pub fn sign(&self, name: &str, data: &[u8], files: &StageFiles, signing: &mut Signing) -> Result<Vec<u8>, String> {
        if signing.calls >= MAX_SIGNATURES {
            return Err(format!("at most {MAX_SIGNATURES} signatures per message"));
        }
        signing.calls += 1;
        if data.len() > MAX_SIGNED_BYTES - signing.bytes {
            return Err(format!("{} more bytes to sign; at most {MAX_SIGNED_BYTES} per message", data.len()));
        }
        signing.bytes += data.len();
        self.get(name, files)?.sign(data)
    }

    fn get(&self, name: &str, files: &StageFiles) -> Result<&LoadedKey, String> {
        self.keys.get(name).ok_or_else(|| match files.contains_key(name) {
            true => "is required in [stage.keys]; it is in [stage.files], which the filter can read: move it to \
                     [stage.keys], which only the host reads"
                .to_string(),
            false => "is required: add it to [stage.keys]".to_string(),
        })
    }
}

impl LoadedKey {
    fn read(bytes: &[u8]) -> Result<LoadedKey, String> {
        let key = SigningKey::from_pem_file(bytes).map_err(|err| err.to_string())?;
        let info = KeyInfo { algorithm: key.algorithm(), bits: key.rsa_bits().map_or(256, |bits| bits as u32) };
        let ring = match key.rsa_bits() {
            Some(bits) if bits >= 2048 => {
                key.to_pkcs8_der().ok().and_then(|der| RsaKeyPair::from_pkcs8(&der).ok()).map(Native::Ring)
            }
            _ => None,
        };
        Ok(LoadedKey { info, signer: ring.unwrap_or(Native::Local(key)) })
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        match &self.signer {
            Native::Ring(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), data, &mut signature)
                    .map_err(|_| "the RSA signature failed".to_string())?;
                Ok(signature)
            }
            Native::Local(key) => key.sign(data).map_err(|err| err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(entries: &[(&str, Vec<u8>)]) -> StageFiles {
        entries.iter().map(|(name, bytes)| (name.to_string(), bytes.clone())).collect()
    }

    fn pem(key: &SigningKey) -> Vec<u8> {
        key.to_pkcs8_pem().unwrap().into_bytes()
    }

    #[test]
    fn signs_as_the_key_itself_would() {
        // RSA-PKCS1-v1_5 and Ed25519 are deterministic: ring's signature is the RustCrypto one.
        // 2560 bits: a size ring refuses (primes not a multiple of 512 bits), signed as before.
        for (key, bits, ring) in [
            (SigningKey::generate_rsa(2048).unwrap(), 2048, true),
            (SigningKey::generate_rsa(2560).unwrap(), 2560, false),
            (SigningKey::generate_rsa(1024).unwrap(), 1024, false),
            (SigningKey::generate_ed25519().unwrap(), 256, false),
        ] {
            let keys = StageKeys::read(entries(&[("key", pem(&key))])).unwrap();
            let none = StageFiles::new();
            assert_eq!(keys.info("key", &none), Ok(KeyInfo { algorithm: key.algorithm(), bits }));
            assert_eq!(matches!(keys.keys["key"].signer, Native::Ring(_)), ring, "{bits}");
            let signed = keys.sign("key", b"header hash input", &none, &mut Signing::default()).unwrap();
            assert_eq!(signed, key.sign(b"header hash input").unwrap(), "{bits}");
        }
    }

    #[test]
    fn a_file_that_is_no_key_is_refused_at_load_and_a_missing_one_explained() {
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec();
        let Err((name, why)) = StageKeys::read(entries(&[("cert", cert)])) else { panic!("a certificate is no key") };
        assert_eq!(name, "cert");
        assert!(why.starts_with("holds a PEM \"CERTIFICATE\"; expected an unencrypted PEM private key"), "{why}");
        let keys = StageKeys::default();
        assert_eq!(keys.info("key", &StageFiles::new()).unwrap_err(), "is required: add it to [stage.keys]");
        let in_files = entries(&[("key", b"pem".to_vec())]);
        assert!(keys.info("key", &in_files).unwrap_err().contains("move it to [stage.keys]"));
    }

    #[test]
    fn every_call_counts_and_the_bytes_are_bounded_per_message() {
        let key = SigningKey::generate_ed25519().unwrap();
        let keys = StageKeys::read(entries(&[("key", pem(&key))])).unwrap();
        let (none, mut signing) = (StageFiles::new(), Signing::default());
        let most = vec![0; MAX_SIGNED_BYTES - 1];
        keys.sign("key", &most, &none, &mut signing).unwrap();
        assert!(keys.sign("key", b"xx", &none, &mut signing).unwrap_err().contains("per message"), "bytes add up");
        let mut signing = Signing { calls: 1, bytes: 0 };
        assert!(keys.sign("nokey", b"x", &none, &mut signing).is_err());
        for _ in 2..MAX_SIGNATURES {
            keys.sign("key", b"x", &none, &mut signing).unwrap();
        }
        let why = keys.sign("key", b"x", &none, &mut signing).unwrap_err();
        assert_eq!(why, format!("at most {MAX_SIGNATURES} signatures per message"), "refused calls count too");
        assert!(keys.sign("key", b"x", &none, &mut Signing::default()).is_ok(), "the next message starts afresh");
    }
}
