"""A real continue-as-new keeps deduplicating: an evidence retry that reaches the next run is not applied twice.

The workflow forgot its evidence request ids at continue-as-new (issue 16): a client's retry of a submission that
the previous run had applied was applied again. Here a dev server of its own suggests continue-as-new after a
short history, so the workflow really continues as new (a new run id), and the retry goes to the new run.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from engine.lifecycle import EvidenceRef, ProgressionState
from launch.binaries import temporal_cli_path
from testing.polling import within
from testing.workflow import (
    CREDIT,
    DEV,
    Env,
    answered,
    app_env,
    at_gate,
    events,
    example_input,
    put_evidence,
    start,
    unique_version,
    wait_state,
    worker,
)
from workflows.contract import EVIDENCE_ANSWER, SEARCH_ATTRIBUTE_KEYS, UPDATE_SUBMIT_EVIDENCE, EvidenceInput

# Events in a run after which the server suggests continue-as-new (the default is 4 Ki): a few Updates are enough.
SUGGEST_AFTER_EVENTS = 40


@pytest.fixture
async def short_history_client() -> AsyncIterator[Client]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(), data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTE_KEYS, dev_server_log_level="error",
        dev_server_extra_args=["--dynamic-config-value",
                               f"limit.historyCount.suggestContinueAsNew={SUGGEST_AFTER_EVENTS}"])
    try:
        yield env.client
    finally:
        await env.shutdown()


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with app_env(sqlite_url, tmp_path) as e:
        yield e


async def _submit(client: Client, progression_id: str, ref: EvidenceRef, request_id: str) -> ProgressionState:
    """Submit to the progression's current run (as the API does), under a fresh Update id each time."""
    handle = client.get_workflow_handle(progression_id)
    answer = await within(handle.execute_update(
        UPDATE_SUBMIT_EVIDENCE, EvidenceInput(evidence={ref.name: ref}, actor=DEV, request_id=request_id),
        id=str(uuid.uuid4()), result_type=EVIDENCE_ANSWER), f"evidence submission {request_id}")
    return await answered(handle, answer)


async def _run_id(client: Client, progression_id: str) -> str:
    run_id = (await client.get_workflow_handle(progression_id).describe()).run_id
    assert run_id is not None
    return run_id


async def test_an_evidence_retry_after_continue_as_new_is_not_applied_again(short_history_client: Client,
                                                                             env: Env) -> None:
    client, task_queue = short_history_client, f"tq-{uuid.uuid4()}"
    inp = await example_input(env, CREDIT, version=unique_version())
    pid = inp.spec.progression_id
    async with worker(client, task_queue, env):
        await start(client, inp, task_queue)
        await wait_state(client.get_workflow_handle(pid), at_gate("validation"))
        notes = await put_evidence(env, "reviewer_notes", b"# notes\n", "docs/notes.md")
        request_id = f"retry-me-{uuid.uuid4()}"
        await _submit(client, pid, notes, request_id)
        applied_in = await _run_id(client, pid)

        # More submissions grow the history until the server suggests continue-as-new and the workflow takes it.
        for i in range(60):
            if await _run_id(client, pid) != applied_in:
                break
            extra = await put_evidence(env, f"note_{i}", f"# note {i}\n".encode(), f"docs/note_{i}.md")
            await _submit(client, pid, extra, f"filler-{uuid.uuid4()}")
        assert await _run_id(client, pid) != applied_in, "the workflow never continued as new"
        await wait_state(client.get_workflow_handle(pid), at_gate("validation"))

        # The client retries the first submission (its answer was lost): the new run answers, it does not apply.
        again = await _submit(client, pid, notes, request_id)
        assert again.evidence["reviewer_notes"].sha256 == notes.sha256
        await client.get_workflow_handle(pid).terminate("test over")
    submitted = [e for e in await events(env, pid, "evidence.submitted") if e.payload.get("request_id") == request_id]
    assert len(submitted) == 1
