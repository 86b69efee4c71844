"""Evidence contracts: what each evidence item of a policy must look like, checked the same way everywhere.

A policy's ``evidence:`` section gives, per evidence name, a *contract* (``engine.policy.EvidenceRule`` with a
``kind``): ``data`` items (JSON or YAML files) are checked against a JSON Schema (draft 2020-12); ``document``
items (Markdown) must be at least ``min_length`` characters and carry every required section as a heading.

This module is the one engine API for contracts (pure: no I/O), used by the dry run, the start, new evidence,
the published contracts (``GET /api/v1/policies/{intent}/evidence``), the scaffold (``progression init``) and
policy loading:

- :func:`evidence_problems` -- the problems of the evidence a caller sends (values as
  :func:`engine.checks.evidence_value` reads them), each with the evidence name, a JSON path, a stable ``code``,
  what was expected and what was got.
- :func:`contract_definition_problems` -- at policy load: every schema is a valid JSON Schema, every example
  satisfies its own contract, and every field a check reads is *required* by the contract (a contract that let
  a missing field through would call evidence "valid" that the checks then cannot read).
- :func:`published_contracts` -- the contracts as published to clients (``engine.wire.EvidenceContractOut``).

Contracts are a floor, not the checks: evidence that satisfies its contract still goes through every CEL check
of the policy (a forged file with ``"auc": 0.5`` has the right shape and fails ``discrimination``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from pydantic import BaseModel

from engine.policy import EvidenceRule, GovernancePolicy
from engine.reads import WILDCARD, path_text, referenced_paths, stage_evidence_reads
from engine.wire import EvidenceContractOut, EvidenceProblem

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_PROBLEMS = 50

# jsonschema keyword -> stable code
_CODES = {
    "required": "missing_field", "type": "wrong_type", "enum": "not_allowed", "const": "not_allowed",
    "minimum": "out_of_range", "maximum": "out_of_range", "exclusiveMinimum": "out_of_range",
    "exclusiveMaximum": "out_of_range", "minLength": "too_short", "maxLength": "too_long",
    "minItems": "too_few_items", "maxItems": "too_many_items", "minProperties": "too_few_items",
    "maxProperties": "too_many_items", "pattern": "pattern_mismatch", "additionalProperties": "unknown_field",
    "format": "wrong_format",
}
_TYPE_WORDS = {"object": "an object", "array": "a list", "string": "a string", "number": "a number",
               "integer": "an integer", "boolean": "true or false", "null": "null"}


class ContractDefinitionProblem(BaseModel):
    """A policy whose contract is itself wrong (reported at load time with the field path in the policy)."""

    field: tuple[str | int, ...]
    code: str
    message: str


# ---- values -----------------------------------------------------------------------------------


def _json_path(parts: Iterable[Any]) -> str:
    return path_text("$", parts, json.dumps)


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        keys = ", ".join(list(map(str, value))[:5])
        return f"an object with keys {keys}" if value else "an empty object"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown)}"
    if value is None:
        return "null"
    return f"{value!r} (a number)" if isinstance(value, int | float) else repr(value)


def _expected(error: ValidationError) -> str:
    keyword, bound = str(error.validator), error.validator_value
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    described = f" ({schema['description']})" if isinstance(schema.get("description"), str) else ""
    if keyword == "type":
        kinds = bound if isinstance(bound, list) else [bound]
        return " or ".join(_TYPE_WORDS.get(str(k), str(k)) for k in kinds) + described
    words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
             "exclusiveMaximum": "less than", "minLength": "at least {} characters",
             "maxLength": "at most {} characters", "minItems": "at least {} items", "maxItems": "at most {} items",
             "minProperties": "at least {} entries", "maxProperties": "at most {} entries",
             "pattern": "text matching {}", "enum": "one of {}", "const": "exactly {}"}
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"a number {words[keyword]} {bound}{described}"
    if keyword in ("enum",):
        return "one of " + ", ".join(json.dumps(v) for v in bound) + described
    if keyword in words:
        return words[keyword].format(json.dumps(bound) if keyword in ("pattern", "const") else bound) + described
    if keyword == "additionalProperties":
        return "only the fields the contract names"
    return f"{keyword} {json.dumps(bound, default=str)}"


def _problem(name: str, parts: list[Any], code: str, expected: str, got: str) -> EvidenceProblem:
    path = _json_path(parts)
    field = f"evidence.{name}" + path[1:]
    return EvidenceProblem(evidence=name, path=path, field=field, code=code, expected=expected, got=got,
                           message=f"{field}: expected {expected}, got {got}")


def _data_problems(name: str, rule: EvidenceRule, value: Any) -> list[EvidenceProblem]:
    if isinstance(value, str):
        return [_problem(name, [], "not_structured", "a JSON or YAML document (" + (rule.description or name) + ")",
                         "text that does not parse as JSON or YAML")]
    if isinstance(value, Mapping) and set(value) == {"sha256", "size"}:  # what evidence_value gives binaries
        return [_problem(name, [], "not_structured", "a JSON or YAML document", "a binary file")]
    validator = Draft202012Validator(rule.json_schema or {})
    problems: list[EvidenceProblem] = []
    seen: set[tuple[str, str]] = set()
    for error in sorted(validator.iter_errors(value), key=lambda e: (list(map(str, e.absolute_path)),
                                                                     str(e.validator))):
        parts = list(error.absolute_path)
        if error.validator == "required":
            present = error.instance if isinstance(error.instance, Mapping) else {}
            schema = error.schema if isinstance(error.schema, Mapping) else {}
            props = schema.get("properties", {}) if isinstance(schema.get("properties"), Mapping) else {}
            for key in error.validator_value:
                if key in present or (_json_path([*parts, key]), "missing_field") in seen:
                    continue
                seen.add((_json_path([*parts, key]), "missing_field"))
                sub = props.get(key, {}) if isinstance(props.get(key), Mapping) else {}
                what = sub.get("description") or _TYPE_WORDS.get(str(sub.get("type")), "a value")
                problems.append(_problem(name, [*parts, key], "missing_field", f"{what} (required)", "nothing"))
            continue
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            schema = error.schema if isinstance(error.schema, Mapping) else {}
            known = set(schema.get("properties", {}) or {})
            for key in error.instance:
                if key not in known:
                    problems.append(_problem(name, [*parts, key], "unknown_field",
                                             "only " + ", ".join(sorted(known)), _got(error.instance[key])))
            continue
        code = _CODES.get(str(error.validator), f"schema_{error.validator}")
        key = (_json_path(parts), code)
        if key in seen:
            continue
        seen.add(key)
        problems.append(_problem(name, parts, code, _expected(error), _got(error.instance)))
    return problems


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def document_headings(text: str) -> list[str]:
    """The Markdown headings of a document, as written."""
    return [m.group(1).strip() for m in _HEADING.finditer(text)]


def _section_present(section: str, headings: list[str]) -> bool:
    want = section.strip().lower()
    return any(h.lower() == want or h.lower().startswith(want) for h in headings)


def _document_problems(name: str, rule: EvidenceRule, value: Any) -> list[EvidenceProblem]:
    if not isinstance(value, str):
        got = "a binary file" if isinstance(value, Mapping) and set(value) == {"sha256", "size"} \
            else "structured data (JSON/YAML)"
        return [_problem(name, [], "not_a_document", "a text (Markdown) document", got)]
    problems: list[EvidenceProblem] = []
    if rule.min_length is not None and len(value.strip()) < rule.min_length:
        problems.append(_problem(name, [], "too_short", f"at least {rule.min_length} characters",
                                 f"{len(value.strip())} characters"))
    headings = document_headings(value)
    for section in rule.sections:
        if not _section_present(section, headings):
            problems.append(EvidenceProblem(
                evidence=name, path=f"$#{section}", field=f"evidence.{name}#{section}", code="missing_section",
                expected=f"a section headed '## {section}'",
                got="headings: " + (", ".join(headings[:8]) if headings else "none"),
                message=f"evidence.{name}: section '{section}' is missing: expected a heading '## {section}', "
                        "got " + (f"headings {', '.join(headings[:8])}" if headings else "no headings")))
    return problems


def item_problems(name: str, rule: EvidenceRule, value: Any) -> list[EvidenceProblem]:
    """The problems of one evidence value against its contract (none when the rule has no contract)."""
    if rule.kind == "data":
        return _data_problems(name, rule, value)
    if rule.kind == "document":
        return _document_problems(name, rule, value)
    return []


def evidence_problems(policy: GovernancePolicy, evidence: Mapping[str, Any]) -> list[EvidenceProblem]:
    """Every contract problem of the evidence given (items without a contract, or not given, have none).

    Evidence that is *missing* is not a contract problem: the route says which stage needs it.
    """
    problems: list[EvidenceProblem] = []
    for name in sorted(evidence):
        rule = policy.evidence.get(name)
        if rule is not None and rule.is_contract:
            problems.extend(item_problems(name, rule, evidence[name]))
    return problems[:MAX_PROBLEMS]


def unchanged_examples(policy: GovernancePolicy, evidence: Mapping[str, Any]) -> list[str]:
    """The evidence items that are still the policy's own example (what ``progression init`` wrote): they pass the
    contract, and often the checks, but describe no real model. The route warns about them."""
    same: list[str] = []
    for name in sorted(evidence):
        rule = policy.evidence.get(name)
        if rule is None or not rule.is_contract or rule.example is None:
            continue
        value = evidence[name]
        if rule.kind == "document" and isinstance(value, str) and isinstance(rule.example, str):
            if value.strip() == rule.example.strip():
                same.append(name)
        elif value == rule.example:
            same.append(name)
    return same


def problems_message(problems: list[EvidenceProblem]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{problems[0].message}{more}"


# ---- the contracts themselves (policy load) ---------------------------------------------------


def _requires(schema: Any, parts: tuple[Any, ...]) -> str | None:
    """Why ``parts`` (a path a check reads) is not guaranteed present by ``schema``; ``None`` when it is."""
    current = schema
    walked: list[Any] = []
    for part in parts:
        if not isinstance(current, Mapping):
            return f"the schema at {_json_path(walked)} is not an object schema"
        if part == WILDCARD:
            nxt = current.get("additionalProperties") if current.get("type") == "object" else current.get("items")
            if not isinstance(nxt, Mapping):
                return f"the schema at {_json_path(walked)} does not describe its entries " \
                       "(additionalProperties for a map, items for a list)"
            current = nxt
            walked.append(0)
            continue
        props = current.get("properties")
        if current.get("type") != "object" or not isinstance(props, Mapping) or part not in props:
            return f"the schema at {_json_path(walked)} does not declare the field {part!r}"
        if part not in (current.get("required") or []):
            return f"the field {_json_path([*walked, part])} is declared but not required"
        current = props[part]
        walked.append(part)
        if _allows_null(current):  # "present" as null is as good as missing to a check
            return f"the field {_json_path(walked)} may be null"
    return None


def _allows_null(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return True  # `true` (anything goes) lets null through
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    return "null" in kinds or not kinds and not any(k in schema for k in ("enum", "const", "properties",
                                                                            "items", "anyOf", "oneOf", "allOf"))


def contract_definition_problems(policy: GovernancePolicy) -> list[ContractDefinitionProblem]:
    """What is wrong with the policy's contracts: invalid schemas, examples that break their own contract,
    checks that read an evidence field the contract does not require, contracts of evidence read as text."""
    problems: list[ContractDefinitionProblem] = []
    for name, rule in policy.evidence.items():
        if not rule.is_contract:
            continue
        at = ("evidence", name)
        if rule.kind == "data":
            try:
                Draft202012Validator.check_schema(rule.json_schema or {})
            except SchemaError as exc:
                where = _json_path(exc.absolute_path)
                problems.append(ContractDefinitionProblem(
                    field=(*at, "schema"), code="invalid_schema",
                    message=f"evidence {name!r}: the schema is not a valid JSON Schema at {where}: "
                            f"{exc.message}"))
                continue
        for problem in item_problems(name, rule, rule.example):
            problems.append(ContractDefinitionProblem(
                field=(*at, "example"), code="example_breaks_contract",
                message=f"evidence {name!r}: the example breaks its own contract: {problem.message}"))
    for si, stage in enumerate(policy.stages):
        for ci, check in enumerate(stage.checks):
            paths, guarded = referenced_paths(check.expr)
            for path in paths:
                if len(path) < 2 or path[0] != "evidence" or path[1] in guarded:
                    continue
                name = str(path[1])
                read = policy.evidence.get(name)
                if read is None or not read.is_contract:
                    continue
                expr_at: tuple[str | int, ...] = ("stages", si, "checks", ci, "expr")
                if read.kind == "document" and len(path) > 2:
                    problems.append(ContractDefinitionProblem(
                        field=expr_at, code="contract_mismatch",
                        message=f"check {check.id!r} reads fields of evidence {name!r}, whose contract is a "
                                "document (text)"))
                    continue
                if read.kind == "data":
                    why = _requires(read.json_schema, tuple(path[2:]))
                    if why is not None:
                        dotted = ".".join("[*]" if p == WILDCARD else str(p) for p in path)
                        problems.append(ContractDefinitionProblem(
                            field=("evidence", name, "schema"), code="contract_optional_field",
                            message=f"check {check.id!r} reads {dotted}, but the contract of {name!r} does not "
                                    f"require it ({why}): evidence without it would pass the contract"))
    return problems


# ---- publishing -------------------------------------------------------------------------------


def published_contracts(policy: GovernancePolicy) -> list[EvidenceContractOut]:
    """Every evidence contract of the policy, with the stages that read each item (in route order)."""
    out: list[EvidenceContractOut] = []
    for name, rule in sorted(policy.evidence.items()):
        if not rule.is_contract or rule.kind is None or rule.description is None or rule.path is None:
            continue
        stages = [s.name for s in policy.stages if name in stage_evidence_reads(s)]
        out.append(EvidenceContractOut(
            name=name, kind=rule.kind, description=rule.description, path=rule.path, schema=rule.json_schema,
            sections=list(rule.sections), min_length=rule.min_length, example=rule.example,
            frozen_after=rule.frozen_after, read_by_stages=stages, needed_by=stages[0] if stages else None))
    return out

