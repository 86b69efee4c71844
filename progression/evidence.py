"""Evidence files written into a model's repository, in the formats the engine checks today.

One small function per kind (``write_metrics``, ``write_fairness``, ...), all through :func:`write_evidence`, which
writes the file where the repository's ``progression.yaml`` declares it (or at a default path it then declares),
so ``progression start`` later submits exactly what the notebook evaluated. :func:`evidence_file` is the one
encoding of a Python value as an evidence file: the notebook's local verdict evaluates these same bytes.

The shapes are today's (see ``examples/``): structured kinds are JSON objects, documents are Markdown text. When
the policies carry evidence contracts, each ``write_*`` checks against its contract here, in one place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from engine.spec import check_relative_path

SPEC_FILENAME = "progression.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class EvidenceFormatError(ValueError):
    """A value that is not in the shape its evidence kind needs (names the evidence and what was expected)."""


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n").encode()


def evidence_file(name: str, value: Any, path: str | None = None) -> tuple[str, bytes]:
    """(relative path, bytes) of evidence ``name`` holding ``value``: text as Markdown, bytes as they are,
    anything else as JSON. ``path`` overrides the default (``docs/<name>.md`` or ``evidence/<name>.json``)."""
    if not _NAME.match(name):
        raise EvidenceFormatError(f"evidence name {name!r}: lower-case letters, digits and '_', starting with a "
                                  "letter")
    if isinstance(value, bytes):
        return path or f"evidence/{name}.bin", value
    if isinstance(value, str):
        return path or f"docs/{name}.md", value.encode()
    try:
        data = _json_bytes(value)
    except (TypeError, ValueError) as exc:
        raise EvidenceFormatError(f"evidence {name!r}: not JSON-serialisable ({exc})") from None
    return path or f"evidence/{name}.json", data


def _declared(repo: Path) -> dict[str, str]:
    spec = repo / SPEC_FILENAME
    if not spec.is_file():
        raise FileNotFoundError(f"{spec}: no progression.yaml in this repository (run `progression init` or "
                                "write one first)")
    data = yaml.safe_load(spec.read_text())
    evidence = data.get("evidence") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in evidence.items()} if isinstance(evidence, dict) else {}


def _declare(repo: Path, name: str, relpath: str) -> None:
    """Add ``name: relpath`` under ``evidence:`` in progression.yaml, keeping the rest of the text as it is."""
    spec = repo / SPEC_FILENAME
    lines = spec.read_text().splitlines(keepends=True)
    entry = f"  {name}: {relpath}\n"
    for i, line in enumerate(lines):
        if re.match(r"^evidence:\s*(#.*)?$", line):
            lines.insert(i + 1, entry)
            break
    else:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["evidence:\n", entry]
    text = "".join(lines)
    yaml.safe_load(text)  # never leave a spec that does not parse
    spec.write_text(text)


def write_evidence(repo: str | Path, name: str, value: Any) -> Path:
    """Write evidence ``name`` into the repository at its declared path (declaring a default one if needed)."""
    root = Path(repo).resolve()
    declared = _declared(root)
    relpath, data = evidence_file(name, value, declared.get(name))
    relpath = check_relative_path(relpath)
    target = (root / relpath).resolve()
    if not target.is_relative_to(root):
        raise EvidenceFormatError(f"evidence {name!r}: path {relpath!r} leaves the repository")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    if name not in declared:
        _declare(root, name, relpath)
    return target


def _mapping(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EvidenceFormatError(f"evidence {name!r}: expected a dict (a JSON object), got {type(value).__name__}")
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise EvidenceFormatError(f"evidence {name!r}: expected text (Markdown), got {type(value).__name__}")
    return value


def write_metrics(repo: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Performance and stability figures (``auc``, ``ks``, ``psi``, ``out_of_time``, ...) as JSON."""
    return write_evidence(repo, "metrics", dict(_mapping("metrics", metrics)))


def write_fairness(repo: str | Path, fairness: Mapping[str, Any]) -> Path:
    """Disparate-impact results (``groups`` by name with ``basis`` and ``adverse_impact_ratio``) as JSON."""
    return write_evidence(repo, "fairness", dict(_mapping("fairness", fairness)))


def write_latency(repo: str | Path, latency: Mapping[str, Any]) -> Path:
    """Serving latency under load (``p99_ms``, ``load_rps``) as JSON."""
    return write_evidence(repo, "latency", dict(_mapping("latency", latency)))


def write_model_card(repo: str | Path, text: str) -> Path:
    return write_evidence(repo, "model_card", _text("model_card", text))


def write_monitoring_plan(repo: str | Path, text: str) -> Path:
    return write_evidence(repo, "monitoring_plan", _text("monitoring_plan", text))


def write_proxy_analysis(repo: str | Path, text: str) -> Path:
    return write_evidence(repo, "proxy_analysis", _text("proxy_analysis", text))


def write_pii_justification(repo: str | Path, text: str) -> Path:
    return write_evidence(repo, "pii_justification", _text("pii_justification", text))


def write_consent_basis(repo: str | Path, text: str) -> Path:
    return write_evidence(repo, "consent_basis", _text("consent_basis", text))
