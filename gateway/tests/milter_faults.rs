//! Milter stages when the milter misbehaves (tests/support/scripted_milter.rs): down, never
//! answering, silent after the negotiation, closing mid-body, answering garbage or a packet of
//! an unknown kind — each is the stage's `on_error`, and the gateway goes on serving; a milter
//! that stops reading pauses the client through the flow controller; the seed's load (10 × 256
//! KiB at once) through a throttled milter leaves nothing stranded.

mod support;

use std::time::Duration;

use support::scripted_milter::{Behaviour, Options, ScriptedMilter};
use support::sink::SmtpSink;
use support::{message, Gateway, SmtpClient};

fn milter_stage(address: &str, extra: &str) -> String {
    format!("[[stage]]\nname = \"milter\"\nkind = \"milter\"\naddress = \"{address}\"\n{extra}\n")
}

/// Sends one message step by step; returns the command that was refused (or "." for the final
/// answer) and its reply code.
fn attempt(client: &mut SmtpClient, content: &[u8]) -> (&'static str, u16) {
    for (line, step) in [("MAIL FROM:<a@client.test>", "MAIL"), ("RCPT TO:<b@dest.test>", "RCPT"), ("DATA", "DATA")] {
        let code = client.cmd_any(line);
        if code >= 400 {
            return (step, code);
        }
    }
    client.send(content);
    client.send(b".\r\n");
    (".", client.reply().code)
}

#[test]
fn each_failure_is_the_stages_on_error_and_the_gateway_goes_on() {
    let cases = [
        ("down", Behaviour::Down, "MAIL"),
        ("never answers", Behaviour::NeverAnswer, "MAIL"),
        ("silent after the negotiation", Behaviour::SilentAfterOptneg, "MAIL"),
        ("garbage", Behaviour::Garbage, "MAIL"),
        ("an unknown packet", Behaviour::UnknownReply, "MAIL"),
        ("closes mid-body", Behaviour::CloseMidBody, "."),
    ];
    for (what, behaviour, refused_at) in cases {
        let milter = ScriptedMilter::start(behaviour);
        let limits = "timeout = \"1s\"\ncall_limit = \"2s\"";
        let gateway = Gateway::builder().section(&milter_stage(&milter.address(), limits)).start();
        let mut client = gateway.connect();
        client.hello();
        let content = message(what, 200_000);
        assert_eq!(attempt(&mut client, &content), (refused_at, 451), "{what}, on_error = tempfail");
        // The session goes on, and so does the gateway.
        client.cmd("RSET", 250);
        client.cmd("QUIT", 221);
        let mut other = gateway.connect();
        other.hello();
        assert_eq!(attempt(&mut other, &content), (refused_at, 451), "{what}, again");
        gateway.wait_for_log("stage failed");
        if what == "down" {
            gateway.wait_for_log("milter is not reachable; messages get the stage's on_error answer until it is");
        }
        assert!(gateway.delivered().is_empty(), "{what}");

        let open = Gateway::builder()
            .section(&milter_stage(&milter.address(), &format!("{limits}\non_error = \"accept\"")))
            .start();
        let mut client = open.connect();
        client.hello();
        assert_eq!(attempt(&mut client, &content), (".", 250), "{what}, on_error = accept");
        assert_eq!(open.delivered(), vec![content], "{what}: passed on unchanged");

        let closed = Gateway::builder()
            .section(&milter_stage(&milter.address(), &format!("{limits}\non_error = \"reject\"")))
            .start();
        let mut client = closed.connect();
        client.hello();
        assert_eq!(attempt(&mut client, &message(what, 1000)), (refused_at, 554), "{what}, on_error = reject");
    }
}

/// Progress packets keep a call alive past `timeout`, but not past `call_limit`.
#[test]
fn progress_keeps_a_call_alive_within_the_call_limit() {
    let slow_but_working =
        |count| Options { progress: Some((b'E', count, Duration::from_millis(600))), ..Options::default() };
    let milter = ScriptedMilter::start(Behaviour::Normal(slow_but_working(4)));
    let gateway =
        Gateway::builder().section(&milter_stage(&milter.address(), "timeout = \"1s\"\ncall_limit = \"30s\"")).start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(attempt(&mut client, &message("working", 1000)), (".", 250), "2.4 s of progress, 1 s timeout");
    let milter = ScriptedMilter::start(Behaviour::Normal(slow_but_working(8)));
    let gateway =
        Gateway::builder().section(&milter_stage(&milter.address(), "timeout = \"1s\"\ncall_limit = \"2s\"")).start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(attempt(&mut client, &message("too slow", 1000)), (".", 451), "4.8 s of progress, 2 s call limit");
    gateway.wait_for_log("stage did not answer within 2s");
}

