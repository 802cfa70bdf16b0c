//! Wasm filters in the real host: every verdict at every phase, header and body changes at the
//! next hop, filters seeing each other's output, and faults — trap, endless loop (CPU limit),
//! endless allocation (memory limit), malformed answers — each ending with the stage's on_error
//! reply while the gateway keeps serving; and no state shared between messages.

mod support;

use support::{message, wasm_stage, Gateway, SmtpClient};

fn faults(config: &str, stage_keys: &str) -> String {
    wasm_stage("faults", "faults", stage_keys, config)
}

/// Runs one transaction; returns the reply codes of MAIL, RCPT and end of data (0 = not reached).
fn transaction(client: &mut SmtpClient, content: &[u8]) -> [u16; 3] {
    let mail = client.cmd_any("MAIL FROM:<a@client.test>");
    if mail != 250 {
        return [mail, 0, 0];
    }
    let rcpt = client.cmd_any("RCPT TO:<b@dest.test>");
    if rcpt != 250 {
        client.cmd("RSET", 250);
        return [mail, rcpt, 0];
    }
    client.cmd("DATA", 354);
    client.send(&support::dot_stuff(content));
    client.send(b".\r\n");
    [mail, rcpt, client.reply().code]
}

#[test]
fn every_verdict_at_every_phase() {
    let phases = ["connect", "helo", "mail", "rcpt", "headers", "body", "end"];
    let kinds = [("reject", 550), ("tempfail", 451), ("discard", 250), ("accept", 250)];
    let mut stages = String::new();
    // One gateway per verdict kind keeps the number of processes small: the phase is chosen by
    // the config of one of seven stages, each active for one recipient domain... simpler: one
    // gateway per (kind, phase), all sharing the compiled filter cache of the OS page cache.
    for (kind, code) in kinds {
        for phase in phases {
            stages.clear();
            stages.push_str(&faults(&format!("mode = \"verdict\"\nverdict = \"{kind}\"\nat = \"{phase}\""), ""));
            let gateway = Gateway::builder().section(&stages).start();
            let mut client = gateway.connect();
            client.hello();
            let got = transaction(&mut client, &message("verdicts", 20_000));
            let envelope = matches!(phase, "connect" | "helo" | "mail");
            let expected = match (kind, envelope, phase) {
                ("reject" | "tempfail", true, _) => [code, 0, 0],
                ("reject" | "tempfail", false, "rcpt") => [250, code, 0],
                (_, _, _) => [250, 250, code],
            };
            assert_eq!(got, expected, "{kind} at {phase}");
            let delivered = gateway.delivered().len();
            assert_eq!(delivered, usize::from(kind == "accept"), "{kind} at {phase}: delivered {delivered}");
            client.cmd("QUIT", 221);
        }
    }
}

#[test]
fn stock_filters_change_headers_and_body_and_see_each_others_output() {
    let rules_one = "rules = \"\"\"\nheader Subject /offer/ tag-subject [ad]\nrcpt-to /@dest\\\\.test$/ add-header X-Checked-By one\n\"\"\"";
    // The second stage refuses what the first tagged: it sees the first's output.
    let rules_two =
        "rules = \"\"\"\nheader Subject /^\\\\[ad\\\\] .*refuse/ reject 550 5.7.1 Tagged ad refused\n\"\"\"";
    let gateway = Gateway::builder()
        .section(&wasm_stage("rules-one", "header_rules", "", rules_one))
        .section(&wasm_stage("rules-two", "header_rules", "", rules_two))
        .section(&wasm_stage("footer", "footer", "", "text = \"Scanned by Sluice\""))
        .section(&wasm_stage("eicar", "eicar", "", ""))
        .start();
    let mut client = gateway.connect();
    client.hello();
    let content = b"Subject: great offer\r\nFrom: <a@client.test>\r\n\r\nHello\r\n";
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], content).code, 250);
    assert_eq!(
        gateway.delivered(),
        vec![b"Subject: [ad] great offer\r\nFrom: <a@client.test>\r\nX-Checked-By: one\r\n\r\nHello\r\n-- \r\nScanned by Sluice\r\n".to_vec()]
    );
    let refused = client.send_message("a@client.test", &["b@dest.test"], b"Subject: offer to refuse\r\n\r\nx\r\n");
    assert_eq!(refused.code, 550, "{}", refused.text());
    assert!(refused.text().contains("Tagged ad refused"));
    let mut virus = b"Subject: hi\r\n\r\n".to_vec();
    virus.extend_from_slice(br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    virus.extend_from_slice(b"\r\n");
    let infected = client.send_message("a@client.test", &["b@dest.test"], &virus);
    assert_eq!(infected.code, 554, "{}", infected.text());
    assert_eq!(gateway.delivered().len(), 1);
}

