"""A terminated test run leaves no Temporal server behind (``testing.interrupt``).

Seen: ``pkill -f pytest`` (what a CI timeout or an impatient engineer does) left the session's dev server running,
orphaned, listening, for as long as the machine ran. A real ``pytest`` runs a test on the project's own fixtures
(``-p tests.conftest``: its hook and its ``temporal_env``), is sent SIGTERM while the test waits, and every Temporal
server it had started must be gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.settings import PROJECT_ROOT
from testing.polling import eventually_sync

pytestmark = pytest.mark.slow

WAITING_TEST = '''
import asyncio


async def test_waits_on_a_dev_server(temporal_env):
    print("READY", flush=True)
    await asyncio.sleep(600)
'''
INI = '''[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
'''


def _temporal_children(pid: int) -> set[int]:
    """Temporal servers whose parent is ``pid`` (the SDK's core starts them as children of the test process)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 1:].split()[1])
        if ppid == pid and b"temporal" in cmdline:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def test_a_terminated_run_stops_the_servers_its_fixtures_started(tmp_path: Path) -> None:
    (tmp_path / "test_waits.py").write_text(WAITING_TEST)
    (tmp_path / "pytest.ini").write_text(INI)
    output = tmp_path / "pytest.out"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with output.open("wb") as sink:
        run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                                "-p", "no:schemathesis", "-p", "tests.conftest", "test_waits.py"],
                               cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    servers: set[int] = set()

    def running() -> None:
        if run.poll() is not None:
            raise AssertionError(f"pytest ended early ({run.returncode}): {output.read_text()[-2000:]}")

    try:
        eventually_sync(lambda: "READY" in output.read_text() or None, "the test waiting on its dev server",
                        alive=running)
        servers = _temporal_children(run.pid)
        assert servers, "the run's dev server was not found among its children"
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=120)
        eventually_sync(lambda: not any(_alive(p) for p in servers) or None,
                        f"the run's Temporal servers {sorted(servers)} stopped",
                        describe=lambda _: output.read_text()[-2000:])
        assert "KeyboardInterrupt" in output.read_text()
    finally:
        if run.poll() is None:
            run.kill()
        for pid in servers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
