"""clamav-milter (Debian clamav-milter) as a milter of the report: one instance, the same config
behind Postfix and Sluice, scanning with the run's clamd over its unix socket.

`clamav-milter -c FILE` with `Foreground yes`, as root (no `User`: dropping privileges would lose
the run's workdir, mode 0700). It answers every milter event and streams the message to clamd
(INSTREAM) as it arrives; at the end it accepts, or rejects EICAR with its own `RejectMsg`
(550 5.7.1 Virus found: NAME); with clamd unreachable it defers (`OnFail Defer`). `AddHeader No`:
clean mail passes unchanged, so behind both gateways the sink gets the same bytes (with
`AddHeader Replace` it would add X-Virus-Scanned and X-Virus-Status to every message). It needs
~5 s to exit on SIGTERM, so it is SIGKILLed (nothing of it outlives the run: no spool)."""
import os, subprocess

from . import debian
from .milter import MilterDaemon
from ..procs import find_tool

# Messages above MaxFileSize pass unscanned: 64M, like the clamd stage's max_size and the run's
# clamd's StreamMaxLength, so every message of the report (20 MiB at most) is scanned.
MAX_FILE_SIZE = "64M"


class ClamavMilter(MilterDaemon):
    """clamav-milter with its config in `d`, listening on the unix socket `socket`."""
    what = "clamav-milter"
    term_grace = None

    @classmethod
    def prepare(cls):
        debian.need(("clamav-milter", "clamav-milter"))

    @classmethod
    def version(cls):
        return f"clamav-milter {debian.version('clamav-milter').split('+')[0]}"

    def __init__(self, root, d, socket_path, clamd):
        self.dir, self.socket = d, socket_path
        os.makedirs(d, exist_ok=True)
        conf = f"{d}/clamav-milter.conf"
        with open(conf, "w") as f:
            # MilterSocketMode 666: Postfix's smtpd (user postfix) connects to it too.
            # LogInfected Basic: one line per rejected message, none per clean one.
            f.write(f"MilterSocket unix:{socket_path}\nMilterSocketMode 666\nFixStaleSocket yes\n"
                    f"Foreground yes\nPidFile {d}/clamav-milter.pid\nTemporaryDirectory {d}\n"
                    f"ClamdSocket unix:{clamd.socket}\nReadTimeout 120\nMaxFileSize {MAX_FILE_SIZE}\n"
                    "OnClean Accept\nOnInfected Reject\nOnFail Defer\nAddHeader No\n"
                    "RejectMsg Virus found: %v\n"
                    f"LogFile {d}/clamav-milter.log\nLogTime yes\nLogInfected Basic\nLogClean Off\n")
        try:
            self._spawn([find_tool("clamav-milter", "clamav-milter"), "-c", conf], f"{d}/stderr.log")
            self._wait(secs=30, logs=(f"{d}/clamav-milter.log",))
        except BaseException:
            self.close()
            raise
