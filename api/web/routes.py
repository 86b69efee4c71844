"""Web UI routes. Every page reads and writes through the API's service functions, so the
authorization table (:mod:`api.authz`) and segregation of duties
(:func:`engine.lifecycle.decision_refusal`) are applied exactly as for the JSON API.

Errors never leave as a blank page: a refusal from a service is rendered in place (the
decision form shows the server's reason), anything else as an HTML error page with the
same status code the API would answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile

from api.authz import Action, Principal, allowed, require, require_act_on_team
from api.deps import AppState, SessionDep, app_state
from api.errors import ApiError
from api.web.session import (
    CSRF_FIELD,
    CsrfFailed,
    LoginRequired,
    WebSession,
    load_session,
    new_session,
    replace_session,
    session_user,
    verify_csrf,
    write_cookie,
)
from engine.db import ApiToken
from engine.errors import ProgressionError
from engine.identity import authenticate_token, hash_token
from engine.lifecycle import (
    FINAL_STATUSES,
    DecisionKind,
    EventType,
    ProgressionState,
    Refusal,
    StageState,
    StageStatus,
    decision_refusal,
)

UI = "/ui"
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

router = APIRouter(prefix=UI, include_in_schema=False)

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
    items = []
    if Action.decide in principal.actions:
        items.append({"key": "inbox", "label": "Inbox", "href": UI + "/inbox"})
    items.append({"key": "progressions", "label": "Progressions", "href": UI + "/progressions"})
    items.append({"key": "models", "label": "Models", "href": UI + "/models"})
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


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(abs(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        text = f"{days}d {hours}h"
    elif hours:
        text = f"{hours}h {minutes}m"
    else:
        text = f"{minutes}m"
    return text


templates.env.filters["duration"] = human_duration
templates.env.filters["words"] = lambda v: str(v).replace("_", " ")
# Upper-case the first letter only (Jinja's ``capitalize`` lower-cases the rest, e.g. ids and "SLA").
templates.env.filters["sentence"] = lambda v: str(v)[:1].upper() + str(v)[1:]


def _roles_text(roles: Any) -> str:
    return ", ".join(str(getattr(r, "value", r)).replace("_", " ") for r in roles)


templates.env.filters["roles"] = _roles_text


# ---- sign in / out ---------------------------------------------------------------------------


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
    return render(web.request, "login.html", {"title": "Sign in", "next_path": _safe_next(next)})


@router.post("/login")
async def login(web: AnyWeb) -> Response:
    await verify_csrf(web.request, web.session)  # login CSRF: the anonymous session has a token too
    form = await web.request.form()
    token = str(form.get("token") or "").strip()
    next_path = _safe_next(str(form.get("next") or ""))
    user = await authenticate_token(web.db, token) if token else None
    if user is None:
        return render(web.request, "login.html", {
            "title": "Sign in", "next_path": next_path,
            "error": "That token is not valid: it may be mistyped, revoked, or belong to a deactivated user."},
            status=401)
    token_row = (await web.db.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))).scalar_one()
    # A new session (and CSRF token) at sign-in: a session fixed before sign-in is worthless.
    replace_session(web.request, new_session(user_id=user.id, token_id=token_row.id))
    return redirect(web.request, next_path)


@router.post("/logout")
async def logout(web: AnyWeb) -> Response:
    await verify_csrf(web.request, web.session)
    replace_session(web.request, new_session())
    web.request.state.web_principal = None
    return redirect(web.request, UI + "/login")


# ---- inbox and progressions ------------------------------------------------------------------


@router.get("/inbox", name="ui_inbox")
async def inbox_page(web: UserWeb) -> Response:
    from api.services.inbox import inbox

    box = await call(inbox(session=web.db, principal=web.user))
    return render(web.request, "inbox.html", {"title": "Inbox", "active": "inbox", "inbox": box})


@router.get("/progressions", name="ui_progressions")
async def progressions_page(web: UserWeb, model: str | None = None, intent: str | None = None,
                            status: str | None = None, offset: int = 0) -> Response:
    from api.services.progressions import list_progressions

    filters = {"model": model or None, "intent": intent or None, "status": status or None}
    page = await call(list_progressions(session=web.db, principal=web.user, limit=PAGE_SIZE,
                                        offset=max(offset, 0), **filters))
    query = urlencode({k: v for k, v in filters.items() if v})
    return render(web.request, "progressions.html", {
        "title": "Progressions", "active": "progressions", "page": page, "filters": filters, "query": query,
        "intents": web.app.registry.intents(), "statuses": [s.value for s in _statuses()],
        "can_start": allowed(web.user, Action.start_progression)})


def _statuses() -> list[Any]:
    from engine.lifecycle import Status

    return list(Status)


EVIDENCE_REF = re.compile(r"\bevidence\.([a-z][a-z0-9_]*)")


@dataclass
class StageView:
    stage: StageState
    position: str  # done, current, next, stopped
    label: str
    waiting_on: list[str]
    names: dict[str, str]  # user id -> username, from the stage's decisions


def _stage_views(state: ProgressionState) -> list[StageView]:
    views = []
    for stage in state.stages:
        names = {d.actor_id: d.actor_username for d in stage.decisions}
        if stage.status == StageStatus.passed:
            position, label = "done", "done"
        elif stage.status in (StageStatus.rejected, StageStatus.withdrawn):
            position, label = "stopped", stage.status.value
        elif stage.name == state.current_stage and state.status not in FINAL_STATUSES:
            position, label = "current", f"now: {stage.status.value.replace('_', ' ')}"
        elif stage.status == StageStatus.pending:
            position, label = "next", "to come"
        else:
            position, label = "current", stage.status.value.replace("_", " ")
        waiting = [a.role.value for a in stage.approvals if not a.satisfied] if position == "current" else []
        views.append(StageView(stage=stage, position=position, label=label, waiting_on=waiting, names=names))
    return views


def decision_block(principal: Principal, state: ProgressionState, stage: str) -> tuple[bool, list[str]]:
    """Whether ``principal`` may decide ``stage`` now and, if not, every reason why, in words.

    The first reason is the API's (the same rule order as ``api.services.progressions.decide``).
    When that reason is the role, the segregation-of-duties rule is asked as well, with the gate
    roles granted hypothetically, so a developer on their own model is told "you submitted this"
    and not only "you are not a risk officer".
    """
    actor = principal.actor
    refusal: Refusal | None
    if Action.decide not in principal.actions:
        held = ", ".join(sorted(r.value for r in principal.roles)) or "none"
        refusal = Refusal(code="not_a_gate_role", http_status=403,
                          message=f"your roles ({held}) cannot decide on gates")
    else:
        refusal = decision_refusal(state, actor, stage)
    if refusal is None:
        return True, []
    reasons = [refusal.message]
    current = state.stage(stage)
    if refusal.code == "not_a_gate_role" and current is not None:
        gate_roles = [a.role for a in current.approvals]
        as_gate = actor.model_copy(update={"roles": list({*actor.roles, *gate_roles})})
        sod = decision_refusal(state, as_gate, stage)
        if sod is not None and sod.code in ("own_submission", "own_team"):
            reasons.append(sod.message)
    return False, reasons


def _can(principal: Principal, action: Action, team: str) -> bool:
    try:
        require_act_on_team(principal, action, team, "progression")
    except ProgressionError:
        return False
    return True


async def _progression_context(web: Web, state: ProgressionState, **extra: Any) -> dict[str, Any]:
    principal = web.user
    gate = state.stage(state.current_stage) if state.current_stage else None
    open_gate = gate if gate is not None and gate.status == StageStatus.awaiting_approval else None
    can_decide, why_not = (decision_block(principal, state, open_gate.name) if open_gate else (False, []))
    open_status = state.status not in FINAL_STATUSES
    ctx: dict[str, Any] = {
        "title": f"{state.model_name} {state.version_id}", "active": "progressions", "state": state,
        "stages": _stage_views(state), "open_gate": open_gate, "can_decide": can_decide, "why_not": why_not,
        "decision_nonce": secrets.token_hex(16),
        "can_add_evidence": open_status and _can(principal, Action.add_evidence, state.team),
        "can_withdraw": open_status and _can(principal, Action.withdraw, state.team),
        "evidence_refs": {name: set(EVIDENCE_REF.findall(c.expr)) for s in state.stages for c in s.checks
                          for name in [f"{s.name}/{c.check_id}"]},
        "pid_url": UI + "/progressions/" + state.progression_id,
        "decision_error": None, "flash": None, "form": {},
    }
    ctx.update(extra)
    return ctx


def _progression_response(web: Web, ctx: dict[str, Any], status: int = 200) -> Response:
    name = "_progression_body.html" if web.htmx else "progression.html"
    return render(web.request, name, ctx, status=status)


@router.get("/progressions/{progression_id}", name="ui_progression")
async def progression_page(web: UserWeb, progression_id: str, done: str | None = None) -> Response:
    from api.services.progressions import get_progression

    state = await call(get_progression(session=web.db, app=web.app, principal=web.user,
                                       progression_id=progression_id))
    flash = _FLASH.get(done or "")
    return _progression_response(web, await _progression_context(web, state, flash=flash))


_FLASH = {
    "approve": "Your approval was recorded.",
    "reject": "Your rejection was recorded. The progression is closed for this version.",
    "request_changes": "Your change request was recorded; the developer has been sent back to work.",
    "evidence": "The new evidence was received; the stage's checks ran again.",
    "withdraw": "The progression was withdrawn.",
    "started": "The progression started. Its first stage's checks are running.",
}
_NONCE = re.compile(r"^[0-9a-f]{32}$")
_BASIS = re.compile(r"^sha256:[0-9a-f]{64}$")


@router.post("/progressions/{progression_id}/decisions")
async def decide_form(web: PostWeb, progression_id: str) -> Response:
    from api.services.progressions import decide, get_progression

    form = await web.request.form()
    stage = str(form.get("stage") or "")
    raw_decision = str(form.get("decision") or "")
    comment = str(form.get("comment") or "").strip()
    nonce = str(form.get("decision_nonce") or "")
    # The basis the page showed (hidden field): a decision on evidence that changed since is refused.
    basis = str(form.get("basis") or "") or None
    state = await call(get_progression(session=web.db, app=web.app, principal=web.user,
                                       progression_id=progression_id))
    kept = {"decision": raw_decision, "comment": comment}
    problem: str | None = None
    status = 422
    try:
        decision = DecisionKind(raw_decision)
    except ValueError:
        decision, problem = None, "Choose approve, reject or request changes."
    if decision is not None and decision != DecisionKind.approve and not comment:
        problem = "A comment is required to reject or to request changes: tell the developer why."
    if len(comment) > COMMENT_MAX:
        problem = f"The comment is longer than {COMMENT_MAX} characters."
    if basis is not None and not _BASIS.match(basis):
        problem = "The page sent an invalid basis; reload the page and decide on what it shows."
    if problem is None:
        assert decision is not None
        # The nonce rendered with the form makes a double submission one decision, not two.
        decision_id = f"web-{web.user.id}-{nonce if _NONCE.match(nonce) else uuid.uuid4().hex}"
        try:
            new_state = await decide(session=web.db, app=web.app, principal=web.user, progression_id=progression_id,
                                     stage=stage, decision=decision, comment=comment, decision_id=decision_id,
                                     basis=basis)
        except ProgressionError as exc:
            problem, status = exc.message, exc.status
        else:
            if web.htmx:
                ctx = await _progression_context(web, new_state, flash=_FLASH[decision.value])
                return _progression_response(web, ctx)
            return redirect(web.request, f"{UI}/progressions/{progression_id}?done={decision.value}")
        # The refusal is shown in place; the state may have moved on meanwhile.
        state = await call(get_progression(session=web.db, app=web.app, principal=web.user,
                                           progression_id=progression_id))
    ctx = await _progression_context(web, state, decision_error=problem, form=kept)
    return _progression_response(web, ctx, status=status)


@router.get("/progressions/{progression_id}/evidence/{name}", name="ui_evidence")
async def evidence_download(web: UserWeb, progression_id: str, name: str) -> Response:
    from api.services.progressions import get_progression

    state = await call(get_progression(session=web.db, app=web.app, principal=web.user,
                                       progression_id=progression_id))
    ref = state.evidence.get(name)
    if ref is None:
        raise WebError(404, f"progression {progression_id} has no evidence {name!r}", "not_found")
    data = await call(_read_blob(web.app, ref.sha256))  # a corrupted blob is an error page, never served
    if data is None:
        raise WebError(404, f"the file of evidence {name!r} (sha256 {ref.sha256[:12]}…) is not in the evidence store",
                       "evidence_missing")
    filename = PurePosixPath(ref.filename or name).name or name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    headers = {"Content-Disposition": f'attachment; filename="{safe}"', "X-Evidence-SHA256": ref.sha256}
    return finish(web.request, Response(data, media_type=ref.media_type or "application/octet-stream",
                                        headers=headers))


async def _read_blob(app: AppState, sha256: str) -> bytes | None:
    """Evidence bytes from the content-addressed store (the same ``exists``/``get`` the activities use)."""
    from engine.evidence import EvidenceStore

    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        return None
    store = EvidenceStore(app.settings.evidence_dir)
    if not await asyncio.to_thread(store.exists, sha256):
        return None
    data: bytes = await asyncio.to_thread(store.get, sha256)
    return data


async def _uploads(form: Any, prefix: str = "evidence.") -> list[Any]:
    from api.services.progressions import Upload

    uploads = []
    for key, value in form.multi_items():
        if key.startswith(prefix) and isinstance(value, UploadFile) and value.filename:
            data = await value.read()
            if data:
                uploads.append(Upload(name=key[len(prefix):], filename=value.filename, data=data,
                                      content_type=value.content_type))
    return uploads


@router.post("/progressions/{progression_id}/evidence")
async def evidence_form(web: PostWeb, progression_id: str) -> Response:
    from api.services.progressions import Upload, add_evidence, get_progression

    form = await web.request.form()
    uploads = await _uploads(form)
    new_name, new_file = str(form.get("new_name") or "").strip(), form.get("new_file")
    if new_name and isinstance(new_file, UploadFile) and new_file.filename:
        uploads.append(Upload(name=new_name, filename=new_file.filename, data=await new_file.read(),
                              content_type=new_file.content_type))
    try:
        if not uploads:
            raise ApiError(422, "no_evidence", "Choose at least one file to upload.")
        new_state = await add_evidence(session=web.db, app=web.app, principal=web.user,
                                       progression_id=progression_id, uploads=uploads,
                                       request_id=f"web-{uuid.uuid4().hex}")
    except ProgressionError as exc:
        state = await call(get_progression(session=web.db, app=web.app, principal=web.user,
                                           progression_id=progression_id))
        ctx = await _progression_context(web, state, evidence_error=exc.message)
        return _progression_response(web, ctx, status=exc.status)
    if web.htmx:
        return _progression_response(web, await _progression_context(web, new_state, flash=_FLASH["evidence"]))
    return redirect(web.request, f"{UI}/progressions/{progression_id}?done=evidence")


@router.post("/progressions/{progression_id}/withdraw")
async def withdraw_form(web: PostWeb, progression_id: str) -> Response:
    from api.services.progressions import get_progression, withdraw

    form = await web.request.form()
    reason = str(form.get("reason") or "").strip()
    try:
        if not reason:
            raise ApiError(422, "reason_required", "Give a reason for withdrawing: it goes into the audit trail.")
        new_state = await withdraw(session=web.db, app=web.app, principal=web.user, progression_id=progression_id,
                                   reason=reason, request_id=f"web-{uuid.uuid4().hex}")
    except ProgressionError as exc:
        state = await call(get_progression(session=web.db, app=web.app, principal=web.user,
                                           progression_id=progression_id))
        ctx = await _progression_context(web, state, withdraw_error=exc.message)
        return _progression_response(web, ctx, status=exc.status)
    if web.htmx:
        return _progression_response(web, await _progression_context(web, new_state, flash=_FLASH["withdraw"]))
    return redirect(web.request, f"{UI}/progressions/{progression_id}?done=withdraw")


@router.get("/start", name="ui_start")
async def start_page(web: UserWeb) -> Response:
    require_or_page(web.user, Action.start_progression)
    return render(web.request, "start.html", {"title": "Start a progression", "active": "progressions"})


def require_or_page(principal: Principal, action: Action) -> None:
    try:
        require(principal, action)
    except ProgressionError as exc:
        raise WebError(exc.status, exc.message, exc.code) from None


def match_evidence(spec_text: bytes, files: list[tuple[str, bytes, str | None]]) -> tuple[list[Any], list[str]]:
    """Map uploaded files to the spec's evidence names by file name (``evidence/metrics.json`` -> metrics).

    Returns the uploads and the file names that match no declared evidence.
    """
    from api.services.progressions import Upload

    try:
        data = yaml.safe_load(spec_text) or {}
        declared = data.get("evidence") or {} if isinstance(data, dict) else {}
    except yaml.YAMLError:
        declared = {}
    by_basename: dict[str, str] = {}
    if isinstance(declared, dict):
        for name, path in declared.items():
            if isinstance(name, str) and isinstance(path, str):
                by_basename.setdefault(PurePosixPath(path).name, name)
                by_basename.setdefault(name, name)
    uploads, unmatched = [], []
    for filename, content, content_type in files:
        base = PurePosixPath(filename.replace("\\", "/")).name
        name = by_basename.get(base) or by_basename.get(PurePosixPath(base).stem)
        if name is None:
            unmatched.append(base)
            continue
        uploads.append(Upload(name=name, filename=base, data=content, content_type=content_type))
    return uploads, unmatched


@router.post("/start")
async def start_form(web: PostWeb) -> Response:
    from api.services.progressions import start_progression

    form = await web.request.form()
    spec_upload = form.get("spec_file")
    spec_text = b""
    if isinstance(spec_upload, UploadFile) and spec_upload.filename:
        spec_text = await spec_upload.read()
    if not spec_text.strip():
        spec_text = str(form.get("spec_text") or "").encode()
    files = []
    for value in form.getlist("evidence_files"):
        if isinstance(value, UploadFile) and value.filename:
            files.append((value.filename, await value.read(), value.content_type))
    error: str | None = None
    status = 422
    if not spec_text.strip():
        error = "Choose your progression.yaml file or paste its text."
    else:
        uploads, unmatched = match_evidence(spec_text, files)
        if unmatched:
            error = (f"These files match no evidence declared in progression.yaml: {', '.join(unmatched)}. "
                     "Name each file as in the spec's evidence paths.")
        else:
            try:
                state = await start_progression(session=web.db, app=web.app, principal=web.user,
                                                spec_text=spec_text, spec_filename="progression.yaml",
                                                uploads=uploads)
            except ProgressionError as exc:
                error, status = _problem_text(exc), exc.status
            else:
                return redirect(web.request, f"{UI}/progressions/{state.progression_id}?done=started")
    return render(web.request, "start.html", {"title": "Start a progression", "active": "progressions",
                                              "error": error, "spec_text": spec_text.decode("utf-8", "replace")},
                  status=status)


def _problem_text(exc: ProgressionError) -> str:
    """The message, plus every listed problem (file:line: field: message) when there are several."""
    details = exc.details
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


# ---- models ----------------------------------------------------------------------------------


@router.get("/models", name="ui_models")
async def models_page(web: UserWeb, intent: str | None = None, offset: int = 0) -> Response:
    from api.services.catalog import list_models

    page = await call(list_models(session=web.db, principal=web.user, intent=intent or None, limit=PAGE_SIZE,
                                  offset=max(offset, 0)))
    return render(web.request, "models.html", {"title": "Models", "active": "models", "page": page,
                                               "intent": intent or "", "intents": web.app.registry.intents()})


@router.get("/models/{model_id}", name="ui_model")
async def model_page(web: UserWeb, model_id: str) -> Response:
    from api.services.catalog import get_model

    model = await call(get_model(session=web.db, principal=web.user, model_id=model_id))
    return render(web.request, "model.html", {"title": model.name, "active": "models", "model": model,
                                              "now": datetime.now(UTC)})


# ---- policies --------------------------------------------------------------------------------


@router.get("/policies", name="ui_policies")
async def policies_page(web: UserWeb) -> Response:
    from api.services.policies import get_policy

    require_or_page(web.user, Action.read_policies)
    details = [await call(get_policy(session=web.db, principal=web.user, registry=web.app.registry, intent=i))
               for i in web.app.registry.intents()]
    return render(web.request, "policies.html", {"title": "Policies", "active": "policies", "policies": details})


@router.get("/policies/dry-run", name="ui_dry_run")
async def dry_run_page(web: UserWeb) -> Response:
    require_or_page(web.user, Action.dry_run)
    return render(web.request, "dry_run.html", {"title": "Dry run", "active": "policies",
                                                "intents": web.app.registry.intents(), "form": {}})


@router.get("/policies/{intent}", name="ui_policy")
async def policy_page(web: UserWeb, intent: str) -> Response:
    from api.services.policies import get_policy

    policy = await call(get_policy(session=web.db, principal=web.user, registry=web.app.registry, intent=intent))
    return render(web.request, "policy.html", {"title": policy.title, "active": "policies", "policy": policy})


@router.post("/policies/dry-run")
async def dry_run_form(web: PostWeb) -> Response:
    from api.services.policies import dry_run, parse_json_evidence

    form = await web.request.form()
    spec_text = str(form.get("spec") or "")
    evidence_text = str(form.get("evidence") or "").strip()
    intent = str(form.get("intent") or "")
    ctx: dict[str, Any] = {"title": "Dry run", "active": "policies", "intents": web.app.registry.intents(),
                           "form": {"spec": spec_text, "evidence": evidence_text, "intent": intent}}
    status = 200
    try:
        if not spec_text.strip():
            raise ApiError(422, "spec_required", "Paste the text of your progression.yaml.")
        evidence: dict[str, Any] = {}
        if evidence_text:
            try:
                raw = json.loads(evidence_text)
            except ValueError as exc:
                raise ApiError(422, "invalid_evidence_json", f"evidence: not valid JSON ({exc})") from None
            if not isinstance(raw, dict):
                raise ApiError(422, "invalid_evidence_json", "evidence: give a JSON object of evidence by name")
            evidence = parse_json_evidence(raw)
        if not intent:
            intent = _spec_intent(spec_text) or (web.app.registry.intents() or [""])[0]
        ctx["result"] = await dry_run(session=web.db, principal=web.user, registry=web.app.registry, intent=intent,
                                      spec_text=spec_text, evidence=evidence,
                                      max_yaml_bytes=web.app.settings.max_yaml_bytes)
    except ProgressionError as exc:
        ctx["error"], status = _problem_text(exc), exc.status
    name = "_dry_run_result.html" if web.htmx else "dry_run.html"
    return render(web.request, name, ctx, status=status)


def _spec_intent(text: str) -> str | None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    intent = model.get("business_intent") if isinstance(model, dict) else None
    return intent if isinstance(intent, str) else None


# ---- audit -----------------------------------------------------------------------------------


@dataclass
class AuditForm:
    """The explorer's filter form, as typed (kept to refill the form and build links)."""

    progression: str = ""
    model: str = ""
    actor: str = ""
    event_type: str = ""
    since: str = ""
    until: str = ""

    def query(self, **extra: Any) -> str:
        data = {k: v for k, v in self.__dict__.items() if v}
        data.update({k: v for k, v in extra.items() if v is not None})
        return urlencode(data)


