//! The SMTP protocol state machine, with no I/O: the socket driver feeds it the input buffer and
//! gets `Step`s back — replies to write, message bytes to spool, requests the transaction backend
//! must answer (MAIL, RCPT, end of message), or "need input" / "close".
//!
//! Every reply the client sees is decided here, which is what makes pipelining (several commands in
//! one read, commands in the same read as the end of DATA) correct by construction: the driver just
//! loops over `step` until it needs input.

use std::collections::VecDeque;
use std::mem;

use bytes::BytesMut;

use super::command::{self, Command, MailParams};
use super::content::Content;
use super::deadline::Waiting;
use super::parser::{CommandFrame, CommandFramer, Framing};
use super::reply::Reply;
use crate::config::BareLineEndings;

/// Message bytes are handed on in pieces of at most this size.
pub const BODY_CHUNK: usize = 64 * 1024;

/// Bad commands tolerated before the session is closed (Postfix's smtpd_hard_error_limit).
const MAX_ERRORS: u32 = 20;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    /// Largest header section accepted; a larger one is refused with 552 after it is read.
    pub max_header_size: u64,
    pub max_recipients: usize,
    pub bare_line_endings: BareLineEndings,
    pub tls: TlsPolicy,
}

/// Whether the listener offers STARTTLS (RFC 3207), and whether mail needs it first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsPolicy {
    #[default]
    Off,
    Offered,
    /// `server.require_tls`: MAIL before STARTTLS gets 530.
    Required,
}

/// How the client last introduced itself (what XFORWARD's PROTO reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    Helo,
    Ehlo,
}

/// Where the session's encryption stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    NotOffered,
    Offered,
    Active,
}

/// The envelope of one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub helo: String,
    pub mail_from: String,
    pub params: MailParams,
    pub rcpt_to: Vec<String>,
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Reply(Reply),
    /// Message bytes (dot-unstuffed, CRLF-only) for the spool.
    Body(Vec<u8>),
    /// Ask the backend; pass its reply to `Session::answer` before stepping again.
    Request(Request),
    /// The transaction is over without delivery: drop the spool, reset the next hop.
    Abandon,
    /// The content was read but is refused (too big, bare line endings): like `Abandon`, and
    /// this reply is the message's answer. `size`: the content's octets, as read.
    Refuse {
        reply: Reply,
        size: u64,
    },
    /// Flush replies and read more input.
    NeedInput,
    /// Flush replies (the 220 to STARTTLS), run the TLS handshake, then `Session::tls_started`
    /// (or close if it fails). `discarded`: plaintext bytes the client sent after STARTTLS
    /// before the handshake, thrown away unread (the CVE-2011-0411 command injection).
    StartTls {
        discarded: usize,
    },
    /// Flush replies and close the connection.
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// MAIL, with the HELO/EHLO name the transaction's stages are told about.
    Mail {
        helo: String,
        from: String,
        params: MailParams,
    },
    Rcpt {
        to: String,
    },
    /// The content is complete and spooled: deliver it to the next hop. `size`: the content's
    /// octets, as read (also when the chain dropped them).
    Deliver {
        envelope: Envelope,
        size: u64,
    },
}

/// Which inactivity timeout applies while waiting for input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Command,
    Content,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Command => "command",
            Phase::Content => "content",
        }
    }
}

#[derive(Debug)]
enum State {
    /// Before HELO/EHLO.
    Fresh,
    /// Greeted, no transaction.
    Ready,
    /// After MAIL, collecting recipients.
    Envelope(Envelope),
    /// Reading DATA content.
    Data(Envelope, Content),
    /// Between BDAT chunks of one message.
    Chunking(Envelope, Content),
    /// Inside a BDAT chunk.
    Chunk {
        envelope: Envelope,
        content: Content,
        remaining: u64,
        last: bool,
    },
    /// STARTTLS answered 220: the driver is to run the handshake.
    Handshake,
    /// Consuming the octets of a refused BDAT so framing survives, then replying.
    SkipChunk {
        remaining: u64,
        reply: Reply,
        resume: Box<State>,
    },
    Closed,
}

