"""The monitoring activity: the pinned policy's CEL rules over one period's results (no side effects)."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.contract import EVALUATE_MONITORING, EvaluateMonitoringInput, EvaluateMonitoringResult
from engine.monitoring_eval import evaluate_rules


@activity.defn(name=EVALUATE_MONITORING)
async def evaluate_monitoring(inp: EvaluateMonitoringInput) -> EvaluateMonitoringResult:
    return EvaluateMonitoringResult(outcomes=evaluate_rules(inp.rules, inp.metrics))


def monitoring_activities() -> list[Any]:
    return [evaluate_monitoring]
