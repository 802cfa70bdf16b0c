//! Milter stages against a scripted milter (tests/support/scripted_milter.rs, its own framing):
//! what the milter is sent (negotiation, macros, commands in order, headers as Postfix sends them,
//! the body in pieces as it arrives, one connection per session with SMFIC_ABORT between
//! messages), and what its answers do (verdicts and reply codes at each step, header, envelope
//! and body changes reaching the next hop, quarantine as configured).

mod support;

use support::scripted_hop::{Behaviour as HopBehaviour, ScriptedHop};
use support::scripted_milter::{cstr, packet, replycode, Behaviour, Options, ScriptedMilter};
use support::sink::SmtpSink;
use support::{message, Gateway, SmtpClient};

fn milter_stage(address: &str, extra: &str) -> String {
    format!("[[stage]]\nname = \"milter\"\nkind = \"milter\"\naddress = \"{address}\"\ntimeout = \"10s\"\n{extra}\n")
}

fn normal(options: Options) -> ScriptedMilter {
    ScriptedMilter::start(Behaviour::Normal(options))
}

fn send(client: &mut SmtpClient, content: &[u8]) -> support::ClientReply {
    client.send_message("a@client.test", &["b@dest.test"], content)
}

fn macro_value(seen: &support::scripted_milter::Seen, for_command: u8, name: &str) -> Option<String> {
    seen.macros
        .iter()
        .filter(|(command, _)| *command == for_command)
        .flat_map(|(_, pairs)| pairs.iter())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

#[test]
fn the_milter_sees_the_transaction_with_its_macros_and_the_body_in_pieces() {
    let milter = normal(Options::default());
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    let content = [b"Subject: folded\r\n\tsecond line\r\nX-Tight:x\r\n".as_slice(), &message("big", 200_000)].concat();
    assert_eq!(send(&mut client, &content).code, 250);
    assert_eq!(gateway.delivered(), vec![content.clone()], "a milter that changes nothing changes nothing");
    let seen = milter.wait_for("one message ended", |s| s.messages_ended == 1);
    let (version, actions, protocol) = seen.optneg.expect("negotiated");
    assert_eq!(version, 6);
    assert_eq!(actions & 0x02, 0, "no body replacement offered unless replace_body");
    assert_ne!(protocol & 0x10_0000, 0, "header values with their leading space are offered");
    // The gateway negotiated once at start to see that the milter answers (OPTNEG, QUIT).
    gateway.wait_for_log("milter answers");
    assert_eq!(seen.commands.iter().filter(|(n, _)| *n == 1).map(|(_, c)| *c).collect::<Vec<_>>(), b"OQ".to_vec());
    let session = seen.commands.iter().find(|(_, code)| *code == b'C').map(|(n, _)| *n).unwrap();
    let codes: Vec<u8> =
        seen.commands.iter().filter(|(n, code)| *n == session && *code != b'D').map(|(_, code)| *code).collect();
    let order: Vec<u8> = codes.iter().copied().filter(|c| !b"LB".contains(c)).collect();
    assert_eq!(order, b"OCHMRTNE".to_vec(), "{:?}", String::from_utf8_lossy(&codes));
    assert_eq!(macro_value(&seen, b'C', "j").as_deref(), Some("gw.test"));
    assert_eq!(macro_value(&seen, b'C', "{client_addr}").as_deref(), Some("127.0.0.1"));
    assert_eq!(macro_value(&seen, b'C', "{daemon_name}").as_deref(), Some("sluice"));
    assert_eq!(macro_value(&seen, b'M', "{mail_addr}").as_deref(), Some("a@client.test"));
    assert_eq!(macro_value(&seen, b'M', "{auth_authen}").as_deref(), Some(""));
    assert_eq!(macro_value(&seen, b'R', "{rcpt_addr}").as_deref(), Some("b@dest.test"));
    let id = macro_value(&seen, b'E', "i").expect("the queue id at end of message");
    gateway.wait_for_log(&format!("transaction=\"{id}\""));
    assert_eq!(seen.mails[0][0], "<a@client.test>");
    assert_eq!(seen.rcpts[0][0], "<b@dest.test>");
    assert_eq!(seen.connects[0].1, b'4');
    // Postfix's way: folds as bare LF, and one space after the colon dropped.
    assert_eq!(seen.headers[0], ("Subject".to_string(), b"folded\n\tsecond line".to_vec()));
    assert_eq!(seen.headers[1], ("X-Tight".to_string(), b"x".to_vec()));
    assert!(seen.body_chunks.iter().all(|&n| n <= 65535), "{:?}", seen.body_chunks);
    let body_at = content.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(seen.bodies[0], content[body_at..].to_vec(), "the body exactly as relayed");
}

#[test]
fn one_connection_per_session_with_abort_between_messages() {
    let milter = normal(Options::default());
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    for n in 0..3 {
        assert_eq!(send(&mut client, &message(&format!("m{n}"), 1000)).code, 250);
    }
    // A transaction that ends with RSET leaves the connection usable too.
    client.cmd("MAIL FROM:<a@client.test>", 250);
    client.cmd("RSET", 250);
    assert_eq!(send(&mut client, &message("after rset", 1000)).code, 250);
    let seen = milter.wait_for("four messages", |s| s.messages_ended == 4);
    // Connection 1 is the gateway's check at start; the session's is the second.
    assert_eq!(seen.connections, 2, "one connection for the session");
    assert_eq!(seen.aborts, 4, "an abort before each reused transaction");
    assert_eq!(seen.commands.iter().filter(|(_, c)| *c == b'O').count(), 2);
    assert_eq!(seen.commands.iter().filter(|(_, c)| *c == b'C').count(), 1);
    client.cmd("QUIT", 221);
    let mut other = gateway.connect();
    other.hello();
    assert_eq!(send(&mut other, &message("second session", 1000)).code, 250);
    let seen = milter.wait_for("a second connection", |s| s.messages_ended == 5);
    assert_eq!(seen.connections, 3);
    assert_eq!(gateway.delivered().len(), 5);
}

#[test]
fn verdicts_and_reply_codes_at_each_step() {
    // (command answered, the answer, the client's command it shows at, reply code, text, delivered)
    let cases: Vec<(u8, Vec<u8>, &str, u16, &str, usize)> = vec![
        (b'M', packet(b'r', &[]), "MAIL", 550, "5.7.1", 0),
        (b'M', packet(b't', &[]), "MAIL", 451, "4.7.1", 0),
        (b'R', replycode("550 5.1.1 No such user here"), "RCPT", 550, "No such user here", 0),
        (b'L', replycode("554 5.7.1 Bad header"), ".", 554, "Bad header", 0),
        (b'B', packet(b'r', &[]), ".", 554, "5.7.1", 0),
        (b'E', replycode("450-4.7.1 first line\r\n450 4.7.1 second line"), ".", 450, "second line", 0),
        (b'E', packet(b'd', &[]), ".", 250, "", 0),
        (b'E', packet(b'a', &[]), ".", 250, "", 1),
        (b'M', packet(b'a', &[]), ".", 250, "", 1),
    ];
    for (at, answer, shows_at, code, text, delivered) in cases {
        let milter = normal(Options { reply_to: vec![(at, answer)], ..Options::default() });
        let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
        let mut client = gateway.connect();
        client.hello();
        let what = format!("answer to {} shown at {shows_at}", at as char);
        let mut reply = None;
        for (line, step) in [("MAIL FROM:<a@client.test>", "MAIL"), ("RCPT TO:<b@dest.test>", "RCPT")] {
            client.send(format!("{line}\r\n").as_bytes());
            let answer = client.reply();
            if step == shows_at {
                reply = Some(answer);
                break;
            }
            assert_eq!(answer.code, 250, "{what}: {}", answer.text());
        }
        let reply = reply.unwrap_or_else(|| {
            client.cmd("DATA", 354);
            client.send(&message("step", 100_000));
            client.send(b".\r\n");
            client.reply()
        });
        assert_eq!((reply.code, reply.text().contains(text)), (code, true), "{what}: {}", reply.text());
        assert_eq!(gateway.delivered().len(), delivered, "{what}");
    }
}

#[test]
fn header_envelope_and_body_changes_reach_the_next_hop() {
    let sink = SmtpSink::start(&[]);
    let at_eom = vec![
        packet(b'h', &cstr(&[b"X-Added", b"by the milter"])),
        packet(b'i', &[&0u32.to_be_bytes()[..], &cstr(&[b"X-Top", b"first"])].concat()),
        packet(b'm', &[&1u32.to_be_bytes()[..], &cstr(&[b"Subject", b"changed"])].concat()),
        packet(b'm', &[&1u32.to_be_bytes()[..], &cstr(&[b"X-Remove-Me", b""])].concat()),
        packet(b'+', &cstr(&[b"<added@dest.test>"])),
        packet(b'-', &cstr(&[b"<b@dest.test>"])),
        packet(b'e', &cstr(&[b"<bounces@client.test>"])),
    ];
    let milter = normal(Options { at_eom, ..Options::default() });
    let gateway = Gateway::builder().relay_to(sink.port).section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    let content = b"Subject: original\r\nX-Remove-Me: yes\r\nFrom: <a@client.test>\r\n\r\nbody\r\n";
    let reply = client.send_message("a@client.test", &["b@dest.test", "c@dest.test"], content);
    assert_eq!(reply.code, 250, "{}", reply.text());
    let relayed = sink.wait_for_messages(1).remove(0);
    assert_eq!(relayed.mail_from, "bounces@client.test");
    assert_eq!(relayed.rcpt_to, vec!["c@dest.test".to_string(), "added@dest.test".to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&relayed.data),
        "X-Top: first\r\nSubject: changed\r\nFrom: <a@client.test>\r\nX-Added: by the milter\r\n\r\nbody\r\n"
    );
}

/// A recipient a milter added that the next hop refuses is left out, with a log line; the others
/// get the message (the client was told 250 for them before the milter spoke).
#[test]
fn a_refused_added_recipient_is_left_out() {
    let hop = ScriptedHop::start(HopBehaviour::RefuseRecipient("refused"));
    let at_eom = vec![packet(b'+', &cstr(&[b"<refused@dest.test>"])), packet(b'+', &cstr(&[b"<added@dest.test>"]))];
    let milter = normal(Options { at_eom, ..Options::default() });
    let gateway = Gateway::builder().relay_to(hop.port).section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    let content = message("added recipients", 1000);
    assert_eq!(send(&mut client, &content).code, 250);
    let seen = hop.wait_for("the message", |seen| seen.messages.len() == 1);
    assert_eq!(seen.messages, vec![content]);
    assert_eq!(seen.rsets, 1, "the client's envelope reset, the changed one sent");
    assert_eq!(seen.rcpts, vec!["b@dest.test", "b@dest.test", "added@dest.test"]);
    gateway.wait_for_log("next hop refused a recipient a filter added; left out");
}

#[test]
fn a_replaced_body_is_relayed_only_when_offered() {
    let at_eom = vec![packet(b'b', b"new body line one\r\n"), packet(b'b', b"and two\r\n")];
    let milter = normal(Options { at_eom: at_eom.clone(), ..Options::default() });
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "replace_body = true")).start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(send(&mut client, &message("replaced", 150_000)).code, 250);
    let delivered = String::from_utf8_lossy(&gateway.delivered()[0]).to_string();
    assert!(delivered.ends_with("\r\n\r\nnew body line one\r\nand two\r\n"), "{}", &delivered[..200]);
    let (_, actions, _) = milter.seen().optneg.unwrap();
    assert_ne!(actions & 0x02, 0, "SMFIF_CHGBODY offered");
    // Held but not replaced: the body as it came.
    let milter = normal(Options::default());
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "replace_body = true")).start();
    let mut client = gateway.connect();
    client.hello();
    let content = message("kept", 150_000);
    assert_eq!(send(&mut client, &content).code, 250);
    assert_eq!(gateway.delivered(), vec![content]);
    // Held, then the milter accepts mid-body (no end of message call): the body as it came.
    let milter = normal(Options { reply_to: vec![(b'B', packet(b'a', &[]))], ..Options::default() });
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "replace_body = true")).start();
    let mut client = gateway.connect();
    client.hello();
    let content = message("accepted mid-body", 300_000);
    assert_eq!(send(&mut client, &content).code, 250);
    assert_eq!(gateway.delivered(), vec![content]);
    // Not offered: a milter replacing the body anyway is a failure (on_error), nothing relayed.
    let milter = normal(Options { at_eom, exceed_offer: true, ..Options::default() });
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    let reply = send(&mut client, &message("not offered", 1000));
    assert_eq!(reply.code, 451, "{}", reply.text());
    assert!(gateway.delivered().is_empty());
    gateway.wait_for_log("without having negotiated it");
}

