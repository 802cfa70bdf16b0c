"""The "Postfix + rspamd milter" peer: a private Postfix relaying to the sink, with rspamd as milter.

Owns one Postfix instance (master in the foreground, own config/queue/data dirs and maillog_file
under the run's workdir) and one rspamd (`-f`, stock /etc/rspamd config with LOCAL_CONFDIR, DBDIR,
RUNDIR and LOGDIR pointed into the workdir). rspamd runs the stock topology: a proxy worker in
milter mode forwarding to `normal` scanner workers (its self-scan mode crashes on >= 2 MiB mail
under concurrency, see /work/shared/RECIPES.md). Both links are unix sockets: a TCP milter link
loses ~45 ms per session to delayed ACKs. rspamd scans whole messages with the run's clamd
(antivirus, reject on EICAR) and DKIM-signs mail from source.bench; every network or redis module
is off and its DNS points at a dead loopback port with a short timeout, so nothing waits on it.
Postfix queues: it answers 250 once the milter accepted, then delivers to the sink."""
import os, socket, subprocess, time

from ..gateway import Gateway, Unavailable
from ..procs import find_tool, free_port, stop, wait_port

SELECTOR, DOMAIN = "bench", "source.bench"
NORMAL_WORKERS = os.cpu_count() or 1
# Modules that query DNS, HTTP maps or redis (or need them to do anything): off, so a scan never
# waits on the network and nothing depends on the host. dkim stays: dkim_signing calls into it.
OFF = ("rbl surbl emails fuzzy_check phishing url_redirector dcc external_services asn spf dmarc "
       "arc mx_check rspamd_update hfilter whitelist multimap bimi p0f clickhouse elastic "
       "metadata_exporter metric_exporter aws_s3 greylist ratelimit neural reputation "
       "history_redis replies spamtrap trie dynamic_conf bayes_expiry").split()


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    past = time.time() - 10  # Postfix pauses on config files changed within the last second
    os.utime(path, (past, past))


def _dead_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # nothing listens after close
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rspamd_conf(d, milter_sock, clamd, hs_cache):
    """Writes the top-level config and local.d/override.d files under `d`; returns the --var args."""
    for sub in ("local.d", "override.d", "db", "run", "log"):
        os.makedirs(f"{d}/{sub}", exist_ok=True)
    key = f"{d}/{SELECTOR}.key"
    subprocess.run([find_tool("rspamadm", "rspamd"), "dkim_keygen", "-s", SELECTOR, "-d", DOMAIN, "-b", "2048", "-k", key],
                   check=True, capture_output=True, timeout=60)
    # Same layout as /etc/rspamd/rspamd.conf, minus controller and fuzzy; sockets are ours.
    _write(f"{d}/rspamd.conf", f"""
.include "$CONFDIR/common.conf"
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
  bind_socket = "{d}/run/normal.sock mode=0600";
  .include "$CONFDIR/worker-normal.inc"
  # stock is cores - 2 (min 1); one scanner per core lets rspamd use the box as the others do
  count = {NORMAL_WORKERS};
}}
worker "rspamd_proxy" {{
  bind_socket = "{milter_sock} mode=0666";
  # worker-proxy.inc's settings, with our upstream (its "localhost" one cannot be replaced)
  milter = yes; timeout = 120s; count = 1; max_retries = 5;
  discard_on_reject = false; quarantine_on_reject = false; spam_header = "X-Spam";
  reject_message = "Spam message rejected";
  upstream "local" {{ default = yes; self_scan = no; hosts = "{d}/run/normal.sock"; }}
}}
""")
    # The antivirus timeout bounds one clamd call; task_timeout must exceed it (else a slow scan
    # under load ends the task before clamd answers).
    _write(f"{d}/local.d/options.inc", f"""
dns {{ nameserver = ["127.0.0.1:{_dead_udp_port()}"]; timeout = 0.2s; retransmits = 1; }}
task_timeout = 60s;
hs_cache_dir = "{hs_cache}";
""")
    server = clamd.socket if getattr(clamd, "socket", None) else f"127.0.0.1:{clamd.port}"
    _write(f"{d}/local.d/antivirus.conf", f"""
clamav {{
  type = "clamav"; servers = "{server}"; symbol = "CLAM_VIRUS";
  scan_mime_parts = false; action = "reject"; message = "virus found: ${{VIRUS}}";
  timeout = 50s; retransmits = 1; log_clean = false;
}}
""")
    _write(f"{d}/local.d/dkim_signing.conf", f"""
enabled = true; use_redis = false; try_fallback = false; use_esld = false; use_domain = "header";
allow_hdrfrom_mismatch = true; allow_hdrfrom_mismatch_sign_networks = true;
allow_username_mismatch = true; allow_envfrom_empty = true;
sign_local = true; sign_networks = ["127.0.0.0/8"];
domain {{ "{DOMAIN}" {{ selector = "{SELECTOR}"; path = "{key}"; }} }}
""")
    # bayes: no redis backend to learn in or classify from
    _write(f"{d}/local.d/classifier-bayes.conf", "min_learns = 1000000000;\n")
    for module in OFF:
        _write(f"{d}/override.d/{module}.conf", "enabled = false;\n")
    return [f"--var={k}={v}" for k, v in (("LOCAL_CONFDIR", d), ("DBDIR", f"{d}/db"),
                                            ("RUNDIR", f"{d}/run"), ("LOGDIR", f"{d}/log"))]


