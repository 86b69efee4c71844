"""The one evaluation path: a spec, its evidence and its resolved features through a policy's route.

The dry-run endpoint (and so the CLI's ``route``), the notebook SDK (``progression``) and the workflow's
``evaluate_checks`` activity all evaluate a stage with :func:`engine.checks.evaluate_stage`; the first two walk the
whole route with :func:`evaluate_route`, which is nothing but that call per stage plus the summary. A property
test (``tests/api/test_one_evaluator.py``) proves the three verdicts equal on every example and on generated
evidence.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from engine.catalog import feature_verdict
from engine.checks import evaluate_stage
from engine.contracts import evidence_problems, unchanged_examples
from engine.lifecycle import ResolvedFeature
from engine.policy import GovernancePolicy, StageDef
from engine.spec import ProgressionSpec
from engine.wire import ApprovalOut, DryRunCheck, DryRunResult, DryRunStage, FeatureNote


def stage_approvals(stage: StageDef) -> list[ApprovalOut]:
    return [ApprovalOut(role=a.role, count=a.count, sla=a.sla, escalate_to=a.escalate_to) for a in stage.approvals]


def evaluate_route(policy: GovernancePolicy, policy_hash: str, *, spec: ProgressionSpec,
                   evidence: Mapping[str, Any], features: list[ResolvedFeature], now: dt.datetime) -> DryRunResult:
    """Every stage of the spec's route evaluated now (as the workflow will, stage by stage). Never raises."""
    route_defs = policy.route_for(spec.target)
    route: list[DryRunStage] = []
    passing = failing = 0
    fix_first: DryRunCheck | None = None
    fix_stage: str | None = None
    for i, stage in enumerate(route_defs):
        results = evaluate_stage(stage, spec=spec, evidence=evidence, features=features, is_first_stage=i == 0,
                                 now=now)
        checks = [DryRunCheck(id=r.check_id, description=r.description, passed=r.passed, reason=r.reason)
                  for r in results]
        for c in checks:
            if c.passed:
                passing += 1
            else:
                failing += 1
                if fix_first is None:
                    fix_first, fix_stage = c, stage.name
        route.append(DryRunStage(name=stage.name, checks=checks, approvals=stage_approvals(stage),
                                 action=stage.action, passes_now=all(c.passed for c in checks)))
    approvals = [{"stage": s.name, "role": a.role.value, "count": a.count, "sla": a.sla}
                 for s in route_defs for a in s.approvals]
    notes = [FeatureNote(name=f.name, verdict=v) for f in features if f.known
             for v in [feature_verdict(policy, f)] if v.verdict in ("forbidden", "requires")]
    return DryRunResult(
        intent=policy.intent, policy_hash=policy_hash, progression_id=spec.progression_id, target=spec.target,
        route=route, checks_passing=passing, checks_failing=failing, approvals_needed=approvals,
        unknown_features=[f.name for f in features if not f.known],
        missing_evidence=sorted(set(spec.evidence) - set(evidence)), fix_first=fix_first,
        fix_first_stage=fix_stage, features=notes, evidence_problems=evidence_problems(policy, evidence),
        unchanged_examples=unchanged_examples(policy, evidence))