#[test]
fn quarantine_holds_tags_or_marks_as_configured() {
    let at_eom = vec![packet(b'q', &cstr(&[b"looks like phishing"]))];
    let milter = normal(Options { at_eom, ..Options::default() });
    let run = |extra: &str| {
        let gateway = Gateway::builder().section(&milter_stage(&milter.address(), extra)).start();
        let mut client = gateway.connect();
        client.hello();
        let reply = send(&mut client, b"Subject: hello\r\n\r\nbody\r\n");
        let delivered = gateway.delivered().iter().map(|m| String::from_utf8_lossy(m).to_string()).collect::<Vec<_>>();
        (reply, delivered)
    };
    let (reply, delivered) = run("");
    assert_eq!(reply.code, 451, "{}", reply.text());
    assert!(reply.text().contains("looks like phishing") && delivered.is_empty(), "{}", reply.text());
    let (reply, delivered) = run("quarantine = \"tag\"");
    assert_eq!(reply.code, 250);
    assert_eq!(delivered, vec!["Subject: [QUARANTINE] hello\r\n\r\nbody\r\n".to_string()]);
    let (reply, delivered) = run("quarantine = \"header\"");
    assert_eq!(reply.code, 250);
    assert_eq!(delivered, vec!["Subject: hello\r\nX-Quarantined: looks like phishing\r\n\r\nbody\r\n".to_string()]);
}

