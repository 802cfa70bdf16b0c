//! Run a filter natively, in unit tests, the way the host calls it: envelope events, the header
//! section, the body in chunks, the end — honouring verdicts that end calls — and see the verdict,
//! the changed message and the log lines. (The real host is exercised by the gateway's tests.)

use crate::log::{Level, CAPTURED};
use crate::{BodyOutput, Config, Event, Filter, Header, HeaderChange, Headers, Reaction, Verdict};

/// A message to run through a filter.
#[derive(Debug, Clone)]
pub struct TestMessage {
    pub peer: String,
    pub helo: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message content (header section, empty line, body), CRLF line endings.
    pub content: Vec<u8>,
    /// Size of the body pieces handed to `on_body_chunk`.
    pub chunk_size: usize,
}

impl TestMessage {
    pub fn new(content: impl AsRef<[u8]>) -> TestMessage {
        TestMessage {
            peer: "192.0.2.1:40000".into(),
            helo: "client.example".into(),
            mail_from: "sender@example.org".into(),
            rcpt_to: vec!["rcpt@example.net".into()],
            content: content.as_ref().to_vec(),
            chunk_size: 64 * 1024,
        }
    }

    pub fn from(mut self, address: &str) -> TestMessage {
        self.mail_from = address.into();
        self
    }

    pub fn to(mut self, addresses: &[&str]) -> TestMessage {
        self.rcpt_to = addresses.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn chunked(mut self, size: usize) -> TestMessage {
        self.chunk_size = size.max(1);
        self
    }
}

/// What the filter did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The deciding verdict: the first final one, or `Continue` if the filter never decided.
    pub verdict: Verdict,
    /// Every call that happened, in order, with the verdict it returned.
    pub calls: Vec<(Event, Verdict)>,
    /// Recipients the filter refused (their verdicts are in `calls`).
    pub refused_rcpts: Vec<String>,
    /// The header section after the filter's changes.
    pub headers: Headers,
    /// The body after replacements and appends.
    pub body: Vec<u8>,
    pub log: Vec<(Level, String)>,
}

/// Runs filter `F` with `config` over `message`.
pub fn run<F: Filter>(config: &[(&str, &str)], message: &TestMessage) -> Result<Outcome, crate::ConfigError> {
    CAPTURED.with(|lines| lines.borrow_mut().clear());
    let config = Config::new(config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let interests = F::interests(&config);
    let mut filter = F::new(&config)?;
    let (mut headers, body) = split(&message.content);
    let mut run = Run { outcome: None, calls: Vec::new(), refused: Vec::new(), done: false };
    let wants = |event| interests.wants(event);
    if wants(Event::Connect) {
        run.envelope(Event::Connect, filter.on_connect(&message.peer));
    }
    if !run.stopped() && wants(Event::Helo) {
        run.envelope(Event::Helo, filter.on_helo(&message.helo));
    }
    if !run.stopped() && wants(Event::MailFrom) {
        run.envelope(Event::MailFrom, filter.on_mail_from(&message.mail_from));
    }
    for rcpt in &message.rcpt_to {
        if run.stopped() || !wants(Event::RcptTo) {
            break;
        }
        let verdict = filter.on_rcpt_to(rcpt);
        if matches!(verdict, Verdict::Reject(_) | Verdict::Tempfail(_)) {
            run.refused.push(rcpt.clone());
            run.calls.push((Event::RcptTo, verdict));
        } else {
            run.envelope(Event::RcptTo, verdict);
        }
    }
    let mut out_body = Vec::new();
    if !run.stopped() && wants(Event::Headers) {
        let reaction = filter.on_headers(&headers);
        apply(&mut headers, &reaction.header_changes);
        run.content(Event::Headers, reaction.verdict);
    }
    for chunk in body.chunks(message.chunk_size) {
        if run.stopped() || !wants(Event::Body) {
            out_body.extend_from_slice(chunk);
            continue;
        }
        let reaction = filter.on_body_chunk(chunk);
        match reaction.body {
            BodyOutput::Pass => out_body.extend_from_slice(chunk),
            BodyOutput::Replace(chunks) => chunks.iter().for_each(|c| out_body.extend_from_slice(c)),
        }
        run.content(Event::Body, reaction.verdict);
    }
    if !run.stopped() && wants(Event::End) {
        let Reaction { verdict, header_changes, body } = filter.on_end();
        apply(&mut headers, &header_changes);
        if let BodyOutput::Replace(chunks) = body {
            chunks.iter().for_each(|c| out_body.extend_from_slice(c));
        }
        run.content(Event::End, verdict);
    }
    Ok(Outcome {
        verdict: run.outcome.unwrap_or(Verdict::Continue),
        calls: run.calls,
        refused_rcpts: run.refused,
        headers,
        body: out_body,
        log: CAPTURED.with(|lines| lines.borrow_mut().drain(..).collect()),
    })
}

struct Run {
    outcome: Option<Verdict>,
    calls: Vec<(Event, Verdict)>,
    refused: Vec<String>,
    /// The filter said accept or decided: no more calls.
    done: bool,
}

impl Run {
    fn stopped(&self) -> bool {
        self.done
    }

    fn envelope(&mut self, event: Event, verdict: Verdict) {
        self.content(event, verdict);
    }

    fn content(&mut self, event: Event, verdict: Verdict) {
        if verdict.is_final() {
            self.done = true;
            if verdict != Verdict::Accept {
                self.outcome = Some(verdict.clone());
            }
        }
        self.calls.push((event, verdict));
    }
}

/// Splits content at the empty line ending the header section; fields are unfolded.
fn split(content: &[u8]) -> (Headers, Vec<u8>) {
    let (head, body) = match content.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&content[..at + 2], &content[at + 4..]),
        None => (content, &b""[..]),
    };
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<Header> = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        match (line.starts_with([' ', '\t']), fields.last_mut(), line.split_once(':')) {
            (true, Some(last), _) => last.value = format!("{} {}", last.value, line.trim()),
            (_, _, Some((name, value))) => fields.push(Header { name: name.trim().into(), value: value.trim().into() }),
            _ => {}
        }
    }
    (Headers(fields), body.to_vec())
}

fn apply(headers: &mut Headers, changes: &[HeaderChange]) {
    let position = |headers: &Headers, name: &str, index: u32| {
        headers
            .0
            .iter()
            .enumerate()
            .filter(|(_, h)| h.name.eq_ignore_ascii_case(name))
            .nth(index.max(1) as usize - 1)
            .map(|(i, _)| i)
    };
    for change in changes {
        match change {
            HeaderChange::Add(h) => headers.0.push(h.clone()),
            HeaderChange::Prepend(h) => headers.0.insert(0, h.clone()),
            HeaderChange::Change { name, index, value } => match position(headers, name, *index) {
                Some(i) => headers.0[i].value = value.clone(),
                None => headers.0.push(Header { name: name.clone(), value: value.clone() }),
            },
            HeaderChange::Remove { name, index: 0 } => headers.0.retain(|h| !h.name.eq_ignore_ascii_case(name)),
            HeaderChange::Remove { name, index } => {
                if let Some(i) = position(headers, name, *index) {
                    headers.0.remove(i);
                }
            }
        }
    }
}
