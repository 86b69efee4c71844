"""The feature catalog: browse (with what each policy says and who uses a feature), propose, approve, reject.

Every write is an audit event and records a new catalog version (``engine.features``); progressions keep the
version they pinned. The rules of who decides live in ``engine.catalog``; this module applies them and maps a
refusal to its HTTP answer (recorded as ``feature.proposal_refused``).
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, require, visible_team_filter
from api.errors import ApiError
from api.schemas import FeatureIn, FeatureProposalIn
from engine import audit
from engine.catalog import (
    approval_refusal,
    approvals_needed,
    feature_verdicts,
    invalid_tags,
    normalize_tags,
    policy_tags,
    removed_sensitive_tags,
)
from engine.db import ApiToken, AuditEvent, CatalogModel, Feature, FeatureProposal, ModelVersion, User, utcnow
from engine.features import catalog_snapshot, current_catalog_version, upsert_feature
from engine.identity import credential_holder
from engine.lifecycle import EventType, ResolvedFeature
from engine.loading import PolicyRegistry
from engine.policy import GovernancePolicy, Role
from engine.spec import FeatureName
from engine.wire import (
    CatalogEntry,
    CatalogSnapshot,
    FeatureList,
    FeatureOut,
    FeatureProposalList,
    FeatureProposalOut,
    FeatureUse,
    ProposalApproval,
)

MAX_QUERY = 200


def _entry(row: Feature | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"description": row.description or "", "tags": list(row.tags or []), "owner": row.owner}


RESERVED_NAMES = frozenset({"proposals", "versions"})  # paths under /api/v1/features


def _check_name(name: str) -> None:
    try:
        TypeAdapter(FeatureName).validate_python(name)
    except ValidationError:
        raise ApiError(422, "invalid_feature_name",
                       f"feature name {name!r} must start with a letter or '_' and hold letters, digits, '_'",
                       {"field": "feature"}) from None
    if name in RESERVED_NAMES:
        raise ApiError(422, "invalid_feature_name", f"feature name {name!r} is reserved", {"field": "feature"})


async def _check_new_name(session: AsyncSession, name: str) -> None:
    """A new feature's name may not differ from an existing one's by case only: ``Age`` beside ``age`` (tagged
    protected_attribute) would be another, untagged feature that a spec lists to get the same column through."""
    clash = await session.scalar(select(Feature.name).where(func.lower(Feature.name) == name.lower(),
                                                            Feature.name != name))
    if clash is not None:
        raise ApiError(422, "feature_name_taken",
                       f"feature name {name!r} differs from the existing feature {clash!r} by case only; "
                       f"propose a change of {clash!r} instead", {"field": "feature", "existing": clash})


def _check_tags(tags: list[str]) -> None:
    bad = invalid_tags(tags)
    if bad:
        raise ApiError(422, "invalid_tag", f"tags: {bad[0]!r} is not a tag: lower-case letters, digits and _ . : * - "
                                           "only (e.g. proxy, restricted:credit-underwriting)",
                       {"field": "tags", "invalid": bad})


async def _check_owner(session: AsyncSession, owner: str | None) -> None:
    if owner is not None and await session.scalar(select(User.id).where(User.username == owner)) is None:
        raise ApiError(422, "unknown_owner", f"owner: no user named {owner!r}", {"field": "owner"})


async def _uses(session: AsyncSession, principal: Principal) -> dict[str, list[FeatureUse]]:
    """Feature name -> the model versions (visible to the caller) whose spec lists it."""
    stmt = select(ModelVersion.model_id, ModelVersion.version_id, ModelVersion.features,
                  CatalogModel.business_intent).join(CatalogModel, CatalogModel.id == ModelVersion.model_id)
    team = visible_team_filter(principal)
    if team is not None:  # another team's models do not leak through the catalog
        stmt = stmt.where(CatalogModel.team == team)
    out: dict[str, list[FeatureUse]] = {}
    for model_id, version_id, names, intent in (await session.execute(stmt.order_by(
            ModelVersion.model_id, ModelVersion.version_id))).all():
        for name in set(names or []):
            out.setdefault(name, []).append(FeatureUse(model_id=model_id, version_id=version_id,
                                                       business_intent=intent))
    return out


def _policies(registry: PolicyRegistry | None, intent: str | None = None) -> list[GovernancePolicy]:
    if registry is None:
        return []
    return [p.policy for p in registry.all() if intent is None or p.intent == intent]


def _out(row: Feature, policies: list[GovernancePolicy], uses: dict[str, list[FeatureUse]],
         pending: dict[str, int]) -> FeatureOut:
    resolved = ResolvedFeature(name=row.name, description=row.description or "", tags=list(row.tags or []))
    verdicts = feature_verdicts(policies, resolved)
    return FeatureOut(name=row.name, description=row.description or "", tags=list(row.tags or []), owner=row.owner,
                      updated_at=row.updated_at, updated_by=row.updated_by, policies=verdicts,
                      used_by=uses.get(row.name, []), pending_proposals=pending.get(row.name, 0))


def _matches(row: Feature, q: str) -> bool:
    needle = q.casefold()
    return (needle in row.name.casefold() or needle in (row.description or "").casefold()
            or any(needle in t.casefold() for t in row.tags or []))


async def list_features(*, session: AsyncSession, principal: Principal, registry: PolicyRegistry | None = None,
                        tag: str | None = None, q: str | None = None, intent: str | None = None,
                        verdict: str | None = None) -> FeatureList:
    """Features matching ``q`` (name, description or tag, case-insensitive) and ``tag`` (exact), with what each
    policy says of them (``intent`` narrows to one policy; ``verdict`` keeps features with that verdict there)."""
    require(principal, Action.read_features)
    if q is not None and len(q) > MAX_QUERY:
        raise ApiError(422, "invalid_query", f"q: at most {MAX_QUERY} characters", {"field": "q"})
    if intent is not None and (registry is None or registry.get(intent) is None):
        raise ApiError(422, "unknown_intent", f"intent: no policy for {intent!r}", {"field": "intent"})
    rows = (await session.execute(select(Feature).order_by(Feature.name))).scalars().all()
    rows = [r for r in rows if (tag is None or tag in (r.tags or [])) and (not q or _matches(r, q))]
    uses = await _uses(session, principal)
    pending = dict((await session.execute(select(FeatureProposal.feature, func.count()).where(
        FeatureProposal.status == "pending").group_by(FeatureProposal.feature))).all())
    policies = _policies(registry, intent)
    items = [_out(r, policies, uses, pending) for r in rows]
    if verdict is not None:
        items = [i for i in items if any(v.verdict == verdict for v in i.policies)]
    version = await current_catalog_version(session)
    snapshot = await catalog_snapshot(session, version) if version else None
    return FeatureList(items=items, total=len(items), catalog_version=version,
                       catalog_hash=snapshot.catalog_hash if snapshot else None)


async def get_feature(*, session: AsyncSession, principal: Principal, registry: PolicyRegistry | None,
                      name: str) -> FeatureOut:
    require(principal, Action.read_features)
    row = await session.get(Feature, name)
    if row is None:
        raise ApiError(404, "not_found", f"feature {name!r} is not in the catalog", {"feature": name})
    pending = int(await session.scalar(select(func.count()).select_from(FeatureProposal).where(
        FeatureProposal.feature == name, FeatureProposal.status == "pending")) or 0)
    return _out(row, _policies(registry), await _uses(session, principal), {name: pending})


async def get_catalog_version(*, session: AsyncSession, principal: Principal, version: int | None) -> CatalogSnapshot:
    """One catalog version as a whole (the current one when ``version`` is ``None``)."""
    require(principal, Action.read_features)
    number = version if version is not None else await current_catalog_version(session)
    snapshot = await catalog_snapshot(session, number) if number else None
    if snapshot is None:
        raise ApiError(404, "not_found", f"catalog version {number} was never recorded", {"version": number})
    return snapshot


async def put_feature(*, session: AsyncSession, principal: Principal, name: str, body: FeatureIn,
                      chain: bool = True, registry: PolicyRegistry | None = None) -> FeatureOut:
    """The admin's direct write. It cannot remove a sensitive tag: that takes a proposal and two approvers."""
    require(principal, Action.write_features)
    _check_name(name)
    tags = normalize_tags(body.tags)
    _check_tags(tags)
    before = await session.get(Feature, name)
    if before is None:
        await _check_new_name(session, name)
    previous = _entry(before)
    owner = body.owner if body.owner is not None else (before.owner if before is not None else None)
    if previous is not None and previous == {"description": body.description, "tags": tags, "owner": owner}:
        # PUT is idempotent: a repeat (e.g. a retry after a lost answer) changes nothing and records nothing.
        assert before is not None
        return _out(before, [], {}, {})
    removed = removed_sensitive_tags(previous["tags"] if previous else None, tags,
                                     policy_tags(_policies(registry)))
    if removed:
        raise ApiError(409, "two_approvals_required",
                       f"tags: removing {', '.join(removed)} from {name!r} needs a proposal approved by two people "
                       f"(POST /api/v1/features/proposals), not a direct write",
                       {"field": "tags", "removed": removed})
    await _check_owner(session, body.owner)
    row = await upsert_feature(session, name=name, description=body.description, tags=tags,
                               updated_by=principal.username, owner=owner, keep_owner=False,
                               reason=f"feature {name} written by {principal.username}")
    version = await current_catalog_version(session)
    await audit.append_event(
        session, event_id=f"feature-{uuid.uuid4()}", event_type=EventType.feature_updated.value,
        occurred_at=utcnow(), actor_id=principal.id,
        payload={"name": name, "description": body.description, "tags": tags, "owner": owner,
                 "previous": previous, "username": principal.username, "catalog_version": version}, chain=chain)
    await _commit(session)
    fresh = await session.get(Feature, name)
    return _out(fresh if fresh is not None else row, [], {}, {})


