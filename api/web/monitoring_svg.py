"""A minimal server-side SVG line chart: one monitoring metric over its periods, with its rules' thresholds.

No JavaScript and no library: the numbers are escaped into a small static SVG with a text alternative, so the
page works without scripts and a screen reader gets the series as words.
"""

from __future__ import annotations

from datetime import date
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD = 520, 160, 32


def series_svg(metric: str, points: list[tuple[date, float]], thresholds: list[tuple[str, float]]) -> Markup:
    """An SVG of ``points`` (oldest first) with a dashed line per threshold; empty markup when no point."""
    if not points:
        return Markup("")
    values = [v for _, v in points] + [t for _, t in thresholds]
    low, high = min(values), max(values)
    span = (high - low) or (abs(high) or 1.0)
    low, high = low - span * 0.1, high + span * 0.1

    def x(i: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * (i / max(len(points) - 1, 1))

    def y(v: float) -> float:
        return HEIGHT - PAD + (2 * PAD - HEIGHT) * ((v - low) / (high - low))

    path = " ".join(f"{'M' if i == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for i, (_, v) in enumerate(points))
    marks = "".join(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3"><title>{escape(d.isoformat())}: {v:.4g}'
                    f"</title></circle>" for i, (d, v) in enumerate(points))
    lines = "".join(
        f'<line class="threshold" x1="{PAD}" x2="{WIDTH - PAD}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
        f'stroke-dasharray="6 4"/><text x="{WIDTH - PAD}" y="{y(t) - 4:.1f}" text-anchor="end" class="small">'
        f"{escape(rule)} {t:g}</text>" for rule, t in thresholds)
    words = "; ".join(f"{d.isoformat()} {v:.4g}" for d, v in points)
    limits = ", ".join(f"{rule} at {t:g}" for rule, t in thresholds) or "no threshold"
    label = escape(f"{metric} by period: {words}. Thresholds: {limits}.")
    return Markup(
        f'<svg class="monitoring-chart" role="img" aria-label="{label}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="{PAD}" y="16" class="small">{escape(metric)}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" class="small">{escape(points[0][0].isoformat())}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" text-anchor="end" class="small">'
        f"{escape(points[-1][0].isoformat())}</text>"
        f'{lines}<path d="{path}" fill="none" stroke="currentColor" stroke-width="2"/>{marks}</svg>')
