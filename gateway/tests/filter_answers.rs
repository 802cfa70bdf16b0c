//! What a filter answers is as untrusted as what a client sends (issue 9, items 5–9): every
//! malformed or costly answer of the `faults` filter, end to end over real sockets — an enhanced
//! code carrying a second reply (a raw pipelining client and Python's smtplib), header changes
//! without a name or with values to fold, body output with bare CR/LF and a smuggled transaction
//! (checked byte by byte at a raw next hop), 20,000 header changes beside a clean session,
//! 200 MiB of body output from a 4 MiB message, a filter that drops a chunk and traps, and one
//! asking the host for more signatures than a message allows.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use support::{message, python, wasm_stage, Gateway, WAIT};

fn faults(name: &str, config: &str, stage_keys: &str) -> String {
    wasm_stage(name, "faults", stage_keys, config)
}

/// An enhanced code with a CRLF and a second reply in it (in TOML escapes).
const INJECTED: &str = "5.7.1\\r\\n250 2.0.0 injected";

#[test]
fn an_injected_enhanced_code_never_reaches_a_pipelining_client() {
    let cases = [
        // (enhanced, text, expected code): a second reply inside the enhanced code, a class that
        // contradicts the reply code — both malformed, so on_error (tempfail) answers.
        (INJECTED, "faults reply", 451),
        ("2.0.0", "faults reply", 451),
    ];
    for (enhanced, text, code) in cases {
        let config = format!("mode = \"reply\"\nat = \"end\"\nenhanced = \"{enhanced}\"\ntext = \"{text}\"");
        let gateway = Gateway::builder().section(&faults("faults", &config, "")).start();
        let mut client = gateway.connect();
        client.hello();
        client.begin_data();
        // The end of data and the next transaction's MAIL in one write, as a pipelining client does.
        client.send(b"Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<next@client.test>\r\n");
        let end = client.reply();
        assert_eq!(end.code, code, "{enhanced}: {}", end.text());
        let mail = client.reply();
        assert_eq!((mail.code, mail.text().contains("injected")), (250, false), "MAIL got {}", mail.text());
        client.cmd("RSET", 250);
        client.cmd("QUIT", 221);
        gateway.wait_for_log("stage failed");
        assert!(gateway.delivered().is_empty());
    }
}

#[test]
fn reply_text_is_stripped_of_control_characters_and_capped() {
    // 40 lines of 700 octets, one with a BEL and an escape sequence in it.
    let long = "y".repeat(700);
    let text: Vec<String> = (0..40).map(|i| format!("line {i} \\u0007\\u001b[2J{long}")).collect();
    let config = format!("mode = \"reply\"\nat = \"end\"\ntext = \"{}\"", text.join("\\n"));
    let gateway = Gateway::builder().section(&faults("faults", &config, "")).start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], b"Subject: x\r\n\r\nbody\r\n");
    assert_eq!(reply.code, 550, "{}", reply.text());
    assert!(reply.lines.len() <= 10, "{} reply lines", reply.lines.len());
    for line in &reply.lines {
        assert!(line.len() + 2 <= 512, "a reply line of {} octets", line.len() + 2);
        assert!(!line.chars().any(char::is_control), "control character in {line:?}");
        assert!(line.starts_with("550"), "{line:?}");
    }
    client.cmd("QUIT", 221);
}

const SMTPLIB_SEND: &str = r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=60)
try:
    refused = s.sendmail('a@client.test', ['b@dest.test'], b'Subject: x\r\n\r\nbody\r\n')
    print('SUCCESS', refused)
except smtplib.SMTPResponseException as e:
    print('REFUSED', e.smtp_code, e.smtp_error)
s.close()
"#;