#[test]
fn faults_end_with_the_on_error_reply_and_the_gateway_keeps_serving() {
    let cases = [
        ("mode = \"trap\"", "tempfail", 451, "panicked"),
        ("mode = \"loop\"", "tempfail", 451, "CPU limit"),
        ("mode = \"alloc\"", "reject", 554, "stage failed"),
        ("mode = \"garbage\"", "tempfail", 451, "non-5xx"),
        // Fail open only for a filter whose edits all come in one call (not one that sees the body).
        ("mode = \"trap\"\nat = \"end\"\nwants = \"end\"", "accept", 250, "panicked"),
    ];
    for (mode, policy, code, logged) in cases {
        let keys = format!("on_error = \"{policy}\"\ncpu_limit = \"200ms\"\nmemory_limit = \"16MiB\"");
        let gateway = Gateway::builder().section(&faults(mode, &keys)).start();
        // A second session keeps talking while the first one's filter misbehaves.
        let mut bystander = gateway.connect();
        bystander.hello();
        let mut client = gateway.connect();
        client.hello();
        let got = transaction(&mut client, &message("fault", 10_000));
        assert_eq!(got, [250, 250, code], "{mode} with on_error = {policy}");
        gateway.wait_for_log(logged);
        bystander.cmd("NOOP", 250);
        assert_eq!(client.send_message("a@client.test", &["b@dest.test"], b"Subject: x\r\n\r\nx\r\n").code, code);
        let mut fresh = gateway.connect();
        fresh.hello();
        fresh.cmd("QUIT", 221);
    }
}

#[test]
fn a_looping_filter_does_not_stall_other_sessions() {
    let gateway =
        Gateway::builder().section(&faults("mode = \"loop\"", "cpu_limit = \"3s\"\nmessage_timeout = \"20s\"")).start();
    let mut looping = gateway.connect();
    looping.hello();
    looping.begin_data();
    looping.send(&message("loop", 5000));
    looping.send(b".\r\n");
    // While the filter spins, plain sessions are served (each NOOP is a round trip).
    let mut other = gateway.connect();
    other.hello();
    for _ in 0..50 {
        other.cmd("NOOP", 250);
    }
    assert_eq!(looping.reply().code, 451);
}

#[test]
fn no_state_survives_from_one_message_to_the_next() {
    let gateway = Gateway::builder().section(&faults("mode = \"remember\"", "")).start();
    let mut client = gateway.connect();
    client.hello();
    for i in 0..3 {
        assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message(&format!("m{i}"), 500)).code, 250);
    }
    for delivered in gateway.delivered() {
        let text = String::from_utf8_lossy(&delivered).to_string();
        assert!(text.contains("X-Instance-Messages: 1\r\n"), "{text}");
    }
}

#[test]
fn a_broken_filter_file_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm not really").unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, format!("[[stage]]\nname = \"bogus\"\nkind = \"wasm\"\npath = \"{}\"\n", bogus.display()))
        .unwrap();
    let (status, output) =
        support::run_tool(support::sluice_bin(), &["serve", "--config", config.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{output}");
    let expected = format!("stage \"bogus\": path: {} is not a WebAssembly component", bogus.display());
    assert!(output.contains(&expected), "{output}");
}

#[test]
fn filter_test_prints_every_call_and_exits_by_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let eml = dir.path().join("m.eml");
    std::fs::write(&eml, b"Subject: big offer\r\nFrom: <a@client.test>\r\n\r\nhello\r\n").unwrap();
    let out = dir.path().join("out.eml");
    let rules = support::filter_wasm("header_rules");
    let run = |config: &str, extra: &[&str]| {
        let mut args = vec!["filter-test", rules.as_str(), "--eml", eml.to_str().unwrap(), "--config", config];
        args.extend_from_slice(extra);
        support::run_tool(support::sluice_bin(), &args, None)
    };
    let (status, output) = run("rules=header Subject /offer/ tag-subject [ad]", &["--output", out.to_str().unwrap()]);
    assert_eq!(status.code(), Some(0), "{output}");
    for line in [
        "mail-from  <sender@example.org> -> continue",
        "headers    2 fields -> continue",
        "~ change header Subject[1]: [ad] big offer",
        "result: delivered",
    ] {
        assert!(output.contains(line), "{line:?} missing in:\n{output}");
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"Subject: [ad] big offer\r\nFrom: <a@client.test>\r\n\r\nhello\r\n");
    let (status, output) = run("rules=mail-from /@example\\.org$/ reject 550 5.7.1 Go away", &[]);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("mail-from  <sender@example.org> -> reject 550 5.7.1 Go away"), "{output}");
    let (status, output) = run("rules=header Subject /(/ reject 550 5.7.1 x", &[]);
    assert_eq!(status.code(), Some(2), "a filter failure is neither accept nor reject: {output}");
    assert!(output.contains("bad pattern"), "{output}");
}
