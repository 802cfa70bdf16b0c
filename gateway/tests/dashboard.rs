//! The live dashboard: its feed read as a client reads it (the token, the hello, ticks naming a
//! session paused by a slow stage, message lines once each), its page and assets under their
//! Content-Security-Policy, requests from other web pages refused, and the page itself in a real headless Chromium (support/browser.rs):
//! a wrong token refused, a session held mid-message shown as paused by `slow`, a delivered
//! message in the list, a trace switch, the token in memory only, a refused reload's error. The
//! screenshot is kept in target/test-artifacts/dashboard.png.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice::admin::views::{HelloEvent, TickEvent};
use support::browser::Browser;
use support::{http, message, Gateway, SmtpClient, WAIT};

const TOKEN: &str = "dashboard-test-token";

/// `fast → slow`: slow takes a second per body chunk, so a client sending a few hundred KiB is
/// paused by it for seconds.
const CHAIN: &str = "[flow]\nhigh_watermark = \"64KiB\"\nlow_watermark = \"16KiB\"\n\n\
    [[stage]]\nname = \"fast\"\nkind = \"test\"\n\n\
    [[stage]]\nname = \"slow\"\nkind = \"test\"\n[stage.test]\ndelay = \"1s\"\n";

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let gateway = Gateway::builder()
        .section(&format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"", token.display()))
        .section(CHAIN)
        .start();
    std::mem::forget(dir);
    gateway
}

/// One event of the feed: its name and JSON.
type Event = (String, String);

/// Reads `/events` with `token` on a thread; events arrive on the channel.
fn listen(admin: &str, token: &str) -> mpsc::Receiver<Event> {
    let mut stream = TcpStream::connect(admin).unwrap();
    let request = format!("GET /events HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let (events, received) = mpsc::channel();
    std::thread::spawn(move || {
        let mut name = String::new();
        // Chunk-size lines of the chunked encoding sit between frames; only event lines count.
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if let Some(event) = line.strip_prefix("event: ") {
                name = event.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                if events.send((name.clone(), data.to_string())).is_err() {
                    return;
                }
            }
        }
    });
    received
}

/// The next tick for which `check` holds.
fn tick_where(events: &mpsc::Receiver<Event>, what: &str, check: impl Fn(&TickEvent) -> bool) -> TickEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (name, data) = events.recv_timeout(left).unwrap_or_else(|_| panic!("no tick with {what}"));
        assert_eq!(name, "tick", "only ticks after the hello");
        let tick: TickEvent = serde_json::from_str(&data).unwrap();
        if check(&tick) {
            return tick;
        }
    }
}

/// A client in the middle of a message (300 KB of it sent, no end of data yet).
fn held_client(gateway: &Gateway) -> SmtpClient {
    let mut client = gateway.connect();
    client.hello();
    client.begin_data();
    client.send(&message("held", 300_000));
    client
}

