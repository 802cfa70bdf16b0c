//! The filter chain: an ordered list of stages from the config. The envelope phase runs stage by
//! stage in the session task (each command waits for its verdicts); the content phase runs every
//! stage concurrently on its own inbox (`runner`). A stage's failure becomes its `on_error` verdict.
//! Every answer is checked at the host boundary (`answer`) before it counts; a malformed one is a
//! failure.
//!
//! Verdict folding (`decision`), independent of timing: the earliest stage in chain order that ends
//! the message — reject, tempfail, discard, or a failure's `on_error` verdict — wins. Stages after
//! it are no longer called; stages before it still see the whole message and may still win. So the
//! answer is that of the lowest-index stage that decides on the full content, whichever answered
//! first; the client's remaining content is dropped only once no earlier stage can still decide.

pub mod answer;
pub mod decision;
pub mod envelope_edit;
mod field;
pub mod headers;
pub mod runner;
pub mod stage;
pub mod test_stage;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, trace, warn};

use crate::config::stages::StageKind;
use crate::flow::gate::FlowHandle;
use crate::metrics::{Metrics, StageMeters};
use crate::smtp::reply::Reply;
use crate::spool::Spool;
use answer::{ContentRules, Malformed};
use decision::Decision;
use runner::{ContentRun, EndOfData, RunningStage, Standing};
use stage::{EnvelopeEvent, MessageContext, SessionSlots, Stage, StageError, StageEvent, StageFactory, Verdict};

/// What a stage's failure (error, timeout, trap, bad answer) does to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// 451: the client retries later (the default: nothing is lost, nothing unchecked passes).
    #[default]
    Tempfail,
    /// Skip the stage for this message and log it (fail open).
    Accept,
    /// 554: refuse the message.
    Reject,
}

impl OnError {
    /// The policy as the config spells it.
    pub fn name(&self) -> &'static str {
        match self {
            OnError::Tempfail => "tempfail",
            OnError::Accept => "accept",
            OnError::Reject => "reject",
        }
    }
}

pub struct StageSpec {
    pub name: String,
    /// What the stage is (wasm filter, clamd bridge, test stage), as the admin API shows it.
    pub kind: StageKind,
    pub on_error: OnError,
    /// Bound on every single call into the stage.
    pub timeout: Duration,
    /// What the stage's content answers are held to.
    pub content: ContentRules,
    pub factory: Box<dyn StageFactory>,
    pub metrics: Arc<Metrics>,
    /// This stage's call meters in `metrics`.
    pub meters: StageMeters,
}

/// What a stage call answers, in a few words for the `filters` trace.
pub(crate) trait Answer {
    fn summary(&self) -> String;
}

impl Answer for Verdict {
    fn summary(&self) -> String {
        Verdict::summary(self)
    }
}

impl Answer for stage::Reaction {
    fn summary(&self) -> String {
        stage::Reaction::summary(self)
    }
}

/// Calls into a stage with its time bound; a panic inside the stage is a failure, not a crash.
/// Traced (`-T filters`) with the event, the answer and the time it took.
pub(crate) async fn call<T: Answer>(
    spec: &StageSpec,
    event: StageEvent,
    call: impl Future<Output = Result<T, StageError>>,
) -> Result<T, StageError> {
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(spec.timeout, AssertUnwindSafe(call).catch_unwind()).await {
        Err(_) => Err(StageError::Timeout(spec.timeout)),
        Ok(Err(_panic)) => Err(StageError::Failed("stage panicked".into())),
        Ok(Ok(result)) => result,
    };
    let took = started.elapsed();
    // The answer's summary is only worth its allocation when someone traces filters.
    if tracing::enabled!(target: "sluice::filters", tracing::Level::TRACE) {
        let answer = match &result {
            Ok(answer) => answer.summary(),
            Err(err) => format!("failed: {err}"),
        };
        let micros = took.as_micros() as u64;
        trace!(target: "sluice::filters", stage = %spec.name, event = event.name(), answer = answer.as_str(), micros, "call");
    }
    spec.meters.call(took);
    if let Err(err) = &result {
        spec.metrics.stage_failure(&spec.name, err.cause());
    }
    result
}

/// A failure found in a stage's answer after its call returned, counted like a failed call.
pub(crate) fn failed_answer(spec: &StageSpec, err: impl Into<StageError>) -> StageError {
    let err = err.into();
    spec.metrics.stage_failure(&spec.name, err.cause());
    err
}

/// Asks a stage whether it wants `event`. `interests` is the stage's own code, like its calls, so
/// a panic in it is the stage's failure (counted here), not a crash of the session.
pub(crate) fn interested(spec: &StageSpec, stage: &dyn Stage, event: StageEvent) -> Result<bool, StageError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| stage.interests().wants(event))).map_err(|_panic| {
        let err = StageError::Failed("stage panicked in interests()".into());
        spec.metrics.stage_failure(&spec.name, err.cause());
        err
    })
}

/// Answer to an envelope command after the chain has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeOutcome {
    Continue,
    Refuse(Reply),
}

#[derive(Default)]
pub struct Chain {
    stages: Vec<Arc<StageSpec>>,
}

