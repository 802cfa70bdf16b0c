//! The stage contract: what every chain stage (built-in test stage, wasm filter, clamd bridge,
//! milter) receives and answers. One `Stage` instance serves one transaction, so no state leaks
//! between messages or senders; what a stage keeps for a whole client session (a milter's
//! connection) lives in the session's `SessionSlots`, keyed by the stage's factory.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::answer::Malformed;
use super::headers::{HeaderChange, HeaderSection};
use super::runner::EndOfData;
use crate::smtp::reply::Reply;

/// What a stage says about the transaction after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; call me with the next event.
    Continue,
    /// I am satisfied: stop calling me, pass the message on unchanged.
    Accept,
    /// Refuse with this 5xx reply.
    Reject(Reply),
    /// Refuse for now with this 4xx reply.
    Tempfail(Reply),
    /// Tell the client 250, then drop the message (logged).
    Discard,
}

impl Verdict {
    /// Every kind, as `kind` names them.
    pub const KINDS: [&'static str; 5] = ["continue", "accept", "reject", "tempfail", "discard"];

    /// Reject, tempfail and discard end the transaction's fate.
    pub fn is_final(&self) -> bool {
        matches!(self, Verdict::Reject(_) | Verdict::Tempfail(_) | Verdict::Discard)
    }

    /// The verdict with its reply, for logs: `reject 550 5.7.1 …`.
    pub fn summary(&self) -> String {
        match self {
            Verdict::Reject(reply) | Verdict::Tempfail(reply) => format!("{} {}", self.kind(), reply.summary()),
            _ => self.kind().to_string(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Continue => "continue",
            Verdict::Accept => "accept",
            Verdict::Reject(_) => "reject",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Discard => "discard",
        }
    }
}

/// Replacement of the body bytes a stage was given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BodyOutput {
    /// Pass the chunk on unchanged (for `end`: add nothing).
    #[default]
    Pass,
    /// Pass these bytes on instead (for `end`: append them). Empty drops the chunk.
    Replace(Vec<Bytes>),
}

/// A change of the envelope a stage asks for at `end` (a milter's SMFIR_ADDRCPT, DELRCPT and
/// CHGFROM); the relay sends the envelope as changed. Addresses without angle brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeChange {
    AddRecipient(String),
    RemoveRecipient(String),
    /// The reverse path; empty is the null sender.
    ChangeSender(String),
}

/// A stage's answer to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub verdict: Verdict,
    /// Header changes; at `headers` they apply before the next stage sees the header section,
    /// at `end` they apply to the header section before relay.
    pub header_changes: Vec<HeaderChange>,
    pub body: BodyOutput,
    /// Envelope changes; honoured at `end` only.
    pub envelope: Vec<EnvelopeChange>,
}

impl Reaction {
    /// Whether this answer changes the message: header changes, or bytes of its own for the body.
    pub fn edits(&self) -> bool {
        !self.header_changes.is_empty() || !self.envelope.is_empty() || matches!(self.body, BodyOutput::Replace(_))
    }

    /// The answer in a few words, for the `filters` trace (the body bytes themselves are not
    /// shown): `continue, 2 header changes, body replaced by 3 chunks (120 bytes)`.
    pub fn summary(&self) -> String {
        let mut text = self.verdict.summary();
        if !self.header_changes.is_empty() {
            text.push_str(&format!(", {} header changes", self.header_changes.len()));
        }
        if let BodyOutput::Replace(chunks) = &self.body {
            let bytes: usize = chunks.iter().map(Bytes::len).sum();
            text.push_str(&format!(", body replaced by {} chunks ({bytes} bytes)", chunks.len()));
        }
        if !self.envelope.is_empty() {
            text.push_str(&format!(", {} envelope changes", self.envelope.len()));
        }
        text
    }

    pub fn verdict(verdict: Verdict) -> Reaction {
        Reaction { verdict, header_changes: Vec::new(), body: BodyOutput::Pass, envelope: Vec::new() }
    }

    pub fn carry_on() -> Reaction {
        Reaction::verdict(Verdict::Continue)
    }

    /// Adds a header field (at `end`: to the message as relayed).
    pub fn add_header(mut self, name: &str, value: &str) -> Reaction {
        self.header_changes.push(HeaderChange::Add { name: name.into(), value: value.into() });
        self
    }
}

/// The envelope events, in the order a stage receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeEvent {
    Connect { peer: SocketAddr },
    Helo { name: String },
    MailFrom { address: String },
    RcptTo { address: String },
}

impl EnvelopeEvent {
    pub fn kind(&self) -> StageEvent {
        match self {
            EnvelopeEvent::Connect { .. } => StageEvent::Connect,
            EnvelopeEvent::Helo { .. } => StageEvent::Helo,
            EnvelopeEvent::MailFrom { .. } => StageEvent::Mail,
            EnvelopeEvent::RcptTo { .. } => StageEvent::Rcpt,
        }
    }
}