/// A call cut by `call_limit` leaves the milter's answer owed: the connection is out of step and
/// is not used again (the next command must not read the previous one's answer).
#[test]
fn a_call_cut_short_does_not_put_the_answers_out_of_step() {
    let slow_rcpt = Options { progress: Some((b'R', 8, Duration::from_millis(600))), ..Options::default() };
    let milter = ScriptedMilter::start(Behaviour::Normal(slow_rcpt));
    let gateway =
        Gateway::builder().section(&milter_stage(&milter.address(), "timeout = \"1s\"\ncall_limit = \"2s\"")).start();
    let mut client = gateway.connect();
    client.hello();
    client.cmd("MAIL FROM:<a@client.test>", 250);
    let cut = client.cmd("RCPT TO:<b@dest.test>", 451);
    assert!(cut.text().contains("Filter milter unavailable"), "{}", cut.text());
    // Before the fix this read the first RCPT's late "continue" and answered 250.
    client.cmd("RCPT TO:<c@dest.test>", 451);
    client.cmd("DATA", 554);
    assert!(gateway.delivered().is_empty());
    gateway.wait_for_log("an earlier exchange was cut short");
}

/// A milter that stops reading mid-body: the stage waits for its answer, the stage's inbox
/// reaches the high watermark and the client is paused; released, everything drains, the
/// message is delivered and every pause was resumed.
#[test]
fn a_milter_that_falls_behind_pauses_the_client() {
    let milter = ScriptedMilter::start(Behaviour::HoldBody(Options::default()));
    let gateway = Gateway::builder()
        .section("[flow]\nhigh_watermark = \"256KiB\"\nlow_watermark = \"64KiB\"")
        .section(&milter_stage(&milter.address(), "timeout = \"60s\""))
        .start();
    let address = gateway.address.clone();
    let content = message("held", 4 << 20);
    let sent = content.clone();
    let sender = std::thread::spawn(move || {
        let mut client = SmtpClient::connect(&address);
        client.hello();
        client.send_message("a@client.test", &["b@dest.test"], &sent).code
    });
    milter.wait_for("the milter holding the body", |seen| seen.held == 1);
    gateway.wait_for_log("sluice::flow: pause");
    assert!(!sender.is_finished(), "the client must wait while the milter does not read");
    milter.release();
    assert_eq!(sender.join().unwrap(), 250);
    assert_eq!(gateway.delivered(), vec![content]);
    let resume = gateway.wait_for_log("sluice::flow: resume");
    assert!(resume.contains("stage=milter"), "the pause was the milter's: {resume}");
    let closed = gateway.wait_for_log("session closed");
    let count =
        |key: &str| closed.split_whitespace().find_map(|f| f.strip_prefix(key)).unwrap().parse::<u64>().unwrap();
    assert!(count("pauses=") >= 1, "{closed}");
    assert_eq!(count("pauses="), count("resumes="), "{closed}");
}

#[test]
fn seed_load_through_a_throttled_milter_leaves_nothing_stranded() {
    let throttled = Behaviour::SlowBody { delay: Duration::from_millis(20), options: Options::default() };
    let milter = ScriptedMilter::start(throttled);
    let sink = SmtpSink::start(&[]);
    let gateway = Gateway::builder()
        .relay_to(sink.port)
        .section("[flow]\nhigh_watermark = \"64KiB\"\nlow_watermark = \"16KiB\"")
        .section(&milter_stage(&milter.address(), "timeout = \"30s\""))
        .start();
    let (status, output) = support::seed_load(gateway.port());
    assert!(status.success(), "{output}");
    assert_eq!(sink.wait_for_messages(10).len(), 10);
    let log = gateway.wait_for_log_count("session closed", 10);
    for line in log.lines().filter(|line| line.contains("session closed")) {
        let count =
            |key: &str| line.split_whitespace().find_map(|f| f.strip_prefix(key)).unwrap().parse::<u64>().unwrap();
        assert_eq!(count("pauses="), count("resumes="), "a session left paused: {line}");
    }
    support::poll_until(|| support::open_tcp_connections(gateway.port()) == 0, "no client connection left");
    // Each session's milter connection ends with it (and so did the gateway's check at start).
    milter.wait_for("every milter connection closed", |seen| seen.connections == 11 && seen.closed == 11);
    assert_eq!(milter.seen().messages_ended, 10);
}
