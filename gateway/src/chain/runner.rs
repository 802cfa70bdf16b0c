//! The content phase of a transaction: one task per stage, each draining its own inbox
//! concurrently with the others and feeding the next, the last feeding the spool. Inboxes report
//! queued and drained bytes to the session's flow controller; a stage task that ends for any
//! reason reports its inbox gone, so a dead stage can never leave the client paused.
//!
//! Each inbox's sending side is owned only by the task upstream of it (the session for stage 0),
//! so when a task ends — at `End`, by a panic, or aborted — its successor's inbox closes once
//! drained and the successor ends too: the tasks always end, and `finish` waits for nothing else.
//! A panic anywhere in a stage task is that stage's failure, handled by its `on_error` policy.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

use super::answer::{ContentAnswers, Malformed};
use super::decision::Decision;
use super::headers::{BodyOpening, HeaderChange, HeaderSection, HeaderSplitter};
use super::stage::{BodyOutput, EnvelopeChange, Reaction, Stage, StageError, StageEvent, Verdict};
use super::{call, failed_answer, interested, OnError, StageSpec};
use crate::flow::gate::{FlowHandle, MessageFlow};
use crate::flow::FlowEvent;
use crate::smtp::reply::Reply;
use crate::spool::Spool;

/// What moves between stages.
#[derive(Debug)]
pub enum Item {
    Headers(HeaderSection),
    Body(Bytes),
    /// End of content, with the changes stages asked for at their end.
    End(LateChanges),
}

/// What stages ask to change at their end, gathered down the chain in chain order.
#[derive(Debug, Default)]
pub struct LateChanges {
    pub headers: Vec<HeaderChange>,
    pub envelope: Vec<EnvelopeChange>,
}

impl Item {
    fn event(&self) -> StageEvent {
        match self {
            Item::Headers(_) => StageEvent::Headers,
            Item::Body(_) => StageEvent::Body,
            Item::End(_) => StageEvent::End,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Item::Headers(section) => section.len() as u64,
            Item::Body(chunk) => chunk.len() as u64,
            Item::End(_) => 0,
        }
    }
}

/// The sending side of a stage's (or the spool's) inbox, accounting bytes to the flow controller.
/// Not `Clone`: the one task upstream owns it, so the inbox closes when that task ends.
struct Inbox {
    index: usize,
    sender: mpsc::UnboundedSender<Item>,
    flow: MessageFlow,
}

impl Inbox {
    fn send(&self, item: Item) {
        // Counted before it can be drained; a gone consumer's bytes are ignored by the controller.
        self.flow.report(FlowEvent::Queued { inbox: self.index, bytes: item.bytes() });
        let _ = self.sender.send(item);
    }
}

/// The receiving side of an inbox, owned by its consumer task. Dropped — however the task ends,
/// even aborted — it reports the inbox gone, so its bytes no longer count as held by a live stage.
struct Mailbox {
    index: usize,
    items: mpsc::UnboundedReceiver<Item>,
    flow: MessageFlow,
}

impl Mailbox {
    /// The next item; None once the inbox is drained and the task upstream has ended. The
    /// consumer works on it until it reports it `drained`.
    async fn recv(&mut self) -> Option<Item> {
        let item = self.items.recv().await?;
        self.flow.taken(self.index);
        Some(item)
    }

    fn drained(&self, bytes: u64) {
        self.flow.report(FlowEvent::Drained { inbox: self.index, bytes });
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.flow.report(FlowEvent::InboxGone { inbox: self.index });
    }
}

/// A new inbox: the sending side for the task upstream, the receiving side for its consumer.
fn inbox(index: usize, flow: &MessageFlow) -> (Inbox, Mailbox) {
    let (sender, items) = mpsc::unbounded_channel();
    (Inbox { index, sender, flow: flow.clone() }, Mailbox { index, items, flow: flow.clone() })
}

/// Set once the client's end of data has been read (stages may wait for it).
#[derive(Clone)]
pub struct EndOfData(watch::Receiver<bool>);

