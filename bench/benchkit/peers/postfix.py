"""Postfix with one milter as a gateway of the report: "postfix+rspamd" and "postfix+clamav-milter".

Each gateway owns one private Postfix instance (master in the foreground, own config/queue/data
dirs and maillog_file under the run's workdir) relaying to the sink, and one milter
(peers/rspamd.py or peers/clamav_milter.py: the same instance code and config Sluice's milter
gateways use) on a unix socket inside Postfix's queue dir. Postfix queues: it answers 250 once
the milter accepted, then delivers to the sink."""
import os, subprocess, time

from . import debian
from .clamav_milter import ClamavMilter
from .rspamd import Rspamd
from ..gateway import Gateway, Unavailable
from ..procs import find_tool, free_port, stop, wait_port


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    past = time.time() - 10  # Postfix pauses on config files changed within the last second
    os.utime(path, (past, past))


def _main_cf(d, sink_port, milter, token):
    return f"""compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = gateway.postfix.bench
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


class Postfix:
    """One private Postfix in `d`, relaying to the sink, with the milter at spool/MILTER/milter.sock."""

    def __init__(self, d, sink_port, milter):
        self.dir, self.master = d, None
        _let_postfix_traverse(os.path.dirname(d))
        for sub in ("", "etc", "spool"):
            os.makedirs(f"{d}/{sub}", exist_ok=True)
            os.chmod(f"{d}/{sub}", 0o755)  # Postfix rejects a queue dir with a writable parent
        self.token = os.path.basename(d)
        # smtpd (user postfix, cwd = queue dir) reaches the milter socket by a path relative to
        # the queue dir, so it needs no access to the workdir above it.
        _write(f"{d}/etc/main.cf", _main_cf(d, sink_port, f"{milter}/milter.sock", self.token))
        self.port = free_port()
        _write(f"{d}/etc/master.cf", _master_cf(self.port))
        # creates the queue and data dirs with Postfix's owners and modes
        subprocess.run([find_tool("postfix", "postfix"), "-c", f"{d}/etc", "check"], check=True,
                       capture_output=True, timeout=120)
        os.makedirs(f"{d}/spool/{milter}", mode=0o755, exist_ok=True)
        self.milter_socket = f"{d}/spool/{milter}/milter.sock"

    def start(self):
        daemon_dir = subprocess.run([find_tool("postconf", "postfix"), "-dh", "daemon_directory"],
                                    capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        # master stays in the foreground, leading its own session (all daemons share its group)
        self.master = subprocess.Popen([f"{daemon_dir}/master", "-c", f"{self.dir}/etc"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.master.pid
        wait_port(self.port, self.master, "postfix smtpd", f"{self.dir}/maillog", secs=30)

    def close(self):
        proc, self.master = self.master, None
        if proc is None:
            return
        stop(proc, grace=10, group=True)
        try:  # a daemon that outlived its master still is in the group
            os.killpg(proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass


class PostfixMilter(Gateway):
    """Postfix with `milter` (a MilterDaemon class) as its one smtpd_milter."""
    antivirus, queues = True, True
    milter = None

    @classmethod
    def prepare(cls, root, workdir):
        debian.need(("postfix", "postconf"), ("postfix", "postfix"))
        cls.milter.prepare()

    @classmethod
    def version(cls):
        pf = subprocess.run([find_tool("postconf", "postfix"), "-dh", "mail_version"],
                            capture_output=True, text=True, timeout=30).stdout.strip()
        return f"Postfix {pf}, {cls.milter.version()}"

    def __init__(self, root, workdir, sink_port, clamd, conc):
        tag = self.name.replace("+", "-")
        self.dir, self.parts = os.path.join(workdir, f"{tag}-{free_port()}"), []
        try:
            postfix = Postfix(self.dir, sink_port, self.milter_dir)
            self.parts.append(self.milter(root, f"{self.dir}/{self.milter_dir}", postfix.milter_socket, clamd))
            self.parts.append(postfix)
            postfix.start()
            self.port, self.roots = postfix.port, (postfix.pid, self.parts[0].pid)
        except BaseException:
            self.close()
            raise

    def close(self):
        for part in reversed(self.parts):  # Postfix first: it holds milter connections
            part.close()
        self.parts = []


class PostfixRspamd(PostfixMilter):
    """rspamd as milter: antivirus on the run's clamd, DKIM signing (peers/rspamd.py)."""
    name, milter, milter_dir = "postfix+rspamd", Rspamd, "rspamd"
    chain = "smtpd_milters: rspamd (antivirus on the run's clamd, dkim_signing RSA-2048)"


class PostfixClamavMilter(PostfixMilter):
    """clamav-milter as milter on the run's clamd (peers/clamav_milter.py)."""
    name, milter, milter_dir = "postfix+clamav-milter", ClamavMilter, "clamav-milter"
    chain = "smtpd_milters: clamav-milter (OnInfected Reject, AddHeader No)"


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
