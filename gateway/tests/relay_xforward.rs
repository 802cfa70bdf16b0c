//! The next hop sees the real client: XFORWARD to a real Postfix that offers it (its log names
//! the client's address beside Sluice's), none to one that does not, and the
//! `Received:` field `[relay] add_received` prepends, ahead of byte-exact content.

mod support;

use support::postfix::{PostfixNextHop, XFORWARD_FROM_LOOPBACK};
use support::sink::SmtpSink;
use support::{Gateway, SmtpClient};

/// A client on another loopback address than Sluice's own, so the two can be told apart.
const CLIENT: &str = "127.0.0.9";

fn client_from_elsewhere(gateway: &Gateway) -> SmtpClient {
    let mut client = SmtpClient::connect_from(&gateway.address, CLIENT);
    client.hello();
    client
}

#[test]
fn xforward_gives_postfix_the_original_client() {
    let hop = PostfixNextHop::start_with(XFORWARD_FROM_LOOPBACK);
    let gateway = Gateway::builder().relay_to(hop.port).start();
    let mut client = client_from_elsewhere(&gateway);
    for n in 0..2 {
        let content = format!("Subject: forwarded {n}\r\n\r\nx\r\n");
        let reply = client.send_message("a@client.test", &["b@dest.test"], content.as_bytes());
        assert_eq!(reply.code, 250, "{}", reply.text());
    }
    client.cmd("QUIT", 221);
    hop.wait_for_messages(2);
    // Postfix logs the client it was told beside the one it sees (Sluice); its own `Received:`
    // still names Sluice (what `add_received` is for).
    let line = hop.wait_for_log("orig_client=");
    assert!(line.contains("client=unknown[127.0.0.1], orig_client=unknown[127.0.0.9]"), "{line}");
    // Each transaction is told, also the second on the same connection.
    let told = hop.log().matches("orig_client=unknown[127.0.0.9]").count();
    assert_eq!(told, 2, "{}", hop.log());
    let summary = hop.wait_for_log(" ehlo=");
    assert!(summary.contains("xforward=2") && summary.contains("mail=2"), "{summary}");
}

#[test]
fn a_hop_that_does_not_offer_xforward_gets_none() {
    let hop = PostfixNextHop::start();
    let gateway = Gateway::builder().relay_to(hop.port).start();
    let mut client = client_from_elsewhere(&gateway);
    let reply = client.send_message("a@client.test", &["b@dest.test"], b"Subject: plain\r\n\r\nx\r\n");
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.cmd("QUIT", 221);
    let text = String::from_utf8_lossy(&hop.wait_for_messages(1)[0]).into_owned();
    assert!(text.starts_with("Received: from gw.test (unknown [127.0.0.1])"), "{text}");
    let summary = hop.wait_for_log(" ehlo=");
    assert!(!summary.contains("xforward"), "{summary}");
}

#[test]
fn add_received_prepends_one_field_and_the_rest_is_byte_exact() {
    let sink = SmtpSink::start(&[]);
    let gateway = Gateway::builder()
        .section(&format!(
            "[relay]\naddress = \"127.0.0.1:{}\"\ncommand_timeout = \"20s\"\nadd_received = true",
            sink.port
        ))
        .start();
    let mut client = client_from_elsewhere(&gateway);
    let content = b"Subject: stamped\r\n\r\n.starts with a dot\r\n.\r\nend\r\n";
    let reply = client.send_message("a@client.test", &["b@dest.test"], content);
    assert_eq!(reply.code, 250, "{}", reply.text());
    let two = client.send_message("a@client.test", &["b@dest.test", "c@dest.test"], content);
    assert_eq!(two.code, 250, "{}", two.text());
    client.cmd("QUIT", 221);
    let messages = sink.wait_for_messages(2);
    // Sluice's transaction ids, as it logs them.
    gateway.wait_for_log_count("result=\"accepted\"", 2);
    let log = gateway.log();
    let ids: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("result=\"accepted\""))
        .filter_map(|line| line.split(" transaction=").nth(1)?.split_whitespace().next())
        .map(|id| id.trim_matches('"'))
        .collect();
    assert_eq!(ids.len(), 2, "{log}");
    // The sink's order is not the sending order: tell the two apart by their recipients.
    for message in &messages {
        let (field, rest) = split_first_field(&message.data);
        assert_eq!(rest, content, "the content after the field is as sent");
        assert!(field.starts_with("Received: from client.test ([127.0.0.9])"), "{field}");
        assert!(field.contains("by gw.test (Sluice) with ESMTP") && field.contains("\tid "), "{field}");
        let one_rcpt = message.rcpt_to.len() == 1;
        assert_eq!(field.contains("for <b@dest.test>;"), one_rcpt, "{field}");
        assert!(field.split("\r\n").all(|line| line.len() <= 78), "{field}");
        assert!(field.ends_with("+0000\r\n"), "{field}");
        let id = field.split_whitespace().skip_while(|word| *word != "id").nth(1).map(|id| id.trim_end_matches(';'));
        assert!(id.is_some_and(|id| ids.contains(&id)), "{ids:?}\n{field}");
    }
}

/// The first header field (with its folded lines) and what follows it.
fn split_first_field(data: &[u8]) -> (String, &[u8]) {
    let mut end = 0;
    while let Some(nl) = data[end..].iter().position(|&b| b == b'\n') {
        end += nl + 1;
        if !matches!(data.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    (String::from_utf8_lossy(&data[..end]).into_owned(), &data[end..])
}
