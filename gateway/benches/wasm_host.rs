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
//! * message 4 KiB / 256 KiB: one whole message through one stage — instantiate, connect, helo,
//!   mail, rcpt, headers, body in chunks of 64 KiB (1 / 4), end, drop — what each wasm stage adds
//!   to a message, one message after another.
//! * concurrent: the same whole messages from 10 tasks at once (like 10 sessions) on the
//!   runtime's worker threads: wall and process CPU time per message, and messages/s.
//!
//! Options (after `--`): `--iterations N` (default 2000; the tiny call runs 5 × N), `--tasks N`
//! (concurrent figures, default 10), `--filter PATH`. A tokio multi-thread runtime, as in the
//! gateway (`TOKIO_WORKER_THREADS` sets its threads; default one per CPU); all but the
//! concurrent figures run on one task.

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
use sluice::wasm::{Provisions, WasmFilter, WasmLimits};

const CHUNK: usize = 64 * 1024;
const HEADERS: &[u8] = b"From: bench@source.bench\r\nTo: sink@sink.bench\r\nSubject: wasm host bench\r\n\
Message-ID: <bench@source.bench>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n";

struct Options {
    iterations: usize,
    /// Concurrent tasks in the concurrent figures; 10, like the end-to-end cell's 10 sessions.
    tasks: usize,
    filter: Option<PathBuf>,
    /// `[stage.config]` for the filter (`--config KEY=VALUE`); `mode = pass` when none is given.
    config: Vec<(String, String)>,
}

fn options() -> Options {
    let mut options = Options { iterations: 2000, tasks: 10, filter: None, config: Vec::new() };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--iterations" => options.iterations = positive(&arg, args.next()),
            "--tasks" => options.tasks = positive(&arg, args.next()),
            "--filter" => options.filter = args.next().map(PathBuf::from),
            "--config" => match args.next().as_deref().and_then(|pair| pair.split_once('=')) {
                Some((key, value)) => options.config.push((key.to_string(), value.to_string())),
                None => {
                    eprintln!("--config needs KEY=VALUE");
                    std::process::exit(2)
                }
            },
            other if other.starts_with('-') => {
                eprintln!(
                    "unknown option {other} (known: --iterations N, --tasks N, --filter PATH, --config KEY=VALUE)"
                );
                std::process::exit(2)
            }
            _ => {} // a name filter from `cargo bench NAME`: there is only one benchmark
        }
    }
    options
}

fn positive(option: &str, value: Option<String>) -> usize {
    value.and_then(|n| n.parse().ok()).filter(|&n| n > 0).unwrap_or_else(|| {
        eprintln!("{option} needs a positive number");
        std::process::exit(2)
    })
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

/// A message's body as the chain hands it over: `size` bytes in chunks of at most 64 KiB.
fn body_chunks(size: usize) -> Vec<Bytes> {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    (0..size).step_by(CHUNK).map(|start| chunk.slice(..CHUNK.min(size - start))).collect()
}

/// One whole message through one stage, as the chain calls it: instantiate, connect, helo,
/// mail, rcpt, headers, the body chunks, end, drop.
async fn one_message(factory: &dyn StageFactory, context: &MessageContext, headers: &HeaderSection, body: &[Bytes]) {
    let events = [
        connect(),
        EnvelopeEvent::Helo { name: "client.bench".into() },
        EnvelopeEvent::MailFrom { address: "bench@source.bench".into() },
        EnvelopeEvent::RcptTo { address: "sink@sink.bench".into() },
    ];
    let mut stage = factory.instantiate(context).expect("instantiate");
    for event in &events {
        expect_continue(stage.envelope(event).await.expect("envelope"));
    }
    expect_continue(stage.headers(headers).await.expect("headers").verdict);
    for chunk in body {
        expect_continue(stage.body(chunk.clone()).await.expect("body").verdict);
    }
    expect_continue(stage.end().await.expect("end").verdict);
}

/// (4) Whole messages of `size` bytes through one stage, one after another.
async fn whole_messages(factory: &dyn StageFactory, size: usize, n: usize) -> Vec<Duration> {
    let (context, headers, body) = (context(), HeaderSection::parse(HEADERS), body_chunks(size));
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        one_message(factory, &context, &headers, &body).await;
        if i >= n / 10 {
            samples.push(started.elapsed());
        }
    }
    samples
}

