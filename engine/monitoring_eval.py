"""CEL over a period's monitoring results: compile (at policy load time) and evaluate (in an activity).

A rule reads the policy's declared metrics by name: a ``number`` metric is a double, a ``by_feature`` metric a
map feature -> double. Three functions help over maps and lists: ``max``, ``min`` and ``mean`` (written
``psi.max()`` or ``max(psi)``). A rule that names an undeclared metric, does not compile, or does not return a
boolean on sample figures is refused when the policy loads, never when results arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cel

from engine.lifecycle import RuleOutcome
from engine.policy import MetricKind, MonitoringRule, MonitoringRules
from engine.reads import bound_names

FUNCTIONS = ("max", "min", "mean")
_PROGRAMS: dict[str, cel.Program] = {}


class RuleError(ValueError):
    """A monitoring rule that does not compile, reads an undeclared metric or does not answer a boolean."""


def _program(expr: str) -> cel.Program:
    program = _PROGRAMS.get(expr)
    if program is None:
        try:
            program = cel.compile(expr)
        except Exception as exc:  # the Rust parser raises ValueError with a multi-line message
            raise RuleError(f"CEL expression does not compile: {str(exc).strip().splitlines()[0]}") from None
        if len(_PROGRAMS) > 10_000:  # policies are few; this only guards against unbounded growth
            _PROGRAMS.clear()
        _PROGRAMS[expr] = program
    return program


def _figures(value: Any) -> list[float]:
    items = value.values() if isinstance(value, dict) else value
    figures = [float(v) for v in items]
    if not figures:
        raise ValueError("no figures")
    return figures


def _functions() -> dict[str, Callable[[Any], float]]:
    return {"max": lambda v: max(_figures(v)), "min": lambda v: min(_figures(v)),
            "mean": lambda v: sum(_figures(v)) / len(_figures(v))}


def _context(metrics: dict[str, Any]) -> cel.Context:
    ctx = cel.Context()
    for name, fn in _functions().items():
        ctx.add_function(name, fn)
    for name, value in metrics.items():
        ctx.add_variable(name, {str(k): float(v) for k, v in value.items()} if isinstance(value, dict)
                         else float(value))
    return ctx


def _sample(rules: MonitoringRules) -> dict[str, Any]:
    return {name: {"feature_a": 0.5, "feature_b": 0.25} if d.kind == MetricKind.by_feature else 0.5
            for name, d in rules.metrics.items()}


def compile_rule(rule: MonitoringRule, rules: MonitoringRules) -> None:
    """Raise :class:`RuleError` when ``rule`` does not compile, reads an undeclared metric, or does not
    answer a boolean on sample figures of the declared kinds."""
    program = _program(rule.expr)
    unknown = sorted(set(program.variables()) - set(rules.metrics) - bound_names(rule.expr) - set(FUNCTIONS))
    if unknown:
        raise RuleError(f"unknown metric {unknown[0]!r}; the policy declares "
                              f"{', '.join(sorted(rules.metrics))}")
    try:
        value = program.execute(_context(_sample(rules)))
    except Exception as exc:  # the Rust evaluator raises several types
        raise RuleError(f"does not evaluate on sample figures: {str(exc).splitlines()[0]}") from None
    if not isinstance(value, bool):
        raise RuleError(f"returns {type(value).__name__}, not a boolean")


def evaluate_rules(rules: MonitoringRules, metrics: dict[str, Any]) -> list[RuleOutcome]:
    """Every rule over one period's results. Never raises: a rule that errors is reported, not breached."""
    ctx = _context(metrics)
    out: list[RuleOutcome] = []
    for rule in rules.rules:
        try:
            program = _program(rule.expr)
            inputs = {name: metrics[name] for name in sorted(set(program.variables()) & set(metrics))}
            value = program.execute(ctx)
        except Exception as exc:  # noqa: BLE001 - a rule must never crash the caller
            out.append(RuleOutcome(rule_id=rule.id, breached=False, reason=f"evaluation error: {exc}"))
            continue
        breached = value is True
        summary = ", ".join(f"{k}={_short(v)}" for k, v in inputs.items())
        reason = (f"breached: {rule.description} ({rule.expr}; {summary})" if breached
                  else f"within limits: not ({rule.expr})")
        out.append(RuleOutcome(rule_id=rule.id, breached=breached, reason=reason, inputs=inputs))
    return out


def _short(value: Any) -> str:
    if isinstance(value, dict):
        top = sorted(value.items(), key=lambda kv: -float(kv[1]))[:3]
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in top) + (", ..." if len(value) > 3 else "") + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)
