//! Scale-out end to end: a real HAProxy running the README's config (docs/haproxy.cfg) in front
//! of two Sluice instances (PROXY v2, health checks on the admin API's /readyz), both relaying
//! to one smtp-sink. 500 messages, each with its own Message-ID, go over 20 sessions from
//! 127.0.0.5; once 150 are answered one instance gets SIGTERM, and clients whose session it
//! closes reconnect through HAProxy and retry what was not answered 250. At the end: all 500
//! answered 250, each reached the sink exactly once, the stopped instance exited cleanly, the
//! sessions after the stop went to the survivor, HAProxy marked the stopped one down, and the
//! instances' session lines name the real client (127.0.0.5), not HAProxy (127.0.0.1).

mod support;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use support::haproxy::{Backend, Haproxy, CONFIG};
use support::sink::SmtpSink;
use support::{dot_stuff, message, Gateway, WAIT};

const MESSAGES: usize = 500;
const SESSIONS: usize = 20;
/// Answered messages before the SIGTERM.
const STOP_AFTER: usize = 150;
/// The client's address: HAProxy connects to the instances from 127.0.0.1.
const CLIENT: &str = "127.0.0.5";
/// Bound on sessions a client thread opens for its messages.
const MAX_SESSIONS_PER_CLIENT: usize = 20;

fn instance(sink: &SmtpSink) -> Gateway {
    Gateway::builder()
        .server("proxy_protocol = true")
        .server("proxy_trusted = [\"127.0.0.1/32\"]")
        .relay_to(sink.port)
        .section("[admin]\nlisten = \"127.0.0.1:0\"")
        .start()
}

fn backend(gateway: &Gateway) -> Backend {
    let admin: SocketAddr = gateway.admin_address().parse().unwrap();
    Backend { smtp: gateway.port(), admin: admin.port() }
}

/// An SMTP client that reports a closed connection or an unexpected reply instead of panicking.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects from `CLIENT` and reads the greeting (a session on the instance from then on).
    fn open(address: &str) -> io::Result<Client> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&format!("{CLIENT}:0").parse::<SocketAddr>().unwrap().into())?;
        socket.connect(&address.parse::<SocketAddr>().unwrap().into())?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(WAIT))?;
        let mut client = Client { reader: BufReader::new(stream.try_clone()?), writer: stream };
        client.expect(220)?;
        Ok(client)
    }

    fn reply(&mut self) -> io::Result<u16> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.get(..3).and_then(|code| code.parse().ok()).ok_or_else(|| io::Error::other(line));
            }
        }
    }

    fn expect(&mut self, code: u16) -> io::Result<()> {
        match self.reply()? {
            got if got == code => Ok(()),
            got => Err(io::Error::other(format!("{got} instead of {code}"))),
        }
    }

    fn command(&mut self, line: &str, code: u16) -> io::Result<()> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.expect(code)
    }

    /// One transaction; Ok(final reply code).
    fn send(&mut self, content: &[u8]) -> io::Result<u16> {
        self.command("MAIL FROM:<load@client.test>", 250)?;
        self.command("RCPT TO:<sink@dest.test>", 250)?;
        self.command("DATA", 354)?;
        self.writer.write_all(&[dot_stuff(content), b".\r\n".to_vec()].concat())?;
        self.reply()
    }
}

fn content(n: usize) -> Vec<u8> {
    message(&format!("scale-{n}"), 600)
}

/// Messages answered 250 so far, for the stop to wait on.
#[derive(Default)]
struct Progress {
    answered: Mutex<usize>,
    changed: Condvar,
}

/// What one client thread did.
#[derive(Default)]
struct Outcome {
    answered: Vec<usize>,
    /// Sessions that got a greeting, and how many of those were not its first.
    sessions: usize,
    reconnects: usize,
}

