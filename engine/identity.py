"""Identity: users with roles and a team, API tokens, and SSO bearer JWTs.

API tokens are random (``secrets.token_urlsafe(32)`` behind the ``prg_`` prefix),
shown once and stored only as their SHA-256 hex digest. Looking a token up by its
digest means a comparison never runs over the secret itself, so timing reveals
nothing about it. Bearer JWTs from the bank's SSO are verified with PyJWT against a
JWKS (file or URL) when ``settings.jwt_issuer`` is set; their user is provisioned
(or updated from the claims) on first sight and marked ``external``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db import ApiToken, Enrollment, RoleGrant, User, utcnow
from engine.errors import Conflict, NotFound, ProgressionError
from engine.lifecycle import DECIDING_ROLES, Actor
from engine.policy import Role
from engine.settings import Settings

TOKEN_PREFIX = "prg_"
ENROLLMENT_PREFIX = "enr_"
# Short-lived: the code travels by e-mail to the person, who redeems it at once; a late one is asked for again.
ENROLLMENT_TTL = timedelta(hours=1)
BOOTSTRAP = "bootstrap"  # the operator's own path: the make-run seed and the `progression users` CLI
ENROLLMENT_ISSUER = "enrollment:"  # ``issued_by`` of a token its person redeemed: ``enrollment:<admin>``
# Why a token acts in none of its person's maker-checker roles (``credential_hold``; the refusal's code).
ADMIN_ISSUED_CREDENTIAL = "admin_issued_credential"
CREDENTIAL_UNCONFIRMED = "credential_unconfirmed"
LAST_USED_RESOLUTION = timedelta(minutes=1)
# \Z, not $: "$" also matches before a final newline, and "dana\n" would be another user who reads as dana.
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}\Z")
TEAM_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
# A plain mailbox (no display name, no comments, no whitespace, no CR/LF for a header to smuggle).
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+\Z")
# Roles one admin alone cannot give: deciding roles (they count at gates), admin (a second admin
# account of one person would defeat maker-checker) and monitor (its figures open gates and raise findings).
# A re-issued credential acts in none of them until a second admin confirms it.
MAKER_CHECKER_ROLES = DECIDING_ROLES | {Role.admin, Role.monitor}


class InvalidIdentity(ProgressionError):
    code = "invalid_identity"
    status = 422


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_roles(roles: Iterable[str | Role]) -> list[Role]:
    """Roles as the enum, de-duplicated, in a stable order; an unknown role names the valid ones."""
    out: list[Role] = []
    for raw in roles:
        try:
            role = Role(raw)
        except ValueError:
            valid = ", ".join(r.value for r in Role)
            raise InvalidIdentity(f"unknown role {raw!r}; valid roles: {valid}", details={"role": raw}) from None
        if role not in out:
            out.append(role)
    return out


def validate_username(username: str) -> str:
    if not USERNAME_RE.match(username):
        raise InvalidIdentity(
            f"username {username!r} must be 1-128 letters, digits or . _ @ - and start with a letter or digit",
            details={"field": "username"})
    return username


def validate_team(team: str | None) -> str | None:
    if team is not None and not TEAM_RE.match(team):
        raise InvalidIdentity(f"team {team!r} must be a slug (lowercase letters, digits, '-')",
                              details={"field": "team"})
    return team


def validate_email(email: str | None) -> str | None:
    if email is not None and (len(email) > 254 or not EMAIL_RE.match(email)):
        raise InvalidIdentity(f"{email!r} is not a plain e-mail address (name@domain)", code="invalid_email",
                              details={"field": "email"})
    return email


def mask_email(email: str | None) -> str:
    """What an admin sees of where a code went: ``alice@bank.example`` -> ``a***@bank.example``."""
    if not email or "@" not in email:
        return ""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}"


def user_roles(user: User) -> list[Role]:
    return [Role(r) for r in user.roles if r in Role._value2member_map_]


def actor_for(user: User, *, credential_id: str | None = None, credential_issued_by: str | None = None) -> Actor:
    """The workflow's view of a person, always built from the authenticated user (never a body)."""
    return Actor(user_id=user.id, username=user.username, display_name=user.display_name or None,
                 roles=user_roles(user), team=user.team, credential_id=credential_id,
                 credential_issued_by=credential_issued_by)


