"""People, not ids: the username and display name behind a user id, and a username (or id) typed as a filter.

Every answer that names a person by id (audit events, exports, progression states) carries the person's
username and display name beside it; every filter on a person accepts a username as well as an id, and one
that matches nobody is refused (422 ``unknown_user``), never answered with an empty result.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import ApiError
from engine.db import User
from engine.lifecycle import Person


async def people(session: AsyncSession, ids: Iterable[str | None]) -> dict[str, Person]:
    """user id -> Person for every id given that is a user (ids of nobody, such as ``system``, are left out)."""
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    rows = (await session.execute(select(User.id, User.username, User.display_name)
                                  .where(User.id.in_(wanted)))).all()
    return {uid: Person(id=uid, username=name, display_name=display or None) for uid, name, display in rows}


async def resolve_user(session: AsyncSession, value: str, field: str) -> str:
    """The user id named by ``value`` (a username or a user id); 422 ``unknown_user`` naming the field."""
    found = (await session.execute(select(User.id).where(or_(User.username == value, User.id == value))
                                   .limit(1))).scalar_one_or_none()
    if found is None:
        raise ApiError(422, "unknown_user", f"{field}: no user has the username or id {value!r}",
                       {"field": field, "value": value})
    return found
