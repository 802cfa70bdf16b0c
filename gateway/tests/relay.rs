//! The in-line relay end to end, with Postfix's smtp-sink (and smtp-source as a load client) as
//! the next hop: byte-exact content, envelope and per-recipient answers passed back, next hop
//! down or slow, and large messages.

mod support;

use std::net::TcpListener;

use support::sink::SmtpSink;
use support::{message, run_tool, Gateway};

fn gateway_to(sink: &SmtpSink) -> Gateway {
    Gateway::builder().relay_to(sink.port).start()
}

#[test]
fn relayed_content_and_envelope_are_exact() {
    let sink = SmtpSink::start(&[]);
    let gateway = gateway_to(&sink);
    let mut client = gateway.connect();
    client.hello();
    let content = b"Subject: relay\r\n\r\n.starts with a dot\r\n.\r\n..\r\n\xe2\x82\xac 8-bit\r\n\r\nend\r\n";
    client.cmd("MAIL FROM:<a@client.test> BODY=8BITMIME", 250);
    client.cmd("RCPT TO:<b@dest.test>", 250);
    client.cmd("RCPT TO:<c@dest.test>", 250);
    client.cmd("DATA", 354);
    client.send(&support::dot_stuff(content));
    client.send(b".\r\n");
    let reply = client.reply();
    assert_eq!(reply.code, 250, "{}", reply.text());
    let messages = sink.wait_for_messages(1);
    assert_eq!(messages[0].mail_from, "a@client.test");
    assert!(messages[0].mail_params.contains(&"BODY=8BITMIME".to_string()), "{:?}", messages[0].mail_params);
    assert_eq!(messages[0].rcpt_to, vec!["b@dest.test", "c@dest.test"]);
    assert_eq!(messages[0].data, content);
    let line = gateway.wait_for_log("result=\"accepted\"");
    assert!(line.contains("rcpts=\"b@dest.test,c@dest.test\""), "{line}");
}

#[test]
fn next_hop_recipient_refusals_pass_back_per_recipient() {
    // smtp-sink refuses every RCPT with 4xx here; the client sees exactly that answer.
    let sink = SmtpSink::start(&["-r", "rcpt"]);
    let gateway = gateway_to(&sink);
    let mut client = gateway.connect();
    client.hello();
    client.cmd("MAIL FROM:<a@client.test>", 250);
    let reply = client.cmd("RCPT TO:<b@dest.test>", 450);
    assert!(reply.text().starts_with("450"), "{}", reply.text());
    client.cmd("DATA", 554);
    client.cmd("QUIT", 221);
}

#[test]
fn next_hop_hard_refusal_of_content_passes_back() {
    let sink = SmtpSink::start(&["-f", "."]);
    let gateway = gateway_to(&sink);
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("refused", 5000));
    assert!((500..600).contains(&reply.code), "{}", reply.text());
    // The session and the next-hop connection stay usable.
    client.cmd("NOOP", 250);
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("again", 5000));
    assert!((500..600).contains(&reply.code), "{}", reply.text());
    gateway.wait_for_log_count("result=\"rejected\"", 2);
}

#[test]
fn next_hop_down_is_451() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let gateway = Gateway::builder().relay_to(port).start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.cmd("MAIL FROM:<a@client.test>", 451);
    assert!(reply.text().contains("4.4.1"), "{}", reply.text());
    client.cmd("QUIT", 221);
}

#[test]
fn next_hop_timing_out_is_451_and_nothing_is_claimed() {
    // smtp-sink delays its answer to the final dot by 30 s; our relay waits 2 s.
    let sink = SmtpSink::start(&["-W", ".:30"]);
    let gateway = Gateway::builder()
        .section(&format!("[relay]\naddress = \"127.0.0.1:{}\"\ncommand_timeout = \"2s\"", sink.port))
        .start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("slow", 2000));
    assert_eq!(reply.code, 451, "{}", reply.text());
    assert!(reply.text().contains("4.4.1"), "{}", reply.text());
    gateway.wait_for_log("timed out waiting for end of data");
    // A new transaction opens a fresh next-hop connection.
    client.cmd("MAIL FROM:<a@client.test>", 250);
}

