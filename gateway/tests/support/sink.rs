//! `SmtpSink`: Postfix's `smtp-sink` as a throwaway next hop for end-to-end tests. It owns
//! one smtp-sink process and a private temp dir of per-transaction dumps, so a test can read
//! back the envelope and content that the gateway relayed.
//!
//! # What `smtp-sink -d` writes (checked by hexdump on Postfix 3.7.11 and in `smtp-sink.c`)
//!
//! One file per transaction (`msg.` + 8 random hex digits). smtp-sink creates it at MAIL time
//! and closes it when the final `.` arrives, *before* it replies to the `.`. A transaction that
//! ends without `.` (RSET, HELO/EHLO, disconnect, rejected DATA) has its file deleted. All
//! lines end in a bare LF:
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
//! <an empty line: the LF of the final ".<CR><LF>">
//! ```
//!
//! smtp-sink copies the content byte by byte but **drops every CR byte**. It also removes
//! the stuffing dot at the start of a line, but only after a CRLF (not after a bare LF).
//! [`SinkMessage::data`] turns each LF back into CRLF. It is therefore byte-exact only when
//! the client sent CRLF line endings and no other CR, as RFC 5321 requires. A bare LF comes
//! back as CRLF, and a bare CR is lost. 8-bit bytes, NUL, long lines and empty lines are kept.
//! To test stray CR/LF handling, use the Postfix next hop or a raw socket instead.
//!
//! Linux-only: readiness and "is this dump finished?" are read from `/proc`.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);
/// From Debian's `postfix` package; /usr/sbin may be missing from a test's PATH.
const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
const DUMP_PREFIX: &str = "msg.";
const LOG: &str = "smtp-sink.log";

/// One transaction as smtp-sink recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkMessage {
    /// EHLO/HELO argument of the session, if one was sent.
    pub helo: Option<String>,
    /// MAIL FROM address without angle brackets (`""` for the null sender).
    pub mail_from: String,
    /// MAIL FROM parameters, e.g. `["BODY=8BITMIME", "SIZE=123"]`.
    pub mail_params: Vec<String>,
    /// Accepted RCPT TO addresses without angle brackets, in order (parameters dropped).
    pub rcpt_to: Vec<String>,
    /// Content after dot-unstuffing, with CRLF line endings (module docs: when it is exact).
    pub data: Vec<u8>,
}

/// A running `smtp-sink` on `127.0.0.1:port`. Drop kills it and deletes the dumps.
pub struct SmtpSink {
    pub port: u16,
    dump_dir: tempfile::TempDir,
    child: Child,
}

impl SmtpSink {
    /// Starts smtp-sink and returns once it listens, usually after about 25 ms.
    ///
    /// `extra_args` go before the address. `CMDS` is a comma-separated, case-insensitive
    /// list out of `connect, helo, ehlo, mail, rcpt, data, ., rset, noop, vrfy, quit`:
    /// - `-r CMDS` soft-reject (4xx; `-b TEXT` sets the reply), `-f CMDS` hard-reject (5xx;
    ///   `-B TEXT`). Both turn off PIPELINING. **With `-r .` or `-f .` the dump is still
    ///   written** (it is closed before the reply), so [`Self::messages`] includes messages
    ///   that the client saw rejected. A rejected RCPT leaves no `rcpt_to` entry, and a
    ///   rejected DATA leaves no dump.
    /// - `-q CMDS` disconnect without a reply; `-Q CMDS` reply 421 and disconnect.
    /// - `-w SECS` delay the DATA reply; `-W CMD:SECS[:ODDS]` delay a reply; `-A SECS`
    ///   reply 550 and disconnect SECS after DATA without reading the content.
    /// - `-8` no 8BITMIME, `-p` no PIPELINING, `-e` no ESMTP, `-E` no ENHANCEDSTATUSCODES,
    ///   `-N` no DSN, `-a` no AUTH, `-C`/`-F` no XCLIENT/XFORWARD.
    /// - `-L` LMTP; `-n N` exit after N sessions; `-M N` exit after N messages, without
    ///   replying to the last `.`; `-t SECS` command timeout (100 s); `-h NAME` greeting name.
    ///
    /// Don't pass `-d`, `-D`, `-S`, `-u`, `-R` or an address. This wrapper sets them, and
    /// the parser expects its own dump layout.
    pub fn start(extra_args: &[&str]) -> SmtpSink {
        let mut failures = Vec::new();
        // The port from bind(:0) can be taken again before smtp-sink binds it, so retry.
        for _ in 0..3 {
            match Self::launch(free_port(), extra_args) {
                Ok(sink) => return sink,
                Err(why) => failures.push(why),
            }
        }
        panic!("smtp-sink did not start:\n{}", failures.join("\n"));
    }

    /// Starts smtp-sink on a given port (e.g. to replace one that was stopped).
    pub fn start_on(port: u16, extra_args: &[&str]) -> SmtpSink {
        Self::launch(port, extra_args).unwrap_or_else(|why| panic!("smtp-sink did not start: {why}"))
    }

