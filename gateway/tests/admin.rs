//! Operations end to end: the admin API shows a session paused by a slow stage (and `sluice ctl`
//! does too), `sluice ctl show stats` shows every stage's kind as the API gives it, /metrics
//! parses with a real Prometheus parser, every endpoint's error cases, hot reload, readiness
//! while draining, and run-time trace switches changing what is logged.

mod support;

use std::process::ExitStatus;

use sluice::admin::views::StatsView;
use sluice::config::stages::StageKind;
use support::{http, message, run_tool, sluice_bin, Gateway, SmtpClient};

const TOKEN: &str = "s3cret-admin-token";

/// A gateway with the admin API on a free loopback port, a token, and `stages`.
fn gateway_with_admin(stages: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let gateway = Gateway::builder()
        .section(&format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"", token.display()))
        .section(stages)
        .start();
    // Keep the token file alive as long as the gateway.
    std::mem::forget(dir);
    gateway
}

fn get(gateway: &Gateway, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http(&gateway.admin_address(), "GET", path, Some(TOKEN));
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

const SLOW: &str = "[flow]\nhigh_watermark = \"64KiB\"\nlow_watermark = \"16KiB\"\n\n[[stage]]\nname = \"slow\"\nkind = \"test\"\n[stage.test]\ndelay = \"300ms\"\n";

#[test]
fn a_session_paused_by_a_slow_stage_is_named_by_the_api_and_by_ctl() {
    let gateway = gateway_with_admin(SLOW);
    let address = gateway.address.clone();
    let sender = std::thread::spawn(move || {
        let mut client = SmtpClient::connect(&address);
        client.hello();
        client.send_message("a@client.test", &["b@dest.test"], &message("slow", 1 << 20)).code
    });
    let mut paused = None;
    support::poll_until(
        || {
            let (_, sessions) = get(&gateway, "/sessions");
            paused = sessions.as_array().and_then(|all| all.iter().find(|s| s["paused"] == true).cloned());
            paused.is_some()
        },
        "a paused session in /sessions",
    );
    let session = paused.unwrap();
    assert_eq!(session["paused_by"], "slow", "{session:#}");
    assert_eq!(session["state"], "data", "{session:#}");
    assert_eq!(session["transaction"]["from"], "a@client.test");
    let queued = session["queued"].as_array().unwrap();
    assert_eq!(queued[0]["stage"], "slow");
    assert!(queued[0]["bytes"].as_u64().unwrap() >= 16 * 1024, "{session:#}");
    let id = session["id"].as_str().unwrap().to_string();
    assert_eq!(get(&gateway, &format!("/sessions/{id}")).1["id"], id);
    let (status, output) = ctl(&gateway, &["show", "sessions"]);
    assert!(status.success(), "{output}");
    let row = output.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("no row for {id}:\n{output}"));
    assert!(row.contains("slow"), "the row names the stage: {row}");
    assert_eq!(sender.join().unwrap(), 250);
    gateway.wait_for_log("session closed");
    let (_, stats) = get(&gateway, "/stats");
    let flow = &stats["flow"];
    assert!(flow["pauses"].as_u64().unwrap() >= 1, "{stats:#}");
    assert_eq!(flow["pauses"], flow["resumes"], "{stats:#}");
    assert_eq!(flow["paused_now"], 0);
    assert_eq!(stats["transactions"]["accepted"], 1);
    let (status, output) = ctl(&gateway, &["--json", "show", "stats"]);
    assert!(status.success() && output.contains("\"chain_generation\""), "{output}");
}

