"""Sluice as a gateway of the report, in the chains it is compared with: none, three pass-through
wasm filters, the stock chain (header-rules, dkim-sign, eicar), the clamd stage, and a milter
stage on clamav-milter or on rspamd (each its own instance of the milter Postfix is measured
with: peers/clamav_milter.py, peers/rspamd.py).

Every run is a fresh sluice on port 0 (the real port is read from its log) relaying in-line to
the run's smtp-sink; the release binary is target/release/sluice, the filters
target/wasm32-wasip2/release/*.wasm (built by `make filters`)."""
import json, os, re, subprocess, time

from .gateway import Gateway
from .peers.clamav_milter import ClamavMilter
from .peers.rspamd import Rspamd
from .procs import Unavailable, stop

DOMAIN = "source.bench"  # smtp-source's sender domain (-f bench@source.bench): what dkim-sign signs for
RULES = 'header Subject /(?i)lottery|casino/ reject 550 5.7.1 No gambling mail\\nrcpt-to /^abuse@/ add-header X-Abuse yes'


def wasm(root, name):
    return json.dumps(os.path.join(root, "target/wasm32-wasip2/release", name))


class Sluice(Gateway):
    name = "sluice"
    chain = "none"

    @classmethod
    def prepare(cls, root, workdir):
        cls.binary = os.path.join(root, "target/release/sluice")
        if not os.access(cls.binary, os.X_OK):
            raise Unavailable(f"{cls.binary} missing: cargo build --release -p sluice")
        for needed in re.findall(r'path = "([^"]+)"', cls.stages(root, workdir, None)):
            if not os.path.exists(needed):
                raise Unavailable(f"{needed} missing: make filters")

    @classmethod
    def version(cls):
        out = subprocess.run([cls.binary, "--version"], capture_output=True, text=True).stdout.strip()
        return out or "sluice"

    @classmethod
    def stages(cls, root, workdir, clamd):
        return ""

    def chain_config(self, root, workdir, d, clamd):
        """The [[stage]] tables; a gateway with a milter starts it here (into self.peers)."""
        return self.stages(root, workdir, clamd)

    def __init__(self, root, workdir, sink_port, clamd, conc):
        d = os.path.join(workdir, f"sluice-{sink_port}")
        os.makedirs(d, exist_ok=True)
        self.proc, self.peers = None, []
        try:
            self._start(root, workdir, d, sink_port, clamd)
        except BaseException:
            self.close()
            raise

    def _start(self, root, workdir, d, sink_port, clamd):
        stages = self.chain_config(root, workdir, d, clamd)
        conf = os.path.join(d, "sluice.toml")
        with open(conf, "w") as f:
            # shutdown_timeout below stop()'s grace: even a stuck session ends in a clean exit
            f.write(f'[server]\nlisten = ["127.0.0.1:0"]\nhostname = "gw.bench"\nmax_sessions = 2000\n'
                    f'max_sessions_per_ip = 2000\nmax_message_size = "100MiB"\nshutdown_timeout = "5s"\n'
                    f'[relay]\naddress = "127.0.0.1:{sink_port}"\ntls = "none"\n'
                    + stages)
        self.log = os.path.join(d, "sluice.log")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", conf], stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT)
        end = time.monotonic() + 60  # wasm stages are compiled before sluice listens
        while self.proc.poll() is None and time.monotonic() < end:
            m = re.search(r"sluice::smtp: listening address=127\.0\.0\.1:(\d+)", open(self.log).read())
            if m:  # a milter's tree counts as the gateway's, as rspamd's does for Postfix
                self.port, self.roots = int(m[1]), (self.proc.pid,) + tuple(p.pid for p in self.peers)
                return
            time.sleep(0.05)
        raise Unavailable(f"sluice did not start:\n{open(self.log).read()[-1000:]}")

    def close(self):
        if self.proc is not None:
            stop(self.proc)
        for peer in self.peers:  # after sluice: it holds the milter connections
            peer.close()
        self.peers = []


class SluiceWasm3(Sluice):
    name, chain = "sluice 3 wasm", "3 pass-through wasm filters"

    @classmethod
    def stages(cls, root, workdir, clamd):
        return "".join(f'[[stage]]\nname = "pass{i}"\nkind = "wasm"\npath = {wasm(root, "faults.wasm")}\n'
                       f'[stage.config]\nmode = "pass"\n' for i in (1, 2, 3))


class SluiceStock(Sluice):
    name, chain, antivirus = "sluice stock", "header-rules, dkim-sign (RSA-2048), eicar", True

    @classmethod
    def prepare(cls, root, workdir):
        key = os.path.join(workdir, "sluice-dkim.pem")
        if not os.path.exists(key):
            binary = os.path.join(root, "target/release/sluice")
            subprocess.run([binary, "dkim", "keygen", "--domain", DOMAIN, "--selector", "bench",
                            "--algorithm", "rsa", "--out", key], check=True, stdout=subprocess.DEVNULL)
        super().prepare(root, workdir)

    @classmethod
    def stages(cls, root, workdir, clamd):
        key = json.dumps(os.path.join(workdir, "sluice-dkim.pem"))
        return (f'[[stage]]\nname = "rules"\nkind = "wasm"\npath = {wasm(root, "header_rules.wasm")}\n'
                f'[stage.config]\nrules = "{RULES}"\n'
                f'[[stage]]\nname = "dkim"\nkind = "wasm"\npath = {wasm(root, "dkim_sign.wasm")}\n'
                f'[stage.config]\ndomain = "{DOMAIN}"\nselector = "bench"\nsign_by = "envelope-from"\n'
                f'[stage.keys]\nkey = {key}\n'
                f'[[stage]]\nname = "eicar"\nkind = "wasm"\npath = {wasm(root, "eicar.wasm")}\n')


class SluiceClamd(Sluice):
    name, chain, antivirus = "sluice clamd", "the clamd stage", True

    @classmethod
    def stages(cls, root, workdir, clamd):
        socket = clamd.socket if clamd else "/dev/null"
        return f'[[stage]]\nname = "antivirus"\nkind = "clamd"\naddress = "unix:{socket}"\nmax_size = "64MiB"\n'


class SluiceMilter(Sluice):
    """A milter stage on its own instance of `milter` (a MilterDaemon class), over a unix socket
    as Postfix's link is. timeout 120s: the milters' own limits (rspamd's proxy timeout 120 s,
    clamav-milter's ReadTimeout 120 s) end a stuck scan first, as behind Postfix, whose
    milter_content_timeout is 300 s."""
    antivirus, milter, milter_dir = True, None, None

    @classmethod
    def prepare(cls, root, workdir):
        super().prepare(root, workdir)
        cls.milter.prepare()

    @classmethod
    def version(cls):
        return f"{super().version()}, {cls.milter.version()}"

    def chain_config(self, root, workdir, d, clamd):
        self.peers.append(self.milter(root, f"{d}/{self.milter_dir}", f"{d}/{self.milter_dir}/milter.sock", clamd))
        return (f'[[stage]]\nname = "milter"\nkind = "milter"\naddress = "unix:{self.peers[-1].socket}"\n'
                'timeout = "120s"\n')


class SluiceClamavMilter(SluiceMilter):
    name, milter, milter_dir = "sluice+clamav-milter", ClamavMilter, "clamav-milter"
    chain = "milter stage: clamav-milter (OnInfected Reject, AddHeader No)"


class SluiceRspamd(SluiceMilter):
    name, milter, milter_dir = "sluice+rspamd", Rspamd, "rspamd"
    chain = "milter stage: rspamd (antivirus on the run's clamd, dkim_signing RSA-2048)"