def check_role_combination(roles: Iterable[Role], team: str | None) -> None:
    """Admins hold no deciding role (they issue credentials and grant roles), and a decider has a team
    (without one, independence from the owning team cannot be shown)."""
    held = set(roles)
    deciding = sorted(r.value for r in held & DECIDING_ROLES)
    if Role.monitor in held and len(held) > 1:
        raise InvalidIdentity("monitor is the role of a service identity (the monitoring jobs) and is held alone: "
                              "a person who also develops, decides or administers must not post the figures that "
                              "judge a model", code="service_identity_alone",
                              details={"roles": sorted(r.value for r in held)})
    if Role.admin in held and deciding:
        raise InvalidIdentity(f"an admin cannot also hold a deciding role ({', '.join(deciding)}): whoever "
                              "issues credentials and grants roles must not decide", code="admin_cannot_decide",
                              details={"roles": sorted(r.value for r in held)})
    if deciding and team is None:
        raise InvalidIdentity(f"a person holding {', '.join(deciding)} needs a team, so independence from the "
                              "owning team can be shown", code="team_required", details={"field": "team"})


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_username(session: AsyncSession, username: str) -> User | None:
    return (await session.execute(select(User).where(User.username == username))).scalar_one_or_none()


async def username_taken(session: AsyncSession, username: str) -> str | None:
    """The existing username equal to ``username`` but for case (``Rita`` beside ``rita``), if any: two accounts
    whose names read alike in an audit trail, an export or an approval list are refused."""
    return await session.scalar(select(User.username).where(func.lower(User.username) == username.lower()).limit(1))


def mailbox(email: str) -> str:
    """The mailbox an address delivers to, for comparison: case aside, and a sub-address (``name+tag@domain``)
    is its mailbox's (``name@domain``): mail servers deliver both to the same person."""
    local, _, domain = email.rpartition("@")
    return f"{local.split('+', 1)[0].lower()}@{domain.lower()}"


async def mailbox_holder(session: AsyncSession, email: str, *, other_than: str | None = None) -> str | None:
    """The username of another account (active or not) registered with ``email``'s mailbox, if any.

    Every person has a mailbox of their own: an enrollment code goes there, so an admin who registers a new
    "validator" with his own address (or a sub-address of it, or another person's) would receive the code and
    redeem it himself. The scan is in Python because the sub-address rule is not SQL; the users table is small."""
    wanted = mailbox(email)
    rows = await session.execute(select(User.id, User.username, User.email).where(User.email.is_not(None)))
    return next((name for uid, name, address in rows if uid != other_than and mailbox(address or "") == wanted), None)


async def create_user(
    session: AsyncSession,
    *,
    username: str,
    roles: Iterable[str | Role],
    team: str | None = None,
    display_name: str = "",
    token_name: str = "initial",
    granted_by: str = BOOTSTRAP,
    email: str | None = None,
) -> tuple[User, str]:
    """Create a user with roles and their first API token; returns the token in clear (the only time it exists).

    This is the operator's bootstrap path (the ``make run`` seed and the ``progression users`` CLI,
    both run by whoever runs the installation): roles are recorded as grants by ``granted_by`` and
    the token as issued by it. The API never uses it for deciding roles (see ``api.services.users``).
    Flushes but does not commit: the caller owns the transaction.
    """
    validate_username(username)
    validate_team(team)
    validate_email(email)
    parsed = parse_roles(roles)
    if not parsed:
        raise InvalidIdentity("a user needs at least one role", details={"field": "roles"})
    check_role_combination(parsed, team)
    if (existing := await username_taken(session, username)) is not None:
        raise Conflict(f"user {existing!r} already exists", code="user_exists", details={"username": existing})
    user = User(id=str(uuid.uuid4()), username=username, display_name=display_name or "",
                team=team, roles=[r.value for r in parsed], active=True, external=False, created_at=utcnow(),
                email=email)
    session.add(user)
    await session.flush()
    now = utcnow()
    for role in parsed:
        session.add(RoleGrant(id=str(uuid.uuid4()), user_id=user.id, role=role.value, status="approved",
                              reason="created with the user", proposed_by=granted_by, proposed_at=now,
                              approved_by=granted_by, approved_at=now))
    _, token = await issue_token(session, user, name=token_name, issued_by=granted_by)
    return user, token


