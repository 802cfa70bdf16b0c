//! `sluice filter-test`: runs one wasm filter on one message offline, in the real host (same
//! limits, same instance life), and prints every call's verdict and changes. It is how filter
//! authors develop: edit, build, `sluice filter-test my.wasm --eml sample.eml`. The filter's
//! configuration is checked as the gateway checks it at load: a refused `--config` is an error
//! naming the key, a key the filter never reads a warning. `--file NAME=PATH` stands in for
//! `[stage.files]`, read with the same bound; `--zone FILE` answers the filter's DNS lookups from
//! a zone file, so a verifier runs offline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;

use crate::chain::answer::{self, ContentAnswers, ContentRules};
use crate::chain::headers::{BodyOpening, HeaderChange, HeaderSplitter};
use crate::chain::runner::EndOfData;
use crate::chain::stage::{BodyOutput, EnvelopeEvent, MessageContext, Reaction, StageEvent, StageFactory, Verdict};
use crate::config::ServerConfig;
use crate::dns::{TxtSource, ZoneFile};
use crate::wasm::{
    default_cache_dir, read_stage_files, CacheOutcome, ComponentCache, LoadError, Provisions, RefusedAt, StageKeys,
    WasmFilter, WasmLimits,
};

/// Body pieces handed to the filter, as the gateway's reads would.
const CHUNK: usize = 64 * 1024;

pub struct FilterTest {
    pub filter: PathBuf,
    pub eml: PathBuf,
    pub config: Vec<(String, String)>,
    /// `[stage.files]`: name → file.
    pub files: Vec<(String, PathBuf)>,
    /// `[stage.keys]`: name → private key file.
    pub keys: Vec<(String, PathBuf)>,
    /// A zone file answering the filter's DNS lookups (granting it `dns`).
    pub zone: Option<PathBuf>,
    pub peer: SocketAddr,
    pub helo: String,
    pub from: String,
    pub to: Vec<String>,
    /// Where to write the message as the filter left it.
    pub output: Option<PathBuf>,
}

/// How the message fared.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    Refused,
}

