"""Users, tokens, enrollments and role grants (admin), and the caller's own identity.

Nobody gets around the four eyes:
- An admin never obtains a credential that acts as a person holding a deciding role (validator, risk
  officer): such a person gets their token by redeeming a one-time enrollment code themself
  (``POST /api/v1/enroll``), or by SSO. The token records who issued it, and every decision records the
  token it was made with.
- Deciding roles and the admin role are granted maker-checker: one admin proposes, a different admin
  approves; both steps are audited. An admin never holds a deciding role.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, require
from api.errors import ApiError
from api.schemas import EnrollmentCreated, Me, NewToken, RoleGrantOut, TokenOut, UserCreate, UserCreated, UserOut
from engine import audit
from engine.db import ApiToken, RoleGrant, User, utcnow
from engine.errors import NotFound
from engine.identity import (
    check_role_combination,
    create_enrollment,
    get_user,
    holds_deciding_role,
    issue_token,
    list_tokens,
    parse_roles,
    redeem_enrollment,
    revoke_token,
    role_grants,
    user_roles,
    username_taken,
    validate_team,
    validate_username,
)
from engine.lifecycle import DECIDING_ROLES, EventType
from engine.policy import Role

# Roles one admin alone cannot give: deciding roles (they count at gates), admin (a second admin
# account of one person would defeat maker-checker) and monitor (its figures open gates and raise findings).
MAKER_CHECKER_ROLES = DECIDING_ROLES | {Role.admin, Role.monitor}


def grant_out(grant: RoleGrant, username: str | None = None) -> RoleGrantOut:
    return RoleGrantOut(id=grant.id, user_id=grant.user_id, username=username, role=grant.role,
                        status=grant.status,  # type: ignore[arg-type]
                        reason=grant.reason, proposed_by=grant.proposed_by, proposed_at=grant.proposed_at,
                        approved_by=grant.approved_by, approved_at=grant.approved_at)


def user_out(user: User, grants: list[RoleGrant] | None = None) -> UserOut:
    return UserOut(id=user.id, username=user.username, display_name=user.display_name or "", team=user.team,
                   roles=list(user.roles or []), active=user.active, external=user.external,
                   created_at=user.created_at, grants=[grant_out(g, user.username) for g in grants or []])


def token_out(row: ApiToken) -> TokenOut:
    return TokenOut(id=row.id, prefix=row.prefix, name=row.name, created_at=row.created_at,
                    last_used_at=row.last_used_at, revoked_at=row.revoked_at, issued_by=row.issued_by)


async def _audit(session: AsyncSession, principal: Principal | None, event_type: EventType, payload: dict[str, object],
                 *, chain: bool, event_id: str | None = None) -> None:
    await audit.append_event(
        session, event_id=event_id or f"{event_type.value}-{uuid.uuid4()}", event_type=event_type.value,
        occurred_at=utcnow(), actor_id=principal.id if principal else None,
        payload={**payload, **({"by": principal.username, "credential_id": principal.credential_id}
                               if principal else {})}, chain=chain)


async def create_user(*, session: AsyncSession, principal: Principal, body: UserCreate,
                      chain: bool = True) -> UserCreated:
    """Roles one admin may give are applied at once; deciding and admin roles become pending grants that a
    second admin approves. A person with such a role gets no token here: they enroll themself."""
    require(principal, Action.manage_users)
    try:
        validate_username(body.username)
        validate_team(body.team)
        roles = parse_roles(body.roles)
        check_role_combination(roles, body.team)
    except Exception as exc:  # InvalidIdentity: a stable code, answered 422
        code = getattr(exc, "code", "invalid_identity")
        raise ApiError(422, code, getattr(exc, "message", str(exc)), getattr(exc, "details", None)) from None
    if (existing := await username_taken(session, body.username)) is not None:  # "Rita" beside "rita" too
        raise ApiError(409, "user_exists", f"user {existing!r} already exists", {"username": existing})
    now = utcnow()
    direct = [r for r in roles if r not in MAKER_CHECKER_ROLES]
    pending = [r for r in roles if r in MAKER_CHECKER_ROLES]
    user = User(id=str(uuid.uuid4()), username=body.username, display_name=body.display_name or "",
                team=body.team, roles=[r.value for r in direct], active=True, external=False, created_at=now)
    session.add(user)
    await session.flush()
    grants = []
    for role in roles:
        grant = RoleGrant(id=str(uuid.uuid4()), user_id=user.id, role=role.value,
                          status="pending" if role in pending else "approved", reason="requested at creation",
                          proposed_by=principal.username, proposed_at=now,
                          approved_by=None if role in pending else principal.username,
                          approved_at=None if role in pending else now)
        session.add(grant)
        grants.append(grant)
    await session.flush()
    token: NewToken | None = None
    steps: list[str] = []
    if pending:
        steps = [f"a second admin approves the {g.role} grant: POST /api/v1/role-grants/{g.id}/approve"
                 for g in grants if g.status == "pending"]
        steps.append(f"then an admin creates an enrollment (POST /api/v1/users/{user.id}/enrollments) and "
                     f"{user.username} redeems its code with POST /api/v1/enroll for their own token")
    else:
        row, secret = await issue_token(session, user, name="initial", issued_by=principal.username)
        token = NewToken(**token_out(row).model_dump(), token=secret)
    await _audit(session, principal, EventType.user_created, {
        "user_id": user.id, "username": user.username, "roles": user.roles, "team": user.team,
        "pending_roles": [r.value for r in pending], "token_id": token.id if token else None},
        chain=chain, event_id=f"user-{user.id}")
    for grant in grants:
        await _audit(session, principal, EventType.role_grant_proposed if grant.status == "pending"
                     else EventType.role_grant_approved,
                     {"grant_id": grant.id, "user_id": user.id, "username": user.username, "role": grant.role,
                      "proposed_by": grant.proposed_by, "approved_by": grant.approved_by}, chain=chain)
    await session.commit()
    return UserCreated(user=user_out(user, grants), token=token, next_steps=steps)


async def _user(session: AsyncSession, user_id: str) -> User:
    user = await get_user(session, user_id)
    if user is None:
        raise ApiError(404, "not_found", f"user {user_id} not found")
    return user


async def list_users(*, session: AsyncSession, principal: Principal) -> list[UserOut]:
    require(principal, Action.manage_users)
    grants: dict[str, list[RoleGrant]] = {}
    for grant in await role_grants(session):
        grants.setdefault(grant.user_id, []).append(grant)
    users = (await session.execute(select(User).order_by(User.username))).scalars()
    return [user_out(u, grants.get(u.id)) for u in users]


async def _pending_maker_checker(session: AsyncSession, user_id: str) -> list[str]:
    return [g.role for g in await role_grants(session, user_id)
            if g.status == "pending" and Role(g.role) in MAKER_CHECKER_ROLES]


async def new_token(*, session: AsyncSession, principal: Principal, user_id: str, name: str,
                    chain: bool = True) -> NewToken:
    require(principal, Action.manage_users)
    user = await _user(session, user_id)
    if (holds_deciding_role(user) or {Role.admin.value, Role.monitor.value} & set(user.roles or [])
            or await _pending_maker_checker(session, user.id)):
        raise ApiError(403, "self_enrollment_required",
                       f"{user.username} holds (or is being granted) a deciding, monitor or admin role: an admin "
                       "cannot hold a "
                       "credential that acts as them. Create an enrollment (POST /api/v1/users/{id}/enrollments) "
                       "whose one-time code they redeem themself (POST /api/v1/enroll), or use SSO",
                       {"user_id": user.id})
    row, token = await issue_token(session, user, name=name, issued_by=principal.username)
    await _audit(session, principal, EventType.token_issued, {
        "user_id": user.id, "username": user.username, "token_id": row.id, "prefix": row.prefix,
        "issued_by": principal.username}, chain=chain, event_id=f"token-{row.id}")
    await session.commit()
    return NewToken(**token_out(row).model_dump(), token=token)


async def new_enrollment(*, session: AsyncSession, principal: Principal, user_id: str,
                         chain: bool = True) -> EnrollmentCreated:
    require(principal, Action.manage_users)
    user = await _user(session, user_id)
    if user.id == principal.id:
        raise ApiError(403, "own_enrollment", "an admin cannot enroll themself a new credential this way")
    row, code = await create_enrollment(session, user, created_by=principal.username)
    await _audit(session, principal, EventType.enrollment_created, {
        "enrollment_id": row.id, "user_id": user.id, "username": user.username,
        "expires_at": row.expires_at.isoformat()}, chain=chain)
    await session.commit()
    return EnrollmentCreated(id=row.id, user_id=user.id, code=code, expires_at=row.expires_at,
                             created_by=principal.username)


async def enroll(*, session: AsyncSession, code: str, name: str, chain: bool = True) -> NewToken:
    """The person redeems their one-time code (no other credential needed) for their own token."""

    try:
        user, row, token, enrollment = await redeem_enrollment(session, code, name=name)
    except NotFound as exc:
        raise ApiError(404, exc.code, exc.message) from None
    await audit.append_event(
        session, event_id=f"token-{row.id}", event_type=EventType.token_issued.value, occurred_at=utcnow(),
        actor_id=user.id, payload={"user_id": user.id, "username": user.username, "token_id": row.id,
                                   "prefix": row.prefix, "issued_by": row.issued_by,
                                   "enrollment_id": enrollment.id, "by": user.username}, chain=chain)
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


# ---- role grants (maker-checker) ---------------------------------------------------------------


def _combination_error(user: User, role: Role) -> ApiError | None:
    held = set(user_roles(user)) | {role}
    try:
        check_role_combination(held, user.team)
    except Exception as exc:  # InvalidIdentity
        return ApiError(409, getattr(exc, "code", "invalid_identity"), getattr(exc, "message", str(exc)),
                        {"user_id": user.id, "role": role.value})
    return None


async def propose_grant(*, session: AsyncSession, principal: Principal, user_id: str, role: Role, reason: str,
                        chain: bool = True) -> RoleGrantOut:
    require(principal, Action.manage_users)
    user = await _user(session, user_id)
    if user.id == principal.id:
        raise ApiError(403, "own_role_grant", "nobody proposes a role for themself")
    if role.value in (user.roles or []):
        raise ApiError(409, "role_already_held", f"{user.username} already holds {role.value}")
    if error := _combination_error(user, role):
        raise error
    if any(g.role == role.value and g.status == "pending" for g in await role_grants(session, user.id)):
        raise ApiError(409, "grant_pending", f"a grant of {role.value} to {user.username} is already pending")
    now = utcnow()
    four_eyes = role in MAKER_CHECKER_ROLES
    grant = RoleGrant(id=str(uuid.uuid4()), user_id=user.id, role=role.value,
                      status="pending" if four_eyes else "approved", reason=reason, proposed_by=principal.username,
                      proposed_at=now, approved_by=None if four_eyes else principal.username,
                      approved_at=None if four_eyes else now)
    session.add(grant)
    if not four_eyes:
        user.roles = [*user.roles, role.value]
    await session.flush()
    await _audit(session, principal, EventType.role_grant_proposed if four_eyes else EventType.role_grant_approved,
                 {"grant_id": grant.id, "user_id": user.id, "username": user.username, "role": role.value,
                  "reason": reason, "proposed_by": principal.username, "approved_by": grant.approved_by},
                 chain=chain)
    await session.commit()
    return grant_out(grant, user.username)


async def approve_grant(*, session: AsyncSession, principal: Principal, grant_id: str,
                        chain: bool = True) -> RoleGrantOut:
    require(principal, Action.manage_users)
    grant = await session.get(RoleGrant, grant_id)
    if grant is None:
        raise ApiError(404, "not_found", f"role grant {grant_id} not found")
    if grant.status != "pending":
        raise ApiError(409, "grant_not_pending", f"role grant {grant_id} is {grant.status}")
    if grant.proposed_by == principal.username:
        raise ApiError(403, "same_admin", "the admin who proposed a role grant cannot approve it: a second admin "
                                          "must (maker-checker)", {"proposed_by": grant.proposed_by})
    user = await _user(session, grant.user_id)
    if user.id == principal.id:
        raise ApiError(403, "own_role_grant", "nobody approves a role for themself")
    role = Role(grant.role)
    if error := _combination_error(user, role):
        raise error
    grant.status, grant.approved_by, grant.approved_at = "approved", principal.username, utcnow()
    if role.value not in (user.roles or []):
        user.roles = [*user.roles, role.value]
    await session.flush()
    await _audit(session, principal, EventType.role_grant_approved, {
        "grant_id": grant.id, "user_id": user.id, "username": user.username, "role": role.value,
        "proposed_by": grant.proposed_by, "approved_by": principal.username}, chain=chain)
    await session.commit()
    return grant_out(grant, user.username)


async def list_grants(*, session: AsyncSession, principal: Principal, status: str | None = None
                      ) -> list[RoleGrantOut]:
    require(principal, Action.manage_users)
    names = {u.id: u.username for u in (await session.execute(select(User))).scalars()}
    return [grant_out(g, names.get(g.user_id)) for g in await role_grants(session)
            if status is None or g.status == status]


def me(principal: Principal) -> Me:
    require(principal, Action.read_self)
    return Me(**user_out(principal.user).model_dump(), actions=sorted(a.value for a in principal.actions),
              reads_all_teams=principal.reads_all_teams)