/// A request the backend has not answered yet.
#[derive(Debug)]
enum Pending {
    Mail(Envelope),
    Rcpt(Envelope, String),
    Deliver,
}

pub struct Session {
    config: SessionConfig,
    state: State,
    pending: Option<(Pending, Request)>,
    tls: Tls,
    framer: CommandFramer,
    queued: VecDeque<Step>,
    helo: String,
    /// Set by HELO/EHLO, cleared with `helo` when TLS starts.
    hello: Option<Hello>,
    errors: u32,
    /// Command lines framed so far: numbers the line being read, for its deadline.
    lines: u64,
    /// Contents begun so far (DATA, BDAT messages, refused BDAT octets): numbers the one being
    /// read, for its minimum data rate.
    contents: u64,
    /// Command lines framed since the driver last took them (`take_commands`), at most
    /// `MAX_TRACED_COMMANDS`.
    commands: Vec<String>,
}

/// Command lines kept for the trace between two `take_commands`; a driver that never takes them
/// holds no more than this.
const MAX_TRACED_COMMANDS: usize = 16;

impl Session {
    pub fn new(config: SessionConfig) -> Session {
        let tls = match config.tls {
            TlsPolicy::Off => Tls::NotOffered,
            TlsPolicy::Offered | TlsPolicy::Required => Tls::Offered,
        };
        Session {
            config,
            state: State::Fresh,
            pending: None,
            tls,
            framer: CommandFramer::default(),
            queued: VecDeque::new(),
            helo: String::new(),
            hello: None,
            errors: 0,
            lines: 0,
            contents: 0,
            commands: Vec::new(),
        }
    }

    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP Sluice", self.config.hostname))
    }

    /// The command lines framed since the last call, for the `smtp` trace (never content:
    /// only what the command framer read). An AUTH line's credentials are left out.
    pub fn take_commands(&mut self) -> Vec<String> {
        std::mem::take(&mut self.commands)
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Data(..) | State::Chunk { .. } | State::SkipChunk { .. } => Phase::Content,
            _ => Phase::Command,
        }
    }

    /// What the session is waiting for in `input`'s continuation, for the driver's read deadline.
    pub fn waiting(&self, input: &[u8]) -> Waiting {
        let phase = self.phase();
        let in_content =
            matches!(self.state, State::Data(..) | State::Chunking(..) | State::Chunk { .. } | State::SkipChunk { .. });
        let in_line = phase == Phase::Command && (!input.is_empty() || self.framer.discarding());
        Waiting { phase, line: in_line.then_some(self.lines), content: in_content.then_some(self.contents) }
    }

    /// HELO or EHLO, whichever the client last sent (None before either).
    pub fn hello(&self) -> Option<Hello> {
        self.hello
    }

    /// The protocol state, as operators see it.
    pub fn state_name(&self) -> &'static str {
        if self.pending.is_some() {
            return "waiting";
        }
        match self.state {
            State::Fresh => "greeting",
            State::Handshake => "tls handshake",
            State::Ready => "ready",
            State::Envelope(_) => "envelope",
            State::Data(..) => "data",
            State::Chunking(..) | State::Chunk { .. } | State::SkipChunk { .. } => "bdat",
            State::Closed => "closing",
        }
    }

    /// Sender and recipient count of the transaction in progress.
    pub fn transaction(&self) -> Option<(String, usize)> {
        match &self.state {
            State::Envelope(e) | State::Data(e, _) | State::Chunking(e, _) | State::Chunk { envelope: e, .. } => {
                Some((e.mail_from.clone(), e.rcpt_to.len()))
            }
            _ => None,
        }
    }

    /// True between transactions: nothing would be lost by closing now.
    pub fn is_idle(&self) -> bool {
        self.pending.is_none() && matches!(self.state, State::Fresh | State::Ready)
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 §4.2: all
    /// knowledge from before, the EHLO name too, is discarded) and waits for a new EHLO.
    pub fn tls_started(&mut self) {
        self.tls = Tls::Active;
        self.state = State::Fresh;
        self.helo.clear();
        self.hello = None;
        self.framer = CommandFramer::default();
    }

    /// Keeps a framed command line for `take_commands`, AUTH's argument withheld.
    fn trace_command(&mut self, line: &[u8]) {
        if self.commands.len() >= MAX_TRACED_COMMANDS {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let shown = match text.get(..5) {
            Some(verb) if verb.eq_ignore_ascii_case("AUTH ") => format!("{verb}…"),
            _ => text.to_string(),
        };
        self.commands.push(shown);
    }

    /// The next thing to do, consuming input as needed.
    pub fn step(&mut self, input: &mut BytesMut) -> Step {
        loop {
            if let Some((_, request)) = &self.pending {
                return Step::Request(request.clone());
            }
            if let Some(step) = self.queued.pop_front() {
                if let Step::Request(request) = &step {
                    // End of content queues its delivery request behind the last body bytes.
                    self.pending = Some((Pending::Deliver, request.clone()));
                }
                return step;
            }
            if let Some(step) = self.advance(input) {
                return step;
            }
        }
    }

    /// Consumes input in the current state; None means "call again" (progress was made).
    fn advance(&mut self, input: &mut BytesMut) -> Option<Step> {
        match mem::replace(&mut self.state, State::Closed) {
            State::Closed => Some(Step::Close),
            // Whatever followed STARTTLS in the plaintext stream is never executed: the handshake
            // starts on the next bytes from the socket, and `tls_started` moves on from here.
            State::Handshake => {
                self.state = State::Handshake;
                let discarded = input.len();
                input.clear();
                Some(Step::StartTls { discarded })
            }
            State::Data(envelope, content) => self.read_data(envelope, content, input),
            State::Chunk { envelope, content, remaining, last } => {
                self.read_chunk(envelope, content, remaining, last, input)
            }
            State::SkipChunk { remaining, reply, resume } => {
                let skip = remaining.min(input.len() as u64);
                let _ = input.split_to(skip as usize);
                if skip == remaining {
                    self.state = *resume;
                    Some(self.error(reply))
                } else {
                    self.state = State::SkipChunk { remaining: remaining - skip, reply, resume };
                    Some(Step::NeedInput)
                }
            }
            state => {
                self.state = state;
                let Some(frame) = self.framer.next(input) else {
                    return Some(Step::NeedInput);
                };
                self.lines += 1;
                if let CommandFrame::Line(line) = &frame {
                    self.trace_command(line);
                }
                match frame {
                    CommandFrame::TooLong => Some(self.error(Reply::new(500, "5.5.0", "Error: line too long"))),
                    CommandFrame::Line(line) => match command::parse(&line) {
                        Ok(command) => {
                            let state = mem::replace(&mut self.state, State::Closed);
                            let (next, step) = self.transition(state, command);
                            // Too many errors closes the session for good, whatever the command.
                            self.state = if self.errors >= MAX_ERRORS { State::Closed } else { next };
                            step
                        }
                        Err(err) => Some(self.error(err.reply())),
                    },
                }
            }
        }
    }

    /// The backend's answer to the pending request; returns the reply for the client.
    pub fn answer(&mut self, reply: Reply) -> Reply {
        let Some((pending, _)) = self.pending.take() else {
            return Reply::new(451, "4.3.0", "Error: internal sequencing error");
        };
        let accepted = reply.is_positive();
        // A refused sender or recipient is a client error too (as in Postfix), so a client
        // probing addresses or relay permission is cut off like one sending bad commands.
        let refused = reply.code >= 500 && matches!(pending, Pending::Mail(_) | Pending::Rcpt(..));
        self.state = match pending {
            Pending::Mail(envelope) if accepted => State::Envelope(envelope),
            Pending::Mail(_) | Pending::Deliver => State::Ready,
            Pending::Rcpt(mut envelope, to) => {
                if accepted {
                    envelope.rcpt_to.push(to);
                }
                State::Envelope(envelope)
            }
        };
        if refused {
            self.count_error();
        }
        reply
    }

    fn ask(&mut self, pending: Pending, request: Request) -> Option<Step> {
        self.pending = Some((pending, request));
        None
    }

    /// A refused command; too many of them end the session.
    fn error(&mut self, reply: Reply) -> Step {
        self.count_error();
        Step::Reply(reply)
    }

    /// One more client error; the last one allowed queues 421 and the close.
    fn count_error(&mut self) {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            let text = format!("{} Error: too many errors", self.config.hostname);
            self.queued.push_back(Step::Reply(Reply::new(421, "4.7.0", text)));
            self.queued.push_back(Step::Close);
            self.state = State::Closed;
        }
    }

    /// Queues `Abandon` when `state` holds a transaction, then `step`.
    fn leave(&mut self, state: &State, step: Step) -> Option<Step> {
        if !matches!(state, State::Fresh | State::Ready) {
            self.queued.push_back(Step::Abandon);
        }
        self.queued.push_back(step);
        None
    }

    /// The command-phase transition function: (state, command) → (next state, step or "go on").
    fn transition(&mut self, state: State, command: Command) -> (State, Option<Step>) {
        use Command::*;
        let bad_sequence = |text: &str| Reply::new(503, "5.5.1", format!("Error: {text}"));
        let ok = |text: &str| Step::Reply(Reply::new(250, "2.0.0", text));
        match (state, command) {
            (state, Ehlo(name)) => {
                let reply = self.ehlo_reply(&name);
                self.helo = name;
                self.hello = Some(Hello::Ehlo);
                (State::Ready, self.leave(&state, Step::Reply(reply)))
            }
            (state, Helo(name)) => {
                self.helo = name;
                self.hello = Some(Hello::Helo);
                let reply = Reply::plain(250, self.config.hostname.clone());
                (State::Ready, self.leave(&state, Step::Reply(reply)))
            }
            (state, Quit) => {
                let step = self.leave(&state, Step::Reply(Reply::new(221, "2.0.0", "Bye")));
                self.queued.push_back(Step::Close);
                (State::Closed, step)
            }
            (State::Fresh, Rset) => (State::Fresh, Some(ok("Ok"))),
            (state, Rset) => (State::Ready, self.leave(&state, ok("Ok"))),
            (state, Noop) => (state, Some(ok("Ok"))),
            (state, Vrfy) => {
                let text = "Cannot VRFY user, but will accept message and attempt delivery";
                (state, Some(Step::Reply(Reply::new(252, "2.5.2", text))))
            }
            (state, Help) => {
                let text = match self.tls {
                    Tls::NotOffered => "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
                    _ => "Commands: EHLO HELO STARTTLS MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
                };
                (state, Some(Step::Reply(Reply::new(214, "2.0.0", text))))
            }
            (state, NotImplemented(verb)) => {
                let reply = Reply::new(502, "5.5.1", format!("Error: {verb} not implemented"));
                (state, Some(self.error(reply)))
            }
            (state, StartTls) => self.starttls(state),
            (State::Fresh, Mail { .. } | Rcpt { .. } | Data) => {
                (State::Fresh, Some(self.error(bad_sequence("send HELO/EHLO first"))))
            }
            (State::Ready, Mail { .. }) if self.config.tls == TlsPolicy::Required && self.tls != Tls::Active => {
                let reply = Reply::new(530, "5.7.0", "Must issue a STARTTLS command first");
                (State::Ready, Some(self.error(reply)))
            }
            (State::Ready, Mail { from, params }) => {
                if params.size.is_some_and(|size| size > self.config.max_message_size) {
                    let reply = Reply::new(552, "5.3.4", "Message size exceeds fixed limit");
                    return (State::Ready, Some(Step::Reply(reply)));
                }
                let envelope = Envelope {
                    helo: self.helo.clone(),
                    mail_from: from.clone(),
                    params: params.clone(),
                    rcpt_to: Vec::new(),
                };
                let request = Request::Mail { helo: self.helo.clone(), from, params };
                (State::Ready, self.ask(Pending::Mail(envelope), request))
            }
            (state @ (State::Envelope(_) | State::Chunking(..)), Mail { .. }) => {
                (state, Some(self.error(bad_sequence("nested MAIL command"))))
            }
            (State::Ready, Rcpt { .. } | Data) => (State::Ready, Some(self.error(bad_sequence("need MAIL command")))),
            (State::Envelope(envelope), Rcpt { to }) => {
                if envelope.rcpt_to.len() >= self.config.max_recipients {
                    let reply = Reply::new(452, "4.5.3", "Error: too many recipients");
                    return (State::Envelope(envelope), Some(Step::Reply(reply)));
                }
                if !to.is_ascii() && !envelope.params.smtputf8 {
                    let step = self.error(command::SyntaxError::NeedsSmtpUtf8.reply());
                    return (State::Envelope(envelope), Some(step));
                }
                (State::Ready, self.ask(Pending::Rcpt(envelope, to.clone()), Request::Rcpt { to }))
            }
            (State::Envelope(envelope), Data) if envelope.rcpt_to.is_empty() => {
                let reply = Reply::new(554, "5.5.1", "Error: no valid recipients");
                (State::Envelope(envelope), Some(Step::Reply(reply)))
            }
            (State::Envelope(envelope), Data) => {
                self.contents += 1;
                let reply = Reply::plain(354, "End data with <CR><LF>.<CR><LF>");
                (State::Data(envelope, Content::new(Framing::DotTerminated)), Some(Step::Reply(reply)))
            }
            (state @ State::Chunking(..), Rcpt { .. } | Data) => {
                (state, Some(self.error(bad_sequence("BDAT in progress; only BDAT or RSET may follow"))))
            }
            (State::Envelope(envelope), Bdat { size, last }) if !envelope.rcpt_to.is_empty() => {
                self.contents += 1;
                let content = Content::new(Framing::Counted);
                (State::Chunk { envelope, content, remaining: size, last }, None)
            }
            (State::Chunking(envelope, content), Bdat { size, last }) => {
                (State::Chunk { envelope, content, remaining: size, last }, None)
            }
            (state, Bdat { size, .. }) => {
                self.contents += 1;
                let reply = match state {
                    State::Fresh => bad_sequence("send HELO/EHLO first"),
                    State::Envelope(_) => Reply::new(554, "5.5.1", "Error: no valid recipients"),
                    _ => bad_sequence("need MAIL command"),
                };
                (State::SkipChunk { remaining: size, reply, resume: Box::new(state) }, None)
            }
            (state, Mail { .. } | Rcpt { .. } | Data) => {
                (state, Some(self.error(bad_sequence("command out of sequence"))))
            }
        }
    }

    /// STARTTLS: 220 and the handshake when offered outside a transaction, else why not.
    fn starttls(&mut self, state: State) -> (State, Option<Step>) {
        let refusal = match (&state, self.tls) {
            (_, Tls::NotOffered) => Reply::new(502, "5.5.1", "Error: command not implemented"),
            (_, Tls::Active) => Reply::new(503, "5.5.1", "Error: TLS already active"),
            (State::Fresh | State::Ready, Tls::Offered) => {
                return (State::Handshake, Some(Step::Reply(Reply::new(220, "2.0.0", "Ready to start TLS"))));
            }
            _ => Reply::new(503, "5.5.1", "Error: MAIL transaction in progress"),
        };
        (state, Some(self.error(refusal)))
    }

    fn ehlo_reply(&self, name: &str) -> Reply {
        let mut lines = vec![
            format!("{} Hello {}", self.config.hostname, name),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
        ];
        if self.tls == Tls::Offered {
            lines.push("STARTTLS".into());
        }
        Reply { code: 250, enhanced: None, lines }
    }
}

// Reading DATA and BDAT content: the other half of `Session`'s states.
#[path = "session_content.rs"]
mod content_reading;

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
