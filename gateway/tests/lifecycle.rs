//! The process as an operator meets it: `check-config` errors, the embedded default (with `sluice
//! ctl` finding its admin API unaided), a busy admin port, and the SIGTERM drain.

mod support;

use support::{message, run_tool, sluice_bin, Gateway};

#[test]
fn check_config_accepts_the_example_and_names_file_line_and_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/sluice.toml");
    let (status, output) = run_tool(sluice_bin(), &["check-config", example], None);
    assert!(status.success(), "{output}");
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[server]\nlisten = [\"127.0.0.1:2525\"]\nmax_mesage_size = \"1MiB\"\n",
            ":3:1: server.max_mesage_size: unknown key \"max_mesage_size\"",
        ),
        ("[server]\nmax_message_size = \"ten\"\n", ":2:20: server.max_message_size: invalid size"),
        ("[relay]\naddress = \"no-port\"\n", ":2:1: relay.address: must be host:port"),
        ("[server]\ncommand_timeout = 5\n", ":2:19: server.command_timeout:"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (status, output) = run_tool(sluice_bin(), &["check-config", path.to_str().unwrap()], None);
        assert_eq!(status.code(), Some(1), "{output}");
        let first = output.lines().last().unwrap_or_default();
        assert!(first.contains(&format!("{}{expected}", path.display())), "want {expected:?} in {output}");
    }
    let (status, output) = run_tool(sluice_bin(), &["check-config", "/nonexistent/sluice.toml"], None);
    assert_eq!(status.code(), Some(1));
    assert!(output.contains("/nonexistent/sluice.toml: cannot read config"), "{output}");
    let (status, output) = run_tool(sluice_bin(), &["serve", "--config", "/nonexistent/sluice.toml"], None);
    assert_eq!(status.code(), Some(1), "{output}");
}

#[test]
fn embedded_default_listens_on_2525_and_delivers_to_local_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::spawn(dir, &["serve", "-d"]);
    assert_eq!(gateway.address, "127.0.0.1:2525");
    let starting = gateway.wait_for_log("sluice starting");
    assert!(starting.contains(env!("CARGO_PKG_VERSION")) && starting.contains("embedded default"), "{starting}");
    let (status, output) = run_tool(
        "swaks",
        &["--server", "127.0.0.1:2525", "--from", "a@client.test", "--to", "b@dest.test", "--body", "first run"],
        None,
    );
    assert!(status.success(), "{output}");
    let delivered = support::maildir_messages(&gateway.dir.path().join("mail"));
    assert_eq!(delivered.len(), 1);
    assert!(String::from_utf8_lossy(&delivered[0]).contains("first run"));
    // The embedded default serves the admin API where `sluice ctl` looks without arguments.
    assert_eq!(gateway.admin_address(), "127.0.0.1:8025");
    let (status, output) = run_tool(sluice_bin(), &["ctl", "show", "stats"], None);
    assert!(status.success(), "{output}");
    assert!(output.contains("\n  accepted:    1\n"), "{output}");
    let eicar = output.lines().find(|l| l.trim_start().starts_with("eicar ")).unwrap_or_else(|| panic!("{output}"));
    assert_eq!(eicar.split_whitespace().nth(1), Some("wasm"), "{output}");
}

#[test]
fn the_start_is_logged_with_the_version_and_the_config_file() {
    let gateway = Gateway::start();
    let starting = gateway.wait_for_log("sluice starting");
    let config = gateway.dir.path().join("sluice.toml");
    let version = env!("CARGO_PKG_VERSION");
    assert!(starting.contains(version) && starting.contains(config.to_str().unwrap()), "{starting}");
}

#[test]
fn an_admin_address_in_use_stops_the_start_with_an_error_saying_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let (_dir, config) = Gateway::builder().section(&format!("[admin]\nlisten = \"{address}\"")).write_config();
    let (status, output) = run_tool(sluice_bin(), &["serve", "-d", "--config", config.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{output}");
    let line = output.lines().last().unwrap_or_default();
    assert!(line.starts_with(&format!("sluice: cannot listen on {address} for the admin API")), "{output}");
    assert!(line.contains("set [admin] listen to a free address") && line.contains("in use"), "{output}");
    // Found before the SMTP port is opened: no client ever reaches a gateway that then exits.
    assert!(!output.contains("sluice::smtp: listening address="), "{output}");
}

#[test]
fn sigterm_closes_idle_sessions_and_lets_transactions_finish() {
    let mut gateway = Gateway::builder().server("shutdown_timeout = \"60s\"").start();
    let mut idle = gateway.connect();
    idle.hello();
    let mut busy = gateway.connect();
    busy.hello();
    busy.begin_data();
    busy.send(b"Subject: in flight\r\n\r\n");
    let pid = gateway.pid().to_string();
    run_tool("kill", &["-TERM", &pid], None);
    // The idle session is told at once; new connections are refused.
    assert_eq!(idle.reply().code, 421);
    idle.expect_closed();
    gateway.wait_for_log("no longer accepting");
    assert!(std::net::TcpStream::connect(&gateway.address).is_err());
    // The transaction in flight completes and is delivered; then the session is closed.
    busy.send(b"still arriving\r\n.\r\n");
    assert_eq!(busy.reply().code, 250);
    assert_eq!(busy.reply().code, 421);
    assert!(gateway.wait_exit().success());
    assert_eq!(gateway.delivered(), vec![b"Subject: in flight\r\n\r\nstill arriving\r\n".to_vec()]);
}

#[test]
fn sigterm_deadline_closes_stalled_transactions_with_421() {
    let mut gateway = Gateway::builder().server("shutdown_timeout = \"1s\"").start();
    let mut stalled = gateway.connect();
    stalled.hello();
    stalled.begin_data();
    stalled.send(&message("stalled", 10_000));
    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    let reply = stalled.reply();
    assert_eq!(reply.code, 421, "{}", reply.text());
    assert!(gateway.delivered().is_empty());
}
