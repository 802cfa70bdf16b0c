//! `PostfixNextHop`: a real, private Postfix instance as a next hop for end-to-end tests. It
//! owns one `master` process and a temp dir that holds config, queue, data dir, log and
//! delivered mail. Nothing system-wide changes, so parallel tests can run one each. It needs
//! root, because master(8) does.
//!
//! smtpd on `127.0.0.1:port` relays any recipient for 127.0.0.0/8. Every recipient gets the
//! same pipe(8) transport and next hop (`transport_maps = static:sinkpipe:all`), so all
//! recipients share one delivery and **each message is one file**. The pipe's script runs as
//! `nobody` and renames `mail/tmp/X` to `mail/new/X`, so every file in `new/` is complete.
//!
//! # What Postfix does to the bytes (observed with Postfix 3.7.11 on Debian 12)
//! - It prepends smtpd's three-line `Received: … by nexthop.postfix.test (Postfix) …`. It adds
//!   no Return-Path, Delivered-To or X-Original-To (the pipe has no `flags=`). It adds no
//!   Date/Message-ID/From and rewrites no addresses (`local_header_rewrite_clients` is empty).
//! - CRLF and bare LF both end a line, and lines are stored with LF. CRs right before a line
//!   end are removed; any other CR becomes a space.
//! - Kept as is: 8-bit bytes, NUL, trailing spaces, lines far longer than 998 bytes (5000
//!   were tested), lines starting with `.` (once unstuffed) or `From `, and empty lines.
//! - Not modelled by [`stored_form`]: if the content does not start with a header (or starts
//!   with a continuation line), or the header block does not end with an empty line, Postfix
//!   inserts one. A first line `From …` becomes `X-Mailbox-Line: From …`. Whitespace between
//!   a header name and its colon is removed (`X-Foo  : a` → `X-Foo: a`). Headers over
//!   `header_size_limit` (100 KiB) are cut off.
//!
//! Hence, for a well-formed CRLF message with no stray CR, `content_as_sent(&delivered) == sent`.
//!
//! [`PostfixNextHop::start_with`] adds main.cf lines: [`tls_settings`] gives smtpd a certificate
//! (STARTTLS offered, `smtpd_tls_security_level = may`, TLS logged), [`XFORWARD_FROM_LOOPBACK`]
//! lets loopback clients send XFORWARD. [`PostfixNextHop::wait_for_log`] waits on the mail log,
//! where smtpd's `disconnect from … ehlo=1 mail=1 …` line counts each command it was sent.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use super::certs::Certs;

const HOSTNAME: &str = "nexthop.postfix.test";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

/// A running Postfix instance. Drop stops all its processes and deletes its dir.
pub struct PostfixNextHop {
    pub port: u16,
    dir: tempfile::TempDir,
    master: Child,
}

impl PostfixNextHop {
    /// Configures and starts the instance. Returns once smtpd on `port` has sent this
    /// instance's banner, usually 0.3–0.5 s after the call on an idle machine.
    pub fn start() -> PostfixNextHop {
        PostfixNextHop::start_with("")
    }

    /// Like [`Self::start`], with `extra` appended to main.cf (later lines win in Postfix).
    pub fn start_with(extra: &str) -> PostfixNextHop {
        let is_root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        assert!(is_root, "Postfix's master(8) must run as root");
        let dir = tempfile::Builder::new().prefix("pf-").tempdir().unwrap();
        let (root, etc) = (dir.path(), dir.path().join("etc"));
        // The daemons (as postfix) and the pipe script (as nobody) must traverse the dir, and
        // Postfix rejects a queue dir whose parent is group- or world-writable.
        mkdirs(root, &["", "etc", "spool"], 0o755);
        mkdirs(root, &["mail", "mail/tmp", "mail/new"], 0o777);
        let token = root.file_name().unwrap().to_string_lossy().into_owned();
        write_file(&etc.join("main.cf"), &format!("{}{extra}", main_cf(root, &token)), 0o644);
        write_file(&root.join("deliver"), &deliver_script(root), 0o755);
        let daemon_dir = run(postfix_command("postconf").args(["-dh", "daemon_directory"]));
        let mut failures = Vec::new();
        // The port from bind(:0) can be taken again before master binds it, so retry.
        for attempt in 0..3 {
            let port = free_port();
            write_file(&etc.join("master.cf"), &master_cf(root, port), 0o644);
            if attempt == 0 {
                // Creates the queue and data directories with Postfix's owners and modes.
                run(postfix_command("postfix").arg("-c").arg(&etc).arg("check"));
            }
            // master stays in the foreground (only -w forks it), in a session of its own.
            let mut master = postfix_command(Path::new(daemon_dir.trim()).join("master"))
                .arg("-c")
                .arg(&etc)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn postfix master");
            match wait_ready(&mut master, port, &token) {
                Ok(()) => return PostfixNextHop { port, dir, master },
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
            stop_master(&mut master);
        }
        let log = fs::read_to_string(root.join("maillog")).unwrap_or_default();
        panic!("Postfix did not start: {failures:?}\nmaillog:\n{log}");
    }

    /// Every message delivered so far, exactly as delivered: LF line endings, with the
    /// prepended `Received:`. Oldest delivery first; concurrent deliveries are in no defined
    /// order, so tell messages apart by their content.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<_> =
            self.delivered().map(|path| (fs::metadata(&path).unwrap().modified().unwrap(), path)).collect();
        files.sort();
        files.iter().map(|(_, p)| fs::read(p).unwrap()).collect()
    }

