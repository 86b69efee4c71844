"""The layering rules hold (import-linter contracts in pyproject.toml), and breaking one fails.

The contracts: launch over api and client (independent of each other), over workflows, over activities, over the
engine; the engine imports none of the layers above; the workflow imports only contracts and pure engine modules;
the client never imports the API, and its SDK needs no database; no import cycles inside a package. The attacks
copy the product's packages to a temporary directory, add one forbidden import, and run the same linter there:
each must be reported by name.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "workflows", "activities", "api", "client", "launch", "progression")
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first, so the copy's packages shadow the editable install of the real ones.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo", str(root / "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "templates"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _inject(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # injected by the test\n", encoding="utf-8")


def test_the_layering_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 kept, 0 broken" in result.stdout


def test_the_copy_is_what_the_attacks_change(tree_copy: Path) -> None:
    """Without an injected import the copy passes: the failures below come from the injection alone."""
    result = _lint(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("module", "line", "broken", "named"), [
    # The engine reaching up into the API (what engine/sdk.py and engine/cli_commands.py used to do).
    ("engine/spec.py", "import api.schemas", "The engine imports none of the layers above it", "engine.spec -> api"),
    # The workflow importing an activity implementation (and with it SQLAlchemy).
    ("workflows/progression.py", "import activities.progression",
     "The workflow imports only contracts", "workflows.progression -> activities.progression"),
    # The client importing the API's modules instead of reading it over HTTP.
    ("client/sdk.py", "import api.schemas", "The client reads the API over HTTP", "client.sdk -> api.schemas"),
    # The SDK growing a database dependency (what importing engine.audit for one model did).
    ("client/sdk.py", "import engine.audit", "The SDK and repository reading need only", "client.sdk -> engine.audit"),
    # The notebook SDK reaching into the API or the database instead of the engine and the HTTP client.
    ("progression/policy.py", "import api.services.policies", "The notebook SDK (progression) evaluates",
     "progression.policy -> api.services.policies"),
    ("progression/policy.py", "import engine.db", "The notebook SDK (progression) evaluates",
     "progression.policy -> engine.db"),
    # The cycle issue 16 removed: checks and loading importing each other.
    ("engine/checks.py", "import engine.loading", "No import cycles", ".loading -> .checks"),
])
def test_an_upward_import_breaks_the_layering(tree_copy: Path, module: str, line: str, broken: str,
                                              named: str) -> None:
    _inject(tree_copy / module, line)
    result = _lint(tree_copy)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and broken in result.stdout.replace("\n", " ")
    assert named in result.stdout


def _function_local_imports(path: Path) -> list[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    text = "\n".join(lines[inner.lineno - 1:inner.end_lineno])
                    found.append((inner.lineno, text))
    return found


def test_function_local_imports_say_why() -> None:
    """An import inside a function hides a dependency (and hid the checks <-> loading cycle): each needs a reason."""
    unexplained = [f"{path.relative_to(ROOT)}:{line}: {text.strip()}"
                   for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
                   for line, text in _function_local_imports(path) if "# local:" not in text]
    assert unexplained == []
