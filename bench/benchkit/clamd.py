"""The one clamd of a benchmark run: an EICAR-only database, a unix socket and a TCP port.

Every antivirus gateway of the run (sluice's clamd stage, clamsmtpd, Haraka's clamd plugin,
rspamd's antivirus module) scans with this same clamd and database."""
import os, socket, subprocess, time

from .procs import Unavailable, find_tool, free_port, stop

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class Clamd:
    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "clamd")
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "test.ndb"), "w") as f:
            f.write(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
        self.socket, self.port = f"{self.dir}/clamd.sock", free_port()
        conf = os.path.join(self.dir, "clamd.conf")
        with open(conf, "w") as f:
            f.write(f"Foreground yes\nDatabaseDirectory {self.dir}\nLocalSocket {self.socket}\n"
                    f"TCPSocket {self.port}\nTCPAddr 127.0.0.1\nScanMail yes\nStreamMaxLength 64M\n"
                    "Bytecode no\nUser root\nMaxThreads 50\nMaxQueue 500\n")
        self.log = os.path.join(self.dir, "clamd.log")
        self.proc = subprocess.Popen([find_tool("clamd", "clamav-daemon"), "-c", conf],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        end = time.monotonic() + 120
        while self.proc.poll() is None and time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(b"zPING\0")
                    if s.recv(16).startswith(b"PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.close()
        raise Unavailable(f"clamd did not answer PONG:\n{open(self.log).read()[-1000:]}")

    def close(self):
        stop(self.proc)
