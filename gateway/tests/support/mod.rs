//! Shared harness for the end-to-end tests: starts the real `sluice` binary on a loopback port
//! (found from its own "listening" log line, so there is no port race), a raw SMTP client for
//! byte-level tests, and runners for the real clients (swaks, Python smtplib, smtp-source).
//! `sink` and `postfix` start real next hops.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod browser;
pub mod certs;
pub mod clamd;
pub mod dkim_keys;
pub mod dns_server;
pub mod haproxy;
pub mod logfmt;
pub mod milters;
pub mod opendkim;
pub mod peer_state;
pub mod postfix;
pub mod scripted_hop;
pub mod scripted_milter;
pub mod sink;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for any single wait in a test; generous for a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// The gateway's stderr, collected by a thread, with a condition variable to wait on lines.
#[derive(Default)]
struct Log {
    /// The text so far, and whether the process closed its stderr (exited).
    text: Mutex<(String, bool)>,
    changed: Condvar,
}

pub struct Gateway {
    pub address: String,
    pub dir: tempfile::TempDir,
    child: Child,
    log: Arc<Log>,
}

/// Builds a config: lines for `[server]` and further sections.
#[derive(Default)]
pub struct GatewayBuilder {
    server: Vec<String>,
    sections: Vec<String>,
    /// Logging options for `serve` (`-T smtp`, `-v`) and RUST_LOG, instead of the default
    /// RUST_LOG=info,sluice=debug.
    logging: Option<(Vec<String>, Option<String>)>,
}

