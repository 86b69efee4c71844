"""SQLAlchemy 2.0 typed models and the async engine/session factory.

Temporal is the source of truth for where a progression stands; the tables here
hold the catalog, the read model of progressions (fast lists, inbox), users and
hashed tokens, evidence metadata, idempotency records and the audit chain.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """An INSERT for the session's database (PostgreSQL or SQLite), which both give ``on_conflict_do_*``."""
    table = getattr(table, "__table__", table)
    return pg_insert(table) if session.get_bind().dialect.name == "postgresql" else sqlite_insert(table)


def insert_ignore(session: AsyncSession, table: Any, keys: list[str], rows: list[dict[str, Any]] | None = None,
                  **columns: Any) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING of ``rows`` or of one row given as ``columns``: concurrent
    creators of the same row neither fail nor need a retry; the caller reads the row afterwards if it needs it."""
    return dialect_insert(session, table).values(rows if rows is not None else columns).on_conflict_do_nothing(
        index_elements=keys)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware in, timezone-aware out, on SQLite too.

    A TypeDecorator (not a DateTime subclass): dialects adapt plain DateTime subclasses to their
    own DATETIME type, which silently dropped the result processor on SQLite. Values are stored
    in UTC because SQLite keeps no offset; a naive value is taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class Team(Base):
    __tablename__ = "teams"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    team: Mapped[str | None] = mapped_column(String(64), nullable=True)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    external: Mapped[bool] = mapped_column(Boolean, default=False)  # provisioned from SSO claims
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where enrollment codes are sent (out of band: the admin who creates one never sees it).
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    # When an admin last changed the address: an enrollment after that re-issues a credential (confirmed by a
    # second admin before its holder decides), and the old address was told.
    email_changed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    email_changed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the secret
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a token in lists
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Who issued it: an admin's username, "enrollment:<admin>" for a token the person redeemed
    # themself, "bootstrap" for the seed and the operator CLI.
    issued_by: Mapped[str | None] = mapped_column(String(160), nullable=True)
    # A token redeemed from a re-issuing enrollment (its person had a credential before, or an admin changed
    # their e-mail address): its holder's maker-checker roles act only once a second admin confirms it.
    confirmation_required: Mapped[bool] = mapped_column(Boolean, default=False)
    confirmed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    confirmed_at: Mapped[datetime | None] = mapped_column(nullable=True)

    @property
    def awaiting_confirmation(self) -> bool:
        return bool(self.confirmation_required) and self.confirmed_at is None


class BrowserSession(Base):
    """A signed-in web UI session (the cookie carries only its id, signed). Sign-out ends it here, so a
    replayed cookie is refused; ``pending`` keeps a decision posted on an expired session until its
    author signs in again and confirms it (``api.web.session``)."""

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True,
                                                index=True)
    token_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    pending: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Enrollment(Base):
    """A one-time code an admin creates for a person; the person redeems it for their own token."""

    __tablename__ = "enrollments"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    redeemed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    token_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    sent_to: Mapped[str] = mapped_column(String(254), default="")  # the masked address the code was mailed to
    reissue: Mapped[bool] = mapped_column(Boolean, default=False)  # its token awaits a second admin's confirmation
    superseded_at: Mapped[datetime | None] = mapped_column(nullable=True)  # a newer code (or an e-mail change)


class RoleGrant(Base):
    """A role granted to a user: proposed by one admin, approved by a different one (maker-checker)."""

    __tablename__ = "role_grants"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # pending, approved
    reason: Mapped[str] = mapped_column(String(1000), default="")
    proposed_by: Mapped[str] = mapped_column(String(128))
    proposed_at: Mapped[datetime] = mapped_column(default=utcnow)
    approved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(nullable=True)


class IntentChange(Base):
    """A change of a model's business intent (which policy governs its next versions): proposed by one model risk
    officer, applied only when a second, different one approves that very proposal (maker-checker)."""

    __tablename__ = "intent_changes"
    # One open proposal per model, held by the database: two officers proposing at once cannot both succeed.
    __table_args__ = (Index("uq_intent_changes_one_pending", "model_id", unique=True,
                            sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    from_intent: Mapped[str] = mapped_column(String(64))
    to_intent: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(16))  # pending, approved, rejected
    proposed_by: Mapped[str] = mapped_column(String(36))  # user id
    proposed_by_username: Mapped[str] = mapped_column(String(128))
    proposed_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    decided_by_username: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)


class CatalogModel(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    team: Mapped[str] = mapped_column(String(64), index=True)
    business_intent: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version_id", name="uq_model_versions_model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(1000))
    artifact: Mapped[str] = mapped_column(String(1000))
    # sha256 of the artifact, when the spec declares it: the same bytes under another URI are the same model.
    artifact_digest: Mapped[str | None] = mapped_column(String(71), nullable=True, index=True)
    features: Mapped[list[str]] = mapped_column(JSON, default=list)
    spec_yaml: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProgressionRow(Base):
    """Read model of a progression: a snapshot of the workflow state, newest (``updated_at``, ``seq``) wins."""

    __tablename__ = "progressions"
    id: Mapped[str] = mapped_column(String(140), primary_key=True)  # == Temporal workflow id
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version_id: Mapped[str] = mapped_column(String(64))
    team: Mapped[str] = mapped_column(String(64), index=True)
    business_intent: Mapped[str] = mapped_column(String(64), index=True)
    risk_tier: Mapped[int] = mapped_column(Integer)
    policy_hash: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(32), index=True)
    current_stage: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    target: Mapped[str] = mapped_column(String(32), default="production")
    submitted_by: Mapped[str] = mapped_column(String(36), index=True)
    waiting_on: Mapped[list[str]] = mapped_column(JSON, default=list)  # roles
    gate_opened_at: Mapped[datetime | None] = mapped_column(nullable=True)
    sla_due_at: Mapped[datetime | None] = mapped_column(nullable=True)
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    revalidation_due_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revalidation_overdue: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The open gate as the inbox reads it (stage, approvals, decisions' actors, names), a few hundred
    # bytes instead of the whole snapshot; null when no gate is open. See engine.lifecycle.gate_record.
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The feature catalog version the progression's checks resolve against (engine.catalog); pinned when
    # it is registered, like policy_hash. Null only for rows written before catalog versions existed.
    catalog_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


Index("ix_progressions_status_gate", ProgressionRow.status, ProgressionRow.gate_opened_at)
# Keyset order of the inbox (gate opened, id) and of the progressions listing (newest first, id): a page
# reads its rows off the index instead of sorting every open gate or progression (migration 0011).
Index("ix_progressions_gate_opened_id", ProgressionRow.gate_opened_at, ProgressionRow.id)
Index("ix_progressions_started_id", ProgressionRow.started_at, ProgressionRow.id)


class DecisionRow(Base):
    __tablename__ = "decisions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # decision_id, deduplicates retries
    progression_id: Mapped[str] = mapped_column(ForeignKey("progressions.id"), index=True)
    stage: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[str] = mapped_column(String(36), index=True)
    actor_username: Mapped[str] = mapped_column(String(128))
    role: Mapped[str | None] = mapped_column(String(32), nullable=True)
    comment: Mapped[str] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column()
    credential_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    credential_issued_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # sha256 of what the decider saw (engine.lifecycle.basis_parts); NULL before migration 0005
    basis: Mapped[str | None] = mapped_column(String(80), nullable=True)


class EvidenceBlob(Base):
    """Evidence content is stored once, by SHA-256, under the data directory."""

    __tablename__ = "evidence_blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProgressionEvidence(Base):
    __tablename__ = "progression_evidence"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    progression_id: Mapped[str] = mapped_column(String(140), index=True)
    name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(ForeignKey("evidence_blobs.sha256"))
    filename: Mapped[str | None] = mapped_column(String(500), nullable=True)
    added_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class Feature(Base):
    __tablename__ = "features"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(String(1000), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The data owner (a username): with an admin, the one who approves proposed changes of this feature.
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)


class FeatureCatalogVersion(Base):
    """An immutable snapshot of the whole feature catalog after one change (engine.catalog).

    A progression pins the version current when it is registered (``progressions.catalog_version``) and
    its checks resolve features against that snapshot, as it pins its policy version.
    """

    __tablename__ = "feature_catalog_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    catalog_hash: Mapped[str] = mapped_column(String(80))
    content: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # name -> {description, tags, owner}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(String(200), default="")


class FeatureProposal(Base):
    """A proposed new feature or change of a feature's description, tags or owner (engine.catalog rules)."""

    __tablename__ = "feature_proposals"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    feature: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # create | change
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | applied | rejected | superseded
    proposed: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # description, tags, owner
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    based_on_version: Mapped[int] = mapped_column(Integer, default=0)
    approvals_needed: Mapped[int] = mapped_column(Integer, default=1)
    approvals: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    comment: Mapped[str] = mapped_column(String(2000), default="")
    proposed_by: Mapped[str] = mapped_column(String(36))
    proposed_by_username: Mapped[str] = mapped_column(String(128))
    proposed_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decision_comment: Mapped[str] = mapped_column(String(2000), default="")
    applied_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)  # bumps on every write; a write names the one it read


