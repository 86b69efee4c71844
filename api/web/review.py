"""The gate page as a review: what each check judged (value against threshold), the charts, the model card,
and the comparison with the version in production. Pure presentation over a state and
:class:`api.services.review.ReviewMaterial`; nothing here reads the database or the store.

Values come from each check result's ``inputs`` (what the expression read when it was evaluated, stored with
the result), so the page shows exactly what the check judged, not a re-reading of the files. Thresholds are
read from the check's expression when it is a plain comparison (``evidence.metrics.auc >= 0.70``, also
inside ``&&``) or a comparison over every entry of a map (``evidence.fairness.groups.all(g,
evidence.fairness.groups[g].adverse_impact_ratio >= 0.80)``); any other check shows the values it read.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from api.services.review import ReviewMaterial, VersionMaterial
from api.web.charts import Bar, Chart, Measure, bar_chart, number, threshold_chart
from api.web.monitoring import monitoring_charts
from api.web.safe_markdown import render_markdown
from engine.lifecycle import REVALIDATION_STAGE, Breach, CheckResult, ProgressionState, StageState

_NUM = r"-?\d+(?:\.\d+)?"
_OPS: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le,
                                               "<": operator.lt, "==": operator.eq}
_SIMPLE = re.compile(rf"^\s*(?:double\()?(?P<path>evidence(?:\.\w+)+)\)?\s*(?P<op>>=|<=|==|>|<)\s*(?P<num>{_NUM})\s*$")
_ALL = re.compile(rf"^\s*(?P<path>evidence(?:\.\w+)+)\.all\(\s*(?P<var>\w+)\s*,\s*(?P=path)\[(?P=var)\]"
                  rf"(?:\.(?P<field>\w+))?\s*(?P<op>>=|<=|==|>|<)\s*(?P<num>{_NUM})\s*\)\s*$")


@dataclass
class Judged:
    """One value a check read, with the rule it was held to when the expression says so."""

    label: str
    value: Any
    op: str | None = None
    threshold: float | None = None

    @property
    def numeric(self) -> bool:
        return isinstance(self.value, int | float) and not isinstance(self.value, bool) and math.isfinite(
            self.value)

    @property
    def passed(self) -> bool | None:
        if self.op is None or self.threshold is None or not self.numeric:
            return None
        return bool(_OPS[self.op](self.value, self.threshold))

    @property
    def shown(self) -> str:
        if self.numeric:
            return number(self.value)
        if isinstance(self.value, dict) and self.value.get("truncated"):
            return f"(large value, {self.value.get('length')} characters)"
        text = str(self.value)
        return text if len(text) <= 80 else text[:77] + "…"

    @property
    def rule(self) -> str:
        return f"{self.op} {number(self.threshold)}" if self.op and self.threshold is not None else ""


@dataclass
class CheckRow:
    check: CheckResult
    judged: list[Judged] = field(default_factory=list)
    per_entry: Chart | None = None  # a comparison over every entry of a map, as a chart
    per_entry_rule: str = ""


def _short_path(path: str) -> str:
    return path.removeprefix("evidence.")


def judged_values(check: CheckResult) -> tuple[list[Judged], list[Judged]]:
    """(plain comparisons, comparisons of each entry of a map) the check's expression makes, with values."""
    plain: list[Judged] = []
    entries: list[Judged] = []
    covered: set[str] = set()
    unparsed = False
    for part in check.expr.split("&&"):
        if m := _SIMPLE.match(part):
            if m["path"] in check.inputs:
                plain.append(Judged(_short_path(m["path"]), check.inputs[m["path"]], m["op"], float(m["num"])))
                covered.add(m["path"])
        elif (m := _ALL.match(part)) and isinstance(check.inputs.get(m["path"]), dict):
            for key, item in check.inputs[m["path"]].items():
                value = item.get(m["field"]) if m["field"] and isinstance(item, dict) else item
                entries.append(Judged(str(key), value, m["op"], float(m["num"])))
            covered.add(m["path"])
        else:
            unparsed = True
    if unparsed or not (plain or entries):  # the other values it read, without a rule we can name
        plain += [Judged(_short_path(k), v) for k, v in check.inputs.items() if k not in covered and _scalar(v)]
    return plain, entries


def _scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 80)


def check_rows(stage: StageState) -> list[CheckRow]:
    rows = []
    for check in stage.checks:
        plain, entries = judged_values(check)
        chart = None
        if entries and all(e.numeric for e in entries):
            field_name = _ALL.match(next(p for p in check.expr.split("&&") if _ALL.match(p)) or "")
            what = (field_name["field"] or "value").replace("_", " ") if field_name else "value"
            chart = bar_chart(check.description or check.check_id,
                              [Bar(e.label, float(e.value), e.passed) for e in entries],
                              threshold=entries[0].threshold, threshold_label=f"rule {entries[0].rule}",
                              key=f"{stage.name}-{check.check_id}", value_label=what)
        rows.append(CheckRow(check=check, judged=plain if plain or chart else entries, per_entry=chart,
                             per_entry_rule=entries[0].rule if chart else ""))
    return rows


def metrics_chart(rows: list[CheckRow]) -> Chart | None:
    measures = [Measure(j.label, float(j.value), j.threshold, j.op, j.passed)
                for r in rows for j in r.judged if j.numeric and j.op and j.threshold is not None]
    if not measures:
        return None
    return threshold_chart("Metrics against the thresholds of the checks", measures, key="metrics-thresholds")


