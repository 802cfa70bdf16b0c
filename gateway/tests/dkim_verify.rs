//! The dkim-verify filter in the real gateway, its keys looked up through the `dns` capability
//! in a real authoritative DNS server (Knot, on a loopback port): mail signed by dkimpy and by
//! OpenDKIM passes; a body or signed header changed in transit fails; an absent key record is a
//! permerror, a server that never answers a temperror; unsigned mail is `none`; a forged
//! Authentication-Results for our own name is removed; the policy rejects or tempfails mail
//! from a listed domain without a valid signature. A filter importing `dns` without the grant
//! does not load, and `filter-test --zone` runs the verifier offline.

mod support;

use support::dkim_keys::{dkimpy_sign, Keys};
use support::dns_server::DnsServer;
use support::opendkim::opendkim_sign;
use support::{filter_wasm, run_tool, sluice_bin, Gateway};

const ORIGIN: &str = "example.test";
const RSA_DOMAIN: &str = "v.example.test";
const ED_DOMAIN: &str = "ed.example.test";

fn head(from_domain: &str, id: &str) -> String {
    format!("From: Joe <joe@{from_domain}>\r\nTo: <suzie@dest.test>\r\nSubject: hello {id}\r\nDate: Wed, 2 Dec 2026 04:00:00 +0000\r\nMessage-ID: <{id}@x>\r\n\r\n")
}

fn message(from_domain: &str, id: &str) -> Vec<u8> {
    format!("{}Hello, {id}.\r\n", head(from_domain, id)).into_bytes()
}

fn start_dns(keys: &Keys) -> DnsServer {
    let rsa = format!("s1._domainkey.{RSA_DOMAIN}");
    let ed = format!("s1._domainkey.{ED_DOMAIN}");
    DnsServer::start(ORIGIN, &[(&rsa, &keys.rsa.record), (&ed, &keys.ed25519.record)])
}

fn verify_stage(extra: &str) -> String {
    format!(
        "[[stage]]\nname = \"verify\"\nkind = \"wasm\"\npath = \"{}\"\ncapabilities = [\"dns\"]\n[stage.config]\nauthserv_id = \"gw.test\"\n{extra}\n",
        filter_wasm("dkim_verify")
    )
}

fn gateway(dns: &str, extra: &str) -> Gateway {
    Gateway::builder()
        .section(&format!("[dns]\nservers = [\"{dns}\"]\ntimeout = \"2s\"\n"))
        .section(&verify_stage(extra))
        .start()
}

/// The first Authentication-Results field of a delivered message, unfolded.
fn auth_results(content: &[u8]) -> String {
    let text = String::from_utf8_lossy(content);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("Authentication-Results: gw.test;"), "A-R is not the first field:\n{text}");
    let continued: Vec<&str> = lines.take_while(|l| l.starts_with([' ', '\t'])).collect();
    [first.to_string(), continued.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")].join(" ")
}

