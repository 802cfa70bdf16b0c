//! The stage's `[stage.keys]`: private keys the host reads, holds and signs with (the contract's
//! `keys` interface, since 0.2.2). The filter names a key and hands in what to sign; the key
//! never enters it, and a signature is native code's work (an RSA-2048 one ~0.7 ms, against
//! ~13 ms compiled to wasm). Get one with [`Config::key`](crate::Config::key) in `new`, so a
//! missing key is refused at load. Natively (unit tests), `testing::TestHost::key` gives a
//! test's keys and `TestHost::keys` says how they read and sign.

use crate::ConfigError;

/// What a key signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (DKIM's `rsa-sha256`).
    RsaSha256,
    /// PureEdDSA over the SHA-256 digest (DKIM's `ed25519-sha256`, RFC 8463).
    Ed25519Sha256,
}

/// What a key is (never what it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    pub algorithm: Algorithm,
    /// The RSA modulus size; 256 for Ed25519.
    pub bits: u32,
}

/// The key of the `[stage.keys]` entry [`HostKey::name`], usable for the life of the message.
#[derive(Debug, Clone)]
pub struct HostKey {
    name: String,
    info: KeyInfo,
    /// Natively, the key file's bytes, for the test's `NativeKeys`.
    #[cfg(not(target_arch = "wasm32"))]
    pem: Vec<u8>,
}

impl HostKey {
    /// The `[stage.keys]` entry.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn info(&self) -> KeyInfo {
        self.info
    }

    /// Signs `data` (the host hashes it with SHA-256) by the key's algorithm. The host allows 8
    /// calls per message, with 4 MiB of `data` in all (the largest header section a message may
    /// have).
    #[cfg(target_arch = "wasm32")]
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        crate::bindings::sluice::filter::keys::sign(&self.name, data)
    }

    /// Signs `data` (the host hashes it with SHA-256) by the key's algorithm.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        with_native(|keys| keys.sign(&self.pem, data))
    }
}

/// The key of `[stage.keys] name`, or an error about that entry.
#[cfg(target_arch = "wasm32")]
pub(crate) fn key(_config: &crate::Config, name: &str) -> Result<HostKey, ConfigError> {
    use crate::bindings::sluice::filter::keys::{self, Algorithm as Wit};
    let info = keys::key(name).map_err(|why| ConfigError::stage_key(name, why))?;
    let algorithm = match info.algorithm {
        Wit::RsaSha256 => Algorithm::RsaSha256,
        Wit::Ed25519Sha256 => Algorithm::Ed25519Sha256,
    };
    Ok(HostKey { name: name.to_string(), info: KeyInfo { algorithm, bits: info.bits } })
}

/// The key of `[stage.keys] name`, or an error about that entry.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn key(config: &crate::Config, name: &str) -> Result<HostKey, ConfigError> {
    let Some(pem) = config.keys.get(name).cloned() else {
        return Err(ConfigError::stage_key(name, "is required: add it to [stage.keys]"));
    };
    let info = with_native(|keys| keys.info(&pem)).map_err(|why| ConfigError::stage_key(name, why))?;
    Ok(HostKey { name: name.to_string(), info, pem })
}

/// How keys read and sign in a native test, standing in for the host (`TestHost::keys`): a
/// filter's tests implement it with the crypto crate they trust.
#[cfg(not(target_arch = "wasm32"))]
pub trait NativeKeys: Send + Sync {
    /// What the file's bytes hold, or why they are no key.
    fn info(&self, pem: &[u8]) -> Result<KeyInfo, String>;
    fn sign(&self, pem: &[u8], data: &[u8]) -> Result<Vec<u8>, String>;
}

#[cfg(not(target_arch = "wasm32"))]
fn with_native<T>(work: impl FnOnce(&dyn NativeKeys) -> Result<T, String>) -> Result<T, String> {
    NATIVE.with(|native| match &*native.borrow() {
        Some(keys) => work(&**keys),
        None => Err("no keys in this test: give the TestHost a NativeKeys with TestHost::keys".into()),
    })
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    /// The `NativeKeys` of the `TestHost` running now.
    pub(crate) static NATIVE: std::cell::RefCell<Option<std::sync::Arc<dyn NativeKeys>>> =
        const { std::cell::RefCell::new(None) };
}