async def issue_token(session: AsyncSession, user: User, *, name: str = "",
                      issued_by: str | None = BOOTSTRAP) -> tuple[ApiToken, str]:
    """A new API token for ``user``; the clear token is returned once and never stored."""
    token = new_token()
    row = ApiToken(id=str(uuid.uuid4()), user_id=user.id, token_hash=hash_token(token),
                   prefix=token[: len(TOKEN_PREFIX) + 6], name=name[:100], created_at=utcnow(),
                   issued_by=issued_by)
    session.add(row)
    await session.flush()
    return row, token


async def list_tokens(session: AsyncSession, user_id: str) -> list[ApiToken]:
    rows = await session.execute(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.created_at))
    return list(rows.scalars())


async def revoke_token(session: AsyncSession, *, user_id: str, token_id: str) -> ApiToken:
    row = await session.get(ApiToken, token_id)
    if row is None or row.user_id != user_id:
        raise NotFound(f"user {user_id} has no token {token_id}", code="token_not_found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.flush()
    return row


async def authenticate_token(session: AsyncSession, token: str) -> User | None:
    """The active user owning this unrevoked token, or None. Records when the token was last used."""
    found = await authenticate_credential(session, token)
    return found[0] if found else None


async def authenticate_credential(session: AsyncSession, token: str) -> tuple[User, ApiToken] | None:
    """The active user and the unrevoked token row, or None. Records when the token was last used."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = (await session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    user = await session.get(User, row.user_id)
    if user is None or not user.active:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        # Coarse on purpose: one write per token per minute, not one per request.
        await session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        await session.commit()
    return user, row


def credential_holder(issued_by: str | None) -> str | None:
    """Who else holds an API token: the admin who issued it saw its secret. ``None`` when nobody but its owner
    does: redeemed from an enrollment code (``enrollment:<admin>``) or the operator's bootstrap."""
    if issued_by is None or issued_by == BOOTSTRAP or issued_by.startswith(ENROLLMENT_ISSUER):
        return None
    return issued_by


def enrolled_by(issued_by: str | None) -> str | None:
    """The admin whose enrollment the token was redeemed from (``enrollment:<admin>``), else None."""
    if issued_by is None or not issued_by.startswith(ENROLLMENT_ISSUER):
        return None
    return issued_by.removeprefix(ENROLLMENT_ISSUER)


def credential_hold(row: ApiToken) -> str | None:
    """Why this token acts in none of its person's maker-checker roles (deciding, admin, monitor), or None.

    ``admin_issued_credential``: an admin issued it (``POST /users/{id}/tokens``) and saw its secret; a role
    granted to the account later does not reach that token (the person enrolls for a credential of their own).
    ``credential_unconfirmed``: re-issued by enrollment, until a second admin confirms it."""
    if credential_holder(row.issued_by) is not None:
        return ADMIN_ISSUED_CREDENTIAL
    if row.awaiting_confirmation:
        return CREDENTIAL_UNCONFIRMED
    return None


def holds_deciding_role(user: User) -> bool:
    return bool(set(user_roles(user)) & DECIDING_ROLES)


async def reissues_credential(session: AsyncSession, user: User) -> bool:
    """Whether an enrollment for ``user`` now re-issues a credential: they held one before (any token, even
    revoked), or an admin changed their e-mail address. Its token then waits for a second admin's confirmation."""
    if user.email_changed_at is not None:
        return True
    return bool(await session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user.id)))


