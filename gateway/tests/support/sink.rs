//! `SmtpSink`: Postfix's `smtp-sink` as a throwaway next hop for end-to-end tests.
//!
//! It owns one smtp-sink process and a private temp dir into which smtp-sink dumps every
//! transaction it accepts, so a test can read back the envelope and content that the
//! gateway relayed.
//!
//! # What `smtp-sink -d` writes (checked by hexdump on Postfix 3.7.11 and in `smtp-sink.c`)
//!
//! One file per transaction, named `msg.` + 8 random hex digits. smtp-sink creates it at
//! MAIL time and closes it as soon as the final `.` arrives, *before* it replies to the `.`.
//! A transaction that ends without a `.` (RSET, HELO/EHLO, disconnect, rejected DATA) has
//! its file deleted. Every line ends in a bare LF:
//!
//! ```text
//! X-Client-Addr: 127.0.0.1
//! X-Client-Proto: ESMTP
//! X-Helo-Args: client.test              <- only if HELO/EHLO was sent
//! X-Mail-Args: <a@x.test> BODY=8BITMIME
//! X-Rcpt-Args: <b@y.test>               <- one per *accepted* RCPT, in order
//! Received: from client.test ([127.0.0.1])
//! <TAB>by smtp-sink (smtp-sink) with ESMTP id 5482f1eb;
//! <TAB>Mon, 30 Nov 2026 07:52:03 +0000 (UTC)
//! <message content>
//! <one extra empty line: the LF of the ".<CR><LF>" terminator>
//! ```
//!
//! smtp-sink copies the content byte by byte but **drops every CR byte**. It also removes the
//! stuffing dot of a line that starts with `.`, but only after a CRLF (not after a bare LF).
//! [`SinkMessage::data`] turns each LF back into CRLF. So it is byte-exact **only when the
//! client sent nothing but CRLF line endings and no other CR**, as RFC 5321 requires. A bare LF
//! comes back as CRLF, and a bare CR is lost. 8-bit bytes, NUL, long lines and blank lines are
//! kept. Tests that check bare CR/LF handling need [`super::postfix`] or a raw socket instead.
//!
//! Linux-only: readiness and "is this dump finished?" are read from `/proc`.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);
const DUMP_PREFIX: &str = "msg.";
const LOG_NAME: &str = "smtp-sink.log";

/// One transaction as smtp-sink recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkMessage {
    /// EHLO/HELO argument of the session, if any.
    pub helo: Option<String>,
    /// MAIL FROM address without angle brackets (`""` for the null sender).
    pub mail_from: String,
    /// MAIL FROM parameters, e.g. `["BODY=8BITMIME", "SIZE=123"]`.
    pub mail_params: Vec<String>,
    /// Accepted RCPT TO addresses without angle brackets, in order (parameters dropped).
    pub rcpt_to: Vec<String>,
    /// Message content after dot-unstuffing, with CRLF line endings (see the module docs for
    /// when this differs from the bytes on the wire).
    pub data: Vec<u8>,
}

/// A running `smtp-sink` on `127.0.0.1:port`. Dropping it kills the process and deletes the dumps.
pub struct SmtpSink {
    pub port: u16,
    dump_dir: tempfile::TempDir,
    child: Child,
}

