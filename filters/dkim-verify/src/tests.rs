//! `dkim-verify` run natively through `TestHost`, over messages signed with `sluice_dkim` and
//! key records served as the host's DNS answers.

use std::sync::OnceLock;

use sluice_dkim::{Canonicalization, Signer, SigningKey};
use sluice_filter_sdk::dns::DnsError;
use sluice_filter_sdk::log::Level;
use sluice_filter_sdk::testing::{Outcome, TestHost, TestMessage};
use sluice_filter_sdk::{check_config, Event, Verdict};

use super::*;

const MESSAGE: &str = "From: Joe <joe@example.org>\r\n\
    To: Suzie <suzie@example.net>\r\n\
    Subject: Is dinner ready?\r\n\
    \x20(folded)\r\n\
    X-Unsigned: anything\r\n\
    \r\n\
    Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n";

const KEY_NAME: &str = "s1._domainkey.example.org";

fn rsa_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| SigningKey::generate_rsa(2048).unwrap().to_pkcs8_pem().unwrap())
}

fn ed25519_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| SigningKey::generate_ed25519().unwrap().to_pkcs8_pem().unwrap())
}

fn record(pem: &str) -> String {
    SigningKey::from_pem(pem).unwrap().key_record().to_string()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `content` with a `DKIM-Signature` of `domain` (selector s1) on top, made at `time`.
fn sign_at(
    content: &str,
    pem: &str,
    domain: &str,
    canonicalization: &str,
    signer: impl FnOnce(Signer) -> Signer,
    time: u64,
) -> String {
    let key = SigningKey::from_pem(pem).unwrap();
    let signer = signer(
        Signer::new(key, domain, "s1").with_canonicalization(Canonicalization::parse(canonicalization).unwrap()),
    );
    let at = content.find("\r\n\r\n").unwrap() + 4;
    let mut body = signer.body_hasher();
    body.update(&content.as_bytes()[at..]);
    let field = signer.sign(&split_header_section(&content.as_bytes()[..at]), &body.finish(), time).unwrap();
    format!("{}{content}", field.to_field())
}

fn sign(content: &str, pem: &str, domain: &str) -> String {
    sign_at(content, pem, domain, "relaxed/relaxed", |signer| signer, now())
}

fn host() -> TestHost {
    TestHost::new().config("authserv_id", "mx.example.org")
}

fn published(pem: &str) -> TestHost {
    host().txt(KEY_NAME, &record(pem))
}

/// The Authentication-Results field the filter prepended.
fn results(outcome: &Outcome) -> &str {
    assert_eq!(outcome.headers.0[0].name, "Authentication-Results", "prepended at the top");
    &outcome.headers.0[0].value
}

/// `results` without the `header.b`, which depends on the signature.
fn without_b(results: &str) -> String {
    let without =
        |info: &str| info.split(' ').filter(|word| !word.starts_with("header.b=")).collect::<Vec<_>>().join(" ");
    results.split("; ").map(without).collect::<Vec<_>>().join("; ")
}

#[test]
fn a_good_signature_passes_whatever_the_chunking() {
    for (pem, algorithm) in [(rsa_pem(), "rsa-sha256"), (ed25519_pem(), "ed25519-sha256")] {
        for canonicalization in ["relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"] {
            let message = sign_at(MESSAGE, pem, "example.org", canonicalization, |signer| signer, now());
            for chunk in [1, 7, 64 * 1024] {
                let outcome = published(pem).run::<DkimVerify>(&TestMessage::new(&message).chunked(chunk)).unwrap();
                assert_eq!(outcome.verdict, Verdict::Continue);
                assert_eq!(outcome.calls.last(), Some(&(Event::End, Verdict::Accept)));
                let expected =
                    format!("mx.example.org; dkim=pass header.d=example.org header.s=s1 header.a={algorithm}");
                assert_eq!(without_b(results(&outcome)), expected, "{canonicalization}, chunks of {chunk}");
                let b = Signature::parse_field(split_header_section(message.as_bytes())[0]).unwrap().b_prefix(8);
                assert!(
                    results(&outcome).ends_with(&format!("header.b={b}"))
                        || results(&outcome).ends_with(&format!("header.b=\"{b}\""))
                );
            }
        }
    }
}

#[test]
fn what_changed_after_signing_fails_what_was_not_signed_does_not_matter() {
    let message = sign(MESSAGE, ed25519_pem(), "example.org");
    let table = [
        (message.replace("We lost", "We won"), "dkim=fail reason=\"body hash mismatch\""),
        (message.replace("Is dinner ready?", "Is dinner ready??"), "dkim=fail reason=\"bad signature\""),
        (message.replace("X-Unsigned: anything", "X-Unsigned: something else"), "dkim=pass"),
        (message.replace("Joe.\r\n", "Joe.\r\n\r\n\r\n"), "dkim=pass"),
    ];
    for (altered, result) in table {
        let outcome = published(ed25519_pem()).run::<DkimVerify>(&TestMessage::new(&altered)).unwrap();
        let expected = format!("mx.example.org; {result} header.d=example.org header.s=s1 header.a=ed25519-sha256");
        assert_eq!(without_b(results(&outcome)), expected);
    }
}

#[test]
fn signatures_that_cannot_be_checked_are_answered_at_the_header_section() {
    let message = sign(MESSAGE, ed25519_pem(), "example.org");
    let ed = "header.d=example.org header.s=s1 header.a=ed25519-sha256";
    let expired =
        sign_at(MESSAGE, ed25519_pem(), "example.org", "relaxed/relaxed", |s| s.with_expiration(60), now() - 120);
    let table = [
        (host(), message.clone(), format!("dkim=permerror reason=\"no key record at s1._domainkey.example.org\" {ed}")),
        (
            host().dns_error(KEY_NAME, DnsError::NotFound),
            message.clone(),
            format!("dkim=permerror reason=\"no key record at s1._domainkey.example.org\" {ed}"),
        ),
        (
            host().dns_error(KEY_NAME, DnsError::Timeout),
            message.clone(),
            format!("dkim=temperror reason=\"key lookup failed: DNS timeout\" {ed}"),
        ),
        (
            host().dns_error(KEY_NAME, DnsError::ServerFailure),
            message.clone(),
            format!("dkim=temperror reason=\"key lookup failed: DNS server failure\" {ed}"),
        ),
        (published(ed25519_pem()), expired, format!("dkim=permerror reason=\"signature expired\" {ed}")),
        (
            published(ed25519_pem()),
            message.replace("; s=s1;", ";"),
            "dkim=permerror reason=\"malformed signature: required tag s= is missing\"".into(),
        ),
        (
            published(ed25519_pem()),
            message.replace("d=example.org", "d=exa mple.org"),
            "dkim=permerror reason=\"malformed signature: d= or s= is not a domain name\"".into(),
        ),
        (published(ed25519_pem()), MESSAGE.to_string(), "dkim=none".into()),
    ];
    for (host, content, result) in table {
        let outcome = host.run::<DkimVerify>(&TestMessage::new(&content)).unwrap();
        assert_eq!(without_b(results(&outcome)), format!("mx.example.org; {result}"));
        assert_eq!(outcome.calls, [(Event::Headers, Verdict::Accept)], "the body is skipped: {result}");
    }
}

#[test]
fn unusable_key_records_are_permanent_errors() {
    let message = sign(MESSAGE, ed25519_pem(), "example.org");
    let ed = "header.d=example.org header.s=s1 header.a=ed25519-sha256";
    let table = [
        ("v=DKIM1; k=ed25519; p=".to_string(), "key revoked"),
        ("v=DKIM1; k=ed25519; p=AAAA".to_string(), "key record: p= is not a usable ed25519 public key"),
        (record(rsa_pem()), "algorithm mismatch: a=ed25519-sha256 but k=rsa"),
        ("not a record".to_string(), "key record: tag \\\"not a record\\\" has no \\\"=\\\""),
    ];
    for (key_record, why) in table {
        let outcome = host().txt(KEY_NAME, &key_record).run::<DkimVerify>(&TestMessage::new(&message)).unwrap();
        assert_eq!(without_b(results(&outcome)), format!("mx.example.org; dkim=permerror reason=\"{why}\" {ed}"));
    }
    // A reason quoting what the sender wrote is cut short.
    let junk = message.replacen("v=1;", &format!("v=1; {};", "x".repeat(5000)), 1);
    let outcome = published(ed25519_pem()).run::<DkimVerify>(&TestMessage::new(&junk)).unwrap();
    let expected =
        format!("mx.example.org; dkim=permerror reason=\"malformed signature: tag \\\"{}...\"", "x".repeat(74));
    assert_eq!(results(&outcome), expected);
    // Of several records, the one that is a key record counts.
    let host = host().txt(KEY_NAME, "v=spf1 -all").txt(KEY_NAME, &record(ed25519_pem()));
    let outcome = host.run::<DkimVerify>(&TestMessage::new(&message)).unwrap();
    assert!(results(&outcome).starts_with("mx.example.org; dkim=pass"), "{}", results(&outcome));
}

#[test]
fn every_signature_gets_a_result_up_to_eight() {
    let twice =
        sign(&sign_at(MESSAGE, rsa_pem(), "example.net", "simple/simple", |s| s, now()), ed25519_pem(), "example.org");
    let host = published(ed25519_pem()).txt("s1._domainkey.example.net", &record(rsa_pem()));
    let outcome = host.run::<DkimVerify>(&TestMessage::new(&twice).chunked(5)).unwrap();
    assert_eq!(
        without_b(results(&outcome)),
        "mx.example.org; dkim=pass header.d=example.org header.s=s1 header.a=ed25519-sha256; \
         dkim=pass header.d=example.net header.s=s1 header.a=rsa-sha256"
    );

    let mut many = MESSAGE.to_string();
    for _ in 0..10 {
        many = sign(&many, ed25519_pem(), "example.org");
    }
    let outcome = published(ed25519_pem()).run::<DkimVerify>(&TestMessage::new(&many)).unwrap();
    assert_eq!(results(&outcome).matches("dkim=pass").count(), 8, "{}", results(&outcome));
    let logged = (Level::Info, "checking the first 8 of 10 DKIM-Signature fields; the others are ignored".to_string());
    assert!(outcome.log.contains(&logged), "{:?}", outcome.log);
}

#[test]
fn forged_results_under_our_authserv_id_are_removed() {
    let head = "Authentication-Results: MX.Example.ORG; dkim=pass header.d=example.org\r\n\
        Authentication-Results: other.example; dkim=fail\r\n\
        Authentication-Results: (forged) mx.example.org 1; spf=pass\r\n\
        Authentication-Results: mx.example.org.evil.example; dkim=pass\r\n";
    let content = format!("{head}{MESSAGE}");
    for host in [host(), published(ed25519_pem())] {
        for message in [content.clone(), sign(&content, ed25519_pem(), "example.org")] {
            let outcome = host.run::<DkimVerify>(&TestMessage::new(&message)).unwrap();
            let fields: Vec<&str> = outcome.headers.all("Authentication-Results").collect();
            assert_eq!(fields.len(), 3, "{fields:?}");
            assert!(fields[0].starts_with("mx.example.org; dkim="), "ours, on top: {fields:?}");
            assert_eq!(fields[1..], ["other.example; dkim=fail", "mx.example.org.evil.example; dkim=pass"]);
        }
    }
}

#[test]
fn the_policy_wants_a_passing_signature_of_the_from_domain() {
    let policy = || published(ed25519_pem()).config("required_domains", "Example.org, example.net");
    let signed = sign(MESSAGE, ed25519_pem(), "example.org");
    let reject = Verdict::reject(550, "5.7.20", "No valid DKIM signature from example.org");
    let tempfail = Verdict::tempfail(451, "4.7.5", "No valid DKIM signature from example.org");
    let net_only = sign(MESSAGE, rsa_pem(), "example.net");
    let table = [
        (policy(), signed.clone(), Verdict::Continue),
        (policy(), MESSAGE.to_string(), reject.clone()),
        (policy(), signed.replace("We lost", "We won"), reject.clone()),
        (policy().txt("s1._domainkey.example.net", &record(rsa_pem())), net_only.clone(), reject.clone()),
        (policy(), MESSAGE.replace("joe@example.org", "joe@example.com"), Verdict::Continue),
        (policy(), MESSAGE.replace("Joe <joe@example.org>", "a@example.com, joe@EXAMPLE.org"), reject.clone()),
        (policy().config("on_missing", "tempfail"), MESSAGE.to_string(), tempfail),
        (
            policy().dns_error(KEY_NAME, DnsError::Timeout),
            signed.clone(),
            Verdict::tempfail(
                451,
                "4.7.5",
                "No valid DKIM signature from example.org yet (key lookup failed: DNS timeout); try again later",
            ),
        ),
    ];
    for (host, message, verdict) in table {
        let outcome = host.run::<DkimVerify>(&TestMessage::new(&message)).unwrap();
        assert_eq!(outcome.verdict, verdict, "{}", results(&outcome));
    }
}

#[test]
fn every_configuration_error_names_its_key() {
    let table = [
        (TestHost::new(), "[stage.config] authserv_id: is required: set it to this gateway's hostname (\"mx.example.org\"), the name its Authentication-Results fields are written under"),
        (TestHost::new().config("authserv_id", "mx example"), "[stage.config] authserv_id: must be a hostname such as \"mx.example.org\", not \"mx example\""),
        (host().config("required_domains", "example.org, exa mple.net"), "[stage.config] required_domains: \"exa mple.net\" is not a domain name"),
        (host().config("required_domains", " , "), "[stage.config] required_domains: lists no domain: write \"example.org, example.net\", or leave it out"),
        (host().config("on_missing", "reject"), "[stage.config] on_missing: applies only with required_domains: set required_domains too, or leave on_missing out"),
        (host().config("required_domains", "example.org").config("on_missing", "bounce"), "[stage.config] on_missing: must be \"reject\" or \"tempfail\", not \"bounce\""),
    ];
    for (host, expected) in table {
        assert_eq!(check_config::<DkimVerify>(&host.to_config()).unwrap_err().to_string(), expected);
    }
    let good =
        host().config("required_domains", "example.org").config("on_missing", "tempfail").config("on_mising", "x");
    assert_eq!(check_config::<DkimVerify>(&good.to_config()), Ok(vec!["on_mising".to_string()]));
}