/// Sends `(id, content)` pairs and returns each delivered message's A-R, by id.
fn results(gateway: &Gateway, messages: &[(&str, Vec<u8>)]) -> Vec<(String, String)> {
    let mut client = gateway.connect();
    client.hello();
    for (id, content) in messages {
        assert_eq!(client.send_message("joe@sender.test", &["suzie@dest.test"], content).code, 250, "{id}");
    }
    support::poll_until(|| gateway.delivered().len() == messages.len(), "every message delivered");
    let mut out: Vec<(String, String)> = gateway
        .delivered()
        .iter()
        .map(|content| {
            let text = String::from_utf8_lossy(content);
            let id =
                text.lines().find_map(|l| l.strip_prefix("Message-ID: <")).unwrap().trim_end_matches("@x>").to_string();
            (id, auth_results(content))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn signatures_from_dkimpy_and_opendkim_are_checked_against_keys_from_a_real_dns_server() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::openssl(dir.path());
    let dns = start_dns(&keys);
    let d = dir.path();
    let dkimpy_rsa = dkimpy_sign(d, &message(RSA_DOMAIN, "dkimpy-rsa"), &keys.rsa, RSA_DOMAIN, "s1", "relaxed/relaxed");
    let dkimpy_ed = dkimpy_sign(d, &message(ED_DOMAIN, "dkimpy-ed"), &keys.ed25519, ED_DOMAIN, "s1", "simple/simple");
    let opendkim_rsa = opendkim_sign(
        &message(RSA_DOMAIN, "opendkim-rsa"),
        &keys.rsa.pem,
        RSA_DOMAIN,
        "s1",
        "simple/simple",
        "rsa-sha256",
    );
    let opendkim_ed = opendkim_sign(
        &message(ED_DOMAIN, "opendkim-ed"),
        &keys.ed25519.pem,
        ED_DOMAIN,
        "s1",
        "relaxed/relaxed",
        "ed25519-sha256",
    );
    let body_changed = String::from_utf8(dkimpy_sign(
        d,
        &message(RSA_DOMAIN, "body-changed"),
        &keys.rsa,
        RSA_DOMAIN,
        "s1",
        "relaxed/relaxed",
    ))
    .unwrap()
    .replace("Hello, body-changed.", "Hello, CHANGED.");
    let header_changed = String::from_utf8(dkimpy_sign(
        d,
        &message(RSA_DOMAIN, "header-changed"),
        &keys.rsa,
        RSA_DOMAIN,
        "s1",
        "relaxed/relaxed",
    ))
    .unwrap()
    .replace("Subject: hello header-changed", "Subject: hello CHANGED");
    let no_key = dkimpy_sign(d, &message(RSA_DOMAIN, "no-key"), &keys.rsa, RSA_DOMAIN, "absent", "relaxed/relaxed");
    let forged = [
        b"Authentication-Results: GW.test; dkim=pass header.d=v.example.test\r\n".as_slice(),
        &message("unsigned.test", "forged"),
    ]
    .concat();

    let gateway = gateway(&dns.addr(), "");
    let got = results(
        &gateway,
        &[
            ("dkimpy-rsa", dkimpy_rsa),
            ("dkimpy-ed", dkimpy_ed),
            ("opendkim-rsa", opendkim_rsa),
            ("opendkim-ed", opendkim_ed),
            ("body-changed", body_changed.into_bytes()),
            ("header-changed", header_changed.into_bytes()),
            ("no-key", no_key),
            ("forged", forged),
        ],
    );
    let expect = |id: &str, needle: &str| {
        let (_, ar) = got.iter().find(|(i, _)| i == id).unwrap_or_else(|| panic!("{id} not delivered"));
        assert!(ar.contains(needle), "{id}: expected {needle:?} in {ar:?}");
    };
    expect("dkimpy-rsa", &format!("dkim=pass header.d={RSA_DOMAIN} header.s=s1"));
    expect("dkimpy-ed", &format!("dkim=pass header.d={ED_DOMAIN} header.s=s1"));
    expect("opendkim-rsa", &format!("dkim=pass header.d={RSA_DOMAIN}"));
    expect("opendkim-ed", &format!("dkim=pass header.d={ED_DOMAIN}"));
    expect("body-changed", "dkim=fail");
    expect("header-changed", "dkim=fail");
    expect("no-key", "dkim=permerror");
    expect("forged", "dkim=none");
    let forged = gateway.delivered().into_iter().find(|m| String::from_utf8_lossy(m).contains("<forged@x>")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&forged).matches("Authentication-Results:").count(),
        1,
        "the forged field is removed"
    );

    // The resolver's cache answers while the record's TTL (60 s) lasts, the server gone.
    drop(dns);
    let again = dkimpy_sign(d, &message(RSA_DOMAIN, "cached"), &keys.rsa, RSA_DOMAIN, "s1", "relaxed/relaxed");
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("joe@sender.test", &["suzie@dest.test"], &again).code, 250);
    support::poll_until(|| gateway.delivered().len() == 9, "the message delivered");
    let cached = gateway.delivered().into_iter().find(|m| String::from_utf8_lossy(m).contains("<cached@x>")).unwrap();
    assert!(auth_results(&cached).contains("dkim=pass"), "{}", auth_results(&cached));
}

