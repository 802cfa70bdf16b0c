"""One measured run: smtp-source's load, our latency probe beside it, the gateway's tree sampled.

* **Load**: `smtp-source -m COUNT -s CONC -l SIZE` (one connection per message, Postfix's tool).
* **Latency probe**: one more client of ours, sending messages of the same size one after another
  (at most one every 20 ms) on fresh connections while smtp-source runs, timing each from connect
  to the reply to the end of data. Its messages count in the run's msg/s. For an in-line gateway that reply comes after the next hop accepted the message,
  so it is the end-to-end latency; for a queueing one (Postfix) it is the intake latency.
* **Sampler**: the gateway's process trees' memory (sum of PSS), and their CPU seconds
  from the start of the load to the moment the sink had every message.
Every part is bounded by the run's deadline."""
import os, smtplib, socket, subprocess, threading, time

from .procs import find_tool, hwm_kib, pss_kib, tree, tree_cpu

PROBE_LIMIT = 2000  # messages per run at most
PROBE_PACE = 0.02  # seconds between the starts of two probe messages, at least


def payload(size, seq):
    """A message like smtp-source's: a few headers, then lines of text making `size` body bytes.
    Each `seq` gives a different message: clamd caches the verdict of content it has seen, so
    identical messages would be scanned once (that is what made clamd look 3x cheaper fed
    directly than behind a gateway, whose smtp-source messages all differ)."""
    head = (b"From: <probe@source.bench>\r\nTo: <sink@sink.bench>\r\nSubject: probe\r\n"
            b"Message-ID: <%d.%d@source.bench>\r\n\r\n" % (seq, time.time_ns()))
    line = b"x" * 78 + b"\r\n"
    body = line * (size // len(line)) + b"x" * (size % len(line))
    return head + body + (b"" if body.endswith(b"\r\n") else b"\r\n")


class Probe(threading.Thread):
    """One message at a time, at most one every PROBE_PACE: beside a fast gateway it adds a few
    percent to the load; beside a slow one it is one more session. Its messages count in msg/s."""

    def __init__(self, port, size, deadline):
        super().__init__(daemon=True)
        self.port, self.size, self.deadline = port, size, deadline
        self.latencies, self.failures, self.done = [], [], threading.Event()

    def run(self):
        while not self.done.is_set() and time.monotonic() < self.deadline and len(self.latencies) < PROBE_LIMIT:
            message = payload(self.size, len(self.latencies) + len(self.failures))
            start = time.monotonic()
            try:
                c = smtplib.SMTP("127.0.0.1", self.port, timeout=max(1, self.deadline - start))
                try:
                    c.sendmail("probe@source.bench", ["sink@sink.bench"], message)
                    self.latencies.append(time.monotonic() - start)  # before QUIT: connect to the data's reply
                finally:
                    c.close()
            except (smtplib.SMTPException, OSError) as e:
                self.failures.append(str(e)[:200])
            self.done.wait(max(0.0, PROBE_PACE - (time.monotonic() - start)))


class Sampler(threading.Thread):
    """Peak PSS of the trees under `roots`. The pid set is refreshed once a second and a sample
    waits at least ten times as long as it took (reading smaps_rollup of hundreds of Postfix
    processes is not free, and it runs beside the load), at least 50 ms."""

    def __init__(self, roots):
        super().__init__(daemon=True)
        self.roots, self.peak_kib, self.done = roots, 0, threading.Event()

    def run(self):
        pids, listed = [], 0.0
        while not self.done.is_set():
            start = time.monotonic()
            if start - listed >= 1.0:
                pids, listed = list({p for r in self.roots for p in tree(r)}), start
            self.peak_kib = max(self.peak_kib, sum(pss_kib(p) for p in pids))
            self.done.wait(max(0.05, 10 * (time.monotonic() - start)))


def settle(sink, secs=60):
    """After a failed run: until the sink's count stopped moving for 2 s (bounded), so a gateway
    still delivering does not run into the next measurement."""
    end, last, since = time.monotonic() + secs, sink.count(), time.monotonic()
    while time.monotonic() < end and time.monotonic() - since < 2:
        time.sleep(0.2)
        now = sink.count()
        if now != last:
            last, since = now, time.monotonic()


def run(gateway, sink, size, conc, count, timeout, clamd=None, probe=True):
    """A dict: seconds (intake: smtp-source's wall time), drain_seconds (until the sink had all),
    count (smtp-source's messages), probed, delivered, latencies, cpu (gateway trees),
    clamd_cpu, peak_pss_kib, hwm_kib (one-process gateways: VmHWM), error (None when all went
    well). Any failure, even of this code, is the run's error, never an exception."""
    try:
        return _run(gateway, sink, size, conc, count, timeout, clamd, probe)
    except Exception as e:  # noqa: BLE001  (the report goes on; the run is a failure)
        return {"error": f"{type(e).__name__}: {e}"[:300], "seconds": None, "drain_seconds": None, "count": count,
                "probed": 0, "delivered": 0, "sent": count, "latencies": [], "cpu": None, "clamd_cpu": None}


def _run(gateway, sink, size, conc, count, timeout, clamd, probe):
    deadline = time.monotonic() + timeout
    cmd = [find_tool("smtp-source", "postfix"), "-m", str(count), "-s", str(conc), "-l", str(size),
           "-M", "source.bench", "-f", "bench@source.bench", "-t", "sink@sink.bench", f"127.0.0.1:{gateway.port}"]
    before = sink.count()
    roots = gateway.roots
    cpu0 = tree_cpu(roots)
    clamd_cpu0 = tree_cpu((clamd.proc.pid,)) if clamd else 0
    # direct has no tree of its own: its sampler reads the sink's, so every run pays the same
    sampler = Sampler(roots or (sink.proc.pid,))
    sampler.start()
    prober = Probe(gateway.port, size, deadline) if probe else None
    start = time.monotonic()
    src = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if prober:
        prober.start()
    out = {"error": None, "seconds": None, "drain_seconds": None, "count": count}
    try:
        _, err = src.communicate(timeout=max(0.1, deadline - time.monotonic()))
        out["seconds"] = time.monotonic() - start
        if src.returncode:  # without -A, smtp-source exits 1 at the first rejected command
            out["error"] = f"smtp-source exit {src.returncode}: {(err.strip().splitlines() or [''])[-1][:160]}"
    except subprocess.TimeoutExpired:
        src.kill()
        src.communicate()
        out["error"], out["timeout"] = f"timeout {timeout:.0f}s, smtp-source killed", True
    if prober:
        prober.done.set()
        prober.join(max(0.1, deadline - time.monotonic()))
    probed = len(prober.latencies) if prober else 0
    want = count + probed
    # an in-line gateway has delivered when it answered; a queueing one gets until the deadline
    wait = max(0.1, deadline - time.monotonic()) if gateway.queues else 3.0
    delivered = sink.wait_for(before + want, wait if out["error"] is None else 1.0) - before
    out["drain_seconds"] = time.monotonic() - start if delivered >= want else None
    sampler.done.set()
    sampler.join()
    out.update(delivered=delivered, sent=want, probed=probed, latencies=prober.latencies if prober else [],
               probe_failures=prober.failures if prober else [], cpu=tree_cpu(roots) - cpu0 if roots else None,
               clamd_cpu=tree_cpu((clamd.proc.pid,)) - clamd_cpu0 if clamd else None,
               peak_pss_kib=(sampler.peak_kib or None) if roots else None,
               hwm_kib=hwm_kib(roots[0]) if len(roots) == 1 and len(tree(roots[0])) == 1 else None)
    if out["error"] is None and prober and prober.failures:
        out["error"] = f"probe: {len(prober.failures)} failed, first: {prober.failures[0]}"
    if out["error"] is None and delivered != want:
        out["error"] = f"sink received {delivered} of {want}"
    for pid in roots:
        if not os.path.exists(f"/proc/{pid}"):
            out["error"] = f"gateway process {pid} died; {out['error'] or ''}"
    if out["error"]:
        settle(sink)
    return out


def clamd_rate(clamd, size, conc, count, timeout):
    """clamd alone: `count` messages of `size` by INSTREAM from `conc` parallel clients over its unix
    socket, no gateway. Returns (seconds, clamd CPU seconds, error)."""
    lock, left, errors = threading.Lock(), [count], []
    deadline = time.monotonic() + timeout

    def client():
        while time.monotonic() < deadline:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
                seq = left[0]
            message = payload(size, seq)
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(max(1, deadline - time.monotonic()))
                    s.connect(clamd.socket)
                    s.sendall(b"zINSTREAM\0")
                    for i in range(0, len(message), 1 << 16):
                        chunk = message[i:i + (1 << 16)]
                        s.sendall(len(chunk).to_bytes(4, "big") + chunk)
                    s.sendall(b"\0\0\0\0")
                    reply = s.recv(256)
                if not reply.rstrip(b"\0").endswith(b"OK"):
                    errors.append(reply[:100])
            except OSError as e:
                errors.append(str(e))

    cpu0 = tree_cpu((clamd.proc.pid,))
    start = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    secs = time.monotonic() - start
    error = f"{len(errors)} failed, first: {errors[0]}" if errors else ("timeout" if left[0] else None)
    return secs, tree_cpu((clamd.proc.pid,)) - cpu0, error