impl EndOfData {
    pub fn channel() -> (watch::Sender<bool>, EndOfData) {
        let (sender, receiver) = watch::channel(false);
        (sender, EndOfData(receiver))
    }

    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|read| *read).await;
    }
}

/// A stage's standing within one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Called for every event.
    Active,
    /// Said accept: passes the message on without being called.
    Accepted,
    /// Failed with `on_error = accept`: skipped, message passes.
    Bypassed,
}

pub struct RunningStage {
    pub spec: Arc<StageSpec>,
    pub instance: Box<dyn Stage>,
    pub standing: Standing,
    /// Whether an answer of this stage has changed the message (a header change or body bytes
    /// of its own) and gone on down the chain: then it can no longer fail open.
    pub edited: bool,
}

impl RunningStage {
    pub fn new(spec: Arc<StageSpec>, instance: Box<dyn Stage>) -> RunningStage {
        RunningStage { spec, instance, standing: Standing::Active, edited: false }
    }
}

/// The content phase as the session driver sees it.
/// Where the content stands with respect to its header section.
enum Head {
    /// Still looking for the end of the header section.
    Splitting(HeaderSplitter),
    /// The section went to the first stage; the rest is body.
    Passed,
    /// The section outgrew what the splitter holds: the content is dropped and refused with this.
    Refused(Reply),
}

pub struct ContentRun {
    head: Head,
    /// The header section's Message-ID field, once the section is split off (for the log).
    message_id: Option<String>,
    first: Inbox,
    flow: MessageFlow,
    decision: Arc<Decision>,
    end_of_data: watch::Sender<bool>,
    spooled: oneshot::Receiver<std::io::Result<(Spool, Vec<EnvelopeChange>)>>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the content phase gives the session at its end.
pub struct Finished {
    pub outcome: ContentOutcome,
    /// The message's Message-ID field, for the transaction's log line.
    pub message_id: Option<String>,
}

/// How the content phase ended.
pub enum ContentOutcome {
    /// Relay the spooled message, with the envelope changes stages asked for, in chain order.
    Deliver(Spool, Vec<EnvelopeChange>),
    /// A stage's final verdict (reject, tempfail or discard), the stage's name and why it decided.
    Decided { stage: String, verdict: Verdict, reason: String },
    /// The spool or a stage task failed unexpectedly.
    Failed(String),
}

impl ContentRun {
    /// Spawns the stage tasks and the spool task.
    pub fn start(
        stages: Vec<RunningStage>,
        spool: Spool,
        flow: Arc<FlowHandle>,
        decision: Arc<Decision>,
        end_of_data: watch::Sender<bool>,
    ) -> ContentRun {
        let mut names: Vec<String> = stages.iter().map(|s| s.spec.name.clone()).collect();
        names.push("spool".into());
        let flow = flow.start_message(names);
        if decision.is_decided() {
            // Decided for good in the envelope phase (discard): the content is read and dropped.
            flow.report(FlowEvent::EarlyVerdict);
        }
        let span = tracing::Span::current();
        let (done_tx, spooled) = oneshot::channel();
        let (mut next, mailbox) = inbox(stages.len(), &flow);
        let mut tasks = vec![tokio::spawn(spool_task(mailbox, spool, done_tx).instrument(span.clone()))];
        for (index, stage) in stages.into_iter().enumerate().rev() {
            let (inbox, mailbox) = inbox(index, &flow);
            let task = stage_task(mailbox, stage, next, decision.clone());
            tasks.push(tokio::spawn(task.instrument(span.clone())));
            next = inbox;
        }
        ContentRun {
            head: Head::Splitting(HeaderSplitter::default()),
            message_id: None,
            first: next,
            flow,
            decision,
            end_of_data,
            spooled,
            tasks,
        }
    }