/// The kinds of event a stage receives (also their names in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageEvent {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Headers,
    Body,
    End,
}

impl StageEvent {
    /// The event's name, as the config spells it.
    pub fn name(&self) -> &'static str {
        match self {
            StageEvent::Connect => "connect",
            StageEvent::Helo => "helo",
            StageEvent::Mail => "mail",
            StageEvent::Rcpt => "rcpt",
            StageEvent::Headers => "headers",
            StageEvent::Body => "body",
            StageEvent::End => "end",
        }
    }
}

/// The set of events a stage wants; the runner skips calls for the others (as if the stage had
/// answered continue and pass), so a headers-only filter never sees the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interests(u8);

impl Interests {
    pub const ALL: Interests = Interests(0x7f);

    pub fn of(events: &[StageEvent]) -> Interests {
        Interests(events.iter().fold(0, |bits, &event| bits | Self::bit(event)))
    }

    /// These interests without `event`.
    pub fn without(self, event: StageEvent) -> Interests {
        Interests(self.0 & !Self::bit(event))
    }

    pub fn wants(self, event: StageEvent) -> bool {
        self.0 & Self::bit(event) != 0
    }

    fn bit(event: StageEvent) -> u8 {
        1 << event as u8
    }
}

/// Why a stage call failed; the stage's `on_error` policy decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error("stage failed: {0}")]
    Failed(String),
    #[error("stage did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("malformed answer: {0}")]
    Malformed(#[from] Malformed),
    #[error("stage task ended unexpectedly")]
    Died,
}

impl StageError {
    /// Every cause, as `cause` names them.
    pub const CAUSES: [&'static str; 4] = ["failed", "timeout", "malformed", "died"];

    /// The failure cause as a metric label.
    pub fn cause(&self) -> &'static str {
        match self {
            StageError::Failed(_) => "failed",
            StageError::Timeout(_) => "timeout",
            StageError::Malformed(_) => "malformed",
            StageError::Died => "died",
        }
    }
}

/// One transaction's instance of a stage. Every call is bounded by the stage's timeout.
#[async_trait]
pub trait Stage: Send {
    /// The events this instance wants; the others are skipped.
    fn interests(&self) -> Interests {
        Interests::ALL
    }

    async fn envelope(&mut self, event: &EnvelopeEvent) -> Result<Verdict, StageError>;
    async fn headers(&mut self, headers: &HeaderSection) -> Result<Reaction, StageError>;
    async fn body(&mut self, chunk: Bytes) -> Result<Reaction, StageError>;
    async fn end(&mut self) -> Result<Reaction, StageError>;

    /// Counts the host's work on this instance's last answer (checking it, applying its header
    /// changes, normalising its body) against the stage's time budget for the message, if it has
    /// one; an exhausted budget is a failure like a slow call.
    fn charge(&mut self, _host_work: std::time::Duration) -> Result<(), StageError> {
        Ok(())
    }
}

/// Per-message facts a stage instance may use.
#[derive(Clone)]
pub struct MessageContext {
    /// Becomes true once the client's end of data has been read.
    pub end_of_data: EndOfData,
    /// The transaction's id, as its log line shows it (a milter's queue id macro, `i`).
    pub transaction_id: String,
    /// What stages keep for the client session, across its transactions.
    pub session: SessionSlots,
}

/// Per-session state of stages, one slot per stage factory (`slot_id`): taken by a transaction's
/// instance, given back when it is done with it, dropped with the session. A reload makes new
/// factories with new ids, so nothing of an old generation is taken by a new one.
#[derive(Clone, Default)]
pub struct SessionSlots(Arc<Mutex<HashMap<u64, Box<dyn Any + Send>>>>);

impl SessionSlots {
    pub fn take<T: Any + Send>(&self, slot: u64) -> Option<T> {
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let value = slots.remove(&slot)?;
        value.downcast::<T>().ok().map(|boxed| *boxed)
    }

    pub fn give<T: Any + Send>(&self, slot: u64, value: T) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(slot, Box::new(value));
    }
}

/// A process-unique id for a stage factory's session slot.
pub fn slot_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Makes a fresh `Stage` per transaction.
pub trait StageFactory: Send + Sync {
    fn instantiate(&self, context: &MessageContext) -> Result<Box<dyn Stage>, StageError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interests() {
        let headers_only = Interests::of(&[StageEvent::Headers, StageEvent::End]);
        assert!(headers_only.wants(StageEvent::Headers) && headers_only.wants(StageEvent::End));
        assert!(!headers_only.wants(StageEvent::Body) && !headers_only.wants(StageEvent::Connect));
        assert!(Interests::ALL.wants(StageEvent::Rcpt));
        let no_body = Interests::ALL.without(StageEvent::Body);
        assert!(!no_body.wants(StageEvent::Body) && no_body.wants(StageEvent::End));
    }
}
