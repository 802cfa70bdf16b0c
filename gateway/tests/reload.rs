//! Hot reload end to end: what can change live reaches new sessions while sessions already open
//! keep the generation they started with; what needs a restart is reported and keeps running as
//! it was; a new next hop gets new sessions' mail (and no idle connection to the old one is
//! reused); `sluice_chain_generations_alive` follows old generations out; SIGHUP, the admin API
//! and `sluice ctl reload` take the same path.

mod support;

use std::net::{TcpListener, TcpStream};

use support::sink::SmtpSink;
use support::{http, message, run_tool, sluice_bin, Gateway, GatewayBuilder, SmtpClient};

fn with_admin(builder: GatewayBuilder) -> Gateway {
    builder.section("[admin]\nlisten = \"127.0.0.1:0\"").start()
}

/// Replaces `from` by `to` in the gateway's config file (which must contain it).
fn edit_config(gateway: &Gateway, from: &str, to: &str) {
    let path = gateway.dir.path().join("sluice.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in the config:\n{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

/// POST /reload; the report as JSON.
fn reload(gateway: &Gateway) -> serde_json::Value {
    let (status, body) = http(&gateway.admin_address(), "POST", "/reload", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn names(report: &serde_json::Value, key: &str) -> Vec<String> {
    let list = report[key].as_array().unwrap_or_else(|| panic!("no list {key} in {report:#}"));
    list.iter().map(|name| name.as_str().unwrap().to_string()).collect()
}

/// Greeting and EHLO; returns the EHLO reply's text.
fn ehlo(client: &mut SmtpClient) -> String {
    assert_eq!(client.reply().code, 220);
    client.cmd("EHLO client.test", 250).text()
}

fn send(client: &mut SmtpClient, subject: &str, size: usize) -> u16 {
    client.send_message("a@client.test", &["b@dest.test"], &message(subject, size)).code
}

#[test]
fn a_lower_max_message_size_refuses_in_new_sessions_while_an_open_session_keeps_its_limit() {
    let gateway = with_admin(Gateway::builder().server("max_message_size = \"64KiB\""));
    let mut open = gateway.connect();
    assert!(ehlo(&mut open).contains("SIZE 65536"), "the starting limit is advertised");
    let mut before = gateway.connect();
    before.hello();
    assert_eq!(send(&mut before, "before", 20_000), 250);

    edit_config(&gateway, "max_message_size = \"64KiB\"", "max_message_size = \"8KiB\"");
    let admin = format!("http://{}", gateway.admin_address());
    let (status, output) = run_tool(sluice_bin(), &["ctl", "--admin", &admin, "reload"], None);
    assert!(status.success(), "{output}");
    assert!(output.starts_with("reloaded: generation 2 (stages: none)\n"), "{output}");
    assert!(output.contains("\n  applied: server.max_message_size\n"), "{output}");
    assert!(!output.contains("restart"), "nothing needs a restart: {output}");
    let line = gateway.wait_for_log("config reloaded");
    assert!(line.contains("generation=2") && line.contains("applied=\"server.max_message_size\""), "{line}");

    let mut after = gateway.connect();
    assert!(ehlo(&mut after).contains("SIZE 8192"), "new sessions advertise the new limit");
    assert_eq!(send(&mut after, "after", 20_000), 552, "the message accepted before is refused now");
    assert_eq!(send(&mut open, "open", 20_000), 250, "the session opened before keeps its limit");
}

#[test]
fn a_changed_listen_address_needs_a_restart_and_the_old_port_keeps_serving() {
    let gateway = with_admin(Gateway::builder());
    let unused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    edit_config(&gateway, "listen = [\"127.0.0.1:0\"]", &format!("listen = [\"{unused}\"]\nmax_recipients = 7"));
    let report = reload(&gateway);
    assert_eq!(names(&report, "restart_needed"), ["server.listen"], "{report:#}");
    assert_eq!(names(&report, "applied"), ["server.max_recipients"], "the rest applies: {report:#}");
    let line = gateway.wait_for_log("config reloaded;");
    assert!(line.contains("restart_needed=\"server.listen\""), "the log says what needs a restart: {line}");
    // The running value stays, so the next reload still reports it.
    assert_eq!(names(&reload(&gateway), "restart_needed"), ["server.listen"]);
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(send(&mut client, "still here", 1000), 250);
    assert!(TcpStream::connect(unused).is_err(), "nothing listens on the new address before a restart");
}

#[test]
fn a_new_relay_address_gets_new_sessions_mail_and_no_idle_connection_to_the_old_one() {
    let (old_hop, new_hop) = (SmtpSink::start(&[]), SmtpSink::start(&[]));
    let gateway = with_admin(Gateway::builder().relay_to(old_hop.port));
    let mut first = gateway.connect();
    first.hello();
    assert_eq!(send(&mut first, "first", 1000), 250);
    first.cmd("QUIT", 221);
    // Its next-hop connection is now idle in the pool, ready for the next session.
    gateway.wait_for_log("parked next-hop connection");
    let mut open = gateway.connect();
    open.hello();

    edit_config(&gateway, &format!("127.0.0.1:{}", old_hop.port), &format!("127.0.0.1:{}", new_hop.port));
    assert_eq!(names(&reload(&gateway), "applied"), ["relay.address"]);
    let mut second = gateway.connect();
    second.hello();
    assert_eq!(send(&mut second, "second", 1000), 250);
    let relayed = new_hop.wait_for_messages(1);
    assert!(String::from_utf8_lossy(&relayed[0].data).contains("Subject: second"));
    assert_eq!(send(&mut open, "open", 1000), 250, "the session opened before keeps its next hop");
    let old = old_hop.wait_for_messages(2);
    assert!(old.iter().any(|m| String::from_utf8_lossy(&m.data).contains("Subject: open")), "{old:?}");
    assert_eq!(new_hop.messages().len(), 1);
}

/// `sluice_chain_generations_alive` from /metrics.
fn generations_alive(gateway: &Gateway) -> u64 {
    let (status, text) = http(&gateway.admin_address(), "GET", "/metrics", None);
    assert_eq!(status, 200);
    let line = text.lines().find(|l| l.starts_with("sluice_chain_generations_alive ")).expect("the gauge");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn wait_for_generations_alive(gateway: &Gateway, count: u64) {
    support::poll_until(|| generations_alive(gateway) == count, &format!("{count} generations alive"));
}

#[test]
fn an_old_generation_stays_alive_while_its_session_runs_and_sighup_reloads_the_same_way() {
    let gateway = with_admin(Gateway::builder());
    wait_for_generations_alive(&gateway, 1);
    let mut open = gateway.connect();
    open.hello();
    assert_eq!(reload(&gateway)["generation"], 2);
    wait_for_generations_alive(&gateway, 2);
    let mut new = gateway.connect();
    new.hello();
    new.cmd("QUIT", 221);
    new.expect_closed();
    gateway.wait_for_log_count("session closed", 1);
    assert_eq!(generations_alive(&gateway), 2, "the old session still holds generation 1");
    open.cmd("QUIT", 221);
    open.expect_closed();
    wait_for_generations_alive(&gateway, 1);

    edit_config(&gateway, "hostname = \"gw.test\"", "hostname = \"gw2.test\"");
    run_tool("kill", &["-HUP", &gateway.pid().to_string()], None);
    let line = gateway.wait_for_log("config reloaded generation=3");
    assert!(line.contains("applied=\"server.hostname\""), "{line}");
    let mut client = gateway.connect();
    assert!(client.reply().text().starts_with("220 gw2.test "), "new sessions greet with the new name");
    assert_eq!(reload(&gateway)["generation"], 4, "SIGHUP and the API count the same generations");
    wait_for_generations_alive(&gateway, 2);
    client.cmd("QUIT", 221);
    wait_for_generations_alive(&gateway, 1);
}

const TWO_STAGES: &str =
    "[[stage]]\nname = \"tagger\"\nkind = \"test\"\n\n[[stage]]\nname = \"dropped\"\nkind = \"test\"\n";

#[test]
fn stages_added_removed_and_changed_are_reported_logged_and_run() {
    let gateway = with_admin(Gateway::builder().section(TWO_STAGES));
    let changed = "[[stage]]\nname = \"tagger\"\nkind = \"test\"\n[stage.test]\nadd_header = \"X-Tagged: yes\"\n\n\
                   [[stage]]\nname = \"added\"\nkind = \"test\"\n";
    edit_config(&gateway, TWO_STAGES, changed);
    let report = reload(&gateway);
    assert_eq!(names(&report, "stages"), ["tagger", "added"], "{report:#}");
    assert_eq!(names(&report, "stages_added"), ["added"]);
    assert_eq!(names(&report, "stages_removed"), ["dropped"]);
    assert_eq!(names(&report, "stages_changed"), ["tagger"]);
    let line = gateway.wait_for_log("config reloaded");
    for field in ["added=\"added\"", "removed=\"dropped\"", "changed=\"tagger\"", "stages=\"tagger,added\""] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(send(&mut client, "tagged", 1000), 250);
    let delivered = gateway.delivered();
    assert!(String::from_utf8_lossy(&delivered[0]).contains("X-Tagged: yes"), "the new chain ran");
}

#[test]
fn a_lower_session_limit_refuses_new_sessions_until_enough_have_ended() {
    let gateway = with_admin(Gateway::builder());
    let mut open = gateway.connect();
    open.hello();
    edit_config(&gateway, "hostname = \"gw.test\"", "hostname = \"gw.test\"\nmax_sessions = 1");
    assert_eq!(names(&reload(&gateway), "applied"), ["server.max_sessions"]);
    let mut refused = gateway.connect();
    let reply = refused.reply();
    assert_eq!(reply.code, 421, "{}", reply.text());
    assert!(reply.text().contains("too many sessions"), "{}", reply.text());
    gateway.wait_for_log("refused: session limit reached sessions=1 max_sessions=1");
    open.cmd("QUIT", 221);
    open.expect_closed();
    gateway.wait_for_log("session closed");
    let mut admitted = gateway.connect();
    admitted.hello();
}

#[test]
fn a_rebuilt_filter_file_is_a_changed_stage_and_the_same_file_is_not() {
    let files = tempfile::tempdir().unwrap();
    let filter = files.path().join("eicar.wasm");
    std::fs::copy(support::filter_wasm("eicar"), &filter).unwrap();
    let stage = format!("[[stage]]\nname = \"av\"\nkind = \"wasm\"\npath = \"{}\"\n", filter.display());
    let gateway = with_admin(Gateway::builder().section(&stage));
    let report = reload(&gateway);
    assert_eq!(names(&report, "stages_changed"), Vec::<String>::new(), "{report:#}");
    // A custom section (id 0, size 5, name "test"): the same filter, other bytes, as a rebuild gives.
    let mut bytes = std::fs::read(&filter).unwrap();
    bytes.extend_from_slice(&[0, 5, 4, b't', b'e', b's', b't']);
    std::fs::write(&filter, bytes).unwrap();
    let report = reload(&gateway);
    assert_eq!(names(&report, "stages_changed"), ["av"], "{report:#}");
    assert_eq!(report["generation"], 3);
}
