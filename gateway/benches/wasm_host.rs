//! Wasm host micro-benchmarks: what a pass-through wasm filter costs per message and per call.
//!
//! `cargo bench -p sluice --bench wasm_host` (or `bench/wasm-host`). Plain `main`, no criterion:
//! each figure is N timed iterations after a warm-up, reported as median / mean / p90 / min in
//! µs, side by side with the same calls on the built-in native pass-through stage (`kind =
//! "test"`, no options) and the ratio wasm ÷ native. The filter is `faults.wasm` with
//! `mode = "pass"` (wants every event, answers continue/pass), built by `make filters`; it is
//! looked up in `$SLUICE_FILTER_DIR`, else `<workspace>/target/wasm32-wasip2/release/`.
//!
//! * instantiate: a fresh stage per message — `StageFactory::instantiate`, then the first call
//!   (`envelope(Connect)`: new `Store`, instantiate from the `InstancePre`, the message
//!   resource's constructor, `on-connect`), then drop (store and pooled instance released).
//! * body 64 KiB: `body(64 KiB)` on one live instance (the chunk is copied into the guest);
//!   "first in a message": the first such call of a fresh instance, whose linear memory pages
//!   are touched for the first time since the pooled slot was reset.
//! * tiny call: `envelope(Helo)` on one live instance: the fixed cost of any call.
//! * message 256 KiB: one whole message through one stage — instantiate, connect, helo, mail,
//!   rcpt, headers, 4 × body(64 KiB), end, drop — what each wasm stage adds to a 256 KiB message.
//!
//! Options (after `--`): `--iterations N` (default 2000; the tiny call runs 5 × N),
//! `--filter PATH`. Single task on a tokio multi-thread runtime, as in the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice::chain::headers::HeaderSection;
use sluice::chain::runner::EndOfData;
use sluice::chain::stage::{EnvelopeEvent, MessageContext, Stage, StageFactory, Verdict};
use sluice::chain::test_stage::TestStageFactory;
use sluice::config::stages::TestStageConfig;
use sluice::wasm::{WasmFilter, WasmLimits};

const CHUNK: usize = 64 * 1024;
const HEADERS: &[u8] = b"From: bench@source.bench\r\nTo: sink@sink.bench\r\nSubject: wasm host bench\r\n\
Message-ID: <bench@source.bench>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n";

struct Options {
    iterations: usize,
    filter: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options { iterations: 2000, filter: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--iterations" => {
                options.iterations = args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0).unwrap_or_else(|| {
                    eprintln!("--iterations needs a positive number");
                    std::process::exit(2)
                })
            }
            "--filter" => options.filter = args.next().map(PathBuf::from),
            other if other.starts_with('-') => {
                eprintln!("unknown option {other} (known: --iterations N, --filter PATH)");
                std::process::exit(2)
            }
            _ => {} // a name filter from `cargo bench NAME`: there is only one benchmark
        }
    }
    options
}

fn filter_path(explicit: Option<PathBuf>) -> PathBuf {
    let path = explicit.unwrap_or_else(|| match std::env::var_os("SLUICE_FILTER_DIR") {
        Some(dir) => PathBuf::from(dir).join("faults.wasm"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release/faults.wasm"),
    });
    if !path.is_file() {
        eprintln!(
            "error: {} not found.\nBuild the filters first: `make filters` (in the workspace root), \
             or point SLUICE_FILTER_DIR at the directory holding faults.wasm.",
            path.display()
        );
        std::process::exit(1);
    }
    path
}

/// Timings of one figure, in µs.
struct Stats {
    median: f64,
    mean: f64,
    p90: f64,
    min: f64,
}

fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let n = samples.len();
    let median = if n % 2 == 1 { us(samples[n / 2]) } else { (us(samples[n / 2 - 1]) + us(samples[n / 2])) / 2.0 };
    Stats {
        median,
        mean: samples.iter().map(|&d| us(d)).sum::<f64>() / n as f64,
        p90: us(samples[(n * 9 / 10).min(n - 1)]),
        min: us(samples[0]),
    }
}

