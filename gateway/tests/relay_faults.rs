//! The relay against a next hop that misbehaves (the scripted hop): a DATA reply other than 354,
//! a next hop that stops reading, SIGTERM before and after the final dot, and idle pooled
//! connections closed on time — by us with QUIT, or noticed at once when the next hop closes them.

mod support;

use support::scripted_hop::{Behaviour, ScriptedHop};
use support::{http, message, open_tcp_connections, poll_until, run_tool, Gateway, SmtpClient};

/// A gateway relaying to `hop` with the given relay command timeout and extra `[server]` lines.
fn gateway_to(hop: &ScriptedHop, command_timeout: &str, server: &[&str]) -> Gateway {
    let mut builder = Gateway::builder().section(&format!(
        "[relay]\naddress = \"127.0.0.1:{}\"\ncommand_timeout = \"{command_timeout}\"\nconnect_timeout = \"5s\"",
        hop.port
    ));
    for line in server {
        builder = builder.server(line);
    }
    builder.start()
}

/// Sends SIGTERM without waiting for the exit.
fn sigterm(gateway: &Gateway) {
    let (status, output) = run_tool("kill", &["-TERM", &gateway.pid().to_string()], None);
    assert!(status.success(), "kill: {output}");
}

/// Sends a whole message (envelope, DATA, content, dot) without waiting for the final reply.
fn send_without_waiting(client: &mut SmtpClient, content: &[u8]) {
    client.begin_data();
    client.send(&support::dot_stuff(content));
    client.send(b".\r\n");
}

#[test]
fn a_positive_reply_to_data_is_a_protocol_error_and_the_connection_is_dropped() {
    let hop = ScriptedHop::start(Behaviour::DataReply("250 2.0.0 Ok"));
    let gateway = gateway_to(&hop, "20s", &[]);
    let mut client = gateway.connect();
    client.hello();
    for round in 1..=2 {
        let reply = client.send_message("a@client.test", &["b@dest.test"], &message("data-250", 3000));
        assert_eq!(reply.code, 451, "{}", reply.text());
        assert!(reply.text().contains("4.4.0"), "{}", reply.text());
        // The connection that answered out of protocol is closed, and the next message opens a new one.
        let seen = hop.wait_for("the gateway close the connection", |seen| seen.closed == round);
        assert_eq!(seen.connections, round, "{seen:?}");
    }
    client.cmd("QUIT", 221);
    gateway.wait_for_log_count("result=\"tempfailed\"", 2);
    assert!(!gateway.log().contains("result=\"accepted\""), "{}", gateway.log());
    assert!(hop.seen().messages.is_empty());
}

#[test]
fn a_refusal_of_data_is_passed_back_and_the_connection_is_dropped() {
    let hop = ScriptedHop::start(Behaviour::DataReply("554 5.5.1 Error: no valid recipients"));
    let gateway = gateway_to(&hop, "20s", &[]);
    let mut client = gateway.connect();
    client.hello();
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("data-554", 3000));
    assert_eq!(reply.code, 554, "{}", reply.text());
    assert!(reply.text().contains("5.5.1 Error: no valid recipients"), "{}", reply.text());
    hop.wait_for("the gateway close the connection", |seen| seen.closed == 1);
    client.cmd("QUIT", 221);
    gateway.wait_for_log("result=\"rejected\"");
}

#[test]
fn a_next_hop_that_stops_reading_is_451_and_the_session_ends() {
    let hop = ScriptedHop::start(Behaviour::StallAfter354);
    let gateway = gateway_to(&hop, "2s", &[]);
    let big = message("stuck", 32 << 20);
    // A client that waits for its answer gets 451 once the writes made no progress for 2 s.
    let mut waiting = gateway.connect();
    waiting.hello();
    let reply = waiting.send_message("a@client.test", &["b@dest.test"], &big);
    assert_eq!(reply.code, 451, "{}", reply.text());
    assert!(reply.text().contains("4.4.1"), "{}", reply.text());
    waiting.cmd("QUIT", 221);
    gateway.wait_for_log("session closed");
    // A client that leaves after its dot does not leave its session behind.
    let mut leaving = gateway.connect();
    leaving.hello();
    send_without_waiting(&mut leaving, &big);
    hop.wait_for("a second stalled data stream", |seen| seen.stalled == 2);
    drop(leaving);
    gateway.wait_for_log_count("session closed", 2);
    gateway.wait_for_log_count("result=\"tempfailed\"", 2);
    assert!(hop.seen().messages.is_empty());
}

#[test]
fn sigterm_before_the_final_dot_is_421_drops_the_connection_and_exits() {
    let hop = ScriptedHop::start(Behaviour::StallAfter354);
    // The writes' own bound (30 s) is far beyond the deadline (1 s): the deadline cuts the stream.
    let mut gateway = gateway_to(&hop, "30s", &["shutdown_timeout = \"1s\""]);
    let mut client = gateway.connect();
    client.hello();
    send_without_waiting(&mut client, &message("cut", 32 << 20));
    hop.wait_for("the data stream stall", |seen| seen.stalled == 1);
    sigterm(&gateway);
    let reply = client.reply();
    assert_eq!(reply.code, 421, "{}", reply.text());
    // What the gateway wrote before giving up ends without a dot, and nothing was written into it.
    hop.release();
    let seen = hop.wait_for("the data stream end", |seen| seen.cut_streams + seen.messages.len() == 1);
    assert!(seen.messages.is_empty(), "the next hop got a complete message");
    assert!(!seen.rset_in_data, "RSET was written into the data stream");
    assert!(gateway.wait_exit().success());
    assert!(!gateway.log().contains("still running"), "{}", gateway.log());
}