    fn launch(port: u16, extra_args: &[&str]) -> Result<SmtpSink, String> {
        let dump_dir = tempfile::Builder::new().prefix("sink-").tempdir().unwrap();
        // As root, smtp-sink must drop privileges (-u nobody), and it writes the dumps as nobody.
        fs::set_permissions(dump_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let log = fs::File::create(dump_dir.path().join(LOG)).expect("create smtp-sink log");
        let mut cmd = Command::new(SMTP_SINK);
        if fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(dump_dir.path().join(DUMP_PREFIX))
            .args(extra_args)
            .args([format!("127.0.0.1:{port}").as_str(), "64"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        match wait_listening(&mut child, port) {
            Ok(()) => Ok(SmtpSink { port, dump_dir, child }),
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(dump_dir.path().join(LOG)).unwrap_or_default();
                Err(format!("port {port}: {why}\n{log}"))
            }
        }
    }

    /// Every finished transaction, oldest first by file mtime. Concurrent transactions are
    /// in no defined order.
    pub fn messages(&self) -> Vec<SinkMessage> {
        let parse = |path: PathBuf| {
            // smtp-sink deletes only unfinished dumps, so a finished one stays readable.
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            parse_dump(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        self.finished_dumps().into_iter().map(parse).collect()
    }

    /// Polls until at least `n` transactions have finished and returns them all, in the
    /// order of [`Self::messages`]. Panics after 30 s, showing what is there.
    pub fn wait_for_messages(&self, n: usize) -> Vec<SinkMessage> {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        // Count while polling and parse once: big dumps are not re-read every 10 ms.
        while self.finished_dumps().len() < n {
            if Instant::now() > deadline {
                let msgs = self.messages();
                let got: Vec<_> = msgs.iter().map(|m| (&m.mail_from, &m.rcpt_to)).collect();
                let log = fs::read_to_string(self.dump_dir.path().join(LOG)).unwrap_or_default();
                panic!(
                    "smtp-sink on port {}: wanted {n} messages after {WAIT_TIMEOUT:?}, got \
                     {got:?}; log:\n{log}",
                    self.port
                );
            }
            sleep(POLL);
        }
        self.messages()
    }

    /// Finished dumps, oldest first. A dump that smtp-sink still has open is in progress.
    /// The directory is listed before the open files are read. So a listed file that is no
    /// longer open is finished, or was deleted (an aborted transaction) and fails to stat.
    fn finished_dumps(&self) -> Vec<PathBuf> {
        let listed = fs::read_dir(self.dump_dir.path()).unwrap().flatten();
        let dumps: Vec<_> = listed.filter(|e| e.file_name().to_string_lossy().starts_with(DUMP_PREFIX)).collect();
        let pid = self.child.id();
        let open = open_files(pid).unwrap_or_else(|e| panic!("read /proc/{pid}/fd to skip dumps in progress: {e}"));
        let mut done: Vec<_> = dumps
            .into_iter()
            .filter_map(|entry| {
                let meta = fs::metadata(entry.path()).ok()?;
                let finished = !open.contains(&(meta.dev(), meta.ino()));
                finished.then_some((meta.modified().ok()?, entry.path()))
            })
            .collect();
        done.sort();
        done.into_iter().map(|(_, path)| path).collect()
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
    let mut msg = SinkMessage::default();
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
    let content = rest.strip_suffix(b"\n").ok_or("no closing empty line")?;
    let lines: Vec<&[u8]> = content.split(|&b| b == b'\n').collect();
    msg.data = lines.join(&b"\r\n"[..]);
    Ok(msg)
}

fn next_line(rest: &mut &[u8]) -> Result<String, String> {
    let nl = rest.iter().position(|&b| b == b'\n').ok_or("dump ends inside its header")?;
    let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
    *rest = &rest[nl + 1..];
    Ok(line)
}

/// `"<a@b> BODY=8BITMIME"` -> (`"a@b"`, `["BODY=8BITMIME"]`); tolerates a missing `<>`.
fn split_path_args(args: &str) -> (String, Vec<String>) {
    let (path, params) = match args.strip_prefix('<').and_then(|s| s.split_once('>')) {
        Some(split) => split,
        None => args.split_once(' ').unwrap_or((args, "")),
    };
    let params = params.split_whitespace().map(str::to_string).collect();
    (path.to_string(), params)
}

/// Waits until `child` itself listens on `127.0.0.1:port`. The listening socket's inode must
/// be one of the child's, so a foreign listener on the port is not mistaken for smtp-sink.
/// This does not connect, so nothing counts toward `-n`/`-M` or trips `-r connect`.
fn wait_listening(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("smtp-sink exited with {status}"));
        }
        let listening = listening_inodes(port);
        let open = open_files(child.id()).unwrap_or_default();
        if open.iter().any(|(_, ino)| listening.contains(ino)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not listening after {START_TIMEOUT:?}"));
        }
        sleep(POLL);
    }
}

/// Inodes of IPv4 sockets that listen on `port` (state 0A in `/proc/net/tcp`).
fn listening_inodes(port: u16) -> HashSet<u64> {
    let suffix = format!(":{port:04X}");
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut inodes = HashSet::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 && f[1].ends_with(&suffix) && f[3] == "0A" {
            inodes.extend(f[9].parse::<u64>());
        }
    }
    inodes
}

/// (device, inode) of everything `pid` has open; stat() on `/proc/PID/fd/N` follows the link.
/// For a socket, the inode is the one `/proc/net/tcp` lists.
fn open_files(pid: u32) -> std::io::Result<HashSet<(u64, u64)>> {
    let mut ids = HashSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))? {
        if let Ok(m) = fs::metadata(fd?.path()) {
            ids.insert((m.dev(), m.ino()));
        }
    }
    Ok(ids)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}
