//! Real Debian milters for the `milter` stage's end-to-end tests: clamav-milter 1.4.6, rspamd 3.4
//! (its proxy worker in milter mode) and OpenDKIM 2.11. Each is started in the foreground, in its
//! own process group, with its own config in a temp dir, on a loopback port; `address()` is
//! `inet:127.0.0.1:PORT`. Drop SIGKILLs the group. Start returns once the port answers a milter
//! option negotiation (rspamd: and its scanner answers `/ping`).
//!
//! # What each milter does (observed through Postfix 3.7 with a logging proxy on the link)
//! Postfix offered version 6, actions 0x1ff, protocol 0x1fffff. None of the three asked for macros
//! (no symbol list in its OPTNEG reply); header values they send are folded with a bare LF + TAB.
//! - **clamav-milter**: actions 0x31 ADDHDRS|CHGHDRS|QUARANTINE (0x21 with `AddHeader Add`, 0x20
//!   with `AddHeader No`), protocol 0x342 NOHELO|NOEOH|NOUNKNOWN|NODATA: no HDR_LEADSPC, answers
//!   every event (connect, MAIL, RCPT, each header, each body chunk). It streams the headers to
//!   clamd rebuilt as `Name: value` (so without HDR_LEADSPC a value must come without its leading
//!   space). Macros it reads: `{auth_authen}` (SkipAuthenticated, at MAIL), `{mail_addr}`,
//!   `{rcpt_addr}`, `i` (log lines only); none is needed to scan. EICAR with `OnInfected Reject`
//!   and `RejectMsg` → `y` `550 5.7.1 Virus found: Eicar-Test-Signature.UNOFFICIAL` (clamd adds
//!   `.UNOFFICIAL` to names from our own database); without `RejectMsg` a bare `r` (Postfix then
//!   says `550 5.7.1 Command rejected`). `AddHeader Replace`: at end of message, for each of
//!   X-Virus-Scanned and X-Virus-Status a `m` CHGHEADER index 1 with an empty value (delete the
//!   first existing one; sent even when there is none) then `h` ADDHEADER `X-Virus-Scanned:
//!   clamav-milter 1.4.6 at milter.test` (`ReportHostname`) and `X-Virus-Status: Clean` (or
//!   `Infected (NAME)`, also before a reject). `AddHeader Add`: `i` INSHEADER index 1 each.
//!   It starts without clamd (a warning); clamd down → `OnFail Defer` → `t` (Postfix: `451 4.7.1
//!   Service unavailable - try again later`). It needs about 5 s to exit on SIGTERM.
//! - **rspamd proxy**: actions 0x1ff (all), protocol 0xff080 NR_HDR|NR_CONN|NR_HELO|NR_MAIL|
//!   NR_RCPT|NR_DATA|NR_UNKN|NR_EOH|NR_BODY: no replies until end of message; it wants every
//!   event (also HELO, DATA, EOH), no HDR_LEADSPC. Macros it reads when sent (none needed): `{i}`/`i`
//!   (queue id), `{v}`/`v`, `{daemon_name}`/`{j}`/`j`, `{auth_authen}` (marks the sender as
//!   authenticated), `{client_name}`, `{rcpt_mailer}`, `{tls_version}`, `{cipher}`,
//!   `{cert_issuer}`, `{cert_subject}`. GTUBE (`XJS*…`) → `y` `554 5.7.1 Gtube pattern`, no
//!   headers. EICAR with clamd → `h` X-Rspamd-Queue-Id, X-Spamd-Result, X-Rspamd-Action: reject,
//!   X-Rspamd-Server, X-Rspamd-Pre-Result, then `y` `554 5.7.1 virus found: NAME`. Clean → `h`
//!   `X-Rspamd-Queue-Id` (Postfix's queue id, only if `i` was sent), `X-Rspamd-Server:
//!   rspamd.test`, `X-Spamd-Result: default: False [-0.10 / 15.00];` LF TAB `SYMBOL(score)[…];`…
//!   (symbol order varies), `X-Rspamd-Action: no action`, then `a`. Test patterns
//!   (`enable_test_patterns`): `YJS*…` (add header) → `m` index 1 `X-Spam: Yes` (a change of a
//!   header that is not there adds it), `ZJS*…` (rewrite subject) → `m` index 1 `Subject: *** SPAM
//!   *** OLD`, `AJS*…` → `a` alone. clamd down → the message is accepted with CLAM_VIRUS_FAIL in
//!   X-Spamd-Result (fails open). rspamd counts 127.0.0.1 as a local network (skips DKIM checks).
//! - **OpenDKIM** (`Mode s`): actions 0x111 ADDHDRS|CHGHDRS|SETSYMLIST (but no symbol list),
//!   protocol 0x100702 NOHELO|NOUNKNOWN|NODATA|SKIP|**HDR_LEADSPC**: header values arrive with
//!   their leading space, and its `i` INSHEADER **index 0** `DKIM-Signature` value starts with a
//!   space (` v=1; a=rsa-sha256; …`), to be written after the colon as is (it adds that space
//!   only when HDR_LEADSPC is negotiated). It signs when the
//!   client is internal (`InternalHosts`, default 127.0.0.1, from the CONNECT packet's address or
//!   host name) or `{auth_type}` is non-empty (or `MTA`/`MacroList` match `{daemon_name}`/macros;
//!   not set here), and the From domain is in the SigningTable (`*` here). It reads `i` (job id
//!   for logs) and `j` (host name). Not internal → not signed, accepted unchanged. dkimpy verifies
//!   its signatures. It logs only by syslog(3) to /dev/log (none here): we run it in a private
//!   mount namespace (`unshare --mount`) whose /dev is our dir with a datagram socket `log` read
//!   by a thread into `opendkim.log`, next to its stderr (config errors).
//!
//! Both libmilter daemons fail to start ("Failed to create socket", "Unable to bind") on a port
//! whose earlier connections are in TIME_WAIT, so a start is retried on a new port.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use super::clamd::Clamd;

