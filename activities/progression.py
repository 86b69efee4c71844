"""Activities of the progression workflow: every side effect lives here.

The workflow is the single writer of a progression's rows: catalog (model, version), the
read model, decisions and audit events are all written by these activities, so a start that
fails leaves nothing half written. Every activity is idempotent under Temporal's retries:
audit event ids come from the workflow (deterministic), the read model is only overwritten by
a newer or equal (``updated_at``, ``seq``) (see ``_sync_read_model``), decision rows are keyed by
``decision_id`` and evidence links by (name, hash).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contract import (
    DEPLOY,
    EVALUATE_CHECKS,
    RECORD,
    RECORD_FAILURE,
    REGISTER_PROGRESSION,
    AuditEventIn,
    CheckSubject,
    DeployInput,
    DeployResult,
    EvaluateChecksInput,
    EvaluateChecksResult,
    Notification,
    RecordFailureInput,
    RecordInput,
    RecordResult,
    RegisterInput,
    RegisterResult,
    lean_results,
)
from activities.governance import governance_snapshot
from activities.heartbeat import heartbeats
from activities.notify import Notifier
from activities.promotion import PromotionTarget
from engine import audit, checks, features, lineage
from engine.db import (
    CatalogModel,
    DecisionRow,
    EvidenceBlob,
    ModelVersion,
    ProgressionEvidence,
    ProgressionRow,
    insert_ignore,
)
from engine.evidence import EvidenceCorrupted, EvidenceStore, record_blob
from engine.guidance import guided
from engine.lifecycle import (
    EventType,
    EvidenceRef,
    ProgressionState,
    StageStatus,
    Status,
    gate_record,
)

log = logging.getLogger("progression.activities")

# Attempts after which a failing notification channel is given up on (recorded as undelivered)
# instead of holding the progression hostage.
NOTIFY_MAX_ATTEMPTS = 5


def _event_dict(state: ProgressionState | CheckSubject, event: AuditEventIn) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "event_type": event.event_type.value,
        "occurred_at": event.occurred_at,
        "actor_id": event.actor_id,
        "progression_id": state.progression_id,
        "model_id": state.model_id,
        "stage": event.stage,
        "payload": event.payload,
    }


def _read_model_values(state: ProgressionState) -> dict[str, Any]:
    """The columns of the progressions row derived from a state snapshot (with its guidance, in words)."""
    state = guided(state)
    stage = state.stage(state.current_stage) if state.current_stage else None
    gate_open = stage is not None and stage.status == StageStatus.awaiting_approval
    dues = [a.due_at for a in stage.approvals if a.due_at and not a.satisfied] if gate_open and stage else []
    return {
        "status": state.status.value,
        "current_stage": state.current_stage,
        "waiting_on": [r.value for r in state.waiting_on],
        "gate_opened_at": stage.gate_opened_at if gate_open and stage else None,
        "sla_due_at": min(dues) if dues else None,
        "escalated": bool(gate_open and stage and any(a.escalated for a in stage.approvals)),
        "revalidation_due_at": state.revalidation_due_at,
        "revalidation_overdue": state.revalidation_overdue,
        "updated_at": state.updated_at,
        "seq": state.seq,
        "state": state.model_dump(mode="json"),
        "gate": gate_record(state),
    }


class ProgressionActivities:
    """Activity implementations with their dependencies injected (one instance per worker)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        evidence_store: EvidenceStore,
        promotion_target: PromotionTarget,
        notifier: Notifier,
        *,
        audit_chain: bool = True,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.evidence_store = evidence_store
        self.promotion_target = promotion_target
        self.notifier = notifier
        self.audit_chain = audit_chain

    def all(self) -> list[Any]:
        """Every activity method, for ``Worker(activities=...)``."""
        return [self.register_progression, self.evaluate_checks, self.record, self.deploy, self.record_failure]

    # ---- helpers --------------------------------------------------------------------------

    async def _append(self, session: AsyncSession, state: ProgressionState | CheckSubject,
                      events: list[AuditEventIn]) -> int:
        if not events:
            return 0
        await audit.append_events(session, [_event_dict(state, e) for e in events], chain=self.audit_chain)
        return len(events)

    async def _sync_read_model(self, session: AsyncSession, state: ProgressionState) -> bool:
        # The snapshot is ordered by (updated_at, seq), not by seq alone. ``record`` is a local activity: it
        # runs inside a workflow task and writes before that task completes. A task that never completes
        # (worker killed, task failed) leaves a snapshot the history never reached; the retried task runs
        # again on the durable history, later (``updated_at`` is ``workflow.now()``, the task's start, and
        # strictly later for every attempt), and may reach the same seq with other content or a lower one.
        # Seq alone refused those writes and kept the phantom. Ordered by (updated_at, seq) the durable
        # retry always supersedes it; within a task seq orders the writes; older writes (a late retry of an
        # activity) are refused; an equal key rewrites (a retried record carries the same state).
        row = ProgressionRow
        newer = or_(row.updated_at < state.updated_at, and_(row.updated_at == state.updated_at, row.seq <= state.seq))
        result = await session.execute(
            update(row).where(row.id == state.progression_id, newer).values(**_read_model_values(state)))
        return bool(cast(CursorResult[Any], result).rowcount)

    async def _link_evidence(self, session: AsyncSession, progression_id: str, refs: list[EvidenceRef],
                             default_actor: str | None, default_at: datetime) -> None:
        for ref in refs:
            exists = await session.scalar(
                select(ProgressionEvidence.id).where(
                    ProgressionEvidence.progression_id == progression_id,
                    ProgressionEvidence.name == ref.name,
                    ProgressionEvidence.sha256 == ref.sha256,
                )
            )
            if exists is not None:
                continue
            if await session.get(EvidenceBlob, ref.sha256) is None:
                # The API records blobs before starting; a client that only put the file in the
                # store (or a test) still gets a consistent catalog, as long as the bytes exist.
                if not self.evidence_store.exists(ref.sha256):
                    raise ApplicationError(
                        f"evidence {ref.name!r} ({ref.sha256}) is not in the evidence store",
                        type="evidence_missing", non_retryable=True)
                await record_blob(session, sha256=ref.sha256, size=ref.size, media_type=ref.media_type)
            session.add(ProgressionEvidence(
                progression_id=progression_id, name=ref.name, sha256=ref.sha256, filename=ref.filename,
                added_by=ref.added_by or default_actor, added_at=ref.added_at or default_at))

    async def _pinned_catalog(self, session: AsyncSession, progression_id: str) -> int | None:
        """The catalog version the progression pinned; a row from before catalog versions pins the current one."""
        pinned = await session.scalar(select(ProgressionRow.catalog_version)
                                      .where(ProgressionRow.id == progression_id))
        if pinned is not None:
            return int(pinned)
        current = await features.current_catalog_version(session)
        if not current:
            return None
        await session.execute(update(ProgressionRow).where(ProgressionRow.id == progression_id,
                                                           ProgressionRow.catalog_version.is_(None))
                              .values(catalog_version=current))
        return int(await session.scalar(select(ProgressionRow.catalog_version)
                                        .where(ProgressionRow.id == progression_id)) or current)

    def _note_event(self, state: ProgressionState, note: Notification, delivered: bool,
                    error: str | None) -> dict[str, Any]:
        """The ``notification.sent`` audit event of one notification (its id is the notification's)."""
        return {
            "event_id": note.event_id, "event_type": EventType.notification_sent.value,
            "occurred_at": state.updated_at, "actor_id": None, "progression_id": state.progression_id,
            "model_id": state.model_id, "stage": note.stage,
            "payload": {"kind": note.kind, "roles": [r.value for r in note.roles], "message": note.message,
                        "channel": self.notifier.name, "delivered": delivered, "error": error}}

    @property
    def _local_notifier(self) -> bool:
        """In-process delivery that cannot fail (``LogNotifier``): its audit events join the main transaction."""
        return bool(getattr(self.notifier, "local", False))

    async def _send(self, state: ProgressionState, notifications: list[Notification]) -> int:
        """Send after the commit; record each as ``notification.sent`` (delivered or given up).

        Remote channels: the events of every notification handled in this attempt are appended in
        one transaction after sending (also when a later one fails and the activity is retried, so
        what was delivered is recorded before the retry).
        """
        if not notifications:
            return 0
        if self._local_notifier:
            for note in notifications:  # already recorded in the caller's transaction
                await self.notifier.send(note)
            return len(notifications)
        sent = 0
        done: list[dict[str, Any]] = []
        try:
            for note in notifications:
                delivered, error = True, None
                try:
                    await self.notifier.send(note)
                except Exception as exc:  # noqa: BLE001 - any channel failure is retried, then recorded
                    if activity.info().attempt < NOTIFY_MAX_ATTEMPTS:
                        raise
                    delivered, error = False, f"{type(exc).__name__}: {exc}"
                    log.warning("notification %s not delivered after %d attempts: %s", note.event_id,
                                NOTIFY_MAX_ATTEMPTS, error)
                done.append(self._note_event(state, note, delivered, error))
                sent += delivered
        finally:
            if done:
                async with self.sessionmaker() as session, session.begin():
                    await audit.append_events(session, done, chain=self.audit_chain)
        return sent

    # ---- activities -----------------------------------------------------------------------

    @activity.defn(name=REGISTER_PROGRESSION)
    @heartbeats
    async def register_progression(self, inp: RegisterInput) -> RegisterResult:
        """Upsert model and version, create the read-model row, link evidence, append progression.started."""
        state, spec = inp.state, inp.spec
        async with self.sessionmaker() as session, session.begin():
            # Earlier progressions of the same artifact, commit or digest (this one excluded): read once, for the
            # downgrade check and for the prior rejections a decider must acknowledge. The API refuses a downgrade
            # before a workflow exists; checked here too for a start that got past it (a race, a Temporal client).
            earlier = await lineage.prior_outcomes(session, progression_id=state.progression_id,
                                                   artifact=spec.version.artifact, source=spec.version.source,
                                                   digest=spec.version.artifact_digest)
            if (stricter := lineage.stricter_prior(earlier, model_id=spec.model.id, risk_tier=state.risk_tier)):
                raise ApplicationError(lineage.downgrade_message(stricter, intent=spec.model.business_intent,
                                                                 risk_tier=state.risk_tier),
                                       type="intent_downgrade", non_retryable=True)
            # Insert-or-ignore: the first concurrent starts of a new model must not collide on the key.
            inserted = await session.execute(insert_ignore(
                session, CatalogModel, ["id"], id=spec.model.id, name=spec.model.name, team=spec.model.team,
                business_intent=spec.model.business_intent))
            model = await session.get(CatalogModel, spec.model.id)
            assert model is not None
            if cast(CursorResult[Any], inserted).rowcount:
                pass  # created just now from this spec: nothing to compare
            elif model.team != spec.model.team or model.business_intent != spec.model.business_intent:
                # A model's owner and intent are fixed; a spec that disagrees is a business error.
                raise ApplicationError(
                    f"model {spec.model.id} is owned by team {model.team!r} with intent {model.business_intent!r}; "
                    f"the spec says team {spec.model.team!r}, intent {spec.model.business_intent!r}",
                    type="model_mismatch", non_retryable=True)
            else:
                model.name = spec.model.name
            await session.flush()
            await session.execute(insert_ignore(
                session, ModelVersion, ["model_id", "version_id"], model_id=spec.model.id,
                version_id=spec.version.id, source=spec.version.source, artifact=spec.version.artifact,
                artifact_digest=spec.version.artifact_digest, features=list(spec.features), spec_yaml=inp.spec_yaml))
            row = await session.get(ProgressionRow, state.progression_id)
            created = row is None
            # The catalog version its checks will resolve features against, pinned like the policy.
            catalog_version = await features.current_catalog_version(session) or None
            if row is not None and row.status == Status.failed.value and state.status != Status.failed:
                # The owner started a failed version again: the new run's rows replace the failed one's.
                await session.execute(update(ProgressionRow).where(ProgressionRow.id == state.progression_id).values(
                    submitted_by=state.submitted_by, started_at=state.started_at, team=state.team,
                    business_intent=state.business_intent, risk_tier=state.risk_tier,
                    policy_hash=state.policy_hash, target=state.target, catalog_version=catalog_version,
                    **_read_model_values(state)))
            elif row is None:
                session.add(ProgressionRow(
                    id=state.progression_id, model_id=state.model_id, version_id=state.version_id, team=state.team,
                    business_intent=state.business_intent, risk_tier=state.risk_tier, policy_hash=state.policy_hash,
                    target=state.target, submitted_by=state.submitted_by, started_at=state.started_at,
                    catalog_version=catalog_version, **_read_model_values(state)))
                await session.flush()
            else:
                await self._sync_read_model(session, state)
            await self._link_evidence(session, state.progression_id, list(state.evidence.values()),
                                      state.submitted_by, state.started_at)
            await self._append(session, state, inp.events)
            governance = await governance_snapshot(session, state.model_id)
        return RegisterResult(created=created, prior_rejections=[p for p in earlier if p.status == "rejected"],
                              governance=governance)

    @activity.defn(name=RECORD_FAILURE)
    @heartbeats
    async def record_failure(self, inp: RecordFailureInput) -> RecordResult:
        """The workflow failed: the read model says ``failed`` with the reason; ``progression.failed`` is appended.

        Also when registration never wrote the row (e.g. ``model_mismatch``): the row is created then, so
        the failure is visible and the version can be started again by its owner.
        """
        state, spec = inp.state, inp.spec
        async with self.sessionmaker() as session, session.begin():
            await session.execute(insert_ignore(
                session, CatalogModel, ["id"], id=spec.model.id, name=spec.model.name, team=spec.model.team,
                business_intent=spec.model.business_intent))
            row = await session.get(ProgressionRow, state.progression_id)
            if row is None:
                session.add(ProgressionRow(
                    id=state.progression_id, model_id=state.model_id, version_id=state.version_id, team=state.team,
                    business_intent=state.business_intent, risk_tier=state.risk_tier, policy_hash=state.policy_hash,
                    target=state.target, submitted_by=state.submitted_by, started_at=state.started_at,
                    **_read_model_values(state)))
                await session.flush()
                updated = True
            else:
                result = await session.execute(update(ProgressionRow).where(
                    ProgressionRow.id == state.progression_id).values(**_read_model_values(state)))
                updated = bool(cast(CursorResult[Any], result).rowcount)
            await self._append(session, state, inp.events)
        return RecordResult(events_written=len(inp.events), read_model_updated=updated, notifications_sent=0)

    @activity.defn(name=EVALUATE_CHECKS)
    @heartbeats
    async def evaluate_checks(self, inp: EvaluateChecksInput) -> EvaluateChecksResult:
        """Evaluate one stage's checks over the stored evidence; one ``check.evaluated`` event per check."""
        subject = inp.subject or (CheckSubject(progression_id=inp.state.progression_id, model_id=inp.state.model_id,
                                               evidence=inp.state.evidence) if inp.state is not None else None)
        if subject is None:
            raise ApplicationError("evaluate_checks needs a subject or a state", type="invalid_input",
                                   non_retryable=True)
        evidence: dict[str, Any] = {}
        for name, ref in subject.evidence.items():
            if not self.evidence_store.exists(ref.sha256):
                continue  # the check then reports "evidence.<name> is missing" in words
            try:
                data = await asyncio.to_thread(self.evidence_store.get, ref.sha256)
            except EvidenceCorrupted as exc:
                # Never feed altered bytes to a check: the check fails as "missing" and the log says why.
                log.error("%s: %s", subject.progression_id, exc.message)
                continue
            evidence[name] = checks.evidence_value(data, ref.filename, ref.media_type)
        async with self.sessionmaker() as session, session.begin():
            resolved = await features.resolve_pinned(
                session, list(inp.spec.features), await self._pinned_catalog(session, subject.progression_id))
        results = checks.evaluate_stage(inp.stage, spec=inp.spec, evidence=evidence, features=resolved,
                                        is_first_stage=inp.is_first_stage, now=inp.now)
        check_events = [
            AuditEventIn(
                event_id=f"{inp.event_id_prefix}/{r.check_id}", event_type=EventType.check_evaluated,
                occurred_at=inp.now, stage=inp.stage.name,
                payload={"check_id": r.check_id, "description": r.description, "expr": r.expr,
                         "passed": r.passed, "reason": r.reason, "inputs": r.inputs, "evaluator": r.evaluator,
                         "evidence": {n: e.sha256 for n, e in subject.evidence.items()}})
            for r in results
        ]
        rows = [_event_dict(subject, e) for e in [*inp.events_before, *check_events]]
        async with self.sessionmaker() as session, session.begin():
            if rows:
                await audit.append_events(session, rows, chain=self.audit_chain)
            if inp.state is not None:  # before the patch lean-payloads; since, the next record writes the snapshot
                await self._sync_read_model(session, inp.state)
                return EvaluateChecksResult(results=results)
        return EvaluateChecksResult(results=lean_results(inp.stage, results))

    @activity.defn(name=RECORD)
    @heartbeats
    async def record(self, inp: RecordInput) -> RecordResult:
        """Append events, write a decision row and evidence links, mirror the state; then notify."""
        state = inp.state
        async with self.sessionmaker() as session, session.begin():
            if inp.evidence:
                await self._link_evidence(session, state.progression_id, inp.evidence, None, state.updated_at)
            if inp.decision is not None:
                d = inp.decision
                await session.execute(insert_ignore(
                    session, DecisionRow, ["id"], id=d.decision_id, progression_id=state.progression_id,
                    stage=d.stage, decision=d.decision.value, actor_id=d.actor_id, actor_username=d.actor_username,
                    role=d.role.value if d.role else None, comment=d.comment, decided_at=d.at, basis=d.basis,
                    credential_id=d.credential_id, credential_issued_by=d.credential_issued_by))
            rows = [_event_dict(state, e) for e in inp.events]
            if self._local_notifier:
                # Local delivery cannot fail: its record joins this transaction (one commit per record).
                rows += [self._note_event(state, n, True, None) for n in inp.notifications]
            if rows:
                await audit.append_events(session, rows, chain=self.audit_chain)
            written = len(inp.events)
            updated = await self._sync_read_model(session, state)
        sent = await self._send(state, inp.notifications)
        return RecordResult(events_written=written, read_model_updated=updated, notifications_sent=sent)

    @activity.defn(name=DEPLOY)
    @heartbeats
    async def deploy(self, inp: DeployInput) -> DeployResult:
        """Hand the version to the promotion target; a failure raises and Temporal retries."""
        receipt = await self.promotion_target.deploy(inp.deployment)
        return DeployResult(receipt=receipt)
