//! The dkim-sign filter in the real gateway, checked by independent verifiers: mail signed in
//! the chain verifies with dkimpy and with OpenDKIM, keys served by a real authoritative DNS
//! server (Knot, on a loopback port), for RSA-2048 and Ed25519, relaxed and simple
//! canonicalisation, delivered to a maildir and relayed to a next hop: short, 8-bit, long-line
//! and 20 MiB base64 bodies, folded headers and trailing blank lines, and a Subject an earlier
//! stage changed (the signature covers what is relayed). Then what an operator gets wrong: a
//! missing or malformed key, and `filter-test --key`.

mod support;

use std::path::{Path, PathBuf};

use support::dkim_keys::{dkimpy_verify, Keys};
use support::dns_server::DnsServer;
use support::opendkim::opendkim_verify;
use support::sink::SmtpSink;
use support::{filter_wasm, run_tool, sluice_bin, Gateway, GatewayBuilder};

const ORIGIN: &str = "example.test";

/// One signing stage per case, each for its own domain: (domain label, key, canonicalization).
const CASES: [(&str, &str, &str); 4] = [
    ("rr-rsa", "rsa", "relaxed/relaxed"),
    ("ss-rsa", "rsa", "simple/simple"),
    ("rr-ed", "ed", "relaxed/relaxed"),
    ("ss-ed", "ed", "simple/simple"),
];

fn domain(label: &str) -> String {
    format!("{label}.{ORIGIN}")
}

struct Setup {
    dir: tempfile::TempDir,
    keys: Keys,
    dns: DnsServer,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::openssl(dir.path());
    let owners: Vec<(String, String)> = CASES
        .iter()
        .map(|(label, key, _)| {
            let record = if *key == "rsa" { &keys.rsa.record } else { &keys.ed25519.record };
            (format!("s1._domainkey.{}", domain(label)), record.clone())
        })
        .collect();
    let records: Vec<(&str, &str)> = owners.iter().map(|(o, r)| (o.as_str(), r.as_str())).collect();
    let dns = DnsServer::start(ORIGIN, &records);
    Setup { dir, keys, dns }
}

/// header-rules tags one Subject, then a dkim-sign stage per case.
fn chain(setup: &Setup) -> String {
    let mut chain = format!(
        "[[stage]]\nname = \"tag\"\nkind = \"wasm\"\npath = \"{}\"\n[stage.config]\nrules = \"header Subject /tag-me/ tag-subject [tagged]\"\n\n",
        filter_wasm("header_rules")
    );
    for (label, key, canon) in CASES {
        let pem = if key == "rsa" { &setup.keys.rsa.pem } else { &setup.keys.ed25519.pem };
        chain.push_str(&format!(
            "[[stage]]\nname = \"sign-{label}\"\nkind = \"wasm\"\npath = \"{}\"\n[stage.config]\ndomain = \"{}\"\nselector = \"s1\"\ncanonicalization = \"{canon}\"\n[stage.keys]\nkey = \"{}\"\n\n",
            filter_wasm("dkim_sign"),
            domain(label),
            pem.display()
        ));
    }
    chain
}

/// A message to sign: its name (also its Message-ID), sender and content.
#[derive(Clone)]
struct Sent {
    name: String,
    from: String,
    content: Vec<u8>,
}

