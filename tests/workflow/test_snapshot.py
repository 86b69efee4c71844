"""The read-model snapshot is faithful to the workflow's durable history, also when a workflow task fails.

``record`` is a local activity: it writes the snapshot inside a workflow task, before that task completes.
A task that fails (or whose worker dies) after the write leaves a snapshot the history never reached; the
retried task runs again on the durable history, later, and writes its own. The snapshot is ordered by
(``updated_at``, ``seq``), so the retry's write supersedes the failed attempt's (ordered by seq alone, the
retry's write of the same seq was refused and the phantom stayed: the API pre-checks decisions on it).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import (
    HandleUpdateInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from activities.contract import RecordInput
from engine.db import ProgressionRow
from engine.lifecycle import ProgressionState, StageStatus
from launch.worker import build_worker
from testing.polling import eventually
from testing.temporal import tolerate_slow_activations
from testing.workflow import (
    CREDIT,
    RISK1,
    VALIDATOR,
    Env,
    at_gate,
    decide,
    example_input,
    start,
    state,
    unique_version,
    wait_state,
)
from workflows.contract import UPDATE_DECIDE


class FailTaskAfterDecision(Interceptor):
    """Fails the workflow task once, right after the decision ``decision_id`` was handled (its record written)."""

    def __init__(self, decision_id: str) -> None:
        self.decision_id = decision_id
        self.failed = False

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput
                                   ) -> type[WorkflowInboundInterceptor] | None:
        outer = self

        class Inbound(WorkflowInboundInterceptor):
            async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
                result = await super().handle_update_handler(input)
                if (input.update == UPDATE_DECIDE and not outer.failed and not workflow.unsafe.is_replaying()
                        and input.args and getattr(input.args[0], "decision_id", None) == outer.decision_id):
                    outer.failed = True
                    # Not a Temporal failure: the workflow task fails (as if its worker died) and is retried.
                    raise RuntimeError("injected: the task fails after the decision's record was written")
                return result

        return Inbound


async def _snapshot(env: Env, pid: str) -> ProgressionRow:
    async with env.sessionmaker() as session:
        row = (await session.execute(select(ProgressionRow).where(ProgressionRow.id == pid))).scalar_one()
        session.expunge(row)
        return row


async def test_a_failed_task_leaves_no_phantom_snapshot(temporal_client: Client, task_queue: str, env: Env
                                                        ) -> None:
    decision_id = f"d-{uuid.uuid4()}"
    failing = FailTaskAfterDecision(decision_id)
    inp = await example_input(env, CREDIT, version=unique_version())
    async with tolerate_slow_activations(build_worker(temporal_client, task_queue=task_queue,
                                                      activities=env.activities, interceptors=[failing],
                                                      graceful_shutdown_timeout=timedelta(seconds=5))):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        await decide(handle, VALIDATOR, "validation", "approve")
        await wait_state(handle, at_gate("risk_review"))
        # The first of two risk approvals: the gate stays open, the progression parks on it again.
        await decide(handle, RISK1, "risk_review", "approve", decision_id=decision_id)
        assert failing.failed
        history = await handle.fetch_history()
        assert any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events)
        live = await state(handle)
        assert [d.decision_id for d in live.stage("risk_review").decisions] == [decision_id]  # type: ignore[union-attr]

        async def faithful() -> ProgressionRow | None:
            row = await _snapshot(env, handle.id)
            return row if row.seq >= live.seq else None

        row = await eventually(faithful, "the snapshot of the decision")
        # What the durable history holds, not what the failed attempt computed (its decision was made at
        # another workflow time: the snapshot kept that time, and its seq, before the fix).
        assert (row.seq, row.updated_at) == (live.seq, live.updated_at)
        recorded = ProgressionState.model_validate(row.state)
        assert recorded.model_dump(mode="json") == live.model_dump(mode="json")
        await handle.terminate("test over")


async def test_the_snapshot_is_ordered_by_workflow_time_then_seq(temporal_client: Client, task_queue: str,
                                                                 env: Env) -> None:
    """The writes a failed attempt and its retry make, played against the real row by the real ``record``:
    the retry (later, lower seq) supersedes the phantom (earlier, higher seq); a late write of an older
    state is refused; the same state written again (a retried record) is accepted."""
    inp = await example_input(env, CREDIT, version=unique_version())
    async with tolerate_slow_activations(build_worker(temporal_client, task_queue=task_queue,
                                                      activities=env.activities)):
        handle = await start(temporal_client, inp, task_queue)
        base = await wait_state(handle, at_gate("validation"))
        await eventually(lambda: _recorded(env, handle.id, base.seq), "the parked snapshot")
        await handle.terminate("the records below are played by hand")

    def at(seconds: int, seq: int, stage_status: StageStatus) -> ProgressionState:
        s = base.model_copy(deep=True)
        s.seq, s.updated_at = seq, base.updated_at + timedelta(seconds=seconds)
        s.stage("validation").status = stage_status  # type: ignore[union-attr]
        return s

    async def record(s: ProgressionState) -> bool:
        result = await ActivityEnvironment().run(env.activities.record, RecordInput(state=s))
        return result.read_model_updated

    phantom = at(1, base.seq + 2, StageStatus.running)  # the failed attempt went further (the gate closed)
    retry = at(2, base.seq + 1, StageStatus.awaiting_approval)  # the durable retry: later, but a lower seq
    assert await record(phantom)
    assert await record(retry)  # refused when ordered by seq alone: the phantom's closed gate stayed
    row = await _snapshot(env, handle.id)
    assert (row.seq, row.updated_at, row.gate is not None) == (retry.seq, retry.updated_at, True)
    assert not await record(at(1, base.seq + 5, StageStatus.running))  # an older write arriving late
    assert await record(retry)  # a retried record of the same state
    row = await _snapshot(env, handle.id)
    assert (row.seq, row.updated_at) == (retry.seq, retry.updated_at)


async def _recorded(env: Env, pid: str, seq: int) -> bool:
    async with env.sessionmaker() as session:
        return bool(await session.scalar(select(ProgressionRow.id).where(ProgressionRow.id == pid,
                                                                         ProgressionRow.seq >= seq)))
