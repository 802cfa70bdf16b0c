//! Never an open relay, end to end: an untrusted client reaches only `relay_domains` (550 5.7.1
//! at RCPT for anything else, and the next hop never hears of that recipient), a trusted one any
//! domain; the embedded default trusts loopback; a reload changes the domains for new sessions;
//! `check-config` and `serve` refuse a config that would make an open relay or expose the admin
//! API without a token. 127.0.0.1 is the untrusted client, 127.0.0.2 the trusted one.

mod support;

use std::path::{Path, PathBuf};

use support::sink::SmtpSink;
use support::{check_config, http, line_of, message, run_tool, sluice_bin, Gateway, GatewayBuilder, SmtpClient};

const POLICY: &str = "[policy]\ntrusted_networks = [\"127.0.0.2/32\"]\nrelay_domains = [\"relay.test\"]";

fn swaks(gateway: &Gateway, to: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--server", &gateway.address, "--from", "a@client.test", "--to", to, "--helo", "client.test"];
    args.extend_from_slice(&["--timeout", "30"]);
    args.extend_from_slice(extra);
    let (status, output) = run_tool("swaks", &args, None);
    (status.success(), output)
}

#[test]
fn untrusted_clients_reach_only_relay_domains_and_trusted_ones_any_domain() {
    let sink = SmtpSink::start(&[]);
    let gateway = Gateway::builder().relay_to(sink.port).section(POLICY).start();

    let (ok, output) = swaks(&gateway, "x@other.test", &[]);
    assert!(!ok, "{output}");
    assert!(output.contains("<** 550 5.7.1 <x@other.test>: Relay access denied"), "{output}");
    let line = gateway.wait_for_log("relay access denied");
    assert!(line.contains("client=127.0.0.1 rcpt=\"x@other.test\" reason=\"not_a_relay_domain\""), "{line}");

    // In one transaction: the refused recipient never reaches the next hop (smtp-sink accepts
    // every RCPT it is sent and lists it), the relay domain's does.
    let mut client = gateway.connect();
    client.hello();
    client.cmd("MAIL FROM:<a@client.test>", 250);
    let reply = client.cmd("RCPT TO:<x@Other.Test>", 550);
    assert_eq!(reply.text(), "550 5.7.1 <x@Other.Test>: Relay access denied");
    let reply = client.cmd("RCPT TO:<\"x@other.test\"@relay.test>", 550);
    assert_eq!(reply.text(), "550 5.7.1 <\"x@other.test\"@relay.test>: Relay access denied");
    client.cmd("RCPT TO:<postmaster>", 550);
    client.cmd("RCPT TO:<x@[127.0.0.1]>", 550);
    client.cmd("RCPT TO:<y@RELAY.test>", 250);
    client.cmd("DATA", 354);
    client.send(&message("mixed", 100));
    assert_eq!(client.cmd(".", 250).code, 250);
    client.cmd("QUIT", 221);
    let messages = sink.wait_for_messages(1);
    assert_eq!(messages[0].rcpt_to, ["y@RELAY.test"]);

    let (ok, output) = swaks(&gateway, "x@relay.test", &[]);
    assert!(ok, "{output}");
    let (ok, output) = swaks(&gateway, "x@other.test", &["--local-interface", "127.0.0.2"]);
    assert!(ok, "{output}");
    let messages = sink.wait_for_messages(3);
    let rcpts: Vec<&[String]> = messages.iter().map(|m| m.rcpt_to.as_slice()).collect();
    assert_eq!(rcpts.len(), 3, "{rcpts:?}");
    assert!(rcpts.contains(&["x@relay.test".to_string()].as_slice()), "{rcpts:?}");
    assert!(rcpts.contains(&["x@other.test".to_string()].as_slice()), "{rcpts:?}");
    // Only the trusted client's transaction carried x@other.test.
    let log = gateway.log();
    assert_eq!(log.matches("relay access denied").count(), 5, "{log}");
}

#[test]
fn smtplib_sees_the_refusal_as_a_refused_recipient() {
    let gateway = Gateway::builder().section(POLICY).start();
    let script = r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
with smtplib.SMTP(host, int(port), timeout=30) as smtp:
    try:
        smtp.sendmail("a@client.test", ["x@other.test"], b"Subject: t\r\n\r\nbody\r\n")
    except smtplib.SMTPRecipientsRefused as refused:
        code, text = refused.recipients["x@other.test"]
        print(code, text.decode())
"#;
    let (status, output) = support::python(script, &[&gateway.address]);
    assert!(status.success(), "{output}");
    assert_eq!(output.trim(), "550 5.7.1 <x@other.test>: Relay access denied");
    assert!(gateway.delivered().is_empty());
}