async def _commit(session: AsyncSession) -> None:
    try:
        await session.commit()
    except IntegrityError:  # another catalog change took the same version number first: nothing was written
        await session.rollback()
        raise ApiError(409, "concurrent_catalog_change",
                       "the feature catalog changed at the same moment; send the request again") from None


# ---- proposals ---------------------------------------------------------------------------------------


def _proposal_out(p: FeatureProposal) -> FeatureProposalOut:
    proposed = p.proposed or {}
    previous = p.previous
    before = set(previous.get("tags") or []) if previous else set()
    after = set(proposed.get("tags") or [])
    return FeatureProposalOut(
        id=p.id, feature=p.feature, kind=p.kind, status=p.status,  # type: ignore[arg-type]
        description=proposed.get("description") or "", tags=sorted(after), owner=proposed.get("owner"),
        previous=CatalogEntry(name=p.feature, **previous) if previous else None,
        tags_added=sorted(after - before), tags_removed=sorted(before - after),
        approvals_needed=p.approvals_needed, approvals=[ProposalApproval(**a) for a in p.approvals or []],
        comment=p.comment, proposed_by=p.proposed_by_username, proposed_at=p.proposed_at, decided_at=p.decided_at,
        decided_by=p.decided_by, decision_comment=p.decision_comment, applied_version=p.applied_version)


