//! `FlowController`: the one place that decides to pause or resume reading a client socket.
//!
//! A pure state machine (events in, `Pause`/`Resume` out; no async, no clock), one per session.
//! Stage inboxes report bytes queued and drained; end-of-message, an early verdict, a stage that
//! died and the end of the session are events like the others. Pause at the high watermark,
//! resume at the low one (hysteresis), and resume unconditionally once the message no longer
//! needs the client's bytes throttled. This is the lesson of the OpenSMTPD 6.1 hang (see
//! `docs/architecture.md`): a resume that depends on which I/O callback happens to run gets lost.
//!
//! Which stage a pause is due to is not the controller's business: the gate (`gate.rs`) names
//! it from what the stages did while the reader was paused.
//!
//! Invariants (checked by the property tests below):
//! 1. paused ⇒ the message is being received and live inboxes hold queued bytes;
//! 2. `pauses - resumes` is 1 while paused and 0 otherwise;
//! 3. after end-of-message, an early verdict or the end of the session, the reader is not paused;
//! 4. only this controller produces `Resume` (the gate in `gate.rs` is written nowhere else).

pub mod behind;
pub mod gate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub high: u64,
    pub low: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEvent {
    /// A message's content starts; `inboxes` stage inboxes (the last is the spool's).
    MessageStart {
        inboxes: usize,
    },
    Queued {
        inbox: usize,
        bytes: u64,
    },
    Drained {
        inbox: usize,
        bytes: u64,
    },
    /// The inbox's consumer is gone (task ended or died): its bytes will never drain.
    InboxGone {
        inbox: usize,
    },
    /// The chain decided before the end: the rest of the body is read and discarded.
    EarlyVerdict,
    /// The client finished sending the content.
    EndOfMessage,
    /// The message is delivered or abandoned; its inboxes are gone.
    MessageDone,
    /// The client session ended.
    SessionEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowAction {
    /// Stop reading the client.
    Pause,
    Resume,
}

impl FlowEvent {
    /// The event's name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            FlowEvent::MessageStart { .. } => "message start",
            FlowEvent::Queued { .. } => "queued",
            FlowEvent::Drained { .. } => "drained",
            FlowEvent::InboxGone { .. } => "stage gone",
            FlowEvent::EarlyVerdict => "early verdict",
            FlowEvent::EndOfMessage => "end of message",
            FlowEvent::MessageDone => "message done",
            FlowEvent::SessionEnd => "session end",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("inbox {0} does not exist for this message")]
    UnknownInbox(usize),
    #[error("inbox {inbox} drained {bytes} bytes but held only {held}")]
    Overdrained { inbox: usize, bytes: u64, held: u64 },
    #[error("event \"{}\" after the session ended", .0.name())]
    AfterSessionEnd(FlowEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbox {
    Live(u64),
    Gone,
}

/// What the session is doing with message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between messages.
    Idle,
    /// Content is arriving and flows through the chain: the only phase that may pause.
    Receiving,
    /// Content still arrives but is discarded (the chain already decided).
    Discarding,
    /// The client sent the whole content; the chain may still be working.
    Ended,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Reading,
    Paused,
}

#[derive(Debug, Clone)]
pub struct FlowController {
    marks: Watermarks,
    inboxes: Vec<Inbox>,
    phase: Phase,
    reader: Reader,
    pauses: u64,
    resumes: u64,
}

impl FlowController {
    pub fn new(marks: Watermarks) -> FlowController {
        FlowController {
            marks,
            inboxes: Vec::new(),
            phase: Phase::Idle,
            reader: Reader::Reading,
            pauses: 0,
            resumes: 0,
        }
    }

    pub fn reader(&self) -> Reader {
        self.reader
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn pauses(&self) -> u64 {
        self.pauses
    }

    pub fn resumes(&self) -> u64 {
        self.resumes
    }

    /// Bytes queued per inbox (0 for gone ones).
    pub fn queued(&self) -> Vec<u64> {
        self.inboxes
            .iter()
            .map(|inbox| match inbox {
                Inbox::Live(n) => *n,
                Inbox::Gone => 0,
            })
            .collect()
    }

    /// Bytes queued in inboxes whose consumer can still drain them.
    pub fn live_queued(&self) -> u64 {
        self.queued().iter().sum()
    }

    /// The transition function: applies the event, then decides.
    pub fn handle(&mut self, event: FlowEvent) -> Result<Option<FlowAction>, FlowError> {
        if self.phase == Phase::Closed {
            return Err(FlowError::AfterSessionEnd(event));
        }
        match event {
            FlowEvent::MessageStart { inboxes } => {
                self.inboxes = vec![Inbox::Live(0); inboxes];
                self.phase = Phase::Receiving;
            }
            FlowEvent::Queued { inbox, bytes } => {
                if let Inbox::Live(held) = self.inbox(inbox)? {
                    *held += bytes;
                }
            }
            FlowEvent::Drained { inbox, bytes } => {
                if let Inbox::Live(held) = self.inbox(inbox)? {
                    if bytes > *held {
                        return Err(FlowError::Overdrained { inbox, bytes, held: *held });
                    }
                    *held -= bytes;
                }
            }
            FlowEvent::InboxGone { inbox } => *self.inbox(inbox)? = Inbox::Gone,
            FlowEvent::EarlyVerdict => {
                if self.phase == Phase::Receiving {
                    self.phase = Phase::Discarding;
                }
            }
            FlowEvent::EndOfMessage => {
                if matches!(self.phase, Phase::Receiving | Phase::Discarding) {
                    self.phase = Phase::Ended;
                }
            }
            FlowEvent::MessageDone => {
                self.inboxes.clear();
                self.phase = Phase::Idle;
            }
            FlowEvent::SessionEnd => {
                self.inboxes.clear();
                self.phase = Phase::Closed;
            }
        }
        Ok(self.decide())
    }

    fn inbox(&mut self, index: usize) -> Result<&mut Inbox, FlowError> {
        self.inboxes.get_mut(index).ok_or(FlowError::UnknownInbox(index))
    }

    /// Watermarks with hysteresis; every phase but `Receiving` releases the reader.
    fn decide(&mut self) -> Option<FlowAction> {
        let queued = self.live_queued();
        match self.reader {
            Reader::Paused if self.phase != Phase::Receiving || queued <= self.marks.low => {
                self.reader = Reader::Reading;
                self.resumes += 1;
                Some(FlowAction::Resume)
            }
            Reader::Reading if self.phase == Phase::Receiving && queued >= self.marks.high => {
                self.reader = Reader::Paused;
                self.pauses += 1;
                Some(FlowAction::Pause)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
