"""What a check expression reads: the context paths it names and the evidence a stage depends on.

A small tokenizer, not CEL: pure and cheap, so the workflow (which pins each stage's reads) and the approval
basis can use it without importing the CEL evaluator in :mod:`engine.checks`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from engine.lifecycle import READS_ALL
from engine.policy import StageDef

VARIABLES = frozenset({"spec", "model", "version", "evidence", "features", "feature_names", "target", "now"})
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})

# ---- a tiny tokenizer: enough to find the paths an expression reads --------------------------

_TOKEN = re.compile(r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<num>\d+(?:\.\d+)?[uU]?)"""
                    r"""|(?P<id>[A-Za-z_]\w*)|(?P<op>\S))""")


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str


def _tokens(expr: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOKEN.finditer(expr):
        kind = m.lastgroup or "op"
        out.append(_Tok(kind, m.group(kind)))
    return out


def _bound_names(tokens: list[_Tok]) -> set[str]:
    """Names bound by comprehension macros: ``x`` in ``list.all(x, ...)``."""
    bound: set[str] = set()
    for i in range(1, len(tokens) - 3):
        t = tokens[i]
        if (t.kind == "id" and t.text in _MACROS and tokens[i - 1].text == "." and tokens[i + 1].text == "("
                and tokens[i + 2].kind == "id" and tokens[i + 3].text == ","):
            bound.add(tokens[i + 2].text)
    return bound


WILDCARD = "*"
Path = tuple[str | int, ...]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def path_text(root: str, parts: Iterable[Any], quote: Callable[[Any], str]) -> str:
    """``root``, then each part: ``[n]`` for an index, ``.name`` for a name, ``[<quote(key)>]`` for any other key.

    The one spelling of a path in messages: check inputs (``engine.checks.format_path``) and evidence contract
    problems (``$``-rooted, JSON-quoted, ``engine.contracts``)."""
    out = root
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _NAME.fullmatch(part):
            out += f".{part}"
        else:
            out += f"[{quote(part)}]"
    return out


def _literal(tok: _Tok) -> str | int | None:
    if tok.kind == "str":
        try:
            return str(json.loads('"' + tok.text[1:-1].replace('"', '\\"') + '"'))
        except ValueError:
            return tok.text[1:-1]
    if tok.kind == "num" and tok.text.isdigit():
        return int(tok.text)
    return None


def referenced_paths(expr: str) -> tuple[list[Path], set[str]]:
    """Paths the expression reads from the context, and evidence names guarded by ``has(evidence.x)``.

    ``evidence.fairness.groups[g].air`` gives ``("evidence", "fairness", "groups", "*", "air")``;
    a method call (``.all(``) ends a path.
    """
    tokens = _tokens(expr)
    bound = _bound_names(tokens)
    paths: list[Path] = []
    guarded: set[str] = set()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.kind != "id" or tok.text not in VARIABLES or tok.text in bound or (i and tokens[i - 1].text == "."):
            i += 1
            continue
        start = i
        path: list[str | int] = [tok.text]
        i += 1
        while i < len(tokens):
            if tokens[i].text == "." and i + 1 < len(tokens) and tokens[i + 1].kind == "id":
                if i + 2 < len(tokens) and tokens[i + 2].text == "(":
                    break  # a method or macro call, not a field
                path.append(tokens[i + 1].text)
                i += 2
            elif tokens[i].text == "[":
                depth, j = 1, i + 1
                while j < len(tokens) and depth:
                    depth += {"[": 1, "]": -1}.get(tokens[j].text, 0)
                    j += 1
                inner = tokens[i + 1: j - 1]
                literal = _literal(inner[0]) if len(inner) == 1 else None
                path.append(literal if literal is not None else WILDCARD)
                i = j
            else:
                break
        paths.append(tuple(path))
        if (len(path) == 2 and path[0] == "evidence" and start >= 2 and tokens[start - 2].text == "has"
                and tokens[start - 1].text == "(" and i < len(tokens) and tokens[i].text == ")"):
            guarded.add(str(path[1]))
    unique = list(dict.fromkeys(paths))
    return unique, guarded


def stage_evidence_reads(stage: StageDef) -> list[str]:
    """Evidence names a stage reads: ``evidence.<name>`` in its check expressions plus its
    ``requires_evidence``. ``["*"]`` when an expression reads the evidence map as a whole."""
    names: set[str] = set(stage.requires_evidence)
    for check in stage.checks:
        paths, guarded = referenced_paths(check.expr)
        names.update(guarded)
        for path in paths:
            if path[0] != "evidence":
                continue
            if len(path) < 2 or path[1] == WILDCARD or not isinstance(path[1], str):
                return [READS_ALL]
            names.add(path[1])
    return sorted(names)


def bound_names(expr: str) -> set[str]:
    """Names the expression binds itself (comprehension variables), so not context variables."""
    return _bound_names(_tokens(expr))
