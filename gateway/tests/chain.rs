//! The filter chain end to end with built-in test stages: verdicts at every phase, header and body
//! changes, stage failures under each `on_error` policy, and flow control — including the
//! OpenSMTPD 6.1 "paused on the last chunk" hang as a deterministic regression test.

mod support;

use support::{message, Gateway, SmtpClient};

/// A gateway delivering to its maildir with these `[[stage]]` tables.
fn gateway_with(stages: &str) -> Gateway {
    Gateway::builder().section(stages).start()
}

fn test_stage(name: &str, behaviour: &str) -> String {
    format!("[[stage]]\nname = \"{name}\"\nkind = \"test\"\ntimeout = \"2s\"\n[stage.test]\n{behaviour}\n")
}

fn begin(client: &mut SmtpClient) {
    client.hello();
    client.cmd("MAIL FROM:<a@client.test>", 250);
    client.cmd("RCPT TO:<b@dest.test>", 250);
}

/// Sends DATA with `content`; returns the final reply code.
fn data(client: &mut SmtpClient, content: &[u8]) -> u16 {
    client.cmd("DATA", 354);
    client.send(&support::dot_stuff(content));
    client.send(b".\r\n");
    client.reply().code
}

#[test]
fn envelope_verdicts_answer_the_command() {
    let gateway = gateway_with(&format!(
        "{}{}",
        test_stage("rcpt-policy", "verdict = \"reject\"\nat = \"rcpt\"\nrcpt_contains = \"blocked\"\nreply = \"550 5.7.1 Recipient blocked by policy\""),
        test_stage("sender-policy", "verdict = \"tempfail\"\nat = \"mail\"\nreply = \"451 4.7.1 Greylisted\""),
    ));
    let mut client = gateway.connect();
    client.hello();
    let reply = client.cmd("MAIL FROM:<a@client.test>", 451);
    assert_eq!(reply.text(), "451 4.7.1 Greylisted");
    client.cmd("RCPT TO:<b@dest.test>", 503);
    let (gateway_b, mut other) = {
        let g = gateway_with(&test_stage(
            "rcpt-policy",
            "verdict = \"reject\"\nat = \"rcpt\"\nrcpt_contains = \"blocked\"",
        ));
        let c = g.connect();
        (g, c)
    };
    begin(&mut other);
    let reply = other.cmd("RCPT TO:<blocked@dest.test>", 550);
    assert!(reply.text().contains("5.7.1"), "{}", reply.text());
    other.cmd("RCPT TO:<c@dest.test>", 250);
    assert_eq!(data(&mut other, b"Subject: x\r\n\r\nhi\r\n"), 250);
    let log = gateway_b.wait_for_log("result=\"accepted\"");
    assert!(log.contains("rcpts=\"b@dest.test,c@dest.test\""), "{log}");
}

#[test]
fn content_verdicts_answer_end_of_data_and_the_session_goes_on() {
    for (at, verdict, code) in
        [("headers", "reject", 550), ("body", "tempfail", 451), ("end", "reject", 550), ("body", "discard", 250)]
    {
        let gateway = gateway_with(&test_stage("judge", &format!("verdict = \"{verdict}\"\nat = \"{at}\"")));
        let mut client = gateway.connect();
        begin(&mut client);
        assert_eq!(data(&mut client, &message("judged", 200_000)), code, "{verdict} at {at}");
        client.cmd("NOOP", 250);
        assert!(gateway.delivered().is_empty(), "{verdict} at {at} must not deliver");
        let expected = match verdict {
            "discard" => "discarded",
            "tempfail" => "tempfailed",
            _ => "rejected",
        };
        gateway.wait_for_log(&format!("result=\"{expected}\""));
    }
}

#[test]
fn header_and_body_changes_reach_the_next_hop_and_later_stages_see_them() {
    let gateway = gateway_with(&format!(
        "{}{}",
        test_stage("first", "add_header = \"X-From-First: 1\"\nend_header = \"X-Scanned: clean\"\nappend = \"-- \\r\\nfooter\\r\\n\"\nremove_header = \"X-Secret\""),
        // The second stage removes what the first added: proof it sees the first's output.
        test_stage("second", "remove_header = \"X-From-First\"\nadd_header = \"X-From-Second: 2\""),
    ));
    let mut client = gateway.connect();
    begin(&mut client);
    assert_eq!(data(&mut client, b"Subject: s\r\nX-Secret: hide me\r\n\r\nbody\r\n"), 250);
    assert_eq!(
        gateway.delivered(),
        vec![b"Subject: s\r\nX-From-Second: 2\r\nX-Scanned: clean\r\n\r\nbody\r\n-- \r\nfooter\r\n".to_vec()]
    );
}

#[test]
fn unchanged_messages_pass_the_chain_byte_exact() {
    let gateway = gateway_with(&format!("{}{}", test_stage("one", ""), test_stage("two", "delay = \"1ms\"")));
    let mut client = gateway.connect();
    begin(&mut client);
    let mut content = b"Subject: exact\r\nX-Folded: a\r\n b\r\n\r\n.dot\r\n\xff\xfe 8-bit\r\n".to_vec();
    content.extend_from_slice(&message("exact", 3 << 20));
    assert_eq!(data(&mut client, &content), 250);
    assert!(gateway.delivered() == vec![content], "3 MiB through two stages differs");
}

