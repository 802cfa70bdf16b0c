//! The contract's `keys` interface: private keys among a stage's `[stage.files]`, read once per
//! load (when a filter first names one) and signing in native code, so a DKIM signer neither
//! pays for RSA compiled to wasm (~13 ms a signature here, against ~0.7 ms with ring) nor holds
//! the key's secret in its memory. What a filter asks of it is bounded per message: a count of
//! signatures and a size per call, checked before any work is done.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use sluice_dkim::{Algorithm, SigningKey};

use super::host::StageFiles;

/// Signatures one message's instance may ask for (a DKIM signer makes one per signing domain).
pub const MAX_SIGNATURES: u32 = 8;
/// The most a filter may hand in to be signed in one call (a DKIM header hash input is a few KiB).
pub const MAX_SIGNED_BYTES: usize = 1 << 20;

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
    /// RSA of 2048 bits and more: ring's constant-time implementation (it refuses smaller keys).
    Ring(RsaKeyPair),
    /// Ed25519, and RSA under 2048 bits: sluice-dkim's RustCrypto keys.
    Local(SigningKey),
}

/// The keys of one loaded stage, parsed on first use and kept for the life of the load (a
/// reload reads the files again and starts a new set).
#[derive(Default)]
pub struct StageKeys {
    loaded: Mutex<BTreeMap<String, Arc<Result<LoadedKey, String>>>>,
}

/// Per-message bookkeeping of the bounds.
#[derive(Debug, Default)]
pub struct Signing {
    signatures: u32,
}

impl StageKeys {
    /// What the key in `file` is, or why it is none.
    pub fn info(&self, files: &StageFiles, file: &str) -> Result<KeyInfo, String> {
        match &*self.load(files, file) {
            Ok(key) => Ok(key.info),
            Err(why) => Err(why.clone()),
        }
    }

    /// Signs `data` with the key in `file`, within this message's bounds.
    pub fn sign(&self, files: &StageFiles, file: &str, data: &[u8], signing: &mut Signing) -> Result<Vec<u8>, String> {
        if data.len() > MAX_SIGNED_BYTES {
            return Err(format!("{} bytes to sign; at most {MAX_SIGNED_BYTES} per call", data.len()));
        }
        if signing.signatures >= MAX_SIGNATURES {
            return Err(format!("at most {MAX_SIGNATURES} signatures per message"));
        }
        signing.signatures += 1;
        match &*self.load(files, file) {
            Ok(key) => key.sign(data),
            Err(why) => Err(why.clone()),
        }
    }

    fn load(&self, files: &StageFiles, file: &str) -> Arc<Result<LoadedKey, String>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = loaded.get(file) {
            return key.clone();
        }
        // Parsed under the lock: once per file per load, a fraction of a millisecond.
        let key = Arc::new(match files.get(file) {
            None => Err("is required: add it to [stage.files]".to_string()),
            Some(bytes) => LoadedKey::read(bytes),
        });
        // Only configured names are kept, so a filter cannot grow this map with made-up ones.
        if files.contains_key(file) {
            loaded.insert(file.to_string(), key.clone());
        }
        key
    }
}

impl LoadedKey {
    fn read(bytes: &[u8]) -> Result<LoadedKey, String> {
        let key = SigningKey::from_pem_file(bytes).map_err(|err| err.to_string())?;
        let info = KeyInfo { algorithm: key.algorithm(), bits: key.rsa_bits().map_or(256, |bits| bits as u32) };
        let signer = match key.rsa_bits() {
            Some(bits) if bits >= 2048 => {
                let der = key.to_pkcs8_der().map_err(|err| err.to_string())?;
                match RsaKeyPair::from_pkcs8(&der) {
                    Ok(pair) => Native::Ring(pair),
                    Err(rejected) => return Err(format!("the RSA key cannot be used: {rejected}")),
                }
            }
            _ => Native::Local(key),
        };
        Ok(LoadedKey { info, signer })
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

    fn files(entries: &[(&str, Vec<u8>)]) -> StageFiles {
        entries.iter().map(|(name, bytes)| (name.to_string(), bytes.clone())).collect()
    }

    fn pem(key: &SigningKey) -> Vec<u8> {
        key.to_pkcs8_pem().unwrap().into_bytes()
    }

    #[test]
    fn signs_as_the_key_itself_would() {
        // RSA-PKCS1-v1_5 and Ed25519 are deterministic: ring's signature is the RustCrypto one.
        for (key, bits) in [
            (SigningKey::generate_rsa(2048).unwrap(), 2048),
            (SigningKey::generate_rsa(1024).unwrap(), 1024),
            (SigningKey::generate_ed25519().unwrap(), 256),
        ] {
            let files = files(&[("key", pem(&key))]);
            let keys = StageKeys::default();
            assert_eq!(keys.info(&files, "key"), Ok(KeyInfo { algorithm: key.algorithm(), bits }));
            let signed = keys.sign(&files, "key", b"header hash input", &mut Signing::default()).unwrap();
            assert_eq!(signed, key.sign(b"header hash input").unwrap(), "{bits}");
        }
    }

    #[test]
    fn a_file_that_is_no_key_is_explained() {
        let files = files(&[("cert", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec())]);
        let keys = StageKeys::default();
        let why = keys.info(&files, "cert").unwrap_err();
        assert!(why.starts_with("holds a PEM \"CERTIFICATE\"; expected an unencrypted PEM private key"), "{why}");
        let why = keys.info(&files, "absent").unwrap_err();
        assert_eq!(why, "is required: add it to [stage.files]");
        assert!(keys.loaded.lock().unwrap().get("absent").is_none(), "unconfigured names are not kept");
    }

    #[test]
    fn signatures_are_bounded_per_message_and_in_size() {
        let key = SigningKey::generate_ed25519().unwrap();
        let files = files(&[("key", pem(&key))]);
        let keys = StageKeys::default();
        let mut signing = Signing::default();
        let big = vec![0; MAX_SIGNED_BYTES + 1];
        assert!(keys.sign(&files, "key", &big, &mut signing).unwrap_err().contains("at most"));
        for _ in 0..MAX_SIGNATURES {
            keys.sign(&files, "key", b"x", &mut signing).unwrap();
        }
        let why = keys.sign(&files, "key", b"x", &mut signing).unwrap_err();
        assert_eq!(why, format!("at most {MAX_SIGNATURES} signatures per message"));
        assert!(keys.sign(&files, "key", b"x", &mut Signing::default()).is_ok(), "the next message starts afresh");
    }
}