def fairness_chart(rows: list[CheckRow], material: VersionMaterial) -> Chart | None:
    """Fairness by group: the check that judged each group, or else the fairness evidence's groups."""
    for r in rows:
        if r.per_entry is not None and "fairness" in r.check.expr:
            chart = r.per_entry
            chart.title = f"Fairness by group: {r.check.description or r.check.check_id}"
            chart.key = "fairness"
            return chart
    groups = _groups(material)
    if not groups:
        return None
    field_name = next((k for k in ("adverse_impact_ratio", "approval_rate") if all(
        isinstance(g.get(k), int | float) for g in groups.values())), None)
    if field_name is None:
        return None
    return bar_chart(f"Fairness by group: {field_name.replace('_', ' ')}",
                     [Bar(name, float(g[field_name]), None, f"basis: {g['basis']}" if g.get("basis") else "")
                      for name, g in groups.items()], key="fairness", value_label=field_name.replace("_", " "))


def _groups(material: VersionMaterial) -> dict[str, dict[str, Any]]:
    content = material.evidence.get("fairness")
    value = content.value if content is not None else None
    groups = value.get("groups") if isinstance(value, dict) else None
    return {str(k): v for k, v in groups.items() if isinstance(v, dict)} if isinstance(groups, dict) else {}


def flatten_numbers(value: Any, prefix: str = "", depth: int = 2) -> dict[str, float]:
    """Numeric leaves of a JSON object, two levels deep: ``auc``, ``out_of_time.auc``."""
    out: dict[str, float] = {}
    if not isinstance(value, dict):
        return out
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
            out[name] = float(item)
        elif isinstance(item, dict) and depth > 1:
            out.update(flatten_numbers(item, name + ".", depth - 1))
    return out


@dataclass
class CompareRow:
    name: str
    this: float | None
    production: float | None

    @property
    def delta(self) -> str:
        if self.this is None or self.production is None:
            return "—"
        d = self.this - self.production
        return ("+" if d > 0 else "") + number(d) if d else "0"


@dataclass
class Comparison:
    production: ProgressionState
    metrics: list[CompareRow]
    fairness: list[CompareRow]
    features_added: list[str]
    features_removed: list[str]
    features_kept: list[str]
    same_policy: bool


def _compare(a: dict[str, float], b: dict[str, float]) -> list[CompareRow]:
    names = list(dict.fromkeys([*a, *b]))
    return [CompareRow(n, a.get(n), b.get(n)) for n in names]


def comparison(material: ReviewMaterial) -> Comparison | None:
    prod = material.production
    if prod is None:
        return None
    this = material.this

    def metrics(m: VersionMaterial) -> dict[str, float]:
        content = m.evidence.get("metrics")
        return flatten_numbers(content.value) if content is not None else {}

    def air(m: VersionMaterial) -> dict[str, float]:
        return {k: float(v["adverse_impact_ratio"]) for k, v in _groups(m).items()
                if isinstance(v.get("adverse_impact_ratio"), int | float)}

    mine, theirs = set(this.features), set(prod.features)
    return Comparison(production=prod.state, metrics=_compare(metrics(this), metrics(prod)),
                      fairness=_compare(air(this), air(prod)),
                      features_added=sorted(mine - theirs), features_removed=sorted(theirs - mine),
                      features_kept=sorted(mine & theirs), same_policy=this.state.policy_hash == prod.state.policy_hash)


@dataclass
class Review:
    stages: list[tuple[StageState, list[CheckRow]]]
    charts: list[Chart]
    documents: list[tuple[str, Markup]]  # (evidence name, safe HTML) of Markdown evidence, model card first
    unavailable: list[tuple[str, str]]  # (evidence name, why it is not shown inline)
    comparison: Comparison | None
    monitoring: list[Chart] = field(default_factory=list)  # the model's monitoring series, thresholds drawn
    trigger: Breach | None = None  # the monitoring breach that opened this revalidation gate
    materiality_tier: int | None = None  # set at start in the spec (else the policy's risk_tier holds)


def build_review(state: ProgressionState, material: ReviewMaterial) -> Review:
    stages = [(s, check_rows(s)) for s in state.stages if s.checks]
    all_rows = [r for _, rows in stages for r in rows]
    charts = [c for c in (fairness_chart(all_rows, material.this), metrics_chart(all_rows)) if c is not None]
    charts += [r.per_entry for r in all_rows if r.per_entry is not None and r.per_entry not in charts]
    docs = sorted(((name, c) for name, c in material.this.evidence.items() if c.is_markdown),
                  key=lambda item: (item[0] != "model_card", item[0]))
    return Review(stages=stages, charts=charts,
                  documents=[(name, render_markdown(str(c.value))) for name, c in docs],
                  unavailable=[(name, c.problem) for name, c in material.this.evidence.items() if c.problem],
                  comparison=comparison(material),
                  monitoring=monitoring_charts(material.monitoring) if material.monitoring else [],
                  trigger=_trigger(state), materiality_tier=material.this.materiality_tier)


def _trigger(state: ProgressionState) -> Breach | None:
    """The breach that opened the open revalidation gate (none for a revalidation that fell due by date)."""
    if state.current_stage != REVALIDATION_STAGE or state.monitoring is None:
        return None
    return state.monitoring.triggered_by
