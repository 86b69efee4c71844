"""deploy/temporal/register-search-attributes.sh (compose's one-shot job) against a real Temporal server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from engine.settings import PROJECT_ROOT
from launch.binaries import temporal_cli_path
from testing.temporal import dev_server
from workflows.contract import SEARCH_ATTRIBUTES

REGISTER_SCRIPT = PROJECT_ROOT / "deploy" / "temporal" / "register-search-attributes.sh"


@pytest.fixture
async def bare_temporal() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server with no custom search attributes, like a freshly set-up cluster."""
    async with dev_server(search_attributes=False) as env:
        yield env


@pytest.fixture
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text()))


def _run_register(address: str, attributes: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TEMPORAL_ADDRESS": address,
           "TEMPORAL_NAMESPACE": "default", "SEARCH_ATTRIBUTES": attributes,
           "TEMPORAL_CLI": temporal_cli_path(), "WAIT_SECONDS": "30"}
    return subprocess.run(["/bin/sh", str(REGISTER_SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


async def test_register_script_registers_the_attributes(bare_temporal: WorkflowEnvironment,
                                                        compose: dict[str, Any]) -> None:
    client = bare_temporal.client
    address = client.service_client.config.target_host
    request = ListSearchAttributesRequest(namespace="default")
    before = (await client.operator_service.list_search_attributes(request)).custom_attributes
    assert not set(SEARCH_ATTRIBUTES) & set(before)

    attributes = compose["services"]["search-attributes"]["environment"]["SEARCH_ATTRIBUTES"]
    first = _run_register(address, attributes)
    assert first.returncode == 0, first.stderr
    after = (await client.operator_service.list_search_attributes(request)).custom_attributes
    assert {name: after[name] for name in SEARCH_ATTRIBUTES} == {
        name: getattr(IndexedValueType, f"INDEXED_VALUE_TYPE_{kind.upper()}")
        for name, kind in SEARCH_ATTRIBUTES.items()
    }
    # A second run (container restart) changes nothing and succeeds.
    again = _run_register(address, attributes)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already registered") == len(SEARCH_ATTRIBUTES)
    # An attribute registered with another type is an error, not silently accepted.
    conflict = _run_register(address, "RiskTier=Keyword")
    assert conflict.returncode != 0 and "RiskTier exists as Int, expected Keyword" in conflict.stderr
