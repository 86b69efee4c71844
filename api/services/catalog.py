"""The model catalog: models, their versions, and where each version stands."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, listing_conditions, require, require_visible
from api.deps import AppState
from api.errors import ApiError
from engine import audit
from engine.db import CatalogModel, IntentChange, ModelVersion, ProgressionRow, utcnow
from engine.lifecycle import EventType, Status
from engine.spec import progression_id
from engine.wire import IntentChangeOut, ModelDetail, ModelOut, ModelPage, VersionOut


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
    model = await _visible_model(session, principal, model_id)
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
    pending = await _pending_change(session, model_id)
    return ModelDetail(**_model_out(model, progs, len(versions)), versions=out_versions,  # type: ignore[arg-type]
                       pending_intent_change=intent_change_out(pending) if pending else None)


def intent_change_out(change: IntentChange) -> IntentChangeOut:
    return IntentChangeOut(id=change.id, model_id=change.model_id, from_intent=change.from_intent,
                           to_intent=change.to_intent, reason=change.reason,
                           status=change.status,  # type: ignore[arg-type]
                           proposed_by=change.proposed_by_username, proposed_at=change.proposed_at,
                           decided_by=change.decided_by_username, decided_at=change.decided_at,
                           decision_reason=change.decision_reason)


async def _visible_model(session: AsyncSession, principal: Principal, model_id: str) -> CatalogModel:
    """The model, if the caller reads the catalog and may see its team (another team's model answers 404)."""
    require(principal, Action.read_catalog)
    model = await session.get(CatalogModel, model_id)
    if model is None:
        raise ApiError(404, "not_found", f"model {model_id} not found")
    require_visible(principal, model.team, f"model {model_id}")
    return model


async def _model_for_intent_change(session: AsyncSession, principal: Principal, model_id: str) -> CatalogModel:
    """The model, if ``principal`` may act on a change of its intent: a model risk officer (the role acting, not
    held) independent of the owning team. A model another team's developer cannot see stays hidden (404)."""
    model = await _visible_model(session, principal, model_id)
    require(principal, Action.change_intent)
    if principal.team is None or principal.team == model.team:
        raise ApiError(403, "own_team" if principal.team else "no_team",
                       f"a model risk officer independent of team {model.team!r} decides a change of its intent")
    return model


async def _open_change(session: AsyncSession, model_id: str, change_id: str) -> IntentChange:
    """The proposal ``change_id`` of that model, still waiting for a decision."""
    change = await session.get(IntentChange, change_id)
    if change is None or change.model_id != model_id:
        raise ApiError(404, "not_found", f"intent change {change_id} of model {model_id} not found")
    if change.status != "pending":
        raise ApiError(409, "intent_change_not_pending", f"intent change {change_id} is {change.status}",
                       {"status": change.status})
    return change


async def _pending_change(session: AsyncSession, model_id: str) -> IntentChange | None:
    return (await session.execute(select(IntentChange).where(IntentChange.model_id == model_id,
                                                             IntentChange.status == "pending"))).scalar_one_or_none()


async def propose_intent_change(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str,
                                intent: str, reason: str) -> IntentChangeOut:
    """A model's intent decides which policy governs its next versions, so changing it could move a model to a
    weaker policy. One model risk officer, independent of the owning team, proposes; nothing changes until a
    second one approves that proposal (``approve_intent_change``). Running progressions keep their policy."""
    model = await _model_for_intent_change(session, principal, model_id)
    if app.registry.get(intent) is None:
        raise ApiError(422, "unknown_intent", f"no policy governs business intent {intent!r}",
                       {"known": sorted(app.registry.intents())})
    if intent == model.business_intent:
        raise ApiError(409, "intent_unchanged", f"model {model_id} is already governed as {intent!r}")
    if (pending := await _pending_change(session, model_id)) is not None:
        raise ApiError(409, "intent_change_pending",
                       f"model {model_id} already has a proposed change of intent ({pending.from_intent!r} to "
                       f"{pending.to_intent!r}, by {pending.proposed_by_username}): approve or reject it first",
                       {"change_id": pending.id})
    change = IntentChange(id=str(uuid.uuid4()), model_id=model_id, from_intent=model.business_intent,
                          to_intent=intent, reason=reason, status="pending", proposed_by=principal.id,
                          proposed_by_username=principal.username, proposed_at=utcnow())
    session.add(change)
    try:
        await session.flush()
    except IntegrityError:  # another officer's proposal for this model landed first: nothing of ours was written
        await session.rollback()
        raise ApiError(409, "intent_change_pending",
                       f"model {model_id} already has a proposed change of intent: approve or reject it first"
                       ) from None
    await _audit_intent(session, app, principal, EventType.model_intent_change_proposed, change)
    await session.commit()
    return intent_change_out(change)


async def approve_intent_change(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str,
                                change_id: str, reason: str) -> ModelDetail:
    """The second model risk officer applies the very proposal they name (its id binds the approval to what
    they read: a proposal withdrawn and replaced meanwhile is not approved by it). Never its proposer."""
    model = await _model_for_intent_change(session, principal, model_id)
    change = await _open_change(session, model_id, change_id)
    if principal.id == change.proposed_by or principal.username == change.proposed_by_username:
        raise ApiError(403, "own_proposal", "the model risk officer who proposed a change of intent cannot approve "
                                            "it: a second one must (maker-checker)",
                       {"proposed_by": change.proposed_by_username})
    if model.business_intent != change.from_intent:
        raise ApiError(409, "intent_changed_meanwhile",
                       f"model {model_id} is governed as {model.business_intent!r} now, not {change.from_intent!r} "
                       "as proposed")
    if app.registry.get(change.to_intent) is None:
        raise ApiError(422, "unknown_intent", f"no policy governs business intent {change.to_intent!r} any more",
                       {"known": sorted(app.registry.intents())})
    await _decide(session, change, principal, "approved", reason)
    model.business_intent = change.to_intent
    await audit.append_event(
        session, event_id=f"intent-{uuid.uuid4()}", event_type=EventType.model_intent_changed.value,
        occurred_at=utcnow(), actor_id=principal.id, model_id=model_id,
        payload={"from": change.from_intent, "to": change.to_intent, "reason": change.reason,
                 "change_id": change.id, "proposed_by": change.proposed_by_username,
                 "approved_by": principal.username, "approval_reason": reason, "by": principal.username,
                 "credential_id": principal.credential_id}, chain=app.settings.audit_chain)
    await session.commit()
    return await get_model(session=session, principal=principal, model_id=model_id)


async def reject_intent_change(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str,
                               change_id: str, reason: str) -> IntentChangeOut:
    """Another model risk officer rejects a proposal, or its proposer withdraws it; the intent stays."""
    await _model_for_intent_change(session, principal, model_id)
    change = await _open_change(session, model_id, change_id)
    await _decide(session, change, principal, "rejected", reason)
    await _audit_intent(session, app, principal, EventType.model_intent_change_rejected, change)
    await session.commit()
    return intent_change_out(change)


async def list_intent_changes(*, session: AsyncSession, principal: Principal, model_id: str
                              ) -> list[IntentChangeOut]:
    await _visible_model(session, principal, model_id)
    changes = (await session.execute(select(IntentChange).where(IntentChange.model_id == model_id)
                                     .order_by(IntentChange.proposed_at, IntentChange.id))).scalars().all()
    return [intent_change_out(c) for c in changes]


async def _decide(session: AsyncSession, change: IntentChange, principal: Principal, status: str,
                  reason: str) -> None:
    """Flip the proposal from pending in one conditional UPDATE: of two officers deciding it at once, one wins
    and the other is told it is no longer pending (nothing of theirs written)."""
    now = utcnow()
    flipped = await session.execute(
        update(IntentChange).where(IntentChange.id == change.id, IntentChange.status == "pending")
        .values(status=status, decided_by=principal.id, decided_by_username=principal.username, decided_at=now,
                decision_reason=reason).execution_options(synchronize_session=False))
    if flipped.rowcount != 1:  # type: ignore[attr-defined]
        await session.rollback()
        raise ApiError(409, "intent_change_not_pending", f"intent change {change.id} was decided meanwhile")
    await session.refresh(change)


async def _audit_intent(session: AsyncSession, app: AppState, principal: Principal, event_type: EventType,
                        change: IntentChange) -> None:
    await audit.append_event(
        session, event_id=f"intent-{uuid.uuid4()}", event_type=event_type.value, occurred_at=utcnow(),
        actor_id=principal.id, model_id=change.model_id,
        payload={"change_id": change.id, "from": change.from_intent, "to": change.to_intent,
                 "reason": change.reason, "proposed_by": change.proposed_by_username,
                 **({"decision_reason": change.decision_reason} if change.decision_reason else {}),
                 "by": principal.username, "credential_id": principal.credential_id},
        chain=app.settings.audit_chain)
