//! `dkim-sign` run natively through `TestHost`: what it signs verifies with `sluice_dkim::verify`,
//! what it does not sign is let through at the header section, and each configuration error
//! reads as the operator will see it.

use std::sync::OnceLock;

use sluice_dkim::{verify, BodyHasher, Signature, SigningKey};
use sluice_filter_sdk::keys::{KeyInfo, NativeKeys};
use sluice_filter_sdk::log::Level;
use sluice_filter_sdk::testing::{Outcome, TestHost, TestMessage};
use sluice_filter_sdk::{check_config, Event, Verdict};

use super::*;

/// A message with folded and oddly spaced fields and trailing blank lines in its body.
const MESSAGE: &str = "From: Joe SixPack <joe@Example.ORG>\r\n\
    To: Suzie Q <suzie@shopping.example.net>,\r\n\tmore@shopping.example.net\r\n\
    Subject:   Is dinner   ready?\t\r\n  (folded twice)\r\n\
    Date: Fri, 11 Jul 2003 21:00:37 -0700\r\n\
    Message-ID: <20030712040037.46341.5F8J@example.org>\r\n\
    X-Unsigned: not in h=\r\n\
    \r\n\
    Hi.\r\n\r\nWe lost the game.  Are you   hungry yet? \t\r\n\r\n  Joe.\r\n\r\n\r\n";

fn rsa_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| SigningKey::generate_rsa(2048).unwrap().to_pkcs8_pem().unwrap())
}

fn ed25519_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| SigningKey::generate_ed25519().unwrap().to_pkcs8_pem().unwrap())
}

/// The key record publishing the public half of `pem`.
fn record(pem: &str) -> String {
    SigningKey::from_pem(pem).unwrap().key_record().to_string()
}

/// Keys read and sign as the gateway's host does (`SigningKey::from_pem_file`; the host signs
/// RSA with ring, to the same bytes, as its own tests check).
struct HostLikeKeys;

impl NativeKeys for HostLikeKeys {
    fn info(&self, pem: &[u8]) -> Result<KeyInfo, String> {
        let key = SigningKey::from_pem_file(pem).map_err(|err| err.to_string())?;
        let algorithm = match key.algorithm() {
            sluice_dkim::Algorithm::RsaSha256 => keys::Algorithm::RsaSha256,
            sluice_dkim::Algorithm::Ed25519Sha256 => keys::Algorithm::Ed25519Sha256,
        };
        Ok(KeyInfo { algorithm, bits: key.rsa_bits().map_or(256, |bits| bits as u32) })
    }

    fn sign(&self, pem: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
        SigningKey::from_pem_file(pem).and_then(|key| key.sign(data)).map_err(|err| err.to_string())
    }
}

fn test_host() -> TestHost {
    TestHost::new().keys(HostLikeKeys)
}

fn host(pem: &str) -> TestHost {
    test_host().config("domain", "example.org").config("selector", "s1").key("key", pem)
}

/// The header section (with its empty line) and the body of `content`.
fn split(content: &[u8]) -> (&[u8], &[u8]) {
    let at = content.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    content.split_at(at)
}

/// The signature the filter prepended, parsed.
fn signed(outcome: &Outcome) -> Signature {
    assert_eq!(outcome.headers.0[0].name, "DKIM-Signature", "prepended at the top");
    let value = outcome.headers.get("DKIM-Signature").expect("a DKIM-Signature field");
    Signature::parse_field(format!("DKIM-Signature: {value}\r\n").as_bytes()).unwrap()
}

/// Verifies the filter's signature over `content` (which may differ from what was signed), as a
/// verifier sees the relayed message: the signature field on top of the header section.
fn verify_over(outcome: &Outcome, content: &[u8], record: &str) -> sluice_dkim::Verdict {
    let field = format!("DKIM-Signature: {}\r\n", outcome.headers.get("DKIM-Signature").unwrap());
    let (head, body) = split(content);
    let mut fields = vec![field.as_bytes()];
    fields.extend(split_header_section(head));
    let signature = Signature::parse_field(field.as_bytes()).unwrap();
    let mut hasher = BodyHasher::new(signature.body_hash_spec());
    hasher.update(body);
    verify(&signature, &fields, &hasher.finish(), record, signature.timestamp.unwrap())
}

