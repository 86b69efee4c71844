"""Life after production: monitoring results in, their history out, retirement requests and overrides.

Results are stored first (with a ``monitoring.stored`` audit event) and then delivered to the model's production
workflow (Update ``record_monitoring``), which evaluates the pinned policy's rules and acts. A retry with the same
figures for the same period is answered from the stored row (or delivered again if the first delivery did not
complete); other figures for a stored period are refused. Nothing is stored for a refused document.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from api.authz import Action, Principal, require, require_visible
from api.deps import AppState
from api.errors import ApiError
from api.services.progressions import (
    _closed_or_unavailable,
    _refusal_error,
    _refusal_from_update,
    answered_state,
    load_state,
)
from engine import audit
from engine.db import CatalogModel, ModelVersion, MonitoringResultRow, ProgressionRow, RetirementOverride, utcnow
from engine.errors import ProgressionError
from engine.lifecycle import EventType, ProgressionState, Status
from engine.loading import load_spec
from engine.monitoring import (
    MonitoringHistory,
    MonitoringResultOut,
    RetirementOverrideOut,
    Threshold,
    metrics_refusal,
    period_refusal,
    poster_refusal,
    retirement_refusal,
    role_poster_refusal,
    rule_thresholds,
)
from engine.policy import GovernancePolicy, Role
from workflows.contract import (
    RETIRE_ANSWER,
    UPDATE_MONITORING,
    UPDATE_RETIRE,
    MonitoringInput,
    MonitoringOutcome,
    RetireInput,
)


async def _model(session: AsyncSession, model_id: str) -> CatalogModel:
    model = await session.get(CatalogModel, model_id)
    if model is None:
        raise ApiError(404, "not_found", f"model {model_id} not found")
    return model


async def _in_production(session: AsyncSession, model_id: str) -> ProgressionRow | None:
    return (await session.scalars(select(ProgressionRow).where(
        ProgressionRow.model_id == model_id, ProgressionRow.status == Status.in_production.value)
        .order_by(ProgressionRow.started_at.desc()).limit(1))).first()


def _pinned_policy(app: AppState, row: ProgressionRow) -> GovernancePolicy | None:
    loaded = app.registry.by_hash(row.policy_hash) or app.registry.get(row.business_intent)
    return loaded.policy if loaded is not None else None


def results_digest(metrics: dict[str, Any]) -> str:
    canonical = json.dumps(metrics, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _out(row: MonitoringResultRow) -> MonitoringResultOut:
    outcome = row.outcome or {}
    return MonitoringResultOut(
        result_id=row.id, model_id=row.model_id, version_id=row.version_id, progression_id=row.progression_id,
        period=date.fromisoformat(row.period), metrics=row.metrics, posted_by=row.posted_by,
        posted_at=row.posted_at, delivered=row.delivered, breaches=outcome.get("breaches", []),
        actions=outcome.get("actions", []))


async def post_results(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str,
                       period: date, metrics: dict[str, Any]) -> MonitoringResultOut:
    """Store a period's results, then deliver them to the production workflow (idempotently)."""
    # Who can never post (an admin, a role no policy names) is refused before anything about the model is told.
    posters = {Role.monitor} | {role for loaded in app.registry.all() if loaded.policy.monitoring is not None
                                for role in loaded.policy.monitoring.posted_by}
    if refusal := role_poster_refusal(sorted(posters), principal.actor):
        raise _refusal_error(refusal)
    model = await _model(session, model_id)
    if not principal.service_only:  # a person (where the policy lets one post) sees only their team's models
        require_visible(principal, model.team, f"model {model_id}")
    row = await _in_production(session, model_id)
    if row is None:
        raise ApiError(409, "not_in_production", f"model {model_id} has no version in production; monitoring "
                       "results are for a model in production")
    policy = _pinned_policy(app, row)
    rules = policy.monitoring if policy is not None else None
    actor = principal.actor
    refusal = (poster_refusal(rules, actor) or period_refusal(period, datetime.now(UTC).date())
               or metrics_refusal(rules, metrics))
    if refusal is not None:
        raise _refusal_error(refusal)
    digest = results_digest(metrics)
    stored = await session.scalar(select(MonitoringResultRow).where(
        MonitoringResultRow.model_id == model_id, MonitoringResultRow.period == period.isoformat()))
    if stored is not None and stored.digest != digest:
        # Other figures for a stored period: refused and recorded (two sources disagreeing, or a poster trying to
        # overwrite the figures that judged the model, must be visible to the auditor).
        await audit.append_event(
            session, event_id=f"monitoring-refused-{uuid.uuid4()}", event_type=EventType.monitoring_refused.value,
            occurred_at=utcnow(), actor_id=principal.id, progression_id=stored.progression_id, model_id=model_id,
            payload={"code": "duplicate_period", "period": period.isoformat(), "stored": stored.id,
                     "stored_digest": stored.digest, "refused_digest": digest, "posted_by": principal.username,
                     "credential_id": principal.credential_id}, chain=app.settings.audit_chain)
        await session.commit()
        raise ApiError(409, "duplicate_period", f"results for period {period.isoformat()} of {model_id} were "
                       f"already posted ({stored.id}) with other figures", {"result_id": stored.id})
    if stored is None:
        stored = MonitoringResultRow(
            id=f"MR-{uuid.uuid4().hex[:16]}", model_id=model_id, version_id=row.version_id, progression_id=row.id,
            team=model.team, period=period.isoformat(), metrics=metrics, digest=digest, posted_by=principal.id,
            posted_at=utcnow(), delivered=False)
        session.add(stored)
        try:
            await session.flush()
            await audit.append_event(
                session, event_id=f"monitoring-{stored.id}", event_type=EventType.monitoring_stored.value,
                occurred_at=stored.posted_at, actor_id=principal.id, progression_id=row.id, model_id=model_id,
                payload={"result_id": stored.id, "period": period.isoformat(), "digest": digest,
                         "posted_by": principal.username, "credential_id": principal.credential_id},
                chain=app.settings.audit_chain)
            await session.commit()
        except IntegrityError:  # the same period raced in: answer as a retry of it
            await session.rollback()
            return await post_results(session=session, app=app, principal=principal, model_id=model_id,
                                      period=period, metrics=metrics)
    if stored.delivered:
        return _out(stored)
    return await _deliver(session, app, principal, stored)