    /// Polls until at least `n` messages have been delivered and returns all of them, in the
    /// order of [`Self::messages`]. Panics after 30 s with the instance's mail log.
    pub fn wait_for_messages(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        while self.delivered().count() < n {
            if Instant::now() > deadline {
                let (port, got, log) = (self.port, self.delivered().count(), self.log());
                panic!("Postfix on port {port}: wanted {n} messages, got {got}; maillog:\n{log}");
            }
            sleep(POLL);
        }
        self.messages()
    }

    /// Paths of the delivered messages. The pipe script renames them into `mail/new` complete.
    fn delivered(&self) -> impl Iterator<Item = PathBuf> {
        let listed = fs::read_dir(self.dir.path().join("mail/new")).unwrap();
        listed.map(|entry| entry.unwrap().path())
    }

    /// The instance's mail log (`maillog_file`), for diagnostics.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Polls the mail log until a line contains `needle`; returns that line. Panics after 30 s
    /// with the log. postlogd writes lines as the daemons send them, so a line is whole.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|line| line.contains(needle)) {
                return line.to_string();
            }
            if Instant::now() > deadline {
                panic!("Postfix on port {}: no log line with {needle:?}; maillog:\n{log}", self.port);
            }
            sleep(POLL);
        }
    }
}

impl Drop for PostfixNextHop {
    fn drop(&mut self) {
        stop_master(&mut self.master);
    }
}

/// main.cf lines that give smtpd `certs` and offer STARTTLS (not required), logging each TLS
/// session ("Anonymous TLS connection established from …") and noting it in its `Received:`.
pub fn tls_settings(certs: &Certs) -> String {
    format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_security_level = may\n\
         smtpd_tls_loglevel = 1\nsmtpd_tls_received_header = yes\n",
        certs.cert.display(),
        certs.key.display()
    )
}

/// main.cf line that offers XFORWARD to (and takes it from) loopback clients.
pub const XFORWARD_FROM_LOOPBACK: &str = "smtpd_authorized_xforward_hosts = 127.0.0.0/8\n";

