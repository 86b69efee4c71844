"""Charts as server-side SVG, each with the same numbers as a table: no CDN, no JavaScript, printable.

A pure module (no FastAPI, no database): give it numbers, get a :class:`Chart` whose ``svg`` is markup to put
in a page or a file and whose ``columns``/``rows`` are the table fallback (screen readers, text browsers,
exports). Every label and number is escaped; colours come from classes (``app.css``) with presentation
attributes as the fallback, so the strict Content-Security-Policy (no inline style) holds.

- :func:`bar_chart`: one bar per item against an optional threshold line (fairness by group, PSI by
  characteristic, a monitoring series' latest values).
- :func:`threshold_chart`: one row per measure, each on its own scale, the value's bar and the threshold's
  mark (metrics against the thresholds of the checks that judged them).
- :func:`funnel_chart`: counts through ordered steps (the inventory funnel).
- :func:`series_chart`: a value over time (a monitoring series: PSI per month) against a threshold, each point
  coloured by the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

WIDTH = 560
ROW = 26
LABEL_W = 170
VALUE_W = 72
PAD = 8
FONT = 13


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    passed: bool | None = None  # judged by a rule: colours the bar (None: neutral)
    note: str = ""  # shown in the table, e.g. "basis: sex"


@dataclass(frozen=True)
class Measure:
    label: str
    value: float
    threshold: float
    op: str  # >=, >, <=, <, ==
    passed: bool | None = None


@dataclass
class Chart:
    title: str
    svg: Markup
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    key: str = ""  # a stable id for the page (anchors, tests)


def number(value: float) -> str:
    """A short, exact-enough rendering: 0.781, 96,512, 1.2e-05."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if value != 0 and (abs(value) < 0.001 or abs(value) >= 1e7):
        return f"{value:.3g}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.2f}"


def _state(passed: bool | None) -> str:
    return "neutral" if passed is None else ("pass" if passed else "fail")


_FILL = {"pass": "#2f7d4f", "fail": "#b3261e", "neutral": "#3d5a80"}


def _svg(height: int, title: str, desc: str, body: list[str]) -> Markup:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart-svg" viewBox="0 0 {WIDTH} {height}" '
            f'width="100%" role="img" aria-label="{escape(title)}" preserveAspectRatio="xMinYMin meet" '
            f'font-family="system-ui, sans-serif" font-size="{FONT}">'
            f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>")
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704 - every interpolated text is escaped


def _text(x: float, y: float, text: str, *, anchor: str = "start", cls: str = "chart-label") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" dominant-baseline="middle" '
            f'class="{cls}" fill="#1b1b1b">{escape(text)}</text>')


def _clip(label: str, limit: int = 28) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def bar_chart(title: str, bars: Sequence[Bar], *, threshold: float | None = None, threshold_label: str = "",
              key: str = "", value_label: str = "value") -> Chart:
    """Horizontal bars from zero, with a dashed threshold line when given."""
    finite = [b for b in bars if math.isfinite(b.value)]
    top = max([b.value for b in finite] + ([threshold] if threshold is not None else []) + [0.0])
    low = min([b.value for b in finite] + [0.0])
    span = (top - low) * 1.1 or 1.0
    plot_w = WIDTH - LABEL_W - VALUE_W - 2 * PAD
    height = PAD * 2 + ROW * max(len(bars), 1) + (18 if threshold is not None else 0)

    def x_of(v: float) -> float:
        return LABEL_W + PAD + (v - low) / span * plot_w

    body: list[str] = []
    for i, b in enumerate(bars):
        y = PAD + i * ROW
        state = _state(b.passed)
        body.append(_text(LABEL_W, y + ROW / 2, _clip(b.label), anchor="end"))
        if math.isfinite(b.value):
            x0, x1 = x_of(min(0.0, b.value)), x_of(max(0.0, b.value))
            body.append(f'<rect x="{x0:.1f}" y="{y + 5:.1f}" width="{max(x1 - x0, 1):.1f}" height="{ROW - 10}" '
                        f'class="bar bar-{state}" fill="{_FILL[state]}"><title>{escape(b.label)}: '
                        f"{escape(number(b.value))}</title></rect>")
            body.append(_text(WIDTH - VALUE_W + 4, y + ROW / 2, number(b.value)
                              + ("" if b.passed is None else (" ✓" if b.passed else " ✗")), cls="chart-value"))
    if threshold is not None:
        tx = x_of(threshold)
        bottom = PAD + ROW * max(len(bars), 1)
        body.append(f'<line x1="{tx:.1f}" y1="{PAD}" x2="{tx:.1f}" y2="{bottom}" class="threshold" '
                    'stroke="#1b1b1b" stroke-width="1.5" stroke-dasharray="4 3"/>')
        body.append(_text(tx, bottom + 10, threshold_label or f"threshold {number(threshold)}", anchor="middle",
                          cls="chart-threshold"))
    desc = "; ".join(f"{b.label} {number(b.value)}" for b in bars)
    if threshold is not None:
        desc += f"; {threshold_label or 'threshold'} {number(threshold)}"
    columns = ["item", value_label] + (["meets the threshold"] if threshold is not None else []) + (
        ["note"] if any(b.note for b in bars) else [])
    rows = []
    for b in bars:
        row = [b.label, number(b.value)]
        if threshold is not None:
            row.append("—" if b.passed is None else ("yes" if b.passed else "no"))
        if "note" in columns:
            row.append(b.note)
        rows.append(row)
    return Chart(title=title, svg=_svg(height, title, desc, body), columns=columns, rows=rows, key=key)