/// The messages every case sends, From its domain.
fn messages(label: &str, big: bool) -> Vec<Sent> {
    let from = format!("joe@{}", domain(label));
    let with = |name: &str, head: &str, body: &[u8]| {
        let name = format!("{label}-{name}");
        let top = format!("From: Joe <{from}>\r\nTo: <suzie@dest.test>\r\nDate: Wed, 2 Dec 2026 04:00:00 +0000\r\nMessage-ID: <{name}@x>\r\n");
        Sent { name, from: from.clone(), content: [top.as_bytes(), head.as_bytes(), b"\r\n", body].concat() }
    };
    let long_line: String = (0..998).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let mut list = vec![
        with("short", "Subject: short\r\n", b"Hello.\r\n"),
        with(
            "8bit",
            "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
            "Grüße aus Köln — ✓\r\n".as_bytes(),
        ),
        with("long-lines", "Subject: long\r\n", format!("{long_line}\r\n{long_line} \t \r\n").as_bytes()),
        with(
            "folded",
            "Subject: a subject\r\n  folded  over\r\n\tthree lines\r\nX-Long: x\r\n",
            b"body with trailing blank lines\r\n\r\n\r\n\r\n",
        ),
        with("changed", "Subject: please tag-me\r\n", b"An earlier stage changes the Subject.\r\n"),
    ];
    if big {
        let whole = support::message("big", 20 << 20);
        let body = &whole[whole.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        list.push(with("20MiB", "Subject: big\r\nContent-Transfer-Encoding: base64\r\n", body));
    }
    list
}

/// Checks every delivered message with dkimpy and OpenDKIM; both must say pass.
fn both_verify(setup: &Setup, delivered: &[(String, Vec<u8>)]) {
    let paths: Vec<PathBuf> = delivered
        .iter()
        .map(|(name, content)| {
            let path = setup.dir.path().join(format!("{name}.eml"));
            std::fs::write(&path, content).unwrap();
            path
        })
        .collect();
    let dkimpy = dkimpy_verify(&setup.dns, &paths);
    let mut wrong = Vec::new();
    for (((name, content), path), dkimpy) in delivered.iter().zip(&paths).zip(&dkimpy) {
        if !content.starts_with(b"DKIM-Signature: v=1;") {
            wrong.push(format!("{name}: not signed: {}", String::from_utf8_lossy(&content[..content.len().min(200)])));
            continue;
        }
        if dkimpy != "pass" {
            wrong.push(format!("{name}: dkimpy says {dkimpy}"));
        }
        let opendkim = opendkim_verify(path, &setup.dns);
        if !opendkim.passed() {
            wrong.push(format!("{name}: OpenDKIM says {}", opendkim.text()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn send_all(gateway: &Gateway, messages: &[Sent]) {
    let mut client = gateway.connect();
    client.hello();
    for message in messages {
        let reply = client.send_message(&message.from, &["suzie@dest.test"], &message.content);
        assert_eq!(reply.code, 250, "{}: {}", message.name, reply.text());
    }
}

/// Delivered messages by the name in their Message-ID, sorted.
fn named(delivered: Vec<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    let mut named: Vec<(String, Vec<u8>)> = delivered
        .into_iter()
        .map(|content| {
            (field(&content, "Message-ID").trim_matches(['<', '>']).trim_end_matches("@x").to_string(), content)
        })
        .collect();
    named.sort();
    named
}

fn field(content: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(content);
    let prefix = format!("{name}:");
    text.lines().find(|l| l.starts_with(&prefix)).map(|l| l[prefix.len()..].trim().to_string()).unwrap_or_default()
}

#[test]
fn mail_signed_in_the_chain_verifies_with_dkimpy_and_opendkim_in_a_maildir_and_at_the_next_hop() {
    let setup = setup();
    // 20 MiB bodies for one RSA and one Ed25519 case.
    let sent: Vec<Sent> =
        CASES.iter().flat_map(|(label, _, _)| messages(label, *label == "rr-rsa" || *label == "ss-ed")).collect();

    let gateway = Gateway::builder().section(&chain(&setup)).start();
    send_all(&gateway, &sent);
    support::poll_until(|| gateway.delivered().len() == sent.len(), "every message delivered");
    let delivered = named(gateway.delivered());
    for (name, content) in delivered.iter().filter(|(name, _)| name.ends_with("changed")) {
        assert_eq!(
            field(content, "Subject"),
            "[tagged] please tag-me",
            "{name}: the earlier stage's Subject is signed"
        );
    }
    both_verify(&setup, &delivered);

    let sink = SmtpSink::start(&[]);
    let relaying = GatewayBuilder::default().section(&chain(&setup)).relay_to(sink.port).start();
    let small: Vec<Sent> = sent.into_iter().filter(|m| !m.name.ends_with("20MiB")).collect();
    send_all(&relaying, &small);
    let relayed = sink.wait_for_messages(small.len()).into_iter().map(|m| m.data).collect();
    both_verify(&setup, &named(relayed));
}

fn check_config(dir: &Path, stage: &str) -> (Option<i32>, String) {
    let path = dir.join("sluice.toml");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[maildir]\npath = \"{}\"\n\n{stage}",
        dir.join("mail").display()
    );
    std::fs::write(&path, text).unwrap();
    let (status, output) = run_tool(sluice_bin(), &["check-config", path.to_str().unwrap()], None);
    (status.code(), output)
}

fn sign_stage(key: &str) -> String {
    format!(
        "[[stage]]\nname = \"dkim\"\nkind = \"wasm\"\npath = \"{}\"\n[stage.config]\ndomain = \"example.org\"\nselector = \"s1\"\n[stage.keys]\nkey = \"{key}\"\n",
        filter_wasm("dkim_sign")
    )
}

#[test]
fn a_missing_or_malformed_key_is_an_error_naming_the_stage_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml").display().to_string();
    let (code, output) = check_config(dir.path(), &sign_stage("keys/s1.pem"));
    let missing = dir.path().join("keys/s1.pem");
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output
            .contains(&format!("{config}:15: stage \"dkim\": [stage.keys] key: {} does not exist", missing.display())),
        "{output}"
    );

    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(&missing, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n").unwrap();
    let (code, output) = check_config(dir.path(), &sign_stage("keys/s1.pem"));
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains(&format!("{config}:15: stage \"dkim\": [stage.keys] key: ")), "{output}");

    let keys = Keys::openssl(dir.path());
    let (code, output) = check_config(dir.path(), &sign_stage(keys.ed25519.pem.to_str().unwrap()));
    assert_eq!(code, Some(0), "{output}");
}

#[test]
fn a_key_must_be_in_stage_keys_where_the_filter_cannot_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml").display().to_string();
    let keys = Keys::openssl(dir.path());
    let pem = keys.rsa.pem.display().to_string();
    let wasm = filter_wasm("dkim_sign");
    let stage = |tables: &str| {
        format!("[[stage]]\nname = \"dkim\"\nkind = \"wasm\"\npath = \"{wasm}\"\n[stage.config]\ndomain = \"example.org\"\nselector = \"s1\"\n{tables}")
    };
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
    let cases = [
        // The filter's refusal, keyed keys.key, points at the stage (the table is absent).
        ("".to_string(), "stage \"dkim\": [stage.keys] key: is required: add it to [stage.keys]".to_string()),
        (
            format!("[stage.files]\nkey = \"{pem}\"\n"),
            "[stage.keys] key: is required in [stage.keys]; it is in [stage.files], which the filter can read: move it"
                .to_string(),
        ),
        // The host reads every key at load: one that is no key is refused at its line.
        (
            format!("[stage.keys]\nkey = \"{}\"\n", cert.display()),
            format!("{config}:15: stage \"dkim\": [stage.keys] key: holds a PEM \"CERTIFICATE\"; expected"),
        ),
        (
            format!("[stage.files]\nsame = \"{pem}\"\n[stage.keys]\nkey = \"{pem}\"\n"),
            format!(
                "{config}:17:1: stage \"dkim\": [stage.keys] key: is also in [stage.files], where the filter can read it"
            ),
        ),
    ];
    for (tables, expected) in cases {
        let (code, output) = check_config(dir.path(), &stage(&tables));
        assert_eq!(code, Some(1), "{tables}: {output}");
        assert!(output.contains(&expected), "{tables}: expected {expected:?} in\n{output}");
    }
}

#[test]
fn filter_test_signs_offline_with_a_key_given_by_file() {
    let setup = setup();
    let eml = setup.dir.path().join("in.eml");
    std::fs::write(&eml, "From: <joe@rr-rsa.example.test>\nSubject: offline\n\nHello.\n").unwrap();
    let out = setup.dir.path().join("out.eml");
    let args = [
        "filter-test",
        &filter_wasm("dkim_sign"),
        "--eml",
        eml.to_str().unwrap(),
        "--config",
        "domain=rr-rsa.example.test",
        "--config",
        "selector=s1",
        "--key",
        &format!("key={}", setup.keys.rsa.pem.display()),
        "--output",
        out.to_str().unwrap(),
    ];
    let (status, output) = run_tool(sluice_bin(), &args, None);
    assert!(status.success(), "{output}");
    assert!(output.contains("+ prepend header DKIM-Signature: v=1; a=rsa-sha256;"), "{output}");
    assert_eq!(dkimpy_verify(&setup.dns, std::slice::from_ref(&out)), ["pass"]);

    let without = [&args[..8], &args[10..]].concat();
    let (status, output) = run_tool(sluice_bin(), &without, None);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("--key key: is required"), "{output}");

    let twice = [&args[..10], &args[8..]].concat();
    let (status, output) = run_tool(sluice_bin(), &twice, None);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("--key key: given twice"), "{output}");
    let unnamed = format!("={}", setup.keys.rsa.pem.display());
    let (status, output) = run_tool(sluice_bin(), &[&args[..9], &[unnamed.as_str()], &args[10..]].concat(), None);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("non-empty KEY"), "{output}");
}

