//! Private keys among the stage's `[stage.files]`, held by the host and signing there (the
//! contract's `keys` interface, since 0.2.2): the key's secret never enters the filter, and a
//! signature is native code's work (an RSA-2048 one ~0.7 ms, against ~13 ms compiled to wasm).
//! Get one with [`Config::key`](crate::Config::key) in `new`, so an unusable key is refused at
//! load. Natively (unit tests), `testing::TestHost::keys` says how keys are read and sign.

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

/// A key in the `[stage.files]` entry [`HostKey::file`], usable for the life of the message.
#[derive(Debug, Clone)]
pub struct HostKey {
    file: String,
    info: KeyInfo,
    /// Natively, the file's bytes, for the test's `NativeKeys`.
    #[cfg(not(target_arch = "wasm32"))]
    pem: Vec<u8>,
}

impl HostKey {
    /// The `[stage.files]` entry holding the key.
    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn info(&self) -> KeyInfo {
        self.info
    }

    /// Signs `data` (the host hashes it with SHA-256) by the key's algorithm. The host allows 8
    /// signatures per message and 1 MiB of `data` per call.
    #[cfg(target_arch = "wasm32")]
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        crate::bindings::sluice::filter::keys::sign(&self.file, data)
    }

    /// Signs `data` (the host hashes it with SHA-256) by the key's algorithm.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        with_native(|keys| keys.sign(&self.pem, data))
    }
}

/// The key in `[stage.files] name`, or an error about that entry.
#[cfg(target_arch = "wasm32")]
pub(crate) fn key(_config: &crate::Config, name: &str) -> Result<HostKey, ConfigError> {
    use crate::bindings::sluice::filter::keys::{self, Algorithm as Wit};
    let info = keys::key(name).map_err(|why| ConfigError::file(name, why))?;
    let algorithm = match info.algorithm {
        Wit::RsaSha256 => Algorithm::RsaSha256,
        Wit::Ed25519Sha256 => Algorithm::Ed25519Sha256,
    };
    Ok(HostKey { file: name.to_string(), info: KeyInfo { algorithm, bits: info.bits } })
}

/// The key in `[stage.files] name`, or an error about that entry.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn key(config: &crate::Config, name: &str) -> Result<HostKey, ConfigError> {
    let pem = config.require_file(name)?;
    let info = with_native(|keys| keys.info(&pem)).map_err(|why| ConfigError::file(name, why))?;
    Ok(HostKey { file: name.to_string(), info, pem })
}

/// How keys read and sign in a native test, standing in for the host (`TestHost::keys`): a
/// filter's tests implement it with the crypto crate they trust.
#[cfg(not(target_arch = "wasm32"))]
pub trait NativeKeys {
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
    pub(crate) static NATIVE: std::cell::RefCell<Option<std::rc::Rc<dyn NativeKeys>>> =
        const { std::cell::RefCell::new(None) };
}
