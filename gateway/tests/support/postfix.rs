//! `PostfixNextHop`: a real, private Postfix instance as a next hop for end-to-end tests.
//!
//! It owns one Postfix `master` process and a temp dir that holds everything the instance
//! uses: config, queue, data dir, log and delivered mail. Nothing system-wide changes, so
//! parallel tests can each run one. It must run as root, because master(8) requires it.
//!
//! Mail flow: smtpd on `127.0.0.1:port` accepts mail for any recipient from 127.0.0.0/8.
//! `transport_maps = static:sinkpipe:all` sends every recipient to one pipe(8) transport, and
//! the shared next hop `all` puts all recipients of a message into one delivery. So there is
//! **one file per message**, however many recipients it has. The pipe runs a small script as
//! `nobody`, which writes to `mail/tmp/` and renames into `mail/new/`, so a file in `new/` is
//! always complete.
//!
//! # What Postfix does to the bytes (observed with Postfix 3.7.11 on Debian 12)
//! - It prepends one header, smtpd's `Received: from … by nexthop.postfix.test (Postfix) …`
//!   (three lines). It adds no Return-Path, Delivered-To or X-Original-To (the pipe has no
//!   `flags=`). It adds no Date/Message-ID/From and rewrites no addresses either, because
//!   `local_header_rewrite_clients` is empty.
//! - Line endings: CRLF **and bare LF** both end a line, and every line is stored with a bare LF.
//!   CRs right before a line end are removed; any other CR becomes a space.
//! - Kept byte for byte: 8-bit bytes, NUL, trailing spaces, lines far longer than 998 (5000
//!   tested), lines starting with `.` (dot-unstuffed) and `From `, empty lines.
//! - Header-level changes that [`stored_form`] does *not* model: a blank line is inserted when
//!   the content does not open with a header (including a leading continuation line) or when
//!   the header block is not closed by an empty line; a first line `From …` becomes
//!   `X-Mailbox-Line: From …`; whitespace before a header colon is removed (`Subject  :` →
//!   `Subject:`); headers longer than `header_size_limit` (100 KiB) are truncated.
//!
//! So for a well-formed message with CRLF endings and no stray CR,
//! `content_as_sent(&delivered) == sent`.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const HOSTNAME: &str = "nexthop.postfix.test";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// A running Postfix instance. Dropping it stops every process of the instance and deletes its dir.
pub struct PostfixNextHop {
    pub port: u16,
    dir: tempfile::TempDir,
    master: Child,
}

impl PostfixNextHop {
    /// Configures and starts the instance. Returns once smtpd on `port` has answered with its
    /// own banner, which takes about 0.3 s.
    pub fn start() -> PostfixNextHop {
        assert!(
            fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false),
            "PostfixNextHop needs root: Postfix's master(8) refuses to run otherwise"
        );
        let dir = tempfile::Builder::new().prefix("sluice-postfix-").tempdir().expect("create temp dir");
        let root = dir.path();
        // Postfix's daemons and the pipe script (running as postfix and nobody) must be able to
        // traverse the dir, and Postfix refuses group- or world-writable queue parents.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        for sub in ["etc", "spool", "mail/tmp", "mail/new"] {
            fs::create_dir_all(root.join(sub)).expect("create instance dirs");
        }
        for sub in ["mail", "mail/tmp", "mail/new"] {
            fs::set_permissions(root.join(sub), fs::Permissions::from_mode(0o777)).expect("chmod mail dir");
        }
        let [daemon_dir, meta_dir] = postconf_defaults(["daemon_directory", "meta_directory"]);
        let token = root.file_name().unwrap().to_string_lossy().into_owned();
        write_file(&root.join("etc/main.cf"), &main_cf(root, &meta_dir, &token), 0o644);
        write_file(&root.join("deliver"), &deliver_script(root), 0o755);

        let mut failures = Vec::new();
        // The port from bind(:0) can be taken again before master binds it, so retry.
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
            write_file(&root.join("etc/master.cf"), &master_cf(root, port), 0o644);
            if attempt == 0 {
                // Creates the queue and data directories with Postfix's owners and modes.
                run(Command::new(find_command("postfix")).arg("-c").arg(root.join("etc")).arg("check"));
            }
            let mut master = Command::new(Path::new(&daemon_dir).join("master"))
                .arg("-c")
                .arg(root.join("etc"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn postfix master");
            match wait_ready(&mut master, port, &token) {
                Ok(()) => return PostfixNextHop { port, dir, master },
                Err(why) => {
                    stop_master(&mut master);
                    failures.push(format!("port {port}: {why}"));
                }
            }
        }
        panic!(
            "Postfix next hop did not start:\n{}\nmaillog:\n{}",
            failures.join("\n"),
            fs::read_to_string(root.join("maillog")).unwrap_or_default()
        );
    }

    /// Messages delivered so far, exactly as delivered (LF line endings, with the prepended
    /// `Received:`), oldest first by delivery time. Messages delivered concurrently are in no
    /// particular order, so identify them by content.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let new_dir = self.dir.path().join("mail/new");
        let mut files: Vec<_> = fs::read_dir(&new_dir)
            .expect("list mail/new")
            .map(|e| {
                let path = e.expect("read mail/new").path();
                let mtime = fs::metadata(&path).and_then(|m| m.modified()).expect("stat delivered mail");
                (mtime, path)
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, p)| fs::read(&p).expect("read delivered mail")).collect()
    }

    /// Polls until at least `n` messages have been delivered and returns all of them (see
    /// [`Self::messages`]). Panics after 30 s with the instance's mail log.
    pub fn wait_for_messages(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let msgs = self.messages();
            if msgs.len() >= n {
                return msgs;
            }
            if Instant::now() > deadline {
                panic!(
                    "Postfix next hop on port {}: wanted {n} messages, got {} after {WAIT_TIMEOUT:?}; maillog:\n{}",
                    self.port,
                    msgs.len(),
                    self.log()
                );
            }
            sleep(POLL);
        }
    }

    /// The instance's mail log (`maillog_file`), for diagnostics.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for PostfixNextHop {
    fn drop(&mut self) {
        stop_master(&mut self.master);
    }
}