/// rspamd loads its rules in 2–3 s on an idle machine; a loaded 2-core machine may need more.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const ATTEMPTS: usize = 3;
const POLL: Duration = Duration::from_millis(50);

/// clamav-milter's `RejectMsg` (`%v`: the virus name), so its reply is its own.
pub const CLAMAV_REJECT_MSG: &str = "Virus found: %v";
/// The name clamd (with `Clamd`'s database) reports for the EICAR string in a message.
pub const EICAR_VIRUS: &str = "Eicar-Test-Signature.UNOFFICIAL";
/// `ReportHostname`: X-Virus-Scanned is `clamav-milter VERSION at milter.test`.
pub const CLAMAV_MILTER_HOST: &str = "milter.test";
/// The GTUBE string: rspamd rejects a message containing it.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// rspamd's test pattern for the "add header" action (`X-Spam: Yes`).
pub const GTUBE_ADD_HEADER: &str = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// rspamd's test pattern for "rewrite subject" (`Subject: *** SPAM *** …`).
pub const GTUBE_REWRITE_SUBJECT: &str = "ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// rspamd's reply to GTUBE, code and text as the milter sends them.
pub const RSPAMD_GTUBE_REPLY: &str = "554 5.7.1 Gtube pattern";
/// `X-Rspamd-Server` of our rspamd.
pub const RSPAMD_HOST: &str = "rspamd.test";