impl GatewayBuilder {
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_string());
        self
    }

    pub fn section(mut self, text: &str) -> Self {
        self.sections.push(text.to_string());
        self
    }

    /// Runs `serve` with these logging options and RUST_LOG (None: unset).
    pub fn logging(mut self, args: &[&str], rust_log: Option<&str>) -> Self {
        self.logging = Some((args.iter().map(|a| a.to_string()).collect(), rust_log.map(str::to_string)));
        self
    }

    pub fn relay_to(self, port: u16) -> Self {
        self.section(&format!(
            "[relay]\naddress = \"127.0.0.1:{port}\"\ncommand_timeout = \"20s\"\nconnect_timeout = \"5s\""
        ))
    }

    pub fn start(self) -> Gateway {
        let logging = self.logging.clone();
        let (dir, path) = self.write_config();
        let mut args = vec!["serve", "-d", "--config", path.to_str().unwrap()];
        match &logging {
            None => Gateway::spawn(dir, &args),
            Some((options, rust_log)) => {
                args.extend(options.iter().map(String::as_str));
                Gateway::spawn_logging(dir, &args, rust_log.as_deref())
            }
        }
    }

    /// Writes the config into a fresh temp dir without starting anything (for runs expected
    /// to fail); returns the dir and the config file's path.
    pub fn write_config(self) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = String::from("[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"gw.test\"\n");
        for line in &self.server {
            config.push_str(line);
            config.push('\n');
        }
        config.push_str(&format!("\n[maildir]\npath = \"{}\"\n", dir.path().join("mail").display()));
        for section in &self.sections {
            config.push('\n');
            config.push_str(section);
            config.push('\n');
        }
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config).expect("write config");
        (dir, path)
    }
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// A gateway with default settings delivering to its maildir.
    pub fn start() -> Gateway {
        Gateway::builder().start()
    }

    /// Runs `sluice ARGS` in `dir` and waits for its "listening" line.
    pub fn spawn(dir: tempfile::TempDir, args: &[&str]) -> Gateway {
        Gateway::spawn_logging(dir, args, Some("info,sluice=debug"))
    }

    /// Like `spawn`, with this RUST_LOG (None: unset, so the command line's options decide).
    pub fn spawn_logging(dir: tempfile::TempDir, args: &[&str], rust_log: Option<&str>) -> Gateway {
        let mut command = Command::new(sluice_bin());
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut text = sink.text.lock().unwrap();
                text.0.push_str(&line);
                text.0.push('\n');
                sink.changed.notify_all();
            }
            sink.text.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        let mut gateway = Gateway { address: String::new(), dir, child, log };
        let line = gateway.wait_for_log("sluice::smtp: listening address=");
        gateway.address = line.rsplit("address=").next().unwrap().trim().to_string();
        gateway
    }

    pub fn port(&self) -> u16 {
        self.address.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// Waits until the gateway holds more than `count` file descriptors.
    pub fn wait_for_fds_above(&self, count: usize) {
        poll_until(|| self.open_fds() > count, &format!("more than {count} open fds"));
    }

    /// Waits until the gateway holds at most `count` file descriptors (everything freed).
    pub fn wait_for_fds_at_most(&self, count: usize) {
        poll_until(|| self.open_fds() <= count, &format!("at most {count} open fds"));
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Messages in the maildir's new/, oldest first, without the Return-Path line we add.
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        maildir_messages(&self.maildir())
    }

    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().0.clone()
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_count(needle, 1)
    }

    /// Waits until `count` log lines contain `needle`; returns the last of them.
    pub fn wait_for_log_count(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + WAIT;
        let mut text = self.log.text.lock().unwrap();
        loop {
            let matching: Vec<&str> = text.0.lines().filter(|l| l.contains(needle)).collect();
            if matching.len() >= count {
                return matching[count - 1].to_string();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let log = &text.0;
            assert!(!text.1, "sluice exited without {count} log lines with {needle:?}; log:\n{log}");
            assert!(!left.is_zero(), "no {count} log lines with {needle:?}; log:\n{log}");
            text = self.log.changed.wait_timeout(text, left).unwrap().0;
        }
    }

    pub fn connect(&self) -> SmtpClient {
        SmtpClient::connect(&self.address)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        self.wait_exit()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_child(&mut self.child)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 10 ms until it holds; panics after `WAIT`.
pub fn poll_until(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child process within `WAIT`.
pub fn wait_child(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "process {} did not exit", child.id());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads new/ of a maildir, oldest first (names start with seconds and zero-padded
/// microseconds), stripping the Return-Path line.
pub fn maildir_messages(root: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(root.join("new")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => return Vec::new(),
    };
    names.sort();
    names
        .iter()
        .map(|p| {
            let content = std::fs::read(p).unwrap();
            let start = content.windows(2).position(|w| w == b"\r\n").map_or(0, |i| i + 2);
            assert!(content.starts_with(b"Return-Path: <"), "maildir file lacks Return-Path");
            content[start..].to_vec()
        })
        .collect()
}

/// A byte-level SMTP client for protocol tests.
pub struct SmtpClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// One reply: code and the text of all lines.
#[derive(Debug)]
pub struct ClientReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl ClientReply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl SmtpClient {
    pub fn connect(address: &str) -> SmtpClient {
        SmtpClient::from_stream(TcpStream::connect(address).expect("connect to gateway"))
    }

    /// Connects from another loopback source address (another "client IP").
    pub fn connect_from(address: &str, source: &str) -> SmtpClient {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let source: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
        socket.bind(&source.into()).expect("bind source address");
        let target: std::net::SocketAddr = address.parse().unwrap();
        socket.connect(&target.into()).expect("connect to gateway");
        SmtpClient::from_stream(socket.into())
    }

    fn from_stream(stream: TcpStream) -> SmtpClient {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        SmtpClient { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to gateway");
    }

    /// A second handle on the connection, for writing from another thread while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone the client socket")
    }

    /// Reads one reply; panics on timeout or a closed connection.
    pub fn reply(&mut self) -> ClientReply {
        self.try_reply().expect("connection closed while waiting for a reply")
    }

    /// Reads one reply; None if the connection closed first.
    pub fn try_reply(&mut self) -> Option<ClientReply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).expect("read reply (timed out?)") == 0 {
                return None;
            }
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.trim_end().to_string());
            if last {
                let code = lines[0][..3].parse().expect("reply code");
                return Some(ClientReply { code, lines });
            }
        }
    }

    /// Sends a command and asserts the reply code; returns the reply.
    pub fn cmd(&mut self, line: &str, code: u16) -> ClientReply {
        self.send(format!("{line}\r\n").as_bytes());
        let reply = self.reply();
        assert_eq!(reply.code, code, "{line} -> {}", reply.text());
        reply
    }

    /// Sends a command and returns the reply code, whatever it is.
    pub fn cmd_any(&mut self, line: &str) -> u16 {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply().code
    }

    /// Asserts the peer closes the connection (after any pending bytes).
    pub fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
    }

    /// Greeting + EHLO.
    pub fn hello(&mut self) {
        assert_eq!(self.reply().code, 220);
        self.cmd("EHLO client.test", 250);
    }

    /// MAIL a@client.test, RCPT b@dest.test, DATA: ready for content.
    pub fn begin_data(&mut self) {
        self.cmd("MAIL FROM:<a@client.test>", 250);
        self.cmd("RCPT TO:<b@dest.test>", 250);
        self.cmd("DATA", 354);
    }

    /// A full DATA transaction; returns the final reply.
    pub fn send_message(&mut self, from: &str, to: &[&str], content: &[u8]) -> ClientReply {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250);
        for rcpt in to {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), 250);
        }
        self.cmd("DATA", 354);
        self.send(&dot_stuff(content));
        self.send(b".\r\n");
        self.reply()
    }
}

/// Dot-stuffs CRLF content for DATA (content must end with CRLF).
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 64);
    let mut line_start = true;
    for &b in content {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out
}

