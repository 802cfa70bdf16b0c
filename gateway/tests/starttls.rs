//! Inbound STARTTLS end to end, with real clients: swaks and `openssl s_client -starttls smtp`
//! deliver over TLS and verify the certificate; Python's ssl module checks that commands
//! pipelined after STARTTLS are never executed (CVE-2011-0411); `require_tls`; a bad or stalled
//! handshake ends that session only; `/sessions` and the logs show version and cipher; a reload
//! re-reads the certificate.

mod support;

use std::path::Path;

use support::certs::Certs;
use support::{http, python, run_tool, Gateway, GatewayBuilder, SmtpClient};

fn tls_section(certs: &Certs) -> String {
    format!("[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"", certs.cert.display(), certs.key.display())
}

fn with_tls(certs: &Certs) -> GatewayBuilder {
    Gateway::builder().section(&tls_section(certs)).section("[admin]\nlisten = \"127.0.0.1:0\"")
}

fn swaks_tls(gateway: &Gateway, ca: &Path, extra: &[&str]) -> (bool, String) {
    let server = gateway.address.clone();
    let ca = ca.display().to_string();
    let mut args = vec![
        "--server",
        &server,
        "--from",
        "a@client.test",
        "--to",
        "b@dest.test",
        "--helo",
        "client.test",
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        &ca,
        "--timeout",
        "30",
    ];
    args.extend_from_slice(extra);
    let (status, output) = run_tool("swaks", &args, None);
    (status.success(), output)
}

#[test]
fn swaks_delivers_over_starttls_and_the_logs_say_how() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(certs_dir.path(), "gw", "gw.test");
    let gateway = with_tls(&certs).start();
    let (ok, output) = swaks_tls(&gateway, &certs.ca, &[]);
    assert!(ok, "{output}");
    assert!(output.contains("<-  220 2.0.0 Ready to start TLS"), "{output}");
    assert!(output.contains("=== TLS started with cipher TLSv1.3"), "{output}");
    let established = gateway.wait_for_log("TLS established");
    assert!(established.contains("version=TLSv1.3 cipher=TLS13_"), "{established}");
    let line = gateway.wait_for_log(" message ");
    assert!(line.contains("tls=\"TLSv1.3\""), "{line}");
    assert!(line.contains("result=\"accepted\""), "{line}");
    assert_eq!(gateway.delivered().len(), 1);
}

#[test]
fn openssl_s_client_negotiates_tls_1_2_and_1_3_and_nothing_older() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(certs_dir.path(), "gw", "gw.test");
    let gateway = with_tls(&certs).start();
    let ca = certs.ca.display().to_string();
    let connect = gateway.address.clone();
    for (version, shown) in [("-tls1_3", "Protocol version: TLSv1.3"), ("-tls1_2", "Protocol version: TLSv1.2")] {
        let args = [
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &connect,
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-brief",
            "-ign_eof",
            version,
        ];
        let (status, output) = run_tool("openssl", &args, Some(b"EHLO c.test\r\nQUIT\r\n"));
        assert!(status.success(), "{version}: {output}");
        assert!(output.contains("Verification: OK"), "{output}");
        assert!(output.contains(shown), "{output}");
        // After the handshake the session starts over: the EHLO reply no longer offers STARTTLS.
        let (_, after_tls) = output.split_once("250-gw.test Hello c.test").expect("the EHLO reply over TLS");
        let ehlo = after_tls.split("221 ").next().unwrap();
        assert!(ehlo.trim_end().ends_with("250 CHUNKING") && !ehlo.contains("STARTTLS"), "{output}");
    }
    gateway.wait_for_log_count("TLS established", 2);
    // TLS 1.1 (allowed on the client side by security level 0) is refused by the server.
    let args =
        ["s_client", "-starttls", "smtp", "-connect", &connect, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-brief"];
    let (status, output) = run_tool("openssl", &args, Some(b"QUIT\r\n"));
    assert!(!status.success(), "{output}");
    let failed = gateway.wait_for_log("TLS handshake failed");
    assert!(failed.contains("peer is incompatible") || failed.contains("Protocol"), "{failed}");
    let (_, metrics) = http(&gateway.admin_address(), "GET", "/metrics", None);
    assert!(metrics.contains("sluice_tls_handshakes_total{result=\"ok\"} 2"), "{metrics}");
    assert!(metrics.contains("sluice_tls_handshakes_total{result=\"failed\"} 1"), "{metrics}");
}

