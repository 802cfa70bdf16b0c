"""The scale checks of the report, per gateway: many idle sessions, and many bodies at once.

* **idle**: `IDLE` sessions opened and greeted (banner, EHLO answered), then held open; the
  gateway's process-tree PSS is read once all are up (target for sluice: < 100 MiB at 1,000).
* **bodies**: `BODIES` clients each sending one `BODY_SIZE` message at the same moment, one
  thread each (every body really in flight together, unlike one smtp-source process, which
  streams one body at a time once the server paces it); every message must be answered 250 and
  reach the sink. Peak tree PSS sampled as in load.py.
Both are bounded by a deadline."""
import smtplib, socket, threading, time

from .load import Sampler, payload
from .procs import hwm_kib, tree, tree_pss_kib

IDLE, BODIES, BODY_SIZE = 1000, 200, 2 << 20
SESSION_TIMEOUT = 10  # seconds for one session's banner and EHLO reply


def idle_sessions(gateway, count=IDLE, timeout=60):
    """(sessions greeted, tree PSS MiB with them open, RSS MiB of a one-process gateway, error or
    None). Stops at the first session
    the gateway does not greet (clamsmtpd and Postfix have session limits of their own)."""
    deadline, socks, greeted, error = time.monotonic() + timeout, [], 0, None
    try:
        for _ in range(count):  # one at a time: where a gateway stops greeting is its limit
            if time.monotonic() > deadline:
                raise OSError(f"the {timeout} s deadline passed")
            s = socket.create_connection(("127.0.0.1", gateway.port), timeout=SESSION_TIMEOUT)
            socks.append(s)
            if not _reply(s).startswith(b"220"):
                raise OSError("no 220 banner")
            s.sendall(b"EHLO idle.bench\r\n")
            if not _reply(s).startswith(b"250"):
                raise OSError("EHLO not answered 250")
            greeted += 1
    except OSError as e:
        error = f"session {greeted + 1} of {count} not greeted within {SESSION_TIMEOUT} s: {e or type(e).__name__}"
    time.sleep(0.5)  # let the gateway settle what the sessions allocated
    pss = tree_pss_kib(gateway.roots) / 1024
    rss = hwm_kib(gateway.roots[0], "VmRSS") if len(gateway.roots) == 1 and len(tree(gateway.roots[0])) == 1 else None
    for s in socks:
        s.close()
    return greeted, pss, rss and rss / 1024, error


def _reply(s):
    """One whole SMTP reply (its last line has a space after the code)."""
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def parallel_bodies(gateway, sink, count=BODIES, size=BODY_SIZE, timeout=300):
    """(answered 250, delivered to the sink, peak tree PSS MiB, seconds, error or None). A
    one-process gateway's exact peak (VmHWM, over its life) is read by the caller."""
    deadline, before = time.monotonic() + timeout, sink.count()
    messages = [payload(size, i) for i in range(count)]
    accepted, failures, start_line = [], [], threading.Barrier(count + 1)

    def client(message):
        try:
            start_line.wait(30)
            with smtplib.SMTP("127.0.0.1", gateway.port, timeout=max(1, deadline - time.monotonic())) as c:
                c.sendmail("bench@source.bench", ["sink@sink.bench"], message)
            accepted.append(1)
        except (smtplib.SMTPException, OSError, threading.BrokenBarrierError) as e:
            failures.append(str(e)[:160])

    sampler = Sampler(gateway.roots)
    sampler.start()
    threads = [threading.Thread(target=client, args=(m,), daemon=True) for m in messages]
    for t in threads:
        t.start()
    start = time.monotonic()
    start_line.wait(30)
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    secs = time.monotonic() - start
    delivered = sink.wait_for(before + len(accepted), max(3, deadline - time.monotonic()) if gateway.queues else 3) - before
    sampler.done.set()
    sampler.join()
    error = f"{len(failures)} failed, first: {failures[0]}" if failures else None
    if error is None and delivered != count:
        error = f"sink received {delivered} of {count}"
    return len(accepted), delivered, (sampler.peak_kib or 0) / 1024 or None, secs, error
