"""An SVG chart of ``bench.scale``'s points: worker memory and inbox latency against the parked count.

    python -m bench.plot_scale SERIES.json [MORE.json ...] [--old OLD.json] [--out docs/scale.svg]

Hand-written SVG (no plotting library, no CDN): two panels side by side, the count on a log axis. ``--old``
adds earlier points (same JSON shape) as hollow markers, e.g. the figures measured before the inbox paged in SQL.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

W, H = 420, 300  # one panel
PAD_L, PAD_R, PAD_T, PAD_B = 62, 16, 40, 48


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def panel(x0: float, title: str, unit: str, lines: list[tuple[str, str, bool, list[tuple[float, float]]]]) -> str:
    """One chart: ``lines`` are (label, colour, dashed, [(count, value)])."""
    pts = [p for _, _, _, ps in lines for p in ps]
    xs = [math.log10(c) for c, _ in pts]
    lo, hi = math.floor(min(xs)), math.ceil(max(xs))
    hi = hi if hi > lo else lo + 1
    ymax = _nice_max(max(v for _, v in pts) * 1.05)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(c: float) -> float:
        return x0 + PAD_L + (math.log10(c) - lo) / (hi - lo) * pw

    def sy(v: float) -> float:
        return PAD_T + ph - v / ymax * ph

    out = [f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
           f'<rect x="{x0 + PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for e in range(lo, hi + 1):
        x = sx(10 ** e)
        out.append(f'<line x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{PAD_T + ph}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{PAD_T + ph + 16}" text-anchor="middle">{10 ** e:,}</text>')
    for i in range(5):
        v = ymax * i / 4
        y = sy(v)
        out.append(f'<line x1="{x0 + PAD_L}" y1="{y:.1f}" x2="{x0 + PAD_L + pw}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 + PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    out.append(f'<text x="{x0 + PAD_L + pw / 2}" y="{H - 12}" text-anchor="middle">parked progressions '
               f'(open gates), log scale</text>')
    out.append(f'<text transform="translate({x0 + 14},{PAD_T + ph / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(unit)}</text>')
    for n, (label, colour, dashed, ps) in enumerate(lines):
        # Earlier figures ("dashed") are single measurements: hollow markers, no line drawn between them.
        fill = "white" if dashed else colour
        if not dashed:
            path = " ".join(f"{sx(c):.1f},{sy(v):.1f}" for c, v in sorted(ps))
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for c, v in ps:
            out.append(f'<circle cx="{sx(c):.1f}" cy="{sy(v):.1f}" r="4" fill="{fill}" stroke="{colour}" '
                       f'stroke-width="2"><title>{escape(label)}: {c:,.0f} parked, {v:.3g} {escape(unit)}</title>'
                       f'</circle>')
        ly = PAD_T + 14 + 14 * n
        if dashed:
            out.append(f'<circle cx="{x0 + PAD_L + 17}" cy="{ly - 4}" r="4" fill="white" stroke="{colour}" '
                       f'stroke-width="2"/>')
        else:
            out.append(f'<line x1="{x0 + PAD_L + 8}" y1="{ly - 4}" x2="{x0 + PAD_L + 26}" y2="{ly - 4}" '
                       f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{x0 + PAD_L + 30}" y="{ly}">{escape(label)}</text>')
    return "\n".join(out)


COLOURS = ("#1f6feb", "#8250df", "#cf222e", "#0a7f8c")


def chart(runs: list[dict[str, Any]], old: dict[str, Any] | None) -> str:
    """Memory: one line per run (each its own worker cache); latency: the first run's inbox p50/p95."""
    mem = [(f"worker RSS, cache {r.get('cache', '?')}{', ' + r['label'] if r.get('label') else ''}",
             COLOURS[i % len(COLOURS)], False,
            [(p["count"], p["rss"]) for p in r["points"]]) for i, r in enumerate(runs)]
    pts = runs[0]["points"]
    lat = [("inbox p50", "#1a7f37", False, [(p["count"], p["inbox_p50"]) for p in pts]),
           ("inbox p95", "#bf8700", False, [(p["count"], p["inbox_p95"]) for p in pts])]
    if old:
        before = old["points"]
        mem.append(("worker RSS before issue 21", COLOURS[0], True, [(p["count"], p["rss"]) for p in before]))
        for key, colour in (("inbox_p50", "#1a7f37"), ("inbox_p95", "#bf8700")):
            label = f"{key.replace('_', ' ')} before issue 21"
            lat.append((label, colour, True, [(p["count"], p[key]) for p in before]))
    body = panel(0, "Worker memory (resident)", "MiB", mem) + "\n" + \
        panel(W, "Validator inbox latency (first page, HTTP)", "ms", lat)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" viewBox="0 0 {2 * W} {H}" '
            f'font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n'
            f'{body}\n</svg>\n')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("series", nargs="+", help="bench.scale --series files; the first one's inbox is drawn")
    p.add_argument("--old", help="earlier points, drawn dashed")
    p.add_argument("--out", default="docs/scale.svg")
    args = p.parse_args()
    runs = [json.loads(Path(f).read_text()) for f in args.series]
    old = json.loads(Path(args.old).read_text()) if args.old else None
    Path(args.out).write_text(chart(runs, old))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
