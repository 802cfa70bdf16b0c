//! The ClamAV bridge against a real clamd (own config and signature database, loopback port and
//! unix socket): clean mail byte-exact, EICAR in the body and in a base64 attachment, our own
//! signature, the tag and discard actions, clamd down and killed mid-scan, messages too large
//! to scan, and the seed's load with no connection left behind.

mod support;

use support::clamd::{Clamd, EICAR, MARKER};
use support::{message, Gateway, SmtpClient};

fn clamd_stage(address: &str, extra: &str) -> String {
    format!("[[stage]]\nname = \"antivirus\"\nkind = \"clamd\"\naddress = \"{address}\"\ntimeout = \"20s\"\n{extra}\n")
}

fn with_eicar_attachment() -> Vec<u8> {
    use std::fmt::Write;
    let encoded = base64_encode(EICAR);
    let mut text = String::from("From: <a@client.test>\r\nSubject: attachment\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\nContent-Type: application/octet-stream; name=\"t.com\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"t.com\"\r\n\r\n");
    for line in encoded.as_bytes().chunks(76) {
        let _ = write!(text, "{}\r\n", String::from_utf8_lossy(line));
    }
    text.push_str("--b1--\r\n");
    text.into_bytes()
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in data.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn body_with(text: &[u8]) -> Vec<u8> {
    [b"From: <a@client.test>\r\nSubject: hello\r\n\r\nbefore\r\n".as_slice(), text, b"\r\nafter\r\n"].concat()
}

fn send(client: &mut SmtpClient, content: &[u8]) -> support::ClientReply {
    client.send_message("a@client.test", &["b@dest.test"], content)
}

#[test]
fn clean_mail_passes_byte_exact_and_viruses_are_refused_by_name() {
    let clamd = Clamd::start("64M");
    let gateway = Gateway::builder().section(&clamd_stage(&clamd.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    let clean = message("clean", 300_000);
    assert_eq!(send(&mut client, &clean).code, 250);
    assert!(gateway.delivered() == vec![clean], "clean mail must arrive byte-exact");
    for (content, name) in [
        (body_with(EICAR), "Eicar-Test-Signature"),
        (with_eicar_attachment(), "Eicar"),
        (body_with(MARKER.as_bytes()), "Sluice.Test.Marker"),
    ] {
        let reply = send(&mut client, &content);
        assert_eq!(reply.code, 554, "{}", reply.text());
        assert!(reply.text().contains("5.7.1") && reply.text().contains(name), "{}", reply.text());
    }
    assert_eq!(gateway.delivered().len(), 1);
}

#[test]
fn unix_socket_tag_and_discard_actions() {
    let clamd = Clamd::start("64M");
    let unix = format!("unix:{}", clamd.socket().display());
    let tagging = Gateway::builder().section(&clamd_stage(&unix, "action = \"tag\"")).start();
    let mut client = tagging.connect();
    client.hello();
    assert_eq!(send(&mut client, &body_with(EICAR)).code, 250);
    assert_eq!(send(&mut client, b"Subject: fine\r\n\r\nfine\r\n").code, 250);
    let delivered: Vec<String> = tagging.delivered().iter().map(|m| String::from_utf8_lossy(m).to_string()).collect();
    assert!(
        delivered[0].contains("X-Virus-Status: Infected\r\nX-Virus-Name: Eicar-Test-Signature"),
        "{}",
        delivered[0]
    );
    assert!(delivered[1].starts_with("Subject: fine\r\nX-Virus-Status: Clean\r\n\r\nfine\r\n"), "{}", delivered[1]);
    let discarding = Gateway::builder().section(&clamd_stage(&clamd.address(), "action = \"discard\"")).start();
    let mut client = discarding.connect();
    client.hello();
    assert_eq!(send(&mut client, &body_with(EICAR)).code, 250);
    assert!(discarding.delivered().is_empty());
    discarding.wait_for_log("result=\"discarded\"");
}

#[test]
fn clamd_down_or_killed_mid_scan_is_451_and_nothing_is_lost() {
    let mut clamd = Clamd::start("64M");
    let gateway = Gateway::builder().section(&clamd_stage(&clamd.address(), "")).start();
    let mut client = gateway.connect();
    client.hello();
    client.begin_data();
    client.send(&message("killed", 200_000));
    // The scan is under way once clamd has our connection; kill it mid-stream.
    support::poll_until(|| support::open_tcp_connections(clamd.port) > 0, "a scan connection to clamd");
    clamd.kill();
    client.send(&message("more", 200_000)[200..]);
    client.send(b".\r\n");
    let reply = client.reply();
    assert_eq!(reply.code, 451, "{}", reply.text());
    // clamd stays down: the next message is refused for now, not passed unscanned.
    let reply = send(&mut client, b"Subject: x\r\n\r\nx\r\n");
    assert_eq!(reply.code, 451, "{}", reply.text());
    assert!(gateway.delivered().is_empty());
    gateway.wait_for_log("stage failed");
}

#[test]
fn messages_too_large_to_scan_never_pass_as_clean() {
    // clamd's own limit is 1 MiB; the stage's max_size is higher: clamd's refusal is the signal.
    let clamd = Clamd::start("1M");
    let gateway = Gateway::builder()
        .section(&clamd_stage(&clamd.address(), "max_size = \"50MiB\"\noversize = \"reject\""))
        .start();
    let mut client = gateway.connect();
    client.hello();
    let reply = send(&mut client, &message("huge", 3 << 20));
    assert_eq!(reply.code, 554, "{}", reply.text());
    assert!(reply.text().contains("too large to scan"), "{}", reply.text());
    // With max_size below clamd's limit the stage decides itself, per `oversize`.
    let gateway = Gateway::builder()
        .section(&clamd_stage(&clamd.address(), "max_size = \"512KiB\"\noversize = \"accept\""))
        .start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(send(&mut client, &message("big", 800_000)).code, 250);
    let delivered = String::from_utf8_lossy(&gateway.delivered()[0]).to_string();
    assert!(delivered.contains("X-Virus-Status: Unscanned (too large)"), "{}", &delivered[..300]);
    gateway.wait_for_log("message too large to scan");
    let gateway = Gateway::builder().section(&clamd_stage(&clamd.address(), "max_size = \"512KiB\"")).start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(send(&mut client, &message("big", 800_000)).code, 451);
}

#[test]
fn seed_load_through_clamd_leaves_no_connection_behind() {
    let clamd = Clamd::start("64M");
    let sink = support::sink::SmtpSink::start(&[]);
    let gateway = Gateway::builder().relay_to(sink.port).section(&clamd_stage(&clamd.address(), "")).start();
    let (status, output) = support::seed_load(gateway.port());
    assert!(status.success(), "{output}");
    assert_eq!(sink.wait_for_messages(10).len(), 10);
    gateway.wait_for_log_count("session closed", 10);
    support::poll_until(|| support::open_tcp_connections(gateway.port()) == 0, "no client connection left");
    support::poll_until(|| support::open_tcp_connections(clamd.port) == 0, "no clamd connection left");
}

/// A slow clamd is backpressure: with clamd frozen, the stage stops draining, its inbox reaches
/// the high watermark and the client is paused (not buffered without bound); thawed, everything
/// drains, the message is answered and pauses equal resumes.
#[test]
fn a_slow_clamd_pauses_the_client_through_the_flow_controller() {
    let clamd = Clamd::start("64M");
    let gateway = Gateway::builder()
        .section("[flow]\nhigh_watermark = \"256KiB\"\nlow_watermark = \"64KiB\"")
        .section(&clamd_stage(&clamd.address(), ""))
        .start();
    clamd.freeze();
    let address = gateway.address.clone();
    // More than the loopback socket buffers to clamd can absorb.
    let content = message("slow clamd", 24 << 20);
    let sender = std::thread::spawn(move || {
        let mut client = SmtpClient::connect(&address);
        client.hello();
        send(&mut client, &content).code
    });
    gateway.wait_for_log("sluice::flow: pause");
    assert!(!sender.is_finished(), "the client must be waiting while clamd is frozen");
    clamd.thaw();
    assert_eq!(sender.join().unwrap(), 250);
    // The spool's memory budget may pause the client for a moment too (its own resume line,
    // stage=spool): the scanner's resume is the one to wait for; it comes only if it paused.
    let resume = gateway.wait_for_log("stage=antivirus paused_ms=");
    assert!(resume.contains("sluice::flow: resume"), "the pause was due to the scanner: {resume}");
    let closed = gateway.wait_for_log("session closed");
    let count =
        |key: &str| closed.split_whitespace().find_map(|f| f.strip_prefix(key)).unwrap().parse::<u64>().unwrap();
    assert!(count("pauses=") >= 1, "{closed}");
    assert_eq!(count("pauses="), count("resumes="), "{closed}");
}