DELIVERY_TIMEOUT_S = 30.0


async def _deliver(session: AsyncSession, app: AppState, principal: Principal,
                   stored: MonitoringResultRow) -> MonitoringResultOut:
    handle: WorkflowHandle[Any, Any] = app.temporal.get_workflow_handle(stored.progression_id)
    inp = MonitoringInput(result_id=stored.id, period=date.fromisoformat(stored.period), metrics=stored.metrics,
                          actor=principal.actor)
    try:
        # Bounded: an Update admitted just as the run continues as new may never complete on that run. The
        # result stays stored and undelivered; the client's retry delivers it to the current run.
        outcome = await asyncio.wait_for(
            handle.execute_update(UPDATE_MONITORING, inp, id=f"monitoring-{stored.id}",
                                  result_type=MonitoringOutcome),
            timeout=DELIVERY_TIMEOUT_S)
    except WorkflowUpdateFailedError as exc:
        # The workflow refused (it moved since the API checked): nothing of this document stays.
        await session.delete(stored)
        await session.commit()
        raise _refusal_error(_refusal_from_update(exc)) from None
    except RPCError as exc:  # stored, not delivered: a retry delivers it
        raise _closed_or_unavailable(exc, stored.progression_id) from None
    except TimeoutError:  # stored, not delivered: a retry delivers it
        raise ApiError(503, "temporal_unavailable", f"monitoring result {stored.id} is stored but its delivery to "
                       f"{stored.progression_id} did not complete in {DELIVERY_TIMEOUT_S:.0f} s; post the same "
                       "document again to deliver it") from None
    stored.delivered = True
    stored.outcome = {"breaches": [b.model_dump(mode="json") for b in outcome.breaches], "actions": outcome.actions}
    await session.commit()
    return _out(stored)


async def history(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str,
                  limit: int = 120) -> MonitoringHistory:
    require(principal, Action.read_catalog)
    model = await _model(session, model_id)
    require_visible(principal, model.team, f"model {model_id}")
    rows = list((await session.scalars(select(MonitoringResultRow).where(MonitoringResultRow.model_id == model_id)
                                       .order_by(MonitoringResultRow.period.desc()).limit(limit))).all())
    production = await _in_production(session, model_id)
    latest = production or (await session.scalars(select(ProgressionRow).where(
        ProgressionRow.model_id == model_id).order_by(ProgressionRow.started_at.desc()).limit(1))).first()
    current = app.registry.get(model.business_intent)
    policy = _pinned_policy(app, latest) if latest is not None else current.policy if current else None
    rules = policy.monitoring if policy is not None else None
    return MonitoringHistory(
        model_id=model_id, progression_id=latest.id if latest else None,
        metrics={n: d.kind.value for n, d in rules.metrics.items()} if rules else {},
        thresholds={m: [Threshold(rule_id=r, value=v) for r, v in pairs]
                    for m, pairs in (rule_thresholds(rules) if rules else {}).items()},
        results=[_out(r) for r in reversed(rows)])


