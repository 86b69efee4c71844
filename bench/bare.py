"""The baseline of the throughput benchmark: a bare Temporal workflow shaped like the credit journey.

Same activities, of the same kinds, in the same places as ``ProgressionWorkflow`` on the credit
policy (15: ``a`` a regular activity, ``l`` a local activity -- the engine's ``record`` -- in the
order a credit journey's history shows them), the same three Updates with validators that refuse
while the gate is closed, each running one local activity as the engine's ``decide`` does, the
same SLA timers racing each gate and the revalidation timer at the end. The activities do
nothing, so the difference is what governance costs: state, audit chain, read model, checks,
search attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import activity, workflow

BARE_WORKFLOW = "BareGovernedWorkflow"
NOOP_TIMEOUT = timedelta(seconds=60)
# (activities before the gate, approvals the gate needs, SLA of the gate): the credit journey's shape.
# register, checks, record, checks, record | validation gate | record | risk-review gate |
# record, checks, record, record, deploy, record.
# The last ``l`` of each run is ``bare_record``: the bare app's read-model write, after the state changed (as the
# engine's ``record`` writes the snapshot the API and the driver read).
SHAPE: list[tuple[str, int, timedelta]] = [("aalal", 1, timedelta(days=5)), ("l", 2, timedelta(days=10))]
TAIL_ACTIVITIES = "lallal"
# The bare app's read model (workflow id -> its last recorded state): the worker and the driver share a process.
READ_MODEL: dict[str, dict[str, Any]] = {}


class BareDecision(BaseModel):
    gate: int
    actor: str


class BareState(BaseModel):
    gate: int = -1  # index of the open gate, -1 when none is open
    approvals: int = 0
    status: str = "running"  # running | awaiting_approval | done


@activity.defn(name="bare_noop")
async def bare_noop(step: int) -> int:
    return step


@activity.defn(name="bare_record")
async def bare_record(state: BareState) -> int:
    READ_MODEL[activity.info().workflow_id or ""] = state.model_dump()
    return 0


BARE_ACTIVITIES: list[Callable[..., Any]] = [bare_noop, bare_record]


@workflow.defn(name=BARE_WORKFLOW)
class BareGovernedWorkflow:
    def __init__(self) -> None:
        self._state = BareState()
        self._approvers: set[str] = set()

    @workflow.query(name="state")
    def state(self) -> BareState:
        return self._state

    async def _noops(self, kinds: str) -> None:
        for i, k in enumerate(kinds):
            if k == "l":
                await workflow.execute_local_activity(bare_noop, i, start_to_close_timeout=NOOP_TIMEOUT)
            else:
                await workflow.execute_activity(bare_noop, i, start_to_close_timeout=NOOP_TIMEOUT)

    async def _record(self) -> None:
        await workflow.execute_local_activity(bare_record, self._state, start_to_close_timeout=NOOP_TIMEOUT)

    @workflow.run
    async def run(self) -> BareState:
        for index, (before, needed, sla) in enumerate(SHAPE):
            await self._noops(before[:-1])
            self._state.gate, self._state.approvals, self._state.status = index, 0, "awaiting_approval"
            self._approvers = set()
            await self._record()
            try:
                await workflow.wait_condition(lambda n=needed: self._state.approvals >= n, timeout=sla)  # type: ignore[misc]
            except TimeoutError:
                pass
            await workflow.wait_condition(workflow.all_handlers_finished)
            self._state.gate, self._state.status = -1, "running"
        await self._noops(TAIL_ACTIVITIES[:-1])
        self._state.status = "done"
        await self._record()
        try:
            await workflow.wait_condition(lambda: False, timeout=timedelta(days=365))
        except TimeoutError:
            pass
        return self._state

    @workflow.update(name="decide")
    async def decide(self, inp: BareDecision) -> BareState:
        self._approvers.add(inp.actor)
        self._state.approvals += 1
        await self._record()
        return self._state

    @decide.validator
    def _validate(self, inp: BareDecision) -> None:
        if self._state.gate != inp.gate or inp.actor in self._approvers:
            raise ValueError("gate not open for this actor")
