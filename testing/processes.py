"""The one process stack of the system tests, the benchmarks and the crash harness.

:class:`Processes` starts named child processes, each writing to its own log file, and ends every one of
them however the caller ends (SIGTERM, then SIGKILL after a grace period). :class:`ProductStack` is the
product as separate processes on loopback (``python -m launch.serve api`` and workers, or stand-ins such
as the crash harness's), configured by ``PROGRESSION_*`` variables on free ports. :func:`temporal_dev_server`
is a Temporal dev server as one of those processes (on a database file, so it can be restarted).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from engine.settings import PROJECT_ROOT
from launch.binaries import temporal_cli_path
from testing.polling import eventually

PYTHON = sys.executable


def free_port() -> int:
    """A free TCP port on loopback (servers in tests listen on loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(*drop_prefixes: str) -> dict[str, str]:
    """This process's environment without any ``PROGRESSION_*`` setting (nor the other prefixes given)."""
    prefixes = ("PROGRESSION_", *drop_prefixes)
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


class ProcessDied(AssertionError):
    """A process the caller depends on exited; the message carries the end of its log."""


class Processes:
    """Named child processes with one log file per start (``<name>.log``, then ``<name>-2.log`` ...)."""

    def __init__(self, logs: Path, *, new_session: bool = False) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        # A new session keeps a terminal's Ctrl-C (sent to the foreground group) away from the children.
        self.new_session = new_session
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self._starts = Counter[str]()
        self._log_of: dict[str, Path] = {}

    def start(self, name: str, args: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Start ``args`` as ``name`` (replacing a previous, exited process of that name)."""
        self._starts[name] += 1
        n = self._starts[name]
        path = self.logs / (f"{name}.log" if n == 1 else f"{name}-{n}.log")
        with open(path, "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(args, env=dict(env), stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                    start_new_session=self.new_session)
        self.running[name] = proc
        self._log_of[name] = path
        return proc

    def __getitem__(self, name: str) -> subprocess.Popen[bytes]:
        return self.running[name]

    def log_path(self, name: str) -> Path:
        """The log file of the latest process started as ``name``."""
        return self._log_of[name]

    def log(self, name: str) -> str:
        """The log of the latest process started as ``name``."""
        return self._log_of[name].read_text(errors="replace")

    def died(self, name: str) -> ProcessDied:
        proc = self.running[name]
        return ProcessDied(f"{name} (pid {proc.pid}) exited with {proc.returncode}; its log ends:\n"
                           f"{self.log(name)[-3000:]}")

    def assert_alive(self, *names: str) -> None:
        """Raise :class:`ProcessDied` if any of ``names`` (default: every running process) has exited."""
        for name in names or tuple(self.running):
            if self.running[name].poll() is not None:
                raise self.died(name)

    def kill(self, name: str) -> int:
        """SIGKILL, as a crashed host or an OOM kill: no graceful shutdown. Returns the exit code."""
        proc = self.running.pop(name)
        proc.kill()
        return proc.wait(timeout=60)

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM, grace: float = 20.0) -> tuple[int, bool]:
        """Send ``sig``, escalate to SIGKILL after ``grace`` seconds; (exit code, whether it was escalated)."""
        proc = self.running.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=grace), False
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(), True

    def stop_all(self, grace: float = 20.0) -> None:
        """SIGTERM to every process at once, then wait; whatever outlives ``grace`` is killed."""
        procs = list(self.running.values())
        self.running.clear()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def processes(logs: Path, *, new_session: bool = False) -> Iterator[Processes]:
    procs = Processes(logs, new_session=new_session)
    try:
        yield procs
    finally:
        procs.stop_all()


# ---- Temporal as a process ------------------------------------------------------------------------


@dataclass
class TemporalPorts:
    frontend: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.frontend}"


def temporal_dev_server_args(ports: TemporalPorts, db_file: Path, search_attributes: Mapping[str, str]
                             ) -> list[str]:
    """Like launch.run's embedded server, on our own ports, headless, on ``db_file`` (restartable)."""
    args = [temporal_cli_path(), "server", "start-dev", "--ip", "127.0.0.1",
            "--port", str(ports.frontend), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
            "--headless", "--db-filename", str(db_file), "--sqlite-pragma", "journal_mode=wal", "--log-level", "error"]
    for name, kind in search_attributes.items():
        args += ["--search-attribute", f"{name}={kind}"]
    return args


# ---- the product as processes ---------------------------------------------------------------------


@dataclass
class ProductStack:
    """The API and workers as separate processes against one database and one Temporal server.

    ``settings`` are the ``PROGRESSION_*`` variables beyond those the stack sets itself (database,
    Temporal address, task queue, data directory, API host and port). ``api_command`` and
    ``worker_command`` are the modules run with ``python -m`` (the product's by default).
    """

    processes: Processes
    database_url: str
    temporal_address: str
    data_dir: Path
    task_queue: str
    settings: Mapping[str, str] = field(default_factory=dict)
    api_command: tuple[str, ...] = ("launch.serve", "api")
    worker_command: tuple[str, ...] = ("launch.serve", "worker")
    api_port: int = field(default_factory=free_port)
    # Variables of this process left out of the children's environment (beside PROGRESSION_*).
    drop_prefixes: tuple[str, ...] = ()
    # More variables, computed at each start (e.g. a harness's knobs).
    extra_env: Callable[[], Mapping[str, str]] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        return {**base_env(*self.drop_prefixes), **(self.extra_env() if self.extra_env else {}),
                "PROGRESSION_DATABASE_URL": self.database_url, "PROGRESSION_TEMPORAL_ADDRESS": self.temporal_address,
                "PROGRESSION_TASK_QUEUE": self.task_queue, "PROGRESSION_DATA_DIR": str(self.data_dir),
                "PROGRESSION_API_HOST": "127.0.0.1", "PROGRESSION_API_PORT": str(self.api_port), **self.settings}

    def run_module(self, name: str, command: tuple[str, ...]) -> subprocess.Popen[bytes]:
        return self.processes.start(name, [PYTHON, "-m", *command], self.env())

    def start_api(self, name: str = "api") -> subprocess.Popen[bytes]:
        return self.run_module(name, self.api_command)

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        return self.run_module(name, self.worker_command)

    async def wait_ready(self, *depends_on: str, timeout: float = 120.0) -> None:
        """Until GET /readyz answers 200; fails at once (with its log) if one of ``depends_on`` exits."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as http:

            async def ready() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/readyz")).status_code == 200
                return False

            await eventually(ready, f"the API at {self.base_url} ready", timeout=timeout,
                             alive=lambda: self.processes.assert_alive(*depends_on), max_interval=0.3)