    /// Passes message bytes into the chain (dropped once the chain has decided).
    pub fn push(&mut self, bytes: Vec<u8>) {
        if self.decision.is_decided() {
            return;
        }
        match &mut self.head {
            Head::Splitting(splitter) => {
                if let Some((section, rest)) = splitter.push(&bytes) {
                    self.head = Head::Passed;
                    self.pass_head(section, rest);
                } else if splitter.overflowed() {
                    // The session refuses such a message before it gets here; should one slip
                    // through, it is refused rather than passed on cut. No stage has seen any of
                    // it, so no stage's verdict is involved.
                    self.head = Head::Refused(Reply::new(552, "5.3.4", "Message header section exceeds fixed limit"));
                    self.flow.report(FlowEvent::EarlyVerdict);
                }
            }
            Head::Passed => self.first.send(Item::Body(Bytes::from(bytes))),
            Head::Refused(_) => {}
        }
    }

    /// The header section goes to the first stage, then the body bytes read with it.
    fn pass_head(&mut self, section: HeaderSection, rest: Vec<u8>) {
        self.message_id = section.get("Message-ID").map(|id| id.trim().to_string());
        self.first.send(Item::Headers(section));
        if !rest.is_empty() {
            self.first.send(Item::Body(Bytes::from(rest)));
        }
    }

    /// Ends the content and waits for every stage and the spool.
    pub async fn finish(mut self) -> Finished {
        let outcome = self.outcome().await;
        Finished { outcome, message_id: self.message_id.take() }
    }

    async fn outcome(&mut self) -> ContentOutcome {
        if let Head::Refused(reply) = &self.head {
            self.flow.report(FlowEvent::EndOfMessage);
            let reason = "header section beyond what the chain holds".to_string();
            return ContentOutcome::Decided {
                stage: "headers".into(),
                verdict: Verdict::Reject(reply.clone()),
                reason,
            };
        }
        if let Head::Splitting(mut splitter) = std::mem::replace(&mut self.head, Head::Passed) {
            let (section, rest) = splitter.finish();
            self.pass_head(section, rest);
        }
        self.first.send(Item::End(LateChanges::default()));
        self.end_of_data.send_replace(true);
        self.flow.report(FlowEvent::EndOfMessage);
        // Every task ends: stage 0 at the End just sent (or earlier, failing), each later task at
        // its End or when its inbox closes behind the task before it (calls are time-bounded).
        // Waiting for all of them, not only the spool, makes the verdict final: every stage that
        // could still decide has.
        for task in &mut self.tasks {
            let _ = task.await;
        }
        if let Some((stage, verdict)) = self.decision.get() {
            return ContentOutcome::Decided { stage, verdict, reason: self.decision.reason() };
        }
        match self.spooled.try_recv() {
            Ok(Ok((spool, envelope))) => ContentOutcome::Deliver(spool, envelope),
            Ok(Err(err)) => ContentOutcome::Failed(format!("spool error: {err}")),
            // The End never reached the spool: a stage task died and its content is incomplete.
            Err(_) => ContentOutcome::Failed("a stage task ended unexpectedly".into()),
        }
    }
}

impl Drop for ContentRun {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.flow.report(FlowEvent::MessageDone);
    }
}

async fn spool_task(
    mut inbox: Mailbox,
    mut spool: Spool,
    done: oneshot::Sender<std::io::Result<(Spool, Vec<EnvelopeChange>)>>,
) {
    let mut head = HeaderSection::default();
    let mut opening = BodyOpening::default();
    let mut result = Ok(());
    while let Some(item) = inbox.recv().await {
        let bytes = item.bytes();
        match item {
            Item::Headers(section) => head = section,
            Item::Body(chunk) if result.is_ok() => {
                opening.see(&chunk);
                result = spool.write(&chunk).await;
            }
            Item::Body(_) => {}
            Item::End(changes) => {
                head.apply(&changes.headers);
                head.close_before(&opening);
                spool.set_head(head.to_bytes());
                let _ = done.send(result.map(|()| (spool, changes.envelope)));
                inbox.drained(bytes);
                return;
            }
        }
        inbox.drained(bytes);
    }
}