#[test]
fn sigterm_while_a_delivery_is_stuck_exits_within_the_bounds() {
    // Nobody ever releases this next hop: only the bounds can end the delivery.
    let hop = ScriptedHop::start(Behaviour::StallAfter354);
    let mut gateway = gateway_to(&hop, "2s", &["shutdown_timeout = \"1s\""]);
    let mut client = gateway.connect();
    client.hello();
    send_without_waiting(&mut client, &message("stuck", 32 << 20));
    hop.wait_for("the data stream stall", |seen| seen.stalled == 1);
    // Waits (WAIT at most) for the exit: shutdown_timeout + command_timeout is all it may take.
    assert!(gateway.terminate().success());
    let reply = client.reply();
    assert!(reply.code == 421 || reply.code == 451, "{}", reply.text());
    assert!(hop.seen().messages.is_empty());
}

#[test]
fn sigterm_after_the_final_dot_waits_for_the_next_hops_answer() {
    let hop = ScriptedHop::start(Behaviour::DelayDot(std::time::Duration::from_secs(5)));
    let mut gateway = gateway_to(&hop, "20s", &["shutdown_timeout = \"1s\""]);
    let mut client = gateway.connect();
    client.hello();
    send_without_waiting(&mut client, &message("in-flight", 5000));
    hop.wait_for("the final dot", |seen| seen.messages.len() == 1);
    sigterm(&gateway);
    // The next hop has the message: the client must get its answer, not a 421 to retry with.
    let reply = client.reply();
    assert_eq!(reply.code, 250, "{}", reply.text());
    assert!(reply.text().contains("queued as hop1"), "{}", reply.text());
    if let Some(next) = client.try_reply() {
        assert_eq!(next.code, 421, "{}", next.text());
    }
    assert!(gateway.wait_exit().success());
    assert_eq!(hop.seen().messages.len(), 1);
    gateway.wait_for_log("result=\"accepted\"");
}

#[test]
fn idle_pooled_connections_are_closed_with_quit_at_their_idle_limit() {
    let hop = ScriptedHop::start(Behaviour::Normal);
    let gateway = Gateway::builder()
        .section(&format!("[relay]\naddress = \"127.0.0.1:{}\"", hop.port))
        .section("[admin]\nlisten = \"127.0.0.1:0\"")
        .start();
    // Three sessions in a transaction at once hold three next-hop connections.
    let mut clients: Vec<SmtpClient> = (0..3).map(|_| gateway.connect()).collect();
    for client in &mut clients {
        client.hello();
        client.cmd("MAIL FROM:<a@client.test>", 250);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.cmd("RCPT TO:<b@dest.test>", 250);
        client.cmd("DATA", 354);
        client.send(&message(&format!("pooled{i}"), 3000));
        assert_eq!(client.cmd_any("."), 250);
        client.cmd("QUIT", 221);
    }
    gateway.wait_for_log_count("session closed", 3);
    assert_eq!(hop.seen().connections, 3);
    // Parked, then closed politely by a timer when their idle limit (5 s) passes.
    hop.wait_for("three QUITs", |seen| seen.quits == 3);
    poll_until(|| open_tcp_connections(hop.port) == 0, "no connections to the next hop");
    let (status, metrics) = http(&gateway.admin_address(), "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.contains("sluice_relay_idle_connections 0"), "{metrics}");
}

#[test]
fn a_pooled_connection_the_next_hop_closes_is_closed_at_once() {
    let hop = ScriptedHop::start(Behaviour::Normal);
    let gateway = gateway_to(&hop, "20s", &[]);
    let mut client = gateway.connect();
    client.hello();
    assert_eq!(client.send_message("a@client.test", &["b@dest.test"], &message("parked", 3000)).code, 250);
    client.cmd("QUIT", 221);
    // The session parks its connection before it logs its end.
    gateway.wait_for_log("session closed");
    // Well within the idle limit (5 s): only watching the socket notices this at once.
    hop.hang_up();
    poll_until(|| open_tcp_connections(hop.port) == 0, "no connection left half-closed (CLOSE-WAIT)");
    gateway.wait_for_log("next hop closed a parked connection");
}

#[test]
fn xforward_and_mail_go_to_a_pipelining_next_hop_in_one_round_trip() {
    // The hop answers XFORWARD only once MAIL is there too: waiting for the XFORWARD reply first
    // would cost every message a round trip, and here a 2 s timeout.
    let hop = ScriptedHop::start(Behaviour::XforwardAnsweredAfterMail);
    let gateway = gateway_to(&hop, "2s", &[]);
    let mut client = gateway.connect();
    client.hello();
    for round in 1..=2 {
        let reply = client.send_message("a@client.test", &["b@dest.test"], &message("pipelined", 3000));
        assert_eq!(reply.code, 250, "{}", reply.text());
        let seen = hop.wait_for("the message", |seen| seen.messages.len() == round);
        assert_eq!(seen.pipelined_xforward, round, "{seen:?}");
    }
    client.cmd("QUIT", 221);
}
