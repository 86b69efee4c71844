"""Segregation of duties as pure rules (engine.lifecycle), without Temporal: each attack a person might try.

The API's fast refusal and the workflow's Update validator both call these functions, so a rule proved here holds
in both places; the Temporal tests (tests/test_four_eyes.py, tests/test_workflow.py) prove the wiring.
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
    comment_refusal,
    counting_role,
    decision_refusal,
    evidence_refusal,
    gate_refusal,
    withdraw_refusal,
)
from engine.policy import Role

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
DEV = Actor(user_id="u-dev", username="dana", roles=[Role.model_developer], team="retail-risk")
TEAMMATE = Actor(user_id="u-dev2", username="dario", roles=[Role.model_developer], team="retail-risk")
OTHER_DEV = Actor(user_id="u-sam", username="sam", roles=[Role.model_developer], team="payments")
VALIDATOR = Actor(user_id="u-val", username="vera", roles=[Role.model_validator], team="validation")
RISK1 = Actor(user_id="u-risk1", username="rita", roles=[Role.model_risk_officer], team="model-risk")
RISK2 = Actor(user_id="u-risk2", username="rob", roles=[Role.model_risk_officer], team="model-risk")
ADMIN = Actor(user_id="u-admin", username="adam", roles=[Role.admin], team="platform")


def _state(*, status: Status = Status.awaiting_approval, gate: str = "validation", **changes: object
           ) -> ProgressionState:
    stages = [
        StageState(name="validation", status=StageStatus.awaiting_approval if gate == "validation" else
                   StageStatus.passed, approvals=[ApprovalProgress(role=Role.model_validator, count=1)]),
        StageState(name="risk_review", status=StageStatus.awaiting_approval if gate == "risk_review" else
                   StageStatus.pending, approvals=[ApprovalProgress(role=Role.model_risk_officer, count=2)]),
    ]
    state = ProgressionState(
        progression_id="credit@1.0.0", model_id="credit", model_name="Credit", team="retail-risk",
        business_intent="credit-underwriting", risk_tier=1, version_id="1.0.0", target="production",
        policy_hash="sha256:" + "0" * 64, status=status, current_stage=gate, stages=stages, submitted_by=DEV.user_id,
        submitted_by_username=DEV.username, started_at=NOW, updated_at=NOW)
    return state.model_copy(update=changes)


def _approve(state: ProgressionState, stage_name: str, actor: Actor, role: Role) -> None:
    stage = state.stage(stage_name)
    assert stage is not None
    stage.decisions.append(DecisionRecord(decision_id=f"d-{actor.user_id}", stage=stage_name,
                                          decision=DecisionKind.approve, actor_id=actor.user_id,
                                          actor_username=actor.username, role=role, comment="ok", at=NOW))
    next(a for a in stage.approvals if a.role == role).approved_by.append(actor.user_id)


def _code(refusal: object) -> str | None:
    return getattr(refusal, "code", None)


def test_the_independent_validator_may_decide() -> None:
    assert decision_refusal(_state(), VALIDATOR, "validation", DecisionKind.approve) is None


@pytest.mark.parametrize(("actor", "code", "status"), [
    (DEV, "not_a_gate_role", 403),        # the developer approving their own model
    (OTHER_DEV, "not_a_gate_role", 403),  # any developer
    (ADMIN, "not_a_gate_role", 403),      # an admin has no gate role: too much power is not a vote
    (RISK1, "not_a_gate_role", 403),      # the wrong deciding role for this gate
])
def test_who_holds_no_gate_role_is_refused(actor: Actor, code: str, status: int) -> None:
    refusal = decision_refusal(_state(), actor, "validation", DecisionKind.approve)
    assert refusal is not None and (refusal.code, refusal.http_status) == (code, status)


def test_the_submitter_may_not_decide_even_holding_the_gate_role() -> None:
    submitter = DEV.model_copy(update={"roles": [Role.model_developer, Role.model_validator], "team": "validation"})
    assert _code(decision_refusal(_state(), submitter, "validation", DecisionKind.approve)) == "own_submission"


def test_a_decider_in_the_owning_team_is_refused() -> None:
    insider = VALIDATOR.model_copy(update={"user_id": "u-val2", "team": "retail-risk"})
    assert _code(decision_refusal(_state(), insider, "validation", DecisionKind.approve)) == "own_team"


def test_a_decider_without_a_team_cannot_show_independence() -> None:
    teamless = VALIDATOR.model_copy(update={"team": None})
    assert _code(decision_refusal(_state(), teamless, "validation", DecisionKind.approve)) == "no_team"


def test_one_person_counts_once() -> None:
    state = _state(gate="risk_review")
    _approve(state, "risk_review", RISK1, Role.model_risk_officer)
    assert _code(decision_refusal(state, RISK1, "risk_review", DecisionKind.approve)) == "already_decided"
    assert decision_refusal(state, RISK2, "risk_review", DecisionKind.approve) is None


def test_a_superseded_approval_no_longer_blocks_deciding_again() -> None:
    state = _state(gate="risk_review")
    _approve(state, "risk_review", RISK1, Role.model_risk_officer)
    stage = state.stage("risk_review")
    assert stage is not None
    stage.decisions = [d.model_copy(update={"superseded": True}) for d in stage.decisions]
    stage.approvals[0].approved_by = []
    assert decision_refusal(state, RISK1, "risk_review", DecisionKind.approve) is None


def test_the_validator_of_one_stage_may_not_decide_an_independent_one() -> None:
    both = Actor(user_id="u-both", username="bo", roles=[Role.model_validator, Role.model_risk_officer],
                 team="model-risk")
    state = _state(gate="risk_review", independent_stages=[["validation", "risk_review"]])
    _approve(state, "validation", both, Role.model_validator)
    assert _code(decision_refusal(state, both, "risk_review", DecisionKind.approve)) == "not_independent"
    without_rule = _state(gate="risk_review")
    _approve(without_rule, "validation", both, Role.model_validator)
    assert decision_refusal(without_rule, both, "risk_review", DecisionKind.approve) is None


@pytest.mark.parametrize(("stage", "status", "code"), [
    ("nowhere", Status.awaiting_approval, "unknown_stage"),
    ("risk_review", Status.awaiting_approval, "gate_not_open"),  # deciding a gate before it opens
    ("validation", Status.rejected, "progression_closed"),
    ("validation", Status.withdrawn, "progression_closed"),
])
def test_no_decision_outside_an_open_gate(stage: str, status: Status, code: str) -> None:
    assert _code(decision_refusal(_state(status=status), VALIDATOR, stage, DecisionKind.approve)) == code


def test_an_approval_past_the_quorum_of_ones_roles_is_refused_but_a_rejection_is_not() -> None:
    state = _state()
    _approve(state, "validation", VALIDATOR, Role.model_validator)
    second = VALIDATOR.model_copy(update={"user_id": "u-val2", "username": "val2"})
    stage = state.stage("validation")
    assert stage is not None
    assert _code(gate_refusal(stage, second, DecisionKind.approve)) == "quorum_met_for_role"
    assert gate_refusal(stage, second, DecisionKind.reject) is None
    assert counting_role(stage, second) is None


def test_an_earlier_rejection_of_the_artifact_must_be_named_by_an_approval() -> None:
    earlier = PriorOutcome(progression_id="credit@0.9.0", model_id="credit", version_id="0.9.0",
                           business_intent="credit-underwriting", status="rejected", match=["artifact"])
    state = _state(prior_rejections=[earlier])
    refusal = acknowledgement_refusal(state, DecisionKind.approve, "looks fine")
    assert refusal is not None and refusal.code == "prior_rejection_unacknowledged"
    assert acknowledgement_refusal(state, DecisionKind.approve, "fixed since credit@0.9.0: new features") is None
    assert acknowledgement_refusal(state, DecisionKind.reject, "no") is None


@pytest.mark.parametrize(("actor", "allowed"), [
    (DEV, True), (TEAMMATE, True), (ADMIN, True), (VALIDATOR, True),  # a validator attaches a report
    (OTHER_DEV, False), (RISK1, False),
])
def test_who_may_add_evidence(actor: Actor, allowed: bool) -> None:
    refusal = evidence_refusal(_state(), actor)
    assert (refusal is None) is allowed
    if not allowed:
        assert refusal is not None and (refusal.code, refusal.http_status) == ("not_owner", 403)


@pytest.mark.parametrize(("actor", "status", "code"), [
    (DEV, Status.awaiting_approval, None),
    (TEAMMATE, Status.awaiting_approval, None),
    (ADMIN, Status.awaiting_approval, None),
    (VALIDATOR, Status.awaiting_approval, "not_owner"),  # a decider cannot make a progression disappear
    (OTHER_DEV, Status.awaiting_approval, "not_owner"),
    (DEV, Status.in_production, "in_production"),       # production duties cannot be walked away from
    (DEV, Status.withdrawn, "progression_closed"),
])
def test_who_may_withdraw(actor: Actor, status: Status, code: str | None) -> None:
    assert _code(withdraw_refusal(_state(status=status), actor)) == code


def test_a_rejection_or_change_request_says_why() -> None:
    assert _code(comment_refusal(DecisionKind.reject, "  ")) == "comment_required"
    assert _code(comment_refusal(DecisionKind.request_changes, "")) == "comment_required"
    assert comment_refusal(DecisionKind.approve, "") is None
    assert comment_refusal(DecisionKind.reject, "fails the fairness bar") is None