/// One daemon: its process (leading its own process group) and the port it serves.
struct Daemon {
    child: Child,
    port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGKILL the whole group (rspamd's workers too); a test instance needs no graceful stop.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command(port)` on a fresh port, with stdout and stderr in `output`, until `ready(port)`.
/// A daemon that exits (its port taken) is retried on another port; `log` explains failures.
fn start_daemon(
    what: &str,
    output: &Path,
    mut command: impl FnMut(u16) -> Command,
    ready: impl Fn(u16) -> bool,
    log: impl Fn() -> String,
) -> Daemon {
    let mut failures = String::new();
    for _ in 0..ATTEMPTS {
        let port = free_port();
        let out = File::create(output).unwrap();
        let mut cmd = command(port);
        // cargo's LD_LIBRARY_PATH (target dirs) is no use to these programs.
        cmd.env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what} (.ci/setup installs it): {e}"));
        let mut daemon = Daemon { child, port };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                failures.push_str(&format!("{what} on port {port} exited with {status}:\n{}\n", log()));
                break;
            }
            if ready(port) {
                return daemon;
            }
            assert!(Instant::now() < deadline, "{what} on port {port} not ready after {START_TIMEOUT:?}:\n{}", log());
            sleep(POLL);
        }
    }
    panic!("{what} did not start:\n{failures}");
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// A UDP port on which nothing listens (for a DNS server that never answers).
fn dead_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn connect(port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(stream)
}

/// True when `port` answers a milter option negotiation (Postfix's offer) with one.
fn milter_answers(port: u16) -> bool {
    let Some(mut stream) = connect(port) else { return false };
    let mut packet = 13u32.to_be_bytes().to_vec();
    packet.push(b'O');
    for word in [6u32, 0x1ff, 0x1f_ffff] {
        packet.extend_from_slice(&word.to_be_bytes());
    }
    let mut reply = [0u8; 5];
    stream.write_all(&packet).is_ok() && stream.read_exact(&mut reply).is_ok() && reply[4] == b'O'
}

/// True when rspamd's scanner on `port` answers `GET /ping`.
fn rspamd_pings(port: u16) -> bool {
    let Some(mut stream) = connect(port) else { return false };
    let mut reply = String::new();
    stream.write_all(b"GET /ping HTTP/1.0\r\n\r\n").is_ok()
        && stream.read_to_string(&mut reply).is_ok()
        && reply.contains("pong")
}

