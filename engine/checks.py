"""Automated checks written in CEL, evaluated over a spec, its evidence and its resolved features.

A check never raises: whatever goes wrong (missing evidence, a missing key inside a JSON file,
a type error, a non-boolean result) becomes a failed :class:`CheckResult` with a readable
reason, and ``inputs`` records what the expression read so the audit shows what was evaluated.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from importlib.metadata import version as _dist_version
from typing import Any

import cel

from engine.lifecycle import CheckResult, ResolvedFeature
from engine.policy import StageDef
from engine.reads import VARIABLES, WILDCARD, Path, bound_names, path_text, referenced_paths
from engine.spec import ProgressionSpec
from engine.yaml_safe import YamlProblem, safe_load_yaml

EVALUATOR = f"common-expression-language {_dist_version('common-expression-language')}"

FEATURES_REGISTERED = "features-registered"
BUILTIN_CHECK_IDS = frozenset({FEATURES_REGISTERED})
FEATURES_REGISTERED_DESCRIPTION = "Every feature is registered in the feature catalog"
FEATURES_REGISTERED_EXPR = "features.all(f, f.known)"

# Variables a check may read (see build_context); anything else is a typo caught at policy load.

MISSING = "<missing>"
_MAX_INPUT_CHARS = 2000
_PREVIEW_CHARS = 500


class ExpressionError(ValueError):
    """A CEL expression that does not compile (syntax) or reads an unknown variable."""


# ---- compilation ---------------------------------------------------------------------------

_CACHE: dict[str, cel.Program] = {}


def compile_expr(expr: str) -> cel.Program:
    """Compile once per distinct expression text (module-level cache); raise :class:`ExpressionError`."""
    program = _CACHE.get(expr)
    if program is None:
        try:
            program = cel.compile(expr)
        except Exception as exc:  # the Rust parser raises ValueError with a multi-line message
            raise ExpressionError(_parser_message(str(exc))) from None
        if len(_CACHE) > 10_000:  # policies are few; this only guards against unbounded growth
            _CACHE.clear()
        _CACHE[expr] = program
    return program


def compile_checked(expr: str) -> cel.Program:
    """:func:`compile_expr` plus a static check that every free variable is one a check can read."""
    program = compile_expr(expr)
    bound = bound_names(expr)
    unknown = sorted(set(program.variables()) - VARIABLES - bound)
    if unknown:
        raise ExpressionError(f"unknown variable {unknown[0]!r}; a check can read {', '.join(sorted(VARIABLES))}")
    return program


def _parser_message(text: str) -> str:
    match = re.search(r"ERROR: <input>:(\d+):(\d+): (.*)", text)
    if match:
        return f"{match.group(3).strip()} (at line {match.group(1)}, column {match.group(2)} of the expression)"
    return text.splitlines()[0] if text else "invalid expression"


def _resolve(value: Any, path: Path) -> Any:
    for part in path:
        if part == WILDCARD:
            return MISSING
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value):
            value = value[part]
        else:
            return MISSING
    return value


def format_path(path: Path) -> str:
    """``bureau_score``, ``metrics.auc``, ``metrics.psi[*]``: the first part as it is, then ``path_text``'s rules."""
    return path_text(str(path[0]) if path else "", path[1:],
                     lambda part: "*" if part == WILDCARD else repr(part))


# ---- evidence and context ------------------------------------------------------------------


def cel_value(value: Any) -> Any:
    """Evidence as CEL reads it: datetimes stay timestamps (naive ones taken as UTC), dates become ISO strings.

    Not a JSON normaliser (that is engine.payload.json_payload): CEL compares timestamps, JSON has none.
    """
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): cel_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [cel_value(v) for v in value]
    return value


