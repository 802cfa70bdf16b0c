//! PROXY protocol end to end (`[server] proxy_protocol = true`): v1 and v2 headers written by
//! the test name the real client in the session's log lines, the admin API's /sessions and
//! the relay policy, and the client's own first bytes, sent in the same packet, are not lost; a peer outside
//! `proxy_trusted`, a malformed header, and no header (or one that trickles in) are closed
//! without a greeting and logged, the last by a timer. HAProxy's `send-proxy-v2` is in
//! scale_out.rs.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{http, Gateway, SmtpClient, WAIT};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A gateway requiring PROXY headers from `trusted`, with the admin API on a free port.
fn gateway(trusted: &str, command_timeout: &str) -> Gateway {
    Gateway::builder()
        .server("proxy_protocol = true")
        .server(&format!("proxy_trusted = [\"{trusted}\"]"))
        .server(&format!("command_timeout = \"{command_timeout}\""))
        .section("[admin]\nlisten = \"127.0.0.1:0\"")
        .start()
}

/// A v2 header: command (0 LOCAL, 1 PROXY), family and protocol byte, addresses.
fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.extend([0x20 | command, family]);
    bytes.extend(u16::try_from(addresses.len()).unwrap().to_be_bytes());
    bytes.extend(addresses);
    bytes
}

/// The peers the admin API lists now.
fn listed_peers(gateway: &Gateway) -> Vec<String> {
    let (status, body) = http(&gateway.admin_address(), "GET", "/sessions", None);
    assert_eq!(status, 200, "{body}");
    let sessions: serde_json::Value = serde_json::from_str(&body).unwrap();
    sessions.as_array().unwrap().iter().map(|s| s["peer"].as_str().unwrap().to_string()).collect()
}

/// Reads until the gateway closes; asserts it sent nothing (no greeting). Returns when.
fn closed_without_greeting(stream: &mut TcpStream) -> Instant {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        Err(err) => panic!("the gateway did not close the connection: {err}"),
    }
    assert!(received.is_empty(), "the gateway sent {:?}", String::from_utf8_lossy(&received));
    Instant::now()
}

#[test]
fn v1_and_v2_headers_name_the_real_client_and_keep_its_bytes() {
    let gateway = gateway("127.0.0.1/32", "30s");

    // v1, with the client's EHLO in the same write: the header is consumed, the EHLO is not.
    let mut client = SmtpClient::connect(&gateway.address);
    client.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 54321 25\r\nEHLO client.test\r\n");
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.reply().code, 250, "the EHLO sent with the header was lost");
    assert!(listed_peers(&gateway).contains(&"192.0.2.7:54321".to_string()), "{:?}", listed_peers(&gateway));
    // Relay policy sees the real client too: 192.0.2.7 is not in the default trusted_networks.
    client.cmd("MAIL FROM:<a@client.test>", 250);
    let refused = client.cmd("RCPT TO:<b@dest.test>", 550);
    assert!(refused.text().contains("5.7.1"), "{}", refused.text());
    client.cmd("QUIT", 221);
    let line = gateway.wait_for_log("session closed");
    assert!(line.contains("peer=192.0.2.7:54321 proxy=127.0.0.1:"), "{line}");

    // v2 PROXY over IPv6.
    let mut addresses = [0u8; 36];
    addresses[..2].copy_from_slice(&[0x20, 0x01]);
    addresses[2..4].copy_from_slice(&[0x0d, 0xb8]);
    addresses[15] = 7;
    addresses[31] = 1;
    addresses[32..].copy_from_slice(&[0x9c, 0x40, 0, 25]);
    let mut client = SmtpClient::connect(&gateway.address);
    client.send(&v2(1, 0x21, &addresses));
    client.hello();
    assert!(listed_peers(&gateway).contains(&"[2001:db8::7]:40000".to_string()), "{:?}", listed_peers(&gateway));
    client.cmd("QUIT", 221);
    let line = gateway.wait_for_log_count("session closed", 2);
    assert!(line.contains("peer=[2001:db8::7]:40000 proxy=127.0.0.1:"), "{line}");

    // v2 LOCAL (a balancer's health check) names no client: the balancer's own address must
    // not stand in for one (it may be trusted), so the connection is closed.
    let mut client = SmtpClient::connect(&gateway.address);
    client.send(&v2(0, 0x00, &[]));
    client.expect_closed();
    let line = gateway.wait_for_log("PROXY header names no client");
    assert!(line.contains("point health checks at the admin API's /readyz"), "{line}");
}

