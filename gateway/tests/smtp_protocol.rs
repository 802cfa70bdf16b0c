//! The SMTP server end to end, delivering to its maildir: real clients (swaks, Python smtplib),
//! pipelining, BDAT, dot-stuffing, 8-bit content and every bad-input case.

mod support;

use support::{message, python, run_tool, Gateway, SmtpClient};

#[test]
fn swaks_message_reaches_the_maildir_byte_exact() {
    let gateway = Gateway::start();
    // swaks ends DATA with CRLF.CRLF itself, so the file has no final line end.
    let content = b"From: a@client.test\r\nSubject: swaks\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\n.\r\nlast";
    let path = gateway.dir.path().join("message.eml");
    std::fs::write(&path, content).unwrap();
    let (status, output) = run_tool(
        "swaks",
        &[
            "--server",
            &gateway.address,
            "--from",
            "a@client.test",
            "--to",
            "b@dest.test",
            "--data",
            path.to_str().unwrap(),
        ],
        None,
    );
    assert!(status.success(), "{output}");
    assert!(output.contains("250 2.0.0 Ok: delivered as"), "{output}");
    assert_eq!(gateway.delivered(), vec![[&content[..], b"\r\n"].concat()]);
    let line = gateway.wait_for_log("message");
    assert!(line.contains("from=\"a@client.test\"") && line.contains("result=\"accepted\""), "{line}");
}

const SMTPLIB_SEND: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
body = open(sys.argv[2], 'rb').read()
with smtplib.SMTP('127.0.0.1', port, timeout=60) as s:
    s.ehlo('python.test')
    assert s.has_extn('pipelining') and s.has_extn('8bitmime') and s.has_extn('chunking')
    assert s.has_extn('smtputf8') and s.has_extn('enhancedstatuscodes')
    refused = s.sendmail('a@client.test', ['b@dest.test', 'c@dest.test'], body, mail_options=['BODY=8BITMIME'])
    assert refused == {}, refused
    print('sent')
"#;

#[test]
fn python_smtplib_8bit_message() {
    let gateway = Gateway::start();
    let mut content = "From: a@client.test\r\nSubject: 8-bit\r\n\r\nGrüße, ça va? ≠\r\n".as_bytes().to_vec();
    content.extend_from_slice(b"raw bytes \x80\xff\xfe\r\n.\r\n");
    let path = gateway.dir.path().join("8bit.eml");
    std::fs::write(&path, &content).unwrap();
    let (status, output) = python(SMTPLIB_SEND, &[&gateway.port().to_string(), path.to_str().unwrap()]);
    assert!(status.success(), "{output}");
    assert_eq!(gateway.delivered(), vec![content]);
}

#[test]
fn pipelined_transactions_in_one_write() {
    let gateway = Gateway::start();
    let mut client = gateway.connect();
    client.hello();
    // Two whole transactions and QUIT in one write: the second MAIL shares the write that ends
    // the first DATA (RFC 2920 allows it; replies must come back in order).
    client.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n");
    assert_eq!(client.reply().code, 250);
    assert_eq!(client.reply().code, 250);
    assert_eq!(client.reply().code, 354);
    client.send(b"Subject: one\r\n\r\n1\r\n.\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n");
    let codes: Vec<u16> = (0..4).map(|_| client.reply().code).collect();
    assert_eq!(codes, vec![250, 250, 250, 354]);
    client.send(b"Subject: two\r\n\r\n2\r\n.\r\nQUIT\r\n");
    assert_eq!(client.reply().code, 250);
    assert_eq!(client.reply().code, 221);
    client.expect_closed();
    assert_eq!(gateway.delivered(), vec![b"Subject: one\r\n\r\n1\r\n".to_vec(), b"Subject: two\r\n\r\n2\r\n".to_vec()]);
}

#[test]
fn bdat_chunks_are_delivered_raw() {
    let gateway = Gateway::start();
    let mut client = gateway.connect();
    client.hello();
    client.cmd("MAIL FROM:<a@client.test> BODY=8BITMIME", 250);
    client.cmd("RCPT TO:<b@dest.test>", 250);
    let first = b"Subject: bdat\r\n\r\n.no stuffing here\r\n";
    client.send(format!("BDAT {}\r\n", first.len()).as_bytes());
    client.send(first);
    assert_eq!(client.reply().code, 250);
    let second = b"\xc3\xa9\r\n.\r\nend\r\n";
    client.send(format!("BDAT {} LAST\r\n", second.len()).as_bytes());
    client.send(second);
    assert_eq!(client.reply().code, 250);
    let mut expected = first.to_vec();
    expected.extend_from_slice(second);
    assert_eq!(gateway.delivered(), vec![expected]);
}

#[test]
fn long_body_lines_pass_byte_exact() {
    let gateway = Gateway::start();
    let mut client = gateway.connect();
    client.hello();
    let mut content = b"Subject: long\r\n\r\n".to_vec();
    content.extend(std::iter::repeat_n(b'x', 200_000));
    content.extend_from_slice(b"\r\n");
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &content).code, 250);
    assert_eq!(gateway.delivered(), vec![content]);
}

#[test]
fn overlong_command_line_keeps_the_session() {
    let gateway = Gateway::start();
    let mut client = gateway.connect();
    client.hello();
    let mut line = b"MAIL FROM:<".to_vec();
    line.extend(std::iter::repeat_n(b'a', 5000));
    line.extend_from_slice(b"@x.test>\r\n");
    client.send(&line);
    let reply = client.reply();
    assert_eq!(reply.code, 500);
    assert!(reply.text().contains("5.5.0"), "{}", reply.text());
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], b"Subject: ok\r\n\r\nok\r\n").code, 250);
}

