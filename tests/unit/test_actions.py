"""engine.actions.allowed_actions and next_command over hand-built states (no Temporal): the pure function the API,
the web page and the CLI share. The agreement with the real API is proven in tests/api/test_allowed_actions.py."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.actions import Caller, allowed_actions, next_command
from engine.lifecycle import (
    Actor,
    ApprovalProgress,
    CheckResult,
    EvidenceRef,
    ProgressionState,
    Refusal,
    StageState,
    StageStatus,
    Status,
)
from engine.policy import Role

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
DANA = Actor(user_id="u-dev", username="dana", roles=[Role.model_developer], team="retail-risk")
VERA = Actor(user_id="u-val", username="vera", roles=[Role.model_validator], team="validation")


def _ref(name: str) -> EvidenceRef:
    return EvidenceRef(name=name, sha256="a" * 64, filename=f"{name}.json", size=1, media_type="application/json",
                       added_by="u-dev", added_at=NOW)


def _state(stage: StageState, status: Status) -> ProgressionState:
    return ProgressionState(
        progression_id="credit@1.0.0", model_id="credit", model_name="Credit", team="retail-risk",
        business_intent="credit-underwriting", risk_tier=1, version_id="1.0.0", target="production",
        policy_hash="sha256:" + "0" * 64, status=status, current_stage=stage.name, stages=[stage],
        submitted_by="u-dev", submitted_by_username="dana", started_at=NOW, updated_at=NOW,
        evidence={"metrics": _ref("metrics"), "model_card": _ref("model_card")})


def test_a_blocked_stage_tells_the_developer_which_file_to_send() -> None:
    failing = CheckResult(stage="validation", check_id="discrimination", description="AUC", expr="", passed=False,
                          reason="not met", inputs={"evidence.metrics.auc": 0.55})
    state = _state(StageState(name="validation", status=StageStatus.blocked, checks=[failing],
                              reads=["metrics"]), Status.blocked)
    options = allowed_actions(state, Caller(actor=DANA), paths={"metrics": "evidence/metrics.json"},
                              evidence_kinds={"metrics": "Metrics", "model_card": "Card"})
    assert next_command(state, options) == "progression evidence add credit@1.0.0 metrics=evidence/metrics.json"
    decide, *rest = options
    assert (decide.action, decide.allowed, decide.code) == ("decide", False, "gate_not_open")  # no gate is open
    assert decide.unlock == "the gate opens once the stage's checks pass"
    assert [o.action for o in rest] == ["add_evidence", "add_evidence", "withdraw"] and all(o.allowed for o in rest)


def test_the_gate_is_offered_to_the_validator_and_refused_to_the_submitter_with_the_unlock() -> None:
    gate = StageState(name="validation", status=StageStatus.awaiting_approval,
                      approvals=[ApprovalProgress(role=Role.model_validator, count=1)])
    state = _state(gate, Status.awaiting_approval)
    [decide] = [o for o in allowed_actions(state, Caller(actor=VERA)) if o.action == "decide"]
    assert decide.allowed and [d.value for d in decide.decisions] == ["approve", "request_changes", "reject"]
    # The submitter who also held the validator role: segregation of duties, and what would change it.
    both = DANA.model_copy(update={"roles": [Role.model_developer, Role.model_validator]})
    [mine] = [o for o in allowed_actions(state, Caller(actor=both)) if o.action == "decide"]
    assert not mine.allowed and mine.code == "own_submission" and mine.command is None
    assert mine.unlock == "a model validator independent of team retail-risk decides"
    # The API's own refusal (role table) is taken as given.
    forbidden = Refusal(code="not_a_gate_role", http_status=403, message="your roles cannot decide")
    [dev] = [o for o in allowed_actions(state, Caller(actor=DANA, refused={"decide": forbidden}))
             if o.action == "decide"]
    assert dev.code == "not_a_gate_role"
    assert next_command(state, allowed_actions(state, Caller(actor=DANA))) is None


def test_a_closed_progression_offers_nothing() -> None:
    state = _state(StageState(name="validation", status=StageStatus.rejected), Status.rejected)
    options = allowed_actions(state, Caller(actor=DANA), evidence_kinds={"metrics": None})
    assert not any(o.allowed for o in options)
    assert {o.code for o in options} == {"progression_closed"}
    assert all(o.unlock == "nothing: start a new version" for o in options)