#[test]
fn smtplib_reports_the_failure_of_a_filter_injecting_a_reply() {
    // A two-line text puts the injected "250" last in the first reply smtplib reads.
    let config = format!("mode = \"reply\"\nat = \"end\"\nenhanced = \"{INJECTED}\"\ntext = \"Rejected\\nby faults\"");
    let gateway = Gateway::builder().section(&faults("faults", &config, "")).start();
    let (status, output) = python(SMTPLIB_SEND, &[&gateway.port().to_string()]);
    assert!(status.success(), "{output}");
    assert!(output.starts_with("REFUSED 451"), "smtplib saw: {output}");
    assert!(gateway.delivered().is_empty());
}

/// A message that keeps its header section intact through the chain.
const INTACT: &[u8] =
    b"From: <a@client.test>\r\nTo: <b@dest.test>\r\nMessage-ID: <intact@client.test>\r\nSubject: intact\r\n\r\nbody\r\n";

#[test]
fn header_changes_without_a_field_name_are_refused_per_on_error() {
    // Every (name, op) pair is a stage armed by its own header field.
    let pairs: Vec<(&str, &str)> =
        ["", "\\u0001 :\\t"].iter().flat_map(|name| ["prepend", "add", "change"].map(|op| (*name, op))).collect();
    for (policy, wants, code) in [("tempfail", "", 451), ("reject", "", 554), ("accept", "wants = \"headers\"\n", 250)]
    {
        let stages: String = pairs
            .iter()
            .enumerate()
            .map(|(i, (name, op))| {
                let config = format!(
                    "{wants}mode = \"header\"\nat = \"headers\"\nwhen = \"X-V{i}\"\nop = \"{op}\"\nname = \"{name}\""
                );
                faults(&format!("v{i}"), &config, &format!("on_error = \"{policy}\""))
            })
            .collect();
        let gateway = Gateway::builder().section(&stages).start();
        let mut client = gateway.connect();
        client.hello();
        let mut expected = Vec::new();
        for (i, (name, op)) in pairs.iter().enumerate() {
            let mut content = format!("X-V{i}: on\r\n").into_bytes();
            content.extend_from_slice(INTACT);
            let reply = client.send_message("a@client.test", &["b@dest.test"], &content);
            assert_eq!(reply.code, code, "{op} {name:?} with on_error = {policy}: {}", reply.text());
            gateway.wait_for_log_count("empty field name", i + 1);
            // Accept skips the filter: its malformed change is dropped, the message is intact.
            if code == 250 {
                expected.push(content);
            }
            assert_eq!(gateway.delivered(), expected, "{op} {name:?} with on_error = {policy}");
        }
    }
}

#[test]
fn header_values_are_folded_to_lines_of_at_most_998_octets() {
    let stages = [
        ("words", "value = \"word \"\nrepeat = \"400\""),
        ("token", "value = \"x\"\nrepeat = \"1500\""),
        ("blank", "value = \"a\\n\\n \\n\\t\\nb\""),
    ]
    .map(|(name, value)| {
        let config = format!("mode = \"header\"\nat = \"headers\"\nname = \"X-{name}\"\n{value}");
        faults(name, &config, "")
    });
    let gateway = Gateway::builder().section(&stages.concat()).start();
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], INTACT).code, 250);
    let delivered = gateway.delivered().remove(0);
    let end = delivered.windows(4).position(|w| w == b"\r\n\r\n").expect("header section ends") + 2;
    let (head, body) = delivered.split_at(end);
    assert_eq!(body, b"\r\nbody\r\n");
    assert!(head.starts_with(&INTACT[..INTACT.len() - 8]), "{}", String::from_utf8_lossy(head));
    for line in head.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "a header line of {} octets", line.len());
        assert!(line.is_empty() || !line.iter().all(|b| b" \t\r".contains(b)), "whitespace-only line in the header");
    }
    let text = String::from_utf8_lossy(head);
    let unfolded = |name: &str| -> String {
        let start = text.find(&format!("\r\n{name}: ")).expect(name) + name.len() + 4;
        let rest = &text[start..];
        let end = rest.find("\r\nX-").or_else(|| rest.find("\r\n\r\n")).unwrap_or(rest.len());
        rest[..end].replace("\r\n", "")
    };
    assert_eq!(unfolded("X-words").split_whitespace().filter(|w| *w == "word").count(), 400);
    assert_eq!(unfolded("X-token").chars().filter(|c| *c == 'x').count(), 1500);
    assert_eq!(unfolded("X-blank").split_whitespace().collect::<Vec<_>>(), ["a", "b"]);
}

