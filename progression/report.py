"""What the notebook shows: a verdict (every stage, every check, what is missing, which features bear on it) and
a feature report, each as an HTML table in Jupyter (``_repr_html_``) and as plain text elsewhere (``str``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from engine.wire import DryRunResult, FeatureVerdict

_MARK = {True: "pass", False: "FAIL"}
_STYLE = {True: "color:#1a7f37", False: "color:#cf222e;font-weight:bold"}


@dataclass(frozen=True)
class FeatureLine:
    name: str
    verdict: FeatureVerdict

    @property
    def known(self) -> bool:
        return self.verdict.verdict != "unknown"


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # the last column (reasons) is not padded
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


def _html_table(header: list[str], rows: list[list[str]], styles: list[str] | None = None) -> str:
    head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        style = f" style='{styles[i]}'" if styles and styles[i] else ""
        cells = "".join(f"<td style='text-align:left'>{escape(c)}</td>" for c in row)
        body.append(f"<tr{style}>{cells}</tr>")
    return f"<table class='progression'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass(frozen=True)
class FeatureReport:
    """What one intent's policy says of each feature: allowed, forbidden, or requires evidence."""

    intent: str
    catalog_version: int
    lines: list[FeatureLine]

    @property
    def forbidden(self) -> list[str]:
        return [x.name for x in self.lines if x.verdict.verdict == "forbidden"]

    @property
    def requires(self) -> dict[str, list[str]]:
        return {x.name: sorted({e for r in x.verdict.rules for e in r.requires_evidence})
                for x in self.lines if x.verdict.verdict == "requires"}

    @property
    def unknown(self) -> list[str]:
        return [x.name for x in self.lines if not x.known]

    def _rows(self) -> list[list[str]]:
        return [[x.name, x.verdict.verdict, x.verdict.summary] for x in self.lines]

    def __str__(self) -> str:
        title = f"Features under {self.intent} (catalog version {self.catalog_version})"
        return title + "\n" + _text_table(["feature", "verdict", "why"], self._rows())

    def _repr_html_(self) -> str:
        styles = ["color:#cf222e;font-weight:bold" if x.verdict.verdict in ("forbidden", "unknown")
                  else "color:#9a6700" if x.verdict.verdict == "requires" else "" for x in self.lines]
        return (f"<p><b>Features under {escape(self.intent)}</b> (catalog version {self.catalog_version})</p>"
                + _html_table(["feature", "verdict", "why"], self._rows(), styles))


@dataclass(frozen=True)
class Verdict:
    """The local verdict: the same :class:`engine.wire.DryRunResult` the dry-run endpoint answers, plus what the
    features and the missing evidence mean for it."""

    result: DryRunResult
    features: FeatureReport
    missing_evidence: list[str] = field(default_factory=list)

    @property
    def passes(self) -> bool:
        """Every check of every stage passes now (approvals still to come)."""
        return self.result.checks_failing == 0

    @property
    def stages_passing(self) -> list[str]:
        return [s.name for s in self.result.route if s.passes_now]

    @property
    def failing(self) -> list[tuple[str, str, str]]:
        """(stage, check id, reason) of every failing check, in route order."""
        return [(s.name, c.id, c.reason) for s in self.result.route for c in s.checks if not c.passed]

    @property
    def forbidden_features(self) -> list[str]:
        return self.features.forbidden

    def _rows(self) -> tuple[list[list[str]], list[bool]]:
        rows, passed = [], []
        for stage in self.result.route:
            if not stage.checks:
                rows.append([stage.name, "-", "no checks", self._approvals(stage.name)])
                passed.append(True)
            for c in stage.checks:
                rows.append([stage.name, c.id, _MARK[c.passed], c.reason])
                passed.append(c.passed)
        return rows, passed

    def _approvals(self, stage: str) -> str:
        needed = [f"{a['count']} {a['role']}" for a in self.result.approvals_needed if a["stage"] == stage]
        return ("approval: " + ", ".join(needed)) if needed else ""

    def _summary(self) -> list[str]:
        r = self.result
        out = [f"{r.progression_id} under {r.intent} ({r.policy_hash[:19]}, catalog version "
               f"{self.features.catalog_version}): {'every check passes' if self.passes else 'would be blocked'}"
               f" - {r.checks_passing} passing, {r.checks_failing} failing"]
        if r.fix_first is not None:
            out.append(f"fix first: {r.fix_first_stage}/{r.fix_first.id}: {r.fix_first.reason}")
        if self.forbidden_features:
            out.append("forbidden features: " + ", ".join(self.forbidden_features))
        for name, needs in self.features.requires.items():
            out.append(f"{name} requires evidence: {', '.join(needs)}")
        if self.features.unknown:
            out.append("not in the feature catalog: " + ", ".join(self.features.unknown))
        if self.missing_evidence:
            out.append("missing evidence: " + ", ".join(self.missing_evidence))
        return out

    def __str__(self) -> str:
        rows, _ = self._rows()
        return "\n".join([*self._summary(), _text_table(["stage", "check", "result", "reason"], rows)])

    def _repr_html_(self) -> str:
        rows, passed = self._rows()
        summary = "".join(f"<li>{escape(line)}</li>" for line in self._summary())
        return (f"<div class='progression-verdict'><ul>{summary}</ul>"
                + _html_table(["stage", "check", "result", "reason"], rows,
                              [_STYLE[p] if not p else "" for p in passed]) + "</div>")
