"""Before a gateway is measured: a clean message reaches the sink, and EICAR does not (antivirus:
refused, or accepted and dropped as clamsmtpd's `Action: drop` does).

    python3 bench/benchkit/smoke.py peers.haraka:Haraka      # one gateway by module:class, by hand
"""
import importlib, os, smtplib, sys, tempfile

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchkit"

from benchkit.clamd import EICAR, Clamd  # noqa: E402
from benchkit.sink import Sink  # noqa: E402

CLEAN = b"From: bench@source.bench\r\nTo: sink@sink.bench\r\nSubject: clean\r\n\r\nhello\r\n"
VIRUS = b"From: bench@source.bench\r\nTo: sink@sink.bench\r\nSubject: eicar\r\n\r\n" + EICAR + b"\r\n"


def send(port, body):
    """'accepted' or 'refused (reply)'."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
            c.sendmail("bench@source.bench", ["sink@sink.bench"], body)
        return "accepted"
    except (smtplib.SMTPException, OSError) as e:
        return f"refused ({e})"


def check(cls, root, workdir, clamd):
    """None when the gateway relays clean mail and (if antivirus) stops EICAR, else what went wrong."""
    with _Closing(Sink(workdir, 1)) as sink:
        with cls(root, workdir, sink.port, clamd, 1) as gw:
            clean = send(gw.port, CLEAN)
            virus = send(gw.port, VIRUS) if cls.antivirus else None
            got = sink.wait_for(1, 60 if cls.queues else 5)
            if cls.antivirus:
                got = sink.wait_for(2, 2)  # a wrongly delivered EICAR would show as a second message
    problems = []
    if clean != "accepted":
        problems.append(f"clean message {clean}")
    if got != 1:
        problems.append(f"the sink got {got} messages (want 1: the clean one)")
    return "; ".join(problems) or None, {"clean": clean, "eicar": virus}


class _Closing:
    def __init__(self, thing):
        self.thing = thing

    def __enter__(self):
        return self.thing

    def __exit__(self, *exc):
        self.thing.close()


def main():
    module, _, name = sys.argv[1].partition(":")
    cls = getattr(importlib.import_module(f"benchkit.{module}"), name)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory(prefix="smoke-") as workdir:
        cls.prepare(root, workdir)
        clamd = Clamd(workdir)
        try:
            problem, replies = check(cls, root, workdir, clamd)
        finally:
            clamd.close()
    print(f"{cls.name}: clean {replies['clean']}, eicar {replies['eicar']}: {problem or 'ok'}")
    sys.exit(1 if problem else 0)


if __name__ == "__main__":
    main()
