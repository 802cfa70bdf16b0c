//! What the admin API answers, as types: the handlers serialise these and `sluice ctl`
//! deserialises the same types, so a field the API does not send cannot be shown by ctl as if
//! it did (a renamed or missing field fails to parse, and the tests notice).

use serde::{Deserialize, Serialize};

use crate::config::stages::StageKind;

/// `GET /stats`: counters since start and the current chain's stages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsView {
    pub uptime_seconds: u64,
    pub chain_generation: u64,
    pub sessions: SessionCounts,
    pub transactions: TransactionCounts,
    pub bytes: ByteCounts,
    pub flow: FlowCounts,
    pub stages: Vec<StageStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionCounts {
    pub current: u64,
    pub total: u64,
}

/// Transactions by result, the results of the `sluice_transactions` metric.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransactionCounts {
    pub accepted: u64,
    pub rejected: u64,
    pub tempfailed: u64,
    pub discarded: u64,
    pub refused: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ByteCounts {
    #[serde(rename = "in")]
    pub received: u64,
    #[serde(rename = "out")]
    pub sent: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowCounts {
    pub pauses: u64,
    pub resumes: u64,
    pub paused_now: u64,
}

/// One stage of the current chain, in chain order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageStats {
    pub name: String,
    pub kind: StageKind,
    pub calls: u64,
    pub failures: u64,
}

/// `GET /sessions` (a list) and `GET /sessions/ID`: one open session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionView {
    pub id: String,
    pub peer: String,
    pub local_port: u16,
    pub state: String,
    pub transaction: Option<TransactionView>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Set once STARTTLS has succeeded.
    pub tls: Option<TlsView>,
    pub paused: bool,
    pub paused_by: Option<String>,
    pub queued: Vec<QueueView>,
    pub pauses: u64,
    pub resumes: u64,
    pub age_seconds: f64,
}

/// A session's encryption: protocol version ("TLSv1.3") and cipher suite.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TlsView {
    pub version: String,
    pub cipher: String,
}

/// The transaction a session is in: sender and recipient count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransactionView {
    pub from: String,
    pub rcpts: usize,
}

/// Bytes waiting in one stage's inbox (or the spool's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueView {
    pub stage: String,
    pub bytes: u64,
}

/// One message line of the transaction log, as the dashboard lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageView {
    pub at_ms: u64,
    pub transaction: String,
    pub client: String,
    pub from: String,
    pub rcpts: Vec<String>,
    /// accepted, rejected, tempfailed, discarded or refused.
    pub result: String,
    /// The stage that decided, and why.
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub reply: String,
    pub size: u64,
    pub duration_ms: u64,
}

/// `GET /events`, first: the message lines kept so far, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HelloEvent {
    pub messages: Vec<MessageView>,
}

/// `GET /events`, every second: the gateway now, and the message lines since the last tick.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TickEvent {
    pub at_ms: u64,
    pub stats: StatsView,
    pub sessions: Vec<SessionView>,
    pub stages: Vec<StageLive>,
    pub messages: Vec<MessageView>,
}

/// One stage of the current chain as the dashboard shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageLive {
    pub name: String,
    pub kind: StageKind,
    pub generation: u64,
    pub calls: u64,
    /// Over its latest 1,000 calls; None before the first.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub verdicts: std::collections::BTreeMap<String, u64>,
    pub failures: std::collections::BTreeMap<String, u64>,
    /// In its inboxes over every open session, now.
    pub queued_bytes: u64,
}

/// `POST /reload` when it succeeded: the new generation, its stages and what changed.
pub use crate::reload::ReloadReport;

/// `POST /trace/SUBSYSTEM/on|off`: the switch and the log filter now in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceView {
    pub subsystem: String,
    pub enabled: bool,
    pub filter: String,
}

/// Every 4xx/5xx answer with a JSON body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorView {
    pub error: String,
}

/// A stage kind as ctl prints it: the name it has in the config and in the JSON.
impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageKind::Test => "test",
            StageKind::Wasm => "wasm",
            StageKind::Clamd => "clamd",
            StageKind::Milter => "milter",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_kinds_print_as_they_are_written() {
        for kind in [StageKind::Test, StageKind::Wasm, StageKind::Clamd, StageKind::Milter] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.to_string());
        }
    }
}
