"""Property: no interleaving of evidence changes and decisions deploys what an approval did not see.

Hypothesis draws random interleavings of evidence uploads (good and failing metrics, other items,
identical bytes again), approvals sent with the basis the approver read (possibly before an upload:
stale) or without one, and change requests, against the time-skipping test server. Whatever happened,
the journey is then driven to its end; for every progression that reaches ``in_production``, every
counted approval's basis equals the basis recomputed from the final state and the basis the deployment
carried. The example count is bounded so the test stays quick.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from engine.lifecycle import (
    Actor,
    DecisionKind,
    ProgressionState,
    compute_basis,
    counted_approvals,
)
from testing.polling import within
from testing.workflow import (
    RISK1,
    VALIDATOR,
    Env,
    app_env,
    example_input,
    put_evidence,
    start,
    submit,
    unique_version,
    wait_state,
    worker,
)
from tests.workflow.test_basis import FRAUD, FRAUD_DEV
from workflows.contract import UPDATE_DECIDE, DecideInput, DecideResult

# Hypothesis drives whole journeys on the time-skipping server: `make test` runs it, the inner loop does not.
pytestmark = pytest.mark.slow

RISK3 = Actor(user_id="u-risk3", username="ria.risk", roles=RISK1.roles, team="model-risk")
VALIDATOR2 = Actor(user_id="u-val2", username="vic.validator", roles=VALIDATOR.roles, team="validation")
DECIDERS = {"validation": [VALIDATOR, VALIDATOR2], "risk_review": [RISK1, RISK3]}

EVIDENCE_KINDS = ["metrics_good", "metrics_bad", "metrics_original", "latency_alt", "model_card_alt", "memo"]
ACTION = st.one_of(
    st.tuples(st.just("evidence"), st.sampled_from(EVIDENCE_KINDS)),
    st.tuples(st.just("approve"), st.sampled_from(["fresh", "stale", "none"])),
    st.tuples(st.just("request_changes"), st.just("")),
)


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("basis-property")
    async with app_env(f"sqlite+aiosqlite:///{tmp / 'progression.db'}", tmp) as e:
        yield e


async def _evidence(env: Env, kind: str) -> dict[str, Any]:
    if kind.startswith("metrics"):
        metrics = json.loads((FRAUD / "evidence/metrics.json").read_text())
        if kind != "metrics_original":
            metrics["operating_point"]["precision"] = 0.88 if kind == "metrics_good" else 0.40
        return {"metrics": await put_evidence(env, "metrics", json.dumps(metrics).encode(), "evidence/metrics.json")}
    if kind == "latency_alt":
        latency = json.loads((FRAUD / "evidence/latency.json").read_text())
        latency["p99_ms"] = 44.0
        return {"latency": await put_evidence(env, "latency", json.dumps(latency).encode(), "evidence/latency.json")}
    if kind == "model_card_alt":
        card = (FRAUD / "docs/model_card.md").read_text() + "\n## Limitations\nRevised.\n"
        return {"model_card": await put_evidence(env, "model_card", card.encode(), "docs/model_card.md")}
    return {"memo": await put_evidence(env, "memo", f"memo {uuid.uuid4()}".encode(), "docs/memo.md")}


async def _decide(handle: WorkflowHandle[Any, Any], actor: Actor, stage: str, decision: str,
                  basis: str | None) -> None:
    inp = DecideInput(stage=stage, decision=DecisionKind(decision), comment="why not", actor=actor,
                      decision_id=str(uuid.uuid4()), basis=basis)
    try:
        await within(handle.execute_update(UPDATE_DECIDE, inp, id=inp.decision_id, result_type=DecideResult),
                     f"{decision} at {stage}")
    except WorkflowUpdateFailedError:
        pass  # refused (stale basis, gate not open, already decided): the property must hold regardless


def _open_gate(s: ProgressionState) -> str | None:
    return s.current_stage if s.status == "awaiting_approval" and s.current_stage in DECIDERS else None


async def _settled(handle: WorkflowHandle[Any, Any]) -> ProgressionState:
    return await wait_state(handle, lambda s: s.status != "running")


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(actions=st.lists(ACTION, min_size=1, max_size=8))
async def test_every_counted_approval_binds_to_what_was_deployed(
        actions: list[tuple[str, str]], time_skipping_env: WorkflowEnvironment, env: Env) -> None:
    client, queue = time_skipping_env.client, f"tq-{uuid.uuid4()}"
    env.target.deployments.clear()
    inp = await example_input(env, FRAUD, submitted_by=FRAUD_DEV, version=unique_version())
    async with worker(client, queue, env):
        handle = await start(client, inp, queue)
        remembered: str | None = None  # a basis an approver read earlier (stale after an upload)
        for kind, arg in actions:
            now = await _settled(handle)
            if now.status in ("in_production", "rejected", "withdrawn"):
                break
            gate = _open_gate(now)
            if kind == "evidence":
                try:
                    await submit(handle, FRAUD_DEV, await _evidence(env, arg))
                except WorkflowUpdateFailedError:
                    pass
            elif gate is not None:
                basis = now.stage(gate).basis  # type: ignore[union-attr]
                chosen = {"fresh": basis, "stale": remembered, "none": None}.get(arg) if kind == "approve" else None
                for actor in DECIDERS[gate]:
                    await _decide(handle, actor, gate, "approve" if kind == "approve" else "request_changes", chosen)
                    if kind != "approve":
                        break
                remembered = basis
        # Drive to the end: fix what blocks, approve what is open, answer change requests.
        for _ in range(20):
            now = await _settled(handle)
            if now.status in ("in_production", "rejected", "withdrawn"):
                break
            if now.status in ("blocked", "changes_requested"):
                await submit(handle, FRAUD_DEV, await _evidence(env, "metrics_good"))
                continue
            gate = _open_gate(now)
            if gate is not None:
                await _decide(handle, DECIDERS[gate][0], gate, "approve", now.stage(gate).basis)  # type: ignore[union-attr]
                await _decide(handle, DECIDERS[gate][1], gate, "approve", now.stage(gate).basis)  # type: ignore[union-attr]
        final = await wait_state(handle, lambda s: s.status == "in_production")
        await handle.terminate("example over")

    counted = [(stage.name, d) for stage in final.stages for d in counted_approvals(stage)]
    assert {name for name, _ in counted} == {"validation", "risk_review"}
    for name, d in counted:
        assert d.basis is not None and d.basis == compute_basis(final, name), (name, d.decision_id)
    deployed = [dep for dep in env.target.deployments if dep.progression_id == final.progression_id]
    assert len(deployed) == 1
    assert deployed[0].approval_bases == [d.basis for _, d in counted]
    assert deployed[0].artifact_digest == inp.spec.version.artifact_digest
