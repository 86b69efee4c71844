"""Shared builders for the workflow tests (and tests/make_histories.py).

Everything here is real: a migrated database, the content-addressed evidence store in a
temporary directory, the example repositories and the policies from ``policies/``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import temporalio.workflow
import yaml
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.worker import Worker

from activities.notify import LogNotifier
from activities.progression import ProgressionActivities
from activities.promotion import RecordingPromotionTarget
from engine.db import AuditEvent, DecisionRow, make_engine, make_sessionmaker
from engine.evidence import EvidenceStore, record_blob
from engine.lifecycle import Actor, DecisionKind, EvidenceRef, ProgressionState
from engine.loading import PolicyRegistry, load_spec
from engine.policy import Role
from engine.settings import PROJECT_ROOT
from engine.spec import ProgressionSpec
from launch.worker import build_worker
from testing.databases import prepare_database
from testing.polling import eventually, within
from testing.temporal import tolerate_slow_activations
from workflows.contract import (
    EVIDENCE_ANSWER,
    QUERY_STATE,
    UPDATE_DECIDE,
    UPDATE_SUBMIT_EVIDENCE,
    UPDATE_WITHDRAW,
    WITHDRAW_ANSWER,
    WORKFLOW_NAME,
    DecideInput,
    DecideResult,
    EvidenceInput,
    ProgressionInput,
    UpdateAnswer,
    WithdrawInput,
)
from workflows.progression import PATCH_CONSOLIDATED

EXAMPLES = PROJECT_ROOT / "examples"
POLICIES = PROJECT_ROOT / "policies"
CREDIT = EXAMPLES / "retail-credit-scorecard"
MARKETING = EXAMPLES / "marketing-propensity"

_registry: PolicyRegistry | None = None


def registry() -> PolicyRegistry:
    global _registry
    if _registry is None:
        _registry = PolicyRegistry.from_dir(POLICIES)
    return _registry


# ---- people ---------------------------------------------------------------------------------

DEV = Actor(user_id="u-dev", username="dana.dev", roles=[Role.model_developer], team="retail-risk")
DEV2 = Actor(user_id="u-dev2", username="dario.dev", roles=[Role.model_developer], team="retail-risk")
VALIDATOR = Actor(user_id="u-val", username="vera.validator", roles=[Role.model_validator], team="validation")
RISK1 = Actor(user_id="u-risk1", username="rita.risk", roles=[Role.model_risk_officer], team="model-risk")
RISK2 = Actor(user_id="u-risk2", username="rob.risk", roles=[Role.model_risk_officer], team="model-risk")
STRANGER = Actor(user_id="u-str", username="sam.stranger", roles=[Role.model_developer], team="payments")
MKT_DEV = Actor(user_id="u-mdev", username="mia.marketing", roles=[Role.model_developer],
                team="marketing-analytics")


# ---- database and evidence ------------------------------------------------------------------


@dataclass
class Env:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    store: EvidenceStore
    activities: ProgressionActivities
    target: RecordingPromotionTarget
    notifier: LogNotifier


@asynccontextmanager
async def app_env(url: str, tmp_path: Path) -> AsyncIterator[Env]:
    """A migrated database with the seeded feature catalog, an evidence store and the activities."""
    await prepare_database(url)
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    store = EvidenceStore(tmp_path / "evidence")
    target, notifier = RecordingPromotionTarget(), LogNotifier()
    activities = ProgressionActivities(sessionmaker, store, target, notifier, audit_chain=True)
    try:
        yield Env(engine, sessionmaker, store, activities, target, notifier)
    finally:
        await engine.dispose()


async def put_evidence(env: Env, name: str, data: bytes, filename: str, media_type: str | None = None
                       ) -> EvidenceRef:
    """What the API does before starting a workflow: store the bytes, record the blob row."""
    media = media_type or ("application/json" if filename.endswith(".json") else "text/markdown")
    sha = env.store.put(data)
    async with env.sessionmaker() as session:
        await record_blob(session, sha256=sha, size=len(data), media_type=media)
        await session.commit()
    return EvidenceRef(name=name, sha256=sha, filename=filename, size=len(data), media_type=media)


def example_spec(repo: Path, **changes: Any) -> tuple[ProgressionSpec, str]:
    """The example's progression.yaml, with top-level/nested changes (e.g. features=[...], version={...})."""
    data = yaml.safe_load((repo / "progression.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    text = yaml.safe_dump(data, sort_keys=False)
    return load_spec(text, filename="progression.yaml", registry=registry()), text


async def example_input(env: Env, repo: Path = CREDIT, *, submitted_by: Actor = DEV, **changes: Any
                        ) -> ProgressionInput:
    spec, text = example_spec(repo, **changes)
    evidence = {}
    for name, rel in spec.evidence.items():
        evidence[name] = await put_evidence(env, name, (repo / rel).read_bytes(), rel)
    loaded = registry().get(spec.model.business_intent)
    assert loaded is not None
    return ProgressionInput(spec=spec, spec_yaml=text, policy=loaded.policy, policy_hash=loaded.hash,
                            evidence=evidence, submitted_by=submitted_by)


def unique_version() -> dict[str, str]:
    """A fresh version id, so every test's workflow id is unique on the shared dev server."""
    return {"id": f"3.2.0-t{uuid.uuid4().hex[:10]}"}


# ---- Temporal -------------------------------------------------------------------------------


@asynccontextmanager
async def worker(client: Client, task_queue: str, env: Env) -> AsyncIterator[Worker]:
    async with tolerate_slow_activations(build_worker(client, task_queue=task_queue, activities=env.activities)) as w:
        yield w


async def start(client: Client, inp: ProgressionInput, task_queue: str) -> WorkflowHandle[Any, ProgressionState]:
    return await client.start_workflow(
        WORKFLOW_NAME, inp, id=inp.spec.progression_id, task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        result_type=ProgressionState)


@asynccontextmanager
async def running(client: Client, task_queue: str, env: Env, inp: ProgressionInput | None = None
                  ) -> AsyncIterator[WorkflowHandle[Any, ProgressionState]]:
    """A worker on ``task_queue`` and a progression started on it: ``inp``, or the credit example afresh."""
    inp = inp or await example_input(env, CREDIT, version=unique_version())
    async with worker(client, task_queue, env):
        yield await start(client, inp, task_queue)


async def state(handle: WorkflowHandle[Any, Any]) -> ProgressionState:
    return await within(handle.query(QUERY_STATE, result_type=ProgressionState), f"query state of {handle.id}")


async def finished(handle: WorkflowHandle[Any, Any]) -> ProgressionState:
    """The workflow's result, bounded (on the time-skipping server, awaiting it lets the server skip time)."""
    return await within(handle.result(), f"result of {handle.id}")


async def wait_state(handle: WorkflowHandle[Any, Any], predicate: Callable[[ProgressionState], bool]
                     ) -> ProgressionState:
    """Poll the query until ``predicate`` holds."""
    last: ProgressionState | None = None

    async def probe() -> ProgressionState | None:
        nonlocal last
        last = await state(handle)
        return last if predicate(last) else None

    return await eventually(probe, f"state of {handle.id}", describe=lambda _: (
        f"status={last and last.status} stage={last and last.current_stage} missing={last and last.missing}"))


async def settled(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until the workflow has nothing in flight (no workflow task, no activity pending): it has acted on
    everything it received so far, and only new input (an Update, a signal, a timer) moves it on. What a test
    then finds is the outcome, not a moment of it (never a fixed sleep, too short on a loaded machine)."""

    async def idle() -> bool:
        raw = (await handle.describe()).raw_description
        return not raw.pending_activities and not raw.HasField("pending_workflow_task")

    await eventually(idle, f"{handle.id} settled")


@contextmanager
def patch_off(patch_id: str) -> Iterator[None]:
    """``workflow.patched(patch_id)`` answers False, as for a progression started before the patch (and so before
    ``PATCH_CONSOLIDATED``, which stands for it). Only for a worker with ``UnsandboxedWorkflowRunner``: there the
    workflow module sees this very function."""
    original = temporalio.workflow.patched

    def patched(pid: str) -> bool:
        return False if pid in (patch_id, PATCH_CONSOLIDATED) else original(pid)

    temporalio.workflow.patched = patched  # type: ignore[assignment]  # the workflow calls it with the id alone
    try:
        yield
    finally:
        temporalio.workflow.patched = original


async def answered(handle: WorkflowHandle[Any, Any], answer: UpdateAnswer | ProgressionState) -> ProgressionState:
    """The state an Update left behind, as the API answers it (``api.services.progressions.answered_state``): the
    state itself from a progression started before patch ``lean-update-results``; else read after the answer (here
    by the query, there from the read model), which holds the answer's seq or a later one."""
    if isinstance(answer, ProgressionState):
        return answer
    if isinstance(answer, DecideResult) and answer.state is not None:
        return answer.state
    return await state(handle)


def at_gate(stage: str) -> Callable[[ProgressionState], bool]:
    return lambda s: s.current_stage == stage and s.status == "awaiting_approval"


async def decide(handle: WorkflowHandle[Any, Any], actor: Actor, stage: str, decision: DecisionKind | str,
                 comment: str = "looks sound", decision_id: str | None = None, update_id: str | None = None
                 ) -> DecideResult:
    """The decision's answer, with ``state`` filled in by :func:`answered` when the workflow left it out."""
    inp = DecideInput(stage=stage, decision=DecisionKind(decision), comment=comment, actor=actor,
                      decision_id=decision_id or str(uuid.uuid4()))
    result = await within(handle.execute_update(UPDATE_DECIDE, inp, id=update_id or inp.decision_id,
                                                result_type=DecideResult),
                          f"{actor.username}'s {decision} at {stage} of {handle.id}")
    return result.model_copy(update={"state": await answered(handle, result)})


async def submit(handle: WorkflowHandle[Any, Any], actor: Actor, evidence: dict[str, EvidenceRef]
                 ) -> ProgressionState:
    inp = EvidenceInput(evidence=evidence, actor=actor, request_id=str(uuid.uuid4()))
    answer = await within(handle.execute_update(UPDATE_SUBMIT_EVIDENCE, inp,
                                                result_type=EVIDENCE_ANSWER),
                          f"evidence submission to {handle.id}")
    return await answered(handle, answer)


async def withdraw(handle: WorkflowHandle[Any, Any], actor: Actor, reason: str = "superseded") -> ProgressionState:
    inp = WithdrawInput(reason=reason, actor=actor, request_id=str(uuid.uuid4()))
    answer = await within(handle.execute_update(UPDATE_WITHDRAW, inp,
                                                result_type=WITHDRAW_ANSWER),
                          f"withdrawal of {handle.id}")
    return await answered(handle, answer)


async def walk_to_production(handle: WorkflowHandle[Any, Any]) -> ProgressionState:
    """The credit route's happy path from the validation gate on."""
    await wait_state(handle, at_gate("validation"))
    await decide(handle, VALIDATOR, "validation", "approve", "independent validation complete")
    await wait_state(handle, at_gate("risk_review"))
    await decide(handle, RISK1, "risk_review", "approve", "residual risk accepted")
    await decide(handle, RISK2, "risk_review", "approve", "agree")
    return await wait_state(handle, lambda s: s.status == "in_production")


# ---- database assertions --------------------------------------------------------------------


async def events(env: Env, progression_id: str, event_type: str | None = None) -> list[AuditEvent]:
    async with env.sessionmaker() as session:
        query = select(AuditEvent).where(AuditEvent.progression_id == progression_id)
        if event_type:
            query = query.where(AuditEvent.event_type == event_type)
        return list((await session.scalars(query.order_by(AuditEvent.seq))).all())


async def decision_rows(env: Env, progression_id: str) -> list[DecisionRow]:
    async with env.sessionmaker() as session:
        query = select(DecisionRow).where(DecisionRow.progression_id == progression_id)
        return list((await session.scalars(query.order_by(DecisionRow.decided_at))).all())


async def count(env: Env, model: Any) -> int:
    async with env.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def accepted_update_ids(history: Any) -> list[str]:
    """Update ids that entered the workflow history (a refused Update must not be here)."""
    ids = []
    for event in history.events:
        if event.HasField("workflow_execution_update_accepted_event_attributes"):
            ids.append(event.workflow_execution_update_accepted_event_attributes.protocol_instance_id)
    return ids


async def wait_events(env: Env, progression_id: str, event_type: str, n: int = 1) -> list[AuditEvent]:
    """Audit events are written by activities just after the state changes: poll until ``n`` are there."""

    async def probe() -> list[AuditEvent] | None:
        found = await events(env, progression_id, event_type)
        return found if len(found) >= n else None

    return await eventually(probe, f"{n} {event_type} events of {progression_id}")
