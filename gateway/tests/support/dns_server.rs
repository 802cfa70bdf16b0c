//! `DnsServer`: a real authoritative DNS server, Knot DNS (`knotd`, Debian package `knot`), for
//! the DKIM key lookups, serving one zone we write, on `127.0.0.1:<free port>` over UDP and TCP.
//! Everything is in a temp dir (config, zone file, rundir, pid file, control socket, storage for
//! its timer/journal databases, log); it runs as the test's user and is stopped by PID.
//!
//! Knot 3.2 (Debian 12) setup, all in `knot.conf`:
//! - `server: listen: 127.0.0.1@PORT` (UDP and TCP), one UDP, TCP and background worker each
//!   (the machine has 2 cores), no `user:` (so no privilege change);
//! - `template: … zonefile-load: whole, journal-content: none, zonefile-sync: -1`: the zone file
//!   is the whole truth and Knot never writes it back;
//! - the zone has an SOA, an NS (`ns.ORIGIN`, `127.0.0.1`) and the TXT records given. A TXT text
//!   longer than 255 bytes is split into several quoted character-strings of at most 255 bytes
//!   (RFC 1035 §3.3.14); a client joins them back (RFC 6376 §3.6.2.2).
//!
//! Readiness is checked by asking it (a UDP query for the zone's SOA, answered authoritatively
//! with NOERROR, and a TCP connect), since Knot loads zones after "server started".
//!
//! `DnsServer::silent()` is a server that never answers: a UDP socket and a TCP listener bound
//! on 127.0.0.1 that never reply (queries wait in the kernel's buffers, TCP connections in the
//! backlog), kept open while the value lives. For temperror tests.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Knot starts in well under a second; a loaded machine may need much longer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries with a new port when another process took the one we picked (knotd then exits).
const BIND_ATTEMPTS: usize = 5;

pub struct DnsServer {
    port: u16,
    dir: tempfile::TempDir,
    server: Server,
}

enum Server {
    Knot(Child),
    /// Bound and never read or accepted: the sockets only have to stay open.
    Silent(UdpSocket, TcpListener),
}

/// A port free for both UDP and TCP on 127.0.0.1 when asked (the daemon binds it after).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `name` with a final dot, lower-case.
fn absolute(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

/// A TXT record's RDATA in zone-file syntax: the text's bytes cut into character-strings of at
/// most 255 bytes, each quoted, with `"` and `\` escaped and any byte outside printable ASCII
/// as `\DDD`.
pub fn txt_rdata(text: &str) -> String {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return "\"\"".to_string();
    }
    bytes
        .chunks(255)
        .map(|chunk| {
            let mut quoted = String::from("\"");
            for &b in chunk {
                match b {
                    b'"' | b'\\' => {
                        quoted.push('\\');
                        quoted.push(b as char);
                    }
                    0x20..=0x7e => quoted.push(b as char),
                    _ => quoted.push_str(&format!("\\{b:03}")),
                }
            }
            quoted.push('"');
            quoted
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A DNS query for `name`/`qtype` with the RD bit clear (we ask an authoritative server).
fn query_packet(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // flags 0, QDCOUNT 1
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes()); // class IN
    packet
}

impl DnsServer {
    /// Starts Knot serving `zone_origin` with these TXT records (absolute owner names under
    /// the origin, with or without the final dot; several records may share an owner) and
    /// returns once it answers for the zone.
    pub fn start(zone_origin: &str, records: &[(&str, &str)]) -> DnsServer {
        let origin = absolute(zone_origin);
        let mut zone = format!(
            "$ORIGIN {origin}\n$TTL 60\n@ SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60\n\
             @ NS ns.{origin}\nns.{origin} A 127.0.0.1\n"
        );
        for (owner, text) in records {
            let owner = absolute(owner);
            assert!(owner == origin || owner.ends_with(&format!(".{origin}")), "{owner} is not in the zone {origin}");
            zone.push_str(&format!("{owner} TXT {}\n", txt_rdata(text)));
        }
        let mut last_log = String::new();
        for _ in 0..BIND_ATTEMPTS {
            let dir = tempfile::Builder::new().prefix("knot-").tempdir().unwrap();
            std::fs::write(dir.path().join("zone"), &zone).unwrap();
            let port = free_port();
            let conf = knot_conf(dir.path(), port, &origin);
            std::fs::write(dir.path().join("knot.conf"), conf).unwrap();
            let child = Command::new("/usr/sbin/knotd")
                .args(["-c", dir.path().join("knot.conf").to_str().unwrap()])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start knotd (the test command installs knot)");
            let mut server = DnsServer { port, dir, server: Server::Knot(child) };
            match server.wait_ready(&origin) {
                Ok(()) => return server,
                Err(log) if log.contains("cannot bind address") => last_log = log,
                Err(log) => panic!("knotd exited before answering:\n{log}"),
            }
        }
        panic!("knotd could not bind a free port in {BIND_ATTEMPTS} attempts:\n{last_log}");
    }

    /// A "server" on 127.0.0.1 that never answers, over UDP or TCP.
    pub fn silent() -> DnsServer {
        loop {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1");
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
                let dir = tempfile::Builder::new().prefix("dns-silent-").tempdir().unwrap();
                return DnsServer { port, dir, server: Server::Silent(udp, tcp) };
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A scratch dir that lives as long as the server (Knot's files are in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Knot's log (empty for a silent server).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default()
    }

    /// Waits until an SOA query for the origin is answered with NOERROR and AA and TCP
    /// connections are accepted; Err(log) if knotd exited first.
    fn wait_ready(&mut self, origin: &str) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut id: u16 = 0x5100;
        loop {
            id = id.wrapping_add(1);
            if socket.send_to(&query_packet(id, origin, 6), self.addr()).is_ok() {
                let mut reply = [0u8; 1500];
                // Skip late answers to earlier queries.
                while let Ok(n) = socket.recv(&mut reply) {
                    if n >= 12 && reply[..2] == id.to_be_bytes() {
                        let (qr, aa, rcode) = (reply[2] & 0x80 != 0, reply[2] & 0x04 != 0, reply[3] & 0x0f);
                        let answers = u16::from_be_bytes([reply[6], reply[7]]);
                        if qr && aa && rcode == 0 && answers > 0 && TcpStream::connect(self.addr()).is_ok() {
                            return Ok(());
                        }
                        break;
                    }
                }
            }
            if let Server::Knot(child) = &mut self.server {
                if let Some(status) = child.try_wait().ok().flatten() {
                    return Err(format!("knotd exited with {status}:\n{}", self.log()));
                }
            }
            assert!(
                Instant::now() < deadline,
                "knotd did not answer an SOA query for {origin} at {} within {START_TIMEOUT:?}:\n{}",
                self.addr(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn knot_conf(dir: &Path, port: u16, origin: &str) -> String {
    let d = dir.display();
    format!(
        "server:\n    rundir: \"{d}\"\n    pidfile: \"{d}/knot.pid\"\n    listen: 127.0.0.1@{port}\n\
         \x20   udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
         database:\n    storage: \"{d}/db\"\n\
         control:\n    listen: \"{d}/knot.sock\"\n\
         log:\n  - target: \"{d}/knot.log\"\n    any: info\n\
         template:\n  - id: default\n    storage: \"{d}\"\n    file: \"{d}/zone\"\n\
         \x20   zonefile-load: whole\n    journal-content: none\n    zonefile-sync: -1\n\
         zone:\n  - domain: \"{origin}\"\n"
    )
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Server::Knot(child) = &mut self.server {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
