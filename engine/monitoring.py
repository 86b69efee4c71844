"""Life after production: monitoring results, their breaches, and retirement — the pure rules.

A model in production receives one **monitoring result** per period from the bank's monitoring jobs (the
``monitor`` service identity): figures named by the pinned policy's ``monitoring.metrics`` (a number, or a map
feature -> number). The policy's ``monitoring.rules`` (CEL, evaluated by ``engine.monitoring_eval`` in an
activity) turn a period's results into **breaches**: ``revalidate`` opens the revalidation gate now, ``finding``
raises a finding once per rule and period. No results for ``overdue_after`` periods raises a finding too.

A **retirement** is asked by the owning team, approved at a ``retirement`` gate by the roles the policy names;
then the promotion target is told to undeploy and every timer stops.

Every rule is a function returning a :class:`~engine.lifecycle.Refusal` or ``None``, so the API's fast answer
and the workflow's Update validators cannot disagree. Nothing here reads a clock, a file or a database. The
models the state carries (``Breach``, ``MonitoringState``, ``RetirementRequest``) live in ``engine.lifecycle``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from pydantic import Field

from engine.lifecycle import RETIREMENT_STAGE, Actor, Breach, Model, ProgressionState, Refusal, Status
from engine.policy import MetricKind, MonitoringRules, Role

MAX_FEATURES_PER_METRIC = 2000
MAX_METRICS = 100
# Keep the workflow's memory bounded: the newest periods, results, breaches and raised keys it remembers (a
# duplicate older than that is refused by the database's unique key, which the API checks first).
KEEP = 60

# ---- the posted document -----------------------------------------------------------------


def _finite(value: Any, where: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{where} must be a number, not {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} must be a finite number, not {value}"
    return None


def metrics_refusal(rules: MonitoringRules | None, metrics: dict[str, Any]) -> Refusal | None:
    """Why ``metrics`` is not a valid period's results under ``rules``: unknown or missing metric, wrong type,
    NaN or Infinity, too many features. The same rule in the API (before anything is stored) and the workflow."""
    if rules is None:
        return Refusal(code="no_monitoring_rules", http_status=409,
                       message="the pinned policy has no monitoring section: monitoring results are not accepted")
    if not isinstance(metrics, dict) or not metrics:
        return Refusal(code="invalid_metrics", http_status=422, message="metrics must be a non-empty object")
    if len(metrics) > MAX_METRICS:
        return Refusal(code="invalid_metrics", http_status=422, message=f"at most {MAX_METRICS} metrics")
    unknown = sorted(k for k in metrics if k not in rules.metrics)
    if unknown:
        return Refusal(code="unknown_metric", http_status=422,
                       message=f"metrics.{unknown[0]}: the policy declares no metric {unknown[0]!r} "
                               f"(declared: {', '.join(sorted(rules.metrics))})")
    missing = sorted(k for k in rules.metrics if k not in metrics)
    if missing:
        return Refusal(code="missing_metric", http_status=422,
                       message=f"metrics.{missing[0]} is missing (the policy's rules read every declared metric: "
                               f"{', '.join(sorted(rules.metrics))})")
    for name, value in sorted(metrics.items()):
        kind = rules.metrics[name].kind
        if kind == MetricKind.by_feature:
            if not isinstance(value, dict) or not value:
                return Refusal(code="invalid_metric", http_status=422,
                               message=f"metrics.{name} must be a non-empty object feature -> number")
            if len(value) > MAX_FEATURES_PER_METRIC:
                return Refusal(code="invalid_metric", http_status=422,
                               message=f"metrics.{name} has {len(value)} entries; at most {MAX_FEATURES_PER_METRIC}")
            for key, figure in value.items():
                if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", key):
                    return Refusal(code="invalid_metric", http_status=422,
                                   message=f"metrics.{name}: {str(key)[:40]!r} is not a feature name")
                if problem := _finite(figure, f"metrics.{name}.{key}"):
                    return Refusal(code="invalid_metric", http_status=422, message=problem)
        elif problem := _finite(value, f"metrics.{name}"):
            return Refusal(code="invalid_metric", http_status=422, message=problem)
    return None


def period_refusal(period: date, today: date) -> Refusal | None:
    if period > today:
        return Refusal(code="period_in_future", http_status=422,
                       message=f"period: {period.isoformat()} is in the future (today is {today.isoformat()})")
    return None


def poster_refusal(rules: MonitoringRules | None, actor: Actor) -> Refusal | None:
    """Only the roles the policy names post results (by default the ``monitor`` service identity)."""
    return role_poster_refusal(rules.posted_by if rules is not None else [Role.monitor], actor)


def role_poster_refusal(allowed: Sequence[Role], actor: Actor) -> Refusal | None:
    """Refused unless ``actor`` holds one of ``allowed`` (the API asks first with every policy's posters, so who
    can never post learns nothing about the model, then with the pinned policy's)."""
    if not set(actor.roles) & set(allowed):
        held = ", ".join(sorted(r.value for r in actor.roles)) or "none"
        return Refusal(code="not_a_monitoring_poster", http_status=403,
                       message=f"your roles ({held}) do not post monitoring results; the policy allows "
                               f"{', '.join(r.value for r in allowed)}")
    return None


def production_refusal(state: ProgressionState) -> Refusal | None:
    if state.status != Status.in_production:
        return Refusal(code="not_in_production", http_status=409,
                       message=f"{state.progression_id} is {state.status.value}; monitoring results are for a "
                               "model in production")
    return None


# ---- retirement ---------------------------------------------------------------------------


def retirement_refusal(state: ProgressionState, actor: Actor, *, dependents: list[str],
                       override_id: str | None) -> Refusal | None:
    """The owning team asks for a retirement of a model in production, nothing else open, and no production
    model depending on it unless a risk officer's override is recorded."""
    if state.status in (Status.retired, Status.rejected, Status.withdrawn, Status.failed):
        return Refusal(code="progression_closed", http_status=409,
                       message=f"{state.progression_id} is {state.status.value}")
    if state.status != Status.in_production:
        return Refusal(code="not_in_production", http_status=409,
                       message=f"{state.progression_id} is {state.status.value}; only a model in production is "
                               "retired (a progression before production is withdrawn)")
    if Role.model_developer not in actor.roles or actor.team != state.team:
        return Refusal(code="not_model_owner", http_status=403,
                       message=f"a retirement is asked by a developer of the owning team {state.team!r}")
    current = state.stage(state.current_stage) if state.current_stage else None
    if current is not None and current.status in ("awaiting_approval", "running", "changes_requested"):
        what = "a retirement is already awaiting approval" if current.name == RETIREMENT_STAGE else \
            f"stage {current.name} is open"
        return Refusal(code="retirement_pending" if current.name == RETIREMENT_STAGE else "gate_open",
                       http_status=409, message=f"{state.progression_id}: {what}; ask again once it is decided")
    if dependents and override_id is None:
        return Refusal(code="dependency_in_production", http_status=409,
                       message=f"{state.model_id} is a declared dependency of {', '.join(dependents)} in "
                               "production; a model risk officer must record an override first")
    return None


# ---- the plot ---------------------------------------------------------------------------

_THRESHOLD = re.compile(r"\b([a-z][a-z0-9_]*)(?:\.(?:max|min|mean)\(\))?\s*(<=|>=|<|>|==)\s*(-?\d+(?:\.\d+)?)")


def rule_thresholds(rules: MonitoringRules) -> dict[str, list[tuple[str, float]]]:
    """Per metric, the (rule id, threshold) pairs its rules compare it with: the lines a plot draws."""
    out: dict[str, list[tuple[str, float]]] = {}
    for rule in rules.rules:
        for name, _op, number in _THRESHOLD.findall(rule.expr):
            if name in rules.metrics:
                out.setdefault(name, []).append((rule.id, float(number)))
    return out


def series_value(value: Any) -> float | None:
    """One figure per period for a plot: a number, or the largest figure of a per-feature map."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict) and value:
        figures = [float(v) for v in value.values() if isinstance(v, int | float) and not isinstance(v, bool)]
        return max(figures) if figures else None
    return None


# ---- what the API answers (shared with the client) ------------------------------------------


class MonitoringResultOut(Model):
    result_id: str
    model_id: str
    version_id: str
    progression_id: str
    period: date
    metrics: dict[str, Any]
    posted_by: str
    posted_at: datetime
    delivered: bool
    breaches: list[Breach] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)


class Threshold(Model):
    rule_id: str
    value: float


class MonitoringHistory(Model):
    model_id: str
    progression_id: str | None = None
    metrics: dict[str, str] = Field(default_factory=dict)  # name -> kind
    thresholds: dict[str, list[Threshold]] = Field(default_factory=dict)
    results: list[MonitoringResultOut] = Field(default_factory=list)  # oldest first


class RetirementOverrideOut(Model):
    override_id: str
    model_id: str
    dependents: list[str]
    reason: str
    granted_by: str
    granted_at: datetime
