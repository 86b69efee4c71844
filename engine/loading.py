"""Safe YAML loading of progression specs, policies and the feature catalog, with precise errors.

Every problem names the file, the field path and the line, e.g.
``progression.yaml:7: model.business_intent: no policy for intent 'credit-underwritting'
(did you mean 'credit-underwriting'?)``. Policies compile every CEL expression here, so a
broken policy is refused when it loads, never in the middle of a running progression.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from engine import checks, monitoring_eval
from engine.contracts import contract_definition_problems
from engine.errors import InvalidPolicy, InvalidSpec
from engine.lifecycle import ResolvedFeature
from engine.policy import GovernancePolicy, Role, policy_hash
from engine.spec import ProgressionSpec, check_relative_path
from engine.yaml_safe import (
    DEFAULT_MAX_BYTES,
    FieldPath,
    LineMap,
    Problem,
    YamlProblem,
    format_path,
    safe_load_yaml,
    sorted_problems,
)

POLICY_MAX_BYTES = 1024 * 1024
FEATURES_FILE = "features.yaml"


# ---- pydantic errors -> problems ------------------------------------------------------------

_PATTERN_HINTS = {
    r"^[a-z0-9][a-z0-9-]{0,62}$": "must be a lowercase slug: letters, digits and hyphens, at most 63 characters",
    r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$": "must be a version id: letters, digits and . _ + -, at most 63 characters",
    r"^[A-Za-z_][A-Za-z0-9_]{0,127}$": "must be an identifier: letters, digits and underscores",
    r"^[a-z][a-z0-9_]{0,63}$": "must be lower_snake_case: lowercase letters, digits and underscores",
    r"^[a-z][a-z0-9_]{0,62}$": "must be lower_snake_case: lowercase letters, digits and underscores",
    r"^[a-z][a-z0-9-]{0,62}$": "must be lowercase letters, digits and hyphens",
}


_EXPECTED = {
    "model_type": "a mapping", "model_attributes_type": "a mapping", "dict_type": "a mapping",
    "list_type": "a list", "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
}


def _lookup_line(lines: LineMap, path: Sequence[str | int]) -> int | None:
    path = tuple(path)
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _get(data: Any, path: Sequence[str | int]) -> Any:
    for part in path:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _pydantic_problems(exc: ValidationError, data: Any, lines: LineMap, filename: str) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc: list[str | int] = list(err["loc"])
        kind = str(err["type"])
        if "[key]" in loc:  # an invalid key of a dict field: point at the key itself
            loc = loc[: loc.index("[key]")]
        line = _lookup_line(lines, loc)
        message = str(err["msg"])
        if kind == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}"
        elif kind == "missing":
            line = _lookup_line(lines, loc[:-1])
            message = "required field is missing"
        elif kind.startswith("value_error") or kind == "assertion_error":
            ctx = err.get("ctx") or {}
            message = str(ctx.get("error", message.removeprefix("Value error, ")))
        elif kind == "string_pattern_mismatch":
            pattern = str((err.get("ctx") or {}).get("pattern", ""))
            message = f"{err['input']!r} {_PATTERN_HINTS.get(pattern, message[0].lower() + message[1:])}"
        elif kind == "literal_error" or kind == "enum":
            expected = str((err.get("ctx") or {}).get("expected", ""))
            message = f"{err['input']!r} is not allowed; expected {expected}" if expected else message
        elif kind in _EXPECTED:
            message = f"expected {_EXPECTED[kind]} (got {_type_name(err['input'])})"
            if kind == "string_type" and isinstance(err["input"], int | float | bool):
                message += f"; quote it: \"{err['input']}\""
        else:
            message = message[0].lower() + message[1:]
        problems.append(Problem(filename, line, format_path(loc), message, kind))
    return problems


def _add_known_keys(problems: list[Problem], model: type[BaseModel], data: Any) -> None:
    """Name the allowed keys next to an unknown one, with a suggestion when one is close."""
    for problem in problems:
        if problem.type != "extra_forbidden":
            continue
        allowed = _allowed_keys(model, problem.field)
        if not allowed:
            continue
        key = problem.message.removeprefix("unknown key ").strip("'")
        close = difflib.get_close_matches(key, allowed, n=1)
        problem.message += f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(allowed)}"


def _allowed_keys(model: type[BaseModel], dotted: str) -> list[str]:
    parts = re.split(r"\.|\[\d+\]", dotted)
    parts = [p for p in parts if p][:-1]
    current: Any = model
    for part in parts:
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        match = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if match is None:
            return []
        current = _model_in(match.annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    if fields is None:
        return []
    return [f.alias or n for n, f in fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# ---- progression spec ------------------------------------------------------------------------


def _spec_value_problems(problem: Problem, data: Any, lines: LineMap) -> list[Problem]:
    """The spec's whole-dict validators report on ``evidence``/``features``; point at the entry instead."""
    if problem.field == "evidence" and problem.type.startswith("value_error") and isinstance(data, Mapping):
        evidence = data.get("evidence")
        found: list[Problem] = []
        if isinstance(evidence, Mapping):
            for name, value in evidence.items():
                if not isinstance(value, str):
                    continue
                try:
                    check_relative_path(value)
                except ValueError as exc:
                    found.append(Problem(problem.file, _lookup_line(lines, ("evidence", name)),
                                         f"evidence.{name}", str(exc), "path_outside_repository"))
        return found or [problem]
    if problem.field == "features" and problem.type.startswith("value_error") and isinstance(data, Mapping):
        features = data.get("features")
        if isinstance(features, list):
            seen: set[Any] = set()
            for i, name in enumerate(features):
                if name in seen:
                    return [Problem(problem.file, _lookup_line(lines, ("features", i)), f"features[{i}]",
                                    problem.message, "duplicate_feature")]
                seen.add(name)
    return [problem]


