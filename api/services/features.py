"""The feature catalog (admins write; every write is an audit event)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, require
from api.errors import ApiError
from api.schemas import FeatureIn, FeatureList, FeatureOut
from engine import audit
from engine.db import Feature, utcnow
from engine.features import upsert_feature
from engine.lifecycle import EventType
from engine.spec import FeatureName


def _out(row: Any) -> FeatureOut:
    return FeatureOut(name=row.name, description=row.description or "", tags=list(row.tags or []),
                      updated_at=getattr(row, "updated_at", None), updated_by=getattr(row, "updated_by", None))


async def list_features(*, session: AsyncSession, principal: Principal, tag: str | None = None) -> FeatureList:
    require(principal, Action.read_features)
    rows = (await session.execute(select(Feature).order_by(Feature.name))).scalars().all()
    items = [_out(r) for r in rows if tag is None or tag in (r.tags or [])]
    return FeatureList(items=items, total=len(items))


async def put_feature(*, session: AsyncSession, principal: Principal, name: str, body: FeatureIn,
                      chain: bool = True) -> FeatureOut:
    require(principal, Action.write_features)

    try:
        TypeAdapter(FeatureName).validate_python(name)
    except ValidationError:
        raise ApiError(422, "invalid_feature_name",
                       f"feature name {name!r} must start with a letter or '_' and hold letters, digits, '_'",
                       {"field": "name"}) from None
    tags = sorted({t.strip() for t in body.tags if t.strip()})
    before = await session.get(Feature, name)
    previous = None if before is None else {"description": before.description, "tags": list(before.tags or [])}
    if previous is not None and previous == {"description": body.description, "tags": tags}:
        # PUT is idempotent: a repeat (e.g. a retry after a lost answer) changes nothing and records nothing.
        return _out(before)

    result = await upsert_feature(session, name=name, description=body.description, tags=tags,
                                  updated_by=principal.username)
    await audit.append_event(
        session, event_id=f"feature-{uuid.uuid4()}", event_type=EventType.feature_updated.value,
        occurred_at=utcnow(), actor_id=principal.id,
        payload={"name": name, "description": body.description, "tags": tags, "previous": previous,
                 "username": principal.username}, chain=chain)
    await session.commit()
    row = await session.get(Feature, name)
    return _out(row if row is not None else result)