#[test]
fn without_a_policy_section_loopback_clients_may_send_anywhere() {
    let gateway = Gateway::start();
    for source in ["127.0.0.1", "127.0.0.2"] {
        let mut client = SmtpClient::connect_from(&gateway.address, source);
        client.hello();
        let reply = client.send_message("a@client.test", &["x@anywhere.test"], &message(source, 100));
        assert_eq!(reply.code, 250, "{}", reply.text());
    }
    assert_eq!(gateway.delivered().len(), 2);
    assert!(!gateway.log().contains("relay access denied"));
}

#[test]
fn a_reload_changes_the_relay_domains_for_new_sessions() {
    let gateway = GatewayBuilder::default().section(POLICY).section("[admin]\nlisten = \"127.0.0.1:0\"").start();
    let mut before = gateway.connect();
    before.hello();
    before.cmd("MAIL FROM:<a@client.test>", 250);
    before.cmd("RCPT TO:<x@later.test>", 550);

    let path = gateway.dir.path().join("sluice.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("[\"relay.test\"]", "[\"relay.test\", \".later.test\", \"later.test\"]"))
        .unwrap();
    let (status, body) = http(&gateway.admin_address(), "POST", "/reload", None);
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["applied"], serde_json::json!(["policy.relay_domains"]), "{report:#}");

    let mut after = gateway.connect();
    after.hello();
    let reply = after.send_message("a@client.test", &["x@later.test", "y@mx.later.test"], &message("after", 100));
    assert_eq!(reply.code, 250, "{}", reply.text());
    // The session opened before keeps the generation it started with.
    before.cmd("RCPT TO:<x@later.test>", 550);
    before.cmd("RCPT TO:<x@relay.test>", 250);
}

/// Writes `text` as `sluice.toml` in `dir` (its maildir inside it); returns the path.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, format!("{text}\n[maildir]\npath = \"{}\"\n", dir.join("mail").display())).unwrap();
    path
}

#[test]
fn check_config_and_serve_refuse_an_open_relay_unless_it_is_written_out() {
    let dir = tempfile::tempdir().unwrap();
    let open = "[server]\nlisten = [\"0.0.0.0:25\"]\n\n[policy]\nrelay_domains = [\"relay.test\"]\ntrusted_networks = [\"192.0.2.0/24\", \"0.0.0.0/0\"]\n";
    let path = write_config(dir.path(), open);
    let (code, output) = check_config(&path);
    assert_eq!(code, Some(1), "{output}");
    let expected = format!(
        "sluice: {}:{}: policy.trusted_networks: trusts every IPv4 address (0.0.0.0/0) and Sluice listens on \
         0.0.0.0:25, which is not loopback: Sluice would be an open relay, passing anyone's mail to any domain. \
         List only your own clients' networks (e.g. \"192.0.2.0/24\") and put the domains you receive mail for \
         in relay_domains; or, if it is meant (say, a private network whose firewall does the relay control), \
         write allow_open_relay = true in [policy]",
        path.display(),
        line_of(&path, "trusted_networks")
    );
    assert_eq!(output.trim_end(), expected);

    // serve runs the same check before it binds (192.0.2.1 is not even this machine's).
    let path = write_config(dir.path(), &open.replace("0.0.0.0:25", "192.0.2.1:2525"));
    let (status, output) = run_tool(sluice_bin(), &["serve", "-d", "--config", path.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("policy.trusted_networks: trusts every IPv4 address (0.0.0.0/0) and Sluice listens on 192.0.2.1:2525, which is not loopback"), "{output}");
    assert!(!output.contains("listening"), "{output}");

    let path = write_config(dir.path(), &format!("{open}allow_open_relay = true\n"));
    let (code, output) = check_config(&path);
    assert_eq!(code, Some(0), "{output}");
    // On loopback the same networks open nothing.
    let path = write_config(dir.path(), &open.replace("0.0.0.0:25", "127.0.0.1:25"));
    let (code, output) = check_config(&path);
    assert_eq!(code, Some(0), "{output}");
}

#[test]
fn check_config_refuses_an_admin_api_off_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[server]\nlisten = [\"127.0.0.1:2525\"]\n\n[admin]\nlisten = \"0.0.0.0:8025\"\n";
    let path = write_config(dir.path(), text);
    let (code, output) = check_config(&path);
    assert_eq!(code, Some(1), "{output}");
    let expected = format!(
        "sluice: {}:5: admin.listen: 0.0.0.0:8025 is not a loopback address and [admin] has no token_file, so \
         anyone who reaches it could reload the config, switch tracing on and list the sessions; set token_file \
         to a file holding a secret token, or listen on 127.0.0.1",
        path.display()
    );
    assert_eq!(output.trim_end(), expected);

    std::fs::write(dir.path().join("token"), "secret\n").unwrap();
    let path = write_config(dir.path(), &format!("{text}token_file = \"token\"\n"));
    let (code, output) = check_config(&path);
    assert_eq!(code, Some(0), "{output}");
}
