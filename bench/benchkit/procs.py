"""Processes: free loopback ports, bounded stops, waiting for a port, and a process tree's RSS and CPU.

A gateway is measured as its whole process tree (Postfix and Haraka fork workers), read from
/proc: CPU = utime + stime + cutime + cstime of every live process in the tree, memory = the sum
of PSS over the tree, sampled while the load runs (VmHWM is per process, so a tree has none; a
one-process gateway's VmHWM is read too)."""
import os, re, shutil, signal, socket, subprocess, time

TICK = os.sysconf("SC_CLK_TCK")
SBIN = ("/usr/sbin", "/usr/lib/postfix/sbin", "/usr/lib/postfix", "/usr/libexec/postfix")


class Unavailable(Exception):
    """A peer or tool cannot be installed or started here; the report says so instead of skipping."""


def find_tool(name, package):
    for path in [shutil.which(name)] + [f"{d}/{name}" for d in SBIN]:
        if path and os.access(path, os.X_OK):
            return path
    raise Unavailable(f"{name} not found (Debian package {package})")


def free_port():
    with socket.socket() as s:  # small race before the server binds it; harmless on a bench box
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, grace=10, group=False):
    """SIGTERM (to the process group when `group`), then SIGKILL after `grace` s."""
    if proc.poll() is not None:
        return
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    try:
        send(signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def wait_port(port, proc, what, log_path=None, secs=30, banner=True):
    """Until 127.0.0.1:port accepts a connection (and sends a 220 banner when `banner`)."""
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if not banner or s.recv(4).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    tail = open(log_path, errors="replace").read()[-800:] if log_path and os.path.exists(log_path) else ""
    raise Unavailable(f"{what} did not answer on 127.0.0.1:{port} within {secs} s\n{tail}")


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def tree(root):
    """The pids of `root` and all its live descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(entry)[1]), []).append(int(entry))
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def tree_cpu(roots):
    """CPU seconds used so far by the trees under `roots` (live processes and their reaped children)."""
    total = 0
    for pid in {p for r in roots for p in tree(r)}:
        try:
            f = _stat(pid)
            total += sum(int(x) for x in f[11:15])
        except OSError:
            pass
    return total / TICK


def pss_kib(pid):
    """PSS of one process (shared pages divided among the processes sharing them: a sum of RSS
    would count rspamd's shared hyperscan maps or Postfix's libraries once per process), or 0."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            m = re.search(r"^Pss:\s+(\d+) kB", f.read(), re.M)
        return int(m[1]) if m else 0
    except OSError:
        return 0


def tree_pss_kib(roots):
    """Memory of the trees under `roots`: the sum of their processes' PSS."""
    return sum(pss_kib(p) for p in {p for r in roots for p in tree(r)})


def hwm_kib(pid, field="VmHWM"):
    """Peak RSS (VmHWM; or another /proc/PID/status field in kB, e.g. VmRSS) of one process, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)[1])
    except (OSError, TypeError):
        return None
