"""One data directory, one stack (launch.stack, launch.run): attacks of a user who starts things twice.

Real processes: ``python -m launch.run`` (what ``make run`` runs) on free ports and a temporary data
directory, the ``progression`` CLI and ``python -m launch.serve worker``. Every wait is bounded and
every process a test started (and every child of it) is killed at teardown, whatever the outcome.
All of them start real processes, so all are ``slow`` (``make test`` runs them, ``make test-fast`` does not).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from temporalio.testing import WorkflowEnvironment

from engine.database import upgrade
from engine.settings import PROJECT_ROOT
from testing.http import QuietHandler, http_server
from testing.polling import NeverHappened, eventually_sync
from testing.processes import Processes, base_env, free_port

pytestmark = pytest.mark.slow

PYTHON = sys.executable
CLI = str(Path(PYTHON).parent / "progression")
UP_TIMEOUT = 240.0  # a whole stack (Temporal, migrations, seed) on a loaded 2-core machine
REFUSE_TIMEOUT = 90.0  # a refusal comes before anything starts; generous for a loaded machine


# --- processes, by pid and start time (a recycled pid is never taken for ours) ------------------------


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a live (not zombie) process; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in children.read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@dataclass
class Stack:
    data_dir: Path
    temporal_port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    output: Path | None = None

    def env(self) -> dict[str, str]:
        return {**base_env(), "PROGRESSION_DATA_DIR": str(self.data_dir),
                "PROGRESSION_TEMPORAL_PORT": str(self.temporal_port),
                "PROGRESSION_TEMPORAL_UI_PORT": str(self.ui_port), "PROGRESSION_API_PORT": str(self.api_port)}

    @property
    def ports(self) -> list[int]:
        return [self.temporal_port, self.ui_port, self.api_port]

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output and self.output.exists() else ""


class Orchestrators:
    """Every orchestrator a test starts (``testing.processes``, each in a new session as a terminal's
    ``make run``), and every child of one seen; all killed at teardown, the children by pid."""
    def __init__(self, logs: Path) -> None:
        self.procs = Processes(logs, new_session=True)
        self.seen: dict[int, str] = {}  # pid -> start time

    def start(self, stack: Stack, name: str) -> Stack:
        stack.proc = self.procs.start(name, [PYTHON, "-m", "launch.run"], stack.env())
        stack.output = self.procs.log_path(name)
        self.track(stack.proc.pid)
        return stack

    def track(self, pid: int) -> set[int]:
        pids = {pid} | _children(pid)
        for p in pids:
            started = _start_time(p)
            if started is not None:
                self.seen.setdefault(p, started)
        return pids

    def alive(self, pids: set[int]) -> set[int]:
        return {p for p in pids if p in self.seen and _start_time(p) == self.seen[p]}

    def wait_running(self, stack: Stack) -> None:
        assert stack.proc is not None
        proc = stack.proc

        def running() -> bool:
            self.track(proc.pid)
            return "Progression is running." in stack.text()

        def alive() -> None:
            assert proc.poll() is None, f"the stack exited with {proc.returncode}:\n{stack.text()[-3000:]}"

        eventually_sync(running, "the stack running", timeout=UP_TIMEOUT, alive=alive, max_interval=0.5,
                        describe=lambda _: stack.text()[-3000:])
        self.track(proc.pid)

    def cleanup(self) -> None:
        for proc in self.procs.running.values():
            if proc.poll() is None:
                self.track(proc.pid)
        self.procs.stop_all()
        for pid in self.alive(set(self.seen)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Orchestrators]:
    procs = Orchestrators(tmp_path)
    try:
        yield procs
    finally:
        procs.cleanup()


def run_refused(processes: Orchestrators, stack: Stack, name: str) -> str:
    """Start a stack that must be refused: it exits non-zero before starting anything; returns its output."""
    processes.start(stack, name)
    assert stack.proc is not None
    try:
        stack.proc.wait(timeout=REFUSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the stack was not refused; it still runs:\n{stack.text()[-3000:]}") from None
    text = stack.text()
    assert stack.proc.returncode != 0, text
    assert "refusing to start" in text, text
    # Refused before anything started: no embedded Temporal server ran on this data directory.
    assert not (stack.data_dir / "temporal.log").exists(), text
    return text


# --- a second start on the same data directory ------------------------------------------------------


def test_second_start_on_the_same_data_directory_is_refused_naming_the_running_stack(
        processes: Orchestrators, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = processes.start(Stack(data_dir), "first")
    processes.wait_running(first)
    assert first.proc is not None

    # Same data directory, other ports: nothing else would stop it from sharing temporal.db and the database.
    second = Stack(data_dir)
    processes.start(second, "second")
    assert second.proc is not None
    try:
        second.proc.wait(timeout=REFUSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a second stack started on {data_dir}:\n{second.text()[-3000:]}") from None
    message = second.text()
    assert second.proc.returncode != 0, message
    assert f"pid {first.proc.pid}" in message, message
    for port in first.ports:
        assert str(port) in message, (port, message)
    assert str(data_dir.resolve()) in message, message
    assert not any(_answers(port) for port in second.ports), "the refused stack started a server"
    # The first stack is untouched and still serves.
    assert first.proc.poll() is None
    assert all(_answers(port) for port in (first.temporal_port, first.api_port))


# --- kill -9 of the orchestrator ---------------------------------------------------------------------


def test_kill_9_of_the_orchestrator_leaves_nothing_behind(processes: Orchestrators, tmp_path: Path) -> None:
    stack = processes.start(Stack(tmp_path / "data"), "stack")
    processes.wait_running(stack)
    assert stack.proc is not None
    pids = processes.track(stack.proc.pid)
    assert len(pids) >= 2, "expected the embedded Temporal server as a child of the orchestrator"
    assert all(_answers(port) for port in stack.ports)

    os.kill(stack.proc.pid, signal.SIGKILL)  # only the orchestrator, not its process group
    stack.proc.wait(timeout=30)

    def all_gone() -> bool:
        return not processes.alive(pids) and not any(_answers(p) for p in stack.ports)

    with contextlib.suppress(NeverHappened):  # the assertions below name what survived
        eventually_sync(all_gone, "every child and port of the killed stack gone", max_interval=0.2)
    survivors = processes.alive(pids)
    assert not survivors, [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for p in survivors]
    assert not [p for p in stack.ports if _answers(p)], "a port of the killed stack still answers"

    # No stale lock: a new stack may take the data directory at once (its lock is free).

    fd = os.open(stack.data_dir / "stack.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# --- a port already taken ----------------------------------------------------------------------------


@pytest.fixture
def http_squatter() -> Iterator[int]:
    """Something else on a port, answering 200 to everything (as another API's /readyz would)."""
    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    with http_server(Handler) as port:
        yield port


def test_a_temporal_server_already_on_the_port_is_refused_never_attached(
        processes: Orchestrators, tmp_path: Path, temporal_env: WorkflowEnvironment) -> None:
    # A Temporal server this stack did not start (an orphan of an earlier run, say) answers on the port.
    port = int(temporal_env.client.service_client.config.target_host.rsplit(":", 1)[1])
    stack = Stack(tmp_path / "data", temporal_port=port)
    message = run_refused(processes, stack, "squatted-temporal")
    assert f"port 127.0.0.1:{port} is already taken" in message, message
    assert "PROGRESSION_TEMPORAL_PORT" in message, message


def test_an_api_port_already_taken_is_refused(processes: Orchestrators, tmp_path: Path, http_squatter: int) -> None:
    stack = Stack(tmp_path / "data", api_port=http_squatter)
    message = run_refused(processes, stack, "squatted-api")
    assert f"port 127.0.0.1:{http_squatter} is already taken" in message, message
    assert "PROGRESSION_API_PORT" in message, message
    assert not any(_answers(port) for port in (stack.temporal_port, stack.ui_port))


# --- commands that need the database -----------------------------------------------------------------


def _run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, timeout=120, check=False)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def test_users_create_without_a_database_refuses_and_creates_nothing(tmp_path: Path) -> None:
    # As the issue found it: no PROGRESSION_DATA_DIR, run from some directory.
    code, out, err = _run([CLI, "users", "create", "mallory", "--role", "admin", "--team", "platform"],
                          base_env(), tmp_path)
    assert code != 0, out
    expected = tmp_path.resolve() / ".data" / "progression.db"
    assert f"no database at {expected}" in err, err
    assert "make run" in err and "PROGRESSION_DATA_DIR" in err, err
    assert "prg_" not in out + err  # no token for a database no stack serves
    assert list(tmp_path.iterdir()) == [], "the refused command created files"

    # A data directory that does not exist (a typo in PROGRESSION_DATA_DIR) is not created either.
    typo = tmp_path / "no-such-dir"
    code, out, err = _run([CLI, "users", "create", "mallory", "--role", "admin"],
                          {**base_env(), "PROGRESSION_DATA_DIR": str(typo)}, tmp_path)
    assert code != 0 and f"no database at {typo / 'progression.db'}" in err, err
    assert not typo.exists()