#[test]
fn a_dns_server_that_never_answers_is_a_temperror_and_the_policy_refuses_or_defers() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::openssl(dir.path());
    let signed =
        dkimpy_sign(dir.path(), &message(RSA_DOMAIN, "silent"), &keys.rsa, RSA_DOMAIN, "s1", "relaxed/relaxed");

    let silent = DnsServer::silent();
    let gateway = gateway(&silent.addr(), "");
    let got = results(&gateway, &[("silent", signed.clone())]);
    assert!(got[0].1.contains("dkim=temperror"), "{got:?}");

    // The policy: a listed domain's mail needs a valid signature.
    let policy = format!("required_domains = \"{RSA_DOMAIN}\"");
    let deferring = self::gateway(&silent.addr(), &policy);
    let mut client = deferring.connect();
    client.hello();
    let reply = client.send_message(&format!("joe@{RSA_DOMAIN}"), &["suzie@dest.test"], &signed);
    assert_eq!((reply.code, reply.text().contains("4.7.5")), (451, true), "{}", reply.text());

    let dns = start_dns(&keys);
    let refusing = self::gateway(&dns.addr(), &policy);
    let mut client = refusing.connect();
    client.hello();
    let reply =
        client.send_message(&format!("joe@{RSA_DOMAIN}"), &["suzie@dest.test"], &message(RSA_DOMAIN, "unsigned"));
    assert_eq!(reply.code, 550, "{}", reply.text());
    assert!(reply.text().contains("5.7.20"), "{}", reply.text());
    assert_eq!(client.send_message(&format!("joe@{RSA_DOMAIN}"), &["suzie@dest.test"], &signed).code, 250);
}

#[test]
fn a_filter_importing_dns_without_the_grant_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let stage = verify_stage("").replace("capabilities = [\"dns\"]\n", "");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[maildir]\npath = \"{}\"\n\n{stage}",
        dir.path().join("mail").display()
    );
    std::fs::write(&path, text).unwrap();
    let (status, output) = run_tool(sluice_bin(), &["check-config", path.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains(&format!(
            "{}:7: stage \"verify\": capabilities: the filter makes DNS lookups (it imports sluice:filter/dns), which this stage is not granted: add capabilities = [\"dns\"] if it should",
            path.display()
        )),
        "{output}"
    );
}

#[test]
fn filter_test_verifies_offline_with_answers_from_a_zone_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::openssl(dir.path());
    let eml = dir.path().join("signed.eml");
    std::fs::write(
        &eml,
        dkimpy_sign(dir.path(), &message(RSA_DOMAIN, "offline"), &keys.rsa, RSA_DOMAIN, "s1", "relaxed/relaxed"),
    )
    .unwrap();
    let zone = dir.path().join("keys.zone");
    std::fs::write(&zone, sluice_dkim::zone_file_entry("s1", RSA_DOMAIN, &keys.rsa.record)).unwrap();
    let wasm = filter_wasm("dkim_verify");
    let args = ["filter-test", &wasm, "--eml", eml.to_str().unwrap(), "--config", "authserv_id=gw.test"];
    let (status, output) = run_tool(sluice_bin(), &[&args[..], &["--zone", zone.to_str().unwrap()]].concat(), None);
    assert!(status.success(), "{output}");
    assert!(
        output.contains(&format!("+ prepend header Authentication-Results: gw.test; dkim=pass header.d={RSA_DOMAIN}")),
        "{output}"
    );

    let (status, output) = run_tool(sluice_bin(), &args, None);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("the filter makes DNS lookups: answer them offline with --zone FILE"), "{output}");

    // Unsigned mail is answered at the header section (accept): no further calls, one field.
    std::fs::write(&eml, message("unsigned.test", "unsigned")).unwrap();
    let (status, output) = run_tool(sluice_bin(), &[&args[..], &["--zone", zone.to_str().unwrap()]].concat(), None);
    assert!(status.success(), "{output}");
    assert_eq!(output.matches("+ prepend header Authentication-Results: gw.test; dkim=none").count(), 1, "{output}");
    assert!(!output.contains("\nend "), "no call after accept:\n{output}");
}
