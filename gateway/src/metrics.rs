//! The gateway's metrics, in one Prometheus registry (`prometheus-client`): sessions,
//! transactions by result, bytes, per-stage calls / verdicts / failures / latency, flow pauses and
//! resumes, relay replies and latency, idle next-hop connections, chain generation and generations
//! alive, wasm instantiation time. The same counters feed `/stats`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageVerdictLabel {
    pub stage: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageFailureLabel {
    pub stage: String,
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: String,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// 1 MiB to 256 MiB, doubling: a wasm instance's memory.
fn memory() -> Histogram {
    Histogram::new(exponential_buckets(1048576.0, 2.0, 9))
}

/// Every metric; cheap to clone handles out of (they are shared atomics).
pub struct Metrics {
    registry: Registry,
    pub sessions_current: Gauge,
    pub sessions_total: Counter,
    pub transactions: Family<ResultLabel, Counter>,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub stage_calls: Family<StageLabel, Counter>,
    pub stage_verdicts: Family<StageVerdictLabel, Counter>,
    pub stage_failures: Family<StageFailureLabel, Counter>,
    pub stage_latency: Family<StageLabel, Histogram, fn() -> Histogram>,
    pub flow_pauses: Counter,
    pub flow_resumes: Counter,
    pub flow_paused_now: Gauge,
    pub relay_replies: Family<ClassLabel, Counter>,
    pub relay_latency: Histogram,
    pub relay_idle: Gauge,
    pub chain_generation: Gauge,
    /// Raised and lowered by each settings generation as it is built and dropped (`settings`).
    pub chain_generations_alive: Gauge,
    pub wasm_instantiation: Histogram,
    /// Per wasm stage: the most linear memory each message's instance grew to.
    pub wasm_memory_peak: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// Each stage's latest call durations (by name, across generations), for the dashboard.
    recent_calls: std::sync::Mutex<std::collections::HashMap<String, RecentCalls>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Metrics {
            sessions_current: Gauge::default(),
            sessions_total: Counter::default(),
            transactions: Family::default(),
            tls_handshakes: Family::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            stage_calls: Family::default(),
            stage_verdicts: Family::default(),
            stage_failures: Family::default(),
            stage_latency: Family::new_with_constructor(latency),
            flow_pauses: Counter::default(),
            flow_resumes: Counter::default(),
            flow_paused_now: Gauge::default(),
            relay_replies: Family::default(),
            relay_latency: latency(),
            relay_idle: Gauge::default(),
            chain_generation: Gauge::default(),
            chain_generations_alive: Gauge::default(),
            wasm_instantiation: latency(),
            wasm_memory_peak: Family::new_with_constructor(memory),
            recent_calls: Default::default(),
            registry: Registry::default(),
        };
        registry.register("sessions_open", "SMTP sessions open now", metrics.sessions_current.clone());
        registry.register("sessions", "SMTP sessions accepted", metrics.sessions_total.clone());
        registry.register("transactions", "Transactions by result", metrics.transactions.clone());
        registry.register("tls_handshakes", "Inbound STARTTLS handshakes by result", metrics.tls_handshakes.clone());
        registry.register("received_bytes", "Bytes read from clients", metrics.bytes_in.clone());
        registry.register("sent_bytes", "Bytes written to clients", metrics.bytes_out.clone());
        registry.register("stage_calls", "Calls into chain stages", metrics.stage_calls.clone());
        registry.register("stage_verdicts", "Stage verdicts by kind", metrics.stage_verdicts.clone());
        registry.register("stage_failures", "Stage failures by cause", metrics.stage_failures.clone());
        registry.register("stage_call_seconds", "Latency of stage calls", metrics.stage_latency.clone());
        registry.register("flow_pauses", "Client reads paused by the flow controller", metrics.flow_pauses.clone());
        registry.register("flow_resumes", "Client reads resumed by the flow controller", metrics.flow_resumes.clone());
        registry.register("flow_paused_now", "Sessions paused now", metrics.flow_paused_now.clone());
        registry.register("relay_replies", "Next-hop final replies by class", metrics.relay_replies.clone());
        registry.register("relay_seconds", "Time to deliver to the next hop", metrics.relay_latency.clone());
        registry.register(
            "relay_idle_connections",
            "Idle next-hop connections kept for reuse now",
            metrics.relay_idle.clone(),
        );
        registry.register(
            "chain_generation",
            "Generation of the loaded chain (1 at start, +1 per reload)",
            metrics.chain_generation.clone(),
        );
        registry.register(
            "chain_generations_alive",
            "Chain generations in use: the current one and older ones kept by sessions still running",
            metrics.chain_generations_alive.clone(),
        );
        registry.register(
            "wasm_instantiation_seconds",
            "Time to instantiate a wasm filter for a message",
            metrics.wasm_instantiation.clone(),
        );
        registry.register(
            "wasm_instance_memory_peak_bytes",
            "Most linear memory one message's instance of a wasm stage grew to",
            metrics.wasm_memory_peak.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

/// A stage's call counter and latency histogram: handles into the label families, so a call
/// costs two atomic updates, not two family lookups (a lock, a hash and a String each); and its
/// latest call durations, for the dashboard's quantiles.
#[derive(Clone, Debug)]
pub struct StageMeters {
    calls: Counter,
    latency: Histogram,
    recent: RecentCalls,
}

impl StageMeters {
    pub fn call(&self, took: Duration) {
        self.calls.inc();
        self.latency.observe(took.as_secs_f64());
        self.recent.record(took);
    }

    /// (p50, p99) in milliseconds of the latest calls, None before the first.
    pub fn recent_quantiles(&self) -> Option<(f64, f64)> {
        self.recent.quantiles()
    }
}

/// Calls kept for the quantiles.
const RECENT: usize = 1000;

/// The latest call durations of a stage, in microseconds: a fixed ring written without locks
/// (a racing pair of calls may overwrite one slot; quantiles do not mind).
#[derive(Clone)]
pub struct RecentCalls(std::sync::Arc<RecentRing>);

struct RecentRing {
    next: AtomicUsize,
    /// u32::MAX: an empty slot.
    micros: [AtomicU32; RECENT],
}

impl Default for RecentCalls {
    fn default() -> RecentCalls {
        let micros = std::array::from_fn(|_| AtomicU32::new(u32::MAX));
        RecentCalls(std::sync::Arc::new(RecentRing { next: AtomicUsize::new(0), micros }))
    }
}

impl std::fmt::Debug for RecentCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecentCalls")
    }
}

impl RecentCalls {
    fn record(&self, took: Duration) {
        let slot = self.0.next.fetch_add(1, Ordering::Relaxed) % RECENT;
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX - 1).min(u32::MAX - 1);
        self.0.micros[slot].store(micros, Ordering::Relaxed);
    }

    fn quantiles(&self) -> Option<(f64, f64)> {
        let mut micros: Vec<u32> =
            self.0.micros.iter().map(|m| m.load(Ordering::Relaxed)).filter(|m| *m != u32::MAX).collect();
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        let at = |q: usize| micros[(micros.len() - 1) * q / 100] as f64 / 1000.0;
        Some((at(50), at(99)))
    }
}

