//! `dkim-verify`: verifies the DKIM signatures of incoming mail (RFC 6376; `rsa-sha256`, and
//! `ed25519-sha256` of RFC 8463) using `sluice-dkim`, and prepends one Authentication-Results
//! field (RFC 8601) with a `dkim=` result per signature:
//!
//! ```text
//! Authentication-Results: mx.example.org; dkim=pass header.d=example.org header.s=s1
//!     header.a=rsa-sha256 header.b=abcd1234
//! ```
//!
//! ```toml
//! [[stage]]
//! name = "dkim-verify"
//! kind = "wasm"
//! path = "target/wasm32-wasip2/release/dkim_verify.wasm"
//! capabilities = ["dns"]                        # key records are looked up through the host
//! [stage.config]
//! authserv_id = "mx.example.org"                # required: this gateway's hostname
//! # optional:
//! required_domains = "example.org, example.net"
//! on_missing = "reject"                         # or "tempfail"
//! ```
//!
//! The first 8 `DKIM-Signature` fields (from the top) are checked; more are ignored and logged.
//! Each is parsed at the header section, its key record looked up (`<s>._domainkey.<d>`, once
//! per name) and its body hash registered (one hash per distinct canonicalisation and `l=`); the
//! body is hashed as it streams by and the signatures are verified at its end. Results: `pass`;
//! `fail` when the body hash or the signature does not match; `permerror` for a malformed
//! signature, no key record (NXDOMAIN, no TXT), an unusable key record, or an expired signature
//! (`x=` in the past: RFC 6376 §6.1.1 refuses it with the other checks of the field, before any
//! key is looked up, and RFC 8601's `fail` is for signatures that were acceptable); `temperror`
//! when the key lookup timed out or the servers failed; `dkim=none` when there is no signature.
//! A message with nothing left to verify at its header section (no signature, or none with a key)
//! gets its field there, and the filter stops before its body.
//!
//! Authentication-Results fields already in the message with our authserv-id (compared without
//! case) are forged: they are removed at the header section, before later stages see them.
//!
//! Policy (`required_domains`): it applies to a message whose From field names a listed domain
//! (any mailbox of any From field; the envelope sender does not count, as it is not what readers
//! see), and requires a passing signature whose `d=` is that From domain itself; a passing
//! signature of another listed domain, or of a parent or subdomain, does not stand in for it.
//! Without one the message is rejected, `550 5.7.20 No valid DKIM signature from example.org`,
//! or with `on_missing = "tempfail"` tempfailed with 451 4.7.5; when a signature of the domain
//! could not be checked because its key lookup failed for now (temperror), it is tempfailed with
//! 451 4.7.5 whatever `on_missing` says, so the sender retries. Mail From other domains is only
//! annotated.
//!
//! The stage belongs early in the chain, before any stage that changes the header section or
//! the body: it verifies the message as it is given it.

mod config;
mod forged;
mod keys;
mod policy;

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_dkim::{
    field_name, split_header_section, verify, AuthenticationResults, BodyHashers, DkimResult, ResultInfo, Signature,
};
use sluice_filter_sdk::{export_filter, log, Config, ConfigError, Event, Filter, Headers, Interests, Reaction};

use config::Settings;
use keys::KeyLookups;
use sluice_dkim::{is_domain_name, mailbox_domains};

/// Signatures checked per message; a message with more is unusual and each costs a lookup.
const MAX_SIGNATURES: usize = 8;
/// Reasons can quote what a sender wrote (a malformed tag): they are cut to this many octets.
const MAX_REASON: usize = 100;

pub struct DkimVerify {
    settings: Settings,
    /// The From domains (lower case) the policy applies to.
    authors: Vec<String>,
    /// The header section as given, byte for byte.
    header_section: Vec<u8>,
    /// One per signature checked, in field order.
    checks: Vec<Check>,
    bodies: BodyHashers,
    /// Seconds since the epoch, taken at the header section.
    now: u64,
}

/// Where one signature's check stands.
enum Check {
    /// Its key record is in hand: verified once the body is hashed.
    Pending { signature: Signature, key_record: String },
    /// Settled at the header section.
    Settled(ResultInfo),
}

impl Filter for DkimVerify {
    fn interests(_config: &Config) -> Interests {
        Interests::NONE.with(Event::Headers).with(Event::Body).with(Event::End)
    }

    fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(DkimVerify {
            settings: Settings::parse(config)?,
            authors: Vec::new(),
            header_section: Vec::new(),
            checks: Vec::new(),
            bodies: BodyHashers::new(),
            now: 0,
        })
    }

    fn on_headers(&mut self, headers: &Headers) -> Reaction {
        // A clock before 1970 cannot happen; were it to, no signature would count as expired.
        self.now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_secs());
        self.authors = headers.all("From").flat_map(mailbox_domains).filter(|d| self.settings.requires(d)).collect();
        let section = headers.raw_section();
        let signatures: Vec<&[u8]> = split_header_section(&section)
            .into_iter()
            .filter(|field| field_name(field).eq_ignore_ascii_case(b"DKIM-Signature"))
            .collect();
        if signatures.len() > MAX_SIGNATURES {
            log::info(&format!(
                "checking the first {MAX_SIGNATURES} of {} DKIM-Signature fields; the others are ignored",
                signatures.len()
            ));
        }
        let mut keys = KeyLookups::default();
        let checks: Vec<Check> =
            signatures.iter().take(MAX_SIGNATURES).map(|field| self.check(field, &mut keys)).collect();
        self.header_section = section;
        let removals = forged::removals(headers, &self.settings.authserv_id);
        if checks.iter().any(|check| matches!(check, Check::Pending { .. })) {
            self.checks = checks;
            return Reaction { header_changes: removals, ..Reaction::carry_on() };
        }
        // Nothing to verify against the body: answer now, and skip it.
        let results = checks.into_iter().filter_map(|check| match check {
            Check::Settled(info) => Some(info),
            Check::Pending { .. } => None,
        });
        let mut answer = self.answer(results.collect());
        answer.header_changes.splice(0..0, removals);
        answer
    }

    fn on_body_chunk(&mut self, chunk: &[u8]) -> Reaction {
        self.bodies.update(chunk);
        Reaction::carry_on()
    }

    fn on_end(&mut self) -> Reaction {
        let hashes = std::mem::take(&mut self.bodies).finish();
        let fields = split_header_section(&self.header_section);
        let results = std::mem::take(&mut self.checks)
            .into_iter()
            .map(|check| match check {
                Check::Settled(info) => info,
                Check::Pending { signature, key_record } => match hashes.get(signature.body_hash_spec()) {
                    Some(body) => {
                        let verdict = verify(&signature, &fields, body, &key_record, self.now);
                        ResultInfo::for_signature(&signature, verdict.result(), verdict.reason())
                    }
                    // Every pending signature's spec was registered; this cannot happen.
                    None => {
                        ResultInfo::for_signature(&signature, DkimResult::TempError, Some("body not hashed".into()))
                    }
                },
            })
            .collect();
        self.answer(results)
    }
}

impl DkimVerify {
    /// Checks one `DKIM-Signature` field as far as the header section allows: parses it, refuses
    /// it when expired, looks up its key and registers the body hash it needs.
    fn check(&mut self, field: &[u8], keys: &mut KeyLookups) -> Check {
        let signature = match Signature::parse_field(field) {
            Ok(signature) => signature,
            Err(err) => {
                return Check::Settled(ResultInfo::bare(
                    DkimResult::PermError,
                    Some(format!("malformed signature: {err}")),
                ))
            }
        };
        if !is_domain_name(&signature.domain) || !is_domain_name(&signature.selector) {
            let why = "malformed signature: d= or s= is not a domain name".to_string();
            return Check::Settled(ResultInfo::bare(DkimResult::PermError, Some(why)));
        }
        if signature.expiration.is_some_and(|x| x < self.now) {
            let why = Some("signature expired".to_string());
            return Check::Settled(ResultInfo::for_signature(&signature, DkimResult::PermError, why));
        }
        match keys.record(&signature.key_name()) {
            Ok(key_record) => {
                self.bodies.want(signature.body_hash_spec());
                Check::Pending { signature, key_record }
            }
            Err((result, why)) => Check::Settled(ResultInfo::for_signature(&signature, result, Some(why))),
        }
    }

    /// The Authentication-Results field for these results, with the policy's verdict.
    fn answer(&self, mut results: Vec<ResultInfo>) -> Reaction {
        let verdict = policy::decide(&self.settings, &self.authors, &results);
        for info in &mut results {
            if let Some(reason) = &mut info.reason {
                shorten(reason);
            }
        }
        if results.is_empty() {
            results.push(ResultInfo::bare(DkimResult::None, None));
        }
        let field = AuthenticationResults { authserv_id: self.settings.authserv_id.clone(), results }.to_string();
        log::debug(&format!("Authentication-Results: {field}"));
        Reaction::carry_on().prepend_header("Authentication-Results", field).with_verdict(verdict)
    }
}

/// Cuts a reason to `MAX_REASON` octets (at a character boundary), marking the cut.
fn shorten(reason: &mut String) {
    if reason.len() > MAX_REASON {
        reason.truncate(reason.floor_char_boundary(MAX_REASON));
        reason.push_str("...");
    }
}

export_filter!(DkimVerify);

#[cfg(test)]
mod tests;