fn context() -> MessageContext {
    // The sender is dropped at once: no stage here waits for end of data.
    let (_sender, end_of_data) = EndOfData::channel();
    MessageContext { end_of_data }
}

fn connect() -> EnvelopeEvent {
    EnvelopeEvent::Connect { peer: SocketAddr::from(([127, 0, 0, 1], 40000)) }
}

fn expect_continue(verdict: Verdict) {
    assert_eq!(verdict, Verdict::Continue, "the pass-through stage must answer continue");
}

/// (1) Per message: instantiate + first call + drop. Returns (total, drop part).
async fn per_message(factory: &dyn StageFactory, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let context = context();
    let event = connect();
    let (mut total, mut drops) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let mut stage = factory.instantiate(&context).expect("instantiate");
        expect_continue(stage.envelope(&event).await.expect("first call"));
        let dropping = Instant::now();
        drop(stage);
        let done = Instant::now();
        if i >= n / 10 {
            total.push(done - started);
            drops.push(done - dropping);
        }
    }
    (total, drops)
}

/// A live stage past its first call.
async fn live(factory: &dyn StageFactory) -> Box<dyn Stage> {
    let mut stage = factory.instantiate(&context()).expect("instantiate");
    expect_continue(stage.envelope(&connect()).await.expect("connect"));
    stage
}

/// (2) body(64 KiB) on one instance.
async fn body_calls(factory: &dyn StageFactory, n: usize) -> Vec<Duration> {
    let mut stage = live(factory).await;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let reaction = stage.body(chunk.clone()).await.expect("body");
        let elapsed = started.elapsed();
        expect_continue(reaction.verdict);
        if i >= n / 10 {
            samples.push(elapsed);
        }
    }
    samples
}

/// (2b) The first body(64 KiB) of a fresh instance: its linear memory is touched for the first
/// time since the pooled slot was last reset (page faults), as for every message's first chunk.
async fn first_body_calls(factory: &dyn StageFactory, n: usize) -> Vec<Duration> {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let mut stage = live(factory).await;
        let started = Instant::now();
        let reaction = stage.body(chunk.clone()).await.expect("body");
        let elapsed = started.elapsed();
        expect_continue(reaction.verdict);
        drop(stage);
        if i >= n / 10 {
            samples.push(elapsed);
        }
    }
    samples
}

/// (3) envelope(Helo) on one instance: the fixed cost of a call.
async fn tiny_calls(factory: &dyn StageFactory, n: usize) -> Vec<Duration> {
    let mut stage = live(factory).await;
    let helo = EnvelopeEvent::Helo { name: "client.bench".into() };
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let verdict = stage.envelope(&helo).await.expect("helo");
        let elapsed = started.elapsed();
        expect_continue(verdict);
        if i >= n / 10 {
            samples.push(elapsed);
        }
    }
    samples
}

/// (4) A whole 256 KiB message through one stage, as the chain calls it.
async fn whole_messages(factory: &dyn StageFactory, n: usize) -> Vec<Duration> {
    let context = context();
    let events = [
        connect(),
        EnvelopeEvent::Helo { name: "client.bench".into() },
        EnvelopeEvent::MailFrom { address: "bench@source.bench".into() },
        EnvelopeEvent::RcptTo { address: "sink@sink.bench".into() },
    ];
    let headers = HeaderSection::parse(HEADERS);
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let mut stage = factory.instantiate(&context).expect("instantiate");
        for event in &events {
            expect_continue(stage.envelope(event).await.expect("envelope"));
        }
        expect_continue(stage.headers(&headers).await.expect("headers").verdict);
        for _ in 0..4 {
            expect_continue(stage.body(chunk.clone()).await.expect("body").verdict);
        }
        expect_continue(stage.end().await.expect("end").verdict);
        drop(stage);
        if i >= n / 10 {
            samples.push(started.elapsed());
        }
    }
    samples
}

fn row(name: &str, n: usize, wasm: &Stats, native: Option<&Stats>, note: &str) {
    let native_median = native.map_or("-".to_string(), |s| format!("{:.3}", s.median));
    let ratio = native.map_or("-".to_string(), |s| format!("{:.0}", wasm.median / s.median));
    println!(
        "{name:<22} {n:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {native_median:>11} {ratio:>7}  {note}",
        wasm.median, wasm.mean, wasm.p90, wasm.min
    );
}

