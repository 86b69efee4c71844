"""Browser sessions and CSRF protection for the web UI.

The session is one cookie signed with ``settings.secret_key`` (itsdangerous): it carries a
CSRF token and, once signed in, the user id and the id of the API token used to sign in.
It never carries the token itself. Every request re-checks that the token is still
unrevoked and the user still active, so revoking a token also ends its browser sessions.

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
from typing import Any

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Principal
from engine.db import ApiToken, User

COOKIE_NAME = "progression_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_MAX_AGE = 12 * 3600  # seconds; a working day, then sign in again
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
    dirty: bool = False  # the cookie must be (re)written on the response
    extra: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {"csrf": self.csrf, "uid": self.user_id, "tid": self.token_id}


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=_SALT)


def new_session(user_id: str | None = None, token_id: str | None = None) -> WebSession:
    return WebSession(csrf=secrets.token_urlsafe(32), user_id=user_id, token_id=token_id, dirty=True)


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
            uid, tid = data.get("uid"), data.get("tid")
            session = WebSession(csrf=data["csrf"], user_id=uid if isinstance(uid, str) else None,
                                 token_id=tid if isinstance(tid, str) else None)
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
    """The signed-in principal, or None when the token was revoked or the user deactivated since."""
    if not session.user_id or not session.token_id:
        return None
    token = await db.get(ApiToken, session.token_id)
    if token is None or token.revoked_at is not None or token.user_id != session.user_id:
        return None
    user = await db.get(User, session.user_id)
    if user is None or not user.active:
        return None
    principal = Principal.of(user, credential_id=f"token:{token.id}", credential_issued_by=token.issued_by,
                             credential_kind="token")
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
