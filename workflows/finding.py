"""Durable deadlines of findings and exceptions: one small workflow per finding and per exception.

``FindingWorkflow`` (id ``finding-<id>``) writes the finding, then races its deadlines: a reminder to the
owning team ``remind_before`` the due date, and at the due date the finding is marked overdue and escalated
to the policy's escalation role (recorded, notified, shown in that role's inbox). Transitions arrive as
Updates whose validators apply the rules of ``engine.findings`` (so a refused transition never enters
history): the owning team submits a remediation; an independent reviewer closes it or sends it back. An
exception on the finding (signal ``finding_waiver``) accepts its risk until the exception lapses.

``ExceptionWorkflow`` (id ``exception-<id>``) writes the exception; under maker-checker it waits for a
second person (Update ``approve_exception``); once active it waits for its expiry, then lapses: what it
waived is back in force, the model's progressions are told, the owners notified.

Every change is written by one activity (row, audit events, notifications) that then tells the model's
running progressions (``governance_changed``), which is how a gate learns of findings and waivers.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.contract import (
        HEARTBEAT_TIMEOUT,
        SAVE_EXCEPTION,
        SAVE_FINDING,
        AuditEventIn,
        Notification,
        NotificationKind,
        SaveExceptionInput,
        SaveFindingInput,
        SaveResult,
    )
    from engine.findings import (
        EXCEPTION_WORKFLOW,
        FINDING_WORKFLOW,
        QUERY_EXCEPTION,
        QUERY_FINDING,
        SIGNAL_FINDING_WAIVER,
        UPDATE_APPROVE_EXCEPTION,
        UPDATE_FINDING_READY,
        UPDATE_REMEDIATE,
        UPDATE_VERIFY,
        ApproveExceptionInput,
        ExceptionInput,
        ExceptionKind,
        ExceptionRecord,
        ExceptionStatus,
        FindingInput,
        FindingRecord,
        FindingStatus,
        FindingWaiver,
        RemediationInput,
        VerifyInput,
        VerifyOutcome,
        exception_approval_refusal,
        finding_workflow_id,
        remediation_refusal,
        reminder_at,
        verification_refusal,
    )
    from engine.lifecycle import Actor, EventType, Refusal
    from engine.policy import Role

SAVE_TIMEOUT = timedelta(seconds=60)
SAVE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                         maximum_interval=timedelta(seconds=30))


def _refuse(refusal: Refusal) -> ApplicationError:
    return ApplicationError(refusal.message, refusal.model_dump(), type=refusal.code, non_retryable=True)


def _jsonable(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in payload.items()}


class _Recorder:
    """Events and notifications built by a workflow, written by its next save."""

    def __init__(self) -> None:
        self.events: list[AuditEventIn] = []
        self.notes: list[Notification] = []
        self.version = 0
        self.requests: set[str] = set()

    def emit(self, event_type: EventType, *, actor_id: str | None = None, stage: str | None = None,
             payload: dict[str, Any] | None = None) -> None:
        self.events.append(AuditEventIn(event_id=str(workflow.uuid4()), event_type=event_type,
                                        occurred_at=workflow.now(), actor_id=actor_id, stage=stage,
                                        payload=_jsonable(payload or {})))

    def notify(self, kind: NotificationKind, roles: list[Role], message: str, *, progression_id: str | None,
               model_id: str, stage: str | None = None) -> None:
        self.notes.append(Notification(event_id=str(workflow.uuid4()), kind=kind,
                                       progression_id=progression_id or "", model_id=model_id, stage=stage,
                                       roles=roles, message=message))

    def take(self) -> tuple[list[AuditEventIn], list[Notification], int]:
        events, notes = self.events, self.notes
        self.events, self.notes = [], []
        self.version += 1
        return events, notes, self.version


@workflow.defn(name=FINDING_WORKFLOW)
class FindingWorkflow:
    @workflow.init
    def __init__(self, inp: FindingInput) -> None:
        self._finding = inp.finding
        self._rules = inp.rules
        self._rec = _Recorder()
        self._created = False
        self._changed = False

    @workflow.query(name=QUERY_FINDING)
    def finding(self) -> FindingRecord:
        return self._finding

    @workflow.run
    async def run(self, inp: FindingInput) -> FindingRecord:
        f = self._finding
        self._rec.emit(EventType.finding_raised, actor_id=f.raised_by, stage=f.stage, payload={
            "finding_id": f.finding_id, "severity": f.severity, "title": f.title, "description": f.description,
            "team": f.team, "version_id": f.version_id, "due_at": f.due_at, "condition": f.condition,
            "decision_id": f.decision_id, "evidence_refs": f.evidence_refs, "raised_by": f.raised_by_username})
        self._notify_team(f"finding {f.finding_id} ({f.severity}) raised on {f.model_id}: {f.title}; "
                          f"due {f.due_at.date().isoformat()}")
        await self._save()
        self._created = True
        while self._finding.status != FindingStatus.closed:
            self._changed = False
            deadline = self._next_deadline()
            timeout = max(deadline - workflow.now(), timedelta(0)) if deadline is not None else None
            try:
                await workflow.wait_condition(lambda: self._changed, timeout=timeout)
            except TimeoutError:
                await self._deadline_passed()
            await workflow.wait_condition(workflow.all_handlers_finished)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._finding

    # ---- deadlines ------------------------------------------------------------------------------

    def _next_deadline(self) -> datetime | None:
        f = self._finding
        if f.status not in (FindingStatus.open, FindingStatus.remediation_submitted) or f.overdue:
            return None
        remind = reminder_at(f, self._rules)
        if remind is not None and not f.reminded and remind < f.due_at:
            return remind
        return f.due_at

    async def _deadline_passed(self) -> None:
        f, now = self._finding, workflow.now()
        if f.status not in (FindingStatus.open, FindingStatus.remediation_submitted) or f.overdue:
            return
        if now >= f.due_at:
            f.overdue = True
            f.escalated_to = self._rules.escalate_to
            self._rec.emit(EventType.finding_overdue, stage=f.stage, payload={
                "finding_id": f.finding_id, "severity": f.severity, "due_at": f.due_at, "condition": f.condition})
            self._rec.emit(EventType.finding_escalated, stage=f.stage, payload={
                "finding_id": f.finding_id, "escalate_to": self._rules.escalate_to.value, "due_at": f.due_at})
            self._rec.notify("finding", [self._rules.escalate_to, Role.model_developer],
                             f"finding {f.finding_id} ({f.severity}) on {f.model_id} is overdue since "
                             f"{f.due_at.date().isoformat()}: {f.title}", progression_id=f.progression_id,
                             model_id=f.model_id, stage=f.stage)
        else:
            f.reminded = True
            self._rec.emit(EventType.finding_reminder, stage=f.stage, payload={
                "finding_id": f.finding_id, "due_at": f.due_at, "team": f.team})
            self._notify_team(f"reminder: finding {f.finding_id} ({f.severity}) on {f.model_id} is due on "
                              f"{f.due_at.date().isoformat()}: {f.title}")
        await self._save()

    # ---- updates ---------------------------------------------------------------------------------

    @workflow.update(name=UPDATE_FINDING_READY)
    async def ready(self) -> FindingRecord:
        await workflow.wait_condition(lambda: self._created)
        return self._finding

    @workflow.update(name=UPDATE_REMEDIATE)
    async def submit_remediation(self, inp: RemediationInput) -> FindingRecord:
        await workflow.wait_condition(lambda: self._created)
        if inp.request_id in self._rec.requests:
            return self._finding
        if refusal := remediation_refusal(self._finding, inp.actor):  # the state moved since the validator
            raise _refuse(refusal)
        self._rec.requests.add(inp.request_id)
        f = self._finding
        f.status = FindingStatus.remediation_submitted
        f.remediated_by, f.remediated_at = inp.actor.user_id, workflow.now()
        f.remediation_note, f.remediation_evidence = inp.note, list(inp.evidence_refs)
        self._rec.emit(EventType.finding_remediation_submitted, actor_id=inp.actor.user_id, stage=f.stage, payload={
            "finding_id": f.finding_id, "actor": inp.actor.username, "note": inp.note,
            "evidence_refs": inp.evidence_refs, "request_id": inp.request_id})
        self._rec.notify("finding", [Role.model_validator, Role.model_risk_officer],
                         f"remediation of finding {f.finding_id} on {f.model_id} awaits verification",
                         progression_id=f.progression_id, model_id=f.model_id, stage=f.stage)
        await self._save()
        return self._finding

    @submit_remediation.validator
    def _validate_remediation(self, inp: RemediationInput) -> None:
        if inp.request_id in self._rec.requests:
            return
        if refusal := remediation_refusal(self._finding, inp.actor):
            raise _refuse(refusal)

    @workflow.update(name=UPDATE_VERIFY)
    async def verify_remediation(self, inp: VerifyInput) -> FindingRecord:
        await workflow.wait_condition(lambda: self._created)
        if inp.request_id in self._rec.requests:
            return self._finding
        if refusal := verification_refusal(self._finding, inp.actor):
            raise _refuse(refusal)
        self._rec.requests.add(inp.request_id)
        f, now = self._finding, workflow.now()
        f.verified_by, f.verified_at = inp.actor.user_id, now
        payload = {"finding_id": f.finding_id, "actor": inp.actor.username, "comment": inp.comment,
                   "remediated_by": f.remediated_by, "request_id": inp.request_id}
        if inp.outcome == VerifyOutcome.close:
            f.status, f.closed_at = FindingStatus.closed, now
            self._rec.emit(EventType.finding_closed, actor_id=inp.actor.user_id, stage=f.stage, payload=payload)
            self._notify_team(f"finding {f.finding_id} on {f.model_id} was closed by {inp.actor.username}")
        else:
            f.status = FindingStatus.open
            self._rec.emit(EventType.finding_reopened, actor_id=inp.actor.user_id, stage=f.stage, payload=payload)
            self._notify_team(f"the remediation of finding {f.finding_id} on {f.model_id} was sent back by "
                              f"{inp.actor.username}: {inp.comment}")
        self._changed = True
        await self._save()
        return self._finding

    @verify_remediation.validator
    def _validate_verify(self, inp: VerifyInput) -> None:
        if inp.request_id in self._rec.requests:
            return
        if refusal := verification_refusal(self._finding, inp.actor):
            raise _refuse(refusal)

    @workflow.signal(name=SIGNAL_FINDING_WAIVER)
    async def finding_waiver(self, waiver: FindingWaiver) -> None:
        await workflow.wait_condition(lambda: self._created)
        f = self._finding
        if waiver.active and f.status in (FindingStatus.open, FindingStatus.remediation_submitted):
            f.status, f.waived_by = FindingStatus.risk_accepted, waiver.exception_id
            self._rec.emit(EventType.finding_risk_accepted, stage=f.stage, payload={
                "finding_id": f.finding_id, "exception_id": waiver.exception_id})
        elif not waiver.active and f.status == FindingStatus.risk_accepted and f.waived_by == waiver.exception_id:
            f.status, f.waived_by = FindingStatus.open, None
            self._rec.emit(EventType.finding_reopened, stage=f.stage, payload={
                "finding_id": f.finding_id, "reason": f"exception {waiver.exception_id} lapsed"})
            self._notify_team(f"exception {waiver.exception_id} lapsed: finding {f.finding_id} on {f.model_id} is "
                              "open again")
        else:
            return
        self._changed = True
        await self._save()

    # ---- bookkeeping -----------------------------------------------------------------------------

    def _notify_team(self, message: str) -> None:
        f = self._finding
        self._rec.notify("finding", [Role.model_developer], message, progression_id=f.progression_id,
                         model_id=f.model_id, stage=f.stage)

    async def _save(self) -> None:
        events, notes, version = self._rec.take()
        await workflow.execute_activity(
            SAVE_FINDING,
            SaveFindingInput(record=self._finding, version=version, at=workflow.now(), events=events,
                             notifications=notes),
            result_type=SaveResult, start_to_close_timeout=SAVE_TIMEOUT, retry_policy=SAVE_RETRY,
            heartbeat_timeout=HEARTBEAT_TIMEOUT)


@workflow.defn(name=EXCEPTION_WORKFLOW)
class ExceptionWorkflow:
    @workflow.init
    def __init__(self, inp: ExceptionInput) -> None:
        self._exc = inp.exception
        self._rules = inp.rules
        self._rec = _Recorder()
        self._created = False

    @workflow.query(name=QUERY_EXCEPTION)
    def exception(self) -> ExceptionRecord:
        return self._exc

    @workflow.run
    async def run(self, inp: ExceptionInput) -> ExceptionRecord:
        e = self._exc
        self._rec.emit(EventType.exception_requested, actor_id=e.requested_by, payload={
            "exception_id": e.exception_id, "kind": e.kind.value, "version_id": e.version_id,
            "check_id": e.check_id, "finding_id": e.finding_id, "reason": e.reason, "magnitude": e.magnitude,
            "expires_at": e.expires_at, "needs_checker": e.needs_checker, "requested_by": e.requested_by_username,
            "credential_id": e.requested_credential_id, "credential_issued_by": e.requested_credential_issued_by})
        if e.needs_checker:
            self._rec.notify("exception", list(self._rules.grant_roles),
                             f"exception {e.exception_id} on {e.model_id} {e.version_id} awaits a second approver",
                             progression_id=e.progression_id, model_id=e.model_id)
        else:
            self._activate(None)
        await self._save()
        self._created = True
        if self._exc.status == ExceptionStatus.pending_approval:
            try:
                await workflow.wait_condition(lambda: self._exc.status != ExceptionStatus.pending_approval,
                                              timeout=max(e.expires_at - workflow.now(), timedelta(0)))
            except TimeoutError:
                pass  # never approved before its expiry: it lapses without having taken effect
            await workflow.wait_condition(workflow.all_handlers_finished)
        if self._exc.status == ExceptionStatus.active:
            await self._tell_finding(active=True)
            remaining = e.expires_at - workflow.now()
            if remaining > timedelta(0):
                await workflow.sleep(remaining)
        await self._lapse()
        return self._exc

    def _activate(self, approver: Actor | None, comment: str = "") -> None:
        e = self._exc
        e.status = ExceptionStatus.active
        if approver is not None:
            e.approved_by, e.approved_by_username, e.approved_at = approver.user_id, approver.username, workflow.now()
            e.approved_credential_id = approver.credential_id
            e.approved_credential_issued_by = approver.credential_issued_by
        self._rec.emit(EventType.exception_granted, actor_id=approver.user_id if approver else e.requested_by,
                       payload={"exception_id": e.exception_id, "kind": e.kind.value, "version_id": e.version_id,
                                "check_id": e.check_id, "finding_id": e.finding_id, "expires_at": e.expires_at,
                                "requested_by": e.requested_by_username,
                                "approved_by": approver.username if approver else None,
                                "credential_id": e.approved_credential_id,
                                "credential_issued_by": e.approved_credential_issued_by,
                                "requested_credential_issued_by": e.requested_credential_issued_by,
                                "comment": comment})  # the checker's reason is part of the record
        self._rec.notify("exception", [Role.model_developer],
                         f"exception {e.exception_id} ({e.kind.value}) on {e.model_id} {e.version_id} is in force "
                         f"until {e.expires_at.date().isoformat()}", progression_id=e.progression_id,
                         model_id=e.model_id)

    async def _lapse(self) -> None:
        e = self._exc
        took_effect = e.status == ExceptionStatus.active
        e.status, e.lapsed_at = ExceptionStatus.lapsed, workflow.now()
        self._rec.emit(EventType.exception_lapsed, payload={
            "exception_id": e.exception_id, "kind": e.kind.value, "version_id": e.version_id,
            "check_id": e.check_id, "finding_id": e.finding_id, "expires_at": e.expires_at,
            "took_effect": took_effect})
        what = f"check {e.check_id}" if e.check_id else f"finding {e.finding_id}" if e.finding_id else "the PMA"
        self._rec.notify("exception", [Role.model_developer, *self._rules.grant_roles],
                         f"exception {e.exception_id} on {e.model_id} {e.version_id} lapsed: {what} is back in force",
                         progression_id=e.progression_id, model_id=e.model_id)
        await self._save()
        if took_effect:
            await self._tell_finding(active=False)

    async def _tell_finding(self, *, active: bool) -> None:
        e = self._exc
        if e.kind != ExceptionKind.finding or not e.finding_id:
            return
        handle = workflow.get_external_workflow_handle(finding_workflow_id(e.finding_id))
        try:
            await handle.signal(SIGNAL_FINDING_WAIVER, FindingWaiver(exception_id=e.exception_id, active=active))
        except Exception:  # noqa: BLE001 - the finding was closed meanwhile (its workflow ended): nothing to waive
            workflow.logger.info("finding %s no longer running", e.finding_id)

    @workflow.update(name=UPDATE_FINDING_READY)
    async def ready(self) -> ExceptionRecord:
        await workflow.wait_condition(lambda: self._created)
        return self._exc

    @workflow.update(name=UPDATE_APPROVE_EXCEPTION)
    async def approve_exception(self, inp: ApproveExceptionInput) -> ExceptionRecord:
        await workflow.wait_condition(lambda: self._created)
        if inp.request_id in self._rec.requests:
            return self._exc
        if refusal := exception_approval_refusal(self._exc, inp.actor, self._rules):
            raise _refuse(refusal)
        self._rec.requests.add(inp.request_id)
        self._activate(inp.actor, inp.comment)
        await self._save()
        return self._exc

    @approve_exception.validator
    def _validate_approve(self, inp: ApproveExceptionInput) -> None:
        if inp.request_id in self._rec.requests:
            return
        if refusal := exception_approval_refusal(self._exc, inp.actor, self._rules):
            raise _refuse(refusal)

    async def _save(self) -> None:
        events, notes, version = self._rec.take()
        await workflow.execute_activity(
            SAVE_EXCEPTION,
            SaveExceptionInput(record=self._exc, version=version, at=workflow.now(), events=events,
                               notifications=notes),
            result_type=SaveResult, start_to_close_timeout=SAVE_TIMEOUT, retry_policy=SAVE_RETRY,
            heartbeat_timeout=HEARTBEAT_TIMEOUT)