/// Removes the `Received:` header that this instance's smtpd prepended. Returns the input
/// unchanged if it does not start with that header.
pub fn strip_prepended_headers(delivered: &[u8]) -> &[u8] {
    if !delivered.starts_with(b"Received: ") {
        return delivered;
    }
    // The header runs until a line that does not start with folding whitespace.
    let mut end = 0;
    while let Some(nl) = delivered[end..].iter().position(|&b| b == b'\n') {
        end += nl + 1;
        if !matches!(delivered.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    let header = String::from_utf8_lossy(&delivered[..end]);
    if header.contains(&format!("by {HOSTNAME} (Postfix)")) {
        &delivered[end..]
    } else {
        delivered
    }
}

/// The line-level form Postfix stores for the DATA content `sent` (dot-unstuffed, as the
/// client meant it): CRLF or bare LF becomes LF, CRs before a line end are removed, other CRs
/// become spaces. A missing final line ending is added, as every SMTP client adds one before
/// the final `.`. Header-level rewrites are not modelled (see module docs).
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

/// Turns every LF into CRLF (the inverse of Postfix's line-ending conversion for CRLF-only input).
pub fn lf_to_crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + lf.len() / 32);
    for &b in lf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The delivered message with the prepended header removed and CRLF line endings restored.
/// For well-formed CRLF input this equals the content the client sent.
pub fn content_as_sent(delivered: &[u8]) -> Vec<u8> {
    lf_to_crlf(strip_prepended_headers(delivered))
}

fn main_cf(root: &Path, meta_dir: &str, token: &str) -> String {
    let r = root.display();
    format!(
        "# Private test instance written by tests/support/postfix.rs.\n\
         compatibility_level = 3.6\n\
         queue_directory = {r}/spool\n\
         data_directory = {r}/data\n\
         meta_directory = {meta_dir}\n\
         mail_owner = postfix\n\
         setgid_group = postdrop\n\
         myhostname = {HOSTNAME}\n\
         mydomain = postfix.test\n\
         myorigin = $myhostname\n\
         # No local domains: every recipient is relayed through transport_maps.\n\
         mydestination =\n\
         local_recipient_maps =\n\
         alias_maps =\n\
         alias_database =\n\
         inet_interfaces = loopback-only\n\
         inet_protocols = ipv4\n\
         mynetworks = 127.0.0.0/8\n\
         smtpd_relay_restrictions = permit_mynetworks, reject\n\
         smtp_dns_support_level = disabled\n\
         smtpd_peername_lookup = no\n\
         # The token lets start() tell this instance's smtpd from whatever else may hold the port.\n\
         smtpd_banner = $myhostname ESMTP {token}\n\
         # Tests connect from 127.0.0.1; don't add Date/Message-ID or rewrite their headers.\n\
         local_header_rewrite_clients =\n\
         transport_maps = static:sinkpipe:all\n\
         sinkpipe_destination_recipient_limit = 1000\n\
         message_size_limit = 104857600\n\
         mailbox_size_limit = 0\n\
         biff = no\n\
         maillog_file = {r}/maillog\n\
         maillog_file_prefixes = {r}\n"
    )
}

fn master_cf(root: &Path, port: u16) -> String {
    // No chroot anywhere: the instance lives in a temp dir without the files a chroot needs.
    format!(
        "127.0.0.1:{port} inet n - n - - smtpd\n\
         cleanup   unix  n - n -   0 cleanup\n\
         qmgr      unix  n - n 300 1 qmgr\n\
         rewrite   unix  - - n -   - trivial-rewrite\n\
         bounce    unix  - - n -   0 bounce\n\
         defer     unix  - - n -   0 bounce\n\
         trace     unix  - - n -   0 bounce\n\
         verify    unix  - - n -   1 verify\n\
         flush     unix  n - n 1000? 0 flush\n\
         proxymap  unix  - - n -   - proxymap\n\
         showq     unix  n - n -   - showq\n\
         error     unix  - - n -   - error\n\
         retry     unix  - - n -   - error\n\
         discard   unix  - - n -   - discard\n\
         anvil     unix  - - n -   1 anvil\n\
         scache    unix  - - n -   1 scache\n\
         postlog   unix-dgram n - n - 1 postlogd\n\
         sinkpipe  unix  - n n -   - pipe\n  user=nobody argv={}/deliver ${{queue_id}}\n",
        root.display()
    )
}

fn deliver_script(root: &Path) -> String {
    let r = root.display();
    // Exit 75 (EX_TEMPFAIL) makes Postfix defer and log the failure instead of bouncing.
    format!(
        "#!/bin/sh\n\
         # pipe(8) runs this as nobody with the message on stdin; $1 is the queue id.\n\
         f=\"$1.$$\"\n\
         cat > \"{r}/mail/tmp/$f\" && mv \"{r}/mail/tmp/$f\" \"{r}/mail/new/$f\" || exit 75\n"
    )
}

/// Waits until `port` answers with this instance's banner. A banner without the token means
/// that another server took the port.
fn wait_ready(master: &mut Child, port: u16, token: &str) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = master.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("master exited with {status}"));
        }
        if let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut banner = [0u8; 512];
            let len = conn.read(&mut banner).unwrap_or(0);
            let banner = String::from_utf8_lossy(&banner[..len]);
            if banner.starts_with("220 ") && banner.contains(token) {
                let _ = conn.write_all(b"QUIT\r\n");
                return Ok(());
            }
            if banner.starts_with("220") {
                return Err(format!("port taken by another server: {banner:?}"));
            }
        }
        sleep(POLL);
    }
    Err(format!("no banner on port {port} after {START_TIMEOUT:?}"))
}