/// One stage's task. A panic anywhere in it is the stage's failure: inside the stage's own code
/// (its calls, its `interests`) the item still passes on, so with `on_error = "accept"` the message
/// reaches the spool intact; elsewhere the task ends without passing its item on, so the verdict
/// is the `on_error` one, or — with accept — the chain's failure (451), never damaged content.
async fn stage_task(mailbox: Mailbox, mut stage: RunningStage, next: Inbox, decision: Arc<Decision>) {
    let (index, flow) = (mailbox.index, mailbox.flow.clone());
    let passed = AssertUnwindSafe(pass_items(mailbox, &mut stage, next, decision.clone())).catch_unwind().await;
    if passed.is_err() {
        let err = StageError::Died;
        stage.spec.metrics.stage_failure(&stage.spec.name, err.cause());
        settle(&mut stage, Err(err), &decision, &flow);
    }
    if decision.close(index) {
        flow.report(FlowEvent::EarlyVerdict);
    }
}

/// Takes the stage's items in order, calls the stage for those it wants, checks its answers and
/// passes the result on; returns after `End`, or when the inbox closed without it (the task
/// upstream died).
async fn pass_items(mut inbox: Mailbox, stage: &mut RunningStage, next: Inbox, decision: Arc<Decision>) {
    let mut answers = ContentAnswers::new(stage.spec.content);
    while let Some(item) = inbox.recv().await {
        let bytes = item.bytes();
        let end = matches!(item, Item::End(_));
        let called = wants(stage, item.event(), inbox.index, &decision, &inbox.flow);
        match item {
            Item::Headers(mut section) => {
                if called {
                    let result = call(&stage.spec, StageEvent::Headers, stage.instance.headers(&section)).await;
                    let result = host_work(stage, result, |reaction| answers.headers(reaction, &section));
                    let result = result.map(|(reaction, changed)| {
                        section = changed;
                        reaction
                    });
                    let reaction = settle(stage, result, &decision, &inbox.flow);
                    stage.edited |= reaction.edits();
                }
                next.send(Item::Headers(section));
            }
            Item::Body(chunk) if decision.reaches(inbox.index) => {
                // Every chunk goes through the stage's answers, called or not: once its output
                // differed from its input, what it passes on must be normalised with the rest.
                let reaction = match called {
                    true => {
                        let result = call(&stage.spec, StageEvent::Body, stage.instance.body(chunk.clone())).await;
                        let result = host_work(stage, result, |reaction| answers.body(&chunk, reaction));
                        settle(stage, result, &decision, &inbox.flow)
                    }
                    false => answers.body(&chunk, Reaction::carry_on()).unwrap_or_else(|err| {
                        let err = failed_answer(&stage.spec, err);
                        settle(stage, Err(err), &decision, &inbox.flow)
                    }),
                };
                if decision.reaches(inbox.index) {
                    // A failed stage's answer is `carry_on`: its input goes on unchanged, and it
                    // failed open only if it had changed nothing before (`OnError::verdict`).
                    stage.edited |= reaction.edits();
                    forward(&next, chunk, reaction.body);
                }
            }
            Item::Body(_) => {}
            Item::End(mut late) => {
                let reaction = match called {
                    true => {
                        let result = call(&stage.spec, StageEvent::End, stage.instance.end()).await;
                        let result = host_work(stage, result, |reaction| answers.end(reaction));
                        settle(stage, result, &decision, &inbox.flow)
                    }
                    false if decision.reaches(inbox.index) => answers.end(Reaction::carry_on()).unwrap_or_else(|err| {
                        let err = failed_answer(&stage.spec, err);
                        settle(stage, Err(err), &decision, &inbox.flow)
                    }),
                    false => Reaction::carry_on(),
                };
                late.headers.extend(reaction.header_changes);
                late.envelope.extend(reaction.envelope);
                if let BodyOutput::Replace(chunks) = reaction.body {
                    chunks.into_iter().filter(|c| !c.is_empty()).for_each(|chunk| next.send(Item::Body(chunk)));
                }
                next.send(Item::End(late));
            }
        }
        inbox.drained(bytes);
        if end {
            return;
        }
        if stage.standing != Standing::Active && decision.close(inbox.index) {
            inbox.flow.report(FlowEvent::EarlyVerdict);
        }
    }
}