def _parse_when(value: str, field: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise WebError(422, f"{field}: {value!r} is not a date and time (use YYYY-MM-DDTHH:MM, UTC)",
                       "validation_error") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def _service_filters(web: Web, f: AuditForm) -> Any:
    """The API service's filters; an actor may be typed as a username (resolved) or a user id."""
    from api.services.audit import AuditFilters
    from engine.identity import get_user_by_username

    actor_id: str | None = None
    if f.actor:
        user = await get_user_by_username(web.db, f.actor)
        actor_id = user.id if user is not None else f.actor
    return AuditFilters(progression=f.progression or None, model=f.model or None, actor=actor_id,
                        event_type=f.event_type or None, since=_parse_when(f.since, "since"),
                        until=_parse_when(f.until, "until"))


def _audit_form(progression: str | None, model: str | None, actor: str | None, event_type: str | None,
                since: str | None, until: str | None) -> AuditForm:
    return AuditForm(progression=(progression or "").strip(), model=(model or "").strip(),
                     actor=(actor or "").strip(), event_type=(event_type or "").strip(),
                     since=(since or "").strip(), until=(until or "").strip())


@router.get("/audit", name="ui_audit")
async def audit_page(web: UserWeb, progression: str | None = None, model: str | None = None,
                     actor: str | None = None, event_type: str | None = None, since: str | None = None,
                     until: str | None = None, cursor: str | None = None, page_no: int = 1) -> Response:
    from api.services.audit import list_events

    f = _audit_form(progression, model, actor, event_type, since, until)
    filters = await _service_filters(web, f)
    page = await call(list_events(session=web.db, principal=web.user, filters=filters, cursor=cursor or None,
                                  limit=PAGE_SIZE))
    usernames = await _usernames(web.db, {e.actor_id for e in page.items if e.actor_id})
    page_no = max(page_no, 1)
    ctx = {"title": "Audit", "active": "audit", "page": page, "filters": f, "page_no": page_no,
           "event_types": [t.value for t in EventType], "usernames": usernames,
           "can_export": allowed(web.user, Action.export_audit), "can_verify": allowed(web.user, Action.verify_audit),
           "next_query": f.query(cursor=page.next_cursor, page_no=page_no + 1) if page.has_more else None,
           "first_query": f.query() if cursor else None,
           "csv_query": f.query(format="csv"), "jsonl_query": f.query(format="jsonl")}
    name = "_audit_results.html" if web.htmx and web.request.headers.get("HX-Target") == "audit-results" \
        else "audit.html"
    return render(web.request, name, ctx)


async def _usernames(db: AsyncSession, ids: set[str]) -> dict[str, str]:
    from engine.db import User

    if not ids:
        return {}
    rows = await db.execute(select(User.id, User.username).where(User.id.in_(ids)))
    return {uid: name for uid, name in rows.all()}


@router.get("/audit/export", name="ui_audit_export")
async def audit_export(web: UserWeb, format: str = "csv", progression: str | None = None, model: str | None = None,
                       actor: str | None = None, event_type: str | None = None, since: str | None = None,
                       until: str | None = None) -> Response:
    from api.services.audit import export_events

    f = _audit_form(progression, model, actor, event_type, since, until)
    filters = await _service_filters(web, f)
    stream = await call(export_events(sessionmaker=web.app.sessionmaker, principal=web.user, filters=filters,
                                      fmt=format))
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    headers = {"Content-Disposition": f'attachment; filename="audit-events.{format}"'}
    return finish(web.request, StreamingResponse(stream, media_type=media, headers=headers))


@router.post("/audit/verify")
async def audit_verify(web: PostWeb) -> Response:
    from api.services.audit import verify

    result = await call(verify(session=web.db, principal=web.user))
    name = "_verify_result.html" if web.htmx else "verify.html"
    return render(web.request, name, {"title": "Audit chain verification", "active": "audit", "result": result})


# ---- mounting --------------------------------------------------------------------------------


def _error_response(request: Request, status: int, heading: str, message: str, code: str | None) -> Response:
    name = "_error_fragment.html" if request.headers.get("HX-Request") == "true" else "error.html"
    back = request.headers.get("referer") if request.method != "GET" else None
    return render(request, name, {"title": heading, "heading": heading, "message": message, "code": code,
                                  "back": back}, status=status)


def mount_web(app: FastAPI) -> None:
    """Add the UI routes, its static files and its HTML error pages to the API application (once)."""
    if getattr(app.state, "web_ui_mounted", False):
        return
    app.state.web_ui_mounted = True
    app.include_router(router)
    app.mount(f"{UI}/static", StaticFiles(directory=str(STATIC_DIR)), name="ui-static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        target = f"{UI}/login?{urlencode({'next': exc.next_path})}"
        if request.headers.get("HX-Request") == "true":
            return finish(request, Response(status_code=401, headers={"HX-Redirect": target}))
        return finish(request, RedirectResponse(target, status_code=303))

    @app.exception_handler(CsrfFailed)
    async def _csrf_failed(request: Request, exc: CsrfFailed) -> Response:
        return _error_response(request, 403, "Security check failed", exc.reason, "csrf_failed")

    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError) -> Response:
        return _error_response(request, exc.status, exc.heading, exc.message, exc.code)

    # The bare root leads people to the UI. Routes match in order, so a "/" of the API's own
    # (included before this) would still win.
    @app.get("/", include_in_schema=False)
    async def _root() -> Response:
        return RedirectResponse(UI + "/", status_code=307)


__all__ = ["mount_web", "match_evidence", "decision_block", "human_duration"]