async def propose(*, session: AsyncSession, principal: Principal, body: FeatureProposalIn,
                  chain: bool = True, registry: PolicyRegistry | None = None) -> FeatureProposalOut:
    """A new feature, or a change of an existing one's description, tags or owner; nothing changes until approved."""
    require(principal, Action.propose_feature)
    name = body.feature
    _check_name(name)
    row = await session.get(Feature, name)
    if row is None:
        await _check_new_name(session, name)
    previous = _entry(row)
    if row is None and body.description is None:
        raise ApiError(422, "description_required", f"description: a new feature {name!r} needs a description",
                       {"field": "description"})
    before = previous or {}
    tags: list[str] = normalize_tags(body.tags) if body.tags is not None else list(before.get("tags", []))
    if body.tags is not None:
        _check_tags(tags)
    proposed = {
        "description": body.description if body.description is not None else before.get("description", ""),
        "tags": tags,
        "owner": body.owner if body.owner is not None else before.get("owner"),
    }
    if previous is not None and proposed == previous:
        raise ApiError(422, "no_change", f"the proposal changes nothing of feature {name!r}", {"feature": name})
    await _check_owner(session, body.owner)
    open_one = await session.scalar(select(FeatureProposal.id).where(FeatureProposal.feature == name,
                                                                     FeatureProposal.status == "pending"))
    if open_one is not None:
        raise ApiError(409, "proposal_pending",
                       f"feature {name!r} already has a pending proposal ({open_one}); it is decided first",
                       {"proposal_id": open_one})
    proposal = FeatureProposal(
        id=f"fp-{uuid.uuid4().hex[:16]}", feature=name, kind="change" if row is not None else "create",
        status="pending", proposed=proposed, previous=previous,
        based_on_version=await current_catalog_version(session),
        approvals_needed=approvals_needed(previous["tags"] if previous else None, tags,
                                          policy_tags(_policies(registry))),
        approvals=[], comment=body.comment, proposed_by=principal.id, proposed_by_username=principal.username,
        proposed_at=utcnow(), decision_comment="", revision=0)
    session.add(proposal)
    await session.flush()
    await audit.append_event(
        session, event_id=f"feature-proposal-{proposal.id}", event_type=EventType.feature_proposed.value,
        occurred_at=proposal.proposed_at, actor_id=principal.id,
        payload={"proposal_id": proposal.id, "name": name, "kind": proposal.kind, "proposed": proposed,
                 "previous": previous, "approvals_needed": proposal.approvals_needed, "comment": body.comment,
                 "username": principal.username, "credential": principal.credential_id}, chain=chain)
    await session.commit()
    return _proposal_out(proposal)


