"""The static determinism guard of the workflow code (``workflows/ruff.toml``) bites, and everything it guards passes.

The worker loads the workflow modules once per process, outside Temporal's sandbox
(``Settings.worker_shared_workflow_modules``, on by default), as it always has for the engine modules the workflows
import: nothing intercepts a non-deterministic call in them at run time. The lint rule refuses one in every code
path, run or not; the committed histories still replay under the strict sandbox (tests/workflow/test_replay.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
RUFF = str(Path(sys.executable).parent / "ruff")
GUARD = ROOT / "workflows" / "ruff.toml"


def _ruff(*args: str, source: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUFF, "check", "--no-cache", "--output-format", "concise", *args], cwd=ROOT,
                          input=source, capture_output=True, text=True, timeout=60)


def _guarded_engine_modules() -> list[Path]:
    """The engine modules the workflows import, directly or not: they run outside the sandbox too."""
    graph = grimp.build_graph("workflows", "engine")
    upstream: set[str] = set()
    for module in graph.find_descendants("workflows") | {"workflows"}:
        upstream |= graph.find_upstream_modules(module)
    return [ROOT / (m.replace(".", "/") + ".py") for m in sorted(upstream) if m.startswith("engine.")]


@pytest.mark.parametrize(("source", "banned"), [
    ("from datetime import datetime\nx = datetime.now()\n", "datetime.datetime.now"),
    ("import datetime\nx = datetime.datetime.utcnow()\n", "datetime.datetime.utcnow"),
    ("from datetime import date\nx = date.today()\n", "datetime.date.today"),
    ("import time\nx = time.time()\n", "`time`"),
    ("import random\nx = random.random()\n", "`random`"),
    ("import uuid\nx = uuid.uuid4()\n", "uuid.uuid4"),
    ("import os\nx = os.environ['HOME']\n", "`os`"),
    ("import threading\nx = threading.Lock()\n", "`threading`"),
])
def test_a_non_deterministic_call_in_workflow_code_is_refused(source: str, banned: str) -> None:
    result = _ruff("--stdin-filename", "workflows/attack.py", "-", source=source)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "TID251" in result.stdout and banned in result.stdout, result.stdout


def test_the_workflows_and_every_engine_module_they_import_pass_the_guard() -> None:
    engine_modules = _guarded_engine_modules()
    assert ROOT / "engine" / "lifecycle.py" in engine_modules  # the graph is read, not empty
    result = _ruff("--config", str(GUARD), "--select", "TID251", "workflows", *map(str, engine_modules))
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_modules_keep_no_state_between_runs() -> None:
    # Loaded once per process, a module is shared by every run on the worker: a `global` rebinding would carry
    # one run's state into another (and into its replay).
    offenders = [f"{path.name}:{node.lineno}" for path in sorted((ROOT / "workflows").glob("*.py"))
                 for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Global | ast.Nonlocal)]
    assert offenders == []
