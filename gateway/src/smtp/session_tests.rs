//! Table tests of the session state machine, driven by a scripted backend.

use super::*;

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "gw.test".into(),
        max_message_size: 1000,
        max_header_size: 1000,
        max_recipients: 2,
        bare_line_endings: BareLineEndings::Normalize,
        tls: TlsPolicy::Off,
    }
}

/// What a run of the session produced.
#[derive(Default, Debug)]
struct Run {
    replies: Vec<u16>,
    delivered: Vec<(Envelope, Vec<u8>)>,
    abandoned: usize,
    /// The content sizes the session reported with each delivery or refusal.
    sizes: Vec<u64>,
    closed: bool,
    spool: Vec<u8>,
}

/// Feeds `input` (in pieces of `piece` bytes) to a session whose backend accepts everything
/// except recipients starting with "bad".
fn run_with(config: SessionConfig, input: &[u8], piece: usize) -> Run {
    let mut session = Session::new(config);
    let mut run = Run::default();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    loop {
        match session.step(&mut buf) {
            Step::Reply(reply) => run.replies.push(reply.code),
            Step::Body(bytes) => run.spool.extend_from_slice(&bytes),
            Step::Refuse { reply, size } => {
                run.sizes.push(size);
                run.replies.push(reply.code);
                run.abandoned += 1;
                run.spool.clear();
            }
            Step::Abandon => {
                run.abandoned += 1;
                run.spool.clear();
            }
            Step::Request(request) => {
                let reply = match request {
                    Request::Rcpt { to } if to.starts_with("bad") => Reply::new(550, "5.1.1", "no"),
                    Request::Deliver { envelope, size } => {
                        run.sizes.push(size);
                        run.delivered.push((envelope, mem::take(&mut run.spool)));
                        Reply::new(250, "2.0.0", "queued")
                    }
                    _ => Reply::new(250, "2.1.0", "Ok"),
                };
                run.replies.push(session.answer(reply).code);
            }
            Step::NeedInput if fed < input.len() => {
                let end = (fed + piece).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            Step::NeedInput => return run,
            // These sessions never offer STARTTLS.
            Step::StartTls { .. } => unreachable!("STARTTLS accepted without [tls]"),
            Step::Close => {
                run.closed = true;
                return run;
            }
        }
    }
}

fn run(input: &[u8]) -> Run {
    run_in(config(), input)
}

fn run_in(config: SessionConfig, input: &[u8]) -> Run {
    let whole = run_with(config.clone(), input, input.len().max(1));
    let bytewise = run_with(config, input, 1);
    assert_eq!(whole.replies, bytewise.replies, "replies must not depend on how input is split");
    assert_eq!(whole.delivered, bytewise.delivered);
    whole
}

#[test]
fn simple_transaction() {
    let r = run(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nHi\r\n..dot\r\n.\r\nQUIT\r\n");
    assert_eq!(r.replies, vec![250, 250, 250, 354, 250, 221]);
    assert!(r.closed);
    let (envelope, body) = &r.delivered[0];
    assert_eq!(envelope.mail_from, "a@b.c");
    assert_eq!(envelope.rcpt_to, vec!["d@e.f"]);
    assert_eq!(envelope.helo, "c");
    assert_eq!(body, b"Hi\r\n.dot\r\n");
}

#[test]
fn pipelined_commands_after_end_of_data() {
    // RFC 2920: the next transaction may share the write that ends DATA.
    let r = run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nDATA\r\n1\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nDATA\r\n2\r\n.\r\nQUIT\r\n");
    assert_eq!(r.replies, vec![250, 250, 250, 354, 250, 250, 250, 354, 250, 221]);
    assert_eq!(r.delivered.len(), 2);
    assert_eq!(r.delivered[1].1, b"2\r\n");
}

#[test]
fn sequence_errors() {
    let r = run(
        b"MAIL FROM:<a@b>\r\nEHLO c\r\nRCPT TO:<d@e>\r\nDATA\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nDATA\r\nQUIT\r\n",
    );
    assert_eq!(r.replies, vec![503, 250, 503, 503, 250, 503, 554, 221]);
    assert_eq!(r.abandoned, 1, "QUIT inside a transaction abandons it");
}

#[test]
fn recipient_rejects_and_limits() {
    let r = run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bad@e>\r\nDATA\r\nRCPT TO:<1@e>\r\nRCPT TO:<2@e>\r\nRCPT TO:<3@e>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(r.replies, vec![250, 250, 550, 554, 250, 250, 452, 354, 250]);
    assert_eq!(r.delivered[0].0.rcpt_to, vec!["1@e", "2@e"]);
}

#[test]
fn oversized_message_is_drained_then_refused() {
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nDATA\r\n".to_vec();
    for _ in 0..100 {
        input.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    input.extend_from_slice(b".\r\nNOOP\r\n");
    let r = run(&input);
    assert_eq!(r.replies, vec![250, 250, 250, 354, 552, 250]);
    assert!(r.delivered.is_empty());
    assert_eq!(r.abandoned, 1);
    assert_eq!(r.sizes, vec![4200], "the refusal reports the size read, not what was kept");
    let r = run(b"EHLO c\r\nMAIL FROM:<a@b> SIZE=5000\r\nMAIL FROM:<a@b> SIZE=500\r\n");
    assert_eq!(r.replies, vec![250, 552, 250]);
}

#[test]
fn bare_line_endings_normalized_or_rejected() {
    let input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nDATA\r\na\n.\nb\r\n.\r\nQUIT\r\n";
    let r = run(input);
    assert_eq!(r.replies, vec![250, 250, 250, 354, 250, 221]);
    assert_eq!(r.delivered[0].1, b"a\r\n.\r\nb\r\n");
    assert_eq!(r.sizes, vec![r.delivered[0].1.len() as u64]);
    let strict = SessionConfig { bare_line_endings: BareLineEndings::Reject, ..config() };
    let r = run_with(strict, input, 5);
    assert_eq!(r.replies, vec![250, 250, 250, 354, 550, 221]);
    assert!(r.delivered.is_empty());
}

#[test]
fn bdat_chunks() {
    let r = run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\n.\r\nNOOP\r\n");
    assert_eq!(r.replies, vec![250, 250, 250, 250, 250, 250]);
    assert_eq!(r.delivered[0].1, b"ab\r\nc.\r\n");
    let r = run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nBDAT 0 LAST\r\n");
    assert_eq!(r.replies, vec![250, 250, 250, 250]);
    assert_eq!(r.delivered[0].1, b"");
}

#[test]
fn refused_bdat_keeps_framing() {
    // The 10 octets after a refused BDAT are data, not commands.
    let r = run(b"EHLO c\r\nBDAT 10\r\nQUIT\r\nQUITNOOP\r\nMAIL FROM:<a@b>\r\nBDAT 6 LAST\r\nRSET\r\nRSET\r\n");
    assert_eq!(r.replies, vec![250, 503, 250, 250, 554, 250]);
    assert!(!r.closed);
    let r = run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nBDAT 2\r\nabDATA\r\nRSET\r\n");
    assert_eq!(r.replies, vec![250, 250, 250, 250, 503, 250]);
    assert_eq!(r.abandoned, 1);
}

#[test]
fn overlong_command_line() {
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'A', 1000));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let r = run(&input);
    assert_eq!(r.replies, vec![250, 500, 250]);
}

#[test]
fn long_body_lines_pass() {
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nDATA\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'L', 900));
    input.extend_from_slice(b"\r\n.\r\n");
    let r = run(&input);
    assert_eq!(r.replies.last(), Some(&250));
    assert_eq!(r.delivered[0].1.len(), 902);
}