#[test]
fn signatures_verify_for_both_algorithms_every_canonicalization_and_chunk_size() {
    for pem in [rsa_pem(), ed25519_pem()] {
        for canonicalization in ["relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"] {
            for chunk in [1, 7, 64 * 1024] {
                let host = host(pem).config("canonicalization", canonicalization);
                let outcome = host.run::<DkimSign>(&TestMessage::new(MESSAGE).chunked(chunk)).unwrap();
                assert_eq!(outcome.verdict, Verdict::Continue);
                let signature = signed(&outcome);
                assert_eq!((signature.domain.as_str(), signature.selector.as_str()), ("example.org", "s1"));
                assert_eq!(signature.canonicalization.to_string(), canonicalization);
                assert_eq!(signature.algorithm, SigningKey::from_pem(pem).unwrap().algorithm());
                assert_eq!(
                    verify_over(&outcome, MESSAGE.as_bytes(), &record(pem)),
                    sluice_dkim::Verdict::Pass,
                    "{canonicalization}, chunks of {chunk}"
                );
                assert_eq!(outcome.body, split(MESSAGE.as_bytes()).1, "the body passes unchanged");
            }
        }
    }
}

#[test]
fn folding_and_trailing_blank_lines_are_canonicalized_as_the_rfc_says() {
    let pem = ed25519_pem();
    let refolded =
        MESSAGE.replace("Subject:   Is dinner   ready?\t\r\n  (folded", "Subject: Is dinner ready?\r\n (folded");
    let fewer_blank_lines = MESSAGE.replace("Joe.\r\n\r\n\r\n", "Joe.\r\n");
    let respaced_body = MESSAGE.replace("Are you   hungry yet? \t", "Are you hungry yet?");
    // (canonicalization, altered message, whether the signature still holds)
    let table = [
        ("relaxed/relaxed", &refolded, true),
        ("simple/simple", &refolded, false),
        ("simple/simple", &fewer_blank_lines, true),
        ("relaxed/simple", &fewer_blank_lines, true),
        ("relaxed/relaxed", &respaced_body, true),
        ("relaxed/simple", &respaced_body, false),
    ];
    for (canonicalization, altered, holds) in table {
        let outcome =
            host(pem).config("canonicalization", canonicalization).run::<DkimSign>(&TestMessage::new(MESSAGE));
        let verdict = verify_over(&outcome.unwrap(), altered.as_bytes(), &record(pem));
        assert_eq!(verdict == sluice_dkim::Verdict::Pass, holds, "{canonicalization}: {verdict:?}");
    }
}

#[test]
fn signs_the_default_fields_from_oversigned_and_the_configured_ones() {
    let outcome = host(ed25519_pem()).run::<DkimSign>(&TestMessage::new(MESSAGE)).unwrap();
    let signature = signed(&outcome);
    assert_eq!(signature.signed_headers, ["from", "from", "subject", "date", "to", "message-id"]);
    assert_eq!(signature.canonicalization.to_string(), "relaxed/relaxed");
    assert_eq!(signature.expiration, None);

    let host = host(ed25519_pem()).config("headers", "Subject : x-unsigned").config("expiration", "7d");
    let outcome = host.run::<DkimSign>(&TestMessage::new(MESSAGE)).unwrap();
    let signature = signed(&outcome);
    assert_eq!(signature.signed_headers, ["from", "from", "subject", "x-unsigned"]);
    assert_eq!(signature.expiration, Some(signature.timestamp.unwrap() + 7 * 86_400));
    assert_eq!(verify_over(&outcome, MESSAGE.as_bytes(), &record(ed25519_pem())), sluice_dkim::Verdict::Pass);
}

#[test]
fn mail_from_a_foreign_domain_is_let_through_unsigned_at_its_header_section() {
    let table = [
        (
            "From: Eve <eve@other.example>\r\n\r\nHi\r\n",
            "not signing: the From domain other.example is not one of example.org",
        ),
        (
            "From: \"joe@example.org\" <eve@other.example>\r\n\r\nHi\r\n",
            "not signing: the From domain other.example is not one of example.org",
        ),
        ("Subject: no From\r\n\r\nHi\r\n", "not signing: the message has no From field"),
        ("From: undisclosed\r\n\r\nHi\r\n", "not signing: no address in From: undisclosed"),
    ];
    for (content, why) in table {
        let outcome = host(ed25519_pem()).run::<DkimSign>(&TestMessage::new(content)).unwrap();
        assert_eq!(outcome.calls, [(Event::Headers, Verdict::Accept)], "no body calls: {content}");
        assert_eq!(outcome.headers.get("DKIM-Signature"), None);
        assert_eq!(outcome.log, [(Level::Debug, why.to_string())]);
    }
}

