//! `dkim-sign`: signs outgoing mail with DKIM (RFC 6376; `rsa-sha256`, and `ed25519-sha256` of
//! RFC 8463) using `sluice-dkim`, prepending a `DKIM-Signature` field.
//!
//! ```toml
//! [[stage]]
//! name = "dkim"
//! kind = "wasm"
//! path = "target/wasm32-wasip2/release/dkim_sign.wasm"
//! [stage.config]
//! domain = "example.org"
//! selector = "s1"
//! # optional:
//! canonicalization = "relaxed/relaxed"  # the default; or relaxed/simple, simple/relaxed,
//!                                       # simple/simple; "relaxed" alone is relaxed/simple
//! headers = "from:to:subject"           # instead of sluice-dkim's default list
//! expiration = "7d"                     # x= is t= plus this (s, m, h or d)
//! sign_by = "header-from"               # or "envelope-from"
//! [stage.keys]
//! key = "keys/s1.pem"                   # RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8), PEM:
//!                                       # the host reads it; this filter never does
//! ```
//!
//! Several domains: `domains = "example.org s1 org, example.net s2 net"` (comma-separated
//! `DOMAIN SELECTOR KEY-NAME`, each KEY-NAME a `[stage.keys]` entry) instead of `domain`,
//! `selector` and `key`. From is always signed, and signed once more than it is present, so no
//! From can be added without breaking the signature.
//!
//! A message is signed when the domain of its From address (`sign_by = "header-from"`, the
//! default) or of its envelope sender (`"envelope-from"`) is a configured domain, compared without
//! case, with that domain's key. Any other message is let through unsigned at its header
//! section: the filter stops there and never sees its body. The body hash is computed as the
//! body streams by (nothing is buffered), and the signature covers the header section as this
//! stage is given it, byte for byte (so `simple` header canonicalisation holds), so the stage
//! belongs last in the chain: a later stage that changes a signed field or the body breaks the
//! signature. The keys stay in the host, which signs for the filter in native code (the
//! contract's `keys`): an RSA-2048 signature costs ~0.7 ms there against ~13 ms compiled to
//! wasm, and the key's secret never enters this filter's memory. Every key is loaded and
//! checked when the stage is loaded: an unusable key, an RSA
//! key under 1024 or over 4096 bits, or a bad setting stops the load with the key at fault; an
//! RSA key under 2048 bits is logged as a warning.

mod config;

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_dkim::{split_header_section, BodyHasher, WEAK_RSA_BITS};
use sluice_filter_sdk::{
    export_filter, keys, log, Config, ConfigError, Event, Filter, Headers, Interests, Reaction, Verdict,
};

use config::{Settings, SignBy};
use sluice_dkim::{address_domain, mailbox_domains};

pub struct DkimSign {
    settings: Settings,
    /// The envelope sender's domain (`sign_by = "envelope-from"` only).
    envelope_domain: Option<String>,
    /// The message being signed, from its header section on.
    signing: Option<Signing>,
}

/// A message the filter signs.
struct Signing {
    /// Index of its domain in `Settings::domains`.
    domain: usize,
    /// The header section as given, byte for byte.
    header_section: Vec<u8>,
    body: BodyHasher,
}

impl Filter for DkimSign {
    /// Asked once per load (unlike `new`, once per message), so weak keys are reported here.
    fn interests(config: &Config) -> Interests {
        let content = Interests::NONE.with(Event::Headers).with(Event::Body).with(Event::End);
        // A configuration that does not parse is refused by `new`.
        let Ok(settings) = Settings::parse(config) else { return content };
        let weak = |domain: &&config::Domain| {
            domain.key.algorithm == keys::Algorithm::RsaSha256 && (domain.key.bits as usize) < WEAK_RSA_BITS
        };
        for domain in settings.domains.iter().filter(weak) {
            let bits = domain.key.bits;
            log::warn(&format!(
                "[stage.keys] {}: the RSA key for {} has {bits} bits; it signs, but verifiers may refuse keys \
                 under {WEAK_RSA_BITS} bits (RFC 8301): use a {WEAK_RSA_BITS}-bit key",
                domain.key_name, domain.name
            ));
        }
        match settings.sign_by {
            SignBy::HeaderFrom => content,
            SignBy::EnvelopeFrom => content.with(Event::MailFrom),
        }
    }

    fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(DkimSign { settings: Settings::parse(config)?, envelope_domain: None, signing: None })
    }

    fn on_mail_from(&mut self, address: &str) -> Verdict {
        self.envelope_domain = address_domain(address);
        Verdict::Continue
    }

    fn on_headers(&mut self, headers: &Headers) -> Reaction {
        match self.signing_domain(headers) {
            Ok(domain) => {
                let header_section = headers.raw_section();
                let body = self.settings.domains[domain].signer.body_hasher();
                self.signing = Some(Signing { domain, header_section, body });
                Reaction::carry_on()
            }
            Err(why) => {
                log::debug(&format!("not signing: {why}"));
                Verdict::Accept.into()
            }
        }
    }

    fn on_body_chunk(&mut self, chunk: &[u8]) -> Reaction {
        if let Some(signing) = &mut self.signing {
            signing.body.update(chunk);
        }
        Reaction::carry_on()
    }

    fn on_end(&mut self) -> Reaction {
        let Some(Signing { domain, header_section, body }) = self.signing.take() else {
            return Reaction::carry_on();
        };
        let domain = &self.settings.domains[domain];
        let fields = split_header_section(&header_section);
        let signed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the clock is before 1970".to_string())
            .and_then(|now| domain.signer.sign(&fields, &body.finish(), now.as_secs()).map_err(|err| err.to_string()));
        match signed {
            Ok(field) => Reaction::carry_on().prepend_header(field.name(), field.value),
            Err(why) => {
                log::error(&format!("cannot sign for {}: {why}", domain.name));
                Verdict::tempfail(451, "4.7.0", format!("DKIM signing failed for {}; try again later", domain.name))
                    .into()
            }
        }
    }
}

impl DkimSign {
    /// The configured domain this message is signed for, or why it is not signed.
    fn signing_domain(&self, headers: &Headers) -> Result<usize, String> {
        let (whose, domain) = match self.settings.sign_by {
            SignBy::HeaderFrom => {
                let from = headers.get("From").ok_or("the message has no From field")?;
                (
                    "the From",
                    mailbox_domains(from).into_iter().next().ok_or_else(|| format!("no address in From: {from}"))?,
                )
            }
            SignBy::EnvelopeFrom => {
                ("the envelope sender's", self.envelope_domain.clone().ok_or("the envelope sender has no domain")?)
            }
        };
        self.settings
            .domains
            .iter()
            .position(|configured| configured.name == domain)
            .ok_or_else(|| format!("{whose} domain {domain} is not one of {}", self.settings.names()))
    }
}

export_filter!(DkimSign);

#[cfg(test)]
mod tests;
