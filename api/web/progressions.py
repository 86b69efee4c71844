"""Progressions: the list, one progression's page, and its forms (decide, add evidence, withdraw)."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Response
from starlette.datastructures import UploadFile

from api.authz import Action, Principal, allowed
from api.deps import AppState
from api.errors import ApiError
from api.services.people import people
from api.services.progressions import (
    Upload,
    actions_for,
    add_evidence,
    decide,
    deciding_role_refusal,
    get_progression,
    list_progressions,
    named_people,
    withdraw,
)
from api.services.review import review_material
from api.web.render import (
    COMMENT_MAX,
    PAGE_SIZE,
    UI,
    AnyWeb,
    PostWeb,
    UserWeb,
    Web,
    WebError,
    call,
    finish,
    redirect,
    render,
    sentence,
)
from api.web.review import build_review
from api.web.session import CSRF_FIELD, keep_pending, take_pending, verify_csrf
from engine.errors import ProgressionError
from engine.evidence import EvidenceStore
from engine.lifecycle import (
    FINAL_STATUSES,
    ActionOption,
    DecisionKind,
    ProgressionState,
    StageState,
    StageStatus,
    Status,
    comment_refusal,
    decision_refusal,
)

router = APIRouter(prefix=UI, include_in_schema=False)


@router.get("/progressions", name="ui_progressions")
async def progressions_page(web: UserWeb, model: str | None = None, intent: str | None = None,
                            status: str | None = None, cursor: str | None = None) -> Response:
    filters = {"model": model or None, "intent": intent or None, "status": status or None}
    page = await call(list_progressions(session=web.db, principal=web.user, secret=web.app.settings.secret_key,
                                        limit=PAGE_SIZE, cursor=cursor or None, model=filters["model"],
                                        intent=filters["intent"], status=filters["status"]))
    query = urlencode({k: v for k, v in filters.items() if v})
    return render(web.request, "progressions.html", {
        "title": "Progressions", "active": "progressions", "page": page, "filters": filters, "query": query,
        "paged": bool(cursor),
        "intents": web.app.registry.intents(), "statuses": [s.value for s in _statuses()],
        "can_start": allowed(web.user, Action.start_progression)})


def _statuses() -> list[Any]:
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
        # The route card says who the current stage waits on exactly as "who acts next" does (the guidance):
        # a blocked stage waits on the developer, not on the gate's unsatisfied roles.
        waiting = [r.value for r in state.waiting_on] if position == "current" else []
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
    refusal = deciding_role_refusal(principal) or decision_refusal(state, actor, stage)
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


def _unavailable(options: list[ActionOption]) -> list[ActionOption]:
    """The actions the caller cannot take now, once per reason (a closed progression refuses every upload alike);
    the role table's refusals are left out (an auditor is not told, item by item, that auditors read only)."""
    seen: set[str] = set()
    out = []
    for option in options:
        if option.allowed or option.code == "forbidden" or option.reason in seen:
            continue
        seen.add(option.reason)
        out.append(option)
    return out