/// A message with headers and `lines` body lines of base64-like text, CRLF-terminated.
pub fn message(subject: &str, body_bytes: usize) -> Vec<u8> {
    let mut out = format!("From: <a@client.test>\r\nTo: <b@dest.test>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\n").into_bytes();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0usize;
    while out.len() < body_bytes {
        for _ in 0..76 {
            out.push(alphabet[(i * 7 + i / 64) % 64]);
            i += 1;
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Runs a command to completion within `WAIT`, returning (status, stdout+stderr).
pub fn run_tool(program: &str, args: &[&str], stdin: Option<&[u8]>) -> (ExitStatus, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (the test command installs it)"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    let status = wait_child(&mut child);
    (status, out_thread.join().unwrap() + &err)
}

/// Runs a Python 3 script with arguments, in the tests' venv (`target/python`, made by
/// `.ci/setup` with the packages the tests need) when it exists.
pub fn python(script: &str, args: &[&str]) -> (ExitStatus, String) {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    let venv = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/python/bin/python3"));
    let python = if venv.is_file() { venv.to_string_lossy().into_owned() } else { "python3".to_owned() };
    run_tool(&python, &all, None)
}

/// The 1-based line of the first line of `path` starting with `prefix`.
pub fn line_of(path: &Path, prefix: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().position(|line| line.starts_with(prefix)).expect("line in config") + 1
}

/// `sluice check-config PATH`: its exit code and output.
pub fn check_config(path: &Path) -> (Option<i32>, String) {
    let (status, output) = run_tool(sluice_bin(), &["check-config", path.to_str().unwrap()], None);
    (status.code(), output)
}

/// Path of a Postfix tool (smtp-source, smtp-sink), which Debian installs in /usr/sbin.
pub fn postfix_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// TCP connections (IPv4 and IPv6, any state but LISTEN and TIME_WAIT) with `port` at either
/// end, from the kernel's socket table.
pub fn open_tcp_connections(port: u16) -> usize {
    const LISTEN: &str = "0A";
    const TIME_WAIT: &str = "06";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port_of = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            fields.len() > 3
                && fields[3] != LISTEN
                && fields[3] != TIME_WAIT
                && (port_of(fields[1]) == Some(port) || port_of(fields[2]) == Some(port))
        })
        .count()
}

/// A built wasm filter (`make filters` builds them into target/wasm32-wasip2/release).
pub fn filter_wasm(name: &str) -> String {
    let dir = std::env::var("SLUICE_FILTER_DIR").unwrap_or_else(|_| match std::env::var("CARGO_TARGET_DIR") {
        Ok(target) => format!("{target}/wasm32-wasip2/release"),
        Err(_) => concat!(env!("CARGO_MANIFEST_DIR"), "/../target/wasm32-wasip2/release").to_string(),
    });
    let path = Path::new(&dir).join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: build the filters first (make filters)", path.display());
    path.display().to_string()
}

/// A `[[stage]]` table for a wasm filter, with `[stage.config]` lines and extra stage keys.
pub fn wasm_stage(name: &str, filter: &str, stage_keys: &str, config: &str) -> String {
    format!(
        "[[stage]]\nname = \"{name}\"\nkind = \"wasm\"\npath = \"{}\"\n{stage_keys}\n[stage.config]\n{config}\n",
        filter_wasm(filter)
    )
}

/// One HTTP/1.1 request (Connection: close); returns status and body.
pub fn http(address: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the admin API");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the admin API's response");
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

impl Gateway {
    /// The admin API's address, from its "admin API listening" log line.
    pub fn admin_address(&self) -> String {
        let line = self.wait_for_log("admin API listening address=");
        line.rsplit("address=").next().unwrap().trim().to_string()
    }
}

/// The seed's load (shared/seeds): ten messages with a 256 KiB base64 attachment, sent at once
/// over parallel sessions with Python's smtplib; returns (status, output).
pub fn seed_load(port: u16) -> (ExitStatus, String) {
    python(SEED_LOAD, &[&port.to_string()])
}

const SEED_LOAD: &str = r#"
import smtplib, sys, threading, base64, os
from email.mime.multipart import MIMEMultipart
from email.mime.base import MIMEBase
from email.mime.text import MIMEText
from email import encoders
port = int(sys.argv[1])
errors = []
def send(i):
    msg = MIMEMultipart()
    msg['Subject'] = 'seed load %d' % i
    msg['From'] = 'load@client.test'
    msg['To'] = 'sink@dest.test'
    msg.attach(MIMEText('attachment follows'))
    part = MIMEBase('application', 'octet-stream')
    part.set_payload(os.urandom(192 * 1024))  # 256 KiB once base64-encoded
    encoders.encode_base64(part)
    msg.attach(part)
    try:
        with smtplib.SMTP('127.0.0.1', port, timeout=120) as s:
            s.sendmail('load@client.test', ['sink@dest.test'], msg.as_bytes())
    except Exception as e:
        errors.append('%d: %r' % (i, e))
threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
for t in threads: t.start()
for t in threads: t.join()
print('\n'.join(errors) or 'all sent')
sys.exit(1 if errors else 0)
"#;
