//! The independent DKIM peers the dkim-sign / dkim-verify filter tests use, checked on their
//! own: Knot DNS serving our zone on a loopback port (a long RSA-2048 TXT record, split into
//! character-strings, comes back whole over UDP and TCP, as kdig reads it), and OpenDKIM
//! signing with keys made by the openssl CLI and verifying through that server: pass, then fail
//! for a changed body, a changed signed header and an unknown selector, and a DNS failure when
//! the server never answers.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::dns_server::DnsServer;
use support::opendkim::{opendkim_sign, opendkim_verify, DNS_TIMEOUT_SECS};

const DOMAIN: &str = "example.test";

/// Runs a shell pipeline (openssl | base64 …), returning its stdout.
fn sh(script: &str) -> String {
    let output = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

struct Keys {
    rsa: PathBuf,
    ed: PathBuf,
    /// `v=DKIM1; k=rsa; p=` the SubjectPublicKeyInfo DER, base64.
    rsa_record: String,
    /// `v=DKIM1; k=ed25519; p=` the raw 32-byte public key, base64 (RFC 8463).
    ed_record: String,
}

fn openssl_keys(dir: &Path) -> Keys {
    let d = dir.display();
    sh(&format!("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {d}/rsa.pem"));
    sh(&format!("openssl genpkey -algorithm ed25519 -out {d}/ed.pem"));
    Keys {
        rsa: dir.join("rsa.pem"),
        ed: dir.join("ed.pem"),
        rsa_record: format!(
            "v=DKIM1; k=rsa; p={}",
            sh(&format!("openssl pkey -in {d}/rsa.pem -pubout -outform DER | base64 -w0"))
        ),
        ed_record: format!(
            "v=DKIM1; k=ed25519; p={}",
            sh(&format!("openssl pkey -in {d}/ed.pem -pubout -outform DER | tail -c 32 | base64 -w0"))
        ),
    }
}

const MESSAGE: &[u8] = b"From: Joe SixPack <joe@example.test>\r\nTo: Suzie Q <suzie@example.net>\r\n\
Subject: Is dinner ready?\r\nDate: Wed, 2 Dec 2026 04:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n\
Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n\r\n\r\n";

/// The character-strings of kdig's `+short` TXT output (`"…" "…"`, with `\"`, `\\`, `\DDD`).
fn kdig_strings(line: &str) -> Vec<Vec<u8>> {
    let bytes = line.trim().as_bytes();
    let (mut strings, mut i) = (Vec::new(), 0);
    while i < bytes.len() {
        if bytes[i] == b' ' {
            i += 1;
            continue;
        }
        assert_eq!(bytes[i], b'"', "unexpected kdig output: {line}");
        let mut s = Vec::new();
        i += 1;
        while bytes[i] != b'"' {
            if bytes[i] == b'\\' && bytes[i + 1].is_ascii_digit() {
                s.push(std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap().parse::<u8>().unwrap());
                i += 4;
            } else if bytes[i] == b'\\' {
                s.push(bytes[i + 1]);
                i += 2;
            } else {
                s.push(bytes[i]);
                i += 1;
            }
        }
        strings.push(s);
        i += 1;
    }
    strings
}

/// The TXT record at `name`, as kdig reads it from `dns` (over TCP with `tcp`).
fn kdig_txt(dns: &DnsServer, name: &str, tcp: bool) -> Vec<Vec<Vec<u8>>> {
    let port = dns.port().to_string();
    let mut args = vec!["@127.0.0.1", "-p", &port, "+short", "+norecurse", "TXT", name];
    if tcp {
        args.push("+tcp");
    }
    let (status, output) = support::run_tool("kdig", &args, None);
    assert!(status.success(), "kdig {args:?} (the test command installs knot-dnsutils):\n{output}");
    output.lines().filter(|l| !l.trim().is_empty()).map(kdig_strings).collect()
}

#[test]
fn knot_serves_long_txt_records_whole_and_opendkim_signs_and_verifies_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = openssl_keys(dir.path());
    let odd = "quote \" backslash \\ semicolon; caf\u{e9}";
    let dns = DnsServer::start(
        DOMAIN,
        &[
            ("rsa._domainkey.example.test", &keys.rsa_record),
            ("ed._domainkey.example.test.", &keys.ed_record),
            ("odd.example.test", odd),
        ],
    );

    // The RSA-2048 record is longer than one character-string: several come back, in order.
    for tcp in [false, true] {
        let records = kdig_txt(&dns, "rsa._domainkey.example.test", tcp);
        assert_eq!(records.len(), 1, "one TXT record: {records:?}");
        let strings = &records[0];
        assert!(strings.len() >= 2 && strings.iter().all(|s| s.len() <= 255), "{strings:?}");
        assert_eq!(strings.concat(), keys.rsa_record.as_bytes(), "the record joined back (tcp: {tcp})");
        assert_eq!(kdig_txt(&dns, "ed._domainkey.example.test", tcp), vec![vec![keys.ed_record.as_bytes().to_vec()]]);
        assert_eq!(kdig_txt(&dns, "odd.example.test", tcp), vec![vec![odd.as_bytes().to_vec()]]);
    }

    let cases = [
        (&keys.rsa, "rsa", "rsa-sha256", "relaxed/relaxed", "2048-bit key"),
        (&keys.rsa, "rsa", "rsa-sha256", "simple/simple", "2048-bit key"),
        (&keys.rsa, "rsa", "rsa-sha256", "relaxed/simple", "2048-bit key"),
        (&keys.rsa, "rsa", "rsa-sha256", "simple/relaxed", "2048-bit key"),
        (&keys.ed, "ed", "ed25519-sha256", "relaxed/relaxed", "s=ed"),
        (&keys.ed, "ed", "ed25519-sha256", "relaxed/simple", "s=ed"),
    ];
    for (key, selector, algorithm, canon, shown) in cases {
        let what = format!("{algorithm} {canon}");
        let signed = opendkim_sign(MESSAGE, key, DOMAIN, selector, canon, algorithm);
        let text = String::from_utf8(signed.clone()).unwrap();
        assert!(text.ends_with(std::str::from_utf8(MESSAGE).unwrap()), "{what}: the message follows the field");
        let field = &text[..text.len() - MESSAGE.len()];
        assert!(field.starts_with("DKIM-Signature: v=1; a="), "{what}: {field}");
        for tag in [format!("a={algorithm};"), format!("c={canon};"), format!("d={DOMAIN};"), format!("s={selector};")]
        {
            assert!(field.contains(&tag), "{what}: {tag} missing in {field}");
        }
        assert!(!field.replace("\r\n", "").contains(['\r', '\n']), "{what}: CRLF line ends only: {field:?}");

        let file = dir.path().join(format!("{selector}-{}.eml", canon.replace('/', "-")));
        std::fs::write(&file, &signed).unwrap();
        let verdict = opendkim_verify(&file, &dns);
        assert!(verdict.passed() && verdict.text().contains(shown), "{what}: {verdict:?}");

        let changed_body = text.replace("hungry", "Hungry");
        std::fs::write(&file, &changed_body).unwrap();
        let verdict = opendkim_verify(&file, &dns);
        assert!(!verdict.passed() && verdict.text().contains("failed"), "{what}, changed body: {verdict:?}");

        let changed_header = text.replace("Subject: Is dinner ready?", "Subject: Is dinner ready!");
        std::fs::write(&file, &changed_header).unwrap();
        let verdict = opendkim_verify(&file, &dns);
        assert!(!verdict.passed() && verdict.text().contains("failed"), "{what}, changed subject: {verdict:?}");
    }

    // A selector with no record: NXDOMAIN from Knot.
    let signed = opendkim_sign(MESSAGE, &keys.rsa, DOMAIN, "missing", "relaxed/relaxed", "rsa-sha256");
    let file = dir.path().join("missing.eml");
    std::fs::write(&file, signed).unwrap();
    let verdict = opendkim_verify(&file, &dns);
    assert!(!verdict.passed() && verdict.text().ends_with("key not found in DNS"), "{verdict:?}");

    let file = dir.path().join("unsigned.eml");
    std::fs::write(&file, MESSAGE).unwrap();
    let verdict = opendkim_verify(&file, &dns);
    assert_eq!(verdict.text(), "message not signed");
}

#[test]
fn a_server_that_never_answers_is_a_failed_key_query_after_opendkims_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let keys = openssl_keys(dir.path());
    let signed = opendkim_sign(MESSAGE, &keys.rsa, DOMAIN, "rsa", "relaxed/relaxed", "rsa-sha256");
    let file = dir.path().join("signed.eml");
    std::fs::write(&file, signed).unwrap();
    let silent = DnsServer::silent();
    let started = Instant::now();
    let verdict = opendkim_verify(&file, &silent);
    let took = started.elapsed();
    assert!(!verdict.passed() && verdict.text().ends_with("key DNS query failed"), "{verdict:?}");
    let timeout = Duration::from_secs(DNS_TIMEOUT_SECS.into());
    assert!(took >= timeout - Duration::from_millis(500) && took < timeout * 4, "took {took:?}");
}