def _main_cf(d, sink_port, milter, token):
    return f"""compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = gateway.postfix-rspamd.bench
mydestination =
local_recipient_maps =
local_transport = error:no local delivery
alias_maps =
alias_database =
biff = no
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_banner = $myhostname ESMTP {token}
smtpd_peername_lookup = no
local_header_rewrite_clients =
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_tls_security_level = none
message_size_limit = 209715200
mailbox_size_limit = 0
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
initial_destination_concurrency = 100
default_destination_concurrency_limit = 100
smtp_destination_concurrency_limit = 100
smtpd_milters = unix:{milter}
non_smtpd_milters =
milter_protocol = 6
milter_default_action = tempfail
milter_mail_macros = i {{mail_addr}} {{client_addr}} {{client_name}} {{auth_authen}}
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
"""


def _master_cf(port):
    # No chroot: the private queue dir lacks a jail's files. "-" process limits = 200 above.
    return f"""127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n -   0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -   - trivial-rewrite
bounce    unix  - - n -   0 bounce
defer     unix  - - n -   0 bounce
trace     unix  - - n -   0 bounce
flush     unix  n - n 1000? 0 flush
error     unix  - - n -   - error
retry     unix  - - n -   - error
discard   unix  - - n -   - discard
smtp      unix  - - n -   - smtp
relay     unix  - - n -   - smtp
scache    unix  - - n -   1 scache
anvil     unix  - - n -   1 anvil
postlog   unix-dgram n - n - 1 postlogd
"""