impl Metrics {
    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn transaction(&self, result: &str) {
        self.transactions.get_or_create(&ResultLabel { result: result.into() }).inc();
    }

    /// An inbound STARTTLS handshake: result "ok" or "failed" (a bad handshake or a timeout).
    pub fn tls_handshake(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.tls_handshakes.get_or_create(&ResultLabel { result: result.into() }).inc();
    }

    /// One stage's call meters, looked up once when the chain is built.
    pub fn stage_meters(&self, stage: &str) -> StageMeters {
        let label = StageLabel { stage: stage.into() };
        StageMeters {
            calls: self.stage_calls.get_or_create(&label).clone(),
            latency: self.stage_latency.get_or_create(&label).clone(),
            recent: self
                .recent_calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(stage.into())
                .or_default()
                .clone(),
        }
    }

    /// A stage's verdicts by kind and failures by cause, for the dashboard.
    pub fn stage_outcomes(&self, stage: &str) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        // `get`, not `get_or_create`: looking does not add series to /metrics.
        let verdicts = crate::chain::stage::Verdict::KINDS.iter().map(|kind| {
            let label = StageVerdictLabel { stage: stage.into(), verdict: kind.to_string() };
            (kind.to_string(), self.stage_verdicts.get(&label).map_or(0, |c| c.get()))
        });
        let failures = crate::chain::stage::StageError::CAUSES.iter().map(|cause| {
            let label = StageFailureLabel { stage: stage.into(), cause: cause.to_string() };
            (cause.to_string(), self.stage_failures.get(&label).map_or(0, |c| c.get()))
        });
        (verdicts.collect(), failures.collect())
    }

    pub fn stage_verdict(&self, stage: &str, verdict: &str) {
        self.stage_verdicts.get_or_create(&StageVerdictLabel { stage: stage.into(), verdict: verdict.into() }).inc();
    }

    pub fn stage_failure(&self, stage: &str, cause: &str) {
        self.stage_failures.get_or_create(&StageFailureLabel { stage: stage.into(), cause: cause.into() }).inc();
    }

    pub fn relay_reply(&self, code: u16, took: Duration) {
        let class = format!("{}xx", code / 100);
        self.relay_replies.get_or_create(&ClassLabel { class }).inc();
        self.relay_latency.observe(took.as_secs_f64());
    }

    /// (calls, failures) of a stage, for /stats.
    pub fn stage_totals(&self, stage: &str) -> (u64, u64) {
        let calls = self.stage_calls.get_or_create(&StageLabel { stage: stage.into() }).get();
        (calls, self.stage_outcomes(stage).1.values().sum())
    }

    pub fn transactions_by(&self, result: &str) -> u64 {
        self.transactions.get_or_create(&ResultLabel { result: result.into() }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_calls_give_quantiles() {
        let recent = RecentCalls::default();
        assert_eq!(recent.quantiles(), None);
        for ms in 1..=100 {
            recent.record(Duration::from_millis(ms));
        }
        assert_eq!(recent.quantiles(), Some((50.0, 99.0)));
        // The ring keeps the latest RECENT calls only.
        for _ in 0..RECENT {
            recent.record(Duration::from_micros(500));
        }
        assert_eq!(recent.quantiles(), Some((0.5, 0.5)));
    }

    #[test]
    fn exposition_has_the_families() {
        let metrics = Metrics::default();
        metrics.transaction("accepted");
        metrics.stage_meters("av").call(Duration::from_millis(3));
        metrics.stage_failure("av", "timeout");
        metrics.relay_reply(250, Duration::from_millis(1));
        let text = metrics.encode();
        for needle in [
            "sluice_transactions_total{result=\"accepted\"} 1",
            "sluice_stage_calls_total{stage=\"av\"} 1",
            "sluice_stage_failures_total{stage=\"av\",cause=\"timeout\"} 1",
            "sluice_relay_replies_total{class=\"2xx\"} 1",
            "sluice_relay_idle_connections 0",
            "sluice_chain_generations_alive 0",
            "sluice_stage_call_seconds_bucket",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        assert_eq!(metrics.stage_totals("av"), (1, 1));
    }
}
