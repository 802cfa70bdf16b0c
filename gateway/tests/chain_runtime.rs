//! The chain runtime cannot hang and answers the same every time: a stage task that panics outside
//! any call still ends the message with that stage's `on_error` answer, and when two stages decide
//! the same message the earliest in chain order wins, whichever answered first.

mod support;

use support::{message, Gateway, SmtpClient};

fn test_stage(name: &str, keys: &str, behaviour: &str) -> String {
    format!("[[stage]]\nname = \"{name}\"\nkind = \"test\"\ntimeout = \"5s\"\n{keys}\n[stage.test]\n{behaviour}\n")
}

/// MAIL, RCPT, DATA and `content`; returns the final reply. The client's read timeout (`WAIT`)
/// bounds the wait, so a chain that never answers fails the test instead of hanging it.
fn send(client: &mut SmtpClient, content: &[u8]) -> support::ClientReply {
    client.begin_data();
    client.send(&support::dot_stuff(content));
    client.send(b".\r\n");
    client.reply()
}

/// The value of `key` (e.g. "pauses=") in a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace().find_map(|f| f.strip_prefix(key)).unwrap_or_default()
}

/// Issue 9, item 12: the test stage panics in `interests()` when the runner asks whether it wants
/// the body — in the stage task, outside any call. The message gets the stage's `on_error`
/// answer (451 by default; with accept it is delivered byte-exact through the stages after it)
/// and the session goes on with another message.
#[test]
fn a_panic_outside_any_call_is_the_stages_failure_and_the_session_goes_on() {
    for (keys, code) in [("", 451), ("on_error = \"reject\"", 554), ("on_error = \"accept\"", 250)] {
        let gateway = Gateway::builder()
            .section(&test_stage("before", "", ""))
            .section(&test_stage("brittle", keys, "panic_in = \"interests\""))
            .section(&test_stage("after", "", ""))
            .start();
        let mut client = gateway.connect();
        client.hello();
        let first = message("brittle one", 200_000);
        let reply = send(&mut client, &first);
        assert_eq!(reply.code, code, "{keys:?}: {}", reply.text());
        if code != 250 {
            assert!(reply.text().contains("brittle"), "the on_error answer names the stage: {}", reply.text());
        }
        let second = message("brittle two", 50_000);
        assert_eq!(send(&mut client, &second).code, code, "{keys:?}: the same session, another message");
        client.cmd("QUIT", 221);
        client.expect_closed();
        let failure = gateway.wait_for_log("stage failed");
        assert!(failure.contains("stage=brittle") && failure.contains("interests()"), "{failure}");
        let closed = gateway.wait_for_log("session closed");
        assert_eq!(field(&closed, "pauses="), field(&closed, "resumes="), "every pause resumed: {closed}");
        assert!(!gateway.log().contains("flow event rejected"));
        let expected = if code == 250 { vec![first, second] } else { Vec::new() };
        assert!(gateway.delivered() == expected, "{keys:?}: delivered content differs");
    }
}

/// Issue 9, item 13: stage 0 tempfails on the first body chunk after a delay, stage 1 rejects the
/// header section at once. Stage 1 answers first in time, but stage 0 is earlier in the chain, so
/// its tempfail is the answer — for every message. Stage 2, after the decider, is never called
/// (it would fail loudly at the end).
#[test]
fn the_earliest_stage_in_chain_order_decides_whichever_answers_first() {
    let gateway = Gateway::builder()
        .section(&test_stage("slow-judge", "", "verdict = \"tempfail\"\nat = \"body\"\ndelay = \"50ms\""))
        .section(&test_stage("quick-judge", "", "verdict = \"reject\"\nat = \"headers\""))
        .section(&test_stage("never-called", "", "fail_at = \"end\""))
        .start();
    let mut client = gateway.connect();
    client.hello();
    let answers: Vec<String> =
        (0..10).map(|i| send(&mut client, &message(&format!("judged {i}"), 100_000)).text()).collect();
    assert!(answers.iter().all(|a| a == "451 4.7.1 Deferred by test stage"), "{answers:#?}");
    client.cmd("QUIT", 221);
    client.expect_closed();
    gateway.wait_for_log_count("result=\"tempfailed\"", 10);
    let decided = gateway.wait_for_log_count("message decided by the chain", 10);
    assert!(field(&decided, "stage=").contains("slow-judge"), "{decided}");
    let log = gateway.log();
    assert!(!log.contains("stage failed"), "a stage after the decider was called:\n{log}");
    assert!(gateway.delivered().is_empty());
}
