"""People for tests, benchmarks and the crash harness: real users with real API tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from engine.identity import create_user

# username -> (roles, team)
People = Mapping[str, tuple[Sequence[str], str | None]]


async def create_people(session: AsyncSession, people: People) -> tuple[dict[str, str], dict[str, str]]:
    """Create every person (the caller commits); returns (username -> token, username -> user id)."""
    tokens: dict[str, str] = {}
    ids: dict[str, str] = {}
    for name, (roles, team) in people.items():
        user, token = await create_user(session, username=name, roles=list(roles), team=team,
                                        email=f"{name}@bank.example")
        tokens[name], ids[name] = token, user.id
    return tokens, ids
