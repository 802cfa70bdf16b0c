//! The logs an operator reads: one logfmt `message` line per transaction that answers what
//! happened to a message (read back here with a logfmt parser), flow pauses at debug naming the
//! stage that is really behind, and the trace subsystems (`-T smtp`, `-T relay`, `-T filters`)
//! showing the dialogues without body bytes, each line in its session's span.

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;

use support::logfmt::fields_after;
use support::sink::SmtpSink;
use support::{message, wasm_stage, Gateway};

/// The fields of the `count`th transaction line.
fn transaction_line(gateway: &Gateway, count: usize) -> BTreeMap<String, String> {
    let line = gateway.wait_for_log_count("sluice::smtp: message ", count);
    fields_after(&line, "sluice::smtp: message ")
}

fn field<'a>(fields: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    fields.get(key).unwrap_or_else(|| panic!("no {key} in {fields:?}"))
}

/// A refusing filter that acts only on messages with an `X-Refuse` field.
fn refuser() -> String {
    let config = "mode = \"verdict\"\nverdict = \"reject\"\nat = \"end\"\nwhen = \"X-Refuse\"";
    wasm_stage("refuser", "faults", "", config)
}

#[test]
fn each_transaction_has_one_logfmt_line_with_what_an_operator_asks() {
    let sink = SmtpSink::start(&[]);
    let gateway = Gateway::builder().relay_to(sink.port).section(&refuser()).start();
    let mut client = gateway.connect();
    client.hello();

    // Accepted and relayed: the next hop's reply is the client's, with its queue id beside ours.
    let content = message("accepted", 30_000);
    let reply = client.send_message("a@client.test", &["b@dest.test", "c@dest.test"], &content);
    assert_eq!(reply.code, 250, "{}", reply.text());
    let line = transaction_line(&gateway, 1);
    assert!(field(&line, "client").starts_with("127.0.0.1:"), "{line:?}");
    assert_eq!(field(&line, "helo"), "client.test");
    assert_eq!(field(&line, "from"), "a@client.test");
    assert_eq!(field(&line, "rcpts"), "b@dest.test,c@dest.test");
    assert_eq!(field(&line, "rcpt_count"), "2");
    assert_eq!(field(&line, "message_id"), "<accepted@client.test>");
    assert_eq!(field(&line, "size"), content.len().to_string());
    assert_eq!((field(&line, "at"), field(&line, "result")), ("data", "accepted"));
    assert_eq!(field(&line, "reply"), reply.text().replace('\n', " / "));
    assert_eq!(field(&line, "relay_reply"), field(&line, "reply"));
    assert!(!line.contains_key("stage"), "nothing decided but the next hop: {line:?}");
    field(&line, "duration_ms").parse::<u64>().expect("duration in ms");
    let first_id = field(&line, "transaction").to_string();

    // Refused by a stage after the whole content was read: its real size, the stage and why.
    let mut refused = b"X-Refuse: yes\r\n".to_vec();
    refused.extend_from_slice(&message("refused", 300_000));
    let reply = client.send_message("a@client.test", &["b@dest.test"], &refused);
    assert_eq!(reply.code, 550, "{}", reply.text());
    let line = transaction_line(&gateway, 2);
    assert_eq!(field(&line, "size"), refused.len().to_string(), "the size as read, not 0");
    assert_eq!((field(&line, "result"), field(&line, "stage")), ("rejected", "refuser"));
    assert_eq!(field(&line, "reason"), "reject verdict");
    assert_eq!(field(&line, "reply"), "550 5.7.1 faults rejects at end");
    assert!(!line.contains_key("relay_reply"), "{line:?}");
    assert_ne!(field(&line, "transaction"), first_id, "each transaction has its own id");
    client.cmd("QUIT", 221);
}

#[test]
fn a_mail_refused_because_the_next_hop_is_down_has_its_line() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gateway = Gateway::builder().relay_to(closed).start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.cmd("MAIL FROM:<a@client.test>", 451);
    let line = transaction_line(&gateway, 1);
    assert_eq!((field(&line, "at"), field(&line, "result")), ("mail", "tempfailed"));
    assert_eq!(field(&line, "from"), "a@client.test");
    assert_eq!(field(&line, "reply"), reply.text());
    assert_eq!(field(&line, "rcpt_count"), "0");
}