# ---- retirement ---------------------------------------------------------------------------


async def dependents_in_production(session: AsyncSession, model_id: str) -> list[str]:
    """Production models whose spec declares ``model_id`` in ``depends_on``."""
    rows = (await session.execute(select(ProgressionRow.id, ModelVersion.spec_yaml).join(
        ModelVersion, (ModelVersion.model_id == ProgressionRow.model_id)
        & (ModelVersion.version_id == ProgressionRow.version_id)).where(
        ProgressionRow.status == Status.in_production.value, ProgressionRow.model_id != model_id))).all()
    out: list[str] = []
    for progression_id, spec_yaml in rows:
        try:
            spec = load_spec(spec_yaml)
        except ProgressionError:
            continue
        if model_id in (spec.depends_on or []):
            out.append(progression_id)
    return sorted(out)


async def _override_for(session: AsyncSession, model_id: str, dependents: list[str]) -> RetirementOverride | None:
    rows = (await session.scalars(select(RetirementOverride).where(RetirementOverride.model_id == model_id)
                                  .order_by(RetirementOverride.granted_at.desc()))).all()
    return next((r for r in rows if set(dependents) <= set(r.dependents)), None)


async def request_retirement(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str,
                             reason: str, replacement: str | None, request_id: str) -> ProgressionState:
    model = await _model(session, model_id)
    require_visible(principal, model.team, f"model {model_id}")
    require(principal, Action.request_retirement)
    row = await _in_production(session, model_id)
    if row is None:
        raise ApiError(409, "not_in_production", f"model {model_id} has no version in production to retire")
    state = await load_state(session, app, row.id)
    if state is None:
        raise ApiError(404, "not_found", f"progression {row.id} not found")
    dependents = await dependents_in_production(session, model_id)
    override = await _override_for(session, model_id, dependents) if dependents else None
    refusal = retirement_refusal(state, principal.actor, dependents=dependents,
                                 override_id=override.id if override else None)
    if refusal is not None:
        raise _refusal_error(refusal)
    handle: WorkflowHandle[Any, Any] = app.temporal.get_workflow_handle(row.id)
    inp = RetireInput(request_id=request_id, actor=principal.actor, reason=reason, replacement=replacement,
                      dependents=dependents, override_id=override.id if override else None,
                      override_by=override.granted_by_username if override else None)
    try:
        answer = await handle.execute_update(UPDATE_RETIRE, inp, result_type=RETIRE_ANSWER)
    except WorkflowUpdateFailedError as exc:  # (result_type is a union: the state before the patch)
        raise _refusal_error(_refusal_from_update(exc)) from None
    except RPCError as exc:
        raise _closed_or_unavailable(exc, row.id) from None
    return await answered_state(session, app, row.id, answer)


async def override_retirement(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str,
                              reason: str) -> RetirementOverrideOut:
    """A model risk officer independent of the owning team records that the model may retire although production
    models depend on it (audited; the retirement itself still goes through its gate)."""
    model = await _model(session, model_id)
    require(principal, Action.override_retirement)
    if Role.model_risk_officer not in principal.roles:
        raise ApiError(403, "forbidden", "a retirement override is a model risk officer's decision")
    if principal.team is None or principal.team == model.team:
        raise ApiError(403, "own_team" if principal.team else "no_team",
                       f"a model risk officer independent of team {model.team!r} records the override")
    dependents = await dependents_in_production(session, model_id)
    if not dependents:
        raise ApiError(409, "no_dependents", f"no model in production declares {model_id} a dependency; "
                       "nothing to override")
    row = RetirementOverride(id=f"RO-{uuid.uuid4().hex[:16]}", model_id=model_id, dependents=dependents,
                             reason=reason, granted_by=principal.id, granted_by_username=principal.username,
                             credential_id=principal.credential_id, granted_at=utcnow())
    session.add(row)
    await session.flush()
    await audit.append_event(
        session, event_id=f"override-{row.id}", event_type=EventType.retirement_override.value,
        occurred_at=row.granted_at, actor_id=principal.id, model_id=model_id,
        payload={"override_id": row.id, "dependents": dependents, "reason": reason, "by": principal.username,
                 "credential_id": principal.credential_id}, chain=app.settings.audit_chain)
    await session.commit()
    return RetirementOverrideOut(override_id=row.id, model_id=model_id, dependents=dependents, reason=reason,
                                 granted_by=principal.username, granted_at=row.granted_at)