/// The client sends STARTTLS and, in the same packet, MAIL and RCPT; then it completes the
/// handshake. Those commands must not have been executed: no reply to them arrives, and the
/// session over TLS starts over (RCPT needs EHLO first).
const INJECTION: &str = r#"
import socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
sock = socket.create_connection((host, int(port)), timeout=30)
f = sock.makefile("rb")
def reply(stream):
    lines = []
    while True:
        line = stream.readline()
        if not line:
            raise SystemExit("connection closed; replies so far: %r" % lines)
        lines.append(line.decode().rstrip())
        if line[3:4] == b" ":
            return lines
print(reply(f))
sock.sendall(b"EHLO client.test\r\n")
print(reply(f))
sock.sendall(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@dest.test>\r\n")
print(reply(f))
context = ssl.create_default_context(cafile=sys.argv[2])
context.check_hostname = False
tls = context.wrap_socket(sock, server_hostname="localhost")
t = tls.makefile("rb")
tls.sendall(b"RCPT TO:<victim@dest.test>\r\n")
print("after-tls", reply(t))
tls.sendall(b"EHLO client.test\r\n")
print("ehlo", reply(t))
tls.sendall(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@dest.test>\r\nQUIT\r\n")
print("mail", reply(t), reply(t), reply(t))
"#;

#[test]
fn commands_pipelined_with_starttls_are_never_executed() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(certs_dir.path(), "gw", "gw.test");
    let gateway = with_tls(&certs).start();
    let (status, output) = python(INJECTION, &[&gateway.address, &certs.ca.display().to_string()]);
    assert!(status.success(), "{output}");
    assert!(output.contains("['220 2.0.0 Ready to start TLS']"), "{output}");
    // The first reply over TLS is to the RCPT sent over TLS: nothing answers the injected ones.
    assert!(output.contains("after-tls ['503 5.5.1 Error: send HELO/EHLO first']"), "{output}");
    assert!(output.contains("mail ['250 2.1.0 Ok'] ['250 2.1.5 Ok'] ['221 2.0.0 Bye']"), "{output}");
    let discarded = gateway.wait_for_log("discarded input pipelined after STARTTLS");
    let injected = "MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@dest.test>\r\n".len();
    assert!(discarded.contains(&format!("bytes={injected}")), "{discarded}");
    assert!(!gateway.log().contains("evil@attacker.test"), "{}", gateway.log());
}

#[test]
fn require_tls_refuses_mail_in_plain_text() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(certs_dir.path(), "gw", "gw.test");
    let gateway = with_tls(&certs).server("require_tls = true").start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.cmd("MAIL FROM:<a@client.test>", 530);
    assert_eq!(reply.text(), "530 5.7.0 Must issue a STARTTLS command first");
    client.cmd("QUIT", 221);
    let (ok, output) = swaks_tls(&gateway, &certs.ca, &[]);
    assert!(ok, "{output}");
    assert_eq!(gateway.delivered().len(), 1);
    // Without [tls], require_tls is a config error naming the key.
    let (dir, path) = Gateway::builder().server("require_tls = true").write_config();
    let (status, output) = run_tool(support::sluice_bin(), &["check-config", path.to_str().unwrap()], None);
    assert!(!status.success());
    assert!(output.contains("server.require_tls"), "{output}");
    assert!(output.contains("add a [tls] section with cert_file and key_file"), "{output}");
    drop(dir);
}

#[test]
fn a_bad_or_stalled_handshake_ends_only_that_session() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(certs_dir.path(), "gw", "gw.test");
    let gateway = with_tls(&certs).server("command_timeout = \"2s\"").start();
    // Plain text where the ClientHello should be.
    let mut garbage = gateway.connect();
    garbage.hello();
    garbage.cmd("STARTTLS", 220);
    garbage.send(b"EHLO not-tls\r\n");
    garbage.expect_closed();
    gateway.wait_for_log("TLS handshake failed");
    // Nothing after the 220: the handshake's timer ends it.
    let mut stalled = gateway.connect();
    stalled.hello();
    stalled.cmd("STARTTLS", 220);
    stalled.expect_closed();
    gateway.wait_for_log("TLS handshake timed out");
    // Others are served throughout.
    let (ok, output) = swaks_tls(&gateway, &certs.ca, &[]);
    assert!(ok, "{output}");
}