async def test_users_create_with_the_stack_database_works(tmp_path: Path) -> None:
    await upgrade(f"sqlite+aiosqlite:///{tmp_path / 'progression.db'}")
    code, out, err = _run([CLI, "users", "create", "ann", "--role", "auditor"],
                          {**base_env(), "PROGRESSION_DATA_DIR": str(tmp_path)}, tmp_path)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("prg_")


def test_users_create_on_an_empty_sqlite_file_refuses(tmp_path: Path) -> None:
    (tmp_path / "progression.db").touch()  # not a database any stack made
    code, out, err = _run([CLI, "users", "create", "mallory", "--role", "admin"],
                          {**base_env(), "PROGRESSION_DATA_DIR": str(tmp_path)}, tmp_path)
    assert code != 0 and "no Progression schema in" in err, err
    assert "prg_" not in out


@pytest.mark.postgres
def test_users_create_on_an_unmigrated_postgres_database_refuses(tmp_path: Path, postgres_url: str) -> None:
    code, out, err = _run([CLI, "users", "create", "mallory", "--role", "admin"],
                          {**base_env(), "PROGRESSION_DATABASE_URL": postgres_url}, tmp_path)
    assert code != 0 and "no Progression schema in" in err, err
    with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql")) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()
    assert tables == (0,), "the refused command created tables"


def test_a_worker_without_a_database_refuses_and_creates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code, out, err = _run([PYTHON, "-m", "launch.serve", "worker"],
                          {**base_env(), "PROGRESSION_DATA_DIR": str(data_dir),
                           "PROGRESSION_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}, PROJECT_ROOT)
    assert code != 0 and f"no database at {data_dir.resolve() / 'progression.db'}" in err, err
    assert not data_dir.exists()
