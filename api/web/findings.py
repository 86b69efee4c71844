"""Web UI of findings and exceptions: the register (filters, ageing, CSV), a finding's page with the
remediation and verification forms, the model page's findings, and approval with conditions on a gate.

Every page calls the service functions of :mod:`api.services.findings` (and ``decide`` for conditional
approvals), so the authorization table and segregation of duties hold exactly as in the JSON API; a refusal is
shown in place with the server's reason.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, Response

from api.authz import Action
from api.routers.findings import findings_csv
from api.services import findings as svc
from api.services.catalog import get_model
from api.services.progressions import decide
from api.web.render import UI, PageOffset, PostWeb, UserWeb, WebError, call, redirect, render
from engine.db import utcnow
from engine.errors import ProgressionError
from engine.findings import OPEN_STATUSES, FindingRecord, FindingStatus, VerifyOutcome
from engine.lifecycle import ConditionIn, DecisionKind
from engine.policy import Role

router = APIRouter(prefix=UI, include_in_schema=False)
PAGE_SIZE = 50
MAX_CONDITIONS = 3  # rows of the conditional-approval form


@dataclass
class RegisterForm:
    model: str = ""
    team: str = ""
    severity: str = ""
    status: str = ""
    overdue: str = ""  # "", "yes", "no"
    open: str = ""  # "1": open ones only (the developer's to-dos)

    def query(self) -> str:
        return "&".join(f"{k}={v}" for k, v in vars(self).items() if v)


@router.get("/findings", name="ui_findings")
async def findings_page(web: UserWeb, model: str = "", team: str = "", severity: str = "", status: str = "",
                        overdue: str = "", open: str = "", offset: PageOffset = 0) -> Response:
    form = RegisterForm(model=model, team=team, severity=severity, status=status, overdue=overdue, open=open)
    page = await call(svc.list_findings(
        session=web.db, principal=web.user, model=model or None, team=team or None, severity=severity or None,
        status=status or None, overdue={"yes": True, "no": False}.get(overdue), open_only=open == "1",
        limit=PAGE_SIZE, offset=max(offset, 0)))
    exceptions = await call(svc.list_exceptions(session=web.db, principal=web.user, model=model or None,
                                                team=team or None, limit=PAGE_SIZE))
    developer = Role.model_developer in web.user.roles and not web.user.reads_all_teams
    return render(web.request, "findings.html", {
        "title": "Your team's findings" if developer else "Findings register", "active": "findings",
        "page": page, "form": form, "now": utcnow(), "exceptions": exceptions.items, "developer": developer,
        "statuses": [s.value for s in FindingStatus]})


@router.get("/findings/export", name="ui_findings_export")
async def findings_export(web: UserWeb, model: str = "", open: str = "") -> Response:
    page = await call(svc.list_findings(session=web.db, principal=web.user, model=model or None,
                                        open_only=open == "1", limit=10_000))
    return Response(findings_csv(page.items), media_type="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="findings.csv"'})


def _finding_context(web: UserWeb, finding: FindingRecord, **extra: object) -> dict[str, object]:
    actor = web.user.actor
    can_remediate = finding.status == FindingStatus.open and Role.model_developer in actor.roles \
        and actor.team == finding.team
    can_verify = finding.status == FindingStatus.remediation_submitted and actor.user_id != finding.remediated_by \
        and bool({Role.model_validator, Role.model_risk_officer} & set(actor.roles)) and actor.team != finding.team
    return {"title": f"Finding {finding.finding_id}", "active": "findings", "f": finding, "now": utcnow(),
            "can_remediate": can_remediate, "can_verify": can_verify, "flash": None, "error": None, **extra}


_DONE = {"remediation": "Your remediation was submitted; an independent reviewer verifies it next.",
         "close": "The finding is closed.", "reopen": "The remediation was sent back; the finding is open again."}


@router.get("/findings/escalated", name="ui_findings_escalated")
async def escalated_fragment(web: UserWeb) -> Response:
    """The inbox's part of findings and exceptions: overdue findings escalated to one of the caller's roles, and
    exceptions waiting for a second approver the caller could be (not their own request)."""
    overdue = await call(svc.list_findings(session=web.db, principal=web.user, overdue=True, open_only=True,
                                           limit=PAGE_SIZE))
    mine = [f for f in overdue.items if f.escalated_to in web.user.roles]
    pending = await call(svc.list_exceptions(session=web.db, principal=web.user, status="pending_approval",
                                             limit=PAGE_SIZE))
    checkable = [e for e in pending.items if e.requested_by != web.user.id and e.team != web.user.team
                 and Action.approve_exception in web.user.actions]
    return render(web.request, "_escalated_findings.html", {"escalated": mine, "pending": checkable})


@router.get("/findings/{finding_id}", name="ui_finding")
async def finding_page(web: UserWeb, finding_id: str, done: str = "") -> Response:
    finding = await call(svc.get_finding(session=web.db, principal=web.user, finding_id=finding_id))
    return render(web.request, "finding.html", _finding_context(web, finding, flash=_DONE.get(done)))


@router.post("/findings/{finding_id}/remediation")
async def remediation_form(web: PostWeb, finding_id: str) -> Response:
    form = await web.request.form()
    note = str(form.get("note") or "").strip()
    refs = [r.strip() for r in str(form.get("evidence_refs") or "").split() if r.strip()]
    finding = await call(svc.get_finding(session=web.db, principal=web.user, finding_id=finding_id))
    if not note:
        return render(web.request, "finding.html", _finding_context(
            web, finding, error="Say what was done to remediate the finding."), status=422)
    try:
        await svc.submit_remediation(session=web.db, app=web.app, principal=web.user, finding_id=finding_id,
                                     note=note, evidence_refs=refs, request_id=f"web-r-{uuid.uuid4().hex}")
    except ProgressionError as exc:
        finding = await call(svc.get_finding(session=web.db, principal=web.user, finding_id=finding_id))
        return render(web.request, "finding.html", _finding_context(web, finding, error=exc.message),
                      status=exc.status)
    return redirect(web.request, f"{UI}/findings/{finding_id}?done=remediation")


@router.post("/findings/{finding_id}/verification")
async def verification_form(web: PostWeb, finding_id: str) -> Response:
    form = await web.request.form()
    comment = str(form.get("comment") or "").strip()
    outcome = str(form.get("outcome") or "")
    finding = await call(svc.get_finding(session=web.db, principal=web.user, finding_id=finding_id))
    if outcome not in {o.value for o in VerifyOutcome} or not comment:
        return render(web.request, "finding.html", _finding_context(
            web, finding, error="Choose close or send back, and say why."), status=422)
    try:
        await svc.verify_remediation(session=web.db, app=web.app, principal=web.user, finding_id=finding_id,
                                     outcome=VerifyOutcome(outcome), comment=comment,
                                     request_id=f"web-v-{uuid.uuid4().hex}")
    except ProgressionError as exc:
        finding = await call(svc.get_finding(session=web.db, principal=web.user, finding_id=finding_id))
        return render(web.request, "finding.html", _finding_context(web, finding, error=exc.message),
                      status=exc.status)
    return redirect(web.request, f"{UI}/findings/{finding_id}?done={outcome}")


@router.get("/models/{model_id}/findings", name="ui_model_findings")
async def model_findings_fragment(web: UserWeb, model_id: str) -> Response:
    """The model page's findings and exceptions (loaded into the page; also a page of its own)."""
    await call(get_model(session=web.db, principal=web.user, model_id=model_id))  # another team's: 404
    page = await call(svc.list_findings(session=web.db, principal=web.user, model=model_id, limit=PAGE_SIZE))
    exceptions = await call(svc.list_exceptions(session=web.db, principal=web.user, model=model_id,
                                                limit=PAGE_SIZE))
    return render(web.request, "_model_findings.html" if web.htmx else "model_findings.html", {
        "title": f"Findings of {model_id}", "active": "models", "model_id": model_id, "findings": page.items,
        "open_statuses": [s.value for s in OPEN_STATUSES], "exceptions": exceptions.items, "now": utcnow()})