#[test]
fn a_reload_reads_a_replaced_key_file_and_reports_the_stage_changed() {
    let setup = setup();
    let key = setup.dir.path().join("current.pem");
    std::fs::copy(&setup.keys.rsa.pem, &key).unwrap();
    let stage = format!(
        "[[stage]]\nname = \"sign\"\nkind = \"wasm\"\npath = \"{}\"\n[stage.config]\ndomain = \"rr-rsa.{ORIGIN}\"\nselector = \"s1\"\n[stage.keys]\nkey = \"{}\"\n",
        filter_wasm("dkim_sign"),
        key.display()
    );
    let gateway = Gateway::builder().section(&stage).section("[admin]\nlisten = \"127.0.0.1:0\"").start();
    let send = |id: &str| {
        let mut client = gateway.connect();
        client.hello();
        let content = format!("From: <joe@rr-rsa.{ORIGIN}>\r\nSubject: {id}\r\nMessage-ID: <{id}@x>\r\n\r\nHello.\r\n");
        assert_eq!(
            client.send_message(&format!("joe@rr-rsa.{ORIGIN}"), &["b@dest.test"], content.as_bytes()).code,
            250
        );
    };
    let reload = || {
        let (status, body) = support::http(&gateway.admin_address(), "POST", "/reload", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    send("before");
    assert_eq!(reload()["stages_changed"], serde_json::json!([]), "the same key file is no change");
    // The Ed25519 key now, under the same selector: the record served is still the RSA one.
    std::fs::copy(&setup.keys.ed25519.pem, &key).unwrap();
    assert_eq!(reload()["stages_changed"], serde_json::json!(["sign"]));
    send("after");
    support::poll_until(|| gateway.delivered().len() == 2, "both delivered");
    let delivered = named(gateway.delivered());
    assert!(field(&delivered[0].1, "DKIM-Signature").contains("a=ed25519-sha256"), "after: the new key signs");
    assert!(field(&delivered[1].1, "DKIM-Signature").contains("a=rsa-sha256"), "before: the old key signed");
}
