"""Every test in tests/system runs whole processes (stacks, CLI subprocesses, a browser, the crash harness,
fuzzing, benchmark smoke runs): all are ``slow``. ``make test`` runs them; ``make test-fast`` does not."""

from __future__ import annotations

from pathlib import Path

import pytest

SYSTEM = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(SYSTEM):
            item.add_marker(pytest.mark.slow)
