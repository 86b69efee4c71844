"""Activities of the finding and exception workflows: database writes, notifications, and telling the
model's running progressions what changed.

Each save is idempotent under retry: the row is written only by a newer ``version`` (a counter kept by
the workflow), audit event ids come from the workflow, and the notifications' audit events carry the
notification's id. After the commit the model's governance snapshot (its findings and exceptions) is
signalled to every running progression of the model, which applies only snapshots newer than its own.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.contract import (
    SAVE_EXCEPTION,
    SAVE_FINDING,
    START_FINDINGS,
    AuditEventIn,
    Notification,
    SaveExceptionInput,
    SaveFindingInput,
    SaveResult,
    StartFindingsInput,
    StartFindingsResult,
)
from activities.governance import governance_snapshot
from activities.heartbeat import heartbeats
from activities.notify import Notifier
from activities.progression import ProgressionActivities
from engine import audit
from engine.db import AuditEvent, ExceptionRow, FindingRow, ProgressionRow
from engine.findings import (
    FINDING_WORKFLOW,
    SIGNAL_GOVERNANCE,
    ExceptionRecord,
    FindingInput,
    FindingRecord,
    finding_workflow_id,
)
from engine.lifecycle import FINAL_STATUSES, EventType

log = logging.getLogger("progression.activities.findings")


def _finding_columns(record: FindingRecord, version: int, now: datetime) -> dict[str, Any]:
    return {"model_id": record.model_id, "team": record.team, "version_id": record.version_id,
            "progression_id": record.progression_id, "stage": record.stage, "severity": record.severity,
            "status": record.status.value, "condition": record.condition, "due_at": record.due_at,
            "overdue": record.overdue, "raised_at": record.raised_at, "updated_at": now, "version": version,
            "record": record.model_dump(mode="json")}


def _exception_columns(record: ExceptionRecord, version: int, now: datetime) -> dict[str, Any]:
    return {"kind": record.kind.value, "model_id": record.model_id, "team": record.team,
            "version_id": record.version_id, "check_id": record.check_id, "finding_id": record.finding_id,
            "status": record.status.value, "expires_at": record.expires_at, "requested_at": record.requested_at,
            "updated_at": now, "version": version, "record": record.model_dump(mode="json")}


class FindingActivities:
    """Shares the progression activities' database, notifier and audit settings; signals through ``client``."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], notifier: Notifier, client: Client, *,
                 audit_chain: bool = True) -> None:
        self.sessionmaker = sessionmaker
        self.notifier = notifier
        self.client = client
        self.audit_chain = audit_chain

    @classmethod
    def beside(cls, progression: ProgressionActivities, client: Client) -> FindingActivities:
        return cls(progression.sessionmaker, progression.notifier, client, audit_chain=progression.audit_chain)

    def all(self) -> list[Any]:
        return [self.save_finding, self.save_exception, self.start_findings]

    @activity.defn(name=START_FINDINGS)
    @heartbeats
    async def start_findings(self, inp: StartFindingsInput) -> StartFindingsResult:
        """Start each finding's workflow on this worker's task queue; an existing one (a retry) is kept."""
        for finding in inp.findings:
            await self.client.start_workflow(
                FINDING_WORKFLOW, FindingInput(finding=finding, rules=inp.rules),
                id=finding_workflow_id(finding.finding_id), task_queue=activity.info().task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
        return StartFindingsResult(started=len(inp.findings))

    @activity.defn(name=SAVE_FINDING)
    @heartbeats
    async def save_finding(self, inp: SaveFindingInput) -> SaveResult:
        record = inp.record
        written = await self._save(FindingRow, record.finding_id, _finding_columns(record, inp.version, inp.at),
                                   inp.version, record.progression_id, record.model_id, inp.events,
                                   inp.notifications)
        return SaveResult(written=written, progressions_told=await self._publish(record.model_id))

    @activity.defn(name=SAVE_EXCEPTION)
    @heartbeats
    async def save_exception(self, inp: SaveExceptionInput) -> SaveResult:
        record = inp.record
        written = await self._save(ExceptionRow, record.exception_id,
                                   _exception_columns(record, inp.version, inp.at), inp.version,
                                   record.progression_id, record.model_id, inp.events, inp.notifications)
        return SaveResult(written=written, progressions_told=await self._publish(record.model_id))

    async def _save(self, table: type[FindingRow] | type[ExceptionRow], key: str, columns: dict[str, Any],
                    version: int, progression_id: str | None, model_id: str, events: list[AuditEventIn],
                    notifications: list[Notification]) -> bool:
        rows = [{"event_id": e.event_id, "event_type": e.event_type.value, "occurred_at": e.occurred_at,
                 "actor_id": e.actor_id, "progression_id": progression_id, "model_id": model_id, "stage": e.stage,
                 "payload": e.payload} for e in events]
        async with self.sessionmaker() as session, session.begin():
            row: FindingRow | ExceptionRow | None = await session.get(table, key, with_for_update=True)
            written = False
            if row is None:
                session.add(table(id=key, **columns))
                written = True
            elif row.version < version:
                for name, value in columns.items():
                    setattr(row, name, value)
                written = True
            await session.flush()
            await audit.append_events(session, rows, chain=self.audit_chain)
        await self._notify(notifications, progression_id, model_id, columns["updated_at"])
        return written

    async def _notify(self, notes: list[Notification], progression_id: str | None, model_id: str,
                      at: datetime) -> None:
        """Send after the commit and record each as ``notification.sent``, delivered or not (with the error);
        a retry of the activity sends only those not recorded yet."""
        if not notes:
            return
        async with self.sessionmaker() as session:
            recorded = set((await session.scalars(select(AuditEvent.event_id).where(
                AuditEvent.event_id.in_([n.event_id for n in notes])))).all())
        rows = []
        for note in notes:
            if note.event_id in recorded:
                continue
            delivered, error = True, None
            try:
                await self.notifier.send(note)
            except Exception as exc:  # noqa: BLE001 - a channel failure must not undo the recorded fact
                delivered, error = False, f"{type(exc).__name__}: {exc}"
                log.warning("notification %s not delivered: %s", note.event_id, error)
            rows.append({"event_id": note.event_id, "event_type": EventType.notification_sent.value,
                         "occurred_at": at, "actor_id": None, "progression_id": progression_id,
                         "model_id": model_id, "stage": note.stage,
                         "payload": {"kind": note.kind, "roles": [r.value for r in note.roles],
                                     "message": note.message, "channel": self.notifier.name,
                                     "delivered": delivered, "error": error}})
        if rows:
            async with self.sessionmaker() as session, session.begin():
                await audit.append_events(session, rows, chain=self.audit_chain)

    async def _publish(self, model_id: str) -> int:
        """Signal the model's governance snapshot to each of its running progressions."""
        async with self.sessionmaker() as session:
            snapshot = await governance_snapshot(session, model_id)
            running = (await session.scalars(select(ProgressionRow.id).where(
                ProgressionRow.model_id == model_id,
                ProgressionRow.status.not_in([s.value for s in FINAL_STATUSES])))).all()
        told = 0
        for progression_id in running:
            try:
                await self.client.get_workflow_handle(progression_id).signal(SIGNAL_GOVERNANCE, snapshot)
                told += 1
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:  # finished meanwhile: nothing to tell
                    raise
        return told