#[test]
fn too_many_errors_close_the_session() {
    let input = b"BOGUS\r\n".repeat(25);
    let r = run(&input);
    assert!(r.closed);
    assert_eq!(r.replies.len(), MAX_ERRORS as usize + 1);
    assert_eq!(r.replies.last(), Some(&421));
}

#[test]
fn rset_and_ehlo_abandon_transactions() {
    let r = run(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nRSET\r\nMAIL FROM:<a@b>\r\nEHLO again\r\nRCPT TO:<d@e>\r\n",
    );
    assert_eq!(r.replies, vec![250, 250, 250, 250, 250, 250, 503]);
    assert_eq!(r.abandoned, 2);
}

#[test]
fn smtputf8_recipients_need_the_parameter() {
    let r = run("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ü@e>\r\nRSET\r\nMAIL FROM:<a@b> SMTPUTF8\r\nRCPT TO:<ü@e>\r\n"
        .as_bytes());
    assert_eq!(r.replies, vec![250, 250, 553, 250, 250, 250]);
}

#[test]
fn phases_and_idleness() {
    let mut session = Session::new(config());
    assert!(session.is_idle());
    let mut buf = BytesMut::from(&b"EHLO c\r\nMAIL FROM:<a@b>\r\n"[..]);
    assert!(matches!(session.step(&mut buf), Step::Reply(_)));
    assert!(matches!(session.step(&mut buf), Step::Request(Request::Mail { .. })));
    assert!(!session.is_idle());
    // Stepping again without an answer repeats the request instead of losing it.
    assert!(matches!(session.step(&mut buf), Step::Request(Request::Mail { .. })));
    session.answer(Reply::new(250, "2.1.0", "Ok"));
    buf.extend_from_slice(b"RCPT TO:<d@e>\r\n");
    assert!(matches!(session.step(&mut buf), Step::Request(Request::Rcpt { .. })));
    session.answer(Reply::new(250, "2.1.5", "Ok"));
    buf.extend_from_slice(b"DATA\r\n");
    assert!(matches!(session.step(&mut buf), Step::Reply(_)));
    assert_eq!(session.phase(), Phase::Content);
}