@router.post("/progressions/{progression_id}/conditional-approval")
async def conditional_approval_form(web: PostWeb, progression_id: str) -> Response:
    """Approve the open gate and raise its conditions (findings) in one act."""
    form = await web.request.form()
    stage = str(form.get("stage") or "")
    comment = str(form.get("comment") or "").strip()
    basis = str(form.get("basis") or "") or None
    conditions: list[ConditionIn] = []
    try:
        for i in range(MAX_CONDITIONS):
            title = str(form.get(f"condition_{i}_title") or "").strip()
            if not title:
                continue
            due = str(form.get(f"condition_{i}_due") or "").strip()
            conditions.append(ConditionIn(
                severity=str(form.get(f"condition_{i}_severity") or "").strip(), title=title,
                description=str(form.get(f"condition_{i}_description") or "").strip(),
                due_at=datetime.fromisoformat(due).replace(tzinfo=UTC) if due else None))
    except ValueError as exc:
        raise WebError(422, f"A condition is not valid: {exc}", "invalid_conditions") from None
    if not conditions:
        raise WebError(422, "Name at least one condition (its severity and title), or use the plain approval.",
                       "conditions_required")
    nonce = str(form.get("decision_nonce") or uuid.uuid4().hex)[:64]
    await call(decide(session=web.db, app=web.app, principal=web.user, progression_id=progression_id, stage=stage,
                      decision=DecisionKind.approve, comment=comment, decision_id=f"web-c-{web.user.id}-{nonce}",
                      basis=basis, conditions=conditions))
    return redirect(web.request, f"{UI}/progressions/{progression_id}?done=approve")

