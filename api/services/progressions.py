"""Progressions: start, read, list, decide, add evidence, withdraw.

Temporal is the source of truth: reads go through the workflow's ``state`` query and
fall back to the read-model snapshot; every change goes through an Update. Evidence
blobs are stored (content-addressed) before the workflow starts; the workflow's
activities write the catalog, the read model, decisions and audit events. The API
writes only what the workflow cannot: the audit record of a *refused* decision.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.authz import (
    Action,
    Principal,
    can_see_team,
    hold_refusal,
    listing_conditions,
    require,
    require_act_on_team,
    require_visible,
    team_refusal,
)
from api.cursors import decode_cursor, encode_cursor
from api.deps import AppState
from api.errors import ApiError
from api.services.people import people
from engine import audit, lineage
from engine.actions import Caller, allowed_actions, next_command
from engine.checks import evidence_value
from engine.contracts import evidence_problems, problems_message
from engine.db import AuditEvent, CatalogModel, Feature, ModelVersion, ProgressionRow
from engine.db import utcnow as _utcnow
from engine.errors import NotFound, ProgressionError
from engine.evidence import EvidenceCorrupted, EvidenceStore, guess_media_type, record_blob, sha256_hex
from engine.findings import blocking_refusal, conditions_refusal
from engine.lifecycle import (
    DECIDING_ROLES,
    ActionOption,
    ConditionIn,
    DecisionKind,
    EventType,
    EvidenceRef,
    Lineage,
    PriorOutcome,
    ProgressionDetail,
    ProgressionState,
    Refusal,
    StageState,
    Status,
    acknowledgement_refusal,
    basis_refusal,
    compute_basis,
    counted_approvals,
    decision_refusal,
    evidence_change_refusal,
    evidence_refusal,
    withdraw_refusal,
)
from engine.loading import load_spec
from engine.policy import Role
from engine.spec import EvidenceName, identity_changes, spec_digest
from engine.wire import ApprovalCheck, EvidenceCheck, ProgressionPage, ProgressionSummary, ProgressionVerification
from workflows.contract import (
    EVIDENCE_ANSWER,
    QUERY_STATE,
    SA_INTENT,
    SA_MODEL_ID,
    SA_RISK_TIER,
    SA_STAGE,
    SA_STATUS,
    UPDATE_DECIDE,
    UPDATE_SUBMIT_EVIDENCE,
    UPDATE_WITHDRAW,
    WITHDRAW_ANSWER,
    WORKFLOW_NAME,
    DecideInput,
    DecideResult,
    EvidenceInput,
    ProgressionInput,
    UpdateAnswer,
    WithdrawInput,
)

QUERY_TIMEOUT = timedelta(seconds=10)
EVIDENCE_PREFIX = "evidence."


@dataclass
class Upload:
    """One evidence part of a multipart request."""

    name: str
    filename: str | None
    data: bytes
    content_type: str | None


# ---- reading ---------------------------------------------------------------------------------


async def _read_model(session: AsyncSession, progression_id: str) -> ProgressionRow | None:
    return await session.get(ProgressionRow, progression_id)


async def load_state(session: AsyncSession, app: AppState, progression_id: str) -> ProgressionState | None:
    """The live state from the workflow query; the read-model snapshot when the query cannot answer."""
    return (await _load_state(session, app, progression_id))[0]


async def _load_state(session: AsyncSession, app: AppState,
                      progression_id: str) -> tuple[ProgressionState | None, bool]:
    """(state, live): live is False when it is the read-model snapshot, which may lag the workflow."""
    handle: WorkflowHandle[Any, Any] = app.temporal.get_workflow_handle(progression_id)
    try:
        return await handle.query(QUERY_STATE, result_type=ProgressionState, rpc_timeout=QUERY_TIMEOUT), True
    except Exception:  # not found, no worker, timeout: the snapshot is the best we have
        row = await _read_model(session, progression_id)
        if row is None or not row.state:
            return None, False
        return ProgressionState.model_validate(row.state), False


async def recorded_state(session: AsyncSession, app: AppState, progression_id: str) -> ProgressionState | None:
    """The state as last recorded: the read-model snapshot, written in the same transaction as the
    audit events that produced it, so what a reader sees is what the trail holds. Only a progression
    whose first record is not written yet (just started) is asked for its live state.

    Reads no workflow: a worker holding thousands of parked progressions would otherwise replay an
    evicted one's history for every GET.
    """
    row = await _read_model(session, progression_id)
    if row is not None and row.state:
        return ProgressionState.model_validate(row.state)
    return await load_state(session, app, progression_id)


async def answered_state(session: AsyncSession, app: AppState, progression_id: str,
                         answer: UpdateAnswer | ProgressionState) -> ProgressionState:
    """The state an Update left behind, as its HTTP answer: the same body as before patch ``lean-update-results``.

    A progression started before the patch answers with the state itself. A newer one answers with the ``seq`` it
    left behind, after its own ``record``: the read-model snapshot holds that seq (or a later one), so the answer
    is what a ``GET`` right after returns. Read in a new transaction (the caller's may predate the record);
    asked of the workflow only if the snapshot is behind the answer, which the workflow does not let happen.
    """
    if isinstance(answer, ProgressionState):
        return answer
    if isinstance(answer, DecideResult) and answer.state is not None:
        return answer.state
    await session.close()  # a fresh transaction and identity map: the row may have been read before the Update
    row = await _read_model(session, progression_id)
    if row is not None and row.state and row.seq >= answer.seq:
        return ProgressionState.model_validate(row.state)
    return await _current_state(session, app, progression_id)


async def get_progression(*, session: AsyncSession, app: AppState, principal: Principal,
                          progression_id: str) -> ProgressionState:
    require(principal, Action.read_progression)
    state = await recorded_state(session, app, progression_id)
    if state is None:
        raise ApiError(404, "not_found", f"progression {progression_id} not found")
    require_visible(principal, state.team, f"progression {progression_id}")
    return state


async def get_progression_detail(*, session: AsyncSession, app: AppState, principal: Principal,
                                 progression_id: str) -> ProgressionDetail:
    """The progression with its lineage (other versions of the model; same artifact, commit or digest anywhere)."""

    state = await get_progression(session=session, app=app, principal=principal, progression_id=progression_id)
    version = (await session.execute(select(ModelVersion).where(
        ModelVersion.model_id == state.model_id, ModelVersion.version_id == state.version_id))).scalar_one_or_none()
    same = [] if version is None else await lineage.prior_outcomes(
        session, progression_id=progression_id, artifact=version.artifact, source=version.source,
        digest=version.artifact_digest)
    versions = await lineage.model_versions(session, model_id=state.model_id, progression_id=progression_id)
    if not principal.reads_all_teams:  # other teams' progressions stay hidden from developers (404 rule)
        same = [p for p in same if p.model_id == state.model_id]
    detail = ProgressionDetail.model_validate(state.model_dump())
    detail.lineage = Lineage(model_versions=versions, same_artifact_or_commit=same,
                             prior_rejections=list(state.prior_rejections))
    detail.actions = actions_for(app, principal, state, spec_yaml=version.spec_yaml if version else None)
    detail.next_command = next_command(state, detail.actions)
    detail.people = await people(session, named_people(state))
    return detail


def with_actions(app: AppState, principal: Principal, state: ProgressionState) -> ProgressionDetail:
    """The state an action answers with, plus what the caller may do next (``actions``, ``next_command``)."""
    detail = ProgressionDetail.model_validate(state.model_dump())
    detail.actions = actions_for(app, principal, state)
    detail.next_command = next_command(state, detail.actions)
    return detail


def caller_of(app: AppState, principal: Principal, state: ProgressionState) -> Caller:
    """The caller as ``engine.actions`` sees them: the API's own role-table and team refusals by action."""
    what = f"progression {state.progression_id}"
    refused = {name: refusal for name, refusal in (
        ("decide", deciding_role_refusal(principal)),
        ("add_evidence", team_refusal(principal, Action.add_evidence, state.team, what)),
        ("withdraw", team_refusal(principal, Action.withdraw, state.team, what))) if refusal is not None}
    return Caller(actor=principal.actor, refused=refused,
                  sso_required=app.settings.deciders_sso_only and principal.credential_kind != "sso")


@lru_cache(maxsize=256)
def _spec_evidence_paths(spec_yaml: str) -> tuple[tuple[str, str], ...]:
    """The evidence paths a stored spec names (none if it no longer parses). A stored spec never changes, and
    parsing and validating it (the strict pure-Python YAML loader) was about 40% of a GET of a progression's
    detail, which clients poll: parsed once per spec and process."""
    try:
        return tuple(load_spec(spec_yaml).evidence.items())
    except ProgressionError:
        return ()


def actions_for(app: AppState, principal: Principal, state: ProgressionState,
                spec_yaml: str | None = None) -> list[ActionOption]:
    """What ``principal`` may do on the progression now (``engine.actions.allowed_actions``), with an upload slot
    per evidence item the pinned policy's contracts or the spec name."""
    loaded = app.registry.by_hash(state.policy_hash)
    policy = loaded.policy if loaded is not None else None
    kinds: dict[str, str | None] = {}
    paths: dict[str, str] = {}
    if spec_yaml:
        paths = dict(_spec_evidence_paths(spec_yaml))
    kinds.update({name: None for name in paths})
    if policy is not None:
        kinds.update({name: rule.description for name, rule in policy.evidence.items() if rule.is_contract})
        paths = {**{n: r.path for n, r in policy.evidence.items() if r.path}, **paths}
    return allowed_actions(state, caller_of(app, principal, state),
                           findings=policy.findings if policy is not None else None, evidence_kinds=kinds,
                           paths=paths)


def named_people(state: ProgressionState) -> set[str]:
    """The user ids a state names: its submitter, every decider, whoever added evidence."""
    ids = {state.submitted_by, *(ref.added_by for ref in state.evidence.values() if ref.added_by)}
    ids.update(d.actor_id for s in state.stages for d in s.decisions)
    return ids


def summary(row: ProgressionRow) -> ProgressionSummary:
    return ProgressionSummary(
        id=row.id, model_id=row.model_id, version_id=row.version_id, team=row.team,
        business_intent=row.business_intent, risk_tier=row.risk_tier, status=row.status,
        current_stage=row.current_stage, waiting_on=list(row.waiting_on or []), submitted_by=row.submitted_by,
        gate_opened_at=row.gate_opened_at, sla_due_at=row.sla_due_at, escalated=row.escalated,
        revalidation_due_at=row.revalidation_due_at, revalidation_overdue=row.revalidation_overdue,
        started_at=row.started_at, updated_at=row.updated_at)


PROGRESSIONS_CURSOR = "progressions"


async def list_progressions(*, session: AsyncSession, principal: Principal, secret: str, model: str | None = None,
                            intent: str | None = None, stage: str | None = None, status: str | None = None,
                            team: str | None = None, limit: int = 50, offset: int = 0,
                            cursor: str | None = None) -> ProgressionPage:
    """Newest first. Paged by ``cursor`` (keyset on started_at, id: stable while progressions start; see
    :mod:`api.cursors`), or by ``offset`` for old clients. A cursor continues only the listing (caller and
    filters) it was issued for; the team scope applies on every page."""
    require(principal, Action.list_progressions)
    filters = {"model": model, "intent": intent, "stage": stage, "status": status, "team": team}
    conds = listing_conditions(principal, ProgressionRow.team, team=(ProgressionRow.team, team),
                               model=(ProgressionRow.model_id, model),
                               intent=(ProgressionRow.business_intent, intent),
                               stage=(ProgressionRow.current_stage, stage), status=(ProgressionRow.status, status))
    total = (await session.execute(select(func.count()).select_from(ProgressionRow).where(*conds))).scalar_one()
    query = select(ProgressionRow).where(*conds)
    if cursor:
        key = decode_cursor(cursor, secret=secret, kind=PROGRESSIONS_CURSOR, user_id=principal.id, filters=filters)
        try:
            started, last_id = datetime.fromisoformat(key[0]), str(key[1])
        except (ValueError, TypeError, IndexError):
            raise ApiError(422, "invalid_cursor", "cursor is not one this API issued for this listing",
                           {"cursor": cursor[:200]}) from None
        query = query.where(or_(ProgressionRow.started_at < started,
                                and_(ProgressionRow.started_at == started, ProgressionRow.id > last_id)))
        offset = 0
    fetched = (await session.execute(
        query.order_by(ProgressionRow.started_at.desc(), ProgressionRow.id).limit(limit + 1).offset(offset)
    )).scalars().all()
    rows, more = fetched[:limit], len(fetched) > limit
    next_offset = offset + len(rows) if more and not cursor else None
    next_cursor = (encode_cursor(secret=secret, kind=PROGRESSIONS_CURSOR, user_id=principal.id, filters=filters,
                                 key=[rows[-1].started_at.isoformat(), rows[-1].id]) if more and rows else None)
    names = await people(session, (r.submitted_by for r in rows))
    items = []
    for r in rows:
        item, person = summary(r), names.get(r.submitted_by)
        item.submitted_by_username = person.username if person else None
        item.submitted_by_display_name = person.display_name if person else None
        items.append(item)
    return ProgressionPage(items=items, total=total, limit=limit, offset=offset, next_offset=next_offset,
                           next_cursor=next_cursor)


# ---- evidence storage ------------------------------------------------------------------------


async def store_evidence(session: AsyncSession, app: AppState, uploads: list[Upload],
                         principal: Principal) -> dict[str, EvidenceRef]:
    """Store blobs content-addressed and record their metadata (commits). Same bytes -> same blob."""

    store = EvidenceStore(app.settings.evidence_dir)
    refs: dict[str, EvidenceRef] = {}
    now = _utcnow()
    for up in uploads:
        sha = await asyncio.to_thread(store.put, up.data)
        media = guess_media_type(up.filename or up.name, up.data)
        await record_blob(session, sha256=sha, size=len(up.data), media_type=media)
        refs[up.name] = EvidenceRef(name=up.name, sha256=sha, filename=up.filename, size=len(up.data),
                                    media_type=media, added_by=principal.id, added_at=now)
    await session.commit()
    return refs


def upload_values(uploads: list[Upload]) -> dict[str, Any]:
    """What the checks and the contracts read of each uploaded file (parsed JSON/YAML, text, or a digest)."""
    return {up.name: evidence_value(up.data, up.filename, up.content_type) for up in uploads}


def check_evidence_contracts(policy: Any, uploads: list[Upload]) -> None:
    """422 ``evidence_contract`` naming each field (JSON path, expected, got) when evidence breaks the policy's
    contracts; before anything is stored, like every other validation of a start or an upload."""
    problems = evidence_problems(policy, upload_values(uploads))
    if problems:
        raise ApiError(422, "evidence_contract", problems_message(problems),
                       {"problems": [p.model_dump() for p in problems]})


def check_evidence_names(uploads: list[Upload], allowed: set[str] | None) -> None:
    adapter = TypeAdapter(EvidenceName)
    seen: set[str] = set()
    for up in uploads:
        try:
            adapter.validate_python(up.name)
        except ValidationError:
            raise ApiError(422, "invalid_evidence_name",
                           f"{EVIDENCE_PREFIX}{up.name}: evidence names are lowercase letters, digits and '_'",
                           {"part": EVIDENCE_PREFIX + up.name}) from None
        if up.name in seen:
            raise ApiError(422, "duplicate_evidence", f"{EVIDENCE_PREFIX}{up.name} is given twice",
                           {"part": EVIDENCE_PREFIX + up.name})
        seen.add(up.name)
        if allowed is not None and up.name not in allowed:
            declared = ", ".join(sorted(allowed)) or "none"
            raise ApiError(422, "unknown_evidence",
                           f"{EVIDENCE_PREFIX}{up.name}: the spec declares no evidence {up.name!r} "
                           f"(declared: {declared})", {"part": EVIDENCE_PREFIX + up.name,
                                                       "declared": sorted(allowed)})


# ---- start -----------------------------------------------------------------------------------


def _exists(progression_id: str) -> ApiError:
    return ApiError(409, "progression_exists",
                    f"model version already has progression {progression_id}; start a new version instead",
                    {"progression_id": progression_id})


START_REQUEST_MEMO = "start_request_id"


async def _started_by(app: AppState, progression_id: str, request_id: str | None) -> bool:
    """Whether the workflow of ``progression_id`` was started by this very request (a retry)."""
    if not request_id:
        return False
    try:
        description = await app.temporal.get_workflow_handle(progression_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return bool(await description.memo_value(START_REQUEST_MEMO, None) == request_id)


async def _current_state(session: AsyncSession, app: AppState, progression_id: str) -> ProgressionState:
    handle: WorkflowHandle[Any, Any] = app.temporal.get_workflow_handle(progression_id)
    try:
        return await handle.query(QUERY_STATE, result_type=ProgressionState, rpc_timeout=QUERY_TIMEOUT)
    except Exception:
        row = await _read_model(session, progression_id)
        if row is None or not row.state:
            raise
        return ProgressionState.model_validate(row.state)


async def _workflow_exists(app: AppState, progression_id: str) -> bool:
    try:
        await app.temporal.get_workflow_handle(progression_id).describe()
        return True
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise


def _initial_state(inp: ProgressionInput) -> ProgressionState:
    """What the progression looks like before its first workflow task ran (only if the query is not ready)."""
    now = _utcnow()
    return ProgressionState(
        progression_id=inp.spec.progression_id, model_id=inp.spec.model.id, model_name=inp.spec.model.name,
        team=inp.spec.model.team, business_intent=inp.spec.model.business_intent, risk_tier=inp.policy.risk_tier,
        version_id=inp.spec.version.id, target=inp.spec.target, policy_hash=inp.policy_hash,
        stages=[StageState(name=s.name, action=s.action) for s in inp.policy.route_for(inp.spec.target)],
        submitted_by=inp.submitted_by.user_id, submitted_by_username=inp.submitted_by.username,
        started_at=now, updated_at=now, evidence=inp.evidence,
        next_action="the engine is starting the first stage")


async def _ownership_refusal(session: AsyncSession, principal: Principal, spec: Any) -> None:
    """A version of an existing model is started only by its owning team, under its established intent."""
    model = await session.get(CatalogModel, spec.model.id)
    if model is None:
        return
    if model.team != spec.model.team:
        status = 403 if can_see_team(principal, model.team) else 404
        raise ApiError(status, "not_model_owner",
                       f"model {spec.model.id} belongs to another team; only its owning team starts its versions "
                       "(choose another model id for a new model)", {"model_id": spec.model.id})
    if model.business_intent != spec.model.business_intent:
        raise ApiError(409, "intent_mismatch",
                       f"model {spec.model.id} is governed as {model.business_intent!r}; a spec cannot change it to "
                       f"{spec.model.business_intent!r}. Changing a model's intent is a model risk officer's "
                       f"decision: POST /api/v1/models/{spec.model.id}/intent",
                       {"model_id": spec.model.id, "intent": model.business_intent,
                        "declared": spec.model.business_intent})


def restricted_intents(tags: list[str]) -> set[str]:
    """Intents a feature's catalog tags restrict it in: ``restricted:<intent>``; ``restricted:*`` is every intent."""
    return {t.split(":", 1)[1] for t in tags if t.startswith("restricted:")}


async def _intent_downgrade_refusal(session: AsyncSession, app: AppState, principal: Principal, spec: Any,
                                    risk_tier: int, prior: list[PriorOutcome]) -> None:
    """The same artifact or source commit, submitted before under a stricter policy, is not taken under a new
    model id with a weaker intent (``engine.lineage.stricter_prior``); the register activity re-checks it. The
    attempt is audited (``model.intent_downgrade_refused``): nothing else is stored."""
    if (stricter := lineage.stricter_prior(prior, model_id=spec.model.id, risk_tier=risk_tier)) is None:
        return
    details = {"earlier": stricter.model_dump(mode="json"), "declared_intent": spec.model.business_intent,
               "declared_risk_tier": risk_tier}
    await audit.append_event(
        session, event_id=f"intent-downgrade-{uuid.uuid4()}",
        event_type=EventType.model_intent_downgrade_refused.value,
        occurred_at=_utcnow(), actor_id=principal.id, model_id=stricter.model_id,
        payload={**details, "model_id": spec.model.id, "version_id": spec.version.id,
                 "artifact": spec.version.artifact, "source": spec.version.source, "by": principal.username,
                 "credential_id": principal.credential_id}, chain=app.settings.audit_chain)
    await session.commit()
    raise ApiError(409, "intent_downgrade", lineage.downgrade_message(
        stricter, intent=spec.model.business_intent, risk_tier=risk_tier), details)


async def _restricted_features_refusal(session: AsyncSession, spec: Any, prior: list[PriorOutcome]) -> None:
    """Features the catalog restricts in an intent are refused there, whatever the spec calls the intent:
    the declared intent, the model's established intent and the intents under which the same artifact or
    source commit was submitted before all count."""
    intents = {spec.model.business_intent}
    model = await session.get(CatalogModel, spec.model.id)
    if model is not None:
        intents.add(model.business_intent)
    intents |= {p.business_intent for p in prior}
    if not spec.features:
        return
    found = (await session.execute(select(Feature.name, Feature.tags).where(
        Feature.name.in_(sorted(set(spec.features)))))).all()
    refused = {}
    for name, tags in found:
        hits = restricted_intents(list(tags or []))
        bad = sorted(intents & hits) + (["*"] if "*" in hits else [])
        if bad:
            refused[name] = bad
    if refused:
        listed = "; ".join(f"{n} (restricted in {', '.join(i)})" for n, i in sorted(refused.items()))
        raise ApiError(422, "feature_restricted",
                       f"the feature catalog restricts these features for this model: {listed}. The model's "
                       f"intents are {', '.join(sorted(intents))} (declared, established, and of earlier "
                       "submissions of the same artifact or commit)",
                       {"features": refused, "intents": sorted(intents)})


async def start_progression(*, session: AsyncSession, app: AppState, principal: Principal, spec_text: bytes,
                            spec_filename: str, uploads: list[Upload], request_id: str | None = None
                            ) -> ProgressionState:
    """Start one; ``request_id`` (derived from the Idempotency-Key) lets a retry whose first answer was lost
    recognise the workflow it started instead of being told 409."""
    require(principal, Action.start_progression)
    # Validate everything before anything is stored: a bad spec stores nothing.
    spec = load_spec(spec_text, filename=spec_filename, registry=app.registry,
                     max_bytes=app.settings.max_yaml_bytes)
    require_act_on_team(principal, Action.start_progression, spec.model.team, f"model {spec.model.id}")
    check_evidence_names(uploads, set(spec.evidence))
    loaded = app.registry.get(spec.model.business_intent)
    assert loaded is not None  # load_spec checked the intent against the registry
    pid = spec.progression_id
    # Nothing answers 201 for a start that can only fail: ownership, intent and restricted features
    # are checked before any workflow exists (the register activity re-checks ownership and intent).
    await _ownership_refusal(session, principal, spec)
    prior = await lineage.prior_outcomes(session, progression_id=pid, artifact=spec.version.artifact,
                                         source=spec.version.source, digest=spec.version.artifact_digest)
    await _intent_downgrade_refusal(session, app, principal, spec, loaded.policy.risk_tier, prior)
    await _restricted_features_refusal(session, spec, prior)
    existing = await _read_model(session, pid)
    retry_failed = existing is not None and existing.status == Status.failed.value
    if not retry_failed and (existing is not None or await _workflow_exists(app, pid)):
        if await _started_by(app, pid, request_id):  # only an existing progression can be this request's
            return await _current_state(session, app, pid)
        raise _exists(pid)
    # Evidence breaking its contract: after who may start it and whether it exists (those answers come first),
    # before anything is stored.
    check_evidence_contracts(loaded.policy, uploads)

    refs = await store_evidence(session, app, uploads, principal)
    inp = ProgressionInput(spec=spec, spec_yaml=spec_text.decode("utf-8-sig"), policy=loaded.policy,
                           policy_hash=loaded.hash, evidence=refs, submitted_by=principal.actor,
                           materiality_tier=spec.materiality_tier)
    first_stage = loaded.policy.route_for(spec.target)[0].name
    attrs = TypedSearchAttributes([
        SearchAttributePair(SA_MODEL_ID, spec.model.id),
        SearchAttributePair(SA_INTENT, spec.model.business_intent),
        SearchAttributePair(SA_RISK_TIER, loaded.policy.risk_tier),
        SearchAttributePair(SA_STAGE, first_stage),
        SearchAttributePair(SA_STATUS, "running"),
    ])
    try:
        handle = await app.temporal.start_workflow(
            WORKFLOW_NAME, inp, id=pid, task_queue=app.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            # A version whose workflow failed (recorded as status failed) may be started again.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            search_attributes=attrs, memo={START_REQUEST_MEMO: request_id} if request_id else None)
    except WorkflowAlreadyStartedError:
        if await _started_by(app, pid, request_id):
            return await _current_state(session, app, pid)
        raise _exists(pid) from None
    try:
        return await handle.query(QUERY_STATE, result_type=ProgressionState, rpc_timeout=QUERY_TIMEOUT)
    except Exception:
        return _initial_state(inp)


# ---- decisions, evidence, withdrawal ---------------------------------------------------------


async def record_refusal(session: AsyncSession, *, principal: Principal, state: ProgressionState, stage: str,
                         decision: str, comment: str, refusal: Refusal, source: str, chain: bool = True,
                         decision_id: str | None = None) -> None:
    """A refused decision never enters workflow history, so the API records it (with the reason).

    The event id derives from the request's ``decision_id`` (user and ``Idempotency-Key``): a retry
    that runs again after its first answer was lost (a crashed API process) records nothing twice.
    """
    await audit.append_event(
        session, event_id=f"refusal-{decision_id or uuid.uuid4()}", event_type=EventType.decision_refused.value,
        occurred_at=_utcnow(), actor_id=principal.id, progression_id=state.progression_id,
        model_id=state.model_id, stage=stage,
        payload={"code": refusal.code, "reason": refusal.message, "http_status": refusal.http_status,
                 "decision": decision, "comment": comment, "username": principal.username,
                 "roles": sorted(r.value for r in principal.roles), "team": principal.team, "source": source},
        chain=chain)
    await session.commit()


def _refusal_error(refusal: Refusal) -> ApiError:
    return ApiError(refusal.http_status, refusal.code, refusal.message, {"refusal": refusal.code})


def _refusal_from_update(exc: WorkflowUpdateFailedError) -> Refusal:
    cause = exc.cause
    if isinstance(cause, ApplicationError):
        details = list(cause.details or [])
        if details and isinstance(details[0], dict):
            try:
                return Refusal.model_validate(details[0])
            except ValueError:
                pass
        if isinstance(details[0] if details else None, Refusal):
            return details[0]
        return Refusal(code=cause.type or "refused", message=cause.message, http_status=409)
    return Refusal(code="refused", message=str(cause or exc), http_status=409)


def _closed_or_unavailable(exc: RPCError, progression_id: str) -> ApiError:
    if exc.status == RPCStatusCode.NOT_FOUND:
        return ApiError(409, "progression_closed", f"progression {progression_id} has finished; "
                        "it accepts no more changes", {"progression_id": progression_id})
    return ApiError(503, "temporal_unavailable", f"the workflow service did not answer: {exc.message}")


def deciding_role_refusal(principal: Principal) -> Refusal | None:
    """Refused before any gate rule when none of the caller's roles decides gates (the API and the web UI), and
    always for an administrator: identity refuses to give an admin a deciding role, and should a row say so
    anyway (edited in the database), the admin still does not decide."""
    if Role.admin in principal.roles and principal.roles & DECIDING_ROLES:
        return Refusal(code="admin_cannot_decide", http_status=403,
                       message="administrators administer but never decide on gates, whatever other role they hold")
    if Action.decide in principal.actions:
        return None
    if (hold := hold_refusal(principal, Action.decide)) is not None:
        return hold  # a deciding role this credential may not use yet: say why (credential_unconfirmed, ...)
    held = ", ".join(sorted(r.value for r in principal.roles)) or "none"
    return Refusal(code="not_a_gate_role", http_status=403, message=f"your roles ({held}) cannot decide on gates")


# Refusals that speak of the gate's state as recorded: the decider may have read it a moment before it changed.
_RECORDED_STATE_CODES = frozenset({"gate_not_open", "stale_basis"})


def _state_refusal(app: AppState, state: ProgressionState, principal: Principal, stage: str,
                   decision: DecisionKind, comment: str, basis: str | None,
                   conditions: list[ConditionIn] | None) -> Refusal | None:
    return (decision_refusal(state, principal.actor, stage, decision)
            or acknowledgement_refusal(state, decision, comment) or basis_refusal(state, stage, basis)
            or _findings_refusal(app, state, stage, decision, conditions or []))


async def decide(*, session: AsyncSession, app: AppState, principal: Principal, progression_id: str,
                 stage: str, decision: DecisionKind, comment: str, decision_id: str,
                 basis: str | None = None, conditions: list[ConditionIn] | None = None) -> ProgressionState:
    require(principal, Action.read_progression)
    # The pre-checks read the read model, never the workflow: a query would make the worker replay an evicted
    # (parked) progression's history just to refuse, and a wrong decision must not wake it at all. The
    # snapshot is what the decider saw (every GET, the inbox and the basis read it); where it lags the
    # workflow (an activity recording it is in flight), the Update validator below applies every rule
    # again on the live state.
    state = await recorded_state(session, app, progression_id)
    if state is None:
        raise ApiError(404, "not_found", f"progression {progression_id} not found")
    require_visible(principal, state.team, f"progression {progression_id}")
    # A retry (same Idempotency-Key, so same decision_id) of a decision already applied must get the
    # first answer, not a refusal computed on the state that decision produced (gate closed, counted).
    known = any(d.decision_id == decision_id for s in state.stages for d in s.decisions)
    decision_name = "approve_with_conditions" if conditions else decision.value
    refusal: Refusal | None = None
    if known:
        pass  # the workflow answers a known decision_id with its first result
    elif (role := deciding_role_refusal(principal)) is not None:
        refusal = role
    elif app.settings.deciders_sso_only and principal.credential_kind != "sso":
        refusal = Refusal(code="sso_required", http_status=403,
                          message="decisions are accepted only from an SSO session in this installation; "
                                  "API tokens cannot decide")
    else:
        refusal = _state_refusal(app, state, principal, stage, decision, comment, basis, conditions)
        if refusal is not None and refusal.code in _RECORDED_STATE_CODES:
            # Final, never confirmed by a query: the snapshot is monotone and faithful to the workflow's durable
            # history (activities.progression: _sync_read_model), written before the workflow task that changed
            # the gate completes. A gate that opened a moment ago shows once its record is written: the
            # caller reads the progression again and retries (the message says so).
            refusal = refusal.model_copy(update={"message": (
                f"{refusal.message} (as recorded {state.updated_at.isoformat()}, record {state.seq}); "
                "if the gate has only just changed, read the progression again and retry")})
    if refusal is not None:
        await record_refusal(session, principal=principal, state=state, stage=stage, decision=decision_name,
                             comment=comment, refusal=refusal, source="api", chain=app.settings.audit_chain,
                             decision_id=decision_id)
        raise _refusal_error(refusal)
    handle: WorkflowHandle[Any, Any] = app.temporal.get_workflow_handle(progression_id)
    inp = DecideInput(stage=stage, decision=decision, comment=comment, actor=principal.actor,
                      decision_id=decision_id, basis=basis, conditions=conditions or [])
    # One decision per person and gate at a time in this process: the others are refused at once
    # (409) instead of queueing on the workflow and on database connections. A retry of the decision in
    # flight (same decision_id: its Idempotency-Key taken over from a request that seemed lost) is the same
    # decision, not a second one: it goes on to the workflow, which answers it with the first one's result.
    flight = (principal.id, progression_id, stage)
    if not known and any(other != decision_id for other in _DECISIONS_IN_FLIGHT.get(flight, ())):
        refusal = Refusal(code="decision_in_progress", http_status=409,
                          message=f"your decision on stage {stage!r} of {progression_id} is being recorded; "
                                  "one person counts once")
        await record_refusal(session, principal=principal, state=state, stage=stage, decision=decision_name,
                             comment=comment, refusal=refusal, source="api", chain=app.settings.audit_chain,
                             decision_id=decision_id)  # a retried request records its refusal once
        raise _refusal_error(refusal)
    # The connection goes back to the pool while the workflow works (it may take seconds under load).
    await session.close()
    _DECISIONS_IN_FLIGHT.setdefault(flight, Counter())[decision_id] += 1
    try:
        result = await handle.execute_update(UPDATE_DECIDE, inp, result_type=DecideResult)
    except WorkflowUpdateFailedError as exc:
        refusal = _refusal_from_update(exc)
        await record_refusal(session, principal=principal, state=state, stage=stage, decision=decision_name,
                             comment=comment, refusal=refusal, source="workflow",
                             chain=app.settings.audit_chain, decision_id=decision_id)
        raise _refusal_error(refusal) from None
    except RPCError as exc:
        if known and exc.status == RPCStatusCode.NOT_FOUND:
            return state  # the decision closed the progression (a rejection): it stands as answered
        error = _closed_or_unavailable(exc, progression_id)
        if exc.status == RPCStatusCode.NOT_FOUND:
            # The workflow has closed (reached when no worker answered the state query, so the API did
            # not pre-check): a refusal like any other, recorded like any other.
            await record_refusal(session, principal=principal, state=state, stage=stage, decision=decision_name,
                                 comment=comment, refusal=Refusal(code=error.code, message=error.message,
                                                                  http_status=409),
                                 source="workflow", chain=app.settings.audit_chain, decision_id=decision_id)
        raise error from None
    finally:
        _leave_flight(flight, decision_id)
    return await answered_state(session, app, progression_id, result)


def _findings_refusal(app: AppState, state: ProgressionState, stage: str, decision: DecisionKind,
                      conditions: list[ConditionIn]) -> Refusal | None:
    """The workflow validator's findings rules, when the registry still holds the pinned policy (a fast answer;
    the workflow decides on its pinned policy either way)."""
    loaded = app.registry.get(state.business_intent)
    if loaded is None or loaded.hash != state.policy_hash:
        return None
    if refusal := conditions_refusal(conditions, loaded.policy.findings, _utcnow()):
        return refusal
    return blocking_refusal(state, loaded.policy.findings, stage) if decision == DecisionKind.approve else None


# (user id, progression id, stage) -> the decision ids (with their requests) this process is waiting on the
# workflow for.
_DECISIONS_IN_FLIGHT: dict[tuple[str, str, str], Counter[str]] = {}


def _leave_flight(flight: tuple[str, str, str], decision_id: str) -> None:
    ids = _DECISIONS_IN_FLIGHT[flight]
    ids[decision_id] -= 1
    if ids[decision_id] <= 0:
        del ids[decision_id]
    if not ids:
        del _DECISIONS_IN_FLIGHT[flight]


def _update_error(exc: WorkflowUpdateFailedError) -> ApiError:
    return _refusal_error(_refusal_from_update(exc))


async def add_evidence(*, session: AsyncSession, app: AppState, principal: Principal, progression_id: str,
                       uploads: list[Upload], request_id: str, spec: bytes | None = None) -> ProgressionState:
    state = await get_progression(session=session, app=app, principal=principal, progression_id=progression_id)
    require_act_on_team(principal, Action.add_evidence, state.team, f"progression {progression_id}")
    if spec is not None:
        raise await _spec_immutable(session, state, spec)
    if not uploads:
        raise ApiError(422, "no_evidence", "send at least one 'evidence.<name>' file part")
    check_evidence_names(uploads, None)
    # The workflow validator applies the same rules; checking first means a refused upload stores nothing.

    refusal = evidence_refusal(state, principal.actor) or evidence_change_refusal(
        state, {up.name: sha256_hex(up.data) for up in uploads})
    if refusal is not None:
        raise _refusal_error(refusal)
    pinned = app.registry.by_hash(state.policy_hash) or app.registry.get(state.business_intent)
    if pinned is not None:
        check_evidence_contracts(pinned.policy, uploads)
    refs = await store_evidence(session, app, uploads, principal)
    handle: WorkflowHandle[Any, Any] = app.temporal.get_workflow_handle(progression_id)
    try:
        answer = await handle.execute_update(
            UPDATE_SUBMIT_EVIDENCE, EvidenceInput(evidence=refs, actor=principal.actor, request_id=request_id),
            result_type=EVIDENCE_ANSWER)  # a union: the state before the patch
    except WorkflowUpdateFailedError as exc:
        raise _update_error(exc) from None
    except RPCError as exc:
        raise _closed_or_unavailable(exc, progression_id) from None
    return await answered_state(session, app, progression_id, answer)


async def _spec_immutable(session: AsyncSession, state: ProgressionState, text: bytes) -> ApiError:
    """A spec sent to a running progression: refused, naming the identity fields it would change."""

    row = await session.scalar(select(ModelVersion).where(ModelVersion.model_id == state.model_id,
                                                          ModelVersion.version_id == state.version_id))
    changes: list[str] = []
    if row is not None:
        try:
            changes = identity_changes(load_spec(row.spec_yaml), load_spec(text))
        except ProgressionError:
            changes = []
    named = ", ".join(changes) if changes else "spec"
    return ApiError(409, "spec_immutable",
                    f"{named}: the spec of progression {state.progression_id} (model id, version, source, artifact "
                    "and its digest, features, business intent) is fixed when it starts; start a new version",
                    {"refusal": "spec_immutable", "fields": changes or ["spec"]})


async def withdraw(*, session: AsyncSession, app: AppState, principal: Principal, progression_id: str,
                   reason: str, request_id: str) -> ProgressionState:
    state = await get_progression(session=session, app=app, principal=principal, progression_id=progression_id)
    require_act_on_team(principal, Action.withdraw, state.team, f"progression {progression_id}")
    if state.status == Status.withdrawn:
        return await _withdrawn_retry(session, state, request_id)
    if state.status == Status.in_production and (refusal := withdraw_refusal(state, principal.actor)):
        raise _refusal_error(refusal)  # the workflow's validator applies the same rule
    handle: WorkflowHandle[Any, Any] = app.temporal.get_workflow_handle(progression_id)
    try:
        answer = await handle.execute_update(
            UPDATE_WITHDRAW, WithdrawInput(reason=reason, actor=principal.actor, request_id=request_id),
            result_type=WITHDRAW_ANSWER)  # a union: the state before the patch
    except WorkflowUpdateFailedError as exc:
        error = _update_error(exc)
        if error.code == "progression_closed":
            fresh = await load_state(session, app, progression_id)
            if fresh is not None and fresh.status == Status.withdrawn:
                return await _withdrawn_retry(session, fresh, request_id)
        raise error from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            fresh = await load_state(session, app, progression_id)
            if fresh is not None and fresh.status == Status.withdrawn:
                return await _withdrawn_retry(session, fresh, request_id)
        raise _closed_or_unavailable(exc, progression_id) from None
    return await answered_state(session, app, progression_id, answer)


async def _withdrawn_retry(session: AsyncSession, state: ProgressionState, request_id: str) -> ProgressionState:
    """A withdrawn progression: the state when ``request_id`` is the withdrawal (a retry), else 409."""

    payloads = (await session.scalars(select(AuditEvent.payload).where(
        AuditEvent.progression_id == state.progression_id,
        AuditEvent.event_type == EventType.progression_withdrawn.value))).all()
    if any((p or {}).get("request_id") == request_id for p in payloads):
        return state
    if not payloads:
        # Withdrawn in the workflow, its audit event not written yet: not known whose withdrawal it was.
        raise ApiError(503, "withdrawal_pending", "the withdrawal is being recorded; retry shortly")
    raise ApiError(409, "progression_closed", f"progression {state.progression_id} is withdrawn",
                   {"refusal": "progression_closed"})


# ---- verification ----------------------------------------------------------------------------


async def verify_progression(*, session: AsyncSession, app: AppState, principal: Principal,
                             progression_id: str) -> ProgressionVerification:
    """Recompute what the approvals bound to from the stores, without trusting the recorded bases:
    every evidence blob re-hashed, the pinned spec re-hashed, each counted approval's basis compared
    with the basis recomputed from the recorded state, and with what the deployment carried."""

    state = await get_progression(session=session, app=app, principal=principal, progression_id=progression_id)
    problems: list[str] = []
    store = EvidenceStore(app.settings.evidence_dir)
    checked: list[EvidenceCheck] = []
    for name, ref in sorted(state.evidence.items()):
        try:
            await asyncio.to_thread(store.get, ref.sha256)
            checked.append(EvidenceCheck(name=name, sha256=ref.sha256, status="ok"))
        except EvidenceCorrupted as exc:
            actual = str(exc.details.get("actual_sha256")) if exc.details else None
            checked.append(EvidenceCheck(name=name, sha256=ref.sha256, status="corrupted", actual_sha256=actual))
            problems.append(f"evidence {name!r}: the stored file no longer hashes to {ref.sha256} (now {actual})")
        except NotFound:
            checked.append(EvidenceCheck(name=name, sha256=ref.sha256, status="missing"))
            problems.append(f"evidence {name!r}: {ref.sha256} is not in the evidence store")

    spec_matches: bool | None = None
    row = await session.scalar(select(ModelVersion).where(ModelVersion.model_id == state.model_id,
                                                          ModelVersion.version_id == state.version_id))
    if row is not None and state.spec_digest is not None:
        spec_matches = spec_digest(load_spec(row.spec_yaml)) == state.spec_digest
        if not spec_matches:
            problems.append("the stored progression.yaml no longer hashes to the pinned spec digest")

    deployment: dict[str, Any] | None = None
    payload = await session.scalar(select(AuditEvent.payload).where(
        AuditEvent.progression_id == state.progression_id, AuditEvent.event_type == EventType.deployment.value
    ).order_by(AuditEvent.seq.desc()).limit(1))
    deployed_ids: dict[str, str | None] | None = None
    if payload is not None:
        deployment = {k: payload.get(k) for k in ("deployment_id", "target", "artifact", "artifact_digest",
                                                  "approvals")}
        deployed_ids = {a["decision_id"]: a.get("basis") for a in payload.get("approvals") or []}

    approvals: list[ApprovalCheck] = []
    for stage in state.stages:
        counted = counted_approvals(stage)
        if not counted:
            continue
        current = compute_basis(state, stage.name)
        for d in counted:
            matches = d.basis is not None and d.basis == current
            deployed = None
            if deployed_ids is not None and stage.name != "revalidation":
                deployed = d.decision_id in deployed_ids and deployed_ids[d.decision_id] == d.basis
                if not deployed:
                    problems.append(f"approval {d.decision_id} by {d.actor_username} on {stage.name} is not the "
                                    "one the deployment carried")
            if d.basis is None:
                problems.append(f"approval {d.decision_id} by {d.actor_username} on {stage.name} was recorded "
                                "before approvals bound to a basis: it cannot be verified")
            elif not matches:
                problems.append(f"approval {d.decision_id} by {d.actor_username} on {stage.name} approved basis "
                                f"{d.basis}; the recorded state now gives {current}")
            approvals.append(ApprovalCheck(stage=stage.name, decision_id=d.decision_id, actor=d.actor_username,
                                           basis=d.basis, current_basis=current, matches=matches,
                                           deployed=deployed))
    return ProgressionVerification(progression_id=state.progression_id, ok=not problems, status=state.status.value,
                                   spec_digest=state.spec_digest, spec_matches=spec_matches, evidence=checked,
                                   approvals=approvals, deployment=deployment, problems=problems)
