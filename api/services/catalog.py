"""The model catalog: models, their versions, and where each version stands."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, listing_conditions, require, require_visible
from api.deps import AppState
from api.errors import ApiError
from engine import audit
from engine.db import CatalogModel, ModelVersion, ProgressionRow, utcnow
from engine.lifecycle import EventType, Status
from engine.policy import Role
from engine.spec import progression_id
from engine.wire import ModelDetail, ModelOut, ModelPage, VersionOut


async def _progressions_by_model(session: AsyncSession, model_ids: list[str]) -> dict[str, list[ProgressionRow]]:
    out: dict[str, list[ProgressionRow]] = {m: [] for m in model_ids}
    if not model_ids:
        return out
    rows = (await session.execute(select(ProgressionRow).where(ProgressionRow.model_id.in_(model_ids))
                                  .order_by(ProgressionRow.started_at))).scalars()
    for row in rows:
        out.setdefault(row.model_id, []).append(row)
    return out


def production_version(rows: list[ProgressionRow]) -> ProgressionRow | None:
    """The model's version in production now (the latest started, should several be marked so)."""
    live = [r for r in rows if r.status == Status.in_production.value]
    return max(live, key=lambda r: (r.started_at, r.id)) if live else None


def _model_out(model: CatalogModel, progs: list[ProgressionRow], versions_count: int) -> dict[str, object]:
    latest = progs[-1] if progs else None
    live = production_version(progs)
    return dict(id=model.id, name=model.name, team=model.team, business_intent=model.business_intent,
                created_at=model.created_at, updated_at=model.updated_at,
                latest_version=latest.version_id if latest else None,
                latest_status=latest.status if latest else None,
                production_version=live.version_id if live else None,
                production_progression_id=live.id if live else None, versions_count=versions_count,
                revalidation_overdue=any(p.revalidation_overdue for p in progs))


async def list_models(*, session: AsyncSession, principal: Principal, team: str | None = None,
                      intent: str | None = None, limit: int = 50, offset: int = 0) -> ModelPage:
    require(principal, Action.read_catalog)
    conds = listing_conditions(principal, CatalogModel.team, team=(CatalogModel.team, team),
                               intent=(CatalogModel.business_intent, intent))
    total = (await session.execute(select(func.count()).select_from(CatalogModel).where(*conds))).scalar_one()
    models = (await session.execute(select(CatalogModel).where(*conds).order_by(CatalogModel.id)
                                    .limit(limit).offset(offset))).scalars().all()
    ids = [m.id for m in models]
    progs = await _progressions_by_model(session, ids)
    counts = dict((await session.execute(select(ModelVersion.model_id, func.count()).where(
        ModelVersion.model_id.in_(ids)).group_by(ModelVersion.model_id))).all()) if ids else {}
    items = [ModelOut(**_model_out(m, progs.get(m.id, []), counts.get(m.id, 0))) for m in models]  # type: ignore[arg-type]
    next_offset = offset + len(items) if offset + len(items) < total else None
    return ModelPage(items=items, total=total, limit=limit, offset=offset, next_offset=next_offset)


FUNNEL = (
    ("Submitted", None),
    ("Not stopped (not rejected, withdrawn or failed)", {Status.running, Status.blocked, Status.awaiting_approval,
                                                        Status.changes_requested, Status.approved,
                                                        Status.in_production, Status.retired}),
    ("Approved (every stage passed)", {Status.approved, Status.in_production, Status.retired}),
    ("In production now", {Status.in_production}),
)


async def inventory_funnel(*, session: AsyncSession, principal: Principal,
                           intent: str | None = None) -> list[tuple[str, int]]:
    """How many model versions (progressions) the caller can see reached each step, widest first."""
    require(principal, Action.read_catalog)
    conds = listing_conditions(principal, ProgressionRow.team, intent=(ProgressionRow.business_intent, intent))
    counts = dict((await session.execute(select(ProgressionRow.status, func.count()).where(*conds)
                                         .group_by(ProgressionRow.status))).all())
    return [(label, sum(n for status, n in counts.items() if statuses is None or status in statuses))
            for label, statuses in FUNNEL]


async def get_model(*, session: AsyncSession, principal: Principal, model_id: str) -> ModelDetail:
    require(principal, Action.read_catalog)
    model = await session.get(CatalogModel, model_id)
    if model is None:
        raise ApiError(404, "not_found", f"model {model_id} not found")
    require_visible(principal, model.team, f"model {model_id}")
    versions = (await session.execute(select(ModelVersion).where(ModelVersion.model_id == model_id)
                                      .order_by(ModelVersion.created_at, ModelVersion.id))).scalars().all()
    progs = (await _progressions_by_model(session, [model_id]))[model_id]
    by_id = {p.id: p for p in progs}
    out_versions: list[VersionOut] = []
    for v in versions:
        p = by_id.get(progression_id(model_id, v.version_id))
        out_versions.append(VersionOut(
            version_id=v.version_id, source=v.source, artifact=v.artifact, features=list(v.features or []),
            created_at=v.created_at, progression_id=p.id if p else None, status=p.status if p else None,
            current_stage=p.current_stage if p else None, waiting_on=list(p.waiting_on or []) if p else [],
            revalidation_due_at=p.revalidation_due_at if p else None,
            revalidation_overdue=p.revalidation_overdue if p else False))
    return ModelDetail(**_model_out(model, progs, len(versions)), versions=out_versions)  # type: ignore[arg-type]


async def change_intent(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str, intent: str,
                        reason: str) -> ModelDetail:
    """A model's intent is fixed once registered; only a model risk officer, independent of the owning team,
    changes it (audited). Running progressions keep the policy they started under."""


    require(principal, Action.read_catalog)
    model = await session.get(CatalogModel, model_id)
    if model is None:
        raise ApiError(404, "not_found", f"model {model_id} not found")
    require_visible(principal, model.team, f"model {model_id}")
    if Role.model_risk_officer not in principal.roles:
        raise ApiError(403, "forbidden", "changing a model's business intent is a model risk officer's decision",
                       {"roles_allowed": [Role.model_risk_officer.value]})
    if principal.team is None or principal.team == model.team:
        raise ApiError(403, "own_team" if principal.team else "no_team",
                       f"a model risk officer independent of team {model.team!r} decides a change of its intent")
    if app.registry.get(intent) is None:
        raise ApiError(422, "unknown_intent", f"no policy governs business intent {intent!r}",
                       {"known": sorted(app.registry.intents())})
    if intent == model.business_intent:
        raise ApiError(409, "intent_unchanged", f"model {model_id} is already governed as {intent!r}")
    before = model.business_intent
    model.business_intent = intent
    await audit.append_event(
        session, event_id=f"intent-{uuid.uuid4()}", event_type=EventType.model_intent_changed.value,
        occurred_at=utcnow(), actor_id=principal.id, model_id=model_id,
        payload={"from": before, "to": intent, "reason": reason, "by": principal.username,
                 "credential_id": principal.credential_id}, chain=app.settings.audit_chain)
    await session.commit()
    return await get_model(session=session, principal=principal, model_id=model_id)