/// This process's CPU time (user + system), from /proc/self/stat (Linux; clock ticks of 10 ms).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// (5) `n` whole messages of `size` bytes through one stage from `tasks` concurrent tasks, as
/// concurrent sessions do: (wall time, CPU time) per message.
async fn concurrent_messages(
    factory: Arc<dyn StageFactory>,
    size: usize,
    tasks: usize,
    n: usize,
) -> (f64, Option<f64>) {
    let run = |count: usize| {
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let factory = factory.clone();
                tokio::spawn(async move {
                    let (context, headers, body) = (context(), HeaderSection::parse(HEADERS), body_chunks(size));
                    for _ in 0..count / tasks {
                        one_message(&*factory, &context, &headers, &body).await;
                    }
                })
            })
            .collect();
        futures_util::future::join_all(workers)
    };
    run(n / 10).await; // warm-up
    let (started, cpu) = (Instant::now(), cpu_time());
    for result in run(n).await {
        result.expect("a benchmark task panicked");
    }
    let per_message = |d: Duration| d.as_secs_f64() * 1e6 / (n / tasks * tasks) as f64;
    let cpu = cpu.zip(cpu_time()).map(|(before, after)| per_message(after - before));
    (per_message(started.elapsed()), cpu)
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
    let config = match options.config.is_empty() {
        true => vec![("mode".to_string(), "pass".to_string())],
        false => options.config,
    };
    let shown: Vec<String> = config.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    let provisions = Provisions { config, files: Default::default(), dns: None };
    let filter = WasmFilter::load("pass", &path, provisions, WasmLimits::default(), None).await.unwrap_or_else(|err| {
        eprintln!("error: {err}");
        std::process::exit(1)
    });
    let compile_time = filter.compile_time;
    let wasm: Arc<WasmFilter> = Arc::new(filter);
    let native = TestStageFactory::new(TestStageConfig::default());
    let n = options.iterations;

    println!("wasm host benchmark: {} ({})", path.display(), shown.join(", "));
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

    let ((mut inst, mut drops), (mut native_inst, _)) = (per_message(&wasm, n).await, per_message(&native, n).await);
    let (inst, drops, native_inst) = (stats(&mut inst), stats(&mut drops), stats(&mut native_inst));
    let note = "new store + instantiate + constructor + on-connect + drop";
    row("instantiate (msg)", n, &inst, Some(&native_inst), note);
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

    let mut whole = None;
    for (name, size, note) in [
        ("message 4 KiB", 4 << 10, "one stage: instantiate, 7 calls (1 chunk), drop"),
        ("message 256 KiB", 256 << 10, "one stage: instantiate, 10 calls (4 chunks), drop"),
    ] {
        let (wasm_stats, native_stats) =
            (stats(&mut whole_messages(&wasm, size, n).await), stats(&mut whole_messages(&native, size, n).await));
        row(name, n, &wasm_stats, Some(&native_stats), note);
        whole = Some(wasm_stats);
    }
    let whole = whole.expect("measured above");

    println!();
    let (tasks, threads) = (options.tasks, tokio::runtime::Handle::current().metrics().num_workers());
    println!("{tasks} concurrent tasks on {threads} worker threads, {n} messages through one stage, per message:");
    println!("{:<22} {:>10} {:>10} {:>10} {:>13}", "figure (µs)", "wall", "CPU", "msg/s", "native wall");
    println!("{}", "-".repeat(69));
    for (name, size) in [("message 4 KiB", 4 << 10), ("message 256 KiB", 256 << 10)] {
        let (wall, cpu) = concurrent_messages(Arc::new(wasm.clone()), size, tasks, n).await;
        let native: Arc<dyn StageFactory> = Arc::new(TestStageFactory::new(TestStageConfig::default()));
        let (native_wall, _) = concurrent_messages(native, size, tasks, n).await;
        let cpu = cpu.map_or("-".to_string(), |cpu| format!("{cpu:.1}"));
        println!("{name:<22} {wall:>10.1} {cpu:>10} {:>10.0} {native_wall:>13.2}", 1e6 / wall);
    }

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