/// Whether to call the stage for `event`: it is active, the message still matters to it (no stage
/// at or before it decided) and it wants the event — asking is the stage's code, and may fail.
fn wants(stage: &mut RunningStage, event: StageEvent, index: usize, decision: &Decision, flow: &MessageFlow) -> bool {
    if stage.standing != Standing::Active || !decision.reaches(index) {
        return false;
    }
    match interested(&stage.spec, stage.instance.as_ref(), event) {
        Ok(wanted) => wanted,
        Err(err) => {
            settle(stage, Err(err), decision, flow);
            false
        }
    }
}

fn forward(next: &Inbox, chunk: Bytes, output: BodyOutput) {
    match output {
        BodyOutput::Pass => next.send(Item::Body(chunk)),
        BodyOutput::Replace(chunks) => {
            chunks.into_iter().filter(|c| !c.is_empty()).for_each(|c| next.send(Item::Body(c)))
        }
    }
}

/// Checks a stage's answer at the host boundary, counting that work against the stage's time
/// budget: an answer cannot buy host time outside its stage's limits.
fn host_work<T>(
    stage: &mut RunningStage,
    result: Result<Reaction, StageError>,
    check: impl FnOnce(Reaction) -> Result<T, Malformed>,
) -> Result<T, StageError> {
    let started = Instant::now();
    let checked = check(result?);
    let charged = stage.instance.charge(started.elapsed());
    charged.and(checked.map_err(StageError::from)).map_err(|err| failed_answer(&stage.spec, err))
}

/// Applies a stage's checked answer, or its failure policy, to the message.
fn settle(
    stage: &mut RunningStage,
    result: Result<Reaction, StageError>,
    decision: &Decision,
    flow: &MessageFlow,
) -> Reaction {
    let spec = stage.spec.clone();
    match result {
        Ok(reaction) => {
            spec.metrics.stage_verdict(&spec.name, reaction.verdict.kind());
            match &reaction.verdict {
                Verdict::Continue => {}
                Verdict::Accept => stage.standing = Standing::Accepted,
                verdict => {
                    info!(target: "sluice::filters", stage = %spec.name, verdict = verdict.kind(), "content verdict");
                    if decision.decide(&spec.name, verdict.clone(), &format!("{} verdict", verdict.kind())) {
                        flow.report(FlowEvent::EarlyVerdict);
                    }
                }
            }
            reaction
        }
        Err(err) => {
            warn!(target: "sluice::filters", stage = %spec.name, error = %err, on_error = spec.on_error.name(), edited = stage.edited, "stage failed");
            match spec.on_error.verdict(&spec.name, stage.edited) {
                None => stage.standing = Standing::Bypassed,
                Some(verdict) => {
                    let reason = format!("failed ({err}); on_error = {}", spec.on_error.name());
                    if decision.decide(&spec.name, verdict, &reason) {
                        flow.report(FlowEvent::EarlyVerdict);
                    }
                }
            }
            Reaction::carry_on()
        }
    }
}

impl OnError {
    /// The verdict a failure turns into; None means "skip the stage" (fail open). `accept` drops
    /// the failed stage's edits: that is possible only while it has made none that went on down
    /// the chain (`edited`), since later stages judged them and the spool holds them. Once it has,
    /// failing open would relay a half-filtered message, so the failure is a tempfail instead.
    pub fn verdict(&self, stage: &str, edited: bool) -> Option<Verdict> {
        let tempfail =
            || Verdict::Tempfail(Reply::new(451, "4.3.0", format!("Filter {stage} unavailable; try again later")));
        match (self, edited) {
            (OnError::Accept, false) => None,
            (OnError::Accept, true) | (OnError::Tempfail, _) => Some(tempfail()),
            (OnError::Reject, _) => {
                Some(Verdict::Reject(Reply::new(554, "5.7.0", format!("Message refused by filter {stage} policy"))))
            }
        }
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