#[test]
fn oversized_message_is_drained_then_refused_and_session_stays_usable() {
    let gateway = Gateway::builder().server("max_message_size = \"100KiB\"").start();
    let mut client = gateway.connect();
    let ehlo = {
        assert_eq!(client.reply().code, 220);
        client.cmd("EHLO c.test", 250)
    };
    assert!(ehlo.text().contains("SIZE 102400"), "{}", ehlo.text());
    client.cmd("MAIL FROM:<a@client.test> SIZE=200000", 552);
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("big", 300_000));
    assert_eq!(reply.code, 552);
    assert!(reply.text().contains("5.3.4"), "{}", reply.text());
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message("small", 1000)).code, 250);
    assert_eq!(gateway.delivered().len(), 1);
}

#[test]
fn recipient_limit_and_sequence_errors() {
    let gateway = Gateway::builder().server("max_recipients = 2").start();
    let mut client = gateway.connect();
    assert_eq!(client.reply().code, 220);
    client.cmd("MAIL FROM:<a@client.test>", 503);
    client.cmd("EHLO c.test", 250);
    client.cmd("RCPT TO:<b@dest.test>", 503);
    client.cmd("DATA", 503);
    client.cmd("MAIL FROM:<a@client.test>", 250);
    client.cmd("MAIL FROM:<a@client.test>", 503);
    client.cmd("DATA", 554);
    client.cmd("RCPT TO:<1@dest.test>", 250);
    client.cmd("RCPT TO:<2@dest.test>", 250);
    client.cmd("RCPT TO:<3@dest.test>", 452);
    client.cmd("RCPT TO:<bad address>", 501);
    client.cmd("STARTTLS", 502);
    client.cmd("VRFY someone", 252);
    client.cmd("HELP", 214);
    client.cmd("NOOP", 250);
    client.cmd("RSET", 250);
    client.cmd("RCPT TO:<1@dest.test>", 503);
    client.cmd("QUIT", 221);
    client.expect_closed();
}

#[test]
fn bare_line_feeds_are_normalized_by_default() {
    let gateway = Gateway::start();
    let mut client = gateway.connect();
    client.hello();
    client.begin_data();
    // "\n.\n" is the smuggling shape: it must neither end DATA nor reach the next hop as is.
    client.send(b"Subject: s\r\n\r\nbefore\n.\nMAIL FROM:<evil@x.test>\r\nafter\r\n.\r\n");
    assert_eq!(client.reply().code, 250);
    client.cmd("NOOP", 250);
    let delivered = gateway.delivered();
    assert_eq!(delivered, vec![b"Subject: s\r\n\r\nbefore\r\n.\r\nMAIL FROM:<evil@x.test>\r\nafter\r\n".to_vec()]);
}

#[test]
fn bare_line_feeds_rejected_when_configured() {
    let gateway = Gateway::builder().server("bare_line_endings = \"reject\"").start();
    let mut client = gateway.connect();
    client.hello();
    client.begin_data();
    client.send(b"Subject: s\r\n\r\nbare\nlf\r\n.\r\n");
    let reply = client.reply();
    assert_eq!(reply.code, 550, "{}", reply.text());
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], b"Subject: fine\r\n\r\nx\r\n").code, 250);
    assert_eq!(gateway.delivered().len(), 1);
}

#[test]
fn command_and_data_timeouts_answer_421_and_close() {
    let gateway = Gateway::builder().server("command_timeout = \"1s\"").server("data_timeout = \"1s\"").start();
    let mut idle = gateway.connect();
    idle.hello();
    let reply = idle.reply();
    assert_eq!(reply.code, 421, "{}", reply.text());
    idle.expect_closed();
    let mut stalled = gateway.connect();
    stalled.hello();
    stalled.begin_data();
    stalled.send(b"Subject: half\r\n");
    assert_eq!(stalled.reply().code, 421);
    stalled.expect_closed();
    assert!(gateway.delivered().is_empty());
}

#[test]
fn session_limits_answer_421_at_greeting() {
    let gateway = Gateway::builder().server("max_sessions = 2").server("max_sessions_per_ip = 1").start();
    let mut first = gateway.connect();
    first.hello();
    let mut second = gateway.connect();
    let refused = second.reply();
    assert_eq!(refused.code, 421, "per-IP limit: {}", refused.text());
    second.expect_closed();
    // Another loopback address is another client IP: allowed until max_sessions.
    let mut other = SmtpClient::connect_from(&gateway.address, "127.0.0.2");
    other.hello();
    let mut third = SmtpClient::connect_from(&gateway.address, "127.0.0.3");
    assert_eq!(third.reply().code, 421, "global limit");
    first.cmd("QUIT", 221);
    first.expect_closed();
    // The slot comes back when the session ends.
    gateway.wait_for_log_count("session closed", 1);
    let mut again = gateway.connect();
    again.hello();
}

#[test]
fn client_vanishing_mid_data_frees_everything() {
    let gateway = Gateway::builder().section("[spool]\nmemory_limit = \"16KiB\"").start();
    let mut probe = gateway.connect();
    probe.hello();
    let baseline = std::fs::read_dir(format!("/proc/{}/fd", gateway.pid())).unwrap().count();
    {
        let mut client = gateway.connect();
        client.hello();
        client.begin_data();
        client.send(&message("vanish", 200_000));
        // Socket plus spilled spool file: the bytes were read.
        gateway.wait_for_fds_above(baseline + 1);
    }
    gateway.wait_for_fds_at_most(baseline);
    probe.cmd("NOOP", 250);
    assert!(gateway.delivered().is_empty());
}
