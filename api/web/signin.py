"""Sign in with an API token (a session cookie from then on), sign out, and the home redirect."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Response
from sqlalchemy import select

from api.authz import Action
from api.web.render import UI, AnyWeb, _safe_next, redirect, render
from api.web.session import (
    end_session,
    new_session,
    pending_of,
    replace_session,
    sign_in_session,
    verify_csrf,
)
from engine.db import ApiToken
from engine.identity import authenticate_token, hash_token

router = APIRouter(prefix=UI, include_in_schema=False)


@router.get("/", name="ui_home")
async def home(web: AnyWeb) -> Response:
    if web.principal is None:
        return redirect(web.request, UI + "/login")
    if Action.decide in web.principal.actions:
        return redirect(web.request, UI + "/inbox")
    return redirect(web.request, UI + "/progressions")


@router.get("/login", name="ui_login")
async def login_page(web: AnyWeb, next: str | None = None) -> Response:
    if web.principal is not None:
        return redirect(web.request, _safe_next(next))
    return render(web.request, "login.html", {"title": "Sign in", "next_path": _safe_next(next),
                                              "pending": await pending_of(web.db, web.session)})


@router.post("/login")
async def login(web: AnyWeb) -> Response:
    await verify_csrf(web.request, web.session)  # login CSRF: the anonymous session has a token too
    form = await web.request.form()
    token = str(form.get("token") or "").strip()
    next_path = _safe_next(str(form.get("next") or ""))
    user = await authenticate_token(web.db, token) if token else None
    if user is None:
        return render(web.request, "login.html", {
            "title": "Sign in", "next_path": next_path, "pending": await pending_of(web.db, web.session),
            "error": "That token is not valid: it may be mistyped, revoked, or belong to a deactivated user."},
            status=401)
    token_row = (await web.db.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))).scalar_one()
    # A new session (and CSRF token) at sign-in: a session fixed before sign-in is worthless. A decision kept
    # from an expired session of this same person waits on its progression's page for them to confirm.
    pending = await sign_in_session(web.db, web.request, user.id, token_row.id)
    if pending is not None:
        next_path = f"{UI}/progressions/{quote(str(pending['progression_id']), safe='@')}#decide"
    return redirect(web.request, next_path)


@router.post("/logout")
async def logout(web: AnyWeb) -> Response:
    await verify_csrf(web.request, web.session)
    await end_session(web.db, web.session, "signed_out")  # the cookie, replayed, signs nobody in any more
    replace_session(web.request, new_session())
    web.request.state.web_principal = None
    return redirect(web.request, UI + "/login")