class PolicyVersion(Base):
    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("intent", "policy_hash", name="uq_policy_versions_intent_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    intent: Mapped[str] = mapped_column(String(64), index=True)
    policy_hash: Mapped[str] = mapped_column(String(80))
    title: Mapped[str] = mapped_column(String(200))
    risk_tier: Mapped[int] = mapped_column(Integer)
    content_yaml: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    published_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyRecord(Base):
    """First answer to a POST with an ``Idempotency-Key``; a retry gets it back and writes nothing."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_user_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(36))
    key: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None while in flight
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Append-only, hash-chained: ``hash = sha256(prev_hash + canonical(event))``."""

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)  # idempotency under activity retry
    event_type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column()
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    progression_id: Mapped[str | None] = mapped_column(String(140), nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


Index("ix_audit_progression_seq", AuditEvent.progression_id, AuditEvent.seq)
Index("ix_audit_model_seq", AuditEvent.model_id, AuditEvent.seq)
Index("ix_audit_actor_seq", AuditEvent.actor_id, AuditEvent.seq)
Index("ix_audit_type_seq", AuditEvent.event_type, AuditEvent.seq)
# Time windows: covers seq too (PostgreSQL index-only scans; SQLite keeps the rowid anyway).
Index("ix_audit_occurred_seq", AuditEvent.occurred_at, AuditEvent.seq)
# "events of a type in a time window": range-scan the window instead of every event of the type.
Index("ix_audit_type_occurred", AuditEvent.event_type, AuditEvent.occurred_at)


class FindingRow(Base):
    """A finding (engine.findings.FindingRecord): filter columns plus the whole record; written by the
    finding workflow's activities (the workflow is the single writer), read by the API."""

    __tablename__ = "findings"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64), index=True)
    team: Mapped[str] = mapped_column(String(64), index=True)
    version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    progression_id: Mapped[str | None] = mapped_column(String(140), nullable=True)
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    severity: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    condition: Mapped[bool] = mapped_column(Boolean, default=False)
    due_at: Mapped[datetime] = mapped_column(index=True)
    overdue: Mapped[bool] = mapped_column(Boolean, default=False)
    raised_at: Mapped[datetime] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=0)  # bumps on every write; only a newer one lands
    record: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ExceptionRow(Base):
    """An exception (waiver or post-model adjustment, engine.findings.ExceptionRecord)."""

    __tablename__ = "exceptions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str] = mapped_column(String(64), index=True)
    team: Mapped[str] = mapped_column(String(64), index=True)
    version_id: Mapped[str] = mapped_column(String(64))
    check_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    finding_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    requested_at: Mapped[datetime] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=0)
    record: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class MonitoringResultRow(Base):
    """A period's monitoring results of a model in production: stored by the API before it is delivered to the
    production workflow (``delivered`` turns true once the workflow answered, with its ``outcome``)."""

    __tablename__ = "monitoring_results"
    __table_args__ = (UniqueConstraint("model_id", "period", name="uq_monitoring_model_period"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64), index=True)
    version_id: Mapped[str] = mapped_column(String(64))
    progression_id: Mapped[str] = mapped_column(String(140), index=True)
    team: Mapped[str] = mapped_column(String(64), index=True)
    period: Mapped[str] = mapped_column(String(10))  # ISO date of the period's end
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    digest: Mapped[str] = mapped_column(String(80))  # sha256 of the canonical metrics: a retry sends the same
    posted_by: Mapped[str] = mapped_column(String(36))
    posted_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class RetirementOverride(Base):
    """A model risk officer's recorded override: the model may be retired although production models declare
    it a dependency."""

    __tablename__ = "retirement_overrides"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64), index=True)
    dependents: Mapped[list[str]] = mapped_column(JSON, default=list)
    reason: Mapped[str] = mapped_column(Text)
    granted_by: Mapped[str] = mapped_column(String(36))
    granted_by_username: Mapped[str] = mapped_column(String(128))
    credential_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditChainHead(Base):
    """One row: the last sequence number and hash; locked while appending so the chain stays linear."""

    __tablename__ = "audit_chain_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


DEFAULT_POOL_SIZE = 20
DEFAULT_MAX_OVERFLOW = 20


def make_engine(url: str, *, sqlite_single_connection: bool = False, **kwargs: Any) -> AsyncEngine:
    """``sqlite_single_connection``: for a process that mostly writes (the worker). SQLite has one writer
    at a time; with one connection the writes queue in the event loop instead of sleeping in SQLite's
    busy handler (which held local-activity workflow tasks for 5-7 s at 16 journeys in flight;
    bench/throughput.py 3.72 -> 4.03 journeys/s). Other databases keep their pool."""
    # Sized for the API's and the worker's concurrency (SQLAlchemy's default of 5 + 10 answered 500s to a
    # burst of 20 concurrent decisions: "QueuePool limit of size 5 overflow 10 reached").
    kwargs = {"pool_size": DEFAULT_POOL_SIZE, "max_overflow": DEFAULT_MAX_OVERFLOW, **kwargs}
    if url.startswith("sqlite"):
        if sqlite_single_connection:
            kwargs = {**kwargs, "pool_size": 1, "max_overflow": 0}
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