#[test]
fn the_feed_needs_the_token_and_streams_the_gateway_now() {
    let gateway = gateway();
    let admin = gateway.admin_address();
    let (status, page) = http(&admin, "GET", "/", None);
    assert_eq!(status, 200, "the page itself needs no token: it holds no data");
    assert!(page.contains("/dashboard/app.js"), "{page}");
    assert_eq!(http(&admin, "GET", "/dashboard/uPlot.iife.min.js", None).0, 200);
    assert_eq!(http(&admin, "GET", "/dashboard/nothing.js", None).0, 404);
    assert_eq!(http(&admin, "GET", "/favicon.ico", None).0, 204, "the browser's question, answered");
    assert_eq!(http(&admin, "GET", "/events", None).0, 401);
    assert_eq!(http(&admin, "GET", "/events", Some("wrong")).0, 401);
    let mut raw = TcpStream::connect(&admin).unwrap();
    raw.write_all(format!("GET /dashboard HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut head = String::new();
    let mut reader = BufReader::new(raw);
    while reader.read_line(&mut head).unwrap() > 2 && !head.ends_with("\r\n\r\n") {}
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self';"), "{head}");
    assert!(!head.contains("unsafe-inline"), "{head}");

    // Requests from another web page are refused, whatever their token.
    for headers in ["Origin: https://evil.example\r\n", "Host: evil.example:8025\r\n"] {
        let mut raw = TcpStream::connect(&admin).unwrap();
        let host = if headers.starts_with("Host") { String::new() } else { format!("Host: {admin}\r\n") };
        let request = format!(
            "POST /reload HTTP/1.1\r\n{host}{headers}Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        raw.write_all(request.as_bytes()).unwrap();
        let mut status = String::new();
        BufReader::new(raw).read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 403"), "{headers}: {status}");
    }
    let events = listen(&admin, TOKEN);
    let (name, data) = events.recv_timeout(WAIT).expect("the hello");
    assert_eq!(name, "hello");
    assert_eq!(serde_json::from_str::<HelloEvent>(&data).unwrap().messages, vec![]);
    let mut client = held_client(&gateway);
    let paused = tick_where(&events, "a session paused by slow", |tick| {
        tick.sessions.iter().any(|s| s.paused && s.paused_by.as_deref() == Some("slow"))
    });
    let slow = paused.stages.iter().find(|stage| stage.name == "slow").unwrap();
    assert!(slow.queued_bytes >= 16 * 1024, "{slow:?}");
    assert_eq!((slow.generation, paused.stats.flow.paused_now), (1, 1));
    assert_eq!(paused.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["fast", "slow"]);
    client.send(b".\r\n");
    let reply = client.reply();
    assert_eq!(reply.code, 250, "{}\n{}", reply.text(), gateway.log());
    let delivered = tick_where(&events, "the message line", |tick| !tick.messages.is_empty());
    assert_eq!(delivered.messages.len(), 1, "{:?}", delivered.messages);
    let line = &delivered.messages[0];
    assert_eq!((line.result.as_str(), line.from.as_str()), ("accepted", "a@client.test"), "{line:?}");
    assert!(line.reply.starts_with("250 "), "{line:?}");
    let slow = delivered.stages.iter().find(|stage| stage.name == "slow").unwrap();
    assert!(slow.calls > 0 && slow.p99_ms.is_some() && slow.verdicts["continue"] > 0, "{slow:?}");
    // Each line is sent once; a new listener gets it in its hello.
    let later = tick_where(&events, "a later tick", |_| true);
    assert!(later.messages.is_empty(), "{:?}", later.messages);
    let second = listen(&admin, TOKEN);
    let (_, data) = second.recv_timeout(WAIT).unwrap();
    assert_eq!(serde_json::from_str::<HelloEvent>(&data).unwrap().messages.len(), 1);
}

#[test]
fn the_page_shows_who_holds_a_session_what_was_delivered_and_a_refused_reload() {
    let gateway = gateway();
    let admin = gateway.admin_address();
    let browser = Browser::start();
    browser.goto(&format!("http://{admin}/"));
    let token = browser.wait_for("#token", "the token form");
    browser.type_into(&token, "not-the-token");
    browser.click(&browser.wait_for("#token-submit", "the connect button"));
    browser.wait_for_text("#token-error", "wrong token", "the wrong token refused");
    let token = browser.wait_for("#token", "the token form again");
    browser.execute("arguments[0].value = ''", vec![token.json()]);
    browser.type_into(&token, TOKEN);
    browser.click(&browser.wait_for("#token-submit", "the connect button"));
    browser.wait_for_text("#conn-status", "live", "the page connected");

    let mut client = held_client(&gateway);
    support::poll_until(
        || http(&admin, "GET", "/sessions", Some(TOKEN)).1.contains("\"paused_by\": \"slow\""),
        "the API naming the held session paused by slow",
    );
    let shown = Instant::now();
    let cell = browser.wait_for_text("#sessions .paused-by", "paused by slow", "the held session paused by slow");
    let took = shown.elapsed();
    eprintln!("the page showed \"{cell}\" {took:?} after the API did");
    // Ticks come every second; the page follows within two.
    assert!(took < Duration::from_secs(2), "the page took {took:?}");
    // Everything ran under the page's policy: its script, uPlot and the charts it draws.
    let ran = browser.execute(
        "return [typeof window.sluiceDashboard, typeof uPlot, document.querySelectorAll('#chart-rates canvas').length]",
        vec![],
    );
    assert_eq!((ran[0].as_str(), ran[1].as_str()), (Some("object"), Some("function")), "{ran}");
    assert!(ran[2].as_u64() >= Some(1), "a chart drawn: {ran}");
    let bars = browser.wait_for_text("#sessions .queues", "slow", "the bar of slow's queue");
    assert!(bars.contains("fast") && bars.contains("slow"), "a bar per stage: {bars}");

    // Another client's message, small enough to pass slow in a call or two.
    let mut other = gateway.connect();
    other.hello();
    assert_eq!(other.send_message("c@client.test", &["d@dest.test"], &message("quick", 1000)).code, 250);
    let row = browser.wait_for_text("#messages tr.message", "accepted", "the delivered message listed");
    assert!(row.contains("c@client.test"), "{row}");
    std::fs::create_dir_all(artifacts()).unwrap();
    browser.screenshot(artifacts().join("dashboard.png"));
    client.send(b".\r\n");
    assert_eq!(client.reply().code, 250);
    browser.wait_for_text("#stages tr[data-stage=\"slow\"]", "continue", "slow's verdicts counted");

    // A trace switch, turned on from the page.
    browser.click(&browser.wait_for("#trace-flow", "the flow trace switch"));
    browser.wait_for_text("#trace-result", "flow on", "the flow trace switched on");
    gateway.wait_for_log("trace changed");
    // The token lives in the page's memory only.
    let kept =
        browser.execute("return [localStorage.length, sessionStorage.length, document.cookie, location.href]", vec![]);
    assert_eq!(kept[0], 0);
    assert_eq!(kept[1], 0);
    assert_eq!(kept[2], "");
    assert!(!kept[3].as_str().unwrap().contains(TOKEN), "{kept}");

    // A reload the config refuses: the page shows the gateway's error, naming file and line.
    let config = gateway.dir.path().join("sluice.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("kind = \"test\"", "kind = \"wsam\"")).unwrap();
    browser.click(&browser.wait_for("#reload", "the reload button"));
    let refused = browser.wait_for_text("#reload-result", "unknown value \"wsam\"", "the refused reload's error");
    assert!(refused.contains("sluice.toml:"), "{refused}");
}

fn artifacts() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
}