def load_spec(
    text: str | bytes,
    *,
    filename: str = "progression.yaml",
    registry: PolicyRegistry | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ProgressionSpec:
    """Parse and validate a ``progression.yaml``; raise :class:`InvalidSpec` naming every problem."""
    try:
        data, lines = safe_load_yaml(text, filename=filename, max_bytes=max_bytes)
    except YamlProblem as exc:
        _raise(InvalidSpec, [exc.problem])
    if not isinstance(data, Mapping):
        what = "empty" if data is None else f"{_type_name(data)}, not a mapping"
        _raise(InvalidSpec, [Problem(filename, 1 if data is None else lines.get(()), "",
                                     f"the document is {what}; expected a ModelProgression mapping",
                                     "not_a_mapping")])
    problems: list[Problem] = []
    spec: ProgressionSpec | None = None
    try:
        spec = ProgressionSpec.model_validate(data)
    except ValidationError as exc:
        for problem in _pydantic_problems(exc, data, lines, filename):
            problems.extend(_spec_value_problems(problem, data, lines))
        _add_known_keys(problems, ProgressionSpec, data)
        problems = _misspelt_not_missing(problems)
    if registry is not None:
        intent = _get(data, ("model", "business_intent"))
        if isinstance(intent, str) and not any(p.field == "model.business_intent" for p in problems) \
                and registry.get(intent) is None:
            problems.append(Problem(filename, _lookup_line(lines, ("model", "business_intent")),
                                    "model.business_intent", registry.unknown_intent_message(intent),
                                    "unknown_intent"))
        loaded = registry.get(spec.model.business_intent) if spec is not None else None
        if spec is not None and loaded is not None and loaded.policy.requires_artifact_digest \
                and spec.version.artifact_digest is None:
            problems.append(Problem(
                filename, _lookup_line(lines, ("version",)), "version.artifact_digest",
                f"the {loaded.intent} policy requires the artifact's digest: add "
                "'artifact_digest: sha256:<64 hex>' (the sha256 of the artifact's bytes) under version",
                "artifact_digest_required"))
        if spec is not None and loaded is not None and (
                tier_problem := materiality_problem(spec, loaded.policy)) is not None:
            code, message = tier_problem
            problems.append(Problem(filename, _lookup_line(lines, ("materiality_tier",)), "materiality_tier",
                                    message, code))
    if problems or spec is None:
        _raise(InvalidSpec, problems)
    return spec


def materiality_problem(spec: ProgressionSpec, policy: GovernancePolicy) -> tuple[str, str] | None:
    """(code, message) when the spec's materiality tier is outside the policy's tiers, or is less material than
    the policy's risk_tier on a route where no model risk officer approves (then nobody independent of the
    developer would agree to the slower revalidation cadence it buys). A more material tier is always allowed.

    Where a model risk officer does approve on the route, the tier is part of the spec (and its digest) every
    decision binds to, and the gate page shows it against the policy's risk tier."""
    tier = spec.materiality_tier
    if tier is None:
        return None
    top = max([policy.risk_tier, *(c.tier for c in policy.cadence)])
    if not 1 <= tier <= top:
        return ("tier_out_of_range", f"materiality_tier {tier} is outside the {policy.intent} policy's tiers "
                                     f"1..{top}")
    if tier > policy.risk_tier and not any(a.role == Role.model_risk_officer for stage in
                                           policy.route_for(spec.target) for a in stage.approvals):
        return ("tier_needs_risk_officer",
                f"materiality_tier {tier} is less material than the {policy.intent} policy's risk_tier "
                f"{policy.risk_tier}, and no model risk officer approves on this route to agree to it; "
                f"leave it unset or at most {policy.risk_tier}")
    return None


def _misspelt_not_missing(problems: list[Problem]) -> list[Problem]:
    """``modle:`` for ``model:`` is one mistake: report the misspelt key (with its line and the suggestion),
    not also "model: required field is missing" on the document's first line."""
    suggested: set[str] = set()
    for problem in problems:
        match = re.search(r"\(did you mean '([^']+)'\?\)$", problem.message)
        if problem.type == "extra_forbidden" and match:
            parent = problem.field.rsplit(".", 1)[0] if "." in problem.field else ""
            suggested.add(f"{parent}.{match.group(1)}" if parent else match.group(1))
    return [p for p in problems if not (p.type == "missing" and p.field in suggested)]


def _raise(cls: type[InvalidSpec] | type[InvalidPolicy], problems: list[Problem]) -> NoReturn:
    ordered = sorted_problems(problems)
    raise cls(ordered[0].format(), details=[p.as_dict() for p in ordered])


# ---- policies --------------------------------------------------------------------------------


@dataclass
class LoadedPolicy:
    policy: GovernancePolicy
    hash: str
    path: Path
    yaml_text: str
    programs: dict[tuple[str, str], Any] = field(default_factory=dict)  # (stage, check id) -> cel.Program

    @property
    def intent(self) -> str:
        return self.policy.intent


def _policy_problems(text: str | bytes, filename: str) -> tuple[GovernancePolicy | None, dict[tuple[str, str], Any],
                                                                  list[Problem]]:

    try:
        data, lines = safe_load_yaml(text, filename=filename, max_bytes=POLICY_MAX_BYTES)
    except YamlProblem as exc:
        return None, {}, [exc.problem]
    if not isinstance(data, Mapping):
        return None, {}, [Problem(filename, 1, "", "the document is not a GovernancePolicy mapping", "not_a_mapping")]
    problems: list[Problem] = []
    try:
        policy = GovernancePolicy.model_validate(data)
    except ValidationError as exc:
        for problem in _pydantic_problems(exc, data, lines, filename):
            problems.append(_policy_value_problem(problem, data, lines))
        _add_known_keys(problems, GovernancePolicy, data)
        return None, {}, problems
    programs: dict[tuple[str, str], Any] = {}
    for si, stage in enumerate(policy.stages):
        for ci, check in enumerate(stage.checks):
            where = ("stages", si, "checks", ci)
            if check.id in checks.BUILTIN_CHECK_IDS:
                problems.append(Problem(filename, _lookup_line(lines, (*where, "id")), format_path((*where, "id")),
                                        f"check id {check.id!r} is reserved for the built-in check", "reserved_id"))
                continue
            try:
                programs[(stage.name, check.id)] = checks.compile_checked(check.expr)
            except checks.ExpressionError as exc:
                problems.append(Problem(
                    filename, _lookup_line(lines, (*where, "expr")), format_path((*where, "expr")),
                    f"stage {stage.name!r} check {check.id!r}: CEL expression does not compile: {exc}",
                    "cel_compile"))
        for ai, rule in enumerate(stage.approvals):
            if rule.escalate_to is not None and rule.sla is None:
                at = ("stages", si, "approvals", ai, "escalate_to")
                problems.append(Problem(filename, _lookup_line(lines, at), format_path(at),
                                        "escalate_to needs an sla to escalate after", "escalation_without_sla"))
    # Evidence contracts: valid schemas, examples that satisfy them, and every field a check reads required.
    for contract in contract_definition_problems(policy):
        problems.append(Problem(filename, _lookup_line(lines, contract.field), format_path(contract.field),
                                contract.message, contract.code))
    if policy.monitoring is not None:
        for ri, watch in enumerate(policy.monitoring.rules):
            spot: tuple[str, str, int, str] = ("monitoring", "rules", ri, "expr")
            try:
                monitoring_eval.compile_rule(watch, policy.monitoring)
            except monitoring_eval.RuleError as exc:
                problems.append(Problem(filename, _lookup_line(lines, spot), format_path(spot),
                                        f"monitoring rule {watch.id!r}: {exc}", "monitoring_rule"))
    return policy, programs, problems


def _first_duplicate(items: Any, key: str) -> int | None:
    if not isinstance(items, list):
        return None
    values = [item.get(key) if isinstance(item, Mapping) else None for item in items]
    return next((i for i, v in enumerate(values) if v is not None and v in values[:i]), None)


def _policy_value_problem(problem: Problem, data: Any, lines: LineMap) -> Problem:
    """Uniqueness validators report on the whole policy or stage; point at the duplicate entry instead."""
    if not problem.type.startswith("value_error"):
        return problem
    prefix: FieldPath = ()
    if problem.field:
        match = re.fullmatch(r"stages\[(\d+)\]", problem.field)
        if not match:
            return problem
        prefix = ("stages", int(match.group(1)))
    for collection, key in (("stages", "name"), ("checks", "id"), ("approvals", "role")):
        where = (*prefix, collection)
        index = _first_duplicate(_get(data, where), key)
        if index is not None and (collection == "stages") == (not prefix):
            path = (*where, index, key)
            return Problem(problem.file, _lookup_line(lines, path), format_path(path), problem.message,
                           f"duplicate_{key}")
    return problem


def load_policy(path: Path) -> LoadedPolicy:
    """Load, validate and compile one policy file; raise :class:`InvalidPolicy` naming file, line and field."""
    path = Path(path)
    raw = path.read_bytes()
    policy, programs, problems = _policy_problems(raw, path.name)
    if problems or policy is None:
        _raise(InvalidPolicy, problems)
    return LoadedPolicy(policy=policy, hash=policy_hash(policy), path=path,
                        yaml_text=raw.decode("utf-8-sig"), programs=programs)


def policy_from_text(text: str | bytes, *, filename: str = "policy.yaml") -> LoadedPolicy:
    """Same as :func:`load_policy` for text that is not on disk (e.g. published through the API)."""
    policy, programs, problems = _policy_problems(text, filename)
    if problems or policy is None:
        _raise(InvalidPolicy, problems)
    yaml_text = text.decode("utf-8-sig") if isinstance(text, bytes) else text
    return LoadedPolicy(policy=policy, hash=policy_hash(policy), path=Path(filename), yaml_text=yaml_text,
                        programs=programs)


class PolicyRegistry:
    """The active policy per business intent. Every problem surfaces in :meth:`from_dir`, never later."""

    def __init__(self, policies: Iterable[LoadedPolicy] = ()) -> None:
        self._by_intent: dict[str, LoadedPolicy] = {}
        for loaded in policies:
            if loaded.intent in self._by_intent:
                raise InvalidPolicy(f"{loaded.path.name}: intent: intent {loaded.intent!r} is already defined by "
                                    f"{self._by_intent[loaded.intent].path.name}")
            self._by_intent[loaded.intent] = loaded

    @classmethod
    def from_dir(cls, path: Path) -> PolicyRegistry:
        path = Path(path)
        if not path.is_dir():
            raise InvalidPolicy(f"{path}: policy directory does not exist")
        problems: list[Problem] = []
        loaded: dict[str, LoadedPolicy] = {}
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.name != FEATURES_FILE)
        for file in files:
            try:
                one = load_policy(file)
            except InvalidPolicy as exc:
                problems.extend(Problem(**d) for d in exc.details or [])
                continue
            if one.intent in loaded:
                _, lines = safe_load_yaml(one.yaml_text, filename=file.name, max_bytes=POLICY_MAX_BYTES)
                problems.append(Problem(file.name, _lookup_line(lines, ("intent",)), "intent",
                                        f"intent {one.intent!r} is already defined by {loaded[one.intent].path.name}; "
                                        "one policy per intent", "duplicate_intent"))
                continue
            loaded[one.intent] = one
        if problems:
            ordered = problems  # keep file order; each file's problems are already sorted
            raise InvalidPolicy(ordered[0].format(), details=[p.as_dict() for p in ordered])
        return cls(loaded.values())

    def get(self, intent: str) -> LoadedPolicy | None:
        return self._by_intent.get(intent)

    def intents(self) -> list[str]:
        return sorted(self._by_intent)

    def all(self) -> list[LoadedPolicy]:
        return [self._by_intent[i] for i in self.intents()]

    def by_hash(self, hash: str) -> LoadedPolicy | None:
        return next((p for p in self._by_intent.values() if p.hash == hash), None)

    def unknown_intent_message(self, intent: str) -> str:
        close = difflib.get_close_matches(intent, self.intents(), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known intents: {', '.join(self.intents()) or 'none'}"
        return f"no policy for intent {intent!r} ({hint})"


# ---- feature catalog -------------------------------------------------------------------------


class _FeatureEntry(BaseModel):
    model_config = {"extra": "forbid"}
    name: str
    description: str = ""
    tags: list[str] = []


class _FeatureFile(BaseModel):
    model_config = {"extra": "forbid"}
    features: list[_FeatureEntry]


def load_feature_catalog(path: Path) -> list[ResolvedFeature]:
    """The seed feature catalog (``policies/features.yaml``); raises :class:`InvalidPolicy` with file/line."""
    path = Path(path)
    try:
        data, lines = safe_load_yaml(path.read_bytes(), filename=path.name, max_bytes=POLICY_MAX_BYTES)
    except YamlProblem as exc:
        _raise(InvalidPolicy, [exc.problem])
    try:
        parsed = _FeatureFile.model_validate(data)
    except ValidationError as exc:
        _raise(InvalidPolicy, _pydantic_problems(exc, data, lines, path.name))
    names = [f.name for f in parsed.features]
    dupes = [i for i, n in enumerate(names) if n in names[:i]]
    if dupes:
        i = dupes[0]
        _raise(InvalidPolicy, [Problem(path.name, _lookup_line(lines, ("features", i)), f"features[{i}].name",
                                       f"feature {names[i]!r} is listed twice", "duplicate_feature")])
    return [ResolvedFeature(name=f.name, description=f.description, tags=sorted(set(f.tags)), known=True)
            for f in parsed.features]


def resolve_features(names: Iterable[str], catalog: Mapping[str, ResolvedFeature] | Iterable[ResolvedFeature]
                     ) -> list[ResolvedFeature]:
    """A spec's feature names looked up in the catalog; unknown names come back with ``known=False``."""
    index = dict(catalog) if isinstance(catalog, Mapping) else {f.name: f for f in catalog}
    return [index[n].model_copy() if n in index else ResolvedFeature(name=n, known=False) for n in names]