async def list_proposals(*, session: AsyncSession, principal: Principal, status: str | None = None,
                         feature: str | None = None, limit: int = 100, offset: int = 0) -> FeatureProposalList:
    require(principal, Action.read_features)
    conds = [c for c in (FeatureProposal.status == status if status else None,
                         FeatureProposal.feature == feature if feature else None) if c is not None]
    total = int(await session.scalar(select(func.count()).select_from(FeatureProposal).where(*conds)) or 0)
    rows = (await session.execute(select(FeatureProposal).where(*conds).order_by(
        FeatureProposal.proposed_at.desc(), FeatureProposal.id).limit(limit).offset(offset))).scalars().all()
    return FeatureProposalList(items=[_proposal_out(r) for r in rows], total=total)


async def get_proposal(*, session: AsyncSession, principal: Principal, proposal_id: str) -> FeatureProposalOut:
    require(principal, Action.read_features)
    return _proposal_out(await _proposal(session, proposal_id))


async def _proposal(session: AsyncSession, proposal_id: str, *, lock: bool = False) -> FeatureProposal:
    # lock: two deciders at once are serialized on PostgreSQL (SQLite has one writer anyway), so neither
    # approval is lost and a change is applied once.
    row = await session.get(FeatureProposal, proposal_id, populate_existing=True, with_for_update=lock or None)
    if row is None:
        raise ApiError(404, "not_found", f"feature proposal {proposal_id!r} not found", {"proposal_id": proposal_id})
    return row


async def _credential_holder(session: AsyncSession, credential: object) -> str | None:
    """Who else holds the credential an act was recorded with (``token:<id>``; SSO sessions: nobody)."""
    if not isinstance(credential, str) or not credential.startswith("token:"):
        return None
    return credential_holder(await session.scalar(select(ApiToken.issued_by).where(
        ApiToken.id == credential.removeprefix("token:"))))


async def _linked_parties(session: AsyncSession, proposal: FeatureProposal) -> list[tuple[str, str | None]]:
    """(username, who else holds the credential they used) of the proposer and each earlier approver."""
    payload = await session.scalar(select(AuditEvent.payload).where(
        AuditEvent.event_id == f"feature-proposal-{proposal.id}"))
    credential = payload.get("credential") if isinstance(payload, dict) else None
    parties = [(proposal.proposed_by_username, await _credential_holder(session, credential))]
    for a in proposal.approvals or []:
        parties.append((a["username"], await _credential_holder(session, a.get("credential"))))
    return parties


async def _refuse_if_needed(session: AsyncSession, principal: Principal, proposal: FeatureProposal, act: str,
                            chain: bool) -> None:
    require(principal, Action.decide_feature_proposal)
    current = await session.get(Feature, proposal.feature)
    linked = await _linked_parties(session, proposal) if act == "approve" else []
    refusal = approval_refusal(
        proposal_status=proposal.status, proposer_id=proposal.proposed_by, approver_id=principal.id,
        approver_username=principal.username, approver_is_admin=Role.admin in principal.roles,
        feature_owner=current.owner if current is not None else None, feature=proposal.feature,
        earlier_approvers=[a["actor_id"] for a in proposal.approvals or []] if act == "approve" else [],
        approver_holder=credential_holder(principal.credential_issued_by)
        if principal.credential_kind == "token" else None, linked=linked)
    if refusal is None:
        return
    await audit.append_event(
        session, event_id=f"feature-refused-{uuid.uuid4()}", event_type=EventType.feature_proposal_refused.value,
        occurred_at=utcnow(), actor_id=principal.id,
        payload={"proposal_id": proposal.id, "name": proposal.feature, "action": act, "code": refusal.code,
                 "reason": refusal.message, "username": principal.username}, chain=chain)
    await session.commit()
    raise ApiError(refusal.status, refusal.code, refusal.message, {"proposal_id": proposal.id})


async def _write(session: AsyncSession, proposal: FeatureProposal, read_revision: int, **values: Any) -> None:
    """Write the proposal only if nobody wrote it since it was read (compare-and-set on ``revision``)."""
    proposal_id = proposal.id
    result = await session.execute(update(FeatureProposal).where(
        FeatureProposal.id == proposal_id, FeatureProposal.revision == read_revision,
        FeatureProposal.status == "pending").values(revision=read_revision + 1, **values))
    if not cast(CursorResult[Any], result).rowcount:
        await session.rollback()  # nothing of this request is written: not the approval, not the change
        raise ApiError(409, "concurrent_decision",
                       f"proposal {proposal_id} was decided on by someone else at the same moment; look at it again",
                       {"proposal_id": proposal_id})