def threshold_chart(title: str, measures: Sequence[Measure], *, key: str = "") -> Chart:
    """One row per measure on its own scale (0 to 1.25 × the larger of value and threshold)."""
    plot_w = WIDTH - LABEL_W - VALUE_W * 2 - 2 * PAD
    height = PAD * 2 + ROW * max(len(measures), 1)
    body: list[str] = []
    for i, m in enumerate(measures):
        y = PAD + i * ROW
        state = _state(m.passed)
        top = max(abs(m.value), abs(m.threshold)) * 1.25 or 1.0
        body.append(_text(LABEL_W, y + ROW / 2, _clip(m.label), anchor="end"))
        bar_w = max(min(abs(m.value) / top, 1.0) * plot_w, 1)
        body.append(f'<rect x="{LABEL_W + PAD}" y="{y + 6:.1f}" width="{plot_w}" height="{ROW - 12}" '
                    'class="track" fill="#e8ecf1"/>')
        body.append(f'<rect x="{LABEL_W + PAD}" y="{y + 6:.1f}" width="{bar_w:.1f}" height="{ROW - 12}" '
                    f'class="bar bar-{state}" fill="{_FILL[state]}"><title>{escape(m.label)}: '
                    f"{escape(number(m.value))} (rule {escape(m.op)} {escape(number(m.threshold))})</title></rect>")
        tx = LABEL_W + PAD + min(abs(m.threshold) / top, 1.0) * plot_w
        body.append(f'<line x1="{tx:.1f}" y1="{y + 2:.1f}" x2="{tx:.1f}" y2="{y + ROW - 2:.1f}" class="threshold" '
                    'stroke="#1b1b1b" stroke-width="2"/>')
        body.append(_text(WIDTH - VALUE_W * 2 + 4, y + ROW / 2, number(m.value)
                          + ("" if m.passed is None else (" ✓" if m.passed else " ✗")), cls="chart-value"))
        body.append(_text(WIDTH - VALUE_W + 4, y + ROW / 2, f"{m.op} {number(m.threshold)}", cls="chart-threshold"))
    desc = "; ".join(f"{m.label} {number(m.value)}, rule {m.op} {number(m.threshold)}" for m in measures)
    rows = [[m.label, number(m.value), f"{m.op} {number(m.threshold)}",
             "—" if m.passed is None else ("yes" if m.passed else "no")] for m in measures]
    return Chart(title=title, svg=_svg(height, title, desc, body),
                 columns=["measure", "value", "rule", "meets it"], rows=rows, key=key)


def funnel_chart(title: str, steps: Sequence[tuple[str, int]], *, key: str = "") -> Chart:
    """Centred bars whose width is each step's count (the widest is the largest count)."""
    top = max([c for _, c in steps] + [1])
    plot_w = WIDTH - LABEL_W - VALUE_W - 2 * PAD
    height = PAD * 2 + ROW * max(len(steps), 1)
    body: list[str] = []
    centre = LABEL_W + PAD + plot_w / 2
    for i, (label, count) in enumerate(steps):
        y = PAD + i * ROW
        w = max(count / top * plot_w, 2 if count else 0)
        body.append(_text(LABEL_W, y + ROW / 2, _clip(label), anchor="end"))
        body.append(f'<rect x="{centre - w / 2:.1f}" y="{y + 4:.1f}" width="{w:.1f}" height="{ROW - 8}" '
                    f'class="bar bar-neutral" fill="{_FILL["neutral"]}"><title>{escape(label)}: {count}</title></rect>')
        body.append(_text(WIDTH - VALUE_W + 4, y + ROW / 2, f"{count:,}", cls="chart-value"))
    desc = "; ".join(f"{label} {count}" for label, count in steps)
    return Chart(title=title, svg=_svg(height, title, desc, body), columns=["step", "count"],
                 rows=[[label, f"{count:,}"] for label, count in steps], key=key)