#[test]
fn flow_pauses_are_debug_lines_naming_the_slow_stage_not_the_one_before_it() {
    // Default RUST_LOG aside, `-v` is what shows them.
    let stages = "[[stage]]\nname = \"fast\"\nkind = \"test\"\n\n[[stage]]\nname = \"slow\"\nkind = \"test\"\n[stage.test]\ndelay = \"20ms\"\n";
    let gateway = Gateway::builder().section(stages).logging(&["-v"], None).start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("big", 3_000_000));
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.cmd("QUIT", 221);
    gateway.wait_for_log("session closed");
    let log = gateway.log();
    let pauses: Vec<&str> = log.lines().filter(|l| l.contains("sluice::flow: pause")).collect();
    assert!(!pauses.is_empty(), "a 3 MB message through a slow stage pauses the client:\n{log}");
    let resumes: Vec<&str> = log.lines().filter(|l| l.contains("sluice::flow: resume")).collect();
    assert_eq!(resumes.len(), pauses.len(), "{log}");
    for line in pauses.iter().chain(&resumes) {
        assert!(line.contains(" DEBUG "), "flow lines are debug, not info: {line}");
    }
    for resume in &resumes {
        assert!(resume.contains("stage=slow"), "the pause blamed on the wrong stage: {resume}");
    }
}

/// Runs one message, with `BODY-MARKER` in its body, through a gateway started with `-T what`.
fn traced(what: &str, rust_log: Option<&str>) -> (Gateway, SmtpSink) {
    let sink = SmtpSink::start(&[]);
    let args: Vec<&str> = if what.is_empty() { vec![] } else { vec!["-T", what] };
    let gateway = Gateway::builder()
        .relay_to(sink.port)
        .section("[[stage]]\nname = \"probe\"\nkind = \"test\"\n")
        .logging(&args, rust_log)
        .start();
    let mut client = gateway.connect();
    client.hello();
    let mut content = message("traced", 2_000);
    content.extend_from_slice(b"BODY-MARKER\r\n");
    let reply = client.send_message("a@client.test", &["b@dest.test"], &content);
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.cmd("QUIT", 221);
    gateway.wait_for_log("session closed");
    (gateway, sink)
}

/// The lines of `target` with `message`; each must carry its session's span.
fn lines_of(log: &str, target: &str, message: &str) -> Vec<String> {
    let needle = format!("{target}: {message}");
    let lines: Vec<String> = log.lines().filter(|l| l.contains(&needle)).map(str::to_string).collect();
    for line in &lines {
        assert!(line.contains("session{id="), "a line without its session: {line}");
    }
    lines
}

#[test]
fn trace_smtp_shows_the_dialogue_and_no_body_bytes() {
    let (gateway, _sink) = traced("smtp", None);
    let log = gateway.log();
    let commands = lines_of(&log, "sluice::smtp", "client:");
    let replies = lines_of(&log, "sluice::smtp", "server:");
    for command in ["EHLO client.test", "MAIL FROM:<a@client.test>", "RCPT TO:<b@dest.test>", "DATA", "QUIT"] {
        let want = format!("command=\"{command}\"");
        assert!(commands.iter().any(|l| l.contains(&want)), "no {want} in:\n{log}");
    }
    assert!(replies.iter().any(|l| l.contains("reply=\"354 ")), "{log}");
    assert!(replies.iter().any(|l| l.contains("reply=\"220 ")), "{log}");
    assert!(!log.contains("BODY-MARKER"), "body bytes in the log:\n{log}");
    assert!(!log.contains("sluice::relay"), "-T smtp traces smtp only:\n{log}");
}

#[test]
fn rust_log_for_smtp_alone_keeps_the_session_span() {
    let (gateway, _sink) = traced("", Some("sluice::smtp=trace"));
    let log = gateway.log();
    assert!(!lines_of(&log, "sluice::smtp", "client:").is_empty(), "{log}");
    assert!(!lines_of(&log, "sluice::smtp", "message ").is_empty(), "{log}");
}

#[test]
fn trace_relay_shows_the_next_hop_dialogue() {
    let (gateway, _sink) = traced("relay", None);
    let log = gateway.log();
    let sent = lines_of(&log, "sluice::relay", "to next hop:");
    let heard = lines_of(&log, "sluice::relay", "next hop:");
    for command in ["MAIL FROM:<a@client.test>", "RCPT TO:<b@dest.test>", "DATA"] {
        let want = format!("command=\"{command}");
        assert!(sent.iter().any(|l| l.contains(&want)), "no {want} in:\n{log}");
    }
    assert!(sent.iter().any(|l| l.contains("content and final dot")), "{log}");
    assert!(heard.iter().any(|l| l.contains("reply=\"354 ")), "{log}");
    assert!(!log.contains("BODY-MARKER"), "body bytes in the log:\n{log}");
}

#[test]
fn trace_filters_shows_each_stage_call_and_its_answer() {
    let (gateway, _sink) = traced("filters", None);
    let log = gateway.log();
    let calls = lines_of(&log, "sluice::filters", "call");
    for event in ["connect", "mail", "headers", "body", "end"] {
        let want = format!("event=\"{event}\"");
        let call = calls.iter().find(|l| l.contains(&want)).unwrap_or_else(|| panic!("no {want} call in:\n{log}"));
        assert!(call.contains("stage=probe") && call.contains("answer=\"continue"), "{call}");
    }
    assert!(!log.contains("BODY-MARKER"), "body bytes in the log:\n{log}");
}
