"""Guidance in words (engine.guidance), computed from the state alone, without Temporal."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.guidance import FAILED_ACTION, guidance, guided
from engine.lifecycle import (
    ApprovalProgress,
    CheckResult,
    DecisionKind,
    DecisionRecord,
    ProgressionState,
    StageState,
    StageStatus,
    Status,
)
from engine.policy import Role

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)


def _state(stage: StageState | None, status: Status, **changes: object) -> ProgressionState:
    state = ProgressionState(
        progression_id="credit@1.0.0", model_id="credit", model_name="Credit", team="retail-risk",
        business_intent="credit-underwriting", risk_tier=1, version_id="1.0.0", target="production",
        policy_hash="sha256:" + "0" * 64, status=status, current_stage=stage.name if stage else None,
        stages=[stage] if stage else [], submitted_by="u-dev", submitted_by_username="dana", started_at=NOW,
        updated_at=NOW)
    return state.model_copy(update=changes)


def test_a_blocked_stage_waits_on_the_developer_and_names_each_failing_check() -> None:
    checks = [CheckResult(stage="validation", check_id="auc", description="", expr="", passed=False,
                          reason="auc 0.61 < 0.7"),
              CheckResult(stage="validation", check_id="card", description="", expr="", passed=True, reason="ok")]
    state = _state(StageState(name="validation", status=StageStatus.blocked, checks=checks), Status.blocked)
    assert guidance(state) == {
        "waiting_on": [Role.model_developer], "missing": ["check auc failed: auc 0.61 < 0.7"],
        "next_action": "a model developer of team retail-risk submits evidence that fixes the failing checks of "
                       "stage validation"}


def test_an_open_gate_counts_the_approvals_still_needed_and_says_when_it_escalated() -> None:
    gate = StageState(name="risk_review", status=StageStatus.awaiting_approval, approvals=[
        ApprovalProgress(role=Role.model_risk_officer, count=2, approved_by=["u-risk1"], escalated=True,
                         escalate_to=Role.admin)])
    result = guidance(_state(gate, Status.awaiting_approval))
    assert result["waiting_on"] == [Role.model_risk_officer]
    assert result["missing"] == ["1 more model risk officer approval"]  # in words, not snake_case
    assert result["next_action"] == "a model risk officer decides on stage risk review (past SLA, escalated to admin)"


def test_a_change_request_is_quoted() -> None:
    request = DecisionRecord(decision_id="d1", stage="validation", decision=DecisionKind.request_changes,
                             actor_id="u-val", actor_username="vera", comment="add the 2025 sample", at=NOW)
    stage = StageState(name="validation", status=StageStatus.changes_requested, decisions=[request])
    result = guidance(_state(stage, Status.changes_requested))
    assert result["missing"] == ["changes requested by vera: add the 2025 sample"]
    assert result["waiting_on"] == [Role.model_developer]


def test_closed_failed_and_production_states() -> None:
    assert guidance(_state(None, Status.rejected))["next_action"] == "nothing: the progression is rejected"
    assert guidance(_state(None, Status.failed)) == {"waiting_on": [], "missing": [], "next_action": FAILED_ACTION}
    due = datetime(2027, 5, 4, tzinfo=UTC)
    in_production = guidance(_state(None, Status.in_production, revalidation_due_at=due, revalidation_overdue=True))
    assert in_production["next_action"] == "nothing until revalidation is due on 2027-05-04"
    assert in_production["missing"] == ["revalidation is overdue"]


def test_guided_fills_a_copy_and_leaves_the_state_alone() -> None:
    state = _state(StageState(name="validation", status=StageStatus.running), Status.running)
    copy = guided(state)
    assert copy.next_action == "the engine is running the checks of stage validation"
    assert state.next_action == "" and state.waiting_on == []
