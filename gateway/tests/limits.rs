//! Limits that must hold against hostile clients (issue 9, items 10 and 11): a header section
//! over `server.max_header_size` is refused and never hides fields from the stages; a client
//! trickling bytes cannot hold a session past the command line's total time or below the minimum
//! data rate; and a full gateway says in its log who holds the sessions.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use support::{wasm_stage, Gateway, SmtpClient};

/// A header-rules stage refusing a Subject and tagging every message for b@dest.test.
fn rules_stage() -> String {
    let rules = "rules = \"\"\"\nheader Subject /forbidden/ reject 550 5.7.1 Forbidden subject\nrcpt-to /@dest\\\\.test$/ add-header X-Checked yes\n\"\"\"";
    wasm_stage("rules", "header_rules", "", rules)
}

/// `bytes` of padding header fields (100-byte lines), then `Subject`, an empty line and a body.
fn padded_message(bytes: usize, subject: &str) -> (Vec<u8>, Vec<u8>) {
    let mut fields = Vec::with_capacity(bytes + 200);
    let mut n = 0;
    while fields.len() < bytes {
        let line = format!("X-Pad-{n:05}: {}\r\n", "p".repeat(86));
        fields.extend_from_slice(line.as_bytes());
        n += 1;
    }
    fields.extend_from_slice(format!("Subject: {subject}\r\nFrom: <a@client.test>\r\n").as_bytes());
    (fields, b"body line\r\n".to_vec())
}

fn content(fields: &[u8], body: &[u8]) -> Vec<u8> {
    [fields, b"\r\n", body].concat()
}

#[test]
fn padding_does_not_hide_a_subject_from_the_stages() {
    let (fields, body) = padded_message(300 * 1024, "forbidden offer");
    let gateway = Gateway::builder().section(&rules_stage()).start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], &content(&fields, &body));
    assert_eq!(reply.code, 552, "{}", reply.text());
    assert!(reply.text().contains("5.3.4") && reply.text().contains("262144"), "{}", reply.text());
    client.cmd("NOOP", 250);
    assert!(gateway.delivered().is_empty());

    // With the limit above the section the stage sees all of it, Subject included.
    let gateway = Gateway::builder().server("max_header_size = \"1MiB\"").section(&rules_stage()).start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], &content(&fields, &body));
    assert_eq!(reply.code, 550, "{}", reply.text());
    assert!(reply.text().contains("Forbidden subject"), "{}", reply.text());
    assert!(gateway.delivered().is_empty());
}

#[test]
fn a_header_added_to_a_big_section_keeps_every_field_in_the_section() {
    let gateway = Gateway::builder().server("max_header_size = \"1MiB\"").section(&rules_stage()).start();
    let mut client = gateway.connect();
    client.hello();
    let (fields, body) = padded_message(300 * 1024, "fine");
    let reply = client.send_message("a@client.test", &["b@dest.test"], &content(&fields, &body));
    assert_eq!(reply.code, 250, "{}", reply.text());
    let expected = [&fields[..], b"X-Checked: yes\r\n\r\n", &body].concat();
    let delivered = gateway.delivered();
    assert_eq!(delivered.len(), 1);
    let got = &delivered[0];
    let blank = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 2);
    assert_eq!(blank, Some(expected.len() - body.len() - 2), "the section ends where it did, after X-Checked");
    assert!(got == &expected, "delivered message differs ({} bytes, expected {})", got.len(), expected.len());
}

/// Writes `line` one byte every `pace` until it is written or the peer closes; counts the bytes.
fn trickle(
    mut stream: TcpStream,
    line: Vec<u8>,
    pace: Duration,
) -> (JoinHandle<()>, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (counter, stopped) = (sent.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        for byte in line {
            if stopped.load(Ordering::SeqCst) || stream.write_all(&[byte]).is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(pace);
        }
    });
    (writer, sent, stop)
}

/// Waits for the gateway's 421 and its close; returns how many trickled bytes it had read by then.
fn expect_421_and_close(
    client: &mut SmtpClient,
    writer: JoinHandle<()>,
    sent: &AtomicUsize,
    stop: &AtomicBool,
) -> usize {
    let reply = client.try_reply().expect("the gateway closed without a 421");
    let at_close = sent.load(Ordering::SeqCst);
    assert_eq!(reply.code, 421, "{}", reply.text());
    assert!(reply.text().contains("4.4.2"), "{}", reply.text());
    client.expect_closed();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    at_close
}

#[test]
fn a_command_line_trickled_byte_by_byte_ends_at_command_timeout() {
    let gateway = Gateway::builder().server("command_timeout = \"3s\"").start();
    let mut client = gateway.connect();
    client.hello();
    // 200 bytes at 2 bytes/s would take 100 s; every single read comes well within 3 s.
    let line = [b"NOOP ".as_slice(), &[b'x'; 193], b"\r\n"].concat();
    let (writer, sent, stop) = trickle(client.writer(), line.clone(), Duration::from_millis(500));
    let at_close = expect_421_and_close(&mut client, writer, &sent, &stop);
    assert!(at_close < line.len(), "closed only after the whole line ({at_close} bytes)");
    gateway.wait_for_log("reason=\"command_line\"");
}

#[test]
fn data_trickled_below_the_minimum_rate_ends_after_the_grace_period() {
    let gateway = Gateway::builder().server("min_data_rate = 100").server("min_data_rate_grace = \"2s\"").start();
    let mut client = gateway.connect();
    client.hello();
    client.begin_data();
    let mut content = b"Subject: slow\r\n\r\n".to_vec();
    content.resize(400, b'y');
    content.extend_from_slice(b"\r\n.\r\n");
    let (writer, sent, stop) = trickle(client.writer(), content.clone(), Duration::from_millis(500));
    let at_close = expect_421_and_close(&mut client, writer, &sent, &stop);
    assert!(at_close < content.len(), "closed only after the whole message ({at_close} bytes)");
    gateway.wait_for_log("reason=\"data_rate\"");
    assert!(gateway.delivered().is_empty());
}

#[test]
fn a_full_gateway_logs_the_sessions_per_address() {
    let gateway = Gateway::builder().server("max_sessions = 3").start();
    let mut held = vec![gateway.connect(), gateway.connect(), SmtpClient::connect_from(&gateway.address, "127.0.0.2")];
    for client in &mut held {
        client.hello();
    }
    let mut refused = SmtpClient::connect_from(&gateway.address, "127.0.0.3");
    let reply = refused.reply();
    assert_eq!(reply.code, 421, "{}", reply.text());
    refused.expect_closed();
    let line = gateway.wait_for_log("refused: session limit reached");
    assert!(line.contains("sessions=3") && line.contains("max_sessions=3"), "{line}");
    assert!(line.contains("127.0.0.1=2, 127.0.0.2=1"), "{line}");
}
