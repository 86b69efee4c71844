"""A private PostgreSQL cluster for the crash harness, which it may crash at will.

``initdb`` in a temporary directory, started with ``pg_ctl`` on a free loopback port, crashed with
SIGKILL on the postmaster (then on any backend still alive, as when the machine's kernel kills the
server) and started again on the same data directory, so PostgreSQL runs its crash recovery. The
machine's own server (port 5432) is never touched. Binaries are found under
``/usr/lib/postgresql/*/bin`` (``PROGRESSION_PG_BIN`` overrides). When the harness runs as root the
cluster runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def pg_bin_dir() -> Path:
    if override := os.environ.get("PROGRESSION_PG_BIN"):
        return Path(override)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class PgCluster:
    def __init__(self, port: int, *, user: str = "postgres") -> None:
        self.port = port
        self.user = user
        self.bin = pg_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="crash-harness-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.crashes = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: str | None = None
        if os.geteuid() == 0:
            self._as = "postgres"
            pw = pwd.getpwnam(self._as)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run([str(self.bin / args[0]), *args[1:]], check=True, capture_output=True, timeout=timeout,
                       user=self._as, cwd=self.root)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--locale=C")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n")

    def start(self, timeout: float = 120) -> None:
        """Start the postmaster as this process's child (so its exit is reaped) and wait until it accepts
        connections (after crash recovery)."""
        import psycopg

        log = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data)], stdout=log,
                                         stderr=subprocess.STDOUT, user=self._as, cwd=self.root,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}; see {self.log}")
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections; see {self.log}") from None
                time.sleep(0.1)

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    @property
    def postmaster_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def crash(self) -> dict[str, int]:
        """SIGKILL the postmaster, then every backend still alive; returns what was killed."""
        pid = self.postmaster_pid
        backends = _children(pid)
        os.kill(pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)
        killed = 0
        for child in backends:
            if _alive(child):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
                    killed += 1
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in backends) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.crashes += 1
        return {"postmaster": pid, "backends": len(backends), "backends_sigkilled": killed}

    def stop(self) -> None:
        """A fast shutdown with ``pg_ctl`` (an immediate one if that takes too long)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop", timeout=40)
        except Exception:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(10)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