#[test]
fn fuzz_finding_close_is_final_after_too_many_errors() {
    let mut input = b"STARTTLS\r\n".repeat(20);
    input.extend_from_slice(b"EHLO late\r\n");
    let r = run(&input);
    assert!(r.closed);
    assert_eq!(r.replies.last(), Some(&421));
    assert!(!r.replies[..r.replies.len() - 1].contains(&250));
}

#[test]
fn fuzz_finding_refusal_does_not_depend_on_read_sizes() {
    let strict = SessionConfig { bare_line_endings: BareLineEndings::Reject, ..config() };
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nDATA\r\nbare\nlf\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 2000));
    input.extend_from_slice(b"\r\n.\r\n");
    let whole = run_with(strict.clone(), &input, input.len());
    let bytewise = run_with(strict, &input, 1);
    assert_eq!(whole.replies, bytewise.replies);
    assert_eq!(whole.replies.last(), Some(&552), "too big wins over bare line endings");
}

/// A header section of exactly `n` (at least 12) bytes: folded fields, a filler and the empty line.
fn header_section(n: usize) -> Vec<u8> {
    let mut section = Vec::new();
    while section.len() + 25 + 12 <= n {
        section.extend_from_slice(b"X-Pad: padding\r\n\tfolded\r\n");
    }
    let fill = "x".repeat(n - section.len() - 12);
    section.extend_from_slice(format!("X-Last: {fill}\r\n\r\n").as_bytes());
    section
}

/// max_header_size 300 of max_message_size 1000.
fn header_config() -> SessionConfig {
    SessionConfig { max_header_size: 300, ..config() }
}

#[test]
fn an_oversized_header_section_is_read_then_refused() {
    let dot_content = |section: &[u8]| {
        let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(section);
        input.extend_from_slice(b"body\r\n.\r\nNOOP\r\n");
        input
    };
    let r = run_in(header_config(), &dot_content(&header_section(300)));
    assert_eq!(r.replies, vec![250, 250, 250, 354, 250, 250]);
    assert_eq!(r.delivered[0].1.len(), 300 + 6);
    let r = run_in(header_config(), &dot_content(&header_section(301)));
    assert_eq!(r.replies, vec![250, 250, 250, 354, 552, 250]);
    assert!(r.delivered.is_empty());
    // BDAT alike, the section spread over chunks.
    let section = header_section(400);
    let (one, two) = section.split_at(150);
    let mut input = format!("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nBDAT {}\r\n", one.len()).into_bytes();
    input.extend_from_slice(one);
    input.extend_from_slice(format!("BDAT {} LAST\r\n", two.len() + 6).as_bytes());
    input.extend_from_slice(two);
    input.extend_from_slice(b"body\r\n");
    let r = run_in(header_config(), &input);
    assert_eq!(r.replies, vec![250, 250, 250, 250, 552]);
    assert!(r.delivered.is_empty());
}