#[test]
fn failing_stages_follow_their_on_error_policy_and_the_gateway_keeps_serving() {
    let cases = [
        ("fail_at = \"body\"", "tempfail", 451),
        ("fail_at = \"body\"", "reject", 554),
        ("fail_at = \"body\"", "accept", 250),
        ("hang_at = \"headers\"", "tempfail", 451),
        ("panic_at = \"body\"", "tempfail", 451),
        ("panic_at = \"mail\"", "reject", 554),
        ("verdict = \"reject\"\nat = \"end\"\nreply = \"250 2.0.0 not a rejection\"", "tempfail", 451),
    ];
    for (behaviour, policy, code) in cases {
        let stage = format!("[[stage]]\nname = \"flaky\"\nkind = \"test\"\ntimeout = \"1s\"\non_error = \"{policy}\"\n[stage.test]\n{behaviour}\n");
        let gateway = gateway_with(&stage);
        let mut client = gateway.connect();
        client.hello();
        let mail = client.cmd("MAIL FROM:<a@client.test>", if behaviour.contains("mail") { code } else { 250 });
        if behaviour.contains("mail") {
            assert!(mail.text().contains("flaky"), "{}", mail.text());
        } else {
            client.cmd("RCPT TO:<b@dest.test>", 250);
            assert_eq!(data(&mut client, &message("flaky", 100_000)), code, "{behaviour} with on_error = {policy}");
        }
        // The same session and a new one are served normally afterwards.
        client.cmd("RSET", 250);
        let mut next = gateway.connect();
        next.hello();
        next.cmd("QUIT", 221);
        gateway.wait_for_log("stage failed");
        assert_eq!(gateway.delivered().len(), usize::from(code == 250));
    }
}

/// The OpenSMTPD 6.1 hang, driven by events: a stage holds every chunk until the client's end of
/// data has been read, so the bytes stay queued; the final chunk crosses the high watermark and
/// pauses the reader; end-of-data is read from the same input; the stage drains only afterwards.
/// The client must get its reply and the session must go on.
#[test]
fn seed_regression_pause_on_the_final_chunk_is_always_resumed() {
    let gateway = Gateway::builder()
        .section("[flow]\nhigh_watermark = \"100KiB\"\nlow_watermark = \"10KiB\"")
        .section(&test_stage("holder", "hold_until_end_of_data = true"))
        .start();
    let mut client = gateway.connect();
    begin(&mut client);
    // BDAT makes the chunking the client's: the 250 for the first chunk means all of it is queued
    // (held) in the chain, just under the high watermark.
    let head = b"Subject: seed\r\n\r\n";
    let mut first = head.to_vec();
    first.extend(std::iter::repeat_n(b'a', 100 * 1024 - 100 - head.len()));
    first.extend_from_slice(b"\r\n");
    client.send(format!("BDAT {}\r\n", first.len()).as_bytes());
    client.send(&first);
    assert_eq!(client.reply().code, 250);
    // The last chunk, in one small write: it crosses the watermark and carries LAST.
    let last = b"final line crossing the high watermark\r\nand some more to be sure of it\r\n".repeat(2);
    let mut write = format!("BDAT {} LAST\r\n", last.len()).into_bytes();
    write.extend_from_slice(&last);
    client.send(&write);
    assert_eq!(client.reply().code, 250, "the paused session must get its reply");
    // Same session, another message.
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message("after", 50_000)).code, 250);
    client.cmd("QUIT", 221);
    client.expect_closed();
    gateway.wait_for_log("sluice::flow: pause");
    let resume = gateway.wait_for_log("sluice::flow: resume");
    assert!(resume.contains("cause=\"end of message\""), "resumed by end-of-message: {resume}");
    assert!(resume.contains("stage=holder"), "the pause was due to the holder: {resume}");
    let log = gateway.log();
    assert!(!log.contains("flow event rejected"), "{log}");
    let closed = gateway.wait_for_log("session closed");
    assert!(closed.contains("pauses=1 resumes=1"), "{closed}");
    assert_eq!(gateway.delivered().len(), 2);
}

/// The seed's load: ten 256 KiB base64 messages at once through a deliberately slow stage to a
/// real next hop. Everything arrives, the client was paused and resumed, and no connection is
/// left open afterwards (checked in the kernel's socket table).
#[test]
fn seed_load_ten_parallel_256k_messages_through_a_slow_stage() {
    let sink = support::sink::SmtpSink::start(&[]);
    let mut gateway = Gateway::builder()
        .relay_to(sink.port)
        .section("[flow]\nhigh_watermark = \"64KiB\"\nlow_watermark = \"16KiB\"")
        .section(&test_stage("slow", "delay = \"3ms\""))
        .start();
    let (status, output) = support::seed_load(gateway.port());
    assert!(status.success(), "{output}");
    let messages = sink.wait_for_messages(10);
    assert_eq!(messages.len(), 10);
    assert!(messages.iter().all(|m| m.data.len() > 256 * 1024));
    gateway.wait_for_log_count("session closed", 10);
    support::poll_until(|| support::open_tcp_connections(gateway.port()) == 0, "no client connection left");
    let port = gateway.port();
    assert!(gateway.terminate().success());
    // Idle next-hop connections are kept for reuse while the gateway runs; none outlive it.
    support::poll_until(|| support::open_tcp_connections(sink.port) == 0, "no next-hop connection left");
    assert_eq!(support::open_tcp_connections(port), 0);
    let stopped = gateway.wait_for_log("stopped");
    let count = |key: &str| -> u64 {
        let field = stopped.split_whitespace().find(|f| f.starts_with(key)).expect(key);
        field[key.len()..].parse().unwrap()
    };
    let (pauses, resumes) = (count("flow_pauses="), count("flow_resumes="));
    assert!(pauses > 0, "the slow stage should have paused clients: {stopped}");
    assert_eq!(pauses, resumes, "{stopped}");
}
