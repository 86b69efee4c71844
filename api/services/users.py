"""Users and tokens (admin), and the caller's own identity."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, require
from api.errors import ApiError
from api.schemas import Me, NewToken, TokenOut, UserCreate, UserCreated, UserOut
from engine import audit
from engine.db import ApiToken, User, utcnow
from engine.identity import create_user as _create_user
from engine.identity import get_user, issue_token, list_tokens, revoke_token
from engine.lifecycle import EventType


def user_out(user: User) -> UserOut:
    return UserOut(id=user.id, username=user.username, display_name=user.display_name or "", team=user.team,
                   roles=list(user.roles or []), active=user.active, external=user.external,
                   created_at=user.created_at)


def token_out(row: ApiToken) -> TokenOut:
    return TokenOut(id=row.id, prefix=row.prefix, name=row.name, created_at=row.created_at,
                    last_used_at=row.last_used_at, revoked_at=row.revoked_at)


async def create_user(*, session: AsyncSession, principal: Principal, body: UserCreate,
                      chain: bool = True) -> UserCreated:
    require(principal, Action.manage_users)
    user, token = await _create_user(session, username=body.username, roles=body.roles, team=body.team,
                                     display_name=body.display_name)
    row = (await session.execute(select(ApiToken).where(ApiToken.user_id == user.id))).scalar_one()
    await audit.append_event(
        session, event_id=f"user-{user.id}", event_type=EventType.user_created.value, occurred_at=utcnow(),
        actor_id=principal.id, payload={"user_id": user.id, "username": user.username, "roles": user.roles,
                                        "team": user.team, "by": principal.username}, chain=chain)
    await session.commit()
    return UserCreated(user=user_out(user), token=NewToken(**token_out(row).model_dump(), token=token))


async def _user(session: AsyncSession, user_id: str) -> User:
    user = await get_user(session, user_id)
    if user is None:
        raise ApiError(404, "not_found", f"user {user_id} not found")
    return user


async def list_users(*, session: AsyncSession, principal: Principal) -> list[UserOut]:
    require(principal, Action.manage_users)
    return [user_out(u) for u in (await session.execute(select(User).order_by(User.username))).scalars()]


async def new_token(*, session: AsyncSession, principal: Principal, user_id: str, name: str,
                    chain: bool = True) -> NewToken:
    require(principal, Action.manage_users)
    user = await _user(session, user_id)
    row, token = await issue_token(session, user, name=name)
    await audit.append_event(
        session, event_id=f"token-{row.id}", event_type=EventType.token_issued.value, occurred_at=utcnow(),
        actor_id=principal.id, payload={"user_id": user.id, "username": user.username, "token_id": row.id,
                                        "prefix": row.prefix, "by": principal.username}, chain=chain)
    await session.commit()
    return NewToken(**token_out(row).model_dump(), token=token)


async def tokens(*, session: AsyncSession, principal: Principal, user_id: str) -> list[TokenOut]:
    require(principal, Action.manage_users)
    await _user(session, user_id)
    return [token_out(t) for t in await list_tokens(session, user_id)]


async def revoke(*, session: AsyncSession, principal: Principal, user_id: str, token_id: str,
                 chain: bool = True) -> TokenOut:
    require(principal, Action.manage_users)
    row = await revoke_token(session, user_id=user_id, token_id=token_id)
    await audit.append_event(
        session, event_id=f"revoke-{uuid.uuid4()}", event_type="token.revoked", occurred_at=utcnow(),
        actor_id=principal.id, payload={"user_id": user_id, "token_id": token_id, "by": principal.username},
        chain=chain)
    await session.commit()
    return token_out(row)


def me(principal: Principal) -> Me:
    require(principal, Action.read_self)
    return Me(**user_out(principal.user).model_dump(), actions=sorted(a.value for a in principal.actions),
              reads_all_teams=principal.reads_all_teams)