#[test]
fn a_milter_that_accepts_or_rejects_the_connection_is_not_asked_again() {
    let milter =
        normal(Options { reply_to: vec![(b'C', replycode("554 5.7.1 You are on our list"))], ..Options::default() });
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    for _ in 0..2 {
        let reply = client.cmd("MAIL FROM:<a@client.test>", 554);
        assert!(reply.text().contains("You are on our list"), "{}", reply.text());
    }
    let seen = milter.seen();
    assert_eq!(seen.commands.iter().filter(|(_, c)| *c == b'C').count(), 1);
    assert_eq!(seen.commands.iter().filter(|(_, c)| *c == b'M').count(), 0);
    let milter = normal(Options { reply_to: vec![(b'H', packet(b'a', &[]))], ..Options::default() });
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    for n in 0..2 {
        assert_eq!(send(&mut client, &message(&format!("accepted {n}"), 1000)).code, 250);
    }
    assert_eq!(gateway.delivered().len(), 2);
    assert_eq!(milter.seen().commands.iter().filter(|(_, c)| *c == b'M').count(), 0);
}

#[test]
fn a_kept_connection_the_milter_closed_is_replaced() {
    let milter = normal(Options::default());
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(send(&mut client, &message("first", 1000)).code, 250);
    milter.hang_up();
    milter.wait_for("the session's connection closed", |seen| seen.closed == 2);
    assert_eq!(send(&mut client, &message("second", 1000)).code, 250);
    let seen = milter.wait_for("the second message", |seen| seen.messages_ended == 2);
    assert_eq!(seen.connections, 3, "the check, the first connection, a new one");
    assert_eq!(seen.helos, vec!["client.test", "client.test"], "HELO again on the new connection");
    assert_eq!(gateway.delivered().len(), 2);
}

