//! One message's run of a wasm filter: a fresh instance in its own store, created on the first
//! call, every call bounded in CPU (epoch ticks, yielding to tokio between them) and the whole
//! message bounded in time: the wall time of its calls plus the host's work on its answers. A
//! trap or a limit hit poisons the instance: the stage fails and every later call fails at once;
//! the store is dropped with the stage. Answers are converted as given; `chain::answer` checks
//! them like every stage's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::metrics::histogram::Histogram;
use wasmtime::component::ResourceAny;
use wasmtime::{Store, StoreLimitsBuilder, Trap, UpdateDeadline};

use super::engine::{Ticking, TICK};
use super::host::bindings::exports::sluice::filter::handler::Interests as WitInterests;
use super::host::bindings::sluice::filter::types as wit;
use super::host::{bindings, State};
use super::WasmFilter;
use crate::chain::headers::{HeaderChange, HeaderSection};
use crate::chain::stage::{BodyOutput, EnvelopeEvent, Interests, Reaction, Stage, StageError, Verdict};
use crate::smtp::reply::Reply;

/// A live instance: store, bindings and the message resource.
pub(super) struct Instance {
    store: Store<State>,
    filter: bindings::FilterWithDns,
    message: Option<ResourceAny>,
    /// Where the instance's peak memory goes when it is dropped (a message's instance only).
    memory_peak: Option<Histogram>,
}

impl Instance {
    pub(super) async fn new(filter: &WasmFilter) -> Result<Instance, StageError> {
        let engine = filter.pre.engine();
        let limits = StoreLimitsBuilder::new()
            .memory_size(filter.limits.memory)
            // A clear trap instead of a failed allocation deep inside the guest.
            .trap_on_grow_failure(true)
            .build();
        let budget = (filter.limits.cpu_per_call.as_millis() / TICK.as_millis()).max(1) as u64;
        let mut store = Store::new(engine, State::new(filter.stage.clone(), filter.provisions.clone(), limits, budget));
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            state.ticks_used += 1;
            if state.ticks_used > state.tick_budget {
                return Ok(UpdateDeadline::Interrupt);
            }
            // Let other sessions run before continuing this busy guest.
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });
        let _ticking = arm(&mut store);
        let started = Instant::now();
        let instance = filter.pre.instantiate_async(&mut store).await;
        if let Some(histogram) = &filter.instantiation {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        let filter = instance.map_err(|err| failure(&store, err))?;
        Ok(Instance { store, filter, message: None, memory_peak: None })
    }

    /// The filter's verdict on its configuration (`validate-config`).
    pub(super) async fn validate_config(
        &mut self,
    ) -> Result<Result<wit::ConfigReport, wit::ConfigProblem>, StageError> {
        let _ticking = arm(&mut self.store);
        let result = self.filter.sluice_filter_handler().call_validate_config(&mut self.store).await;
        result.map_err(|err| failure(&self.store, err))
    }

    pub(super) async fn wants(&mut self) -> Result<WitInterests, StageError> {
        let _ticking = arm(&mut self.store);
        let result = self.filter.sluice_filter_handler().call_wants(&mut self.store).await;
        result.map_err(|err| failure(&self.store, err))
    }

    /// The message resource, constructed on first use.
    async fn message(&mut self) -> Result<ResourceAny, StageError> {
        if let Some(message) = self.message {
            return Ok(message);
        }
        let _ticking = arm(&mut self.store);
        let result = self.filter.sluice_filter_handler().message().call_constructor(&mut self.store).await;
        let message = result.map_err(|err| failure(&self.store, err))?;
        self.message = Some(message);
        Ok(message)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(histogram) = &self.memory_peak {
            histogram.observe(self.store.data().limits.peak as f64);
        }
    }
}

/// Resets the CPU budget for the next call; the epoch clock ticks while the guard is held.
fn arm(store: &mut Store<State>) -> Ticking {
    store.data_mut().ticks_used = 0;
    store.set_epoch_deadline(1);
    Ticking::start()
}

