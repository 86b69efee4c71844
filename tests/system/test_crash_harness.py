"""The crash harness in a reduced size, and the proof that it catches a bug.

Full size (1,000 progressions) is ``make reliability``; see docs/RELIABILITY.md. The reduced run
is the same harness (separate API and worker processes, Temporal dev server on a database file, a
private PostgreSQL cluster behind the harness's proxy) with 14 progressions (two per scripted
lifecycle) and every fault kind: worker SIGKILL at each phase, API SIGKILL, Temporal SIGKILL and
SIGTERM, a PostgreSQL crash and restart, a proxy outage.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from reliability import expected_events as model
from reliability.crash_harness import FAULT_KINDS, SCRIPTS, HarnessConfig, _routes, passed, run_harness, table

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _report(summary: dict[str, object]) -> str:
    return table(summary) + "\n" + json.dumps({k: summary[k] for k in (
        "event_items", "wrong_final_items", "refusals_wrong_items", "temporal_wrong_items", "errors", "faults",
        "faults_failed")}, indent=1, default=str)


async def test_crash_harness_reduced(tmp_path: Path) -> None:
    # The deadline leaves room for the designed recovery after the last fault: an activity whose worker was
    # killed is retried once its heartbeat timeout (30 s, activities.heartbeat) expires, no longer at its 5-minute
    # start-to-close (a deploy retry was seen due at 622 s before heartbeats, hence a 900 s deadline then). Under
    # load the last phase kill can land after 320 s; 600 s leaves several minutes after it.
    cfg = HarnessConfig(progressions=14, seed=11, concurrency=4, worker_kills=3, api_kills=1, temporal_sigkills=1,
                        temporal_sigterms=1, postgres_crashes=1, db_outages=1, workdir=tmp_path / "run",
                        deadline_seconds=600, quiet=True)
    summary = await run_harness(cfg)
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    report = _report(summary)

    # Every kind of fault was injected; the worker kills aimed at each phase.
    assert all(summary["faults_by_kind"][kind] >= 1 for kind in FAULT_KINDS), report
    assert summary["faults_by_kind"]["worker_kill"] == 3, report
    assert {k for k in summary["phase_hits"] if k.startswith("worker_kill@")} == {
        "worker_kill@checks", "worker_kill@decision", "worker_kill@deployment"}, report
    # The verdict: every progression in its scripted final state, in the read model and in Temporal;
    # every audit event exactly as its lifecycle must leave it; refusals with the scripted codes.
    assert summary["scripts"] == {s: 2 for s in SCRIPTS}, report
    assert summary["progressions_final_as_scripted"] == 14, report
    assert summary["wrong_final"] == 0, report
    assert (summary["lost"], summary["duplicated"], summary["unexpected"]) == (0, 0, 0), report
    assert summary["events_expected"] == summary["events_in_trails"] > 14 * 20, report
    assert summary["refusals_expected"] >= 14 and summary["refusals_wrong"] == 0, report
    assert summary["temporal_wrong"] == 0, report
    assert summary["decision_rows"] == summary["decision_received_events"] == summary["decisions_acknowledged"], report
    assert summary["chain_ok"], report
    assert passed(summary), report


@pytest.mark.parametrize(("mutation", "kind", "event_type"), [
    ("duplicate_check_event", "duplicated", "check.evaluated"),
    ("drop_gate_opened", "lost", "gate.opened"),
])
async def test_crash_harness_fails_on_an_injected_bug(tmp_path: Path, mutation: str, kind: str,
                                                      event_type: str) -> None:
    """A worker that appends a check result twice, or loses a gate opening, fails the harness."""
    cfg = HarnessConfig(progressions=3, seed=5, concurrency=3, worker_kills=0, api_kills=0, temporal_sigkills=0,
                        temporal_sigterms=0, postgres_crashes=0, db_outages=0, mutation=mutation,
                        workdir=tmp_path / "run", deadline_seconds=300, quiet=True)
    summary = await run_harness(cfg)
    report = _report(summary)
    assert not passed(summary), report
    assert summary[kind] > 0, report
    assert summary["differences_by_event_type"][kind].get(event_type, 0) == summary[kind], report
    assert summary["progressions_with_event_differences"] == 3, report


def test_expected_events_model_is_exact() -> None:
    """The model of the credit route: a few events that the harness must not let pass."""
    routes, revalidates = _routes()
    steps = [model.Step("refused", stage="validation", code="own_team"),
             model.Step("decide", stage="validation", decision="approve", role="model_validator"),
             model.Step("decide", stage="risk_review", decision="approve", role="model_risk_officer"),
             model.Step("decide", stage="risk_review", decision="approve", role="model_risk_officer")]
    expected = model.expected_events(routes["credit_approve"], steps)
    assert expected[("progression.started", None, None, None)] == 1
    assert expected[("gate.opened", "risk_review", 1, None)] == 1
    assert expected[("decision.received", "risk_review", 1, "approve")] == 2
    assert expected[("decision.refused", "validation", 1, "own_team")] == 1
    assert expected[("deployment.recorded", "production", 1, None)] == 1
    assert expected[("progression.in_production", None, None, None)] == 1
    assert sum(v for k, v in expected.items() if k[0] == "stage.passed") == 5
    assert revalidates["credit_approve"]
    # One event more, one less, one unknown: each is named.
    actual = Counter(expected)
    actual[("check.evaluated", "validation", 1, "discrimination")] += 1
    actual[("gate.opened", "validation", 1, None)] -= 1
    actual[("notification.sent", "staging", 1, "escalated")] += 1
    diff = model.compare(expected, +actual)
    assert diff.duplicated == [(("check.evaluated", "validation", 1, "discrimination"), 1)]
    assert diff.lost == [(("gate.opened", "validation", 1, None), 1)]
    assert diff.unexpected == [(("notification.sent", "staging", 1, "escalated"), 1)]
    # Stopping short of the last approval: no production, no deployment.
    partial = model.expected_events(routes["credit_approve"], steps[:-1])
    assert ("deployment.recorded", "production", 1, None) not in partial