impl FilterTest {
    /// Runs the filter, printing a line per call; returns whether the message would be delivered.
    pub async fn run(&self) -> anyhow::Result<Fate> {
        let content = std::fs::read(&self.eml).with_context(|| format!("cannot read {}", self.eml.display()))?;
        let content = crlf(&content);
        let at =
            |option: &'static str| move |(name, why): (String, String)| anyhow::anyhow!("--{option} {name}: {why}");
        let files = read_stage_files(self.files.iter().cloned()).map_err(at("file"))?;
        let keys = read_stage_files(self.keys.iter().cloned()).and_then(StageKeys::read).map_err(at("key"))?;
        let dns = match &self.zone {
            Some(path) => Some(Arc::new(ZoneFile::read(path)?) as Arc<dyn TxtSource>),
            None => None,
        };
        let provisions = Provisions::new(self.config.clone(), files, keys, dns);
        // The default cache, as the gateway uses it: a filter tried again starts at once.
        let cache = default_cache_dir().and_then(|dir| ComponentCache::open(&dir).ok());
        let filter = match WasmFilter::load(
            "filter-test",
            &self.filter,
            provisions,
            WasmLimits::default(),
            cache.as_ref(),
        )
        .await
        {
            Ok(filter) => filter,
            Err(LoadError::NotGranted { what, .. }) => {
                anyhow::bail!("the filter makes {what}: answer them offline with --zone FILE (a zone file, as `sluice dkim keygen` prints records)")
            }
            Err(LoadError::Refused { key, message }) => match RefusedAt::of(&key) {
                RefusedAt::Config => anyhow::bail!("--config: {message}"),
                RefusedAt::ConfigKey(key) => anyhow::bail!("--config {key}: {message}"),
                RefusedAt::File(name) => anyhow::bail!("--file {name}: {message}"),
                RefusedAt::Key(name) => anyhow::bail!("--key {name}: {message}"),
            },
            Err(err) => return Err(err.into()),
        };
        for key in filter.unused_config_keys() {
            eprintln!("warning: --config {key}: unknown key, not used by the filter");
        }
        let how = match filter.cache_outcome {
            CacheOutcome::Hit => "from the compiled-component cache",
            CacheOutcome::Off => "compiled",
            CacheOutcome::Miss | CacheOutcome::Rebuilt(_) => "compiled, now cached",
        };
        println!("loaded     {} in {} ms ({how})", self.filter.display(), filter.compile_time.as_millis());
        let interests = filter.interests();
        let filter = Arc::new(filter);
        let (end_of_data, end_signal) = EndOfData::channel();
        let mut stage = filter.instantiate(&MessageContext {
            end_of_data: end_signal,
            transaction_id: "filter-test.1".into(),
            session: Default::default(),
        })?;

        let mut events = vec![
            EnvelopeEvent::Connect { peer: self.peer },
            EnvelopeEvent::Helo { name: self.helo.clone() },
            EnvelopeEvent::MailFrom { address: self.from.clone() },
        ];
        events.extend(self.to.iter().map(|to| EnvelopeEvent::RcptTo { address: to.clone() }));
        let mut refused_rcpts = 0;
        for event in &events {
            if !interests.wants(event.kind()) {
                continue;
            }
            let verdict = answer::verdict(stage.envelope(event).await?)?;
            println!("{:<10} {} -> {}", name(event.kind()), describe_event(event), describe(&verdict));
            match (&verdict, event) {
                (Verdict::Reject(_) | Verdict::Tempfail(_), EnvelopeEvent::RcptTo { .. }) => refused_rcpts += 1,
                (Verdict::Continue, _) => {}
                (Verdict::Accept, _) => return self.finish(&content, "accepted by the filter"),
                _ => return Ok(self.verdict_result(&verdict)),
            }
        }
        if refused_rcpts == self.to.len() {
            println!("result: every recipient refused; the client's DATA would get 554");
            return Ok(Fate::Refused);
        }

        // Answers are checked as the gateway checks them, under its default limits.
        let server = ServerConfig::default();
        let mut answers = ContentAnswers::new(ContentRules {
            max_message_size: server.max_message_size.0,
            bare_line_endings: server.bare_line_endings,
        });
        let mut splitter = HeaderSplitter::default();
        let (mut section, body) = splitter.push(&content).unwrap_or_else(|| splitter.finish());
        let mut late_changes = Vec::new();
        let mut body_out: Vec<Bytes> = Vec::new();
        let mut calls = Calls::Open;
        if interests.wants(StageEvent::Headers) {
            let (reaction, changed) = answers.headers(stage.headers(&section).await?, &section)?;
            println!("{:<10} {} fields -> {}", "headers", section.fields().count(), describe(&reaction.verdict));
            print_changes(&reaction.header_changes);
            section = changed;
            calls = Calls::after(reaction.verdict);
        }
        for (index, chunk) in body.chunks(CHUNK).enumerate() {
            let chunk = Bytes::copy_from_slice(chunk);
            if calls != Calls::Open || !interests.wants(StageEvent::Body) {
                body_out.push(chunk);
                continue;
            }
            let reaction = answers.body(&chunk, stage.body(chunk.clone()).await?)?;
            let shown = match &reaction.body {
                BodyOutput::Pass => "pass".to_string(),
                BodyOutput::Replace(chunks) => {
                    format!("replaced by {} bytes", chunks.iter().map(Bytes::len).sum::<usize>())
                }
            };
            println!(
                "{:<10} chunk {} ({} bytes) -> {}, {shown}",
                "body",
                index + 1,
                chunk.len(),
                describe(&reaction.verdict)
            );
            match reaction.body {
                BodyOutput::Pass => body_out.push(chunk),
                BodyOutput::Replace(chunks) => body_out.extend(chunks),
            }
            calls = Calls::after(reaction.verdict);
        }
        end_of_data.send_replace(true);
        if calls == Calls::Open {
            let reaction = match interests.wants(StageEvent::End) {
                true => {
                    let reaction = answers.end(stage.end().await?)?;
                    println!("{:<10} -> {}", "end", describe(&reaction.verdict));
                    print_changes(&reaction.header_changes);
                    reaction
                }
                // Not called, but a body it changed still gets its last line ended.
                false => answers.end(Reaction::carry_on())?,
            };
            if let BodyOutput::Replace(chunks) = reaction.body {
                println!("  + appended {} bytes", chunks.iter().map(Bytes::len).sum::<usize>());
                body_out.extend(chunks);
            }
            late_changes = reaction.header_changes;
            calls = Calls::after(reaction.verdict);
        }
        if let Calls::Decided(verdict) = calls {
            return Ok(self.verdict_result(&verdict));
        }
        section.apply(&late_changes);
        let mut opening = BodyOpening::default();
        body_out.iter().for_each(|chunk| opening.see(chunk));
        section.close_before(&opening);
        let mut message = section.to_bytes();
        body_out.iter().for_each(|chunk| message.extend_from_slice(chunk));
        self.finish(&message, "the message would be relayed")
    }

