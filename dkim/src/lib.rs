//! DKIM (RFC 6376) signing and verification for `rsa-sha256` and `ed25519-sha256` (RFC 8463),
//! pure: no I/O, no clock, no DNS (only key generation and RSA's blinding draw on the operating
//! system's random source). The caller streams the body through a [`BodyHasher`], hands in the
//! raw header fields, the time and the key record text it looked up, and gets back a
//! `DKIM-Signature` field or a verification result. Builds natively and for `wasm32-wasip2`.
//!
//! Why not an existing crate: none fits a streaming filter in a wasm component. `mail-auth`
//! needs a newer rustc (through `mail-parser` 1.0), cannot be built without a DNS backend that
//! does not compile for `wasm32-wasip2`, and verifies whole messages only; `viadkim` has the right
//! shape but is GPL-3.0 (Sluice is Apache-2.0); `cfdkim` and the others need the whole message,
//! a non-optional resolver or a C crypto library. So the DKIM logic is written here, on the
//! maintained RustCrypto crates (`rsa`, `ed25519-dalek`, `sha2`), and checked against dkimpy
//! (`gateway/tests/dkim.rs`).
//!
//! Signing: [`Signer::body_hasher`], feed the body, [`Signer::sign`] with the header fields.
//! Verifying: [`Signature::parse_field`] for each `DKIM-Signature`, [`BodyHashers::want`] its
//! [`Signature::body_hash_spec`] (one hasher per distinct spec), feed the body, then [`verify`]
//! each signature with its hash and its key record.

mod auth_results;
mod body;
mod domain;
mod header;
mod key;
mod key_record;
mod sign;
mod signature;
mod tag_list;
mod verify;

pub use auth_results::{AuthenticationResults, DkimResult, ResultInfo};
pub use body::{BodyCanon, BodyHash, BodyHashSpec, BodyHasher, BodyHashers, BodyHashes};
pub use domain::{address_domain, is_domain_name, mailbox_domains};
pub use header::{canonicalize_field, field_name, select_fields, split_header_section, HeaderCanon};
pub use key::{KeyError, SigningKey, MAX_RSA_BITS, MIN_RSA_BITS, WEAK_RSA_BITS};
pub use key_record::{zone_file_entry, KeyRecord, KeyRecordError, KeyType, PublicKey};
pub use sign::{default_signed_headers, Key, SignatureField, Signer};
pub use signature::{Algorithm, Canonicalization, Signature, SignatureError};
pub use tag_list::{parse_tag_list, TagListError};
pub use verify::{verify, FailReason, PermErrorReason, Verdict};
