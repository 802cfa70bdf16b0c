//! Run a filter natively, in unit tests, the way the host calls it: envelope events, the header
//! section, the body in chunks, the end — honouring verdicts that end calls — and see the verdict,
//! the changed message and the log lines. (The real host is exercised by the gateway's tests.)

use std::sync::Arc;

use crate::dns::{DnsError, ANSWERS};
use crate::keys::{NativeKeys, NATIVE};
use crate::log::{Level, CAPTURED};
use crate::raw::HEADER_SECTION;
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

/// What the host gives a filter besides the message: its `[stage.config]`, its `[stage.files]`
/// and the DNS answers its lookups get (any other name is `NotFound`).
#[derive(Debug, Clone, Default)]
pub struct TestHost {
    config: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>)>,
    txt: Vec<(String, Result<Vec<String>, DnsError>)>,
    keys: Vec<(String, Vec<u8>)>,
    signer: Option<TestKeys>,
}

/// The `NativeKeys` a `TestHost` signs with.
#[derive(Clone)]
struct TestKeys(Arc<dyn NativeKeys>);

impl std::fmt::Debug for TestKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestKeys")
    }
}

impl TestHost {
    pub fn new() -> TestHost {
        TestHost::default()
    }

    /// A `[stage.config]` entry.
    pub fn config(mut self, key: &str, value: &str) -> TestHost {
        self.config.push((key.into(), value.into()));
        self
    }

    /// A `[stage.files]` entry.
    pub fn file(mut self, name: &str, bytes: impl AsRef<[u8]>) -> TestHost {
        self.files.push((name.into(), bytes.as_ref().to_vec()));
        self
    }

    /// A `[stage.keys]` entry.
    pub fn key(mut self, name: &str, pem: impl AsRef<[u8]>) -> TestHost {
        self.keys.push((name.into(), pem.as_ref().to_vec()));
        self
    }

    /// How the keys read and sign (the host's work), for filters that sign.
    pub fn keys(mut self, keys: impl NativeKeys + 'static) -> TestHost {
        self.signer = Some(TestKeys(Arc::new(keys)));
        self
    }

    /// A TXT record of `name` (call again for several records of one name).
    pub fn txt(mut self, name: &str, record: &str) -> TestHost {
        let name = crate::dns::normalize(name);
        match self.txt.iter_mut().find(|(n, _)| *n == name) {
            Some((_, Ok(records))) => records.push(record.into()),
            Some((_, answer)) => *answer = Ok(vec![record.into()]),
            None => self.txt.push((name, Ok(vec![record.into()]))),
        }
        self
    }

    /// Lookups of `name` fail with `error` (a server failure, a timeout).
    pub fn dns_error(mut self, name: &str, error: DnsError) -> TestHost {
        self.txt.retain(|(n, _)| *n != crate::dns::normalize(name));
        self.txt.push((crate::dns::normalize(name), Err(error)));
        self
    }

    /// The configuration a filter would be given, files included (for `check_config`); it also
    /// makes this host's DNS answers and keys the ones this thread's filter calls get.
    pub fn to_config(&self) -> Config {
        ANSWERS.with(|answers| *answers.borrow_mut() = self.txt.iter().cloned().collect());
        NATIVE.with(|native| *native.borrow_mut() = self.signer.as_ref().map(|keys| keys.0.clone()));
        Config::new(self.config.clone()).with_files(self.files.clone()).with_keys(self.keys.clone())
    }

    /// Runs filter `F` over `message` with this host.
    pub fn run<F: Filter>(&self, message: &TestMessage) -> Result<Outcome, crate::ConfigError> {
        run_with::<F>(self.to_config(), message)
    }
}

/// Runs filter `F` with `config` over `message`.
pub fn run<F: Filter>(config: &[(&str, &str)], message: &TestMessage) -> Result<Outcome, crate::ConfigError> {
    let host = config.iter().fold(TestHost::new(), |host, (key, value)| host.config(key, value));
    host.run::<F>(message)
}

fn run_with<F: Filter>(config: Config, message: &TestMessage) -> Result<Outcome, crate::ConfigError> {
    CAPTURED.with(|lines| lines.borrow_mut().clear());
    let interests = F::interests(&config);
    let mut filter = F::new(&config)?;
    let (mut headers, raw_section, body) = split(&message.content);
    HEADER_SECTION.with(|raw| *raw.borrow_mut() = raw_section);
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

/// Splits content at the empty line ending the header section: the fields (unfolded), the raw
/// section (with its empty line) and the body.
fn split(content: &[u8]) -> (Headers, Vec<u8>, Vec<u8>) {
    let (head, raw, body) = match content.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&content[..at + 2], &content[..at + 4], &content[at + 4..]),
        None => (content, content, &b""[..]),
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
    (Headers(fields), raw.to_vec(), body.to_vec())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfigError, Reaction};

    /// Reads a file in `new`, looks a name up and takes the raw section at `on_headers`.
    struct Probe {
        key: Vec<u8>,
    }

    impl Filter for Probe {
        fn new(config: &Config) -> Result<Self, ConfigError> {
            Ok(Probe { key: config.require_file("key")? })
        }

        fn on_headers(&mut self, headers: &Headers) -> Reaction {
            let answer = match crate::dns::txt("S1._domainkey.example.org.") {
                Ok(records) => records.join("|"),
                Err(err) => err.to_string(),
            };
            let raw = String::from_utf8(headers.raw_section()).unwrap();
            Reaction::carry_on()
                .add_header("X-Key", String::from_utf8_lossy(&self.key))
                .add_header("X-Txt", answer)
                .add_header("X-Raw", raw.replace("\r\n", "|"))
        }
    }

    #[test]
    fn the_test_host_gives_files_dns_answers_and_the_raw_section() {
        let message = TestMessage::new("Subject: a\r\n folded\r\n\r\nbody\r\n");
        let host = TestHost::new()
            .file("key", "PEM")
            .txt("s1._domainkey.example.org", "v=DKIM1")
            .txt("s1._domainkey.example.org", "b");
        let outcome = host.run::<Probe>(&message).unwrap();
        assert_eq!(outcome.headers.get("X-Key"), Some("PEM"));
        assert_eq!(outcome.headers.get("X-Txt"), Some("v=DKIM1|b"));
        assert_eq!(outcome.headers.get("X-Raw"), Some("Subject: a| folded||"));
        let failing = TestHost::new().file("key", "PEM").dns_error("s1._domainkey.example.org", DnsError::Timeout);
        assert_eq!(failing.run::<Probe>(&message).unwrap().headers.get("X-Txt"), Some("DNS timeout"));
        let unknown = TestHost::new().file("key", "PEM");
        assert_eq!(unknown.run::<Probe>(&message).unwrap().headers.get("X-Txt"), Some("no such record"));
        let err = TestHost::new().run::<Probe>(&message).unwrap_err();
        assert_eq!(err.to_string(), "[stage.files] key: is required: add it to [stage.files]");
    }
}
