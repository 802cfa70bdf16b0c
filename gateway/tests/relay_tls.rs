//! STARTTLS to the next hop, against a real Postfix with its own certificate: `required` with
//! the hop's CA (by IP address and by name) and `opportunistic` deliver over TLS; `required`
//! against a hop without STARTTLS, with a CA that did not sign its certificate, or with a name
//! the certificate does not carry gets 451 4.7.5 and the hop no MAIL; an unreadable `ca_file`
//! stops `serve` before it listens.

mod support;

use std::path::Path;

use support::certs::Certs;
use support::postfix::{tls_settings, PostfixNextHop};
use support::{run_tool, sluice_bin, Gateway};

/// A gateway relaying to `port` with these extra `[relay]` lines.
fn gateway(port: u16, relay: &str) -> Gateway {
    Gateway::builder()
        .section(&format!(
            "[relay]\naddress = \"127.0.0.1:{port}\"\ncommand_timeout = \"20s\"\nconnect_timeout = \"5s\"\n{relay}"
        ))
        .start()
}

fn required_with(ca: &Path) -> String {
    format!("tls = \"required\"\nca_file = \"{}\"", ca.display())
}

/// Postfix's line for the end of Sluice's session counts each command it got: `disconnect from
/// … ehlo=1 starttls=1 …` (the start-up probe's line has no EHLO).
fn hop_session_summary(hop: &PostfixNextHop) -> String {
    hop.wait_for_log(" ehlo=")
}

fn assert_refused_and_nothing_sent(gateway: &Gateway, hop: &PostfixNextHop) -> String {
    let mut client = gateway.connect();
    client.hello();
    let reply = client.cmd("MAIL FROM:<a@client.test>", 451);
    assert!(reply.text().contains("4.7.5"), "{}", reply.text());
    client.cmd("QUIT", 221);
    let summary = hop_session_summary(hop);
    assert!(summary.contains("ehlo=1"), "{summary}");
    assert!(!summary.contains("mail="), "the hop got MAIL: {summary}");
    reply.text()
}

#[test]
fn required_with_the_hops_ca_delivers_over_tls_and_keeps_the_connection_secured() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path(), "hop", "localhost");
    let hop = PostfixNextHop::start_with(&tls_settings(&certs));
    // Checked against the IP address of `address`: the certificate carries 127.0.0.1.
    let gateway = gateway(hop.port, &required_with(&certs.ca));
    let mut client = gateway.connect();
    client.hello();
    for subject in ["first", "second"] {
        let content = format!("Subject: {subject}\r\n\r\nover TLS\r\n");
        let reply = client.send_message("a@client.test", &["b@dest.test"], content.as_bytes());
        assert_eq!(reply.code, 250, "{}", reply.text());
    }
    client.cmd("QUIT", 221);
    let messages = hop.wait_for_messages(2);
    for message in &messages {
        let text = String::from_utf8_lossy(message);
        assert!(text.contains("with ESMTPS"), "{text}");
    }
    let line = hop.wait_for_log("TLS connection established from");
    assert!(line.contains("TLSv1.3") || line.contains("TLSv1.2"), "{line}");
    // Both transactions went over the one secured connection.
    assert_eq!(hop.log().matches("TLS connection established from").count(), 1, "{}", hop.log());
    let connected = gateway.wait_for_log("connected to next hop");
    assert!(connected.contains("with cipher"), "{connected}");
}

#[test]
fn required_checks_the_configured_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path(), "hop", "mx.hop.test");
    let hop = PostfixNextHop::start_with(&tls_settings(&certs));
    let named = gateway(hop.port, &format!("{}\nserver_name = \"mx.hop.test\"", required_with(&certs.ca)));
    let mut client = named.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], b"Subject: named\r\n\r\nx\r\n");
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.cmd("QUIT", 221);
    hop.wait_for_messages(1);
    drop(named);
    let wrong = gateway(hop.port, &format!("{}\nserver_name = \"other.test\"", required_with(&certs.ca)));
    let mut client = wrong.connect();
    client.hello();
    let reply = client.cmd("MAIL FROM:<a@client.test>", 451);
    assert!(reply.text().contains("4.7.5"), "{}", reply.text());
    let why = wrong.wait_for_log("next hop not secured");
    assert!(why.contains("certificate"), "{why}");
    client.cmd("QUIT", 221);
    assert_eq!(hop.messages().len(), 1, "nothing more was delivered");
}