#[test]
fn a_milter_out_of_step_at_end_of_message_loses_its_connection() {
    // SMFIR_SETSYMLIST belongs to the negotiation; at end of message it is out of place.
    let at_eom = vec![packet(b'l', &[&1u32.to_be_bytes()[..], &cstr(&[b"{x}"])].concat())];
    let milter = normal(Options { at_eom, ..Options::default() });
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    for n in 0..2 {
        let reply = send(&mut client, &message(&format!("m{n}"), 1000));
        assert_eq!(reply.code, 451, "{}", reply.text());
    }
    gateway.wait_for_log("among its modifications");
    // The final answer left unread is never taken for the next message's: a new connection each.
    assert_eq!(milter.wait_for("two messages", |seen| seen.messages_ended == 2).connections, 3);
}

#[test]
fn with_no_mail_step_the_abort_goes_before_the_first_recipient() {
    const NO_MAIL: u32 = 0x04;
    let milter = normal(Options { protocol: NO_MAIL, ..Options::default() });
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    for n in 0..2 {
        assert_eq!(send(&mut client, &message(&format!("m{n}"), 1000)).code, 250);
    }
    let seen = milter.wait_for("two messages", |seen| seen.messages_ended == 2);
    let session: Vec<u8> =
        seen.commands.iter().filter(|(n, c)| *n == 2 && *c != b'D' && *c != b'L').map(|(_, c)| *c).collect();
    assert_eq!(String::from_utf8_lossy(&session), "OCHRTNBEARTNBE");
}

#[test]
fn a_message_left_without_recipients_is_discarded() {
    let milter = normal(Options { at_eom: vec![packet(b'-', &cstr(&[b"<b@dest.test>"]))], ..Options::default() });
    let gateway = Gateway::builder().section(&milter_stage(&milter.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(send(&mut client, &message("nobody left", 1000)).code, 250);
    assert!(gateway.delivered().is_empty());
    let line = gateway.wait_for_log("result=\"discarded\"");
    assert!(line.contains("stage=\"chain\"") && line.contains("every recipient removed"), "{line}");
}
