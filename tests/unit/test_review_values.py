"""What the review page shows for each check: the values it judged and the rule they were held to, read from the
check result's stored inputs and its expression."""

from __future__ import annotations

from api.web.review import check_rows, judged_values
from engine.lifecycle import CheckResult, StageState


def result(expr: str, inputs: dict[str, object], passed: bool = True) -> CheckResult:
    return CheckResult(stage="validation", check_id="c", description="d", expr=expr, passed=passed, reason="r",
                       inputs=inputs)


def test_a_plain_comparison_shows_its_value_and_rule() -> None:
    plain, entries = judged_values(result("evidence.metrics.auc >= 0.70", {"evidence.metrics.auc": 0.781}))
    assert [(j.label, j.shown, j.rule, j.passed) for j in plain] == [("metrics.auc", "0.781", ">= 0.7", True)]
    assert entries == []
    failing, _ = judged_values(result("evidence.metrics.psi < 0.25", {"evidence.metrics.psi": 0.31}, False))
    assert failing[0].passed is False


def test_a_conjunction_shows_each_value_even_the_parts_without_a_plain_rule() -> None:
    plain, _ = judged_values(result(
        "evidence.metrics.out_of_time.auc >= 0.68 && double(evidence.metrics.auc) - "
        "double(evidence.metrics.out_of_time.auc) <= 0.05",
        {"evidence.metrics.out_of_time.auc": 0.768, "evidence.metrics.auc": 0.781}))
    assert [(j.label, j.shown, j.rule) for j in plain] == [("metrics.out_of_time.auc", "0.768", ">= 0.68"),
                                                           ("metrics.auc", "0.781", "")]


def test_a_rule_over_every_entry_of_a_map_becomes_a_chart() -> None:
    groups = {"black": {"adverse_impact_ratio": 0.824, "basis": "race_ethnicity"},
              "other": {"adverse_impact_ratio": 0.75, "basis": "x"}}
    expr = "evidence.fairness.groups.all(g, evidence.fairness.groups[g].adverse_impact_ratio >= 0.80)"
    _, entries = judged_values(result(expr, {"evidence.fairness.groups": groups}, False))
    assert [(j.label, j.value, j.passed) for j in entries] == [("black", 0.824, True), ("other", 0.75, False)]
    [row] = check_rows(StageState(name="validation", checks=[result(expr, {"evidence.fairness.groups": groups})]))
    assert row.per_entry is not None and row.per_entry_rule == ">= 0.8"
    assert row.per_entry.rows == [["black", "0.824", "yes"], ["other", "0.75", "no"]]
    assert row.per_entry.columns[1] == "adverse impact ratio"


def test_a_check_without_a_rule_we_can_read_shows_what_it_read() -> None:
    plain, entries = judged_values(result("size(evidence.model_card) >= 1500 && x", {"version.source": "git@abc"}))
    assert [(j.label, j.value, j.rule) for j in plain] == [("version.source", "git@abc", "")] and entries == []
