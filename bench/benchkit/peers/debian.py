"""Debian packages the peers run (postfix, rspamd, clamav-milter): installed with apt-get on first
use, their programs found, their versions read. Services never start on install here; every peer
starts its own instance in the foreground with its own config."""
import os, subprocess

from ..procs import Unavailable, find_tool


def need(*tools):
    """Each (package, program) installed (apt-get for the missing ones); raises Unavailable."""
    missing = sorted({pkg for pkg, tool in tools if not _installed(tool)})
    if missing:
        _apt_install(missing)
    for pkg, tool in tools:
        find_tool(tool, pkg)


def version(package):
    """The installed Debian version of `package` ("3.7.11-0+deb12u1"), or "?"."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or "?"


def _installed(tool):
    return any(os.access(f"{d}/{tool}", os.X_OK) for d in ("/usr/sbin", "/usr/bin"))


def _apt_install(pkgs):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # no debconf question, no generated /etc/postfix/main.cf that a system instance would use
    subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                   capture_output=True, timeout=60)
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + pkgs
    for attempt in range(2):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode == 0:
            return
        if attempt == 0:  # stale package lists: update once and retry
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    raise Unavailable(f"apt-get install {' '.join(pkgs)} failed:\n{(r.stdout + r.stderr)[-800:]}")
