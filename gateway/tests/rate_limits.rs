//! Rate limits end to end: connections, messages and recipients per client address per period,
//! and messages per session — each tripped with its exact reply, reset once its period is over
//! (found by retrying with a bound, never by sleeping a guess), and not applied to trusted
//! clients. 127.0.0.1 is the limited client, 127.0.0.2 the trusted one. The periods are long
//! enough that a loaded machine trips each limit well inside its first window.

mod support;

use std::time::{Duration, Instant};

use support::{message, Gateway, SmtpClient, WAIT};

const PERIOD: Duration = Duration::from_secs(4);

fn limited(limits: &str) -> Gateway {
    let policy = format!("[policy]\ntrusted_networks = [\"127.0.0.2/32\"]\nrelay_domains = [\"dest.test\"]\n{limits}");
    Gateway::builder().section(&policy).start()
}

/// Retries `attempt` every 50 ms until it is accepted (true), asserting it was refused until
/// then — at least once, unless the window `opened` then was already over (a loaded machine
/// can take longer than PERIOD for what a test does in between); returns when it was accepted.
fn until_accepted(opened: Instant, mut attempt: impl FnMut() -> bool, what: &str) -> Instant {
    let deadline = Instant::now() + WAIT;
    let mut refused = 0;
    loop {
        let tried = Instant::now();
        if attempt() {
            let over = tried >= opened + PERIOD;
            assert!(refused > 0 || over, "{what}: accepted at the first retry, within the window");
            return Instant::now();
        }
        refused += 1;
        assert!(Instant::now() < deadline, "{what}: still refused after {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(client: &mut SmtpClient, subject: &str) {
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message(subject, 100));
    assert_eq!(reply.code, 250, "{}", reply.text());
}

/// Connects from `source`; the greeting's code and text (the connection is closed after a 421).
fn greeting(gateway: &Gateway, source: &str) -> (u16, String) {
    let mut client = SmtpClient::connect_from(&gateway.address, source);
    let reply = client.reply();
    match reply.code {
        220 => drop(client.cmd("QUIT", 221)),
        _ => client.expect_closed(),
    }
    (reply.code, reply.text())
}

/// Log lines at info saying a limit refused someone (later refusals in a window are at debug).
fn refusals_at_info(gateway: &Gateway) -> usize {
    gateway.log().lines().filter(|line| line.contains(" INFO ") && line.contains("refused: limit reached")).count()
}

#[test]
fn the_connection_rate_refuses_before_the_greeting_until_its_period_is_over() {
    let gateway = limited("connection_rate = \"3/4s\"");
    let opened = Instant::now();
    for _ in 0..3 {
        assert_eq!(greeting(&gateway, "127.0.0.1").0, 220);
    }
    let refused = (421, "421 4.7.0 gw.test Error: too many connections from 127.0.0.1".to_string());
    assert_eq!(greeting(&gateway, "127.0.0.1"), refused);
    assert_eq!(greeting(&gateway, "127.0.0.1"), refused);
    // One info line for the first refusal of the window, not one per connection.
    let line = gateway.wait_for_log("refused: limit reached");
    assert!(line.contains("client=127.0.0.1 limit=\"policy.connection_rate\""), "{line}");
    // Trusted clients are not counted; other addresses have their own window.
    for _ in 0..10 {
        assert_eq!(greeting(&gateway, "127.0.0.2").0, 220);
    }
    assert_eq!(greeting(&gateway, "127.0.0.3").0, 220);

    let accepted = until_accepted(opened, || greeting(&gateway, "127.0.0.1").0 == 220, "connection");
    assert!(accepted >= opened + PERIOD, "accepted {:?} after the window opened", accepted - opened);
    assert_eq!(refusals_at_info(&gateway), 1, "{}", gateway.log());
}

#[test]
fn the_message_rate_refuses_mail_until_its_period_is_over() {
    let gateway = limited("message_rate = \"2/4s\"");
    let opened = Instant::now();
    let mut client = gateway.connect();
    client.hello();
    send(&mut client, "one");
    send(&mut client, "two");
    let reply = client.cmd("MAIL FROM:<a@client.test>", 451);
    assert_eq!(reply.text(), "451 4.7.1 Error: too much mail from 127.0.0.1");
    let line = gateway.wait_for_log("result=\"refused\"");
    assert!(line.contains("at=\"mail\"") && line.contains("reply=\"451 4.7.1 Error: too much mail"), "{line}");
    // The same address in another session shares the window; a trusted one is not counted.
    let mut other = gateway.connect();
    other.hello();
    other.cmd("MAIL FROM:<a@client.test>", 451);
    let mut trusted = SmtpClient::connect_from(&gateway.address, "127.0.0.2");
    trusted.hello();
    for n in 0..5 {
        send(&mut trusted, &format!("trusted {n}"));
    }

    let accepted = until_accepted(opened, || client.cmd_any("MAIL FROM:<a@client.test>") == 250, "MAIL");
    assert!(accepted >= opened + PERIOD, "accepted {:?} after the window opened", accepted - opened);
    client.cmd("RCPT TO:<b@dest.test>", 250);
    client.cmd("DATA", 354);
    client.send(&message("three", 100));
    client.cmd(".", 250);
    assert_eq!(gateway.delivered().len(), 8);
}

#[test]
fn the_recipient_rate_counts_accepted_recipients_only() {
    let gateway = limited("recipient_rate = \"3/4s\"");
    let opened = Instant::now();
    let mut client = gateway.connect();
    client.hello();
    client.cmd("MAIL FROM:<a@client.test>", 250);
    // A recipient refused by the relay policy is not counted.
    client.cmd("RCPT TO:<x@other.test>", 550);
    for n in 1..=3 {
        client.cmd(&format!("RCPT TO:<r{n}@dest.test>"), 250);
    }
    let reply = client.cmd("RCPT TO:<r4@dest.test>", 451);
    assert_eq!(reply.text(), "451 4.7.1 Error: too many recipients from 127.0.0.1");
    let line = gateway.wait_for_log("refused: limit reached");
    assert!(line.contains("client=127.0.0.1 limit=\"policy.recipient_rate\""), "{line}");
    let mut trusted = SmtpClient::connect_from(&gateway.address, "127.0.0.2");
    trusted.hello();
    let rcpts: Vec<String> = (0..10).map(|n| format!("t{n}@anywhere.test")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let reply = trusted.send_message("a@client.test", &rcpts, &message("trusted", 100));
    assert_eq!(reply.code, 250, "{}", reply.text());

    let accepted = until_accepted(opened, || client.cmd_any("RCPT TO:<r4@dest.test>") == 250, "RCPT");
    assert!(accepted >= opened + PERIOD, "accepted {:?} after the window opened", accepted - opened);
    client.cmd("DATA", 354);
    client.send(&message("four recipients", 100));
    client.cmd(".", 250);
    let delivered = gateway.delivered();
    assert_eq!(delivered.len(), 2);
}

#[test]
fn a_session_sends_at_most_max_messages_per_session() {
    let gateway = limited("max_messages_per_session = 2");
    let mut client = gateway.connect();
    client.hello();
    send(&mut client, "one");
    send(&mut client, "two");
    let text = "451 4.7.1 Error: too many messages in one session (at most 2); send the rest in a new one";
    assert_eq!(client.cmd("MAIL FROM:<a@client.test>", 451).text(), text);
    assert_eq!(client.cmd("MAIL FROM:<a@client.test>", 451).text(), text);
    let line = gateway.wait_for_log("refused: limit reached");
    assert!(line.contains("limit=\"policy.max_messages_per_session\""), "{line}");
    client.cmd("QUIT", 221);
    // A new session starts counting anew.
    let mut next = gateway.connect();
    next.hello();
    send(&mut next, "three");
    let mut trusted = SmtpClient::connect_from(&gateway.address, "127.0.0.2");
    trusted.hello();
    for n in 0..4 {
        send(&mut trusted, &format!("trusted {n}"));
    }
    assert_eq!(gateway.delivered().len(), 7);
}
