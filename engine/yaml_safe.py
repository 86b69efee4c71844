"""Safe YAML: a strict loader (no aliases, tags or deep nesting; duplicate keys refused) that keeps each field's line.

Below both :mod:`engine.loading` (specs, policies, the feature catalog) and :mod:`engine.checks` (YAML evidence),
so neither needs the other to read YAML. Problems name the file, the field path and the line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_DEPTH = 50
DEFAULT_MAX_BYTES = 256 * 1024

FieldPath = tuple[str | int, ...]
LineMap = dict[FieldPath, int]

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp"))


# ---- problems --------------------------------------------------------------------------------


@dataclass
class Problem:
    file: str
    line: int | None
    field: str
    message: str
    type: str

    def format(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message,
                "type": self.type}


class YamlProblem(Exception):
    """Raised by :func:`safe_load_yaml`; carries the line so callers can wrap it in their own error."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.format())
        self.problem = problem


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def sorted_problems(problems: list[Problem]) -> list[Problem]:
    # The first problem in the file is the one a person fixes first.
    return sorted(problems, key=lambda p: (p.file, p.line is None, p.line or 0))


# ---- safe YAML ------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases/anchors and deep nesting while composing nodes.

    The pure-Python composer is used (not CSafeLoader) because the checks hook into
    ``compose_node``; documents are small (size-capped) so speed does not matter.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        event = self.peek_event()
        mark: Any = event.start_mark  # pure-Python events carry yaml.error.Mark
        if isinstance(event, AliasEvent):
            raise yaml.composer.ComposerError(None, None, f"aliases are not allowed (*{event.anchor})", mark)
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor is not None:
            raise yaml.composer.ComposerError(None, None, f"anchors are not allowed (&{event.anchor})", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nesting is deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _decode(text: str | bytes, filename: str, max_bytes: int) -> str:
    raw = text.encode("utf-8", errors="surrogatepass") if isinstance(text, str) else bytes(text)
    if len(raw) > max_bytes:
        raise YamlProblem(Problem(filename, None, "", f"document is {len(raw)} bytes; the limit is {max_bytes}",
                                  "too_large"))
    if isinstance(text, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            raise YamlProblem(Problem(filename, None, "", "text contains unpaired surrogates (not valid UTF-8)",
                                      "invalid_utf8"))
        return text
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlProblem(Problem(filename, line, "", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                                      f"{exc.start})", "invalid_utf8")) from None


def safe_load_yaml(text: str | bytes, *, filename: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Any, LineMap]:
    """Parse one YAML document safely; return the data and a map field path -> 1-based line.

    Refuses documents over ``max_bytes`` (before parsing), invalid UTF-8, aliases and anchors
    (billion laughs), several documents, nesting deeper than :data:`MAX_DEPTH`, non-string
    mapping keys, merge keys, duplicate keys and tags other than the standard ones.
    Raises :class:`YamlProblem`.
    """
    source = _decode(text, filename, max_bytes)
    try:
        loader = _StrictLoader(source)
    except yaml.reader.ReaderError as exc:  # the reader checks a str for non-printable characters at once
        line = source[: exc.position].count("\n") + 1
        raise YamlProblem(Problem(filename, line, "", f"unacceptable character #x{exc.character:04x}: special "
                                                      "characters are not allowed", "yaml_syntax")) from None
    try:
        root = loader.get_single_node()
        lines: LineMap = {}
        if root is None:
            return None, lines
        data = _build(loader, root, (), lines, filename)
        return data, lines
    except YamlProblem:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        mark_line: int | None = int(mark.line) + 1 if mark is not None else None
        parts = [p for p in (exc.context, exc.problem) if p]
        message = ": ".join(parts) if parts else "invalid YAML"
        if "expected a single document" in message:
            message = "only one YAML document is allowed (found a second '---' document)"
        raise YamlProblem(Problem(filename, mark_line, "", message, "yaml_syntax")) from None
    except yaml.YAMLError as exc:  # ReaderError (control characters) has no problem_mark
        raise YamlProblem(Problem(filename, None, "", str(exc).replace("\n", " "), "yaml_syntax")) from None
    finally:
        loader.dispose()


def _build(loader: _StrictLoader, node: Node, path: FieldPath, lines: LineMap, filename: str) -> Any:
    lines.setdefault(path, _line(node))
    if isinstance(node, ScalarNode):
        if node.tag not in _SCALAR_TAGS:
            raise YamlProblem(Problem(filename, _line(node), format_path(path), f"tag {node.tag!r} is not allowed",
                                      "yaml_tag"))
        try:
            return loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise YamlProblem(Problem(filename, _line(node), format_path(path), str(exc.problem), "yaml_value")) \
                from None
    if isinstance(node, SequenceNode):
        if node.tag != _SEQ_TAG:
            raise YamlProblem(Problem(filename, _line(node), format_path(path), f"tag {node.tag!r} is not allowed",
                                      "yaml_tag"))
        return [_build(loader, item, (*path, i), lines, filename) for i, item in enumerate(node.value)]
    if isinstance(node, MappingNode):
        if node.tag != _MAP_TAG:
            raise YamlProblem(Problem(filename, _line(node), format_path(path), f"tag {node.tag!r} is not allowed",
                                      "yaml_tag"))
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag != _STR_TAG:
                shown = key_node.value if isinstance(key_node, ScalarNode) else "a collection"
                kind = "merge keys (<<) are" if key_node.tag.endswith(":merge") else f"key {shown!r} is not a string;"
                message = f"{kind} not allowed" if "merge" in kind else f"{kind} quote it"
                raise YamlProblem(Problem(filename, _line(key_node), format_path(path), message, "yaml_key"))
            key = str(key_node.value)
            if key in result:
                raise YamlProblem(Problem(
                    filename, _line(key_node), format_path((*path, key)),
                    f"duplicate key {key!r} (first defined on line {lines[(*path, key)]})", "duplicate_key"))
            # The key's own line: for a nested mapping the value starts on the next line.
            lines[(*path, key)] = _line(key_node)
            result[key] = _build(loader, value_node, (*path, key), lines, filename)
        return result
    raise YamlProblem(Problem(filename, _line(node), format_path(path), "unsupported YAML node", "yaml_value"))
