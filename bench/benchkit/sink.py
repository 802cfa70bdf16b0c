"""The next hop of every benchmark: one Postfix smtp-sink, discarding mail, counting it (-c)."""
import os, re, subprocess, time

from .procs import find_tool, free_port, stop, wait_port


class Sink:
    def __init__(self, workdir, conc):
        self.port = free_port()
        self.path = os.path.join(workdir, f"sink-{self.port}.out")
        self.out = open(self.path, "w+")
        # -m: accept all sessions at once; backlog 4096: never the reason a connection waits
        cmd = [find_tool("smtp-sink", "postfix"), "-c", "-m", str(max(256, 2 * conc)), "-t", "300"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
        self.proc = subprocess.Popen(cmd + [f"127.0.0.1:{self.port}", "4096"], stdout=self.out, stderr=self.out)
        try:
            wait_port(self.port, self.proc, "smtp-sink", self.path, secs=10)
        except BaseException:
            self.close()
            raise

    def count(self):
        # -c prints "sess=N quit=N mesg=N\r" per event; the last mesg= is the total so far (the
        # file only grows: read its tail)
        self.out.seek(0, os.SEEK_END)
        self.out.seek(max(0, self.out.tell() - 256))
        counts = re.findall(r"mesg=(\d+)", self.out.read())
        return int(counts[-1]) if counts else 0

    def wait_for(self, expect, secs):
        """The count once it reaches `expect`, or when `secs` have passed."""
        end = time.monotonic() + secs
        while True:
            n = self.count()
            if n >= expect or time.monotonic() > end:
                return n
            time.sleep(0.02)

    def close(self):
        stop(self.proc)
        self.out.close()