impl SmtpSink {
    /// Starts smtp-sink and returns once it is listening.
    ///
    /// `extra_args` go before the address. Useful ones (see `man smtp-sink`); commands are
    /// comma-separated, case-insensitive names out of `connect, helo, ehlo, mail, rcpt, data,
    /// ., rset, noop, vrfy, quit`:
    /// - `-r CMDS` soft-reject (4xx, `-b` sets the text); `-f CMDS` hard-reject (5xx, `-B`).
    ///   Both turn off PIPELINING. **With `-r .`/`-f .` the dump is still written**: smtp-sink
    ///   saves the message before it replies to the `.`, so [`Self::messages`] includes
    ///   messages that the client saw rejected. A rejected RCPT leaves no `X-Rcpt-Args`, and a
    ///   rejected DATA leaves no dump.
    /// - `-q CMDS` disconnect without replying; `-Q CMDS` reply 421 and disconnect.
    /// - `-w SECS` delay the DATA reply; `-W cmd:SECS[:odds]` delay any reply;
    ///   `-A SECS` reply 550 and disconnect SECS after DATA, without reading the content.
    /// - `-8` no 8BITMIME, `-p` no PIPELINING, `-e` no ESMTP (HELO only), `-E` no
    ///   ENHANCEDSTATUSCODES, `-N` no DSN, `-a` no AUTH, `-C`/`-F` no XCLIENT/XFORWARD.
    /// - `-L` speak LMTP; `-M N` exit after N messages; `-n N` exit after N sessions.
    /// - `-t SECS` command timeout (default 100), `-h NAME` greeting hostname.
    ///
    /// Don't pass `-d`, `-D`, `-S`, `-u`, `-R`, or an address: this wrapper sets them, and the
    /// dump parser expects its own layout.
    pub fn start(extra_args: &[&str]) -> SmtpSink {
        let dump_dir = tempfile::Builder::new()
            .prefix("sluice-sink-")
            .tempdir()
            .expect("create smtp-sink temp dir");
        // As root, smtp-sink must drop privileges (-u nobody) and write the dumps as that user.
        fs::set_permissions(dump_dir.path(), fs::Permissions::from_mode(0o777))
            .expect("chmod smtp-sink temp dir");
        let log_path = dump_dir.path().join(LOG_NAME);
        let mut failures = Vec::new();
        // A port from bind(:0) can be taken again before smtp-sink binds it, so retry.
        for _ in 0..3 {
            let port = free_port();
            let log = fs::File::create(&log_path).expect("create smtp-sink log");
            let mut cmd = Command::new(find_smtp_sink());
            if running_as_root() {
                cmd.args(["-u", "nobody"]);
            }
            cmd.arg("-d")
                .arg(format!("{}/{DUMP_PREFIX}", dump_dir.path().display()))
                .args(extra_args)
                .arg(format!("127.0.0.1:{port}"))
                .arg("64")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log handle"))
                .stderr(log);
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
            match wait_listening(&mut child, port) {
                Ok(()) => return SmtpSink { port, dump_dir, child },
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    failures.push(format!("port {port}: {why}; log:\n{log}"));
                }
            }
        }
        panic!("smtp-sink did not start:\n{}", failures.join("\n"));
    }

    /// All finished transactions, oldest first by file mtime (concurrent ones have no defined order).
    pub fn messages(&self) -> Vec<SinkMessage> {
        self.finished_dumps()
            .into_iter()
            .map(|(path, bytes)| {
                parse_dump(&bytes).unwrap_or_else(|e| {
                    panic!("{}: {e}:\n{}", path.display(), String::from_utf8_lossy(&bytes))
                })
            })
            .collect()
    }

    /// Polls until at least `n` transactions have finished, then returns all of them
    /// (same order as [`Self::messages`]). Panics after 30 s and shows what is there.
    pub fn wait_for_messages(&self, n: usize) -> Vec<SinkMessage> {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let msgs = self.messages();
            if msgs.len() >= n {
                return msgs;
            }
            if Instant::now() > deadline {
                let summary: Vec<String> = msgs
                    .iter()
                    .map(|m| format!("  from=<{}> to={:?} {} bytes", m.mail_from, m.rcpt_to, m.data.len()))
                    .collect();
                panic!(
                    "smtp-sink on port {}: wanted {n} messages, got {} after {WAIT_TIMEOUT:?}:\n{}\n\
                     files in {}: {:?}\nsmtp-sink log:\n{}",
                    self.port,
                    msgs.len(),
                    summary.join("\n"),
                    self.dump_dir.path().display(),
                    self.dump_paths(),
                    fs::read_to_string(self.dump_dir.path().join(LOG_NAME)).unwrap_or_default(),
                );
            }
            sleep(POLL);
        }
    }

    fn dump_paths(&self) -> Vec<PathBuf> {
        let entries = fs::read_dir(self.dump_dir.path()).expect("list smtp-sink dump dir");
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(DUMP_PREFIX))
            .map(|e| e.path())
            .collect();
        paths.sort();
        paths
    }

    /// Dumps that smtp-sink has closed. Files that smtp-sink still has open are in progress.
    /// List the directory first and look at smtp-sink's open files second: a file that was
    /// listed and is not open any more is finished, or deleted (then the read gives NotFound).
    fn finished_dumps(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let paths = self.dump_paths();
        let open = open_file_ids(self.child.id()).unwrap_or_else(|e| {
            panic!("cannot read /proc/{}/fd to tell finished dumps from ones in progress: {e}", self.child.id())
        });
        let mut done: Vec<(SystemTime, PathBuf, Vec<u8>)> = Vec::new();
        for path in paths {
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => panic!("stat {}: {e}", path.display()),
            };
            if open.contains(&(meta.dev(), meta.ino())) {
                continue;
            }
            match fs::read(&path) {
                Ok(bytes) => done.push((meta.modified().expect("mtime"), path, bytes)),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => panic!("read {}: {e}", path.display()),
            }
        }
        done.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        done.into_iter().map(|(_, p, b)| (p, b)).collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses one dump file (layout in the module docs).
