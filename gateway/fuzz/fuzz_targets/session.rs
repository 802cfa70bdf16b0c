#![no_main]
//! Fuzzes the SMTP `Session` state machine end to end, as `smtp::conn` drives it, with a scripted
//! backend, and checks protocol invariants rather than just "no panic":
//!
//! (a) every `Request` is answered exactly once: stepping again before answering returns the same
//!     request without consuming input, and a second `answer` is refused (451);
//! (b) the body of a delivered message is CRLF-clean and ends with CRLF (or is empty);
//! (c) the outcome (every reply, request, refusal with its code, abandonment and delivered body)
//!     is the same whether the input arrives at once or in arbitrary pieces;
//! (d) no message yields more than `max_message_size` body bytes, and none is delivered with a
//!     header section over `max_header_size` (as `HeaderMeter` measures it);
//! (e) the loop ends within a number of steps linear in the input, and `NeedInput` is only
//!     returned when the buffered input really cannot make progress;
//! (f) `Close` is final: stepping again gives `Close` and consumes nothing;
//! and the backend only sees a sane transaction: MAIL outside a transaction, RCPT after an accepted
//! MAIL and within `max_recipients`, delivery of exactly the accepted envelope.
//!
//! The wire input is built from pieces that are mostly well-formed SMTP (so the fuzzer reaches
//! DATA and BDAT quickly) mixed with raw bytes.

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice::config::BareLineEndings;
use sluice::smtp::command::MailParams;
use sluice::smtp::header_meter::HeaderMeter;
use sluice::smtp::parser::MAX_COMMAND_LINE;
use sluice::smtp::reply::Reply;
use sluice::smtp::session::{Phase, Request, Session, SessionConfig, Step};
use sluice_fuzz::{crlf_clean, ends_with_line_end, pieces};

/// Bound on the rendered input, so that `Repeat` stays cheap; still above `BODY_CHUNK` (64 KiB).
const MAX_WIRE: usize = 96 * 1024;

/// Bound on the number of pieces the chunked run feeds.
const MAX_PIECES: usize = 2048;

#[derive(Arbitrary, Debug)]
struct Case {
    max_message_size: u32,
    max_recipients: u8,
    reject_bare_line_endings: bool,
    /// The backend's answers, one byte per request in order (cycled); see `backend`.
    script: Vec<u8>,
    /// Piece sizes for the chunked run (cycled; none means one byte at a time). Big inputs are
    /// cut into at most `MAX_PIECES` pieces.
    splits: Vec<u16>,
    wire: Vec<Piece>,
}