def evidence_value(data: bytes, filename: str | None, media_type: str | None) -> Any:
    """What a check sees for one evidence file: parsed JSON/YAML, text, or a digest for binary files.

    A structured file that does not parse is handed over as its text, so a check that reads a
    field of it fails with a reason that says the evidence is text, not a crash.
    """

    name = (filename or "").lower()
    media = (media_type or "").lower()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if name.endswith(".json") or "json" in media:
        try:
            return cel_value(json.loads(text))
        except ValueError:
            return text
    if name.endswith((".yaml", ".yml")) or "yaml" in media:
        try:
            value, _ = safe_load_yaml(text, filename=filename or "evidence.yaml", max_bytes=len(data) + 1)
            return cel_value(value)
        except YamlProblem:
            return text
    return text


def _feature_dict(feature: ResolvedFeature) -> dict[str, Any]:
    return {"name": feature.name, "description": feature.description, "tags": list(feature.tags),
            "known": feature.known}


def build_context(
    spec: ProgressionSpec,
    evidence: Mapping[str, Any],
    features: list[ResolvedFeature],
    *,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The variables a check can read: spec, model, version, evidence, features, feature_names, target, now."""
    plain_spec = spec.model_dump(mode="json", by_alias=True)
    context: dict[str, Any] = {
        "spec": plain_spec,
        "model": plain_spec["model"],
        "version": plain_spec["version"],
        "evidence": {name: cel_value(value) for name, value in evidence.items()},
        "features": [_feature_dict(f) for f in features],
        "feature_names": [f.name for f in features],
        "target": spec.target,
    }
    if now is not None:
        context["now"] = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    return context


# ---- evaluation ----------------------------------------------------------------------------


def _summarize(value: Any) -> Any:
    """Keep audit inputs bounded: large values are recorded as a preview plus length and digest."""
    try:
        dumped = json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        dumped = repr(value)
    if len(dumped) <= _MAX_INPUT_CHARS:
        return json.loads(dumped) if not isinstance(value, str) else value
    digest = hashlib.sha256(dumped.encode()).hexdigest()
    if isinstance(value, str):
        return {"truncated": True, "preview": value[:_PREVIEW_CHARS], "length": len(value), "sha256": digest}
    return {"truncated": True, "preview": dumped[:_PREVIEW_CHARS], "length": len(dumped), "sha256": digest}


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _label(element: Any, key: Any = None) -> str:
    if key is not None:
        return str(key)
    if isinstance(element, Mapping) and "name" in element:
        return str(element["name"])
    return _short(element)


_QUANTIFIED = re.compile(r"^\s*(?P<neg>!\s*)?(?P<range>.+?)\.(?P<macro>all|exists)\(\s*(?P<var>[A-Za-z_]\w*)\s*,"
                         r"(?P<body>.*)\)\s*$", re.S)


def _offenders(expr: str, context: dict[str, Any]) -> list[str]:
    """For ``X.all(v, c)`` or ``!X.exists(v, c)`` that failed: the elements that made it fail."""
    match = _QUANTIFIED.match(expr)
    if not match or (match.group("macro") == "exists") != bool(match.group("neg")):
        return []
    try:
        items = compile_expr(match.group("range")).execute(context)
        body = compile_expr(match.group("body"))
        want = match.group("macro") == "exists"  # negated exists: offenders satisfy the body
        found: list[str] = []
        pairs = [(items[k], k) for k in items] if isinstance(items, Mapping) else [(x, None) for x in items]
        for element, key in pairs:
            value = key if key is not None else element
            result = body.execute({**context, match.group("var"): value})
            if (result is True) == want:
                label = _label(element, key)
                if isinstance(element, Mapping) and element.get("tags"):
                    label += f" ({', '.join(map(str, element['tags']))})"
                found.append(label)
        return found
    except Exception:  # explanation is best-effort; the verdict does not depend on it
        return []


def _missing_key_path(key: str, paths: list[Path], context: dict[str, Any]) -> str | None:
    """Which referenced path lacks ``key``: expands ``[*]`` over a map's or list's elements."""

    def walk(value: Any, path: Path, done: Path) -> str | None:
        if not path:
            return None
        part, rest = path[0], path[1:]
        if part == WILDCARD:
            items = list(value.items()) if isinstance(value, Mapping) else list(enumerate(value)) \
                if isinstance(value, list) else []
            for k, element in items:
                found = walk(element, rest, (*done, k))
                if found:
                    return found
            return None
        if isinstance(value, Mapping):
            if part not in value:
                return format_path((*done, part)) if part == key else None
            return walk(value[part], rest, (*done, part))
        if isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value):
            return walk(value[part], rest, (*done, part))
        return None

    for path in paths:
        if key in path:
            found = walk(context, path, ())
            if found:
                return found
    return None


def _text_parent(paths: list[Path], context: dict[str, Any]) -> str | None:
    for path in paths:
        if len(path) > 2 and path[0] == "evidence" and isinstance(_resolve(context, path[:2]), str):
            return format_path(path[:2])
    return None


def _error_reason(exc: Exception, paths: list[Path], context: dict[str, Any]) -> str:
    if isinstance(exc, KeyError) and exc.args:
        key = str(exc.args[0])
        where = _missing_key_path(key, paths, context)
        return f"{where} is missing" if where else f"key {key!r} is missing"
    text_parent = _text_parent(paths, context)
    if text_parent:
        return f"{text_parent} is text, not structured data (is the file valid JSON or YAML?)"
    message = str(exc).split(". ")[0].strip() or type(exc).__name__
    return f"evaluation error: {message}"


def _scalar_inputs(inputs: dict[str, Any]) -> str:
    parts = [f"{k} = {_short(v)}" for k, v in inputs.items()
             if v is None or isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 40)]
    return ", ".join(parts[:6])


_MACRO = re.compile(r"\.\s*(all|exists|exists_one|map|filter)\s*\(")
# The evaluator iterates a map in hash order, which changes from one run to the next; when one element errors and
# another decides (a false in ``all``, a true in ``exists``), the outcome then depends on which comes first. CEL
# defines the answer as the deciding value (errors are absorbed by it); these runs find it with near certainty.
_MACRO_RUNS = 48


def _execute(program: cel.Program, expr: str, context: Any) -> Any:
    """Run ``program`` with CEL's commutative error semantics made deterministic over map iteration order.

    A run that returns a boolean returns the answer (the deciding element came before every erroring one, or none
    errors), so the first boolean wins. Only a run that errors is repeated (when the expression iterates): after
    ``_MACRO_RUNS`` errors the one whose text sorts first is raised, so the reason does not depend on the order.
    """
    errors: list[Exception] = []
    for _ in range(_MACRO_RUNS if _MACRO.search(expr) else 1):
        try:
            return program.execute(context)
        except Exception as exc:  # the Rust evaluator raises KeyError/TypeError/RuntimeError/...
            errors.append(exc)
    raise min(errors, key=lambda e: (type(e).__name__, str(e)))


def evaluate_check(
    stage: str,
    check_id: str,
    description: str,
    expr: str,
    context: dict[str, Any],
    *,
    now: dt.datetime | None = None,
    cel_context: cel.Context | None = None,
) -> CheckResult:
    """Evaluate one CEL check over ``context`` (see :func:`build_context`). Never raises.

    ``cel_context`` is ``context`` converted once (``cel.Context(variables=context)``); passing it
    when evaluating several checks avoids converting the whole context for every expression.
    """

    def result(passed: bool, reason: str, inputs: dict[str, Any]) -> CheckResult:
        return CheckResult(stage=stage, check_id=check_id, description=description, expr=expr, passed=passed,
                           reason=reason, inputs=inputs, evaluator=EVALUATOR, evaluated_at=now)

    try:
        paths, guarded = referenced_paths(expr)
        inputs: dict[str, Any] = {}
        for path in paths:
            readable = tuple(p for p in path[: path.index(WILDCARD)]) if WILDCARD in path else path
            if readable == ("features",):  # names and tags are what a feature check reads
                inputs["features"] = _summarize([{k: f.get(k) for k in ("name", "tags", "known")}
                                                 for f in context.get("features", [])])
            elif len(readable) > 1 or readable[0] not in ("spec", "evidence"):  # never the whole spec/evidence
                inputs[format_path(readable)] = _summarize(_resolve(context, readable))
        missing = sorted({str(p[1]) for p in paths if len(p) > 1 and p[0] == "evidence"
                          and p[1] not in context.get("evidence", {}) and p[1] not in guarded})
        if missing:
            return result(False, "; ".join(f"evidence.{name} is missing" for name in missing), inputs)
        try:
            program = compile_expr(expr)
        except ExpressionError as exc:
            return result(False, f"expression does not compile: {exc}", inputs)
        try:
            value = _execute(program, expr, cel_context if cel_context is not None else context)
        except Exception as exc:  # the Rust evaluator raises KeyError/TypeError/RuntimeError/...
            return result(False, _error_reason(exc, paths, context), inputs)
        if value is True:  # a passing check shows the values it passed on, as a failing one does
            scalars = _scalar_inputs(inputs)
            return result(True, f"met: {description}" + (f" — {scalars}" if scalars else ""), inputs)
        if value is False:
            reason = f"not met: {description}"
            offenders = _offenders(expr, context)
            if offenders:
                reason += f" — offending: {', '.join(offenders)}"
            elif scalars := _scalar_inputs(inputs):
                reason += f" — {scalars}"
            return result(False, reason, inputs)
        return result(False, f"expression returned {type(value).__name__} {_short(value)}, not a boolean", inputs)
    except Exception as exc:  # last resort: a check must never crash the caller
        return result(False, f"evaluation error: {type(exc).__name__}: {exc}", {})


def features_registered(features: list[ResolvedFeature], *, stage: str, now: dt.datetime | None) -> CheckResult:
    unknown = [f.name for f in features if not f.known]
    if unknown:
        reason = f"not registered in the feature catalog: {', '.join(unknown)}"
    else:
        reason = f"met: {FEATURES_REGISTERED_DESCRIPTION} ({len(features)} features)"
    return CheckResult(stage=stage, check_id=FEATURES_REGISTERED, description=FEATURES_REGISTERED_DESCRIPTION,
                       expr=FEATURES_REGISTERED_EXPR, passed=not unknown, reason=reason,
                       inputs={"feature_names": [f.name for f in features], "unknown": unknown},
                       evaluator=EVALUATOR, evaluated_at=now)


def evaluate_stage(
    stage: StageDef,
    *,
    spec: ProgressionSpec,
    evidence: Mapping[str, Any],
    features: list[ResolvedFeature],
    is_first_stage: bool,
    now: dt.datetime,
) -> list[CheckResult]:
    """Every check of ``stage`` (plus ``features-registered`` on the route's first stage). Never raises."""
    results: list[CheckResult] = []
    if is_first_stage:
        results.append(features_registered(features, stage=stage.name, now=now))
    try:
        context = build_context(spec, evidence, features, now=now)
        cel_context = cel.Context(variables=context)  # converted once for all checks of the stage
    except Exception as exc:
        return results + [
            CheckResult(stage=stage.name, check_id=c.id, description=c.description, expr=c.expr, passed=False,
                        reason=f"evaluation error: cannot build the check context: {exc}", evaluator=EVALUATOR,
                        evaluated_at=now)
            for c in stage.checks]
    for check in stage.checks:
        results.append(evaluate_check(stage.name, check.id, check.description, check.expr, context, now=now,
                                      cel_context=cel_context))
    return results


def builtin_checks(is_first_stage: bool) -> list[dict[str, str]]:
    """The built-in checks a stage gets (for showing the route before anything runs)."""
    if not is_first_stage:
        return []
    return [{"id": FEATURES_REGISTERED, "description": FEATURES_REGISTERED_DESCRIPTION,
             "expr": FEATURES_REGISTERED_EXPR}]


# ---- which evidence a stage reads ------------------------------------------------------------