impl Chain {
    pub fn new(stages: Vec<StageSpec>) -> Chain {
        Chain { stages: stages.into_iter().map(Arc::new).collect() }
    }

    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name.clone()).collect()
    }

    pub fn stages(&self) -> impl Iterator<Item = &StageSpec> {
        self.stages.iter().map(Arc::as_ref)
    }

    /// Starts a transaction: fresh stage instances, then connect, helo and mail events.
    /// `transaction_id` names it in logs; `session` is what stages keep for the client session.
    pub async fn begin(
        &self,
        peer: SocketAddr,
        helo: &str,
        mail_from: &str,
        transaction_id: &str,
        session: &SessionSlots,
    ) -> (Transaction, EnvelopeOutcome) {
        let (end_sender, end_of_data) = EndOfData::channel();
        let context =
            MessageContext { end_of_data, transaction_id: transaction_id.to_string(), session: session.clone() };
        let mut stages = Vec::new();
        let mut refusal = None;
        let mut refused_by = None;
        for spec in &self.stages {
            match spec.factory.instantiate(&context) {
                Ok(instance) => stages.push(RunningStage::new(spec.clone(), instance)),
                Err(err) => {
                    warn!(target: "sluice::filters", stage = %spec.name, error = %err, "cannot instantiate stage");
                    match spec.on_error.verdict(&spec.name, false) {
                        None => {}
                        Some(Verdict::Reject(reply) | Verdict::Tempfail(reply)) if refusal.is_none() => {
                            refused_by = Some((spec.name.clone(), format!("cannot instantiate ({err})")));
                            refusal = Some(reply);
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        let decision = Arc::new(Decision::new(stages.iter().map(|s| s.spec.name.clone()).collect()));
        let mut transaction = Transaction { stages, decision, end_of_data: end_sender, refused_by };
        if let Some(reply) = refusal {
            return (transaction, EnvelopeOutcome::Refuse(reply));
        }
        let events = [
            EnvelopeEvent::Connect { peer },
            EnvelopeEvent::Helo { name: helo.to_string() },
            EnvelopeEvent::MailFrom { address: mail_from.to_string() },
        ];
        for event in events {
            let outcome = transaction.envelope(&event).await;
            if outcome != EnvelopeOutcome::Continue {
                return (transaction, outcome);
            }
        }
        (transaction, EnvelopeOutcome::Continue)
    }
}

/// One transaction's stage instances, from MAIL to the end of the message.
pub struct Transaction {
    stages: Vec<RunningStage>,
    decision: Arc<Decision>,
    end_of_data: watch::Sender<bool>,
    /// The stage that refused MAIL (or the transaction's instantiation), and why.
    refused_by: Option<(String, String)>,
}

impl Transaction {
    /// The stage that refused the envelope, and why (for the transaction's log line).
    pub fn refused_by(&self) -> Option<&(String, String)> {
        self.refused_by.as_ref()
    }

    pub async fn rcpt(&mut self, to: &str) -> EnvelopeOutcome {
        self.envelope(&EnvelopeEvent::RcptTo { address: to.to_string() }).await
    }

    /// Runs one envelope event through the active stages in order.
    async fn envelope(&mut self, event: &EnvelopeEvent) -> EnvelopeOutcome {
        for (index, stage) in self.stages.iter_mut().enumerate() {
            if stage.standing != Standing::Active || !self.decision.reaches(index) {
                continue;
            }
            let spec = stage.spec.clone();
            let result = match interested(&spec, stage.instance.as_ref(), event.kind()) {
                Ok(false) => continue,
                Ok(true) => call(&spec, event.kind(), stage.instance.envelope(event))
                    .await
                    .and_then(|verdict| answer::verdict(verdict).map_err(|err: Malformed| failed_answer(&spec, err))),
                Err(err) => Err(err),
            };
            if let Ok(verdict) = &result {
                spec.metrics.stage_verdict(&spec.name, verdict.kind());
            }
            match result {
                Ok(Verdict::Continue) => {}
                Ok(Verdict::Accept) => {
                    stage.standing = Standing::Accepted;
                    self.decision.close(index);
                }
                Ok(Verdict::Reject(reply) | Verdict::Tempfail(reply)) => {
                    info!(target: "sluice::filters", stage = %spec.name, event = event.kind().name(), reply = reply.summary().as_str(), "envelope refused");
                    let verdict = if reply.is_transient() { "tempfail" } else { "reject" };
                    self.refused_by =
                        Some((spec.name.clone(), format!("{verdict} verdict at {}", event.kind().name())));
                    return EnvelopeOutcome::Refuse(reply);
                }
                Ok(Verdict::Discard) => {
                    info!(target: "sluice::filters", stage = %spec.name, event = event.kind().name(), "message will be discarded");
                    self.decision.decide(&spec.name, Verdict::Discard, "discard verdict");
                }
                Err(err) => {
                    warn!(target: "sluice::filters", stage = %spec.name, event = event.kind().name(), error = %err, on_error = spec.on_error.name(), "stage failed");
                    match spec.on_error.verdict(&spec.name, false) {
                        None => {
                            stage.standing = Standing::Bypassed;
                            self.decision.close(index);
                        }
                        Some(Verdict::Reject(reply) | Verdict::Tempfail(reply)) => {
                            let policy = spec.on_error.name();
                            self.refused_by = Some((spec.name.clone(), format!("failed ({err}); on_error = {policy}")));
                            return EnvelopeOutcome::Refuse(reply);
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        EnvelopeOutcome::Continue
    }

    /// Starts the content phase: the stages run concurrently from here on.
    pub fn start_content(self, spool: Spool, flow: Arc<FlowHandle>) -> ContentRun {
        ContentRun::start(self.stages, spool, flow, self.decision, self.end_of_data)
    }
}
