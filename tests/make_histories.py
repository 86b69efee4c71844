"""Regenerate the committed workflow histories that tests/workflow/test_replay.py replays.

    .venv/bin/python -m tests.make_histories [--out tests/histories/<generation>]

Runs real progressions on the time-skipping test server (SLA days and the yearly revalidation
pass in milliseconds) with a throwaway SQLite database, and saves each finished workflow's
history as ``<out>/<workflow id>.json`` (``WorkflowHistory.to_json()``). A deliberate change of
the workflow's commands goes behind ``workflow.patched`` and gets a new generation directory;
the older generations stay committed, so the replay test proves old progressions still replay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from engine.findings import ExceptionKind
from engine.lifecycle import Actor, ConditionIn
from engine.policy import Role
from testing.findings import (
    approve_exception,
    approve_with_conditions,
    credit_input_without,
    remediate,
    request_exception,
    verify,
)
from testing.monitoring import ask_retirement, credit_metrics, deliver
from testing.temporal import time_skipping_server
from testing.workflow import (
    CREDIT,
    DEV2,
    MARKETING,
    MKT_DEV,
    RISK1,
    RISK2,
    STRANGER,
    VALIDATOR,
    app_env,
    at_gate,
    decide,
    example_input,
    put_evidence,
    start,
    submit,
    wait_state,
    withdraw,
    worker,
)

HISTORIES = Path(__file__).parent / "histories"
# The newest generation: progressions started by the current code (record as a local activity; a
# failed workflow records its failure first; approvals bound to their basis: evidence changes re-open
# the stages that read them; guidance computed outside the workflow; findings: conditions of approvals,
# blocking findings, waived checks).
# v7: life after production (monitoring breaches, triggered revalidation, overdue results, retirement gate).
# v8: lean payloads (check runs carry a CheckSubject, not the state); made with --only credit_journey --only
# fraud_reopened --only credit_monitoring --only credit_conditions. v8-timers (made on a branch beside it): a retried
# monitoring result waits only while this run applies it (--only credit_monitoring).
# v9: both patches together (--only credit_monitoring).
# v10: lean Update results (decide, submit_evidence, withdraw, request_retirement, record_monitoring answer with seq,
# status and stage, not the state), with every earlier patch: all journeys (no --only).
# v11: one patch for every earlier one (``every-patch-of-2026``: a new run asks only it), all journeys (no --only).
CURRENT = HISTORIES / "v11-consolidated-patches"
FRAUD = CREDIT.parent / "card-fraud-detector"
FRAUD_DEV = Actor(user_id="u-fdev", username="fay.fraud", roles=[Role.model_developer], team="payments-fraud")


async def credit_journey(env_ts: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], env: Any) -> None:
    """Every path of the credit route: escalation, change request, deploy, revalidation, retirement."""
    await wait_state(handle, at_gate("validation"))
    await env_ts.sleep(timedelta(days=6))  # past the 5-day SLA: escalated, still waiting
    await wait_state(handle, lambda s: s.stage("validation").approvals[0].escalated)  # type: ignore[union-attr]
    await decide(handle, VALIDATOR, "validation", "approve", "independent validation complete")
    await wait_state(handle, at_gate("risk_review"))
    await decide(handle, RISK1, "risk_review", "approve", "residual risk accepted")
    await decide(handle, RISK2, "risk_review", "request_changes", "add the out-of-time note")
    # Metrics are frozen after validation (credit policy): the answer is in the monitoring plan.
    plan = (CREDIT / "docs/monitoring_plan.md").read_text() + "\nOut-of-time sample documented.\n"
    ref = await put_evidence(env, "monitoring_plan", plan.encode(), "docs/monitoring_plan.md")
    await submit(handle, DEV2, {"monitoring_plan": ref})
    await decide(handle, RISK1, "risk_review", "approve", "still fine")
    await decide(handle, RISK2, "risk_review", "approve", "thanks")
    await wait_state(handle, lambda s: s.status == "in_production")
    await env_ts.sleep(timedelta(days=366))
    await wait_state(handle, lambda s: s.revalidation_overdue)
    await decide(handle, VALIDATOR, "revalidation", "approve", "annual review done")
    await wait_state(handle, lambda s: s.revalidations == 1)
    await env_ts.sleep(timedelta(days=366))
    await wait_state(handle, lambda s: s.revalidation_overdue)
    await decide(handle, VALIDATOR, "revalidation", "reject", "population drifted; retire")


async def fraud_reopened(env_ts: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], env: Any) -> None:
    """Evidence changed with the risk-review gate open: validation re-opens, blocks, is fixed and re-approved."""
    await wait_state(handle, at_gate("validation"))
    await decide(handle, VALIDATOR, "validation", "approve", "validated")
    await wait_state(handle, at_gate("risk_review"))
    metrics = json.loads((FRAUD / "evidence/metrics.json").read_text())
    metrics["operating_point"]["precision"] = 0.41
    bad = await put_evidence(env, "metrics", json.dumps(metrics).encode(), "evidence/metrics.json")
    await submit(handle, FRAUD_DEV, {"metrics": bad})
    await wait_state(handle, lambda s: s.current_stage == "validation" and s.status == "blocked")
    metrics["operating_point"]["precision"] = 0.87
    good = await put_evidence(env, "metrics", json.dumps(metrics).encode(), "evidence/metrics.json")
    await submit(handle, FRAUD_DEV, {"metrics": good})
    await wait_state(handle, at_gate("validation"))
    await decide(handle, VALIDATOR, "validation", "approve", "new metrics validated")
    await wait_state(handle, at_gate("risk_review"))
    await decide(handle, RISK1, "risk_review", "approve", "accepted")
    await wait_state(handle, lambda s: s.status == "in_production")
    await env_ts.sleep(timedelta(days=366))
    await wait_state(handle, lambda s: s.revalidation_overdue)
    await decide(handle, VALIDATOR, "revalidation", "reject", "retire")


async def credit_conditions(env_ts: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], env: Any) -> None:
    """Validation approved with conditions (a high one blocks production until closed); the missing monitoring
    plan is waived by a maker-checker exception that later lapses and flags the model."""
    await wait_state(handle, at_gate("validation"))
    result = await approve_with_conditions(handle, VALIDATOR, "validation", [
        ConditionIn(severity="high", title="No challenger model"),
        ConditionIn(severity="medium", title="Out-of-time sample too short")])
    high = result.state.stage("validation").decisions[-1].conditions[0]  # type: ignore[union-attr]
    await wait_state(handle, at_gate("risk_review"))
    await decide(handle, RISK1, "risk_review", "approve", "residual risk accepted")
    await decide(handle, RISK2, "risk_review", "approve", "agree")
    blocked = await wait_state(handle, lambda s: s.current_stage == "staging" and s.status == "blocked")
    exc = await request_exception(env_ts.client, "make-histories", blocked, RISK1, kind=ExceptionKind.check,
                                  check_id="monitoring-plan", now=blocked.updated_at,
                                  expires_at=blocked.updated_at + timedelta(days=60))
    await approve_exception(env_ts.client, exc.exception_id, RISK2)
    await wait_state(handle, lambda s: s.current_stage == "production" and s.status == "blocked")
    await remediate(env_ts.client, high, DEV2, "challenger built")
    await verify(env_ts.client, high, VALIDATOR, "close", "verified")
    await wait_state(handle, lambda s: s.status == "in_production")
    await env_ts.sleep(timedelta(days=61))
    await wait_state(handle, lambda s: bool(s.flags))
    await env_ts.sleep(timedelta(days=306))
    await wait_state(handle, lambda s: s.revalidation_overdue)
    await decide(handle, VALIDATOR, "revalidation", "reject", "retire")


async def credit_monitoring(env_ts: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], env: Any) -> None:
    """In production: calm results, a drift breach opens revalidation now (a repeat opens no second gate), a
    finding breach, a declined retirement, then a retirement that undeploys the model. (Overdue results are
    covered on the time-skipping server by tests/workflow/test_monitoring.py.)"""
    await wait_state(handle, at_gate("validation"))
    await decide(handle, VALIDATOR, "validation", "approve", "validated")
    await wait_state(handle, at_gate("risk_review"))
    await decide(handle, RISK1, "risk_review", "approve", "accepted")
    await decide(handle, RISK2, "risk_review", "approve", "agree")
    live = await wait_state(handle, lambda s: s.status == "in_production")
    day0 = live.deployed_at.date()  # type: ignore[union-attr]
    calm = await deliver(env_ts.client, handle.id, day0 + timedelta(days=30), credit_metrics())
    # v8: a retried result is answered from its outcome (the patch monitoring-retry-waits-only-for-its-own-run)
    await deliver(env_ts.client, handle.id, day0 + timedelta(days=30), credit_metrics(), result_id=calm.result_id)
    await deliver(env_ts.client, handle.id, day0 + timedelta(days=31), credit_metrics(psi=0.4))
    await wait_state(handle, lambda s: s.current_stage == "revalidation")
    await deliver(env_ts.client, handle.id, day0 + timedelta(days=32), credit_metrics(psi=0.5, auc=0.6))
    await decide(handle, VALIDATOR, "revalidation", "approve", "drift explained")
    await wait_state(handle, lambda s: s.revalidations == 1 and s.current_stage is None)
    await ask_retirement(handle, DEV2, reason="replaced")
    await decide(handle, RISK1, "retirement", "reject", "not yet")
    await wait_state(handle, lambda s: s.current_stage is None)
    await ask_retirement(handle, DEV2, reason="replaced", replacement="4.0.0")
    await decide(handle, RISK1, "retirement", "approve", "replacement live")


async def marketing_withdrawn(env_ts: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], env: Any) -> None:
    await wait_state(handle, at_gate("validation"))
    await withdraw(handle, MKT_DEV, "replaced by a new version")


async def squatted(env_ts: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], env: Any) -> None:
    """Another team claims the credit model (registered by the credit journey): registration fails."""


async def main(out: Path, only: list[str]) -> None:
    async with time_skipping_server() as env_ts:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'progression.db'}"
            async with app_env(url, Path(tmp)) as env:
                runs = [
                    (await example_input(env, CREDIT, version={"id": "3.2.0"}), credit_journey),
                    (await example_input(env, CREDIT, version={"id": "3.5.0"}), credit_monitoring),
                    (await example_input(env, MARKETING, submitted_by=MKT_DEV), marketing_withdrawn),
                    (await example_input(env, CREDIT, submitted_by=STRANGER, version={"id": "3.3.0"},
                                         model={"team": "payments"}), squatted),
                    (await example_input(env, FRAUD, submitted_by=FRAUD_DEV), fraud_reopened),
                    (await credit_input_without(env, "monitoring_plan", "3.4.0"), credit_conditions),
                ]
                runs = [(inp, drive) for inp, drive in runs if not only or drive.__name__ in only]
                async with worker(env_ts.client, "make-histories", env):
                    for inp, drive in runs:
                        handle = await start(env_ts.client, inp, "make-histories")
                        await drive(env_ts, handle, env)
                        try:
                            status = (await handle.result()).status
                        except WorkflowFailureError as exc:
                            status = f"failed ({exc.cause})"
                        history = await handle.fetch_history()
                        path = out / f"{handle.id}.json"
                        path.write_text(history.to_json())
                        print(f"{path}: {len(history.events)} events, final status {status}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CURRENT, help="generation directory to write")
    parser.add_argument("--only", action="append", default=[],
                        help="journey function names to run (v7-monitoring, v8-timers: --only credit_monitoring)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.out, args.only))
