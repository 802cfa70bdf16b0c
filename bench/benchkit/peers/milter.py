"""A milter daemon of the report (rspamd, clamav-milter): one process leading its own session,
listening on a unix socket, ready once that socket answers a milter option negotiation, stopped
by its process group. The classes in rspamd.py and clamav_milter.py write the configs.

Each gateway that uses a milter starts its own instance of it, and the Sluice and Postfix
gateways start theirs from the same code, binary and config, on the run's one clamd: a
gateway's process trees (`roots`) then hold exactly its milter, so the milter's CPU and memory
count in that gateway's figures and in no other's, as rspamd always did for Postfix + rspamd.
A milter shared by two gateways (like the run's clamd) would need its CPU split per run and
would carry one gateway's connections and caches into the other's measurement."""
import os, signal, socket, subprocess, time

from ..procs import Unavailable, stop

# Postfix's offer (milter protocol 6, every action, every protocol step), as Postfix 3.7 sends it
OPTNEG = b"O" + (6).to_bytes(4, "big") + (0x1FF).to_bytes(4, "big") + (0x1FFFFF).to_bytes(4, "big")


def milter_answers(path):
    """True when a milter option negotiation on the unix socket `path` gets an 'O' reply."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(len(OPTNEG).to_bytes(4, "big") + OPTNEG)
            return s.recv(5)[4:5] == b"O"
    except OSError:
        return False


class MilterDaemon:
    """One started milter: `socket` (where it listens), `pid` (root of its tree), `close()`."""
    what = "milter"
    term_grace = 10  # seconds between SIGTERM and SIGKILL; None: SIGKILL at once

    proc = None

    def _spawn(self, cmd, log):
        self.log = log
        with open(log, "w") as out:  # own session: close() reaches every worker it forks
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.pid = self.proc.pid

    def _wait(self, also=lambda: True, secs=60, logs=()):
        """Until the socket answers and `also()` holds; else Unavailable with the logs' tails."""
        end = time.monotonic() + secs
        while self.proc.poll() is None and time.monotonic() < end:
            if milter_answers(self.socket) and also():
                return
            time.sleep(0.1)
        tail = "".join(open(p, errors="replace").read()[-1200:] for p in (self.log,) + tuple(logs)
                       if os.path.exists(p))
        raise Unavailable(f"{self.what} did not answer on {self.socket} within {secs} s "
                          f"(exit {self.proc.poll()})\n{tail}")

    def close(self):
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.term_grace:
            stop(proc, grace=self.term_grace, group=True)
        try:  # a worker that outlived its leader is still in the group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
