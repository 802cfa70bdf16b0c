"""The in-line floor of the report: HAProxy (Debian) in TCP mode between smtp-source and the sink.

It is not a mail gateway: it reads no command and changes no byte, it only copies each client
connection's bytes to a connection of its own to the sink and back (one sink connection per
client connection, as direct has). So it costs the machine what any in-line hop must: a second
TCP connection per message and every command and reply received and sent once more. Whatever
ratio it reaches against direct, no in-line gateway doing SMTP work can be expected to beat by
much on the same two cores; the targets table gives Sluice's ratios to it beside those to direct.

`haproxy -db -f FILE` (foreground, no daemon), one process, one thread (`nbthread 1`: the load
generator and the sink need the other core as they do behind every gateway), no logs."""
import os, subprocess

from . import debian
from ..gateway import Gateway
from ..procs import Unavailable, find_tool, free_port, stop, wait_port


class Haproxy(Gateway):
    name = "tcp hop"

    @classmethod
    def prepare(cls, root, workdir):
        debian.need(("haproxy", "haproxy"))
        cls.binary = find_tool("haproxy", "haproxy")

    @classmethod
    def version(cls):
        return f"HAProxy {debian.version('haproxy').split('-')[0]} (TCP mode)"

    def __init__(self, root, workdir, sink_port, clamd, conc):
        d = os.path.join(workdir, f"haproxy-{sink_port}")
        os.makedirs(d, exist_ok=True)
        self.port, conf, log = free_port(), os.path.join(d, "haproxy.cfg"), os.path.join(d, "log")
        with open(conf, "w") as f:
            # timeouts above the report's per-run deadline: HAProxy never ends a session itself
            f.write("global\n  maxconn 4000\n  nbthread 1\n"
                    "defaults\n  mode tcp\n  timeout connect 10s\n  timeout client 600s\n  timeout server 600s\n"
                    f"listen smtp\n  bind 127.0.0.1:{self.port}\n  server sink 127.0.0.1:{sink_port}\n")
        self.proc = subprocess.Popen([self.binary, "-db", "-f", conf], stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT)
        self.roots = (self.proc.pid,)
        try:
            wait_port(self.port, self.proc, "haproxy", log, secs=15)
        except Unavailable:
            self.close()
            raise

    def close(self):
        stop(self.proc)