/// Removes the `Received:` header that this instance's smtpd prepended. Returns other input
/// unchanged.
pub fn strip_prepended_headers(delivered: &[u8]) -> &[u8] {
    // The header ends at the first line that does not start with folding whitespace.
    let mut end = 0;
    while let Some(nl) = delivered[end..].iter().position(|&b| b == b'\n') {
        end += nl + 1;
        if !matches!(delivered.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    let header = String::from_utf8_lossy(&delivered[..end]);
    let by_us = format!("by {HOSTNAME} (Postfix)");
    let ours = header.starts_with("Received: ") && header.contains(&by_us);
    &delivered[if ours { end } else { 0 }..]
}

/// The line-level form in which Postfix stores the DATA content `sent` (dot-unstuffed, as the
/// client meant it): CRLF and bare LF become LF, CRs before a line end are removed, other CRs
/// become spaces. A missing final line ending is added, as every SMTP client adds one before
/// the final `.`. Header-level rewrites are not modelled (see the module docs).
pub fn stored_form(sent: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sent.len());
    for line in sent.split_inclusive(|&b| b == b'\n') {
        let mut line = line.strip_suffix(b"\n").unwrap_or(line);
        while let Some(rest) = line.strip_suffix(b"\r") {
            line = rest;
        }
        out.extend(line.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
        out.push(b'\n');
    }
    out
}

/// Turns every LF into CRLF, which undoes Postfix's line-ending conversion for CRLF-only input.
pub fn lf_to_crlf(lf: &[u8]) -> Vec<u8> {
    let lines: Vec<&[u8]> = lf.split(|&b| b == b'\n').collect();
    lines.join(&b"\r\n"[..])
}

/// The delivered message without the prepended header, with CRLF line endings. For a
/// well-formed CRLF message, this equals the content the client sent.
pub fn content_as_sent(delivered: &[u8]) -> Vec<u8> {
    lf_to_crlf(strip_prepended_headers(delivered))
}

fn main_cf(root: &Path, token: &str) -> String {
    let r = root.display();
    // smtpd_banner's token tells start() this smtpd from another server on the port. Without
    // the empty local_header_rewrite_clients, clients on 127.0.0.1 would count as local, and
    // their headers would be rewritten and completed.
    format!(
        "compatibility_level = 3.6
queue_directory = {r}/spool
data_directory = {r}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {HOSTNAME}
myorigin = $myhostname
mydestination =
local_recipient_maps =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP {token}
local_header_rewrite_clients =
transport_maps = static:sinkpipe:all
sinkpipe_destination_recipient_limit = 1000
message_size_limit = 104857600
mailbox_size_limit = 0
maillog_file = {r}/maillog
maillog_file_prefixes = {r}
"
    )
}

fn master_cf(root: &Path, port: u16) -> String {
    // No chroot: the temp dir lacks the files that a chroot jail needs.
    format!(
        "127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n -   0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -   - trivial-rewrite
bounce    unix  - - n -   0 bounce
defer     unix  - - n -   0 bounce
trace     unix  - - n -   0 bounce
flush     unix  n - n 1000? 0 flush
error     unix  - - n -   - error
retry     unix  - - n -   - error
anvil     unix  - - n -   1 anvil
postlog   unix-dgram n - n - 1 postlogd
tlsmgr    unix  - - n 1000? 1 tlsmgr
sinkpipe  unix  - n n -   - pipe
  user=nobody argv={}/deliver ${{queue_id}}
",
        root.display()
    )
}

/// pipe(8) runs this as nobody, with the message on stdin and the queue id as `$1`. Exit 75
/// (EX_TEMPFAIL) makes Postfix defer the message and log why, instead of bouncing it.
fn deliver_script(root: &Path) -> String {
    let (tmp, new) = (root.join("mail/tmp"), root.join("mail/new"));
    let (tmp, new) = (tmp.display(), new.display());
    format!("#!/bin/sh\nf=\"$1.$$\"\ncat > \"{tmp}/$f\" && mv \"{tmp}/$f\" \"{new}/$f\" || exit 75\n")
}

/// Waits until `port` sends this instance's banner. A banner without the token means that
/// another server holds the port.
fn wait_ready(master: &mut Child, port: u16, token: &str) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = master.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("master exited with {status}"));
        }
        if let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 512];
            let len = conn.read(&mut buf).unwrap_or(0);
            let banner = String::from_utf8_lossy(&buf[..len]);
            if banner.starts_with("220 ") && banner.contains(token) {
                let _ = conn.write_all(b"QUIT\r\n");
                return Ok(());
            } else if banner.starts_with("220") {
                return Err(format!("port taken by another server: {banner:?}"));
            }
        }
        sleep(POLL);
    }
    Err(format!("no banner after {START_TIMEOUT:?}"))
}

/// master leads its own session and process group, which all Postfix daemons of the instance
/// share: SIGKILL the group (a throwaway instance needs no graceful stop), then reap master.
/// Once killed, no process of the group can write into the dir that is deleted next.
fn stop_master(master: &mut Child) {
    let group = format!("-{}", master.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
    let _ = master.kill(); // in case it had not yet called setsid()
    let _ = master.wait();
}

/// A Postfix program. The commands live in /usr/sbin, which a test's PATH may lack. cargo's
/// LD_LIBRARY_PATH (target and toolchain dirs) is removed: postfix-script runs postconf
/// dozens of times, and each run would search those dirs for Postfix's shared libraries.
fn postfix_command(program: impl AsRef<Path>) -> Command {
    let in_sbin = Path::new("/usr/sbin").join(program);
    let program = in_sbin.file_name().unwrap();
    let mut cmd = Command::new(if in_sbin.exists() { in_sbin.as_os_str() } else { program });
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {}\n{stdout}{stderr}", out.status);
    stdout
}

/// Writes a file and backdates it. Postfix re-reads a config file that changed within the
/// last second, for up to 1.5 s ("pausing to let … cool down").
fn write_file(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    let past = SystemTime::now() - Duration::from_secs(10);
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(past).unwrap();
}

fn mkdirs(root: &Path, subdirs: &[&str], mode: u32) {
    for sub in subdirs {
        fs::create_dir_all(root.join(sub)).unwrap();
        fs::set_permissions(root.join(sub), fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}