fn read(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// clamav-milter on the test's clamd (TCP), as root (no `User`: dropping privileges would lose
/// the temp dir, mode 0700). Its log: the LogFile, verbose, one line per message.
pub struct ClamavMilter {
    daemon: Daemon,
    dir: tempfile::TempDir,
}

impl ClamavMilter {
    /// `AddHeader Replace` (X-Virus-Scanned and X-Virus-Status on every scanned message) and
    /// [`CLAMAV_REJECT_MSG`].
    pub fn start(clamd: &Clamd) -> ClamavMilter {
        ClamavMilter::start_with(clamd, true)
    }

    /// `add_header`: `AddHeader Replace`, else `AddHeader No` (clean mail passes byte for byte).
    pub fn start_with(clamd: &Clamd, add_header: bool) -> ClamavMilter {
        ClamavMilter::start_config(clamd, add_header, Some(CLAMAV_REJECT_MSG))
    }

    /// `reject_msg` None: no `RejectMsg`, so an infected message gets a bare reject (`r`) and
    /// the MTA words the reply.
    pub fn start_config(clamd: &Clamd, add_header: bool, reject_msg: Option<&str>) -> ClamavMilter {
        let dir = tempfile::Builder::new().prefix("clamav-milter-").tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let (conf, log) = (d.join("clamav-milter.conf"), d.join("clamav-milter.log"));
        let command = |port: u16| {
            let mut text = format!(
                "MilterSocket inet:{port}@127.0.0.1\nClamdSocket tcp:127.0.0.1:{clamd_port}\nForeground yes\n\
                 PidFile {pid}\nLogFile {log}\nLogTime yes\nLogVerbose yes\nLogInfected Full\nLogClean Full\n\
                 OnClean Accept\nOnInfected Reject\nOnFail Defer\nAddHeader {add}\n\
                 ReportHostname {CLAMAV_MILTER_HOST}\nTemporaryDirectory {tmp}\n",
                clamd_port = clamd.port,
                pid = d.join("clamav-milter.pid").display(),
                log = log.display(),
                add = if add_header { "Replace" } else { "No" },
                tmp = d.display(),
            );
            if let Some(msg) = reject_msg {
                text.push_str(&format!("RejectMsg {msg}\n"));
            }
            std::fs::write(&conf, text).unwrap();
            let mut cmd = Command::new("/usr/sbin/clamav-milter");
            cmd.arg("-c").arg(&conf);
            cmd
        };
        let output = d.join("stderr.log");
        let logs = || format!("{}{}", read(&output), read(&log));
        let daemon = start_daemon("clamav-milter", &output, command, milter_answers, logs);
        ClamavMilter { daemon, dir }
    }

    pub fn address(&self) -> String {
        format!("inet:127.0.0.1:{}", self.daemon.port)
    }

    /// Its LogFile; before that exists, its stdout/stderr (which repeat the LogFile's lines, and
    /// have the errors from before the log was opened).
    pub fn log(&self) -> String {
        let d = self.dir.path();
        let log = read(&d.join("clamav-milter.log"));
        if log.is_empty() {
            read(&d.join("stderr.log"))
        } else {
            log
        }
    }
}

/// Modules that query DNS, HTTP or redis (or need them to do anything): off. (`mime_types` and
/// `mid` stay and try to fetch maps.rspamd.com once; their DNS query goes to a dead port.)
const RSPAMD_OFF: &str = "rbl surbl emails fuzzy_check phishing url_redirector dcc external_services asn spf \
    dmarc arc mx_check rspamd_update hfilter whitelist multimap bimi p0f clickhouse elastic metadata_exporter \
    metric_exporter aws_s3 greylist ratelimit neural reputation history_redis replies spamtrap trie dynamic_conf \
    bayes_expiry dkim_signing";

/// rspamd with the stock rules (/etc/rspamd via `$CONFDIR`), our `LOCAL_CONFDIR`, DBDIR, RUNDIR
/// and LOGDIR in the temp dir, no controller: a proxy worker in milter mode on a loopback port
/// forwarding to one `normal` scanner on another (its self-scan mode crashes on big messages).
pub struct Rspamd {
    daemon: Daemon,
    dir: tempfile::TempDir,
}

impl Rspamd {
    /// With `clamd`, the antivirus module scans whole messages there and rejects viruses.
    pub fn start(clamd: Option<&Clamd>) -> Rspamd {
        let dir = tempfile::Builder::new().prefix("rspamd-").tempdir().unwrap();
        let d = dir.path().to_path_buf();
        for sub in ["local.d", "override.d", "db", "run", "log"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        write_rspamd_local(&d, clamd);
        let normal = std::cell::Cell::new(0u16);
        let command = |port: u16| {
            normal.set(free_port());
            std::fs::write(d.join("rspamd.conf"), rspamd_conf(port, normal.get())).unwrap();
            let mut cmd = Command::new("/usr/bin/rspamd");
            // -i: workers may run as root (we are root and own the temp dir).
            cmd.args(["-f", "-i", "-u", "root", "-g", "root", "-c"]).arg(d.join("rspamd.conf"));
            for (var, sub) in [("LOCAL_CONFDIR", ""), ("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log")] {
                cmd.arg(format!("--var={var}={}", d.join(sub).display()));
            }
            cmd
        };
        let output = d.join("log/stderr.log");
        let ready = |port| milter_answers(port) && rspamd_pings(normal.get());
        let logs = || format!("{}{}", read(&output), read(&d.join("log/rspamd.log")));
        let daemon = start_daemon("rspamd", &output, command, ready, logs);
        Rspamd { daemon, dir }
    }

    pub fn address(&self) -> String {
        format!("inet:127.0.0.1:{}", self.daemon.port)
    }

    /// Its stderr and rspamd.log (one `rspamd_task_write_log` line per scanned message).
    pub fn log(&self) -> String {
        let d = self.dir.path();
        format!("{}{}", read(&d.join("log/stderr.log")), read(&d.join("log/rspamd.log")))
    }
}

/// The top-level config: /etc/rspamd/rspamd.conf's layout without controller and fuzzy workers.
fn rspamd_conf(milter: u16, normal: u16) -> String {
    format!(
        r#".include "$CONFDIR/common.conf"
options {{
  pidfile = "$RUNDIR/rspamd.pid";
  .include "$CONFDIR/options.inc"
  .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
  type = "file";
  filename = "$LOGDIR/rspamd.log";
  .include "$CONFDIR/logging.inc"
}}
worker "normal" {{
  bind_socket = "127.0.0.1:{normal}";
  .include "$CONFDIR/worker-normal.inc"
  count = 1;
}}
worker "rspamd_proxy" {{
  bind_socket = "127.0.0.1:{milter}";
  milter = yes; timeout = 120s; count = 1; max_retries = 5;
  discard_on_reject = false; quarantine_on_reject = false; spam_header = "X-Spam";
  reject_message = "Spam message rejected";
  upstream "local" {{ default = yes; self_scan = no; hosts = "127.0.0.1:{normal}"; }}
}}
"#
    )
}

/// local.d and override.d files: DNS to a dead port, network modules off, headers on every
/// scanned message (also from 127.0.0.1), test patterns, and antivirus on `clamd`.
fn write_rspamd_local(d: &Path, clamd: Option<&Clamd>) {
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    // The compiled hyperscan databases take ~15 s of CPU to build; kept under target/ (shared
    // with the benchmark's rspamd, same rules), and scanners use PCRE until they are ready.
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string());
    let hs_cache = PathBuf::from(target).join("bench-peers/rspamd-hs-cache");
    std::fs::create_dir_all(&hs_cache).unwrap();
    write(
        "local.d/options.inc",
        &format!(
            "dns {{ nameserver = [\"127.0.0.1:{}\"]; timeout = 0.2s; retransmits = 1; }}\n\
             task_timeout = 30s;\nhs_cache_dir = \"{}\";\nenable_test_patterns = true;\n",
            dead_udp_port(),
            hs_cache.display()
        ),
    );
    write(
        "local.d/milter_headers.conf",
        &format!(
            "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n\
             routines {{ x-rspamd-server {{ hostname = \"{RSPAMD_HOST}\"; }} }}\n"
        ),
    );
    // No redis: bayes could neither learn nor classify.
    write("local.d/classifier-bayes.conf", "min_learns = 1000000000;\n");
    let mut off: Vec<&str> = RSPAMD_OFF.split_whitespace().collect();
    match clamd {
        Some(clamd) => write(
            "local.d/antivirus.conf",
            &format!(
                "clamav {{\n  type = \"clamav\"; servers = \"127.0.0.1:{}\"; symbol = \"CLAM_VIRUS\";\n  \
                 scan_mime_parts = false; action = \"reject\"; message = \"virus found: ${{VIRUS}}\";\n  \
                 timeout = 20s; retransmits = 1; log_clean = false;\n}}\n",
                clamd.port
            ),
        ),
        None => off.push("antivirus"),
    }
    for module in off {
        write(&format!("override.d/{module}.conf"), "enabled = false;\n");
    }
}

/// OpenDKIM signing every message from 127.0.0.1 (`InternalHosts`) with one key, whatever the
/// From domain (`SigningTable refile:`, `*`), as root (no `UserID`).
pub struct OpenDkimMilter {
    // Dropped in this order: the process, then the syslog reader, then the dir.
    daemon: Daemon,
    _syslog: Option<SyslogReader>,
    dir: tempfile::TempDir,
}

impl OpenDkimMilter {
    /// `Canonicalization relaxed/simple` (OpenDKIM's default is simple/simple).
    pub fn start(key_pem: &Path, domain: &str, selector: &str) -> OpenDkimMilter {
        OpenDkimMilter::start_with(key_pem, domain, selector, "relaxed/simple")
    }

    /// `canonicalization` as `header/body`, e.g. "relaxed/relaxed".
    pub fn start_with(key_pem: &Path, domain: &str, selector: &str, canonicalization: &str) -> OpenDkimMilter {
        let key = key_pem.to_str().expect("a UTF-8 path");
        assert!(!key.contains(':') && !key.contains(char::is_whitespace), "KeyTable cannot hold the path {key}");
        let dir = tempfile::Builder::new().prefix("opendkim-milter-").tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::write(d.join("key.table"), format!("sig {domain}:{selector}:{key}\n")).unwrap();
        std::fs::write(d.join("signing.table"), "* sig\n").unwrap();
        let syslog = if private_dev_works() { Some(SyslogReader::start(&d)) } else { None };
        let conf = d.join("opendkim.conf");
        let command = |port: u16| {
            // RequireSafeKeys no: the key is under /tmp, which is world-writable.
            let text = format!(
                "Socket inet:{port}@127.0.0.1\nMode s\nKeyTable {d}/key.table\nSigningTable refile:{d}/signing.table\n\
                 Canonicalization {canonicalization}\nInternalHosts 127.0.0.1\nRequireSafeKeys no\n\
                 PidFile {d}/opendkim.pid\nTemporaryDirectory {d}\nSyslog {syslog}\nSyslogSuccess yes\nLogWhy yes\n",
                d = d.display(),
                syslog = if syslog.is_some() { "yes" } else { "no" },
            );
            std::fs::write(&conf, text).unwrap();
            let opendkim = format!("exec /usr/sbin/opendkim -f -x {}", conf.display());
            if syslog.is_none() {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", &opendkim]);
                return cmd;
            }
            // In its own mount namespace, /dev is our dir: `log` (our socket) and the real
            // null, zero, random and urandom bound onto empty files. unshare and sh exec, so
            // the PID stays opendkim's.
            let dev = d.join("dev");
            let mut script = String::from("set -e; ");
            for node in DEV_NODES {
                script.push_str(&format!("mount --bind /dev/{node} {}/{node}; ", dev.display()));
            }
            script.push_str(&format!("mount --rbind {} /dev; {opendkim}", dev.display()));
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
            cmd
        };
        let output = d.join("stderr.log");
        let logs = || format!("{}{}", read(&output), read(&d.join("opendkim.log")));
        let daemon = start_daemon("opendkim", &output, command, milter_answers, logs);
        OpenDkimMilter { daemon, _syslog: syslog, dir }
    }

    pub fn address(&self) -> String {
        format!("inet:127.0.0.1:{}", self.daemon.port)
    }

    /// Its stderr (config errors) and its syslog lines, e.g. `QUEUEID: DKIM-Signature field
    /// added (s=S, d=D)` or LogWhy's reasons for not signing.
    pub fn log(&self) -> String {
        let d = self.dir.path();
        format!("{}{}", read(&d.join("stderr.log")), read(&d.join("opendkim.log")))
    }
}

const DEV_NODES: [&str; 4] = ["null", "zero", "random", "urandom"];

/// Whether this machine lets us make a private mount namespace (root with CAP_SYS_ADMIN).
fn private_dev_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        let status = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "mount", "--bind", "/dev/null", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        status.is_ok_and(|s| s.success())
    })
}

/// Reads the datagrams sent to DIR/dev/log (syslog(3) lines) into DIR/opendkim.log.
struct SyslogReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyslogReader {
    fn start(dir: &Path) -> SyslogReader {
        let dev = dir.join("dev");
        std::fs::create_dir(&dev).unwrap();
        for node in DEV_NODES {
            File::create(dev.join(node)).unwrap();
        }
        let socket = UnixDatagram::bind(dev.join("log")).expect("bind the syslog socket");
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut file = File::create(dir.join("opendkim.log")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    // "<PRI>Mon DD HH:MM:SS opendkim[PID]: text": drop the priority.
                    let line = String::from_utf8_lossy(&buf[..n]);
                    let line = line.split_once('>').map_or(&*line, |(_, rest)| rest);
                    let _ = writeln!(file, "{}", line.trim_end());
                }
            }
        });
        SyslogReader { stop, thread: Some(thread) }
    }
}

impl Drop for SyslogReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