/// Describes a failed call: CPU or memory bound, trap, with the guest's stderr if it wrote any.
fn failure(store: &Store<State>, err: wasmtime::Error) -> StageError {
    let state = store.data();
    let what = match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            format!("exceeded its CPU limit ({} ms per call)", state.tick_budget * TICK.as_millis() as u64)
        }
        Some(trap) => format!("trapped: {trap}"),
        None => err.root_cause().to_string(),
    };
    tracing::debug!(target: "sluice::filters", stage = %state.stage, error = format!("{err:#}").as_str(), "filter failure in detail");
    let stderr = state.stderr.contents();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr: Vec<&str> =
        stderr.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note:")).collect();
    match stderr.is_empty() {
        true => StageError::Failed(what),
        false => StageError::Failed(format!("{what} ({})", stderr.join(" "))),
    }
}

enum Life {
    /// No instance yet (created at the first call).
    Unborn,
    Live(Box<Instance>),
    /// Trapped, hit a limit or ran out of time: unusable.
    Poisoned(StageError),
}

/// The `Stage` for one message.
pub struct WasmStage {
    filter: Arc<WasmFilter>,
    life: Life,
    /// What the message has cost so far, against `message_timeout`: the wall time of the calls
    /// (instantiation included) and the host's work on their answers — not the time spent
    /// waiting for the client between calls.
    spent: Duration,
}

impl WasmStage {
    pub fn new(filter: Arc<WasmFilter>) -> WasmStage {
        WasmStage { filter, life: Life::Unborn, spent: Duration::ZERO }
    }

    /// The message's run is out of time: the instance is unusable from now on.
    fn exhausted(&mut self) -> StageError {
        let err = StageError::Timeout(self.filter.limits.per_message);
        self.life = Life::Poisoned(err.clone());
        err
    }

    /// Runs one call with the message's remaining budget; any failure poisons the instance.
    async fn run<T>(
        &mut self,
        call: impl for<'a> FnOnce(
            &'a mut Instance,
            ResourceAny,
        ) -> futures_util::future::BoxFuture<'a, Result<T, StageError>>,
    ) -> Result<T, StageError> {
        if self.spent >= self.filter.limits.per_message {
            return Err(self.exhausted());
        }
        let remaining = self.filter.limits.per_message - self.spent;
        let filter = self.filter.clone();
        let started = Instant::now();
        let result = tokio::time::timeout(remaining, async {
            if matches!(self.life, Life::Unborn) {
                let mut instance = Instance::new(&filter).await?;
                instance.memory_peak = filter.memory_peak.clone();
                self.life = Life::Live(Box::new(instance));
            }
            match &mut self.life {
                Life::Live(instance) => {
                    instance.store.data_mut().deadline = Some(started + remaining);
                    let message = instance.message().await?;
                    let _ticking = arm(&mut instance.store);
                    call(instance, message).await
                }
                Life::Poisoned(err) => Err(err.clone()),
                Life::Unborn => unreachable!("instance created above"),
            }
        })
        .await
        .unwrap_or_else(|_| Err(StageError::Timeout(self.filter.limits.per_message)));
        self.spent += started.elapsed();
        if let Err(err) = &result {
            self.life = Life::Poisoned(err.clone());
        }
        result
    }
}

#[async_trait]
impl Stage for WasmStage {
    fn interests(&self) -> Interests {
        self.filter.interests()
    }

    fn charge(&mut self, host_work: Duration) -> Result<(), StageError> {
        self.spent += host_work;
        match self.spent > self.filter.limits.per_message {
            true => Err(self.exhausted()),
            false => Ok(()),
        }
    }

