//! The shared side of flow control: `FlowHandle` wraps one session's `FlowController` for the
//! stage tasks that report into it and the reader that waits on it. The read gate is written only
//! here, from the controller's actions; everything else can only wait for it to open. It also
//! names the stage a pause is due to (`behind`), from the stage tasks' work while paused.
//! `FlowRegistry` makes the handles and keeps the gateway-wide counters; the session book
//! (`crate::sessions`) lists each session's flow state for the admin API.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use tokio::sync::watch;
use tracing::{debug, error};

use super::behind::Workload;
use super::{FlowAction, FlowController, FlowEvent, Reader, Watermarks};

/// Whether the client socket may be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    Closed,
}

/// Gateway-wide counters (`flow.pauses`, `flow.resumes`; paused now is their difference),
/// shared with the Prometheus registry.
#[derive(Debug, Default, Clone)]
pub struct FlowStats {
    pub pauses: Counter,
    pub resumes: Counter,
}

/// One session's flow state, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFlow {
    pub session: u64,
    pub paused: bool,
    /// The stage the pause is due to so far: the one that worked longest since it began.
    pub paused_by: Option<String>,
    /// Bytes queued per stage inbox of the current message.
    pub queued: Vec<(String, u64)>,
    pub pauses: u64,
    pub resumes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    pub pauses: u64,
    pub resumes: u64,
    pub paused_now: u64,
}

struct Inner {
    controller: FlowController,
    inbox_names: Vec<String>,
    /// Counts messages, so late events of a finished message's tasks are recognised.
    generation: u64,
    /// The stage tasks' work, to name the stage behind a pause.
    workload: Workload,
}

pub struct FlowHandle {
    session: u64,
    inner: Mutex<Inner>,
    gate: watch::Sender<Gate>,
    stats: Arc<FlowStats>,
}

/// One message's view of the session's flow: its events count only while it is current.
#[derive(Clone)]
pub struct MessageFlow {
    handle: Arc<FlowHandle>,
    generation: u64,
}

impl MessageFlow {
    pub fn report(&self, event: FlowEvent) {
        self.handle.report_for(Some(self.generation), event);
    }

    /// Inbox `inbox`'s task took an item to work on (its `Drained` says it is done).
    pub fn taken(&self, inbox: usize) {
        let mut inner = self.handle.lock();
        if inner.generation == self.generation {
            inner.workload.started(inbox, Instant::now());
        }
    }
}

impl FlowHandle {
    /// Starts a message's content through inboxes with these names (the last is the spool).
    pub fn start_message(self: &Arc<Self>, inbox_names: Vec<String>) -> MessageFlow {
        let inboxes = inbox_names.len();
        let generation = {
            let mut inner = self.lock();
            inner.inbox_names = inbox_names;
            inner.workload = Workload::new(inboxes);
            inner.generation += 1;
            inner.generation
        };
        self.report(FlowEvent::MessageStart { inboxes });
        MessageFlow { handle: self.clone(), generation }
    }

    /// Feeds a session-level event to the controller and carries out its action.
    pub fn report(&self, event: FlowEvent) {
        self.report_for(None, event);
    }

    fn report_for(&self, generation: Option<u64>, event: FlowEvent) {
        let mut inner = self.lock();
        if generation.is_some_and(|g| g != inner.generation) {
            // A finished message's stage task reporting late (e.g. its drop guard): not ours.
            return;
        }
        if event == FlowEvent::MessageDone {
            // The message's tasks may still report (drop guards): from now on they are not ours.
            inner.generation += 1;
        }
        let now = Instant::now();
        if let FlowEvent::Drained { inbox, .. } | FlowEvent::InboxGone { inbox } = event {
            inner.workload.finished(inbox, now);
        }
        let action = match inner.controller.handle(event) {
            Ok(action) => action,
            Err(err) => {
                // A bookkeeping bug must not strand the session: log it loudly and go on.
                error!(target: "sluice::flow", session = %format_args!("{:08x}", self.session), error = %err, "flow event rejected");
                return;
            }
        };
        match action {
            Some(FlowAction::Pause) => {
                self.stats.pauses.inc();
                inner.workload.paused(now);
                debug!(target: "sluice::flow", session = %format_args!("{:08x}", self.session), queued = inner.controller.live_queued(), "pause");
                self.gate.send_replace(Gate::Closed);
            }
            Some(FlowAction::Resume) => {
                self.stats.resumes.inc();
                let stage = inner.stage_behind(now);
                let paused_ms = inner.workload.resumed(now).as_millis() as u64;
                debug!(target: "sluice::flow", session = %format_args!("{:08x}", self.session), stage = %stage, paused_ms, queued = inner.controller.live_queued(), cause = event.name(), "resume");
                self.gate.send_replace(Gate::Open);
            }
            None => {}
        }
    }