#[derive(Arbitrary, Debug)]
enum Piece {
    Raw(Vec<u8>),
    Command(Command, Eol),
    /// The same command line 1..=32 times: reaches the error limit.
    Repeated(Command, u8),
    /// A content line.
    Line(Vec<u8>, Eol),
    /// A line holding only ".": the end of DATA when it is a whole CRLF line.
    Dot(Eol),
    /// A BDAT command with exactly its announced payload.
    Bdat {
        payload: Vec<u8>,
        last: bool,
    },
    /// Many copies of a short pattern: big messages, past `BODY_CHUNK` and size limits.
    Repeat {
        pattern: Vec<u8>,
        times: u16,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Eol {
    CrLf,
    Lf,
    Cr,
    Nothing,
}

#[derive(Arbitrary, Debug)]
enum Command {
    Ehlo,
    Helo,
    Mail { from: Address, size: Option<u32>, body: Option<bool>, smtputf8: bool },
    Rcpt(Address),
    Data,
    Bdat { size: u16, last: bool },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    Starttls,
}

#[derive(Arbitrary, Debug)]
enum Address {
    Null,
    Ascii(u8),
    Utf8(u8),
    Quoted(u8),
    Postmaster,
    Invalid,
}

impl Address {
    fn render(&self) -> String {
        match self {
            Address::Null => "<>".into(),
            Address::Ascii(n) => format!("<u{n}@example.test>"),
            Address::Utf8(n) => format!("<ü{n}@example.test>"),
            Address::Quoted(n) => format!("<\"a {n}\"@example.test>"),
            Address::Postmaster => "<Postmaster>".into(),
            Address::Invalid => "<no-domain>".into(),
        }
    }
}

impl Command {
    fn render(&self) -> String {
        match self {
            Command::Ehlo => "EHLO client.test".into(),
            Command::Helo => "HELO client.test".into(),
            Command::Mail { from, size, body, smtputf8 } => {
                let mut line = format!("MAIL FROM:{}", from.render());
                if let Some(size) = size {
                    line += &format!(" SIZE={size}");
                }
                match body {
                    Some(true) => line += " BODY=8BITMIME",
                    Some(false) => line += " BODY=7BIT",
                    None => {}
                }
                if *smtputf8 {
                    line += " SMTPUTF8";
                }
                line
            }
            Command::Rcpt(to) => format!("RCPT TO:{}", to.render()),
            Command::Data => "DATA".into(),
            Command::Bdat { size, last: false } => format!("BDAT {size}"),
            Command::Bdat { size, last: true } => format!("BDAT {size} LAST"),
            Command::Rset => "RSET".into(),
            Command::Noop => "NOOP".into(),
            Command::Quit => "QUIT".into(),
            Command::Vrfy => "VRFY postmaster".into(),
            Command::Help => "HELP".into(),
            Command::Starttls => "STARTTLS".into(),
        }
    }
}

impl Eol {
    fn bytes(self) -> &'static [u8] {
        match self {
            Eol::CrLf => b"\r\n",
            Eol::Lf => b"\n",
            Eol::Cr => b"\r",
            Eol::Nothing => b"",
        }
    }
}

fn render(wire: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in wire {
        match piece {
            Piece::Raw(bytes) => out.extend_from_slice(bytes),
            Piece::Command(command, eol) => {
                out.extend_from_slice(command.render().as_bytes());
                out.extend_from_slice(eol.bytes());
            }
            Piece::Repeated(command, times) => {
                let line = command.render() + "\r\n";
                out.extend_from_slice(line.repeat(usize::from(times % 32) + 1).as_bytes());
            }
            Piece::Line(text, eol) => {
                out.extend_from_slice(text);
                out.extend_from_slice(eol.bytes());
            }
            Piece::Dot(eol) => {
                out.push(b'.');
                out.extend_from_slice(eol.bytes());
            }
            Piece::Bdat { payload, last } => {
                let last = if *last { " LAST" } else { "" };
                out.extend_from_slice(format!("BDAT {}{last}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload);
            }
            Piece::Repeat { pattern, times } => {
                let pattern = &pattern[..pattern.len().min(16)];
                let room = MAX_WIRE.saturating_sub(out.len()) / pattern.len().max(1);
                for _ in 0..usize::from(*times).min(room) {
                    out.extend_from_slice(pattern);
                }
            }
        }
        if out.len() >= MAX_WIRE {
            out.truncate(MAX_WIRE);
            break;
        }
    }
    out
}

/// What the client and the next hop could observe; must not depend on how the input is split.
#[derive(Debug, PartialEq)]
enum Event {
    Reply(Reply),
    Request(Request),
    /// The message body handed over with a `Deliver` request.
    Delivered(Vec<u8>),
    Abandon,
    Refuse(Reply),
    Close,
}

/// The open transaction as the backend saw it (what it accepted).
#[derive(Debug)]
struct Transaction {
    from: String,
    params: MailParams,
    rcpts: Vec<String>,
    /// Body bytes spooled so far.
    body: Vec<u8>,
}

/// The scripted backend: its reply to the `n`th request and how many extra times to step before
/// answering (only used when probing).
fn backend(script: &[u8], n: usize) -> (Reply, usize) {
    let byte = if script.is_empty() { 0 } else { script[n % script.len()] };
    let reply = match byte % 8 {
        0..=4 => Reply::new(250, "2.0.0", "Ok"),
        5 => Reply::new(450, "4.2.0", "Try again later"),
        6 => Reply::new(550, "5.1.1", "No"),
        _ => Reply::new(421, "4.3.0", "Closing"),
    };
    (reply, usize::from(byte >> 6))
}

struct Driver<'a> {
    case: &'a Case,
    config: SessionConfig,
    session: Session,
    buf: BytesMut,
    /// Probing run: repeat steps before answering and try stray answers.
    probing: bool,
    events: Vec<Event>,
    transaction: Option<Transaction>,
    requests: usize,
}

impl Driver<'_> {
    /// Handles one request like `smtp::conn` does, checking what the backend is asked.
    fn request(&mut self, request: Request) {
        let (reply, probes) = backend(&self.case.script, self.requests);
        self.requests += 1;
        if self.probing {
            let before = self.buf.clone();
            for _ in 0..probes {
                let again = self.session.step(&mut self.buf);
                assert_eq!(again, Step::Request(request.clone()), "unanswered request not repeated");
                assert_eq!(self.buf, before, "input consumed while a request is pending");
            }
        }
        self.events.push(Event::Request(request.clone()));
        let accepted = reply.is_positive();
        match request {
            Request::Mail { from, params, .. } => {
                assert!(self.transaction.is_none(), "MAIL sent to the backend inside a transaction");
                assert!(params.size.is_none_or(|size| size <= self.config.max_message_size));
                if accepted {
                    self.transaction = Some(Transaction { from, params, rcpts: Vec::new(), body: Vec::new() });
                }
            }
            Request::Rcpt { to } => {
                let txn = self.transaction.as_mut().expect("RCPT sent to the backend without an accepted MAIL");
                assert!(txn.rcpts.len() < self.config.max_recipients, "recipient limit not enforced");
                assert!(to.is_ascii() || txn.params.smtputf8, "non-ASCII recipient without SMTPUTF8");
                if accepted {
                    txn.rcpts.push(to);
                }
            }
            Request::Deliver { envelope, .. } => {
                let txn = self.transaction.take().expect("delivery without a transaction");
                assert_eq!(envelope.mail_from, txn.from, "delivered envelope differs from what was accepted");
                assert_eq!(envelope.params, txn.params);
                assert_eq!(envelope.rcpt_to, txn.rcpts);
                assert!(!envelope.rcpt_to.is_empty(), "delivery without recipients");
                // (b) and (d) for what actually goes to the next hop.
                assert!(crlf_clean(&txn.body), "bare CR or LF in a delivered body: {:?}", txn.body);
                assert!(ends_with_line_end(&txn.body), "delivered body does not end with CRLF");
                assert!(txn.body.len() as u64 <= self.config.max_message_size);
                let mut header = HeaderMeter::default();
                header.feed(&txn.body);
                assert!(header.peak() <= self.config.max_header_size, "header section limit not enforced");
                self.events.push(Event::Delivered(txn.body));
            }
        }
        // (a) The answer is passed through, and only once.
        assert_eq!(self.session.answer(reply.clone()), reply);
        if self.probing {
            assert_eq!(self.session.answer(reply).code, 451, "a request was answered twice");
        }
    }

    /// Checks made whenever the session asks for input.
    fn need_input(&mut self) {
        // (e) Liveness: nothing that could be processed is left in the buffer.
        match self.session.phase() {
            Phase::Content => assert!(self.buf.is_empty(), "content phase stalled on {} bytes", self.buf.len()),
            Phase::Command => {
                assert!(!self.buf.contains(&b'\n'), "a complete command line was left unprocessed");
                assert!(self.buf.len() < MAX_COMMAND_LINE, "an overlong line was buffered");
            }
        }
        if self.transaction.is_some() {
            assert!(!self.session.is_idle(), "idle with a transaction open at the backend");
        }
        if self.probing {
            let stray = self.session.answer(Reply::new(250, "2.0.0", "Stray"));
            assert_eq!(stray.code, 451, "an answer without a request was accepted");
        }
    }
}

/// Runs the whole session over `wire`, fed in pieces (`splits`) or all at once (None).
fn drive(case: &Case, wire: &[u8], splits: Option<&[u16]>) -> Vec<Event> {
    let config = SessionConfig {
        hostname: "gw.test".into(),
        // Half the time a small limit (under 4 KiB), so that it is hit; else up to 256 KiB, past
        // BODY_CHUNK and MAX_WIRE.
        max_message_size: match case.max_message_size {
            n if n % 2 == 0 => u64::from(n / 2 % 4096),
            n => u64::from(n / 2 % (1 << 18)),
        },
        // From the same input bits (the corpus keeps its meaning): often small enough to be hit.
        max_header_size: match case.max_message_size >> 28 {
            0..=7 => u64::from(case.max_message_size >> 12 & 0xfff) + 1,
            _ => 256 << 10,
        },
        max_recipients: usize::from(case.max_recipients % 8),
        bare_line_endings: match case.reject_bare_line_endings {
            true => BareLineEndings::Reject,
            false => BareLineEndings::Normalize,
        },
        tls: Default::default(),
    };
    let mut driver = Driver {
        case,
        session: Session::new(config.clone()),
        config,
        buf: BytesMut::new(),
        probing: splits.is_some(),
        events: Vec::new(),
        transaction: None,
        requests: 0,
    };
    // Big inputs go in at most about MAX_PIECES pieces, to keep executions fast; small inputs
    // (where odd boundaries matter most) are cut exactly as the fuzzer says.
    let floor = wire.len().div_ceil(MAX_PIECES).max(1);
    let sizes: Vec<usize> = match splits {
        Some([]) => vec![floor],
        Some(splits) => splits.iter().map(|&s| usize::from(s).max(floor)).collect(),
        None => vec![wire.len()],
    };
    let mut feed = pieces(wire.len(), &sizes);
    let mut fed_pieces = 0;
    let mut steps = 0;
    loop {
        // (e) Each step consumes input or is one of a few steps a command line or a read causes.
        steps += 1;
        assert!(steps <= 8 * (wire.len() + 1) + 2 * fed_pieces, "{steps} steps for {} bytes", wire.len());
        match driver.session.step(&mut driver.buf) {
            Step::Reply(reply) => {
                assert!((200..600).contains(&reply.code), "bad reply code {}", reply.code);
                driver.events.push(Event::Reply(reply));
            }
            Step::Body(bytes) => {
                assert!(!bytes.is_empty(), "empty Body step");
                let txn = driver.transaction.as_mut().expect("message content outside a transaction");
                assert!(!txn.rcpts.is_empty(), "message content without an accepted recipient");
                txn.body.extend_from_slice(&bytes);
                // (d)
                assert!(txn.body.len() as u64 <= driver.config.max_message_size, "size limit exceeded");
            }
            Step::Request(request) => driver.request(request),
            Step::Abandon => {
                assert!(driver.transaction.take().is_some(), "Abandon without a transaction");
                driver.events.push(Event::Abandon);
            }
            Step::Refuse { reply, .. } => {
                assert!(driver.transaction.take().is_some(), "Refuse without a transaction");
                assert!(matches!(reply.code, 550 | 552), "unexpected refusal {reply:?}");
                driver.events.push(Event::Refuse(reply));
            }
            // The fuzzed session does not offer STARTTLS (`TlsPolicy::Off`).
            Step::StartTls { .. } => panic!("STARTTLS accepted though not offered"),
            Step::NeedInput => {
                driver.need_input();
                let Some(piece) = feed.next() else { break };
                driver.buf.extend_from_slice(&wire[piece]);
                fed_pieces += 1;
            }
            Step::Close => {
                driver.events.push(Event::Close);
                // (f)
                let len = driver.buf.len();
                assert_eq!(driver.session.step(&mut driver.buf), Step::Close, "session went on after Close");
                assert_eq!(driver.buf.len(), len, "input consumed after Close");
                break;
            }
        }
    }
    driver.events
}

fuzz_target!(|case: Case| {
    let wire = render(&case.wire);
    let whole = drive(&case, &wire, None);
    let split = drive(&case, &wire, Some(&case.splits));
    // (c)
    assert_eq!(whole, split, "the outcome depends on how the input is split");
});
