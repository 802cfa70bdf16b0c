"""Haraka (Node.js) as a peer gateway: its npm install, its generated config dir, its process.

Haraka relays in-line here: the queue/smtp_forward plugin opens a new SMTP client to the sink for
each message at queue time and answers the client's end of DATA with the sink's reply (its `dot`
event calls next(OK, reply)), so the client's 250 comes after the next hop accepted the message;
nothing is spooled to Haraka's outbound queue. Mail is scanned by haraka-plugin-clamd, which opens
one connection to clamd per message and streams it with zINSTREAM (here over clamd's unix socket)
in the data_post hook, before queueing; a FOUND verdict is answered 550, a scanner error 451.

Config is generated into workdir/haraka-PORT (the layout `haraka -i` makes: config/, plugins/); only
what the bench needs differs from Haraka's shipped defaults, each with its reason below."""
import json, os, shutil, signal, subprocess

from ..gateway import Gateway, Unavailable
from ..procs import free_port, stop, wait_port

VERSION = "3.3.4"  # engines node >=20; works on this machine's Node 20 (node-gyp's deps want 22, unused)
MAX_BYTES = 100 * 2**20  # every gateway of the report accepts messages of at least 100 MiB
LOG_LEVEL = "notice"  # core summaries only (connect/message/queue/disconnect, ~6 lines a message);
                      # Haraka's default "info" adds the plugins' lines for every message
NODES = 1  # Haraka's default (smtp.ini nodes unset = 1): a cluster master plus one worker


def _prefix(root):
    return os.path.join(root, "target", "bench-peers", "haraka")


def _home(root):
    return os.path.join(_prefix(root), "node_modules", "Haraka")


def _installed(root):
    """The installed Haraka version with its clamd plugin, or None."""
    try:
        with open(os.path.join(_home(root), "package.json")) as f:
            version = json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return None
    plugin = os.path.join(_prefix(root), "node_modules", "haraka-plugin-clamd", "package.json")
    return version if os.path.exists(plugin) else None


def _node_major(node):
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    try:
        return int(out.strip().lstrip("v").split(".")[0])
    except ValueError:
        raise Unavailable(f"cannot read the Node version ({out.strip()!r})")


# A local plugin answering lookup_rdns, so no connection waits on a reverse DNS lookup (Haraka
# does dns.reverse on every connection otherwise; this box has no DNS beyond loopback).
RDNS_PLUGIN = """// bench: no reverse DNS lookup per connection
exports.hook_lookup_rdns = (next, connection) => next(OK, 'localhost')
"""


class Haraka(Gateway):
    name = "haraka"
    antivirus = True
    queues = False
    clamd_transport = "unix"  # "unix" (clamd.socket) or "tcp" (127.0.0.1:clamd.port); both supported

    @classmethod
    def version(cls, root=None):
        here = os.path.abspath(__file__)  # root/bench/benchkit/peers/haraka.py
        root = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(here))))
        return _installed(root)

    @classmethod
    def prepare(cls, root, workdir):
        node, npm = shutil.which("node"), shutil.which("npm")
        if not node or not npm:
            raise Unavailable("node/npm not found (Debian packages nodejs, npm)")
        if _node_major(node) < 20:
            raise Unavailable(f"Haraka {VERSION} needs Node >= 20")
        if _installed(root) == VERSION:
            return  # already there: no npm call
        os.makedirs(_prefix(root), exist_ok=True)
        cmd = [npm, "install", "--prefix", _prefix(root), "--no-audit", "--no-fund",
               "--loglevel=error", f"Haraka@{VERSION}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise Unavailable("npm install Haraka did not finish within 600 s")
        if done.returncode != 0 or _installed(root) != VERSION:
            raise Unavailable(f"npm install Haraka@{VERSION} failed:\n{(done.stdout + done.stderr)[-1500:]}")

    def __init__(self, root, workdir, sink_port, clamd, conc):
        self.port = free_port()
        self.dir = os.path.join(workdir, f"haraka-{self.port}")
        if self.clamd_transport == "unix":
            clamd_at = clamd.socket
        else:
            clamd_at = f"127.0.0.1:{clamd.port}"
        self._write_config(sink_port, clamd_at)
        self.log = os.path.join(self.dir, "haraka.log")
        cmd = [shutil.which("node") or "node", os.path.join(_home(root), "bin", "haraka"), "-c", self.dir]
        # own session: close() stops the cluster master and its worker as one process group
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.roots = (self.proc.pid,)
        try:
            wait_port(self.port, self.proc, "haraka", self.log, secs=60)
        except BaseException:
            self.close()
            raise

    def _write_config(self, sink_port, clamd_at):
        files = {
            "smtp.ini": (
                f"[main]\nlisten=127.0.0.1:{self.port}\nnodes={NODES}\n"
                # Haraka's default idle timeout, written out; a quick stop on SIGTERM
                "inactivity_timeout=300\nforce_shutdown_timeout=5\n"),
            "me": "haraka.bench\n",  # the HELO/Received name, instead of asking the OS
            # relay.acl: loopback may relay to any domain (connection.relaying = true)
            "plugins": "bench_rdns\nrelay\nclamd\nqueue/smtp_forward\n",
            "relay.ini": "[relay]\nacl=true\n",
            "relay_acl_allow": "127.0.0.1/32\n",
            # relayed mail goes to the queue_outbound hook: enable_outbound makes smtp_forward
            # take it in-line there too, instead of Haraka's queueing outbound MX delivery
            "smtp_forward.ini": (f"[main]\nhost=127.0.0.1\nport={sink_port}\nenable_outbound=true\n"),
            # max_size: scan everything we accept (default 25 MiB: larger mail passes unscanned);
            # reject.UNOFFICIAL stays on (default): the run's EICAR-only ndb names it *.UNOFFICIAL
            # timeout: a whole 100 MiB scan under load takes longer than the default 30 s
            "clamd.ini": (f"[main]\nclamd_socket={clamd_at}\nmax_size={MAX_BYTES}\ntimeout=120\n"
                          "connect_timeout=10\n"),
            # above clamd.ini's timeout, so the plugin answers before Haraka's hook timeout
            "plugin_timeout": "180\n",
            # the shipped connection.ini with max.bytes raised (its sections have no defaults in
            # code); spool_after stays Haraka's default: 25 MiB in memory, then a file in spool_dir
            "connection.ini": (f"[main]\nspool_dir={self.dir}/spool\n\n[headers]\nmax_lines=1000\n"
                               f"max_received=100\n\n[max]\nbytes={MAX_BYTES}\nmime_parts=1000\n"
                               "line_length=512\ndata_line_length=992\n\n[message]\n"
                               "helo=Haraka is at your service.\nclose=closing connection.\n\n"
                               "[uuid]\nbanner_chars=6\ndeny_chars=0\n"),
            "log.ini": f"[main]\nlevel={LOG_LEVEL}\ntimestamps=false\nformat=default\n",
        }
        for sub in ("config", "plugins", "spool", "queue"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(self.dir, "config", name), "w") as f:
                f.write(text)
        with open(os.path.join(self.dir, "plugins", "bench_rdns.js"), "w") as f:
            f.write(RDNS_PLUGIN)

    def close(self):
        proc = getattr(self, "proc", None)
        if proc is None:
            return
        stop(proc, grace=10, group=True)
        try:  # a cluster worker outliving its master would still be in the group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
