//! Inbound STARTTLS against plain SMTP, end to end: `bench/smtp-tls` (or `cargo bench -p sluice
//! --bench smtp_tls`). Plain `main`, no criterion.
//!
//! One release sluice (`target/release/sluice`, `--sluice PATH`) relays to Postfix's smtp-sink;
//! a load client of ours (tokio + rustls, the same code for both modes) sends each cell's
//! messages over 10 sessions, in plain text or after STARTTLS (certificate verified against a
//! CA the benchmark makes with openssl). Per cell, the modes alternate `--repeat` times (default
//! 5); reported are the medians of msg/s and of sluice's CPU per message (utime + stime from
//! /proc), and the median of the per-repeat ratios TLS ÷ plain with its min–max spread.
//! Handshakes: 10 clients in a loop of connect, EHLO, STARTTLS, handshake, EHLO, QUIT, against
//! the same loop without STARTTLS; sessions/s and sluice CPU per session. The load average is
//! printed before and after. Every run is bounded: a fixed count, and a 120 s deadline per run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const SESSIONS: usize = 10;
const RUN_DEADLINE: Duration = Duration::from_secs(120);

struct Options {
    sluice: PathBuf,
    repeat: usize,
    quick: bool,
}

fn options() -> Options {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut options = Options { sluice: root.join("target/release/sluice"), repeat: 5, quick: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--sluice" => options.sluice = PathBuf::from(args.next().expect("--sluice PATH")),
            "--repeat" => options.repeat = args.next().and_then(|n| n.parse().ok()).expect("--repeat N (≥ 1)"),
            "--quick" => options.quick = true,
            other => panic!("unknown option {other} (--sluice PATH, --repeat N, --quick)"),
        }
    }
    assert!(options.repeat >= 1, "--repeat must be at least 1");
    options
}

fn sh(script: &str) {
    let status = Command::new("sh").args(["-c", script]).status().expect("sh");
    assert!(status.success(), "{script}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's /proc stat");
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16) {
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The client's side of one session: plain or TLS after STARTTLS.
trait Wire: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Wire for T {}

async fn reply<S: AsyncRead + Unpin>(reader: &mut BufReader<S>, line: &mut String) -> u16 {
    loop {
        line.clear();
        let n = reader.read_line(line).await.expect("read a reply");
        assert!(n > 0, "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line[..3].parse().expect("a reply code");
        }
    }
}

async fn expect<S: AsyncRead + Unpin>(reader: &mut BufReader<S>, code: u16) {
    let mut line = String::new();
    let got = reply(reader, &mut line).await;
    assert_eq!(got, code, "{line}");
}

/// Connects, reads the greeting, says EHLO and, with `tls`, runs STARTTLS and EHLO again.
async fn open(address: SocketAddr, tls: Option<&TlsConnector>) -> BufReader<Box<dyn Wire>> {
    let tcp = TcpStream::connect(address).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    let mut plain = BufReader::new(tcp);
    expect(&mut plain, 220).await;
    plain.get_mut().write_all(b"EHLO load.bench\r\n").await.unwrap();
    expect(&mut plain, 250).await;
    let Some(connector) = tls else {
        let wire: Box<dyn Wire> = Box::new(plain.into_inner());
        return BufReader::new(wire);
    };
    plain.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    expect(&mut plain, 220).await;
    let name = ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, plain.into_inner()).await.expect("TLS handshake");
    let wire: Box<dyn Wire> = Box::new(stream);
    let mut session = BufReader::new(wire);
    session.get_mut().write_all(b"EHLO load.bench\r\n").await.unwrap();
    expect(&mut session, 250).await;
    session
}

/// One session sending `count` messages of `message` (pipelined envelope), then QUIT.
async fn send_messages(address: SocketAddr, tls: Option<TlsConnector>, message: Arc<Vec<u8>>, count: usize) {
    let mut session = open(address, tls.as_ref()).await;
    for _ in 0..count {
        session
            .get_mut()
            .write_all(b"MAIL FROM:<load@source.bench>\r\nRCPT TO:<sink@sink.bench>\r\nDATA\r\n")
            .await
            .unwrap();
        expect(&mut session, 250).await;
        expect(&mut session, 250).await;
        expect(&mut session, 354).await;
        session.get_mut().write_all(&message).await.unwrap();
        expect(&mut session, 250).await;
    }
    session.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    expect(&mut session, 221).await;
}

