"""Policies: what each intent demands, its versions, and a dry run of a spec (stores nothing)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, require
from api.errors import ApiError
from engine import audit
from engine.checks import builtin_checks
from engine.contracts import published_contracts
from engine.db import PolicyVersion, utcnow
from engine.evaluation import evaluate_route, stage_approvals
from engine.features import resolve_features
from engine.lifecycle import EventType
from engine.loading import LoadedPolicy, PolicyRegistry, load_spec
from engine.wire import (
    CheckOut,
    DryRunResult,
    EvidenceContracts,
    PolicyDetail,
    PolicySummary,
    PolicyVersionOut,
    StageRouteOut,
)


def _summary(loaded: LoadedPolicy) -> dict[str, Any]:
    p = loaded.policy
    return dict(intent=p.intent, title=p.title, risk_tier=p.risk_tier, hash=loaded.hash,
                stages=[s.name for s in p.stages], revalidation=p.revalidation)


def _get(registry: PolicyRegistry, intent: str) -> LoadedPolicy:
    loaded = registry.get(intent)
    if loaded is None:
        raise ApiError(404, "not_found", registry.unknown_intent_message(intent), {"intent": intent})
    return loaded


async def list_policies(*, session: AsyncSession, principal: Principal,
                        registry: PolicyRegistry) -> list[PolicySummary]:
    require(principal, Action.read_policies)
    return [PolicySummary(**_summary(p)) for p in registry.all()]


async def get_policy(*, session: AsyncSession, principal: Principal, registry: PolicyRegistry,
                     intent: str) -> PolicyDetail:
    require(principal, Action.read_policies)
    loaded = _get(registry, intent)
    route = []
    for i, stage in enumerate(loaded.policy.stages):
        checks = [CheckOut(**c, builtin=True) for c in builtin_checks(i == 0)]
        checks += [CheckOut(id=c.id, description=c.description, expr=c.expr) for c in stage.checks]
        route.append(StageRouteOut(name=stage.name, description=stage.description, checks=checks,
                                   approvals=stage_approvals(stage), action=stage.action))
    versions = (await session.execute(select(PolicyVersion).where(PolicyVersion.intent == intent)
                                      .order_by(PolicyVersion.published_at, PolicyVersion.id))).scalars().all()
    return PolicyDetail(**_summary(loaded), guidance=list(loaded.policy.guidance), route=route,
                        yaml=loaded.yaml_text,
                        versions=[PolicyVersionOut(policy_hash=v.policy_hash, title=v.title, risk_tier=v.risk_tier,
                                                   active=v.active, published_at=v.published_at) for v in versions])


async def record_policy_versions(session: AsyncSession, registry: PolicyRegistry, *, chain: bool = True) -> int:
    """Record each loaded policy version once (idempotent, safe with several API processes)."""
    added = 0
    for loaded in registry.all():
        p = loaded.policy
        existing = (await session.execute(select(PolicyVersion).where(
            PolicyVersion.intent == p.intent, PolicyVersion.policy_hash == loaded.hash))).scalar_one_or_none()
        if existing is not None and existing.active:
            continue
        await session.execute(update(PolicyVersion).where(PolicyVersion.intent == p.intent,
                                                          PolicyVersion.policy_hash != loaded.hash)
                              .values(active=False))
        if existing is not None:
            existing.active = True
            await session.commit()
            continue
        # Another process may record it first (API replicas starting together on a new database): the
        # conflict surfaces at the autoflush of the audit append as well as at the commit.
        try:
            session.add(PolicyVersion(intent=p.intent, policy_hash=loaded.hash, title=p.title,
                                      risk_tier=p.risk_tier, content_yaml=loaded.yaml_text, active=True,
                                      published_at=utcnow()))
            await audit.append_event(
                session, event_id=f"policy-{p.intent}-{loaded.hash}", event_type=EventType.policy_published.value,
                occurred_at=utcnow(), payload={"intent": p.intent, "policy_hash": loaded.hash, "title": p.title,
                                               "risk_tier": p.risk_tier, "file": loaded.path.name}, chain=chain)
            await session.commit()
            added += 1
        except IntegrityError:
            await session.rollback()
    return added


def _evidence_from_json(value: Any) -> Any:
    return value


async def dry_run(*, session: AsyncSession, principal: Principal, registry: PolicyRegistry, intent: str | None,
                  spec_text: str | bytes, evidence: dict[str, Any], max_yaml_bytes: int) -> DryRunResult:
    """The route a spec would take under ``intent``'s policy and what passes now. Reads only.

    ``intent=None`` (``POST /api/v1/dry-run``): the intent is the spec's, read by the same loader as a start
    (``engine.loading.load_spec`` with the registry), so a route answers exactly what a start would."""

    require(principal, Action.dry_run)
    if intent is not None:
        _get(registry, intent)
    spec = load_spec(spec_text, filename="progression.yaml", registry=registry, max_bytes=max_yaml_bytes)
    intent = intent or spec.model.business_intent
    loaded = _get(registry, intent)
    if spec.model.business_intent != intent:
        raise ApiError(422, "intent_mismatch",
                       f"progression.yaml: model.business_intent: the spec's intent is "
                       f"{spec.model.business_intent!r}, not {intent!r}",
                       {"field": "model.business_intent", "spec_intent": spec.model.business_intent})
    unknown_evidence = sorted(set(evidence) - set(spec.evidence))
    if unknown_evidence:
        raise ApiError(422, "unknown_evidence",
                       f"evidence.{unknown_evidence[0]}: the spec declares no evidence {unknown_evidence[0]!r}",
                       {"unknown": unknown_evidence, "declared": sorted(spec.evidence)})
    features = await resolve_features(session, spec.features)
    return evaluate_route(loaded.policy, loaded.hash, spec=spec, evidence=evidence, features=features,
                          now=utcnow())


async def evidence_contracts(*, principal: Principal, registry: PolicyRegistry, intent: str) -> EvidenceContracts:
    """What each evidence item of ``intent``'s policy must look like: schema, sections, example, who reads it."""
    require(principal, Action.read_policies)
    loaded = _get(registry, intent)
    p = loaded.policy
    return EvidenceContracts(intent=intent, policy_hash=loaded.hash, title=p.title, risk_tier=p.risk_tier,
                             requires_artifact_digest=p.requires_artifact_digest,
                             contracts=published_contracts(p))


def parse_json_evidence(raw: dict[str, Any]) -> dict[str, Any]:
    """JSON-body evidence: a string that holds JSON is parsed (clients often send file text)."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, str):
            try:
                out[name] = json.loads(value)
                continue
            except ValueError:
                pass
        out[name] = value
    return out



