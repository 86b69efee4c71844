"""Browser sessions and CSRF protection for the web UI.

The session is one cookie signed with ``settings.secret_key`` (itsdangerous): it carries a
CSRF token and, once signed in, the user id, the id of the API token used to sign in and the
id of the session's row in ``web_sessions``. It never carries the token itself. Every request
re-checks that the session row is neither ended nor expired, the token still unrevoked and the
user still active: signing out ends the row, so a copy of the cookie replayed afterwards is
refused (the signature alone would be valid for 12 hours), and revoking a token also ends its
browser sessions.

A decision posted on a session that ended meanwhile is not lost and not submitted either: when
the stale cookie is genuine and the form carries its CSRF token, the form is kept server-side
(``keep_pending``), the person signs in again, and the progression's page shows the decision
filled in for them to confirm (``carry_pending``, ``take_pending``); only the same person sees it.

The cookie is HttpOnly, SameSite=Lax and Secure when the request came over https.
CSRF is session-bound: every form carries ``csrf_token`` (htmx sends it as the
``X-CSRF-Token`` header too) and every POST compares it, in constant time, with the
token in the signed cookie. Anonymous visitors get a session with a CSRF token as
well, so the sign-in form is protected against login CSRF. Signing in or out rotates
the token.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Principal
from engine.db import ApiToken, BrowserSession, User, utcnow

COOKIE_NAME = "progression_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_MAX_AGE = 12 * 3600  # seconds; a working day, then sign in again
PENDING_MAX_AGE = 24 * 3600  # a decision kept through sign-in waits this long at most
_SALT = "progression.web.session.v1"


class LoginRequired(Exception):
    """Raised by a web route when nobody is signed in; answered with a redirect to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class CsrfFailed(Exception):
    """A POST without the session's CSRF token; answered with a 403 page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class WebSession:
    csrf: str
    user_id: str | None = None
    token_id: str | None = None
    session_id: str | None = None  # the row in web_sessions (signed in, or holding a pending decision)
    dirty: bool = False  # the cookie must be (re)written on the response
    extra: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {"csrf": self.csrf, "uid": self.user_id, "tid": self.token_id, "sid": self.session_id}


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=_SALT)


def new_session(user_id: str | None = None, token_id: str | None = None,
                session_id: str | None = None) -> WebSession:
    return WebSession(csrf=secrets.token_urlsafe(32), user_id=user_id, token_id=token_id, session_id=session_id,
                      dirty=True)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def load_session(request: Request, secret_key: str) -> WebSession:
    """The session from the signed cookie, or a fresh anonymous one (bad signature, expired, absent)."""
    cached = getattr(request.state, "web_session", None)
    if isinstance(cached, WebSession):
        return cached
    raw = request.cookies.get(COOKIE_NAME)
    session: WebSession | None = None
    if raw:
        try:
            data = _serializer(secret_key).loads(raw, max_age=SESSION_MAX_AGE)
        except BadSignature:  # includes SignatureExpired
            data = None
        if isinstance(data, dict) and isinstance(data.get("csrf"), str) and len(data["csrf"]) >= 32:
            session = WebSession(csrf=data["csrf"], user_id=_str(data.get("uid")), token_id=_str(data.get("tid")),
                                 session_id=_str(data.get("sid")))
    if session is None:
        session = new_session()
    request.state.web_session = session
    return session


def replace_session(request: Request, session: WebSession) -> WebSession:
    session.dirty = True
    request.state.web_session = session
    return session


def write_cookie(request: Request, response: Response, secret_key: str) -> Response:
    """Set the session cookie on ``response`` when the session is new or changed."""
    session = getattr(request.state, "web_session", None)
    if isinstance(session, WebSession) and session.dirty:
        response.set_cookie(
            COOKIE_NAME,
            _serializer(secret_key).dumps(session.to_payload()),
            max_age=SESSION_MAX_AGE,
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response


async def session_user(db: AsyncSession, session: WebSession) -> Principal | None:
    """The signed-in principal, or None when the session was ended (signed out) or expired server-side, the
    token revoked or the user deactivated since."""
    if not session.user_id or not session.token_id or not session.session_id:
        return None
    row = await db.get(BrowserSession, session.session_id)
    if (row is None or row.ended_at is not None or row.expires_at <= utcnow() or row.user_id != session.user_id
            or row.token_id != session.token_id):
        return None
    token = await db.get(ApiToken, session.token_id)
    if token is None or token.revoked_at is not None or token.user_id != session.user_id:
        return None
    user = await db.get(User, session.user_id)
    if user is None or not user.active:
        return None
    principal = Principal.of_token(user, token)
    return None if principal.service_only else principal  # a service identity never signs in to the web UI


async def verify_csrf(request: Request, session: WebSession) -> None:
    """Compare the submitted CSRF token (form field or header) with the session's; raise CsrfFailed."""
    submitted = request.headers.get(CSRF_HEADER)
    if not submitted:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()  # cached by Starlette: the route reads the same form
            value = form.get(CSRF_FIELD)
            submitted = value if isinstance(value, str) else None
    if not submitted:
        raise CsrfFailed("the form had no security token; reload the page and try again")
    if not hmac.compare_digest(submitted.encode(), session.csrf.encode()):
        raise CsrfFailed("the form's security token does not match your session (it may have expired, or you "
                         "signed in or out in another tab); reload the page and try again")