#[test]
fn several_domains_each_sign_with_their_own_key() {
    let host = test_host()
        .config("domains", "example.org s1 org, Example.NET s2 net")
        .key("org", rsa_pem())
        .key("net", ed25519_pem());
    // (From, expected d= and s=, the key that signed)
    let table = [
        ("joe@example.org", Some(("example.org", "s1", rsa_pem()))),
        ("Joe <joe@EXAMPLE.net>", Some(("example.net", "s2", ed25519_pem()))),
        ("joe@sub.example.org", None),
        ("joe@example.com", None),
    ];
    for (from, expected) in table {
        let content = MESSAGE.replace("Joe SixPack <joe@Example.ORG>", from);
        let outcome = host.run::<DkimSign>(&TestMessage::new(&content)).unwrap();
        match expected {
            Some((domain, selector, pem)) => {
                let signature = signed(&outcome);
                assert_eq!((signature.domain.as_str(), signature.selector.as_str()), (domain, selector), "{from}");
                assert_eq!(verify_over(&outcome, content.as_bytes(), &record(pem)), sluice_dkim::Verdict::Pass);
            }
            None => {
                assert_eq!(outcome.calls, [(Event::Headers, Verdict::Accept)], "{from}");
                assert!(outcome.log[0].1.ends_with("is not one of example.org, example.net"), "{:?}", outcome.log);
            }
        }
    }
}

#[test]
fn sign_by_envelope_from_picks_the_senders_domain() {
    let host = host(ed25519_pem()).config("sign_by", "envelope-from");
    assert!(DkimSign::interests(&host.to_config()).wants(Event::MailFrom));
    assert!(!DkimSign::interests(&self::host(ed25519_pem()).to_config()).wants(Event::MailFrom));
    let foreign_from = MESSAGE.replace("joe@Example.ORG", "joe@other.example");
    let message = TestMessage::new(&foreign_from).from("bounces@EXAMPLE.org");
    let outcome = host.run::<DkimSign>(&message).unwrap();
    assert_eq!(signed(&outcome).domain, "example.org");
    assert_eq!(verify_over(&outcome, foreign_from.as_bytes(), &record(ed25519_pem())), sluice_dkim::Verdict::Pass);

    let outcome = host.run::<DkimSign>(&TestMessage::new(MESSAGE).from("")).unwrap();
    assert_eq!(outcome.calls.last(), Some(&(Event::Headers, Verdict::Accept)));
    assert_eq!(outcome.log, [(Level::Debug, "not signing: the envelope sender has no domain".to_string())]);
    let outcome = host.run::<DkimSign>(&TestMessage::new(MESSAGE).from("a@example.com")).unwrap();
    let why = "not signing: the envelope sender's domain example.com is not one of example.org";
    assert_eq!(outcome.log, [(Level::Debug, why.to_string())]);
}

#[test]
fn keys_openssl_writes_are_read_and_weak_ones_reported() {
    let pkcs1_1024 = include_str!("../testdata/rsa-1024-pkcs1.pem");
    let outcome = host(pkcs1_1024).run::<DkimSign>(&TestMessage::new(MESSAGE)).unwrap();
    assert_eq!(verify_over(&outcome, MESSAGE.as_bytes(), &record(pkcs1_1024)), sluice_dkim::Verdict::Pass);
    let warning = "[stage.keys] key: the RSA key for example.org has 1024 bits; it signs, but verifiers may \
                   refuse keys under 2048 bits (RFC 8301): use a 2048-bit key";
    assert_eq!(outcome.log, [(Level::Warn, warning.to_string())], "once, when the stage is loaded");

    for pem in [include_str!("../testdata/rsa-4096-pkcs1.pem"), include_str!("../testdata/ed25519-openssl.pem")] {
        let outcome = host(pem).run::<DkimSign>(&TestMessage::new(MESSAGE)).unwrap();
        assert_eq!(verify_over(&outcome, MESSAGE.as_bytes(), &record(pem)), sluice_dkim::Verdict::Pass);
        assert!(outcome.log.is_empty(), "{:?}", outcome.log);
    }
}

/// What a key file must hold, as every refusal of one ends.
const EXPECTED_KEY: &str = "expected an unencrypted PEM private key: RSA (\"BEGIN RSA PRIVATE KEY\", PKCS#1, or \
    \"BEGIN PRIVATE KEY\", PKCS#8) or Ed25519 (\"BEGIN PRIVATE KEY\", PKCS#8), as `sluice dkim keygen` and \
    `openssl genpkey` write";