#[test]
fn the_header_refusal_names_the_limit_and_nothing_past_it_is_passed_on() {
    let mut session = Session::new(header_config());
    let mut input = BytesMut::from(&b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nDATA\r\n"[..]);
    let mut passed_on = 0;
    let mut content = header_section(900);
    content.extend_from_slice(b".\r\n");
    let mut pieces = content.chunks(10);
    let refusal = loop {
        match session.step(&mut input) {
            Step::Request(_) => {
                session.answer(Reply::new(250, "2.0.0", "Ok"));
            }
            Step::Body(bytes) => passed_on += bytes.len(),
            Step::Refuse { reply, .. } => break reply,
            Step::NeedInput => input.extend_from_slice(pieces.next().expect("refused at the end")),
            _ => {}
        }
    };
    assert_eq!((refusal.code, refusal.enhanced.as_deref()), (552, Some("5.3.4")));
    assert!(refusal.lines[0].contains("header section exceeds fixed limit of 300 bytes"), "{refusal:?}");
    assert!(passed_on <= 300, "{passed_on} bytes of an oversized section reached the chain");
}

#[test]
fn waiting_tells_the_line_and_the_content_being_read() {
    let mut session = Session::new(config());
    let mut input = BytesMut::from(&b"EHLO c\r\n"[..]);
    assert!(matches!(session.step(&mut input), Step::Reply(_)));
    assert!(matches!(session.step(&mut input), Step::NeedInput));
    let idle = session.waiting(&input);
    assert_eq!((idle.phase, idle.line, idle.content), (Phase::Command, None, None));
    input.extend_from_slice(b"MAIL FR");
    assert!(matches!(session.step(&mut input), Step::NeedInput));
    assert_eq!(session.waiting(&input).line, Some(1), "the second line is being read");
    input.extend_from_slice(b"OM:<a@b>\r\n");
    assert!(matches!(session.step(&mut input), Step::Request(_)));
    session.answer(Reply::new(250, "2.1.0", "Ok"));
    input.extend_from_slice(b"RCPT TO:<d@e>\r\n");
    assert!(matches!(session.step(&mut input), Step::Request(_)));
    session.answer(Reply::new(250, "2.1.5", "Ok"));
    input.extend_from_slice(b"BDAT 2\r\na");
    while !matches!(session.step(&mut input), Step::NeedInput) {}
    let chunk = session.waiting(&input);
    assert_eq!((chunk.phase, chunk.line, chunk.content), (Phase::Content, None, Some(1)));
    input.extend_from_slice(b"bBD");
    while !matches!(session.step(&mut input), Step::NeedInput) {}
    // Between chunks: a command line, and the same message.
    let between = session.waiting(&input);
    assert_eq!((between.phase, between.line, between.content), (Phase::Command, Some(4), Some(1)));
    // An overlong line still being dropped is a line in progress, though nothing is buffered.
    let mut session = Session::new(config());
    let mut input = BytesMut::from(&[b'X'; 600][..]);
    assert!(matches!(session.step(&mut input), Step::NeedInput));
    assert!(input.is_empty());
    assert_eq!(session.waiting(&input).line, Some(0));
}

/// Steps until the session needs input, closes or asks for the handshake; the replies so far.
fn replies_until_input(session: &mut Session, input: &mut BytesMut) -> (Vec<Reply>, Step) {
    let mut replies = Vec::new();
    loop {
        match session.step(input) {
            Step::Reply(reply) => replies.push(reply),
            step @ (Step::NeedInput | Step::Close | Step::StartTls { .. }) => return (replies, step),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn starttls_is_offered_only_when_configured() {
    for (policy, offered) in [(TlsPolicy::Off, false), (TlsPolicy::Offered, true), (TlsPolicy::Required, true)] {
        let mut session = Session::new(SessionConfig { tls: policy, ..config() });
        let mut input = BytesMut::from(&b"EHLO c\r\nSTARTTLS\r\n"[..]);
        let (replies, step) = replies_until_input(&mut session, &mut input);
        assert_eq!(replies[0].lines.iter().any(|l| l == "STARTTLS"), offered, "{policy:?}");
        if offered {
            assert_eq!(replies[1].code, 220);
            assert_eq!(step, Step::StartTls { discarded: 0 });
        } else {
            assert_eq!((replies[1].code, replies[1].enhanced.as_deref()), (502, Some("5.5.1")));
        }
    }
}

#[test]
fn commands_pipelined_after_starttls_are_discarded_and_the_session_starts_over() {
    let mut session = Session::new(SessionConfig { tls: TlsPolicy::Offered, ..config() });
    let injected = &b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n"[..];
    let mut input = BytesMut::from(injected);
    let (replies, step) = replies_until_input(&mut session, &mut input);
    assert_eq!(replies.iter().map(|r| r.code).collect::<Vec<_>>(), [250, 220]);
    assert_eq!(step, Step::StartTls { discarded: "MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n".len() });
    assert!(input.is_empty());
    session.tls_started();
    // The EHLO before TLS is forgotten: MAIL needs a new one, and STARTTLS is not offered again.
    input.extend_from_slice(b"MAIL FROM:<a@b>\r\nEHLO c\r\nSTARTTLS\r\n");
    let (replies, step) = replies_until_input(&mut session, &mut input);
    assert_eq!(step, Step::NeedInput);
    assert_eq!(replies[0].code, 503);
    assert!(!replies[1].lines.iter().any(|l| l == "STARTTLS"));
    assert_eq!((replies[2].code, replies[2].enhanced.as_deref()), (503, Some("5.5.1")));
    input.extend_from_slice(b"MAIL FROM:<a@b>\r\n");
    assert!(matches!(session.step(&mut input), Step::Request(Request::Mail { .. })));
}

#[test]
fn starttls_is_refused_inside_a_transaction() {
    let mut session = Session::new(SessionConfig { tls: TlsPolicy::Offered, ..config() });
    let mut input = BytesMut::from(&b"EHLO c\r\nMAIL FROM:<a@b>\r\n"[..]);
    replies_until_input_or_request(&mut session, &mut input);
    session.answer(Reply::new(250, "2.1.0", "Ok"));
    input.extend_from_slice(b"STARTTLS\r\n");
    let (replies, step) = replies_until_input(&mut session, &mut input);
    assert_eq!(step, Step::NeedInput);
    assert_eq!(replies[0].code, 503);
    assert_eq!(replies[0].lines[0], "Error: MAIL transaction in progress");
}

#[test]
fn require_tls_refuses_mail_before_starttls() {
    let mut session = Session::new(SessionConfig { tls: TlsPolicy::Required, ..config() });
    let mut input = BytesMut::from(&b"EHLO c\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\n"[..]);
    let (replies, step) = replies_until_input(&mut session, &mut input);
    assert_eq!((replies[1].code, replies[1].enhanced.as_deref()), (530, Some("5.7.0")));
    assert_eq!(step, Step::StartTls { discarded: 0 });
    session.tls_started();
    input.extend_from_slice(b"EHLO c\r\nMAIL FROM:<a@b>\r\n");
    replies_until_input_or_request(&mut session, &mut input);
}

/// Steps through replies until the session asks the backend (asserted).
fn replies_until_input_or_request(session: &mut Session, input: &mut BytesMut) {
    loop {
        match session.step(input) {
            Step::Reply(_) => {}
            Step::Request(Request::Mail { .. }) => return,
            other => panic!("expected a MAIL request, got {other:?}"),
        }
    }
}

#[test]
fn refused_recipients_count_as_errors_and_end_a_probing_session() {
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\n".to_vec();
    for i in 0..MAX_ERRORS {
        input.extend_from_slice(format!("RCPT TO:<bad{i}@x>\r\n").as_bytes());
    }
    input.extend_from_slice(b"RCPT TO:<good@x>\r\n");
    let r = run(&input);
    assert!(r.closed);
    let codes = &r.replies;
    assert_eq!(codes.iter().filter(|&&c| c == 550).count(), MAX_ERRORS as usize, "{codes:?}");
    assert_eq!(codes.last(), Some(&421));
    // The recipient after the limit was never asked for.
    assert_eq!(codes.len(), 2 + MAX_ERRORS as usize + 1, "{codes:?}");
}