async def _progression_context(web: Web, state: ProgressionState, **extra: Any) -> dict[str, Any]:
    principal = web.user
    gate = state.stage(state.current_stage) if state.current_stage else None
    open_gate = gate if gate is not None and gate.status == StageStatus.awaiting_approval else None
    can_decide, why_not = (decision_block(principal, state, open_gate.name) if open_gate else (False, []))
    mine = [d for d in open_gate.decisions if d.actor_id == principal.id and not d.superseded] if open_gate else []
    material = await review_material(session=web.db, app=web.app, principal=principal, state=state)
    # The actions allowed now (engine.actions): the page shows only those, and says why the rest are not.
    actions = actions_for(web.app, principal, state)
    decide_option = next((o for o in actions if o.action == "decide"), None)
    if decide_option is not None and not decide_option.allowed and decide_option.unlock:
        why_not = [*why_not, f"What would change it: {decide_option.unlock}"]
    slots = [o for o in actions if o.action == "add_evidence"]
    withdraw_option = next(o for o in actions if o.action == "withdraw")
    ctx: dict[str, Any] = {
        "title": f"{state.model_name} {state.version_id}", "active": "progressions", "state": state,
        "stages": _stage_views(state), "open_gate": open_gate, "can_decide": can_decide, "why_not": why_not,
        "decision_nonce": secrets.token_hex(16),
        "can_add_evidence": any(o.allowed for o in slots),
        "evidence_slots": [o for o in slots if o.allowed],
        "unavailable": _unavailable([*slots, withdraw_option]),
        "can_withdraw": withdraw_option.allowed,
        # A running progression's page refreshes itself until a person must act (or it ends).
        "refreshing": state.status == Status.running,
        "evidence_refs": {name: set(EVIDENCE_REF.findall(c.expr)) for s in state.stages for c in s.checks
                          for name in [f"{s.name}/{c.check_id}"]},
        "pid_url": UI + "/progressions/" + state.progression_id,
        "decision_error": None, "flash": None, "form": {},
        # The review: evidence inline, what each check judged, charts, the version in production; names.
        "review": build_review(state, material), "my_decision": mine[-1] if mine else None,
        "people": await people(web.db, named_people(state)), "now": datetime.now(UTC),
    }
    ctx.update(extra)
    return ctx


def _progression_response(web: Web, ctx: dict[str, Any], status: int = 200) -> Response:
    name = "_progression_body.html" if web.htmx else "progression.html"
    return render(web.request, name, ctx, status=status)


@router.get("/progressions/{progression_id}", name="ui_progression")
async def progression_page(web: UserWeb, progression_id: str, done: str | None = None) -> Response:
    state = await call(get_progression(session=web.db, app=web.app, principal=web.user,
                                       progression_id=progression_id))
    flash = _FLASH.get(done or "")
    extra: dict[str, Any] = {}
    pending = await take_pending(web.db, web.session, progression_id)
    if pending is not None:
        # A decision typed on a session that expired: shown filled in, submitted only when the person confirms.
        # Only on the gate it was written for: kept for another stage (the progression moved on, or the form
        # named another one), it fills nothing in here. On evidence that changed since, the comment is kept but
        # the choice is not ticked: the person chooses again after reading what changed.
        gate = state.stage(state.current_stage) if state.current_stage else None
        same_gate = (gate is not None and gate.status == StageStatus.awaiting_approval
                     and gate.name == pending.get("stage"))
        changed = bool(pending.get("basis")) and gate is not None and gate.basis != pending.get("basis")
        if same_gate:
            extra["form"] = {"decision": None if changed else pending.get("decision"),
                             "comment": pending.get("comment") or ""}
        extra["pending"] = {"at": pending.get("kept_at"), "stage": pending.get("stage"),
                            "evidence_changed": same_gate and changed, "other_gate": not same_gate}
    return _progression_response(web, await _progression_context(web, state, flash=flash, **extra))


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


async def _keep_for_sign_in(web: Web, progression_id: str) -> Response:
    """A decision posted after the session ended: kept (never submitted) until its author signs in again."""
    form = await web.request.form()
    # Bounded: only what the form sends, each at most as long as a real one.
    pending = {"progression_id": progression_id[:200], "stage": str(form.get("stage") or "")[:64],
               "decision": str(form.get("decision") or "")[:32],
               "comment": str(form.get("comment") or "")[:COMMENT_MAX],
               "basis": str(form.get("basis") or "")[:80] or None}
    await keep_pending(web.db, web.request, web.app.settings.secret_key, str(form.get(CSRF_FIELD) or ""), pending)
    page = f"{UI}/progressions/{quote(progression_id, safe='@')}"
    target = f"{UI}/login?{urlencode({'next': page})}"
    if web.htmx:
        return finish(web.request, Response(status_code=401, headers={"HX-Redirect": target}))
    return redirect(web.request, target)


