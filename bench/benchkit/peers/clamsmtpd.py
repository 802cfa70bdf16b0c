"""clamsmtpd (Debian clamsmtp) as a gateway of the report: an in-line SMTP proxy scanning with the
run's clamd over its unix socket (it spools each message to a temp file first)."""
import os, subprocess

from ..gateway import Gateway
from ..procs import Unavailable, find_tool, free_port, stop, wait_port


class Clamsmtpd(Gateway):
    name, antivirus = "clamsmtpd", True

    @classmethod
    def prepare(cls, root, workdir):
        cls.binary = find_tool("clamsmtpd", "clamsmtp")

    @classmethod
    def version(cls):
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "clamsmtp"], capture_output=True, text=True)
        return f"clamsmtp {out.stdout.strip() or '?'} (Debian)"

    def __init__(self, root, workdir, sink_port, clamd, conc):
        d = os.path.join(workdir, f"clamsmtpd-{sink_port}")
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        self.port, conf, log = free_port(), os.path.join(d, "clamsmtpd.conf"), os.path.join(d, "log")
        with open(conf, "w") as f:  # runs as the invoking user (root here, like clamd)
            f.write(f"Listen: 127.0.0.1:{self.port}\nOutAddress: 127.0.0.1:{sink_port}\n"
                    f"ClamAddress: {clamd.socket}\nTempDirectory: {d}/tmp\nAction: drop\n"
                    "MaxConnections: 256\nTimeOut: 180\n")
        # -d 1: foreground. clamsmtpd 1.10 listens with a backlog of 5: at 10+ parallel connects it
        # loses SYNs and retries after 1 s, which is part of what it costs here.
        self.proc = subprocess.Popen([self.binary, "-f", conf, "-d", "1"], stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT)
        self.roots = (self.proc.pid,)
        try:
            wait_port(self.port, self.proc, "clamsmtpd", log, secs=15, banner=False)
        except Unavailable:
            self.close()
            raise

    def close(self):
        stop(self.proc)