/// SIGTERM makes master TERM its whole process group (it is a session leader) and exit
/// within 5 s. Then wait for the group to drain, so nothing writes into the dir while it is
/// removed. SIGKILL whatever is left after that.
fn stop_master(master: &mut Child) {
    let pid = master.id();
    signal(&["-TERM", &pid.to_string()]);
    let _ = master.wait();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while group_alive(pid) {
        if Instant::now() > deadline {
            signal(&["-KILL", "--", &format!("-{pid}")]);
            break;
        }
        sleep(POLL);
    }
}

fn signal(args: &[&str]) {
    let _ = Command::new("kill").args(args).stderr(Stdio::null()).status();
}

/// Whether a live (non-zombie) process is in process group `pgid`, read from `/proc/*/stat`.
fn group_alive(pgid: u32) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else { return false };
    procs.filter_map(|e| fs::read_to_string(e.ok()?.path().join("stat")).ok()).any(|stat| {
        // Fields after the parenthesised command name: state ppid pgrp ...
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let f: Vec<&str> = after.split_whitespace().take(3).collect();
        f.len() == 3 && f[0] != "Z" && f[2].parse::<u32>().ok() == Some(pgid)
    })
}

fn postconf_defaults<const N: usize>(names: [&str; N]) -> [String; N] {
    let out = run(Command::new(find_command("postconf")).arg("-dh").args(names));
    let values: Vec<String> = out.lines().map(str::to_string).collect();
    values.try_into().unwrap_or_else(|v| panic!("postconf -dh {names:?} printed {v:?}"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_file(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Postfix's commands live in /usr/sbin, which a test's PATH may lack.
fn find_command(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