def _milter_answers(path):
    """True when a milter option negotiation on `path` gets an 'O' reply."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(path)
            body = b"O" + (6).to_bytes(4, "big") + (0x1FF).to_bytes(4, "big") + (0).to_bytes(4, "big")
            s.sendall(len(body).to_bytes(4, "big") + body)
            return s.recv(5)[4:5] == b"O"
    except OSError:
        return False


class PostfixRspamd(Gateway):
    name = "postfix+rspamd"
    antivirus = True
    queues = True

    @classmethod
    def prepare(cls, root, workdir):
        missing = [pkg for pkg, tool in (("postfix", "postconf"), ("rspamd", "rspamd"))
                   if not any(os.access(f"{d}/{tool}", os.X_OK) for d in ("/usr/sbin", "/usr/bin"))]
        if missing:
            _apt_install(missing)
        for tool, pkg in (("postconf", "postfix"), ("rspamd", "rspamd"), ("rspamadm", "rspamd")):
            find_tool(tool, pkg)

    @classmethod
    def version(cls):
        pf = subprocess.run([find_tool("postconf", "postfix"), "-dh", "mail_version"],
                            capture_output=True, text=True, timeout=30).stdout.strip()
        rs = subprocess.run([find_tool("rspamd", "rspamd"), "--version"],
                            capture_output=True, text=True, timeout=30).stdout.split()[-1:]
        return f"Postfix {pf}, rspamd {' '.join(rs)}"

    def __init__(self, root, workdir, sink_port, clamd, conc):
        self.root, self.dir = root, os.path.join(workdir, f"postfix-rspamd-{free_port()}")
        self.procs = []
        try:
            self._start(sink_port, clamd)
        except BaseException:
            self.close()
            raise

    def _start(self, sink_port, clamd):
        d = self.dir
        _let_postfix_traverse(os.path.dirname(d))
        for sub in ("", "etc", "spool", "rspamd"):
            os.makedirs(f"{d}/{sub}", exist_ok=True)
            os.chmod(f"{d}/{sub}", 0o755)  # Postfix rejects a queue dir with a writable parent
        token = os.path.basename(d)
        # smtpd (user postfix, cwd = queue dir) reaches the milter socket by a path relative to
        # the queue dir, so it needs no access to the workdir above it.
        _write(f"{d}/etc/main.cf", _main_cf(d, sink_port, "rspamd/milter.sock", token))
        self.port = free_port()
        _write(f"{d}/etc/master.cf", _master_cf(self.port))
        postfix = find_tool("postfix", "postfix")
        # creates the queue and data dirs with Postfix's owners and modes
        subprocess.run([postfix, "-c", f"{d}/etc", "check"], check=True, capture_output=True, timeout=120)
        os.makedirs(f"{d}/spool/rspamd", mode=0o755, exist_ok=True)
        self.milter = f"{d}/spool/rspamd/milter.sock"
        self._start_rspamd(clamd)
        self._start_postfix(token)

    def _start_rspamd(self, clamd):
        d = f"{self.dir}/rspamd"
        # Compiled hyperscan databases (TLD list, regexp rules) take ~15 s of CPU to build: kept
        # across runs, as any real install keeps them, so they are not built during a measurement.
        hs_cache = f"{self.root}/target/bench-peers/rspamd-hs-cache"
        os.makedirs(hs_cache, exist_ok=True)
        args = _rspamd_conf(d, self.milter, clamd, hs_cache)
        log = open(f"{d}/log/stderr.log", "w")
        self.rspamd = subprocess.Popen(
            [find_tool("rspamd", "rspamd"), "-f", "-i", "-u", "root", "-g", "root", "-c", f"{d}/rspamd.conf"]
            + args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(self.rspamd)
        end = time.monotonic() + 60
        while self.rspamd.poll() is None and time.monotonic() < end:
            if _milter_answers(self.milter) and os.path.exists(f"{d}/run/normal.sock"):
                return self._wait_hyperscan(f"{d}/log/rspamd.log")
            time.sleep(0.1)
        tail = "".join(open(p, errors="replace").read()[-1500:] for p in
                       (f"{d}/log/stderr.log", f"{d}/log/rspamd.log") if os.path.exists(p))
        raise Unavailable(f"rspamd's milter did not answer on {self.milter}\n{tail}")

    def _wait_hyperscan(self, log, secs=120):
        """With an empty cache, hs_helper compiles the regexp rules after start (~6 s of CPU) and
        scanners use PCRE until then: wait for every scanner to load them, so no run measures that."""
        end = time.monotonic() + secs
        while self.rspamd.poll() is None and time.monotonic() < end:
            text = open(log, errors="replace").read()
            if ("hyperscan database has NOT been loaded" not in text
                    or text.count("rspamd_worker_hyperscan_ready") >= NORMAL_WORKERS):
                return
            time.sleep(0.2)

    def _start_postfix(self, token):
        d = self.dir
        daemon_dir = subprocess.run([find_tool("postconf", "postfix"), "-dh", "daemon_directory"],
                                    capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        # master stays in the foreground, leading its own session (all daemons share its group)
        self.master = subprocess.Popen([f"{daemon_dir}/master", "-c", f"{d}/etc"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        self.procs.append(self.master)
        wait_port(self.port, self.master, "postfix smtpd", f"{d}/maillog", secs=30)
        self.roots = (self.master.pid, self.rspamd.pid)

    def close(self):
        for proc in reversed(self.procs):  # Postfix first: it holds milter connections
            stop(proc, grace=10, group=True)
            try:  # a daemon that outlived its master still is in the group
                os.killpg(proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs = []


def _let_postfix_traverse(workdir):
    """master and its daemons open data_directory and maillog_file by absolute path as user
    postfix, so every dir above them needs o+x. The run's workdir (mode 0700 from tempfile) gets
    search permission only: its names stay unlistable."""
    os.chmod(workdir, os.stat(workdir).st_mode | 0o001)
    path = os.path.dirname(os.path.abspath(workdir))
    while path != "/":
        if not os.stat(path).st_mode & 0o001:
            raise Unavailable(f"Postfix's user cannot traverse {path} (no o+x) to reach its dirs")
        path = os.path.dirname(path)


def _apt_install(pkgs):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # no debconf question, no generated /etc/postfix/main.cf that a system instance would use
    subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                   capture_output=True, timeout=60)
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + pkgs
    for attempt in range(2):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode == 0:
            return
        if attempt == 0:  # stale package lists: update once and retry
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    raise Unavailable(f"apt-get install {' '.join(pkgs)} failed:\n{(r.stdout + r.stderr)[-800:]}")