#[test]
fn a_peer_outside_proxy_trusted_is_closed_and_logged() {
    let gateway = gateway("127.0.0.2/32", "30s");
    let mut stream = TcpStream::connect(&gateway.address).unwrap();
    stream.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 54321 25\r\n").unwrap();
    closed_without_greeting(&mut stream);
    let line = gateway.wait_for_log("refused: closed without a greeting");
    assert!(line.contains("peer=127.0.0.1:") && line.contains("not in server.proxy_trusted"), "{line}");
    // The trusted balancer's connections are served.
    let mut client = SmtpClient::connect_from(&gateway.address, "127.0.0.2");
    client.send(b"PROXY TCP4 192.0.2.8 127.0.0.1 54321 25\r\n");
    client.hello();
    client.cmd("QUIT", 221);
    assert!(gateway.wait_for_log("session closed").contains("peer=192.0.2.8:54321 proxy=127.0.0.2:"));
}

#[test]
fn a_malformed_or_missing_header_is_closed_and_logged() {
    let mut too_many_tlvs = v2(1, 0x11, &[192, 0, 2, 7, 127, 0, 0, 1, 0xd4, 0x31, 0, 25]);
    too_many_tlvs[14..16].copy_from_slice(&1000u16.to_be_bytes());
    let cases: [(&[u8], &str); 4] = [
        (b"PROXY TCP4 192.0.2.7 127.0.0.1 54321\r\n", "malformed PROXY v1 header"),
        (b"EHLO client.test\r\n", "no PROXY header"),
        (&too_many_tlvs, "PROXY v2 header with 988 bytes of TLVs"),
        (&v2(1, 0x31, &[0; 216]), "PROXY header for UNIX sockets, which is not supported"),
    ];
    for (bytes, reason) in cases {
        // A gateway each: the refusal log allows one line a second.
        let gateway = gateway("127.0.0.1/32", "30s");
        let mut stream = TcpStream::connect(&gateway.address).unwrap();
        stream.write_all(bytes).unwrap();
        closed_without_greeting(&mut stream);
        let line = gateway.wait_for_log("refused: closed without a greeting");
        assert!(line.contains(reason), "{reason}: {line}");
    }
}

#[test]
fn no_header_or_a_trickling_one_is_closed_by_a_timer() {
    let gateway = gateway("127.0.0.1/32", "1s");
    let start = Instant::now();
    let mut silent = TcpStream::connect(&gateway.address).unwrap();
    let closed = closed_without_greeting(&mut silent) - start;
    assert!(closed >= Duration::from_millis(950) && closed < Duration::from_secs(5), "closed after {closed:?}");
    let line = gateway.wait_for_log("refused: closed without a greeting");
    assert!(line.contains("no complete PROXY header within 1s"), "{line}");

    // One byte every 100 ms: still closed at the bound, not reset by each byte.
    let gateway = support::Gateway::builder()
        .server("proxy_protocol = true")
        .server("proxy_trusted = [\"127.0.0.1/32\"]")
        .server("command_timeout = \"1s\"")
        .start();
    let start = Instant::now();
    let mut trickle = TcpStream::connect(&gateway.address).unwrap();
    let mut writer = trickle.try_clone().unwrap();
    let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 54321 25\r\n";
    let sender = std::thread::spawn(move || {
        for byte in header {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let closed = closed_without_greeting(&mut trickle) - start;
    assert!(closed < Duration::from_secs(3), "a trickling header held the connection {closed:?}");
    assert!(gateway.wait_for_log("refused: closed without a greeting").contains("within 1s"));
    sender.join().unwrap();
}