#[test]
fn every_configuration_error_names_its_key() {
    let ed = ed25519_pem();
    let one = || host(ed);
    let several = |domains: &str| test_host().config("domains", domains).key("org", ed).key("net", ed);
    let key = |pem: &[u8]| test_host().config("domain", "example.org").config("selector", "s1").key("key", pem);
    let table: Vec<(TestHost, String)> = vec![
        (test_host(), "[stage.config] domain: is required: set domain and selector (the key in [stage.keys] key), or domains = \"DOMAIN SELECTOR KEY-NAME, ...\" for several domains".into()),
        (test_host().config("domain", "example.org"), "[stage.config] selector: is required with domain".into()),
        (test_host().config("selector", "s1"), "[stage.config] domain: is required with selector".into()),
        (one().config("domains", "example.net s2 net"), "[stage.config] domains: cannot be combined with domain and selector: use domain, selector and [stage.keys] key for one domain, or domains alone for several".into()),
        (test_host().config("domain", "example.org").config("selector", "s1"), "[stage.keys] key: is required: add it to [stage.keys]".into()),
        (test_host().config("domain", "exa mple.org").config("selector", "s1"), "[stage.config] domain: \"exa mple.org\" is not a domain name".into()),
        (test_host().config("domain", "example.org").config("selector", "s/1"), "[stage.config] selector: \"s/1\" is not a selector (dot-separated labels of letters, digits, \"-\" and \"_\")".into()),
        (several("example.org s1"), "[stage.config] domains: \"example.org s1\" is not \"DOMAIN SELECTOR KEY-NAME\" (KEY-NAME a [stage.keys] entry)".into()),
        (several("example.org s1 org, EXAMPLE.org s2 net"), "[stage.config] domains: example.org is listed twice".into()),
        (several("example.org s1 org, example.net s2 other"), "[stage.keys] other: is required: add it to [stage.keys]".into()),
        (several(" , "), "[stage.config] domains: lists no domain: write \"DOMAIN SELECTOR KEY-NAME, ...\"".into()),
        (several("example..org s1 org"), "[stage.config] domains: \"example..org\" is not a domain name".into()),
        (key(b"hello"), format!("[stage.keys] key: has no PEM \"-----BEGIN ...-----\" line; {EXPECTED_KEY}")),
        (key(b"\xff\xfe"), format!("[stage.keys] key: is not text; {EXPECTED_KEY}")),
        (key(include_bytes!("../testdata/ec-p256-sec1.pem")), format!("[stage.keys] key: holds a PEM \"EC PRIVATE KEY\"; {EXPECTED_KEY}")),
        (key(include_bytes!("../testdata/ec-p256-pkcs8.pem")), format!("[stage.keys] key: holds a \"PRIVATE KEY\" that is neither an RSA nor an Ed25519 key, or is damaged; {EXPECTED_KEY}")),
        (key(include_bytes!("../testdata/ed25519-encrypted.pem")), format!("[stage.keys] key: holds an encrypted key (\"ENCRYPTED PRIVATE KEY\"); {EXPECTED_KEY}")),
        (key(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), format!("[stage.keys] key: holds a PEM \"CERTIFICATE\"; {EXPECTED_KEY}")),
        (key(include_bytes!("../testdata/rsa-512.pem")), "[stage.keys] key: the RSA key has 512 bits; use one of 1024 to 4096 bits (2048 is the usual size)".into()),
        (key(include_bytes!("../testdata/rsa-8192-pkcs8.pem")), "[stage.keys] key: the RSA key has 8192 bits; use one of 1024 to 4096 bits (2048 is the usual size)".into()),
        (one().config("canonicalization", "relaxed/strict"), "[stage.config] canonicalization: must be \"relaxed/relaxed\", \"relaxed/simple\", \"simple/relaxed\" or \"simple/simple\" (\"relaxed\" or \"simple\" alone means a simple body), not \"relaxed/strict\"".into()),
        (one().config("headers", "from:x y"), "[stage.config] headers: \"x y\" is not a header field name".into()),
        (one().config("headers", " : "), "[stage.config] headers: lists no header field: write names separated by \":\" (\"from:to:subject\")".into()),
        (one().config("sign_by", "from"), "[stage.config] sign_by: must be \"header-from\" or \"envelope-from\", not \"from\"".into()),
    ];
    for (host, expected) in table {
        assert_eq!(check_config::<DkimSign>(&host.to_config()).unwrap_err().to_string(), expected);
    }
    for bad in ["7", "0d", "3651d", "1w", "-1d", "d", "99999999999999999999s"] {
        let err = check_config::<DkimSign>(&one().config("expiration", bad).to_config()).unwrap_err();
        let expected = format!("[stage.config] expiration: must be a time from 1s to 3650d, a whole number with s, m, h or d (\"7d\", \"12h\"), not {bad:?}");
        assert_eq!(err.to_string(), expected);
    }
    for good in ["1s", "90m", "12h", "3650d"] {
        assert_eq!(check_config::<DkimSign>(&one().config("expiration", good).to_config()), Ok(vec![]), "{good}");
    }
    let unknown = one().config("canonicalisation", "simple");
    assert_eq!(check_config::<DkimSign>(&unknown.to_config()), Ok(vec!["canonicalisation".to_string()]));
    let relaxed = one().config("canonicalization", "relaxed").run::<DkimSign>(&TestMessage::new(MESSAGE)).unwrap();
    assert_eq!(signed(&relaxed).canonicalization.to_string(), "relaxed/simple", "RFC 6376 §3.5");
}