#[test]
fn twenty_mebibyte_message_relays_byte_exact() {
    let sink = SmtpSink::start(&[]);
    let gateway = gateway_to(&sink);
    let mut client = gateway.connect();
    client.hello();
    let content = message("big", 20 << 20);
    let reply = client.send_message("a@client.test", &["b@dest.test"], &content);
    assert_eq!(reply.code, 250, "{}", reply.text());
    let messages = sink.wait_for_messages(1);
    assert_eq!(messages[0].data.len(), content.len());
    assert!(messages[0].data == content, "20 MiB content differs");
}

#[test]
fn smtp_source_load_all_delivered() {
    let sink = SmtpSink::start(&[]);
    let gateway = gateway_to(&sink);
    let (status, output) = run_tool(
        support::postfix_tool("smtp-source").to_str().unwrap(),
        &["-m", "40", "-s", "8", "-l", "30000", "-f", "load@client.test", "-t", "sink@dest.test", &gateway.address],
        None,
    );
    assert!(status.success(), "smtp-source failed: {output}");
    let messages = sink.wait_for_messages(40);
    assert_eq!(messages.len(), 40);
    assert!(messages.iter().all(|m| m.mail_from == "load@client.test" && m.rcpt_to == ["sink@dest.test"]));
    gateway.wait_for_log_count("result=\"accepted\"", 40);
}

#[test]
fn real_postfix_as_next_hop_receives_the_message() {
    let postfix = support::postfix::PostfixNextHop::start();
    let gateway = Gateway::builder().relay_to(postfix.port).start();
    let mut client = gateway.connect();
    client.hello();
    let mut content =
        b"From: <a@client.test>\r\nTo: <b@dest.test>\r\nSubject: via postfix\r\n\r\n.dot line\r\n".to_vec();
    content.extend_from_slice(&message("postfix", 300_000)[..]);
    let first = client.send_message("a@client.test", &["b@dest.test", "c@dest.test"], &content);
    assert_eq!(first.code, 250, "{}", first.text());
    // Postfix's own queue id comes back to the client: the 250 is the next hop's.
    assert!(first.text().contains("queued as"), "{}", first.text());
    let second = client.send_message("a@client.test", &["d@dest.test"], b"Subject: second\r\n\r\nsecond\r\n");
    assert_eq!(second.code, 250, "{}", second.text());
    client.cmd("QUIT", 221);
    let delivered = postfix.wait_for_messages(2);
    let mut contents: Vec<Vec<u8>> = delivered.iter().map(|m| support::postfix::content_as_sent(m)).collect();
    contents.sort_by_key(|c| c.len());
    assert_eq!(contents[0], b"Subject: second\r\n\r\nsecond\r\n");
    assert!(contents[1] == content, "content through Postfix differs from what was sent");
}

#[test]
fn next_hop_connections_are_reused_across_client_sessions() {
    let sink = SmtpSink::start(&[]);
    let gateway = gateway_to(&sink);
    for i in 0..3 {
        let mut client = gateway.connect();
        client.hello();
        assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message(&format!("m{i}"), 3000)).code, 250);
        client.cmd("QUIT", 221);
        client.expect_closed();
        gateway.wait_for_log_count("session closed", i + 1);
    }
    assert_eq!(sink.wait_for_messages(3).len(), 3);
    assert_eq!(gateway.log().matches("connected to next hop").count(), 1, "{}", gateway.log());
}

#[test]
fn a_kept_connection_closed_by_the_next_hop_is_replaced() {
    // The next hop goes away while our connection to it is parked; a new one takes its port.
    let sink = SmtpSink::start(&[]);
    let port = sink.port;
    let gateway = gateway_to(&sink);
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message("first", 3000)).code, 250);
    client.cmd("QUIT", 221);
    client.expect_closed();
    gateway.wait_for_log("session closed");
    drop(sink);
    let sink = SmtpSink::start_on(port, &[]);
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message("second", 3000)).code, 250);
    assert_eq!(sink.wait_for_messages(1).len(), 1);
    // The log is read by a thread: wait for the line rather than race it.
    gateway.wait_for_log_count("connected to next hop", 2);
    assert_eq!(gateway.log().matches("connected to next hop").count(), 2, "{}", gateway.log());
}