#[test]
fn opportunistic_without_a_ca_file_encrypts() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path(), "hop", "localhost");
    let hop = PostfixNextHop::start_with(&tls_settings(&certs));
    // The default: tls = "opportunistic".
    let gateway = gateway(hop.port, "");
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], b"Subject: may\r\n\r\nencrypted\r\n");
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.cmd("QUIT", 221);
    let message = String::from_utf8_lossy(&hop.wait_for_messages(1)[0]).into_owned();
    assert!(message.contains("with ESMTPS"), "{message}");
    hop.wait_for_log("TLS connection established from");
}

#[test]
fn opportunistic_falls_back_to_plain_text_when_the_handshake_fails() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path(), "hop", "localhost");
    // Postfix offers STARTTLS but speaks only TLS 1.0 and 1.1, which rustls refuses.
    let old_tls_only = format!("{}smtpd_tls_protocols = !TLSv1.2, !TLSv1.3\n", tls_settings(&certs));
    let hop = PostfixNextHop::start_with(&old_tls_only);
    let gateway = gateway(hop.port, "");
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], b"Subject: fallback\r\n\r\nplain\r\n");
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.cmd("QUIT", 221);
    let message = String::from_utf8_lossy(&hop.wait_for_messages(1)[0]).into_owned();
    assert!(message.contains("with ESMTP id") && !message.contains("ESMTPS"), "{message}");
    let line = gateway.wait_for_log("TLS handshake with the next hop failed; delivering in plain text");
    assert!(line.contains("tls = opportunistic"), "{line}");
    // With `required` the same hop gets nothing.
    let strict = self::gateway(hop.port, &required_with(&certs.ca));
    let mut client = strict.connect();
    client.hello();
    let reply = client.cmd("MAIL FROM:<a@client.test>", 451);
    assert!(reply.text().contains("4.7.5"), "{}", reply.text());
    assert_eq!(hop.messages().len(), 1);
}

#[test]
fn opportunistic_without_starttls_is_plain_text() {
    let hop = PostfixNextHop::start();
    let gateway = gateway(hop.port, "");
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], b"Subject: plain\r\n\r\nplain\r\n");
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.cmd("QUIT", 221);
    let message = String::from_utf8_lossy(&hop.wait_for_messages(1)[0]).into_owned();
    assert!(message.contains("with ESMTP id") && !message.contains("ESMTPS"), "{message}");
}

#[test]
fn required_against_a_hop_without_starttls_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path(), "hop", "localhost");
    let hop = PostfixNextHop::start();
    let gateway = gateway(hop.port, &required_with(&certs.ca));
    let text = assert_refused_and_nothing_sent(&gateway, &hop);
    assert!(text.contains("offers no STARTTLS"), "{text}");
    assert!(hop.messages().is_empty());
}

#[test]
fn required_with_a_ca_that_did_not_sign_the_hops_certificate_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hop_certs = Certs::make(dir.path(), "hop", "localhost");
    let other = Certs::make(dir.path(), "other", "localhost");
    let hop = PostfixNextHop::start_with(&tls_settings(&hop_certs));
    let gateway = gateway(hop.port, &required_with(&other.ca));
    assert_refused_and_nothing_sent(&gateway, &hop);
    let why = gateway.wait_for_log("next hop not secured");
    assert!(why.contains("certificate"), "{why}");
    // Tried, and refused by us: Postfix counts the STARTTLS as failed.
    assert!(hop_session_summary(&hop).contains("starttls=0/1"), "{}", hop.log());
    assert!(hop.messages().is_empty());
}

#[test]
fn an_unreadable_ca_file_stops_serve_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let (_config_dir, path) = Gateway::builder()
        .section(&format!("[relay]\naddress = \"127.0.0.1:1\"\n{}", required_with(&missing)))
        .write_config();
    let (status, output) = run_tool(sluice_bin(), &["serve", "-d", "--config", path.to_str().unwrap()], None);
    assert!(!status.success(), "{output}");
    assert!(output.contains("relay.ca_file: ") && output.contains("does not exist"), "{output}");
    assert!(output.contains(&missing.display().to_string()), "{output}");
    assert!(!output.contains("listening"), "{output}");
    // check-config finds it too, and a file that holds no certificate.
    let (status, output) = run_tool(sluice_bin(), &["check-config", path.to_str().unwrap()], None);
    assert!(!status.success(), "{output}");
    assert!(output.contains("relay.ca_file") && output.contains("missing-ca.pem"), "{output}");
    std::fs::write(&missing, "not a certificate\n").unwrap();
    let (status, output) = run_tool(sluice_bin(), &["check-config", path.to_str().unwrap()], None);
    assert!(!status.success(), "{output}");
    assert!(output.contains("relay.ca_file"), "{output}");
}