# ---- the server-side session rows ----------------------------------------------------------------


async def sign_in_session(db: AsyncSession, request: Request, user_id: str,
                          token_id: str) -> dict[str, Any] | None:
    """A new session row and cookie for a person who just signed in; the old session ends. A decision the
    old (anonymous) session kept for this same person moves to the new one; it is returned."""
    previous = load_session_or_none(request)
    pending = await carry_pending(db, previous, user_id)
    await end_session(db, previous, "rotated")
    row = BrowserSession(id=secrets.token_urlsafe(32), user_id=user_id, token_id=token_id,
                         expires_at=utcnow() + timedelta(seconds=SESSION_MAX_AGE), pending=pending)
    db.add(row)
    await db.commit()
    replace_session(request, new_session(user_id=user_id, token_id=token_id, session_id=row.id))
    return pending


def load_session_or_none(request: Request) -> WebSession | None:
    cached = getattr(request.state, "web_session", None)
    return cached if isinstance(cached, WebSession) else None


async def end_session(db: AsyncSession, session: WebSession | None, reason: str) -> None:
    """End the session's row for good: its cookie, replayed later, signs nobody in."""
    if session is None or not session.session_id:
        return
    row = await db.get(BrowserSession, session.session_id)
    if row is not None and row.ended_at is None:
        row.ended_at, row.ended_reason = utcnow(), reason
        await db.commit()


def stale_cookie(request: Request, secret_key: str) -> dict[str, Any] | None:
    """The payload of a genuine session cookie that expired at most a day ago (None: absent, forged, older)."""
    raw = request.cookies.get(COOKIE_NAME)
    if not raw:
        return None
    try:  # past SESSION_MAX_AGE, a genuine cookie still names its owner, for PENDING_MAX_AGE more
        data = _serializer(secret_key).loads(raw, max_age=SESSION_MAX_AGE + PENDING_MAX_AGE)
    except BadSignature:
        return None
    return data if isinstance(data, dict) else None


async def keep_pending(db: AsyncSession, request: Request, secret_key: str, submitted_csrf: str,
                       pending: dict[str, Any]) -> bool:
    """Keep a decision posted on an expired session, for its author to confirm after signing in.

    Only when the cookie is genuine and at most a day past its expiry, names a session that was not signed out
    of, and the form carries that cookie's CSRF token (a cross-site form, or a copy of a cookie its owner
    signed out of, cannot plant a decision for someone to confirm). Nothing is submitted here.
    """
    data = stale_cookie(request, secret_key)
    if data is None or not all(isinstance(data.get(k), str) for k in ("uid", "csrf", "sid")):
        return False
    if not submitted_csrf or not hmac.compare_digest(submitted_csrf.encode(), data["csrf"].encode()):
        return False
    # Only a session that lapsed: one its owner signed out of is dead, even to a copy of its cookie.
    ended = await db.get(BrowserSession, data["sid"])
    if ended is None or ended.user_id != data["uid"] or ended.ended_reason == "signed_out":
        return False
    row = BrowserSession(id=secrets.token_urlsafe(32), user_id=None, token_id=None,
                         expires_at=utcnow() + timedelta(seconds=PENDING_MAX_AGE),
                         pending={**pending, "for_user": data["uid"], "kept_at": utcnow().isoformat()})
    db.add(row)
    await db.commit()
    replace_session(request, new_session(session_id=row.id))
    return True


async def pending_of(db: AsyncSession, session: WebSession) -> dict[str, Any] | None:
    """The decision an anonymous session keeps, if any and not expired (for the sign-in page to mention)."""
    if not session.session_id or session.user_id:
        return None
    row = await db.get(BrowserSession, session.session_id)
    if row is None or row.ended_at is not None or row.expires_at <= utcnow() or not row.pending:
        return None
    return row.pending


async def carry_pending(db: AsyncSession, anonymous: WebSession | None, user_id: str) -> dict[str, Any] | None:
    """At sign-in: the decision the anonymous session kept, when it belongs to the person signing in."""
    if anonymous is None:
        return None
    pending = await pending_of(db, anonymous)
    if pending is None or pending.get("for_user") != user_id:
        return None
    return pending


async def take_pending(db: AsyncSession, session: WebSession, progression_id: str) -> dict[str, Any] | None:
    """The kept decision for this progression, removed from the session: the page fills the form with it."""
    if not session.session_id:
        return None
    row = await db.get(BrowserSession, session.session_id)
    if row is None or not row.pending or row.pending.get("progression_id") != progression_id:
        return None
    if row.pending.get("for_user") != row.user_id:
        return None
    pending = dict(row.pending)
    row.pending = None
    await db.commit()
    return pending