@router.post("/progressions/{progression_id}/decisions")
async def decide_form(web: AnyWeb, progression_id: str) -> Response:
    if web.principal is None:
        return await _keep_for_sign_in(web, progression_id)
    await verify_csrf(web.request, web.session)
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
    if decision is not None and (refusal := comment_refusal(decision, comment)) is not None:
        problem = sentence(refusal.message)  # the workflow's rule, checked before the form goes anywhere
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


@router.get("/progressions/{progression_id}/charts/{key}.svg", name="ui_chart")
async def chart_download(web: UserWeb, progression_id: str, key: str) -> Response:
    """One chart of the review as a standalone SVG file (for a report or an examination pack)."""
    state = await call(get_progression(session=web.db, app=web.app, principal=web.user,
                                       progression_id=progression_id))
    material = await review_material(session=web.db, app=web.app, principal=web.user, state=state)
    chart = next((c for c in build_review(state, material).charts if c.key == key), None)
    if chart is None:
        raise WebError(404, f"progression {progression_id} has no chart {key!r}", "not_found")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{progression_id}-{key}.svg")
    body = '<?xml version="1.0" encoding="UTF-8"?>\n' + str(chart.svg)
    return finish(web.request, Response(body.encode(), media_type="image/svg+xml",
                                        headers={"Content-Disposition": f'attachment; filename="{safe}"'}))


@router.get("/progressions/{progression_id}/evidence/{name}", name="ui_evidence")
async def evidence_download(web: UserWeb, progression_id: str, name: str) -> Response:
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

    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        return None
    store = EvidenceStore(app.settings.evidence_dir)
    if not await asyncio.to_thread(store.exists, sha256):
        return None
    data: bytes = await asyncio.to_thread(store.get, sha256)
    return data


async def _uploads(form: Any, prefix: str = "evidence.") -> list[Any]:
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
    form = await web.request.form()
    uploads = await _uploads(form)
    new_name, new_file = str(form.get("new_name") or "").strip(), form.get("new_file")
    if new_name and isinstance(new_file, UploadFile) and new_file.filename:
        uploads.append(Upload(name=new_name, filename=new_file.filename, data=await new_file.read(),
                              content_type=new_file.content_type))
    async def apply() -> ProgressionState:
        if not uploads:
            raise ApiError(422, "no_evidence", "Choose at least one file to upload.")
        return await add_evidence(session=web.db, app=web.app, principal=web.user, progression_id=progression_id,
                                  uploads=uploads, request_id=f"web-{uuid.uuid4().hex}")

    return await _act(web, progression_id, "evidence", apply())


@router.post("/progressions/{progression_id}/withdraw")
async def withdraw_form(web: PostWeb, progression_id: str) -> Response:
    form = await web.request.form()
    reason = str(form.get("reason") or "").strip()
    async def apply() -> ProgressionState:
        if not reason:
            raise ApiError(422, "reason_required", "Give a reason for withdrawing: it goes into the audit trail.")
        return await withdraw(session=web.db, app=web.app, principal=web.user, progression_id=progression_id,
                              reason=reason, request_id=f"web-{uuid.uuid4().hex}")

    return await _act(web, progression_id, "withdraw", apply())


async def _act(web: Web, progression_id: str, action: str, change: Awaitable[ProgressionState]) -> Response:
    """Apply a form's change; a refusal is shown in place on the progression's page (``<action>_error``)."""
    try:
        new_state = await change
    except ProgressionError as exc:
        state = await call(get_progression(session=web.db, app=web.app, principal=web.user,
                                           progression_id=progression_id))
        ctx = await _progression_context(web, state, **{f"{action}_error": exc.message})
        return _progression_response(web, ctx, status=exc.status)
    if web.htmx:
        return _progression_response(web, await _progression_context(web, new_state, flash=_FLASH[action]))
    return redirect(web.request, f"{UI}/progressions/{progression_id}?done={action}")