    /// Waits until the controller allows reading the client.
    pub async fn wait_readable(&self) {
        let mut gate = self.gate.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we are borrowed.
        let _ = gate.wait_for(|gate| *gate == Gate::Open).await;
    }

    pub fn snapshot(&self) -> SessionFlow {
        let inner = self.lock();
        let controller = &inner.controller;
        let paused_by = match controller.reader() {
            Reader::Paused => Some(inner.stage_behind(Instant::now())),
            Reader::Reading => None,
        };
        SessionFlow {
            session: self.session,
            paused: paused_by.is_some(),
            paused_by,
            queued: inner.inbox_names.iter().cloned().zip(controller.queued()).collect(),
            pauses: controller.pauses(),
            resumes: controller.resumes(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// The name of the stage the current pause is due to so far.
    fn stage_behind(&self, now: Instant) -> String {
        let by = self.workload.behind(&self.controller.queued(), now);
        self.inbox_names.get(by).cloned().unwrap_or_default()
    }
}

impl Drop for FlowHandle {
    fn drop(&mut self) {
        // The session is over however it ended: release the reader so the counters balance.
        self.report(FlowEvent::SessionEnd);
    }
}

/// Makes the sessions' flow handles and keeps the gateway-wide counters. Each session's state
/// (`FlowHandle::snapshot`) is listed by the session book (`crate::sessions`).
#[derive(Default)]
pub struct FlowRegistry {
    stats: Arc<FlowStats>,
}

impl FlowRegistry {
    /// A registry counting into these (shared) counters.
    pub fn with_stats(stats: FlowStats) -> FlowRegistry {
        FlowRegistry { stats: Arc::new(stats) }
    }

    /// A flow handle for a new session.
    pub fn open(&self, session: u64, marks: Watermarks) -> Arc<FlowHandle> {
        Arc::new(FlowHandle {
            session,
            inner: Mutex::new(Inner {
                controller: FlowController::new(marks),
                inbox_names: Vec::new(),
                generation: 0,
                workload: Workload::default(),
            }),
            gate: watch::Sender::new(Gate::Open),
            stats: self.stats.clone(),
        })
    }

    /// The gateway-wide counters.
    pub fn report(&self) -> FlowReport {
        let pauses = self.stats.pauses.get();
        let resumes = self.stats.resumes.get();
        FlowReport { pauses, resumes, paused_now: pauses.saturating_sub(resumes) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gate_follows_the_controller_and_the_registry_reports() {
        let registry = FlowRegistry::default();
        let flow = registry.open(7, Watermarks { high: 100, low: 10 });
        let message = flow.start_message(vec!["slow".into(), "spool".into()]);
        message.report(FlowEvent::Queued { inbox: 0, bytes: 150 });
        let report = registry.report();
        assert_eq!((report.pauses, report.resumes, report.paused_now), (1, 0, 1));
        assert_eq!(flow.snapshot().paused_by.as_deref(), Some("slow"));
        assert_eq!(flow.snapshot().queued, vec![("slow".to_string(), 150), ("spool".to_string(), 0)]);
        let waiter = {
            let flow = flow.clone();
            tokio::spawn(async move { flow.wait_readable().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        message.report(FlowEvent::Drained { inbox: 0, bytes: 145 });
        waiter.await.unwrap();
        assert_eq!(registry.report().paused_now, 0);
        // Late events of a finished message are ignored once the next one started.
        flow.report(FlowEvent::MessageDone);
        let next = flow.start_message(vec!["spool".into()]);
        message.report(FlowEvent::Queued { inbox: 1, bytes: 1 << 20 });
        message.report(FlowEvent::InboxGone { inbox: 0 });
        next.report(FlowEvent::Queued { inbox: 0, bytes: 10 });
        assert_eq!(flow.snapshot().queued, vec![("spool".to_string(), 10)]);
    }

    #[test]
    fn dropping_a_paused_session_balances_the_counters() {
        let registry = FlowRegistry::default();
        let flow = registry.open(1, Watermarks { high: 10, low: 1 });
        let message = flow.start_message(vec!["spool".into()]);
        message.report(FlowEvent::Queued { inbox: 0, bytes: 50 });
        assert_eq!(registry.report().paused_now, 1);
        drop((flow, message));
        let report = registry.report();
        assert_eq!((report.pauses, report.resumes, report.paused_now), (1, 1, 0));
    }
}