/// Sends `ids` through `address`, reconnecting after a 421 or a dropped connection and retrying
/// every message not answered 250.
fn run_client(address: &str, ids: Vec<usize>, progress: &Progress) -> Outcome {
    let mut outcome = Outcome::default();
    let mut pending = ids.into_iter().peekable();
    let mut attempts = 0;
    while pending.peek().is_some() {
        attempts += 1;
        assert!(attempts <= MAX_SESSIONS_PER_CLIENT, "{attempts} sessions were not enough");
        let Ok(mut client) = Client::open(address) else { continue };
        outcome.sessions += 1;
        outcome.reconnects += usize::from(outcome.sessions > 1);
        if client.command("EHLO client.test", 250).is_err() {
            continue;
        }
        while let Some(&n) = pending.peek() {
            match client.send(&content(n)) {
                Ok(250) => {
                    outcome.answered.push(n);
                    pending.next();
                    *progress.answered.lock().unwrap() += 1;
                    progress.changed.notify_all();
                }
                // A 421 or 4xx, or the connection gone: a new session retries the message.
                _ => break,
            }
        }
        let _ = client.command("QUIT", 221);
    }
    outcome
}

#[test]
fn two_instances_behind_haproxy_lose_and_duplicate_nothing_when_one_stops() {
    let sink = SmtpSink::start(&[]);
    let mut first = instance(&sink);
    let second = instance(&sink);
    let haproxy = Haproxy::start([backend(&first), backend(&second)]);

    let progress = Arc::new(Progress::default());
    let clients: Vec<_> = (0..SESSIONS)
        .map(|client| {
            let ids: Vec<usize> = (0..MESSAGES).filter(|n| n % SESSIONS == client).collect();
            let (address, progress) = (haproxy.address.clone(), progress.clone());
            std::thread::spawn(move || run_client(&address, ids, &progress))
        })
        .collect();

    let deadline = Instant::now() + WAIT;
    let mut answered = progress.answered.lock().unwrap();
    while *answered < STOP_AFTER {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "only {answered} messages answered");
        answered = progress.changed.wait_timeout(answered, left).unwrap().0;
    }
    drop(answered);
    let status = first.terminate();
    assert!(status.success(), "the stopped instance exited with {status}; log:\n{}", first.log());
    haproxy.wait_for_log("Server sluice/sluice1 is DOWN");

    let outcomes: Vec<Outcome> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let mut answered: Vec<usize> = outcomes.iter().flat_map(|o| o.answered.iter().copied()).collect();
    answered.sort_unstable();
    assert_eq!(answered, (0..MESSAGES).collect::<Vec<_>>(), "every message answered 250 once");
    let reconnects: usize = outcomes.iter().map(|o| o.reconnects).sum();
    assert!(reconnects > 0, "stopping an instance interrupted no session");

    // Each message reached the next hop exactly once.
    let mut at_sink: HashMap<String, usize> = HashMap::new();
    for delivered in sink.wait_for_messages(MESSAGES) {
        let text = String::from_utf8_lossy(&delivered.data).into_owned();
        let id = text.lines().find_map(|l| l.strip_prefix("Message-ID: ")).unwrap_or("(none)").to_string();
        *at_sink.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = at_sink.iter().filter(|(_, &count)| count != 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    for n in 0..MESSAGES {
        assert!(at_sink.contains_key(&format!("<scale-{n}@client.test>")), "message {n} missing at the sink");
    }
    assert_eq!(at_sink.len(), MESSAGES);

    // Every session was served by one of the two, the ones after the stop by the survivor; both
    // name the real client, learnt from HAProxy's PROXY v2 header.
    let sessions: usize = outcomes.iter().map(|o| o.sessions).sum();
    let client_sessions = |log: &str| {
        log.lines().filter(|l| l.contains("session closed") && l.contains(&format!("peer={CLIENT}:"))).count()
    };
    let stopped = client_sessions(&first.log());
    assert!(stopped > 0, "the stopped instance served no session");
    eprintln!("{sessions} sessions, {reconnects} after a stop, {stopped} served by the stopped instance");
    let survivor = second.wait_for_log_count("session closed", sessions - stopped);
    assert_eq!(client_sessions(&second.log()), sessions - stopped, "{survivor}");
    for log in [first.log(), second.log()] {
        assert!(log.contains(&format!("peer={CLIENT}:")) && log.contains("proxy=127.0.0.1:"), "{log}");
    }
    assert!(first.log().contains("shutting down: no longer accepting"));
    assert_eq!(haproxy.server("sluice1", "status"), "DOWN");
    assert_eq!(haproxy.server("sluice2", "status"), "UP");
}

/// The README shows the config this test runs, verbatim.
#[test]
fn the_readme_shows_the_haproxy_config_the_test_runs() {
    let config = std::fs::read_to_string(CONFIG).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(readme.contains(&format!("```haproxy\n{config}```\n")), "README lacks docs/haproxy.cfg verbatim");
}