    fn finish(&self, message: &[u8], why: &str) -> anyhow::Result<Fate> {
        println!("result: delivered ({why}), {} bytes", message.len());
        if let Some(path) = &self.output {
            std::fs::write(path, message).with_context(|| format!("cannot write {}", path.display()))?;
            println!("message written to {}", path.display());
        }
        Ok(Fate::Delivered)
    }

    fn verdict_result(&self, verdict: &Verdict) -> Fate {
        println!("result: {}", describe(verdict));
        Fate::Refused
    }
}

/// The message with every line ending CRLF, as SMTP delivers it: a bare LF (a file written on
/// Unix) becomes CRLF, as does a bare CR.
fn crlf(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 32);
    let mut bytes = content.iter().peekable();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\r' | b'\n' => {
                if byte == b'\r' {
                    bytes.next_if_eq(&&b'\n');
                }
                out.extend_from_slice(b"\r\n");
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether the filter is still called for the message's content, as the chain runner decides:
/// `continue` keeps calling, `accept` ends the calls and passes the message on, any other
/// verdict ends them and decides it.
#[derive(Debug, PartialEq)]
enum Calls {
    Open,
    Accepted,
    Decided(Verdict),
}

impl Calls {
    fn after(verdict: Verdict) -> Calls {
        match verdict {
            Verdict::Continue => Calls::Open,
            Verdict::Accept => Calls::Accepted,
            decided => Calls::Decided(decided),
        }
    }
}

fn name(event: StageEvent) -> &'static str {
    match event {
        StageEvent::Connect => "connect",
        StageEvent::Helo => "helo",
        StageEvent::Mail => "mail-from",
        StageEvent::Rcpt => "rcpt-to",
        StageEvent::Headers => "headers",
        StageEvent::Body => "body",
        StageEvent::End => "end",
    }
}

fn describe_event(event: &EnvelopeEvent) -> String {
    match event {
        EnvelopeEvent::Connect { peer } => peer.to_string(),
        EnvelopeEvent::Helo { name } => name.clone(),
        EnvelopeEvent::MailFrom { address } => format!("<{address}>"),
        EnvelopeEvent::RcptTo { address } => format!("<{address}>"),
    }
}

fn describe(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Reject(reply) | Verdict::Tempfail(reply) => format!("{} {}", verdict.kind(), reply.summary()),
        other => other.kind().to_string(),
    }
}

fn print_changes(changes: &[HeaderChange]) {
    for change in changes {
        match change {
            HeaderChange::Add { name, value } => println!("  + add header {name}: {value}"),
            HeaderChange::Prepend { name, value } => println!("  + prepend header {name}: {value}"),
            HeaderChange::Change { name, index, value } => println!("  ~ change header {name}[{index}]: {value}"),
            HeaderChange::Remove { name, index: 0 } => println!("  - remove every header {name}"),
            HeaderChange::Remove { name, index } => println!("  - remove header {name}[{index}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::crlf;

    #[test]
    fn line_endings_become_crlf() {
        assert_eq!(crlf(b"Subject: s\n\nhello\nworld\n"), b"Subject: s\r\n\r\nhello\r\nworld\r\n");
        assert_eq!(crlf(b"a\r\nb\r\n\r\nc"), b"a\r\nb\r\n\r\nc");
        assert_eq!(crlf(b"mixed\r\nlf\nbare cr\rend"), b"mixed\r\nlf\r\nbare cr\r\nend");
        assert_eq!(crlf(b"\r"), b"\r\n");
        assert_eq!(crlf(b""), b"");
    }
}