async def approve(*, session: AsyncSession, principal: Principal, proposal_id: str, comment: str,
                  chain: bool = True) -> FeatureProposalOut:
    """One approval; the last one needed applies the change and records the new catalog version."""
    proposal = await _proposal(session, proposal_id, lock=True)
    await _refuse_if_needed(session, principal, proposal, "approve", chain)
    read_revision = proposal.revision
    now = utcnow()
    approval = ProposalApproval(actor_id=principal.id, username=principal.username, at=now, comment=comment,
                                credential=principal.credential_id)
    approvals = [*(proposal.approvals or []), approval.model_dump(mode="json")]
    values: dict[str, Any] = {"approvals": approvals}
    if len(approvals) >= proposal.approvals_needed:
        values.update(await _apply(session, principal, proposal, approvals, chain))
    await _write(session, proposal, read_revision, **values)
    await audit.append_event(
        session, event_id=f"feature-approval-{proposal.id}-{principal.id}",
        event_type=EventType.feature_proposal_approved.value, occurred_at=now, actor_id=principal.id,
        payload={"proposal_id": proposal.id, "name": proposal.feature, "comment": comment,
                 "approvals": len(approvals), "approvals_needed": proposal.approvals_needed,
                 "username": principal.username, "credential": principal.credential_id}, chain=chain)
    await _commit(session)
    return _proposal_out(await _proposal(session, proposal_id))


async def _apply(session: AsyncSession, principal: Principal, proposal: FeatureProposal,
                 approvals: list[dict[str, Any]], chain: bool) -> dict[str, Any]:
    """Apply the approved change (in the caller's transaction); the proposal's new column values."""
    current = _entry(await session.get(Feature, proposal.feature, populate_existing=True))
    if current != proposal.previous:
        # The feature changed after the proposal was made (e.g. an admin's write): its approvals were for
        # another starting point, so it is superseded rather than applied over the newer state.
        await _write(session, proposal, proposal.revision, status="superseded", decided_at=utcnow(),
                     decided_by=principal.username,
                     decision_comment="the feature changed after this proposal was made; propose again")
        await session.commit()
        raise ApiError(409, "proposal_stale", f"feature {proposal.feature!r} changed after proposal {proposal.id} "
                                              "was made; it is superseded: propose the change again",
                       {"proposal_id": proposal.id})
    proposed = proposal.proposed
    await upsert_feature(session, name=proposal.feature, description=proposed.get("description") or "",
                         tags=proposed.get("tags") or [], updated_by=principal.username,
                         owner=proposed.get("owner"), keep_owner=False,
                         reason=f"proposal {proposal.id} applied")
    version = await current_catalog_version(session)
    await audit.append_event(
        session, event_id=f"feature-applied-{proposal.id}", event_type=EventType.feature_updated.value,
        occurred_at=utcnow(), actor_id=principal.id,
        payload={"name": proposal.feature, **proposed, "previous": proposal.previous, "proposal_id": proposal.id,
                 "proposed_by": proposal.proposed_by_username,
                 "approved_by": [a["username"] for a in approvals], "catalog_version": version,
                 "username": principal.username}, chain=chain)
    return {"status": "applied", "decided_at": utcnow(), "decided_by": principal.username,
            "applied_version": version}


async def reject(*, session: AsyncSession, principal: Principal, proposal_id: str, comment: str,
                 chain: bool = True) -> FeatureProposalOut:
    proposal = await _proposal(session, proposal_id, lock=True)
    await _refuse_if_needed(session, principal, proposal, "reject", chain)
    if not comment.strip():
        raise ApiError(422, "comment_required", "comment: say why the proposal is rejected", {"field": "comment"})
    await _write(session, proposal, proposal.revision, status="rejected", decided_at=utcnow(),
                 decided_by=principal.username, decision_comment=comment)
    await audit.append_event(
        session, event_id=f"feature-rejected-{proposal.id}", event_type=EventType.feature_proposal_rejected.value,
        occurred_at=utcnow(), actor_id=principal.id,
        payload={"proposal_id": proposal.id, "name": proposal.feature, "comment": comment,
                 "username": principal.username, "credential": principal.credential_id}, chain=chain)
    await session.commit()
    return _proposal_out(await _proposal(session, proposal_id))
