"""The protocol every gateway of the report implements (sluice's variants, clamsmtpd, the peers).

    class SomeGateway(Gateway):
        name = "haraka"                 # its row in bench/RESULTS.md
        antivirus = True                # scans with the run's clamd: EICAR must be refused
        queues = False                  # True: answers 250 before the next hop has the message

        @classmethod
        def prepare(cls, root, workdir): ...   # install/check once per run; raise Unavailable(why)

        def __init__(self, root, workdir, sink_port, clamd, conc): ...
            # start, relaying every message to 127.0.0.1:sink_port, scanning with clamd
            # (clamd.socket: unix path, clamd.port: TCP port); wait until it answers 220; set
            # self.port (where it listens for SMTP) and self.roots (root pids of its process trees)

        def close(self): ...            # stop everything it started, by PID, bounded

`root` is the repository; `workdir` a temp dir of the run, removed afterwards. Whatever a peer
installs goes under root/target/bench-peers (ignored), never into the system's Python or npm."""
from .procs import Unavailable  # noqa: F401  (re-exported for the peers)


class Gateway:
    name = "?"
    antivirus = False
    queues = False
    roots = ()
    port = None

    @classmethod
    def prepare(cls, root, workdir):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
