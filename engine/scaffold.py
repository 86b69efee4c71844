"""A new model repository from what its policy demands (``progression init``), and the JSON Schema of
``progression.yaml`` for editors.

Pure: from the published contracts (``engine.wire.EvidenceContracts``, what ``GET /api/v1/policies/{intent}/evidence``
answers) to file texts; the CLI writes them. The spec it writes validates with ``engine.loading.load_spec``, and each
evidence file is its contract's example, which satisfies the contract (checked when the policy loads), so a fresh
repository passes ``progression route --check`` except where the policy asks for more than its examples show.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from engine.spec import ProgressionSpec
from engine.wire import EvidenceContracts

SCHEMA_ID = "https://progression.example/schemas/progression.schema.json"
# Where `progression init` puts the schema in a repository; the spec's first line points editors at it.
SCHEMA_FILE = ".progression/progression.schema.json"
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
PLACEHOLDER_COMMIT = "0000000"


def progression_schema(intents: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``progression.yaml``, from the spec's model; ``intents`` (the
    installation's) become the allowed values of ``model.business_intent``."""
    schema = ProgressionSpec.model_json_schema(by_alias=True, mode="validation")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
              "title": "progression.yaml (apiVersion progression/v1, kind ModelProgression)", **schema}
    if intents:
        model = schema.get("$defs", {}).get("ModelInfo", {})
        intent = model.get("properties", {}).get("business_intent")
        if isinstance(intent, dict):
            intent["enum"] = sorted(intents)
    return schema


def schema_text(intents: Sequence[str] = ()) -> str:
    return json.dumps(progression_schema(intents), indent=2, sort_keys=True) + "\n"


def slug(text: str) -> str:
    """A model id from a directory name: lowercase letters, digits and hyphens."""
    value = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63]
    return value or "my-model"


def example_text(kind: str, example: Any) -> str:
    """A contract's example as a file: JSON (2-space indent) for data, the text itself for documents."""
    if kind == "data":
        return json.dumps(example, indent=2, ensure_ascii=False) + "\n"
    return str(example if example is not None else "")


def scaffold(contracts: EvidenceContracts, *, model_id: str, model_name: str, team: str, schema: str,
             version: str = "0.1.0") -> dict[str, str]:
    """Relative path -> text of a new repository for ``contracts.intent``: ``progression.yaml`` (with the editor
    schema modeline, one evidence entry per contract, each commented with what it is and which stage reads it)
    and every evidence file from its contract's example; ``schema`` (the JSON Schema of progression.yaml) goes to
    :data:`SCHEMA_FILE`, which the modeline names."""
    intent = contracts.intent
    lines = [
        f"# yaml-language-server: $schema={SCHEMA_FILE}",
        f"# Scaffolded by `progression init --intent {intent}`. Replace every value and evidence file with your",
        "# model's own; `progression route --check` says what is still missing before `progression start`.",
        f"# What each evidence file must contain: `progression policies {intent}` and",
        f"# GET /api/v1/policies/{intent}/evidence.",
        "apiVersion: progression/v1",
        "kind: ModelProgression",
        "model:",
        f"  id: {model_id}",
        f"  name: {json.dumps(model_name)}",
        f"  team: {team}",
        f"  business_intent: {intent}",
        "version:",
        f"  id: {version}",
        f"  source: git+https://git.example/{team}/{model_id}@{PLACEHOLDER_COMMIT}  # the commit it was built from",
        f"  artifact: s3://models/{model_id}/{version}/",
    ]
    if contracts.requires_artifact_digest:
        lines.append(f"  artifact_digest: {PLACEHOLDER_DIGEST}  # sha256 of the artifact's bytes (required)")
    lines += ["features: []  # every input feature, by its name in the feature catalog", "evidence:"]
    files: dict[str, str] = {}
    for contract in contracts.contracts:
        needed = f", read at {', '.join(contract.read_by_stages)}" if contract.read_by_stages else ""
        lines.append(f"  {contract.name}: {contract.path}  # {contract.kind}{needed}")
        files[contract.path] = example_text(contract.kind, contract.example)
    if not contracts.contracts:
        lines[-1] = "evidence: {}"
    lines.append("target: production")
    return {"progression.yaml": "\n".join(lines) + "\n", SCHEMA_FILE: schema, **files}