/// A next hop that keeps the raw bytes it is sent, read as a strict server reads them: only
/// CRLF.CRLF ends data, and every command line is recorded (a smuggled one would show).
struct RawNextHop {
    port: u16,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

#[derive(Default)]
struct Seen {
    commands: Vec<String>,
    /// The dot-stuffed content of each DATA, without the final `.` line.
    data: Vec<Vec<u8>>,
}

impl RawNextHop {
    fn start() -> RawNextHop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let shared = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let seen = shared.clone();
                std::thread::spawn(move || serve(stream, &seen));
            }
        });
        RawNextHop { port, seen }
    }

    /// Waits until `n` messages arrived; returns all of them.
    fn wait_for_data(&self, n: usize) -> Vec<Vec<u8>> {
        let (seen, changed) = &*self.seen;
        let deadline = Instant::now() + WAIT;
        let mut guard = seen.lock().unwrap();
        while guard.data.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the next hop got {} messages, not {n}", guard.data.len());
            guard = changed.wait_timeout(guard, left).unwrap().0;
        }
        guard.data.clone()
    }

    fn commands(&self) -> Vec<String> {
        self.seen.0.lock().unwrap().commands.clone()
    }
}

fn serve(stream: TcpStream, seen: &(Mutex<Seen>, Condvar)) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let _ = writer.write_all(b"220 raw.test ESMTP\r\n");
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        let command = String::from_utf8_lossy(&line).trim_end().to_string();
        seen.0.lock().unwrap().commands.push(command.clone());
        let verb = command.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "DATA" => b"354 go on\r\n",
            "QUIT" => b"221 bye\r\n",
            _ => b"250 2.0.0 ok\r\n",
        };
        let _ = writer.write_all(reply);
        match verb.as_str() {
            "QUIT" => return,
            "DATA" => {
                // The DATA line's CRLF counts for a terminator right at the start.
                let mut data = b"\r\n".to_vec();
                while !data.ends_with(b"\r\n.\r\n") {
                    if reader.read_until(b'\n', &mut data).unwrap_or(0) == 0 {
                        return;
                    }
                }
                data.truncate(data.len() - 3);
                let (lock, changed) = seen;
                lock.lock().unwrap().data.push(data.split_off(2));
                changed.notify_all();
                let _ = writer.write_all(b"250 2.0.0 queued raw\r\n");
            }
            _ => {}
        }
    }
}

/// Where a bare CR or LF sits in `bytes`, if anywhere.
fn bare_line_ending(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&i| match bytes[i] {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    })
}

fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    for line in wire.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

const SMUGGLING: &str =
    "before\\r.\\r\\nMAIL FROM:<evil@x>\\r\\nRCPT TO:<victim@dest.test>\\r\\nDATA\\r\\nsmuggled\\r\\n";

