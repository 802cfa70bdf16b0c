//! Reproducers for the fuzzers' findings (README "Findings (fixed)"), kept as regression tests.

use bytes::BytesMut;
use sluice::config::BareLineEndings;
use sluice::smtp::parser::{BodyDecoder, Framing};
use sluice::smtp::reply::Reply;
use sluice::smtp::session::{Request, Session, SessionConfig, Step};

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "gw.test".into(),
        max_message_size: 1000,
        max_header_size: 300,
        max_recipients: 2,
        bare_line_endings: BareLineEndings::Normalize,
        tls: Default::default(),
    }
}

fn session() -> Session {
    Session::new(config())
}

/// Steps until `Close` (answering nothing: the input holds no MAIL), returning the reply codes.
fn run_to_close(session: &mut Session, input: &mut BytesMut) -> Vec<u16> {
    let mut codes = Vec::new();
    loop {
        match session.step(input) {
            Step::Reply(reply) => codes.push(reply.code),
            Step::Close => return codes,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Finding 1: after "too many errors" the session said Close but was not closed when the 20th
/// error came from the command transition (out-of-sequence or not-implemented command).
#[test]
fn close_after_too_many_errors_is_final() {
    let mut session = session();
    let mut input = BytesMut::from(&b"STARTTLS\r\n".repeat(20)[..]);
    input.extend_from_slice(b"EHLO late\r\n");
    let codes = run_to_close(&mut session, &mut input);
    assert_eq!(codes.len(), 21);
    assert_eq!(codes.last(), Some(&421));
    assert_eq!(session.step(&mut input), Step::Close, "session went on after Close");
}

/// Finding 2: a BDAT message ending in a bare LF got an extra empty line.
#[test]
fn counted_content_ending_in_bare_lf() {
    let mut decoder = BodyDecoder::new(Framing::Counted);
    let mut out = Vec::new();
    decoder.decode(b"hello\n", &mut out);
    decoder.finish(&mut out);
    assert_eq!(out, b"hello\r\n");
}

/// Finding 2 as a client sees it: the delivered message gained a trailing empty line.
#[test]
fn bdat_message_ending_in_bare_lf() {
    let mut session = session();
    let mut input = BytesMut::from(&b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nBDAT 6 LAST\r\nhello\n"[..]);
    let mut body = Vec::new();
    let delivered = loop {
        match session.step(&mut input) {
            Step::Body(bytes) => body.extend_from_slice(&bytes),
            Step::Request(Request::Deliver { .. }) => break body,
            Step::Request(_) => {
                session.answer(Reply::new(250, "2.0.0", "Ok"));
            }
            Step::Reply(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(delivered, b"hello\r\n", "got {:?}", String::from_utf8_lossy(&delivered));
}

/// Runs `input` (fed in pieces of `piece` bytes) through a session with a backend that accepts
/// everything; returns the refusal codes.
fn refusals(config: SessionConfig, input: &[u8], piece: usize) -> Vec<u16> {
    let mut session = Session::new(config);
    let mut buf = BytesMut::new();
    let mut rest = input.chunks(piece);
    let mut codes = Vec::new();
    loop {
        match session.step(&mut buf) {
            Step::Refuse { reply, .. } => codes.push(reply.code),
            Step::Request(_) => {
                session.answer(Reply::new(250, "2.0.0", "Ok"));
            }
            Step::NeedInput => match rest.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return codes,
            },
            Step::Close => return codes,
            _ => {}
        }
    }
}

/// Finding 3: a message that is both too big and has a bare line ending was refused with 552 or
/// 550 depending on how the client's bytes were split into reads. Too big takes precedence.
#[test]
fn refusal_reason_does_not_depend_on_reads() {
    let config = SessionConfig { bare_line_endings: BareLineEndings::Reject, ..config() };
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<d@e>\r\nDATA\r\nbare\nLF\r\n".to_vec();
    input.extend_from_slice(&b"x".repeat(2000));
    input.extend_from_slice(b"\r\n.\r\n");
    let whole = refusals(config.clone(), &input, input.len());
    let bytewise = refusals(config, &input, 1);
    assert_eq!(whole, bytewise, "whole input: {whole:?}, one byte at a time: {bytewise:?}");
    assert_eq!(whole, [552], "too big is reported before bare line endings");
}