def series_chart(title: str, points: Sequence[tuple[str, float]], *, threshold: float | None = None,
                 op: str | None = None, key: str = "", value_label: str = "value",
                 lines: Sequence[tuple[str, float]] = (), verdicts: Sequence[bool | None] | None = None) -> Chart:
    """A line through ``points`` (label, value) in order, with the threshold as a dashed line; a point that
    breaks the rule (``value op threshold`` false) is marked as failing.

    ``lines`` are further named thresholds (a monitoring metric's rules: ``("psi-drift", 0.25)``), each drawn
    dashed and labelled "name value". ``verdicts`` (one per point: passed, failed or None) judge the points
    when the rule is not a single comparison (a period's recorded breaches); they take precedence over ``op``."""
    if verdicts is not None and len(verdicts) != len(points):
        raise ValueError("series_chart: one verdict per point")
    values = [v for _, v in points if math.isfinite(v)]
    marks = ([threshold] if threshold is not None else []) + [v for _, v in lines if math.isfinite(v)]
    top = _nice(max(values + marks + [0.0]) * 1.1)
    low_value = min(values + marks + [0.0])
    low = -_nice(-low_value) if low_value < 0 else 0.0
    span = (top - low) or 1.0
    left, right, top_pad, bottom_pad = 60, 16, 12, 34
    height = 200
    plot_w, plot_h = WIDTH - left - right, height - top_pad - bottom_pad

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (plot_w * (i + 0.5) / max(len(points), 1))
        return x, top_pad + plot_h - (v - low) / span * plot_h

    def passes(i: int, v: float) -> bool | None:
        if verdicts is not None:
            return verdicts[i]
        if threshold is None or op is None or op not in _COMPARE:
            return None
        return _COMPARE[op](v, threshold)

    body = [f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{WIDTH - right}" y2="{top_pad + plot_h}" '
            'class="axis" stroke="#57606a" stroke-width="1"/>',
            _text(left - 6, top_pad + plot_h, number(low), anchor="end", cls="chart-axis"),
            _text(left - 6, top_pad, number(top), anchor="end", cls="chart-axis")]
    if threshold is not None:
        ty = xy(0, threshold)[1]
        body.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{WIDTH - right}" y2="{ty:.1f}" class="threshold" '
                    'stroke="#1b1b1b" stroke-width="1.5" stroke-dasharray="4 3"/>')
        body.append(_text(WIDTH - right, ty - 8, f"{op or ''} {number(threshold)}".strip(), anchor="end",
                          cls="chart-threshold"))
    for name, value in lines:
        if not math.isfinite(value):
            continue
        ly = xy(0, value)[1]
        body.append(f'<line x1="{left}" y1="{ly:.1f}" x2="{WIDTH - right}" y2="{ly:.1f}" class="threshold" '
                    'stroke="#1b1b1b" stroke-width="1.5" stroke-dasharray="4 3"/>')
        body.append(_text(WIDTH - right, ly - 8, f"{name} {number(value)}", anchor="end", cls="chart-threshold"))
    finite = [(i, v) for i, (_, v) in enumerate(points) if math.isfinite(v)]
    if len(finite) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in finite))
        body.append(f'<polyline points="{path}" class="series" fill="none" stroke="{_FILL["neutral"]}" '
                    'stroke-width="2"/>')
    for i, (label, v) in enumerate(points):
        if not math.isfinite(v):
            continue
        x, y = xy(i, v)
        state = _state(passes(i, v))
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" class="point bar-{state}" fill="{_FILL[state]}">'
                    f"<title>{escape(label)}: {escape(number(v))}</title></circle>")
        body.append(_text(x, height - bottom_pad / 2, _clip(label, 10), anchor="middle", cls="chart-axis"))
    desc = f"{title}: " + "; ".join(f"{label} {number(v)}" for label, v in points)
    if lines:
        desc += ". Thresholds: " + ", ".join(f"{name} {number(value)}" for name, value in lines)
    judged = verdicts is not None or (threshold is not None and bool(op))
    columns = ["point", value_label] + (["meets the rule"] if judged else [])
    rows = []
    for i, (label, v) in enumerate(points):
        verdict = passes(i, v)
        rows.append([label, number(v)] + ([] if len(columns) == 2 else ["—" if verdict is None else
                                                                        ("yes" if verdict else "no")]))
    return Chart(title=title, svg=_svg(height, title, desc, body), columns=columns, rows=rows, key=key)


def _nice(value: float) -> float:
    """The round number at or above ``value`` (0.36 -> 0.4, 96512 -> 100000): readable axis ends."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))  # a float: 10 ** 308 as an int overflows the arithmetic after
    return next((m * scale for m in (1, 2, 2.5, 5, 10) if m * scale >= value and math.isfinite(m * scale)), value)


_COMPARE = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
            "<": lambda a, b: a < b, "==": lambda a, b: a == b}
