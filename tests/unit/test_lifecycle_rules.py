"""The decision, withdrawal and acknowledgement rules of engine.lifecycle, without Temporal.

The API's fast refusal and the workflow's Update validator call these same functions, so each
rule is asserted here once as the attack it stops; the attack tests in tests/api/test_four_eyes.py
drive the same attacks end to end on the real Temporal server.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.lifecycle import (
    Actor,
    ApprovalProgress,
    DecisionKind,
    DecisionRecord,
    PriorOutcome,
    ProgressionState,
    StageState,
    StageStatus,
    Status,
    acknowledgement_refusal,
    decision_refusal,
    withdraw_refusal,
)
from engine.policy import GovernancePolicy, Role, policy_hash

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DEV = Actor(user_id="u-dev", username="dana", roles=[Role.model_developer], team="retail-risk")
BOTH = Actor(user_id="u-both", username="bo", roles=[Role.model_validator, Role.model_risk_officer],
             team="model-risk")
VAL = Actor(user_id="u-val", username="vera", roles=[Role.model_validator], team="validation")
RISK = Actor(user_id="u-risk", username="rita", roles=[Role.model_risk_officer], team="model-risk")


def _decision(actor: Actor, stage: str, kind: DecisionKind = DecisionKind.approve) -> DecisionRecord:
    return DecisionRecord(decision_id=f"d-{actor.user_id}-{stage}", stage=stage, decision=kind,
                          actor_id=actor.user_id, actor_username=actor.username, comment="ok", at=NOW)


def state(*, gate: str = "validation", independent: bool = True, decided: list[DecisionRecord] | None = None,
          status: Status = Status.awaiting_approval) -> ProgressionState:
    validation = StageState(name="validation", approvals=[ApprovalProgress(role=Role.model_validator, count=1)])
    risk = StageState(name="risk_review", approvals=[ApprovalProgress(role=Role.model_risk_officer, count=2)])
    for stage in (validation, risk):
        stage.decisions = [d for d in decided or [] if d.stage == stage.name]
        for d in stage.decisions:
            if d.decision == DecisionKind.approve:
                next(a for a in stage.approvals).approved_by.append(d.actor_id)
    if gate == "validation":
        validation.status = StageStatus.awaiting_approval
    else:
        validation.status, risk.status = StageStatus.passed, StageStatus.awaiting_approval
    return ProgressionState(
        progression_id="m@1", model_id="m", model_name="M", team="retail-risk", business_intent="credit-underwriting",
        risk_tier=1, version_id="1", target="production", policy_hash="h", status=status, current_stage=gate,
        stages=[validation, risk], submitted_by=DEV.user_id, submitted_by_username=DEV.username, started_at=NOW,
        updated_at=NOW, independent_stages=[["validation", "risk_review"]] if independent else [])


def test_one_person_cannot_decide_both_independent_stages() -> None:
    # Attack 2: a validator who is also a risk officer approved validation, then risk review.
    s = state(gate="risk_review", decided=[_decision(BOTH, "validation")])
    refusal = decision_refusal(s, BOTH, "risk_review", DecisionKind.approve)
    assert refusal is not None and refusal.code == "not_independent" and refusal.http_status == 403
    assert "validation" in refusal.message
    # Any decision counts, not only approvals: whoever requested changes at validation is not independent.
    s = state(gate="risk_review", decided=[_decision(BOTH, "validation", DecisionKind.request_changes)])
    assert decision_refusal(s, BOTH, "risk_review", DecisionKind.reject).code == "not_independent"  # type: ignore[union-attr]
    # Another risk officer is independent; without the policy rule the same person was accepted (old behaviour).
    assert decision_refusal(s, RISK, "risk_review", DecisionKind.approve) is None
    assert decision_refusal(state(gate="risk_review", independent=False, decided=[_decision(BOTH, "validation")]),
                            BOTH, "risk_review", DecisionKind.approve) is None


def test_and_vice_versa_risk_review_decider_cannot_validate() -> None:
    s = state(gate="validation", decided=[_decision(BOTH, "risk_review")])
    assert decision_refusal(s, BOTH, "validation", DecisionKind.approve).code == "not_independent"  # type: ignore[union-attr]


def test_a_decider_without_team_is_refused() -> None:
    # Attack 3: "team None" skipped the own-team rule.
    teamless = VAL.model_copy(update={"team": None})
    refusal = decision_refusal(state(), teamless, "validation", DecisionKind.approve)
    assert refusal is not None and refusal.code == "no_team" and refusal.http_status == 403
    assert decision_refusal(state(), VAL, "validation", DecisionKind.approve) is None


def test_rule_order_is_kept() -> None:
    # Earlier rules still answer first: a developer is not a gate role; the submitter is refused as such.
    assert decision_refusal(state(), DEV, "validation").code == "not_a_gate_role"  # type: ignore[union-attr]
    submitter = VAL.model_copy(update={"user_id": DEV.user_id, "team": None})
    assert decision_refusal(state(), submitter, "validation").code == "own_submission"  # type: ignore[union-attr]
    own_team = VAL.model_copy(update={"team": "retail-risk"})
    assert decision_refusal(state(), own_team, "validation").code == "own_team"  # type: ignore[union-attr]


def test_withdraw_in_production_is_refused_with_next_step() -> None:
    # Attack 4: withdrawing a model in production escaped its revalidation duties.
    refusal = withdraw_refusal(state(status=Status.in_production), DEV)
    assert refusal is not None and refusal.code == "in_production" and refusal.http_status == 409
    assert "retire" in refusal.message
    assert withdraw_refusal(state(), DEV) is None
    assert withdraw_refusal(state(status=Status.failed), DEV).code == "progression_closed"  # type: ignore[union-attr]


def test_prior_rejection_must_be_acknowledged() -> None:
    s = state()
    s.prior_rejections = [PriorOutcome(progression_id="m@0.9", model_id="m", version_id="0.9",
                                       business_intent="credit-underwriting", status="rejected", match=["artifact"])]
    refusal = acknowledgement_refusal(s, DecisionKind.approve, "looks fine")
    assert refusal is not None and refusal.code == "prior_rejection_unacknowledged" and "m@0.9" in refusal.message
    assert acknowledgement_refusal(s, DecisionKind.approve, "m@0.9 was rejected for drift; fixed by recalibration") \
        is None
    assert acknowledgement_refusal(s, DecisionKind.reject, "no") is None  # only approvals need it
    assert acknowledgement_refusal(state(), DecisionKind.approve, "ok") is None


def test_policy_independent_stages_are_validated_and_keep_old_hashes() -> None:
    base = {"apiVersion": "progression/v1", "kind": "GovernancePolicy", "intent": "x", "title": "X", "risk_tier": 2,
            "stages": [{"name": "a"}, {"name": "b"}]}
    with pytest.raises(ValueError, match="does not have"):
        GovernancePolicy.model_validate({**base, "independent_stages": [["a", "zz"]]})
    with pytest.raises(ValueError, match="at least two"):
        GovernancePolicy.model_validate({**base, "independent_stages": [["a", "a"]]})

    plain = GovernancePolicy.model_validate(base)
    with_rule = GovernancePolicy.model_validate({**base, "independent_stages": [["a", "b"]]})
    assert policy_hash(plain) != policy_hash(with_rule)
    assert "independent_stages" not in plain.model_dump(by_alias=True, exclude={"independent_stages"})
