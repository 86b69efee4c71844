"""What every web UI page shares: the request context (session, principal), rendering, redirects, errors.

The pages (one router per page family: signin, inbox, progressions, start, models, policies, audit) read and
write through the API's service functions, so the authorization table (:mod:`api.authz`) and segregation of
duties (:func:`engine.lifecycle.decision_refusal`) apply exactly as for the JSON API. Errors never leave as a
blank page: a refusal from a service is rendered in place, anything else as an HTML error page with the status
code the API would answer.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, allowed, require
from api.deps import AppState, SessionDep, app_state
from api.schemas import MAX_OFFSET
from api.web.charts import number
from api.web.session import (
    CSRF_FIELD,
    LoginRequired,
    WebSession,
    load_session,
    new_session,
    replace_session,
    session_user,
    verify_csrf,
    write_cookie,
)
from engine.durations import human_duration
from engine.errors import ProgressionError
from engine.lifecycle import (
    DecisionKind,
)

UI = "/ui"
# A page offset as the JSON API bounds it (a huge one would overflow the database's integer, a 500).
PageOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE.parent / "templates"
STATIC_DIR = HERE.parent / "static"
ASSET_VERSION = "1"  # bump to bust browser caches when the static files change
PAGE_SIZE = 50
COMMENT_MAX = 10_000

T = TypeVar("T")

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.globals["ui"] = lambda path="/": UI + path
templates.env.globals["static_url"] = lambda name: f"{UI}/static/{name}?v={ASSET_VERSION}"
templates.env.globals["DecisionKind"] = DecisionKind


SECURITY_HEADERS = {
    # No inline script or style anywhere: htmx and app.js come from /ui/static.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# ---- request context -------------------------------------------------------------------------


@dataclass
class Web:
    request: Request
    app: AppState
    db: AsyncSession
    session: WebSession
    principal: Principal | None

    @property
    def user(self) -> Principal:
        assert self.principal is not None
        return self.principal

    @property
    def htmx(self) -> bool:
        return self.request.headers.get("HX-Request") == "true"


async def _web(request: Request, db: SessionDep) -> Web:
    state = app_state(request)
    ws = load_session(request, state.settings.secret_key)
    principal = await session_user(db, ws)
    if principal is None and ws.user_id:
        # Token revoked or user deactivated since sign-in: drop the stale session.
        ws = replace_session(request, new_session())
    request.state.web_principal = principal
    return Web(request=request, app=state, db=db, session=ws, principal=principal)


def _here(request: Request) -> str:
    path = request.url.path
    return path + (f"?{request.url.query}" if request.url.query else "")


async def _signed_in(web: Annotated[Web, Depends(_web)]) -> Web:
    if web.principal is None:
        raise LoginRequired(_here(web.request) if web.request.method == "GET" else UI + "/")
    return web


async def _posted(web: Annotated[Web, Depends(_signed_in)]) -> Web:
    await verify_csrf(web.request, web.session)
    return web


AnyWeb = Annotated[Web, Depends(_web)]
UserWeb = Annotated[Web, Depends(_signed_in)]
PostWeb = Annotated[Web, Depends(_posted)]


class WebError(Exception):
    """An error shown as an HTML page with the API's status code and stable code."""

    def __init__(self, status: int, message: str, code: str | None = None, heading: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.heading = heading or _HEADINGS.get(status, "Something went wrong")


_HEADINGS = {400: "Bad request", 401: "Sign-in required", 403: "Not allowed", 404: "Not found",
             409: "Not possible now", 413: "Too large", 422: "Please correct the request",
             503: "Service unavailable"}


async def call(awaitable: Awaitable[T]) -> T:
    """Await a service call; a domain error becomes an HTML error page with the same status."""
    try:
        return await awaitable
    except ProgressionError as exc:
        raise WebError(exc.status, exc.message, exc.code) from None


def _nav(principal: Principal | None) -> list[dict[str, str]]:
    if principal is None:
        return []
    items = [{"key": "todo", "label": "To do", "href": UI + "/todo"}]
    if Action.decide in principal.actions:
        items.append({"key": "inbox", "label": "Inbox", "href": UI + "/inbox"})
    items.append({"key": "progressions", "label": "Progressions", "href": UI + "/progressions"})
    items.append({"key": "models", "label": "Models", "href": UI + "/models"})
    items.append({"key": "features", "label": "Features", "href": UI + "/features"})
    items.append({"key": "findings", "label": "Findings", "href": UI + "/findings"
                  + ("" if principal.reads_all_teams else "?open=1")})
    if allowed(principal, Action.read_audit):
        items.append({"key": "audit", "label": "Audit", "href": UI + "/audit"})
    items.append({"key": "policies", "label": "Policies", "href": UI + "/policies"})
    return items


def finish(request: Request, response: Response) -> Response:
    state = app_state(request)
    write_cookie(request, response, state.settings.secret_key)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def render(request: Request, name: str, context: dict[str, Any] | None = None, *, status: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    state = app_state(request)
    ws = load_session(request, state.settings.secret_key)
    principal: Principal | None = getattr(request.state, "web_principal", None)
    base: dict[str, Any] = {
        "principal": principal,
        "principal_roles": sorted(r.value for r in principal.roles) if principal else [],
        "csrf_token": ws.csrf,
        "csrf_field": CSRF_FIELD,
        "nav": _nav(principal),
        "htmx": request.headers.get("HX-Request") == "true",
    }
    base.update(context or {})
    response = templates.TemplateResponse(request, name, base, status_code=status, headers=headers)
    return finish(request, response)


def redirect(request: Request, url: str) -> Response:
    if request.headers.get("HX-Request") == "true":
        return finish(request, Response(status_code=204, headers={"HX-Redirect": url}))
    return finish(request, RedirectResponse(url, status_code=303))


def _safe_next(value: str | None) -> str:
    """Only a path inside the UI: never an open redirect to another site."""
    if value and value.startswith(UI + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return UI + "/"


# ---- formatting helpers for the templates --------------------------------------------------


templates.env.filters["duration"] = functools.partial(human_duration, parts=2, smallest="m", empty="—", signed=False)
templates.env.filters["words"] = lambda v: str(v).replace("_", " ")
def sentence(value: Any) -> str:
    """Upper-case the first letter only (Jinja's ``capitalize`` lower-cases the rest, e.g. ids and "SLA")."""
    return str(value)[:1].upper() + str(value)[1:]


templates.env.filters["sentence"] = sentence


def pretty_json(value: Any) -> str:
    """JSON for people: indented, UTF-8 text as text (no ``\\u540c`` or ``\\u0027``); autoescaped like any text."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


templates.env.filters["pretty_json"] = pretty_json
templates.env.filters["number"] = number


def _roles_text(roles: Any) -> str:
    return ", ".join(str(getattr(r, "value", r)).replace("_", " ") for r in roles)


templates.env.filters["roles"] = _roles_text


def require_or_page(principal: Principal, action: Action) -> None:
    try:
        require(principal, action)
    except ProgressionError as exc:
        raise WebError(exc.status, exc.message, exc.code) from None


def _problem_text(exc: ProgressionError) -> str:
    """The message, plus every listed problem (file:line: field: message) when there are several."""
    details = exc.details
    if isinstance(details, dict) and isinstance(details.get("problems"), list):  # evidence_contract: each field
        details = details["problems"]
    if isinstance(details, list) and len(details) > 1:
        lines = []
        for d in details:
            if isinstance(d, dict) and d.get("message"):
                where = ":".join(str(x) for x in (d.get("file"), d.get("line")) if x)
                field = d.get("field") or d.get("path") or ""
                lines.append(" ".join(p for p in (f"{where}:" if where else "", f"{field}:" if field else "",
                                                  str(d["message"])) if p))
        if lines:
            return "\n".join(lines)
    return exc.message


def error_response(request: Request, status: int, heading: str, message: str, code: str | None) -> Response:
    name = "_error_fragment.html" if request.headers.get("HX-Request") == "true" else "error.html"
    back = request.headers.get("referer") if request.method != "GET" else None
    return render(request, name, {"title": heading, "heading": heading, "message": message, "code": code,
                                  "back": back}, status=status)