#[test]
fn body_output_reaches_the_next_hop_crlf_clean_and_dot_stuffed() {
    // (config, expected body): each variant is armed by its own header field.
    let smuggled: &[u8] = b"before\r\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nsmuggled\r\n";
    let variants: [(String, &[u8]); 7] = [
        (format!("output = \"{SMUGGLING}\""), smuggled),
        (format!("output = \"{SMUGGLING}\"\npieces = \"1\""), smuggled),
        ("output = \"one\\ntwo\\r\\n\"".into(), b"one\r\ntwo\r\n"),
        ("output = \"one\\rtwo\\r\\n\"".into(), b"one\r\ntwo\r\n"),
        ("output = \"one\\r\\nlast\\n\"".into(), b"one\r\nlast\r\n"),
        ("output = \"one\\r\\nno line end\"".into(), b"one\r\nno line end\r\n"),
        ("output = \"tail\\n.\\n\"\nat = \"end\"".into(), b"original\r\ntail\r\n.\r\n"),
    ];
    let mut stages: String = (0..variants.len())
        .map(|i| faults(&format!("v{i}"), &format!("mode = \"body\"\nwhen = \"X-V{i}\"\n{}", variants[i].0), ""))
        .collect();
    let appender =
        format!("mode = \"body\"\nat = \"end\"\nwhen = \"X-V{}\"\noutput = \"X-Injected: yes\\r\\n\"", variants.len());
    stages.push_str(&faults("appender", &appender, ""));
    let hop = RawNextHop::start();
    let gateway = Gateway::builder().relay_to(hop.port).section(&stages).start();
    let mut client = gateway.connect();
    client.hello();
    // Untouched content reaches this next hop as sent, and a body-less message stays body-less.
    for (n, content) in [&b"Subject: exact\r\n\r\n.dot\r\nline\r\n"[..], b"Subject: no body\r\n"].iter().enumerate() {
        assert_eq!(client.send_message("a@client.test", &["b@dest.test"], content).code, 250);
        assert_eq!(unstuff(&hop.wait_for_data(n + 1)[n]), *content);
    }
    for (i, (config, body)) in variants.iter().enumerate() {
        let head = format!("X-V{i}: on\r\nSubject: variant {i}\r\n\r\n");
        let content = format!("{head}original\r\n");
        let reply = client.send_message("a@client.test", &["b@dest.test"], content.as_bytes());
        assert_eq!(reply.code, 250, "{config}: {}", reply.text());
        let wire = hop.wait_for_data(i + 3).remove(i + 2);
        assert_eq!(
            bare_line_ending(&wire),
            None,
            "{config}: bare CR/LF on the wire: {:?}",
            String::from_utf8_lossy(&wire)
        );
        let mut expected = head.into_bytes();
        expected.extend_from_slice(body);
        assert_eq!(unstuff(&wire), expected, "{config}");
    }
    // Appended to a message without a body, a field-like line stays body: the section is closed.
    let content = format!("X-V{}: on\r\nSubject: no body\r\n", variants.len());
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], content.as_bytes()).code, 250);
    let wire = hop.wait_for_data(variants.len() + 3).pop().unwrap();
    assert_eq!(unstuff(&wire), format!("{content}\r\nX-Injected: yes\r\n").into_bytes());
    let mails = hop.commands().iter().filter(|c| c.starts_with("MAIL")).count();
    assert_eq!(mails, variants.len() + 3, "one MAIL per message, none smuggled: {:?}", hop.commands());
}

#[test]
fn body_output_with_bare_line_endings_is_malformed_under_reject() {
    let variants = ["output = \"one\\ntwo\\r\\n\"".to_string(), format!("output = \"{SMUGGLING}\"\npieces = \"1\"")];
    let stages: String = (0..variants.len())
        .map(|i| faults(&format!("v{i}"), &format!("mode = \"body\"\nwhen = \"X-V{i}\"\n{}", variants[i]), ""))
        .collect();
    let hop = RawNextHop::start();
    let gateway =
        Gateway::builder().server("bare_line_endings = \"reject\"").relay_to(hop.port).section(&stages).start();
    let mut client = gateway.connect();
    client.hello();
    for (i, config) in variants.iter().enumerate() {
        let content = format!("X-V{i}: on\r\nSubject: variant {i}\r\n\r\noriginal\r\n");
        let reply = client.send_message("a@client.test", &["b@dest.test"], content.as_bytes());
        assert_eq!(reply.code, 451, "{config}: {}", reply.text());
        gateway.wait_for_log_count("bare CR or LF", i + 1);
    }
    // A clean message still passes.
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], INTACT).code, 250);
    assert_eq!(hop.wait_for_data(1), vec![INTACT.to_vec()]);
}

