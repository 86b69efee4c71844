"""Users, tokens, enrollments and role grants (admin), and the caller's own identity.

Nobody gets around the four eyes:
- An admin never obtains a credential that acts as a person holding a deciding role (validator, risk
  officer): such a person gets their token by redeeming a one-time enrollment code themself
  (``POST /api/v1/enroll``), or by SSO. The token records who issued it, and every decision records the
  token it was made with.
- Deciding roles and the admin role are granted maker-checker: one admin proposes, a different admin
  approves; both steps are audited. An admin never holds a deciding role.
- The enrollment code never reaches the admin: it is mailed to the person's registered address and the answer
  names only where it went (``a***@bank.example``). It is bound to its person (redeemed with their username, and
  when SSO is configured only by a caller whose SSO identity is theirs), single use, short-lived, stored hashed.
- An admin who changes a person's address tells the old address (a notice is mailed there first, and the change
  is audited); a credential re-issued after that, or to a person who held one before, acts in no maker-checker
  role until a second admin confirms it (the same maker-checker as role grants).
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, require
from api.errors import ApiError
from api.mail import MailUnavailable, SmtpMailer
from api.schemas import EnrollmentCreated, Me, NewToken, RoleGrantOut, TokenOut, UserCreate, UserCreated, UserOut
from engine import audit
from engine.db import ApiToken, RoleGrant, User, utcnow
from engine.errors import NotFound
from engine.identity import (
    ENROLLMENT_TTL,
    MAKER_CHECKER_ROLES,
    JWTVerifier,
    check_role_combination,
    create_enrollment,
    enrolled_by,
    enrollment_for,
    get_user,
    holds_deciding_role,
    issue_token,
    list_tokens,
    mailbox_holder,
    mask_email,
    parse_roles,
    redeem_enrollment,
    reissues_credential,
    revoke_token,
    role_grants,
    sso_username,
    supersede_enrollments,
    user_roles,
    username_taken,
    validate_email,
    validate_team,
    validate_username,
)
from engine.lifecycle import EventType
from engine.policy import Role
from engine.settings import Settings


def grant_out(grant: RoleGrant, username: str | None = None) -> RoleGrantOut:
    return RoleGrantOut(id=grant.id, user_id=grant.user_id, username=username, role=grant.role,
                        status=grant.status,  # type: ignore[arg-type]
                        reason=grant.reason, proposed_by=grant.proposed_by, proposed_at=grant.proposed_at,
                        approved_by=grant.approved_by, approved_at=grant.approved_at)


def user_out(user: User, grants: list[RoleGrant] | None = None) -> UserOut:
    return UserOut(id=user.id, username=user.username, display_name=user.display_name or "", team=user.team,
                   roles=list(user.roles or []), active=user.active, external=user.external,
                   created_at=user.created_at, email=user.email,
                   grants=[grant_out(g, user.username) for g in grants or []])


def token_out(row: ApiToken) -> TokenOut:
    return TokenOut(id=row.id, prefix=row.prefix, name=row.name, created_at=row.created_at,
                    last_used_at=row.last_used_at, revoked_at=row.revoked_at, issued_by=row.issued_by,
                    awaiting_confirmation=row.awaiting_confirmation, confirmed_by=row.confirmed_by,
                    confirmed_at=row.confirmed_at)


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
        validate_email(body.email)
        roles = parse_roles(body.roles)
        check_role_combination(roles, body.team)
    except Exception as exc:  # InvalidIdentity: a stable code, answered 422
        code = getattr(exc, "code", "invalid_identity")
        raise ApiError(422, code, getattr(exc, "message", str(exc)), getattr(exc, "details", None)) from None
    if (existing := await username_taken(session, body.username)) is not None:  # "Rita" beside "rita" too
        raise ApiError(409, "user_exists", f"user {existing!r} already exists", {"username": existing})
    if body.email is not None:
        await _refuse_shared_mailbox(session, body.email, user_id=None)
    now = utcnow()
    direct = [r for r in roles if r not in MAKER_CHECKER_ROLES]
    pending = [r for r in roles if r in MAKER_CHECKER_ROLES]
    user = User(id=str(uuid.uuid4()), username=body.username, display_name=body.display_name or "",
                team=body.team, roles=[r.value for r in direct], active=True, external=False, created_at=now,
                email=body.email)
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
        steps.append(f"then an admin creates an enrollment (POST /api/v1/users/{user.id}/enrollments): its code is "
                     f"mailed to {user.username}'s address, and they redeem it with POST /api/v1/enroll")
    else:
        row, secret = await issue_token(session, user, name="initial", issued_by=principal.username)
        token = NewToken(**token_out(row).model_dump(), token=secret)
    await _audit(session, principal, EventType.user_created, {
        "user_id": user.id, "username": user.username, "roles": user.roles, "team": user.team,
        "email": mask_email(user.email),
        "pending_roles": [r.value for r in pending], "token_id": token.id if token else None},
        chain=chain, event_id=f"user-{user.id}")
    for grant in grants:
        await _audit(session, principal, EventType.role_grant_proposed if grant.status == "pending"
                     else EventType.role_grant_approved,
                     {"grant_id": grant.id, "user_id": user.id, "username": user.username, "role": grant.role,
                      "proposed_by": grant.proposed_by, "approved_by": grant.approved_by}, chain=chain)
    await session.commit()
    return UserCreated(user=user_out(user, grants), token=token, next_steps=steps)


async def _refuse_shared_mailbox(session: AsyncSession, email: str, *, user_id: str | None) -> None:
    if (holder := await mailbox_holder(session, email, other_than=user_id)) is not None:
        raise ApiError(409, "email_in_use", f"{mask_email(email)} reaches the mailbox of {holder}: every person "
                       "needs an address of their own (enrollment codes are sent there)",
                       {"field": "email", "username": holder})


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


def _mail_error(exc: MailUnavailable) -> ApiError:
    return ApiError(503, "mail_unavailable", f"nothing was sent, and nothing changed: {exc}")


async def new_enrollment(*, session: AsyncSession, principal: Principal, user_id: str, mailer: SmtpMailer,
                         chain: bool = True) -> EnrollmentCreated:
    """A one-time code mailed to the person's registered address; the admin learns only where it went."""
    require(principal, Action.manage_users)
    user = await _user(session, user_id)
    if user.id == principal.id:
        raise ApiError(403, "own_enrollment", "an admin cannot enroll themself a new credential this way")
    if not user.email:
        raise ApiError(409, "no_email_address", f"{user.username} has no registered e-mail address: the code goes "
                       "only to the person (PUT /api/v1/users/{id}/email), never to the admin", {"user_id": user.id})
    if not mailer.configured:
        raise ApiError(503, "mail_unavailable", "no SMTP server is configured (PROGRESSION_SMTP_HOST): an "
                       "enrollment code is mailed to its person and never shown, so none can be created")
    reissue = await reissues_credential(session, user)
    sent_to = mask_email(user.email)
    row, code = await create_enrollment(session, user, created_by=principal.username, sent_to=sent_to,
                                        reissue=reissue)
    minutes = int(ENROLLMENT_TTL.total_seconds() // 60)
    try:
        await mailer.send(to=user.email, subject="Your Progression enrollment code", body=(
            f"Hello {user.display_name or user.username},\n\n{principal.username} asked for a Progression "
            f"credential for you (username {user.username}). Your one-time enrollment code, valid {minutes} "
            f"minutes:\n\n    {code}\n\nRedeem it yourself: POST /api/v1/enroll with "
            f'{{"code": "<the code>", "username": "{user.username}"}}. Nobody else has this code; if you did '
            "not expect it, do not redeem it and tell your security team.\n"))
    except MailUnavailable as exc:
        await session.rollback()
        raise _mail_error(exc) from None
    await _audit(session, principal, EventType.enrollment_created, {
        "enrollment_id": row.id, "user_id": user.id, "username": user.username, "sent_to": sent_to,
        "reissue": reissue, "expires_at": row.expires_at.isoformat()}, chain=chain)
    await session.commit()
    return EnrollmentCreated(id=row.id, user_id=user.id, sent_to=sent_to, expires_at=row.expires_at,
                             created_by=principal.username, reissue=reissue)


async def _sso_refusal(jwt: JWTVerifier | None, settings: Settings, bearer: str | None, user: User
                       ) -> ApiError | None:
    """With SSO configured, the code is redeemed only by a caller whose SSO identity is its person."""
    if jwt is None:
        return None
    claims = await jwt.verify(bearer) if bearer else None
    if claims is None:
        return ApiError(403, "sso_identity_required", "this installation has SSO: redeem the code signed in "
                        "(Authorization: Bearer <your SSO token>), so the code alone never makes a credential")
    name = sso_username(claims, settings)
    if name != user.username:
        return ApiError(403, "sso_identity_mismatch", "your SSO identity is not the person this code was mailed "
                        "to: only they redeem it")
    return None


async def enroll(*, session: AsyncSession, code: str, username: str, name: str, settings: Settings,
                 jwt: JWTVerifier | None = None, sso_bearer: str | None = None, chain: bool = True) -> NewToken:
    """The person redeems their one-time code (mailed to them; no other credential needed unless SSO is
    configured, when their SSO identity must match) for their own token."""
    try:
        enrollment, user = await enrollment_for(session, code, username)
    except NotFound as exc:
        raise ApiError(404, exc.code, exc.message) from None
    if (refusal := await _sso_refusal(jwt, settings, sso_bearer, user)) is not None:
        await audit.append_event(
            session, event_id=f"enrollment-refused-{uuid.uuid4()}", event_type=EventType.enrollment_refused.value,
            occurred_at=utcnow(), actor_id=None, payload={"enrollment_id": enrollment.id, "user_id": user.id,
                                                          "username": user.username, "code": refusal.code},
            chain=chain)
        await session.commit()
        raise refusal
    try:
        row, token = await redeem_enrollment(session, enrollment, user, name=name)
    except NotFound as exc:
        raise ApiError(404, exc.code, exc.message) from None
    await audit.append_event(
        session, event_id=f"token-{row.id}", event_type=EventType.token_issued.value, occurred_at=utcnow(),
        actor_id=user.id, payload={"user_id": user.id, "username": user.username, "token_id": row.id,
                                   "prefix": row.prefix, "issued_by": row.issued_by,
                                   "enrollment_id": enrollment.id, "by": user.username,
                                   "awaiting_confirmation": row.awaiting_confirmation}, chain=chain)
    await session.commit()
    return NewToken(**token_out(row).model_dump(), token=token)


async def change_email(*, session: AsyncSession, principal: Principal, user_id: str, email: str, reason: str,
                       mailer: SmtpMailer, chain: bool = True) -> UserOut:
    """A new registered address. The old address is told first (no notice sent, nothing changes); live codes
    end; the change is audited; and the next credential of this person waits for a second admin."""
    require(principal, Action.manage_users)
    user = await _user(session, user_id)
    if user.id == principal.id:
        # An admin who moved his own address away would free his mailbox for a "validator" he then registers
        # there (``email_in_use`` guards only addresses held by an account): a second admin changes it.
        raise ApiError(403, "own_address", "nobody changes their own registered address: a second admin must")
    validate_email(email)  # InvalidIdentity: 422 invalid_email, {"field": "email"} (api.errors answers it)
    if user.external:
        raise ApiError(409, "sso_user", f"{user.username} is provisioned from SSO: their address is the SSO's")
    if email == user.email:
        raise ApiError(409, "email_unchanged", f"{user.username}'s address is already {mask_email(email)}")
    await _refuse_shared_mailbox(session, email, user_id=user.id)
    old = user.email
    if old:
        try:
            await mailer.send(to=old, subject="Your Progression e-mail address was changed", body=(
                f"Hello {user.display_name or user.username},\n\n{principal.username} changed the e-mail address "
                f"of your Progression account ({user.username}) from this one to {mask_email(email)}.\n"
                f"Reason given: {reason}\n\nIf you did not ask for this, tell your security team now: a new "
                "credential for your account is now sent to the new address.\n"))
        except MailUnavailable as exc:
            raise _mail_error(exc) from None
    superseded = await supersede_enrollments(session, user.id)
    user.email, user.email_changed_at, user.email_changed_by = email, utcnow(), principal.username
    await _audit(session, principal, EventType.user_email_changed, {
        "user_id": user.id, "username": user.username, "old": mask_email(old), "new": mask_email(email),
        "reason": reason, "old_address_notified": bool(old), "enrollments_superseded": superseded}, chain=chain)
    await session.commit()
    return user_out(user, await role_grants(session, user.id))


async def confirm_token(*, session: AsyncSession, principal: Principal, user_id: str, token_id: str,
                        chain: bool = True) -> TokenOut:
    """A second admin confirms a re-issued credential: from now on it acts in its person's maker-checker roles.
    Not the admin who created the enrollment, nor the one who last changed the person's address, nor the person."""
    require(principal, Action.manage_users)
    user = await _user(session, user_id)
    row = await session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise ApiError(404, "token_not_found", f"user {user_id} has no token {token_id}")
    if not row.awaiting_confirmation:
        raise ApiError(409, "not_awaiting_confirmation", f"token {row.prefix}… needs no confirmation "
                       f"({'confirmed by ' + row.confirmed_by if row.confirmed_by else 'not re-issued'})")
    if user.id == principal.id:
        raise ApiError(403, "own_credential", "nobody confirms their own credential")
    enrolled = enrolled_by(row.issued_by)
    if principal.username in (enrolled, user.email_changed_by):
        raise ApiError(403, "same_admin", "the admin who created this enrollment or changed the person's address "
                       "cannot confirm the credential: a second admin must (maker-checker)",
                       {"enrolled_by": enrolled, "email_changed_by": user.email_changed_by})
    row.confirmed_by, row.confirmed_at = principal.username, utcnow()
    await _audit(session, principal, EventType.credential_confirmed, {
        "user_id": user.id, "username": user.username, "token_id": row.id, "prefix": row.prefix,
        "issued_by": row.issued_by, "confirmed_by": principal.username}, chain=chain)
    await session.commit()
    return token_out(row)


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
              reads_all_teams=principal.reads_all_teams, held_roles=sorted(r.value for r in principal.held_roles))
