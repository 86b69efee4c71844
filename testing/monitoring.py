"""Builders for life after production: the monitor identity, a period's results, the Updates that deliver them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from engine.lifecycle import Actor, ProgressionState
from engine.policy import Role
from testing.polling import within
from testing.workflow import answered
from workflows.contract import (
    RETIRE_ANSWER,
    UPDATE_MONITORING,
    UPDATE_RETIRE,
    MonitoringInput,
    MonitoringOutcome,
    RetireInput,
)

MONITOR = Actor(user_id="u-mon", username="credit-monitoring-job", roles=[Role.monitor], team=None)


def credit_metrics(*, psi: float = 0.08, auc: float = 0.76, volume: float = 12_000, fairness: float = 0.91,
                   default_rate: float = 0.021) -> dict[str, Any]:
    """A period's results for the credit policy's declared metrics (PSI per characteristic)."""
    return {"psi": {"bureau_score": psi, "utilization_ratio": round(psi / 2, 4)}, "auc": auc,
            "default_rate": default_rate, "volume": volume, "fairness_ratio": fairness}


async def deliver(client: Client, workflow_id: str, period: date, metrics: dict[str, Any], *,
                  actor: Actor = MONITOR, result_id: str | None = None) -> MonitoringOutcome:
    """Deliver a period's results to the current run of ``workflow_id`` (the one the API addresses too)."""
    inp = MonitoringInput(result_id=result_id or f"MR-{uuid.uuid4().hex[:12]}", period=period, metrics=metrics,
                          actor=actor)
    # An Update admitted just as the run continues as new may never complete on that run: wait a bounded time,
    # then send it again to the current run (the workflow answers a result id it already has without applying
    # it twice), so a test never hangs on that race.
    for _ in range(5):
        try:
            return await asyncio.wait_for(
                client.get_workflow_handle(workflow_id).execute_update(UPDATE_MONITORING, inp,
                                                                       result_type=MonitoringOutcome),
                timeout=DELIVERY_WAIT_S)
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # asyncio.wait_for cancels the Update's poll at the timeout; the client turns that cancellation into
            # WorkflowUpdateRPCTimeoutOrCancelledError (not TimeoutError), which used to escape the retry
            continue
        except RPCError as err:  # the time-skipping server answers "update not found" to one its run dropped
            if err.status != RPCStatusCode.NOT_FOUND or "update" not in err.message:
                raise
            if (await client.get_workflow_handle(workflow_id).describe()).status != WorkflowExecutionStatus.RUNNING:
                raise  # a closed workflow takes no results
            await asyncio.sleep(0.5)
    raise AssertionError(f"monitoring result {inp.result_id} was not delivered to {workflow_id} in 5 attempts")


DELIVERY_WAIT_S = 30.0


async def ask_retirement(handle: WorkflowHandle[Any, Any], actor: Actor, *, reason: str = "superseded",
                         replacement: str | None = None, dependents: list[str] | None = None,
                         override_id: str | None = None) -> ProgressionState:
    inp = RetireInput(request_id=str(uuid.uuid4()), actor=actor, reason=reason, replacement=replacement,
                      dependents=dependents or [], override_id=override_id)
    answer = await within(handle.execute_update(UPDATE_RETIRE, inp, result_type=RETIRE_ANSWER),
                          f"retirement request for {handle.id}")
    return await answered(handle, answer)