/// `count` sessions of connect, EHLO, [STARTTLS, EHLO], QUIT, from `SESSIONS` clients.
async fn handshake_loop(address: SocketAddr, tls: Option<TlsConnector>, count: usize) {
    let mut clients = Vec::new();
    for client in 0..SESSIONS {
        let tls = tls.clone();
        let share = count / SESSIONS + usize::from(client < count % SESSIONS);
        clients.push(tokio::spawn(async move {
            for _ in 0..share {
                let mut session = open(address, tls.as_ref()).await;
                session.get_mut().write_all(b"QUIT\r\n").await.unwrap();
                expect(&mut session, 221).await;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
}

/// A message of `size` bytes of base64-looking lines, dot-terminated.
fn message(size: usize) -> Vec<u8> {
    let mut text = b"From: load@source.bench\r\nTo: sink@sink.bench\r\nSubject: TLS bench\r\n\r\n".to_vec();
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3\r\n";
    while text.len() + line.len() <= size {
        text.extend_from_slice(line);
    }
    text.extend_from_slice(b".\r\n");
    text
}

struct Run {
    rate: f64,
    cpu_per_item_ms: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn timed(
    runtime: &tokio::runtime::Runtime,
    pid: u32,
    items: usize,
    work: impl std::future::Future<Output = ()>,
) -> Run {
    let cpu = cpu_seconds(pid);
    let started = Instant::now();
    runtime
        .block_on(async { tokio::time::timeout(RUN_DEADLINE, work).await })
        .expect("a run took longer than its deadline");
    let wall = started.elapsed().as_secs_f64();
    Run { rate: items as f64 / wall, cpu_per_item_ms: (cpu_seconds(pid) - cpu) * 1000.0 / items as f64 }
}

/// Runs both modes `repeat` times, alternating; prints one table row.
fn cell(name: &str, repeat: usize, mut run: impl FnMut(bool) -> Run) {
    let (mut plain_rate, mut tls_rate, mut plain_cpu, mut tls_cpu, mut ratios) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..repeat {
        let plain = run(false);
        let tls = run(true);
        ratios.push(tls.rate / plain.rate);
        plain_rate.push(plain.rate);
        tls_rate.push(tls.rate);
        plain_cpu.push(plain.cpu_per_item_ms);
        tls_cpu.push(tls.cpu_per_item_ms);
    }
    let (low, high) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
    println!(
        "| {name} | {:.0} | {:.0} | {:.2} ({low:.2}–{high:.2}) | {:.3} | {:.3} |",
        median(&mut plain_rate),
        median(&mut tls_rate),
        median(&mut ratios),
        median(&mut plain_cpu),
        median(&mut tls_cpu),
    );
}

fn main() {
    let options = options();
    assert!(options.sluice.is_file(), "{} not found: cargo build --release -p sluice", options.sluice.display());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=bench CA' -keyout {d}/ca.key -out {d}/ca.pem 2>/dev/null && \
         openssl req -newkey rsa:2048 -nodes -subj '/CN=localhost' -keyout {d}/gw.key -out {d}/gw.csr 2>/dev/null && \
         printf 'subjectAltName=DNS:localhost\\n' > {d}/gw.ext && \
         openssl x509 -req -in {d}/gw.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 2 -extfile {d}/gw.ext -out {d}/gw.pem 2>/dev/null"
    ));
    let sink_port = free_port();
    let sink = Killed(
        Command::new("/usr/sbin/smtp-sink")
            .args(["-u", "nobody", &format!("127.0.0.1:{sink_port}"), "256"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink (Debian postfix)"),
    );
    wait_listening(sink_port);
    let port = free_port();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"gw.bench\"\n\
         [relay]\naddress = \"127.0.0.1:{sink_port}\"\n\
         [tls]\ncert_file = \"{d}/gw.pem\"\nkey_file = \"{d}/gw.key\"\n"
    );
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    let gateway = Killed(
        Command::new(&options.sluice)
            .args(["serve", "--config", &format!("{d}/sluice.toml")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sluice"),
    );
    wait_listening(port);
    let pid = gateway.0.id();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client));
    // The client runs on one thread beside sluice's two workers, the same for both modes.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    println!("# Inbound STARTTLS vs plain (sluice relaying to smtp-sink, {SESSIONS} sessions, TLS 1.3)");
    println!("load average before: {}; repeats: {}", loadavg(), options.repeat);
    println!();
    println!("| cell | plain /s | TLS /s | TLS ÷ plain, median (min–max) | plain CPU ms each | TLS CPU ms each |");
    println!("|---|---|---|---|---|---|");
    let scale = if options.quick { 4 } else { 1 };
    for (label, size, count) in [("4 KiB × 10", 4 << 10, 4000 / scale), ("256 KiB × 10", 256 << 10, 600 / scale)] {
        let body = Arc::new(message(size));
        cell(&format!("{label}, msg"), options.repeat, |tls| {
            let connector = tls.then(|| connector.clone());
            let body = body.clone();
            timed(&runtime, pid, count, async move {
                let mut sessions = Vec::new();
                for session in 0..SESSIONS {
                    let share = count / SESSIONS + usize::from(session < count % SESSIONS);
                    sessions.push(tokio::spawn(send_messages(address, connector.clone(), body.clone(), share)));
                }
                for session in sessions {
                    session.await.unwrap();
                }
            })
        });
    }
    let handshakes = 2000 / scale;
    cell("sessions (connect, EHLO, [STARTTLS, EHLO], QUIT)", options.repeat, |tls| {
        let connector = tls.then(|| connector.clone());
        timed(&runtime, pid, handshakes, handshake_loop(address, connector, handshakes))
    });
    println!();
    println!("load average after: {}", loadavg());
    drop(gateway);
    drop(sink);
}