#[test]
fn sessions_show_tls_and_a_reload_rereads_the_certificate() {
    let certs_dir = tempfile::tempdir().unwrap();
    let first = Certs::make(certs_dir.path(), "first", "gw.test");
    let second = Certs::make(certs_dir.path(), "second", "gw.test");
    // The config names one pair of files; the test replaces their contents.
    let cert = certs_dir.path().join("live.pem");
    let key = certs_dir.path().join("live.key");
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let live = Certs { ca: first.ca.clone(), cert: cert.clone(), key: key.clone() };
    let gateway = with_tls(&live).start();
    let admin = gateway.admin_address();

    // A session held open after the handshake is listed with its version and cipher.
    let mut held = SmtpClient::connect(&gateway.address);
    held.hello();
    held.cmd("STARTTLS", 220);
    let holder = std::thread::spawn({
        let mut stream = held.writer();
        let ca = first.ca.clone();
        move || hold_tls(&mut stream, &ca)
    });
    gateway.wait_for_log("TLS established");
    let (_, body) = http(&admin, "GET", "/sessions", None);
    let sessions: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tls = &sessions.as_array().unwrap()[0]["tls"];
    assert_eq!(tls["version"], "TLSv1.3", "{body}");
    assert!(tls["cipher"].as_str().unwrap().starts_with("TLS13_"), "{body}");
    holder.join().unwrap();

    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    let (status, body) = http(&admin, "POST", "/reload", None);
    assert_eq!(status, 200, "{body}");
    let (ok, output) = swaks_tls(&gateway, &second.ca, &[]);
    assert!(ok, "the new certificate is served after the reload: {output}");
    let (ok, output) = swaks_tls(&gateway, &first.ca, &[]);
    assert!(!ok, "the old certificate is not: {output}");
}

/// Completes the handshake on a socket already past STARTTLS's 220 with rustls, sends EHLO,
/// reads its reply and holds the session until the test has looked at `/sessions`.
fn hold_tls(stream: &mut std::net::TcpStream, ca: &Path) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, stream);
    tls.write_all(b"EHLO held.test\r\n").unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"250 CHUNKING\r\n") {
        tls.read_exact(&mut byte).unwrap();
        reply.push(byte[0]);
    }
}

#[test]
fn unusable_certificate_files_are_config_errors_naming_the_key() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(certs_dir.path(), "gw", "gw.test");
    let other = Certs::make(certs_dir.path(), "other", "gw.test");
    let not_pem = certs_dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = certs_dir.path().join("missing.pem");
    let cases = [
        (missing.clone(), certs.key.clone(), "tls.cert_file", "missing.pem"),
        (not_pem.clone(), certs.key.clone(), "tls.cert_file", "holds no certificate"),
        (certs.cert.clone(), not_pem.clone(), "tls.key_file", "cannot read a PEM private key"),
        (certs.cert.clone(), other.key.clone(), "tls.key_file", "does not fit the certificate"),
    ];
    for (cert, key, named, says) in cases {
        let pair = Certs { ca: certs.ca.clone(), cert, key };
        let (dir, path) = Gateway::builder().section(&tls_section(&pair)).write_config();
        let (status, output) = run_tool(support::sluice_bin(), &["check-config", path.to_str().unwrap()], None);
        assert!(!status.success(), "{output}");
        assert!(output.contains("sluice.toml:") && output.contains(named), "{named}: {output}");
        assert!(output.contains(says), "{named}: {output}");
        // serve refuses it the same way, before binding.
        let (status, serve_output) =
            run_tool(support::sluice_bin(), &["serve", "--config", path.to_str().unwrap()], None);
        assert!(!status.success(), "{serve_output}");
        assert!(serve_output.contains(says), "{serve_output}");
        drop(dir);
    }
}
