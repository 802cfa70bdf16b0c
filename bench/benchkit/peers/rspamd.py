"""rspamd as a milter of the report: one private instance, the same config behind Postfix and Sluice.

`rspamd -f` with the stock /etc/rspamd rules and LOCAL_CONFDIR, DBDIR, RUNDIR and LOGDIR pointed
into its dir. It runs the stock topology: a proxy worker in milter mode forwarding to `normal`
scanner workers (its self-scan mode crashes on >= 2 MiB mail under concurrency, see
/work/shared/RECIPES.md), both on unix sockets (a TCP milter link loses ~45 ms per session to
delayed ACKs). It scans whole messages with the run's clamd (antivirus, reject on EICAR) and
DKIM-signs mail from source.bench (RSA-2048); every network or redis module is off and its DNS
points at a dead loopback port with a short timeout, so nothing waits on it."""
import os, socket, subprocess, time

from . import debian
from .milter import MilterDaemon
from ..procs import find_tool

SELECTOR, DOMAIN = "bench", "source.bench"
NORMAL_WORKERS = os.cpu_count() or 1
# Modules that query DNS, HTTP maps or redis (or need them to do anything): off, so a scan never
# waits on the network and nothing depends on the host. dkim stays: dkim_signing calls into it.
OFF = ("rbl surbl emails fuzzy_check phishing url_redirector dcc external_services asn spf dmarc "
       "arc mx_check rspamd_update hfilter whitelist multimap bimi p0f clickhouse elastic "
       "metadata_exporter metric_exporter aws_s3 greylist ratelimit neural reputation "
       "history_redis replies spamtrap trie dynamic_conf bayes_expiry").split()


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _dead_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # nothing listens after close
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(d, milter_sock, clamd, hs_cache):
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


class Rspamd(MilterDaemon):
    """rspamd with its config in `d`, its milter (the proxy) on the unix socket `socket`."""
    what = "rspamd's milter"

    @classmethod
    def prepare(cls):
        debian.need(("rspamd", "rspamd"), ("rspamd", "rspamadm"))

    @classmethod
    def version(cls):
        out = subprocess.run([find_tool("rspamd", "rspamd"), "--version"], capture_output=True, text=True, timeout=30)
        return f"rspamd {' '.join(out.stdout.split()[-1:])}"

    def __init__(self, root, d, socket_path, clamd):
        self.dir, self.socket = d, socket_path
        try:
            self._start(root, clamd)
        except BaseException:
            self.close()
            raise

    def _start(self, root, clamd):
        d = self.dir
        # Compiled hyperscan databases (TLD list, regexp rules) take ~15 s of CPU to build: kept
        # across runs, as any real install keeps them, so they are not built during a measurement.
        hs_cache = f"{root}/target/bench-peers/rspamd-hs-cache"
        os.makedirs(hs_cache, exist_ok=True)
        args = _conf(d, self.socket, clamd, hs_cache)
        self._spawn([find_tool("rspamd", "rspamd"), "-f", "-i", "-u", "root", "-g", "root", "-c", f"{d}/rspamd.conf"]
                    + args, f"{d}/log/stderr.log")
        self._wait(lambda: os.path.exists(f"{d}/run/normal.sock"), logs=(f"{d}/log/rspamd.log",))
        self._wait_hyperscan(f"{d}/log/rspamd.log")

    def _wait_hyperscan(self, log, secs=120):
        """With an empty cache, hs_helper compiles the regexp rules after start (~6 s of CPU) and
        scanners use PCRE until then: wait for every scanner to load them, so no run measures that."""
        end = time.monotonic() + secs
        while self.proc.poll() is None and time.monotonic() < end:
            text = open(log, errors="replace").read()
            if ("hyperscan database has NOT been loaded" not in text
                    or text.count("rspamd_worker_hyperscan_ready") >= NORMAL_WORKERS):
                return
            time.sleep(0.2)