async def create_enrollment(session: AsyncSession, user: User, *, created_by: str, sent_to: str = "",
                            reissue: bool = False) -> tuple[Enrollment, str]:
    """A one-time code for ``user`` alone (only its hash is stored); any earlier unredeemed code of theirs is
    superseded, so one code at most is live per person."""
    now = utcnow()
    await session.execute(update(Enrollment).where(
        Enrollment.user_id == user.id, Enrollment.redeemed_at.is_(None), Enrollment.superseded_at.is_(None)
    ).values(superseded_at=now))
    code = ENROLLMENT_PREFIX + secrets.token_urlsafe(24)
    row = Enrollment(id=str(uuid.uuid4()), user_id=user.id, code_hash=hash_token(code), created_by=created_by,
                     created_at=now, expires_at=now + ENROLLMENT_TTL, sent_to=sent_to, reissue=reissue)
    session.add(row)
    await session.flush()
    return row, code


async def supersede_enrollments(session: AsyncSession, user_id: str) -> int:
    """End every live code of ``user_id`` (its address changed: a code mailed to the old one no longer works)."""
    result = await session.execute(update(Enrollment).where(
        Enrollment.user_id == user_id, Enrollment.redeemed_at.is_(None), Enrollment.superseded_at.is_(None)
    ).values(superseded_at=utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


_INVALID = "the enrollment code is unknown, used, superseded or expired, or not this user's"


async def enrollment_for(session: AsyncSession, code: str, username: str) -> tuple[Enrollment, User]:
    """The live enrollment of this code and its person; the code is bound to them (``username`` must name them).
    Unknown, used, superseded, expired and someone else's codes answer alike (no oracle)."""
    if not code.startswith(ENROLLMENT_PREFIX) or len(code) > 200:
        raise NotFound(_INVALID, code="enrollment_invalid")
    row = (await session.execute(select(Enrollment).where(Enrollment.code_hash == hash_token(code)))
           ).scalar_one_or_none()
    if (row is None or row.redeemed_at is not None or row.superseded_at is not None
            or row.expires_at <= utcnow()):
        raise NotFound(_INVALID, code="enrollment_invalid")
    user = await session.get(User, row.user_id)
    if user is None or not user.active or user.username != username:
        raise NotFound(_INVALID, code="enrollment_invalid")
    return row, user


async def redeem_enrollment(session: AsyncSession, row: Enrollment, user: User, *, name: str = ""
                            ) -> tuple[ApiToken, str]:
    """Exchange a live enrollment (see :func:`enrollment_for`) for a new token of its person (single use)."""
    # Single use even under concurrent redemption: only the request that flips redeemed_at wins.
    claimed = await session.execute(update(Enrollment).where(
        Enrollment.id == row.id, Enrollment.redeemed_at.is_(None), Enrollment.superseded_at.is_(None)
    ).values(redeemed_at=utcnow()))
    if not claimed.rowcount:  # type: ignore[attr-defined]
        raise NotFound(_INVALID, code="enrollment_invalid")
    token_row, token = await issue_token(session, user, name=name or "enrolled",
                                         issued_by=f"{ENROLLMENT_ISSUER}{row.created_by}")
    token_row.confirmation_required = bool(row.reissue)
    row.token_id = token_row.id
    await session.flush()
    return token_row, token


async def role_grants(session: AsyncSession, user_id: str | None = None) -> list[RoleGrant]:
    q = select(RoleGrant).order_by(RoleGrant.proposed_at, RoleGrant.id)
    if user_id is not None:
        q = q.where(RoleGrant.user_id == user_id)
    return list((await session.execute(q)).scalars())

# ---- SSO bearer JWTs ---------------------------------------------------------------------------


class JWTVerifier:
    """Verifies bearer JWTs: signature against the JWKS (file or URL), issuer, audience, expiry."""

    ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]

    def __init__(self, settings: Settings) -> None:
        if not settings.jwt_issuer or not settings.jwt_jwks:
            raise ValueError("PROGRESSION_JWT_ISSUER and PROGRESSION_JWT_JWKS must both be set for SSO tokens")
        self.settings = settings
        source = settings.jwt_jwks
        self._client: jwt.PyJWKClient | None = None
        self._keyset: jwt.PyJWKSet | None = None
        if source.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(source, cache_keys=True, lifespan=300, timeout=10)
        else:
            self._keyset = jwt.PyJWKSet.from_dict(json.loads(Path(source).read_text()))

    def _key_for(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._keyset is not None
        kid = jwt.get_unverified_header(token).get("kid")
        keys = [k for k in self._keyset.keys if kid is None or k.key_id == kid]
        if not keys:
            raise jwt.InvalidTokenError(f"no key with kid {kid!r} in the JWKS")
        return keys[0].key

    def verify_sync(self, token: str) -> dict[str, Any]:
        key = self._key_for(token)
        return jwt.decode(
            token, key, algorithms=self.ALGORITHMS, issuer=self.settings.jwt_issuer,
            audience=self.settings.jwt_audience,
            options={"require": ["exp", "iss", "sub"], "verify_aud": self.settings.jwt_audience is not None},
        )

    async def verify(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid token, or None. A JWKS URL is fetched off the event loop."""
        try:
            if self._client is not None:
                return await asyncio.to_thread(self.verify_sync, token)
            return self.verify_sync(token)
        except (jwt.PyJWTError, ValueError):
            return None


def _claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name; dotted names reach into nested objects (e.g. ``realm_access.roles``)."""
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def sso_username(claims: dict[str, Any], settings: Settings) -> Any:
    """The username verified SSO claims name (the configured claim, else ``sub``)."""
    return _claim(claims, settings.jwt_username_claim) or claims.get("sub")


async def provision_jwt_user(session: AsyncSession, claims: dict[str, Any], settings: Settings) -> User | None:
    """The user for verified SSO claims, created or updated from them (roles and team follow the SSO)."""
    username = sso_username(claims, settings)
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        return None
    raw_roles = _claim(claims, settings.jwt_roles_claim) or []
    if isinstance(raw_roles, str):
        raw_roles = raw_roles.split()
    roles = [r for r in raw_roles if isinstance(r, str) and r in Role._value2member_map_]
    if Role.admin.value in roles:  # an admin never also decides, whatever the SSO says
        roles = [r for r in roles if Role(r) not in DECIDING_ROLES]
    if Role.monitor.value in roles and len(roles) > 1:  # the monitoring role is a service's, held alone
        roles = [r for r in roles if r != Role.monitor.value]
    team = _claim(claims, settings.jwt_team_claim)
    team = team if isinstance(team, str) and TEAM_RE.match(team) else None
    name_claim = claims.get("name")
    display: str = name_claim if isinstance(name_claim, str) else ""
    user = await get_user_by_username(session, username)
    if user is None and await username_taken(session, username) is not None:
        return None  # another account's name but for case: not a new account that reads like it
    if user is None:
        user = User(id=str(uuid.uuid4()), username=username, display_name=display[:200], team=team,
                    roles=roles, active=True, external=True, created_at=utcnow())
        session.add(user)
    elif not user.external:
        # A local account is never taken over by an SSO identity of the same name.
        return None
    elif not user.active:
        return None
    else:
        if user.roles != roles or user.team != team or (display and user.display_name != display):
            user.roles, user.team = roles, team
            user.display_name = display[:200] or user.display_name
    try:
        await session.commit()
    except IntegrityError:
        # Two first requests of the same new SSO user raced; the other one created it.
        await session.rollback()
        user = await get_user_by_username(session, username)
        return user if user is not None and user.external and user.active else None
    return user