fn parse_dump(mut rest: &[u8]) -> Result<SinkMessage, String> {
    let mut msg = SinkMessage {
        helo: None,
        mail_from: String::new(),
        mail_params: Vec::new(),
        rcpt_to: Vec::new(),
        data: Vec::new(),
    };
    let mut saw_mail = false;
    loop {
        let line = next_line(&mut rest)?;
        if let Some(v) = line.strip_prefix("X-Helo-Args: ") {
            msg.helo = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            (msg.mail_from, msg.mail_params) = split_path_args(v);
            saw_mail = true;
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            msg.rcpt_to.push(split_path_args(v).0);
        } else if line.starts_with("Received: ") {
            // smtp-sink's Received header is always three lines; the content follows it.
            for _ in 0..2 {
                if !next_line(&mut rest)?.starts_with('\t') {
                    return Err("Received header is not three lines".into());
                }
            }
            break;
        } else if !line.starts_with("X-Client-") {
            return Err(format!("unexpected smtp-sink header line {line:?}"));
        }
    }
    if !saw_mail {
        return Err("no X-Mail-Args line".into());
    }
    let content = rest.strip_suffix(b"\n").ok_or("dump lacks the closing empty line")?;
    msg.data = Vec::with_capacity(content.len() + content.len() / 32);
    for &b in content {
        if b == b'\n' {
            msg.data.push(b'\r');
        }
        msg.data.push(b);
    }
    Ok(msg)
}

fn next_line(rest: &mut &[u8]) -> Result<String, String> {
    let nl = rest.iter().position(|&b| b == b'\n').ok_or("dump ends inside the smtp-sink headers")?;
    let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
    *rest = &rest[nl + 1..];
    Ok(line)
}

/// `"<a@b> BODY=8BITMIME"` -> (`"a@b"`, `["BODY=8BITMIME"]`); tolerates a missing `<>`.
fn split_path_args(args: &str) -> (String, Vec<String>) {
    let (path, params) = match args.strip_prefix('<').and_then(|s| s.split_once('>')) {
        Some((inside, params)) => (inside, params),
        None => args.split_once(' ').unwrap_or((args, "")),
    };
    (path.to_string(), params.split_whitespace().map(str::to_string).collect())
}

/// Waits until `child` itself listens on `127.0.0.1:port`. Matching the socket inode to the
/// child means a foreign listener on the same port can't be taken for ours. This does not
/// connect, so it counts nothing toward `-n`/`-M`.
fn wait_listening(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("smtp-sink exited early with {status}"));
        }
        let listening = listening_inodes(port);
        if !listening.is_empty() && socket_inodes(child.id()).iter().any(|i| listening.contains(i)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not listening after {START_TIMEOUT:?}"));
        }
        sleep(POLL);
    }
}

/// Inodes of IPv4 sockets in LISTEN state on `port` (from `/proc/net/tcp`).
fn listening_inodes(port: u16) -> HashSet<u64> {
    let suffix = format!(":{port:04X}");
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let ok = f.len() > 9 && f[1].ends_with(&suffix) && f[3] == "0A";
            ok.then(|| f[9].parse().ok()).flatten()
        })
        .collect()
}

fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return HashSet::new() };
    fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// (device, inode) of every file `pid` has open. stat() on `/proc/PID/fd/N` follows the link.
fn open_file_ids(pid: u32) -> std::io::Result<HashSet<(u64, u64)>> {
    let mut ids = HashSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))? {
        if let Ok(meta) = fs::metadata(fd?.path()) {
            ids.insert((meta.dev(), meta.ino()));
        }
    }
    Ok(ids)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

fn running_as_root() -> bool {
    // /proc/self is owned by the caller's effective uid; this avoids needing libc.
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn find_smtp_sink() -> PathBuf {
    ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join("smtp-sink"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("smtp-sink"))
}