async fn run(options: Options) {
    let path = filter_path(options.filter);
    let config = vec![("mode".to_string(), "pass".to_string())];
    let filter = WasmFilter::load("pass", &path, config, WasmLimits::default()).await.unwrap_or_else(|err| {
        eprintln!("error: {err}");
        std::process::exit(1)
    });
    let compile_time = filter.compile_time;
    let wasm: Arc<WasmFilter> = Arc::new(filter);
    let native = TestStageFactory::new(TestStageConfig::default());
    let n = options.iterations;

    println!("wasm host benchmark: {} (mode = \"pass\")", path.display());
    println!(
        "compile (Component::new at load): {:.1} ms; {} CPUs; {} timed iterations per figure after {} warm-up \
         (tiny call: {})",
        compile_time.as_secs_f64() * 1e3,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        n,
        n / 10,
        5 * n
    );
    println!();
    println!(
        "{:<22} {:>6} {:>10} {:>10} {:>10} {:>10} {:>11} {:>7}",
        "figure (µs)", "n", "median", "mean", "p90", "min", "native med", "ratio"
    );
    println!("{}", "-".repeat(94));

    let (mut inst, mut drops) = per_message(&wasm, n).await;
    let (mut native_inst, _) = per_message(&native, n).await;
    let (inst, drops, native_inst) = (stats(&mut inst), stats(&mut drops), stats(&mut native_inst));
    row("instantiate (msg)", n, &inst, Some(&native_inst), "new store + instantiate + constructor + on-connect + drop");
    row("  of which drop", n, &drops, None, "store and pooled instance released");

    let (mut body, mut native_body) = (body_calls(&wasm, n).await, body_calls(&native, n).await);
    let (body, native_body) = (stats(&mut body), stats(&mut native_body));
    let rate = CHUNK as f64 / body.median / 1e3; // bytes per µs / 1e3 = GB/s
    let note = format!("on-body-chunk on a live instance ({rate:.1} GB/s)");
    row("body 64 KiB (call)", n, &body, Some(&native_body), &note);

    let (mut first, mut native_first) = (first_body_calls(&wasm, n).await, first_body_calls(&native, n).await);
    let (first, native_first) = (stats(&mut first), stats(&mut native_first));
    row("  first in a message", n, &first, Some(&native_first), "first on-body-chunk of a fresh instance");

    let (mut tiny, mut native_tiny) = (tiny_calls(&wasm, 5 * n).await, tiny_calls(&native, 5 * n).await);
    let (tiny, native_tiny) = (stats(&mut tiny), stats(&mut native_tiny));
    row("tiny call (helo)", 5 * n, &tiny, Some(&native_tiny), "fixed cost of any call");

    let (mut whole, mut native_whole) = (whole_messages(&wasm, n).await, whole_messages(&native, n).await);
    let (whole, native_whole) = (stats(&mut whole), stats(&mut native_whole));
    row("message 256 KiB", n, &whole, Some(&native_whole), "one stage: instantiate, 8 calls, 4 chunks, drop");

    println!();
    println!("derived (medians):");
    println!(
        "  instantiation beyond a call: {:.1} µs (instantiate - tiny call) = {:.0} tiny calls",
        inst.median - tiny.median,
        (inst.median - tiny.median) / tiny.median
    );
    println!(
        "  64 KiB chunk beyond a call:  {:.1} µs (body - tiny call) = {:.2} ns/byte",
        body.median - tiny.median,
        (body.median - tiny.median) * 1e3 / CHUNK as f64
    );
    println!(
        "  first chunk of a message beyond a later one: {:.1} µs (fresh linear memory pages)",
        first.median - body.median
    );
    println!(
        "  one wasm stage on a 256 KiB message: {:.0} µs on one task = {:.0} msg/s per core per wasm stage",
        whole.median,
        1e6 / whole.median
    );
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run(options));
}