#[test]
fn twenty_thousand_header_changes_fail_fast_while_other_sessions_are_served() {
    let config = "mode = \"header\"\nat = \"headers\"\nop = \"change\"\ncount = \"20000\"\nname = \"X-Absent\"\nwhen = \"X-Fault\"";
    let gateway = Gateway::builder().section(&faults("faults", config, "message_timeout = \"10s\"")).start();
    let mut bad = gateway.connect();
    bad.hello();
    bad.begin_data();
    // The header section is complete with the first body line: the filter answers now.
    bad.send(b"X-Fault: yes\r\nSubject: bad\r\n\r\nfirst line\r\n");
    gateway.wait_for_log("20000 header changes");
    // The bad transaction is still open; a clean one is served meanwhile.
    let mut clean = gateway.connect();
    clean.hello();
    assert_eq!(clean.send_message("a@client.test", &["b@dest.test"], INTACT).code, 250);
    bad.send(b"more\r\n.\r\n");
    assert_eq!(bad.reply().code, 451);
    assert_eq!(gateway.delivered(), vec![INTACT.to_vec()]);
}

#[test]
fn body_output_beyond_max_message_size_is_a_stage_failure() {
    let gateway = Gateway::builder()
        .server("max_message_size = \"5MiB\"")
        .section(&faults("grow", "mode = \"grow\"\nfactor = \"50\"", ""))
        .start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("big", 4 << 20));
    assert_eq!(reply.code, 451, "{}", reply.text());
    gateway.wait_for_log("server.max_message_size");
    assert!(gateway.delivered().is_empty());
}

#[test]
fn on_error_accept_fails_open_only_while_the_filter_has_changed_nothing() {
    // The filter drops the first body chunk, then traps: its edit has gone on to the spool, so
    // accept cannot drop it; the failure is a tempfail and nothing is relayed (65 KB short).
    let dropper = faults("dropper", "mode = \"drop-then-trap\"", "on_error = \"accept\"");
    let gateway = Gateway::builder().section(&dropper).start();
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("short", 200_000));
    assert_eq!(reply.code, 451, "{}", reply.text());
    gateway.wait_for_log("edited=true");
    assert!(gateway.delivered().is_empty());
    // A body filter that traps before changing anything fails open: the message goes on intact.
    let reader = faults("reader", "mode = \"trap\"\nat = \"body\"", "on_error = \"accept\"");
    let gateway = Gateway::builder().section(&reader).start();
    let mut client = gateway.connect();
    client.hello();
    let content = message("intact", 200_000);
    let reply = client.send_message("a@client.test", &["b@dest.test"], &content);
    assert_eq!(reply.code, 250, "{}", reply.text());
    gateway.wait_for_log("edited=false");
    assert_eq!(gateway.delivered(), vec![content]);
}

#[test]
fn a_filter_gets_at_most_eight_signatures_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let pem = sluice_dkim::SigningKey::generate_ed25519().unwrap().to_pkcs8_pem().unwrap();
    std::fs::write(&key, &pem).unwrap();
    let keys = format!("[stage.keys]\nkey = \"{}\"", key.display());
    let stage = faults("signer", "mode = \"sign\"\ncount = 5\nvalue = \"hash input\"", &keys);
    let gateway = Gateway::builder().section(&stage).start();
    let mut client = gateway.connect();
    client.hello();
    for _ in 0..2 {
        let reply = client.send_message("a@client.test", &["b@dest.test"], b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(reply.code, 250, "{}", reply.text());
    }
    client.cmd("QUIT", 221);
    let delivered = gateway.delivered();
    assert_eq!(delivered.len(), 2);
    for message in &delivered {
        let text = String::from_utf8_lossy(message);
        // 5 at the header section and 3 of 5 at the end: the 8 are the message's, not a call's, and
        // the next message's instance gets its own; the refusals fail nothing.
        let expected =
            "X-Faults-Signed: headers: 5 signed; end: 3 signed; refused: at most 8 signatures per message\r\n";
        assert!(text.contains(expected), "{text}");
    }
}
