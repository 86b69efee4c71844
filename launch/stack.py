"""One data directory, one stack: what ``make run`` (launch.run) claims before it starts anything.

- An OS lock (``flock``) on ``<data dir>/stack.lock``, held for the life of the orchestrator. The
  kernel drops it when the process ends, however it ends, so a crash never leaves a stale lock. The
  holder writes its pid, ports and data directory into the file, so a second start on the same data
  directory is refused at once with a message that names the running stack.
- The ports: if anything already answers on the embedded Temporal port, its UI port or the API port,
  the start is refused. The stack never attaches to a server it did not start; the API's listening
  socket is bound here and handed to uvicorn, and the embedded Temporal server counts as up only once
  the process this stack started listens on its port.
- Children die with the orchestrator: on Linux the embedded Temporal server is started with a
  parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), so even ``kill -9`` of the orchestrator
  leaves no server behind. The worker and the API run inside the orchestrator's process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.settings import Settings

LOCK_FILE = "stack.lock"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StackRefused(RuntimeError):
    """The stack does not start: another one holds the data directory, or a port is taken."""


# --- the data directory lock ------------------------------------------------------------------------


class DataDirLock:
    """``flock`` on ``<data dir>/stack.lock``; released by the kernel when the process ends."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def describe(self, info: dict[str, Any]) -> None:
        """Write who holds the lock (read by a refused second start)."""
        raw = (json.dumps(info, indent=2) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, raw, 0)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1


def _read_holder(fd: int, wait: float = 2.0) -> dict[str, Any] | None:
    """What the holder wrote; it writes right after locking, so wait a moment for a holder still starting."""
    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError, ValueError):
            raw = os.pread(fd, 65536, 0)
            if raw.strip():
                info = json.loads(raw)
                if isinstance(info, dict):
                    return info
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def acquire_data_dir(settings: Settings) -> DataDirLock:
    """Lock the data directory for this stack, or refuse naming the stack that holds it."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = _read_holder(fd)
        os.close(fd)
        raise StackRefused(_held_message(data_dir, path, holder)) from None
    lock = DataDirLock(fd, path)
    lock.describe(stack_description(settings))
    return lock


def stack_description(settings: Settings) -> dict[str, Any]:
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "data_dir": str(settings.data_dir.resolve()),
        "api": f"http://{settings.api_host}:{settings.api_port}",
        "api_port": settings.api_port,
    }
    if settings.temporal_address is None:
        info |= {"temporal": f"127.0.0.1:{settings.temporal_port}", "temporal_port": settings.temporal_port,
                 "temporal_ui_port": settings.temporal_ui_port}
    else:
        info["temporal"] = settings.temporal_address
    info["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return info


def _held_message(data_dir: Path, path: Path, holder: dict[str, Any] | None) -> str:
    if holder is None:
        return (f"another Progression stack is starting on the data directory {data_dir} (it holds {path}; "
                "its pid and ports are not written yet). Stop it first, or set PROGRESSION_DATA_DIR to another "
                "directory.")
    parts = [f"pid {holder.get('pid')}", f"API {holder.get('api')}"]
    if "temporal_port" in holder:
        parts.append(f"embedded Temporal on port {holder['temporal_port']} "
                     f"(UI on port {holder.get('temporal_ui_port')})")
    elif holder.get("temporal"):
        parts.append(f"Temporal at {holder['temporal']}")
    if holder.get("started_at"):
        parts.append(f"started {holder['started_at']}")
    return (f"another Progression stack already runs on the data directory {holder.get('data_dir', data_dir)}: "
            f"{', '.join(parts)}. Stop it (Ctrl-C in its terminal, or `kill {holder.get('pid')}`), or set "
            "PROGRESSION_DATA_DIR to another directory.")


# --- ports ------------------------------------------------------------------------------------------


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((_probe_host(host), port), timeout=1.0):
            return True
    except OSError:
        return False


def _taken(what: str, host: str, port: int, setting: str, detail: str) -> StackRefused:
    return StackRefused(
        f"the {what} port {host}:{port} is already taken ({detail}). This stack never attaches to a server it "
        f"did not start: stop whatever runs there (another `make run`?), or choose another port with {setting}.")


def bind_listener(host: str, port: int) -> socket.socket:
    """A bound socket on host:port with the options servers use (SO_REUSEADDR, as uvicorn and Go set)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def claim_port(what: str, host: str, port: int, setting: str) -> socket.socket:
    """Refuse if anything answers on or holds host:port; else return a socket bound there (the caller's)."""
    if _answers(host, port):
        raise _taken(what, host, port, setting, "something answers there")
    try:
        sock = bind_listener(host, port)
    except OSError as exc:
        raise _taken(what, host, port, setting, exc.strerror or str(exc)) from None
    try:
        sock.listen(128)  # listening, the port is ours: nobody else can bind it, even with SO_REUSEADDR
    except OSError as exc:
        sock.close()
        raise _taken(what, host, port, setting, exc.strerror or str(exc)) from None
    return sock


def check_port_free(what: str, host: str, port: int, setting: str) -> None:
    """For a port a child process binds: refuse if it is taken now (the child binds it right after)."""
    claim_port(what, host, port, setting).close()


def claim_ports(settings: Settings) -> socket.socket:
    """Check every port this stack serves; return the API's listening socket (handed to uvicorn)."""
    if settings.temporal_address is None:
        check_port_free("embedded Temporal", "127.0.0.1", settings.temporal_port, "PROGRESSION_TEMPORAL_PORT")
        check_port_free("Temporal UI", "127.0.0.1", settings.temporal_ui_port, "PROGRESSION_TEMPORAL_UI_PORT")
    return claim_port("API", settings.api_host, settings.api_port, "PROGRESSION_API_PORT")


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on ``port`` (Linux /proc); None where /proc/net is not available."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if found_table else None


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a socket listening on ``port``; None when that cannot be told."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False  # the process is gone
    targets = {f"socket:[{inode}]" for inode in inodes}
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) in targets:
                return True
    return False


# --- children ---------------------------------------------------------------------------------------


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process dies (Linux).

    PR_SET_PDEATHSIG fires when the thread that forked the child ends: start children from the
    main thread (the event loop's), which lives as long as the process.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: nothing to import between fork and exec
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody will signal us
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