    async fn envelope(&mut self, event: &EnvelopeEvent) -> Result<Verdict, StageError> {
        let event = event.clone();
        let verdict = self
            .run(move |instance, message| {
                Box::pin(async move {
                    let handler = instance.filter.sluice_filter_handler();
                    let calls = handler.message();
                    let store = &mut instance.store;
                    let result = match &event {
                        EnvelopeEvent::Connect { peer } => {
                            calls.call_on_connect(&mut *store, message, &peer.to_string()).await
                        }
                        EnvelopeEvent::Helo { name } => calls.call_on_helo(&mut *store, message, name).await,
                        EnvelopeEvent::MailFrom { address } => {
                            calls.call_on_mail_from(&mut *store, message, address).await
                        }
                        EnvelopeEvent::RcptTo { address } => calls.call_on_rcpt_to(&mut *store, message, address).await,
                    };
                    result.map_err(|err| failure(store, err))
                })
            })
            .await?;
        Ok(verdict_from(verdict))
    }

    async fn headers(&mut self, headers: &HeaderSection) -> Result<Reaction, StageError> {
        let fields: Vec<wit::Header> = headers.fields().map(|(name, value)| wit::Header { name, value }).collect();
        // Only a filter that can ask for it (imports `raw`) gets the section's bytes.
        let section = if self.filter.reads_raw { headers.to_bytes() } else { Vec::new() };
        let reaction = self
            .run(move |instance, message| {
                Box::pin(async move {
                    instance.store.data_mut().header_section = section;
                    let handler = instance.filter.sluice_filter_handler();
                    let result = handler.message().call_on_headers(&mut instance.store, message, &fields).await;
                    result.map_err(|err| failure(&instance.store, err))
                })
            })
            .await?;
        Ok(reaction_from(reaction))
    }

    async fn body(&mut self, chunk: Bytes) -> Result<Reaction, StageError> {
        let reaction = self
            .run(move |instance, message| {
                Box::pin(async move {
                    let handler = instance.filter.sluice_filter_handler();
                    let result = handler.message().call_on_body_chunk(&mut instance.store, message, &chunk).await;
                    result.map_err(|err| failure(&instance.store, err))
                })
            })
            .await?;
        Ok(reaction_from(reaction))
    }

    async fn end(&mut self) -> Result<Reaction, StageError> {
        let reaction = self
            .run(|instance, message| {
                Box::pin(async move {
                    let handler = instance.filter.sluice_filter_handler();
                    let result = handler.message().call_on_end(&mut instance.store, message).await;
                    result.map_err(|err| failure(&instance.store, err))
                })
            })
            .await?;
        Ok(reaction_from(reaction))
    }
}

fn reply_from(reply: wit::SmtpReply) -> Reply {
    // The text is one line here; `chain::answer` splits it at line breaks and cuts it.
    Reply { code: reply.code, enhanced: Some(reply.enhanced), lines: vec![reply.text] }
}

fn verdict_from(verdict: wit::Verdict) -> Verdict {
    match verdict {
        wit::Verdict::Continue => Verdict::Continue,
        wit::Verdict::Accept => Verdict::Accept,
        wit::Verdict::Reject(reply) => Verdict::Reject(reply_from(reply)),
        wit::Verdict::Tempfail(reply) => Verdict::Tempfail(reply_from(reply)),
        wit::Verdict::Discard => Verdict::Discard,
    }
}

fn reaction_from(reaction: wit::Reaction) -> Reaction {
    let header_changes = reaction
        .header_changes
        .into_iter()
        .map(|change| match change {
            wit::HeaderChange::Add(h) => HeaderChange::Add { name: h.name, value: h.value },
            wit::HeaderChange::Prepend(h) => HeaderChange::Prepend { name: h.name, value: h.value },
            wit::HeaderChange::Change(h) => {
                HeaderChange::Change { name: h.name, index: h.index.max(1), value: h.value }
            }
            wit::HeaderChange::Remove(h) => HeaderChange::Remove { name: h.name, index: h.index },
        })
        .collect();
    let body = match reaction.body {
        wit::BodyOutput::Pass => BodyOutput::Pass,
        wit::BodyOutput::Replace(chunks) => BodyOutput::Replace(chunks.into_iter().map(Bytes::from).collect()),
    };
    Reaction { header_changes, body, ..Reaction::verdict(verdict_from(reaction.verdict)) }
}
