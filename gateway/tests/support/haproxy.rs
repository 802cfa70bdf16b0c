//! `Haproxy`: a real HAProxy (Debian's `haproxy` package) in front of Sluice instances on
//! loopback, running the deployment config the README shows (`docs/haproxy.cfg`) with its
//! variables set to the test's ports, in the foreground (`-db`) and stopped by PID. Its log
//! (stderr) is collected for the test to wait on; the stats socket gives each server's state.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::{wait_child, WAIT};

/// The deployment config, shared with the README.
pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/haproxy.cfg");

/// One backend server: Sluice's SMTP port and its admin API's port (for the health check).
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub smtp: u16,
    pub admin: u16,
}

pub struct Haproxy {
    /// The frontend's address, where clients connect.
    pub address: String,
    dir: tempfile::TempDir,
    child: Child,
    log: Arc<(Mutex<(String, bool)>, Condvar)>,
}

impl Haproxy {
    /// Starts HAProxy with `docs/haproxy.cfg` in front of two instances, health checks every
    /// 200 ms, and waits until both servers passed a check.
    pub fn start(servers: [Backend; 2]) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let stats = dir.path().join("stats.sock");
        let mut child = Command::new(super::postfix_tool("haproxy"))
            .args(["-f", CONFIG, "-db"])
            .env("HAPROXY_LOG", "stderr")
            .env("HAPROXY_STATS", &stats)
            .env("SMTP_BIND", &address)
            .env("CHECK_INTER", "200ms")
            .env("SLUICE1", format!("127.0.0.1:{}", servers[0].smtp))
            .env("SLUICE1_ADMIN", servers[0].admin.to_string())
            .env("SLUICE2", format!("127.0.0.1:{}", servers[1].smtp))
            .env("SLUICE2_ADMIN", servers[1].admin.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run haproxy (the test command installs it: .ci/setup)");
        let log: Arc<(Mutex<(String, bool)>, Condvar)> = Arc::default();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.0.lock().unwrap().0.push_str(&(line + "\n"));
                sink.1.notify_all();
            }
            sink.0.lock().unwrap().1 = true;
            sink.1.notify_all();
        });
        let haproxy = Haproxy { address, dir, child, log };
        haproxy.wait_until(|stat| ["sluice1", "sluice2"].iter().all(|s| field(stat, s, "check_status") == "L7OK"));
        haproxy
    }

    /// HAProxy's log so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().0.clone()
    }

    /// Waits until a log line contains `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut text = self.log.0.lock().unwrap();
        loop {
            if let Some(line) = text.0.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!text.1, "haproxy exited without a log line with {needle:?}; log:\n{}", text.0);
            assert!(!left.is_zero(), "no haproxy log line with {needle:?}; log:\n{}", text.0);
            text = self.log.1.wait_timeout(text, left).unwrap().0;
        }
    }

    /// `show stat` from the stats socket: CSV, one line per frontend, backend and server.
    pub fn stats(&self) -> String {
        let mut socket = UnixStream::connect(self.stats_socket()).expect("connect to haproxy's stats socket");
        socket.set_read_timeout(Some(WAIT)).unwrap();
        socket.write_all(b"show stat\n").unwrap();
        let mut out = String::new();
        socket.read_to_string(&mut out).expect("read haproxy's stats");
        out
    }

    /// A server's field (`status`, `check_status`, `stot`…) from `show stat`.
    pub fn server(&self, server: &str, name: &str) -> String {
        field(&self.stats(), server, name)
    }

    fn stats_socket(&self) -> PathBuf {
        self.dir.path().join("stats.sock")
    }

    /// Polls the stats (the socket appears once HAProxy runs) until `condition` holds.
    fn wait_until(&self, mut condition: impl FnMut(&str) -> bool) {
        super::poll_until(
            || Path::new(&self.stats_socket()).exists() && condition(&self.stats()),
            "haproxy's servers to pass their health checks",
        );
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = wait_child(&mut self.child);
    }
}

/// Column `name` of the `sluice` backend's server `server` in `show stat` CSV.
fn field(stats: &str, server: &str, name: &str) -> String {
    let mut lines = stats.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
    let Some(column) = header.iter().position(|h| *h == name) else { return String::new() };
    lines
        .map(|line| line.split(',').collect::<Vec<&str>>())
        .find(|row| row.first() == Some(&"sluice") && row.get(1) == Some(&server))
        .and_then(|row| row.get(column).map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A loopback port nothing listens on (HAProxy binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