/// Runs `sluice ctl --admin … --token-file … ARGS` against `gateway`.
fn ctl(gateway: &Gateway, args: &[&str]) -> (ExitStatus, String) {
    let admin = format!("http://{}", gateway.admin_address());
    let token_file = gateway.dir.path().join("ctl-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut all = vec!["ctl", "--admin", admin.as_str(), "--token-file", token_file.to_str().unwrap()];
    all.extend_from_slice(args);
    run_tool(sluice_bin(), &all, None)
}

#[test]
fn ctl_shows_each_stage_with_its_kind_and_reads_every_answer_of_the_real_api() {
    let stages = support::wasm_stage("virus", "eicar", "", "") + "\n[[stage]]\nname = \"pass\"\nkind = \"test\"\n";
    let gateway = gateway_with_admin(&stages);
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message("kinds", 1000)).code, 250);
    let (status, output) = ctl(&gateway, &["show", "stats"]);
    assert!(status.success(), "{output}");
    let row = |name: &str| -> Vec<String> {
        let line = output.lines().find(|l| l.trim_start().starts_with(&format!("{name} ")));
        line.unwrap_or_else(|| panic!("no row for stage {name}:\n{output}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(row("NAME"), ["NAME", "KIND", "CALLS", "FAILURES"], "{output}");
    assert_eq!(row("virus")[1], "wasm", "{output}");
    assert_eq!(row("pass")[1], "test", "{output}");
    assert_ne!(row("virus")[2], "0", "the message was seen by the filter:\n{output}");
    // --json after the subcommand too; what it prints is the API's own answer, in the API's type.
    let (status, output) = ctl(&gateway, &["show", "stats", "--json"]);
    assert!(status.success(), "{output}");
    let stats: StatsView = serde_json::from_str(&output).unwrap_or_else(|e| panic!("{e}:\n{output}"));
    let kinds: Vec<(&str, StageKind)> = stats.stages.iter().map(|s| (s.name.as_str(), s.kind)).collect();
    assert_eq!(kinds, [("virus", StageKind::Wasm), ("pass", StageKind::Test)]);
    assert_eq!(stats.transactions.accepted, 1);
    // The other answers ctl reads, from the real handlers.
    let (status, output) = ctl(&gateway, &["reload"]);
    assert!(status.success(), "{output}");
    assert_eq!(output, "reloaded: generation 2 (stages: virus, pass)\n  nothing changed in the config\n");
    let (status, output) = ctl(&gateway, &["trace", "relay", "on"]);
    assert!(status.success(), "{output}");
    assert_eq!(output, "trace relay: on\n");
    let (status, output) = ctl(&gateway, &["show", "session", "ffffffff"]);
    assert!(!status.success() && output.contains("no session ffffffff"), "{output}");
}

const PARSE_METRICS: &str = r#"
import sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
text = urllib.request.urlopen(req, timeout=30).read().decode()
names = sorted(f.name for f in text_string_to_metric_families(text))
print("\n".join(names))
"#;

#[test]
fn metrics_parse_with_a_real_prometheus_parser() {
    let gateway = gateway_with_admin(SLOW);
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message("m", 200_000)).code, 250);
    let url = format!("http://{}/metrics", gateway.admin_address());
    let (status, output) = support::python(PARSE_METRICS, &[&url, TOKEN]);
    assert!(status.success(), "the exposition must parse:\n{output}");
    for family in [
        "sluice_sessions",
        "sluice_sessions_open",
        "sluice_transactions",
        "sluice_stage_calls",
        "sluice_stage_call_seconds",
        "sluice_flow_pauses",
        "sluice_flow_resumes",
        "sluice_flow_paused_now",
        "sluice_relay_replies",
        "sluice_chain_generation",
        "sluice_chain_generations_alive",
        "sluice_wasm_instantiation_seconds",
    ] {
        assert!(output.lines().any(|l| l == family), "{family} missing from:\n{output}");
    }
}

#[test]
fn endpoint_errors_reload_and_readiness() {
    let gateway = gateway_with_admin("");
    let admin = gateway.admin_address();
    assert_eq!(http(&admin, "GET", "/healthz", None).0, 200, "health probes need no token");
    assert_eq!(http(&admin, "GET", "/readyz", None).0, 200);
    assert_eq!(http(&admin, "GET", "/stats", None).0, 401);
    assert_eq!(http(&admin, "GET", "/stats", Some("wrong")).0, 401);
    assert_eq!(http(&admin, "GET", "/nowhere", Some(TOKEN)).0, 404);
    assert_eq!(http(&admin, "POST", "/stats", Some(TOKEN)).0, 405);
    assert_eq!(http(&admin, "GET", "/reload", Some(TOKEN)).0, 405);
    assert_eq!(http(&admin, "GET", "/sessions/ffffffff", Some(TOKEN)).0, 404);
    assert_eq!(http(&admin, "POST", "/trace/bogus/on", Some(TOKEN)).0, 404);
    // Reload: a good config bumps the generation; a broken one keeps the running chain.
    let (status, body) = http(&admin, "POST", "/reload", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["generation"], 2, "{body}");
    assert_eq!(report["applied"], serde_json::json!([]), "the config did not change: {body}");
    assert_eq!(report["restart_needed"], serde_json::json!([]), "{body}");
    let config = gateway.dir.path().join("sluice.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{good}\n[[stage]]\nname = \"broken\"\nkind = \"wasm\"\npath = \"/nonexistent.wasm\"\n"),
    )
    .unwrap();
    let (status, body) = http(&admin, "POST", "/reload", Some(TOKEN));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("broken"), "the error names the stage: {body}");
    assert_eq!(get(&gateway, "/stats").1["chain_generation"], 2);
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], b"Subject: still\r\n\r\nserving\r\n").code, 250);
    // While draining (a transaction holds the gateway open), readiness is false.
    client.cmd("MAIL FROM:<a@client.test>", 250);
    run_tool("kill", &["-TERM", &gateway.pid().to_string()], None);
    gateway.wait_for_log("no longer accepting");
    assert_eq!(http(&admin, "GET", "/readyz", None).0, 503);
}

#[test]
fn trace_switches_change_what_is_logged_at_run_time() {
    let gateway = gateway_with_admin("");
    let admin = gateway.admin_address();
    let session = |subject: &str| {
        let mut client = gateway.connect();
        client.hello();
        assert_eq!(
            client
                .send_message("a@client.test", &["b@dest.test"], format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes())
                .code,
            250
        );
        client.cmd("QUIT", 221);
        client.expect_closed();
    };
    session("before");
    gateway.wait_for_log_count("session closed", 1);
    assert!(!gateway.log().contains("sluice::io"), "io is not traced by default");
    let (status, body) = http(&admin, "POST", "/trace/io/on", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    session("during");
    gateway.wait_for_log_count("session closed", 2);
    let traced = gateway.log().matches("sluice::io").count();
    assert!(traced > 0, "io tracing must log reads and writes");
    assert!(!gateway.log().contains("Subject: during"), "bodies are never logged");
    assert_eq!(http(&admin, "POST", "/trace/io/off", Some(TOKEN)).0, 200);
    session("after");
    gateway.wait_for_log_count("session closed", 3);
    assert_eq!(gateway.log().matches("sluice::io").count(), traced, "no io lines after switching off");
}
