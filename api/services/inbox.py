"""The inbox: gates waiting on the caller, minus those the caller may not decide, oldest first, paged by cursor.

Every open gate is a row of the read model (``progressions`` with ``gate_opened_at`` set); the database filters
(status, the caller's team scope, segregation of duties, the caller's roles among the roles still waiting), sorts
(gate opened, then id) and pages them (keyset, :mod:`api.cursors`). The inbox reads no workflow state and no
snapshot: only the page's rows, and of those the small gate record it shows. So a page costs the same at 100 and
100,000 open gates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, String, and_, cast, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, listing_conditions, require
from api.cursors import decode_cursor, encode_cursor
from api.errors import ApiError
from engine.db import ProgressionRow, utcnow
from engine.lifecycle import FINAL_STATUSES, StageState, gate_refusal
from engine.wire import Inbox, InboxItem

CURSOR_KIND = "inbox"
# The inbox counts its gates up to this many ("1,000+"): counting 100,000 open gates would cost 60 ms a request.
TOTAL_CAP = 1000
# Extra rows read per query while filling a page: a gate the caller already approved is skipped after the query.
_BATCH_SLACK = 10
# Queries per page at most: a page of gates the caller mostly approved already ends early (with its cursor)
# instead of reading on through every such gate.
_MAX_BATCHES = 10


def waiting_on_role(role: str) -> ColumnElement[bool]:
    """``role`` is among the roles a progression still waits on (``waiting_on``, a JSON list of role names).

    Matched on the column's JSON text (``"role"`` with its quotes), the same on SQLite and PostgreSQL; role
    names are a closed set of identifiers, so the pattern holds no wildcard."""
    return cast(ProgressionRow.waiting_on, String).like(f'%"{role}"%')


def inbox_conditions(principal: Principal) -> list[ColumnElement[bool]]:
    """WHERE conditions of the caller's inbox: the listing scope of :func:`api.authz.listing_conditions`, then
    the rules of :func:`engine.lifecycle.decision_refusal` that read the progression's columns (closed, own
    submission, own team, no gate role of the caller's still waiting). The gate's own rules (the caller's
    earlier decision on it) follow per row of the page, with :func:`engine.lifecycle.gate_refusal`."""
    conds: list[ColumnElement[bool]] = list(listing_conditions(principal, ProgressionRow.team))
    conds += [ProgressionRow.status.not_in([s.value for s in FINAL_STATUSES]),
              ProgressionRow.gate_opened_at.is_not(None), ProgressionRow.gate.is_not(None),
              ProgressionRow.submitted_by != principal.id]
    if principal.team is not None:
        conds.append(ProgressionRow.team != principal.team)
    else:  # no team, no independence to show (decision_refusal: no_team): no gate is the caller's
        conds.append(false())
    roles = sorted(r.value for r in principal.roles)
    conds.append(or_(*[waiting_on_role(r) for r in roles]) if roles else false())
    return conds


def _after(key: list[Any]) -> ColumnElement[bool]:
    if len(key) != 2 or not all(isinstance(k, str) for k in key):
        raise ValueError("inbox cursor key")
    opened = datetime.fromisoformat(key[0])
    return or_(ProgressionRow.gate_opened_at > opened,
               and_(ProgressionRow.gate_opened_at == opened, ProgressionRow.id > key[1]))


async def inbox(*, session: AsyncSession, principal: Principal, secret: str, cursor: str | None = None,
                limit: int = 50) -> Inbox:
    require(principal, Action.read_inbox)
    now = utcnow()
    actor = principal.actor
    conds = inbox_conditions(principal)
    # Counted up to TOTAL_CAP (+1 to know there are more): an exact count would read every open gate.
    counted = int((await session.execute(select(func.count()).select_from(
        select(ProgressionRow.id).where(*conds).limit(TOTAL_CAP + 1).subquery()))).scalar_one())
    after: ColumnElement[bool] | None = None
    if cursor:
        key = decode_cursor(cursor, secret=secret, kind=CURSOR_KIND, user_id=principal.id, filters={})
        try:
            after = _after(key)
        except (ValueError, TypeError):
            raise ApiError(422, "invalid_cursor", "cursor is not one this API issued for this listing",
                           {"cursor": cursor[:200]}) from None
    items: list[InboxItem] = []
    last: tuple[datetime, str] | None = None
    exhausted = False
    for _ in range(_MAX_BATCHES):
        if len(items) >= limit or exhausted:
            break
        want = limit - len(items) + _BATCH_SLACK
        where = [*conds, after] if after is not None else conds
        rows = (await session.execute(
            select(ProgressionRow.id, ProgressionRow.model_id, ProgressionRow.version_id, ProgressionRow.team,
                   ProgressionRow.business_intent, ProgressionRow.risk_tier, ProgressionRow.sla_due_at,
                   ProgressionRow.escalated, ProgressionRow.gate_opened_at, ProgressionRow.gate)
            .where(*where).order_by(ProgressionRow.gate_opened_at, ProgressionRow.id).limit(want))).all()
        exhausted = len(rows) < want
        for row in rows:
            if len(items) >= limit:
                exhausted = False
                break
            last = (row.gate_opened_at, row.id)
            if (item := _item(row, principal, actor, now)) is not None:
                items.append(item)
        if last is not None:
            after = _after([last[0].isoformat(), last[1]])
    next_cursor = None
    if not exhausted and last is not None:
        next_cursor = encode_cursor(secret=secret, kind=CURSOR_KIND, user_id=principal.id, filters={},
                                    key=[last[0].isoformat(), last[1]])
    return Inbox(items=items, total=min(counted, TOTAL_CAP), total_more=counted > TOTAL_CAP, limit=limit,
                 next_cursor=next_cursor)


def _item(row: Any, principal: Principal, actor: Any, now: datetime) -> InboxItem | None:
    gate: dict[str, Any] = row.gate or {}
    try:
        stage = StageState.model_validate(gate["stage"])
    except (ValueError, KeyError, TypeError):
        return None
    # The rest of gate_refusal reads the caller's own decisions on the gate: only a gate holding one needs it.
    if any(d.actor_id == actor.user_id for d in stage.decisions) and gate_refusal(stage, actor) is not None:
        return None  # e.g. the caller already approved this gate: one person counts once
    roles = [a.role for a in stage.approvals if not a.satisfied and a.role in principal.roles]
    if not roles:
        return None
    opened = row.gate_opened_at
    due = [a.due_at for a in stage.approvals if a.due_at is not None and a.role in roles]
    sla_due = min(due) if due else row.sla_due_at
    return InboxItem(
        progression_id=row.id, model_id=row.model_id, model_name=gate.get("model_name") or row.model_id,
        version_id=row.version_id, team=row.team, business_intent=row.business_intent,
        risk_tier=row.risk_tier, stage=stage.name, roles=roles,
        approvals=[a.model_dump(mode="json") for a in stage.approvals],
        gate_opened_at=opened, waiting_seconds=(now - opened).total_seconds(),
        sla_due_at=sla_due, seconds_to_sla=(sla_due - now).total_seconds() if sla_due else None,
        escalated=any(a.escalated for a in stage.approvals) or row.escalated,
        submitted_by=gate.get("submitted_by_username") or "")
