"""Builders for life after production: the monitor identity, a period's results, the Updates that deliver them."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from temporalio.client import WorkflowHandle

from engine.lifecycle import Actor, ProgressionState
from engine.policy import Role
from workflows.contract import UPDATE_MONITORING, UPDATE_RETIRE, MonitoringInput, MonitoringOutcome, RetireInput

MONITOR = Actor(user_id="u-mon", username="credit-monitoring-job", roles=[Role.monitor], team=None)


def credit_metrics(*, psi: float = 0.08, auc: float = 0.76, volume: float = 12_000, fairness: float = 0.91,
                   default_rate: float = 0.021) -> dict[str, Any]:
    """A period's results for the credit policy's declared metrics (PSI per characteristic)."""
    return {"psi": {"bureau_score": psi, "utilization_ratio": round(psi / 2, 4)}, "auc": auc,
            "default_rate": default_rate, "volume": volume, "fairness_ratio": fairness}


async def deliver(handle: WorkflowHandle[Any, Any], period: date, metrics: dict[str, Any], *,
                  actor: Actor = MONITOR, result_id: str | None = None) -> MonitoringOutcome:
    inp = MonitoringInput(result_id=result_id or f"MR-{uuid.uuid4().hex[:12]}", period=period, metrics=metrics,
                          actor=actor)
    return await handle.execute_update(UPDATE_MONITORING, inp, result_type=MonitoringOutcome)


async def ask_retirement(handle: WorkflowHandle[Any, Any], actor: Actor, *, reason: str = "superseded",
                         replacement: str | None = None, dependents: list[str] | None = None,
                         override_id: str | None = None) -> ProgressionState:
    inp = RetireInput(request_id=str(uuid.uuid4()), actor=actor, reason=reason, replacement=replacement,
                      dependents=dependents or [], override_id=override_id)
    return await handle.execute_update(UPDATE_RETIRE, inp, result_type=ProgressionState)
