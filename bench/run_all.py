"""Every benchmark in turn, each in its own process; prints every table and writes the JSON figures.

    python -m bench.run_all [--quick] [--out .data/bench-results] [--only NAMES] [--render]

Full size (``make bench``) takes about 45 minutes on an otherwise idle 2-core machine, most of it
``bench.scale`` (10,000 parked progressions) and the two million-event audit loads; ``--quick`` runs
every script at a small size in a few minutes (the figures then prove the scripts work, not the
goals). Writes ``figures.md``, one table of every figure, from the JSON in ``--out``, and prints (and
appends) the table of issue 21's goals, each read from the JSON of the benchmark that measured it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.settings import PROJECT_ROOT

FULL: dict[str, list[str]] = {
    "history_size": [],
    "throughput": [],
    "approval_latency": [],
    "api_reads": [],
    "audit": [],
    "scale": [],
    "inbox_sql": [],
    "years": [],
    "scale_out": [],
}
QUICK: dict[str, list[str]] = {
    "history_size": ["--journeys", "1"],
    "throughput": ["--count", "10", "--rounds", "1", "--concurrency", "4"],
    "approval_latency": ["--samples", "10"],
    "api_reads": ["--requests", "100", "--progressions", "3", "--rounds", "1"],
    "audit": ["--events", "5000", "--journeys", "3", "--rounds", "1", "--transactions", "30", "--samples", "20"],
    "scale": ["--counts", "5,12,20", "--budget-s", "600"],
    "inbox_sql": ["--counts", "20,200", "--samples", "5"],
    "years": ["--years", "2"],
    "scale_out": ["--count", "3", "--rounds", "1", "--concurrency", "3", "--warmup", "1"],
}


@dataclass(frozen=True)
class Goal:
    """One of issue 21's goals: a ratio (value / baseline) of a figure some benchmark writes in its JSON."""

    what: str
    bench: str
    prefix: str  # the figure's name starts with this (the rest names the sizes measured)
    goal: str
    holds: Callable[[float], bool]
    contains: str = ""  # and contains this
    on_value: bool = False  # judge the figure's value (itself a ratio measured by the benchmark), not value / baseline


# Each read from the JSON of the benchmark that measured it, whatever goal that benchmark itself prints.
ISSUE_21: list[Goal] = [
    Goal("throughput vs the bare workflow", "throughput", "progressions/s", "ratio >= 0.5", lambda r: r >= 0.5),
    Goal("Temporal server CPU per journey vs bare", "throughput", "CPU per journey, Temporal", "ratio <= 1.5",
         lambda r: r <= 1.5),
    Goal("inbox p95, 10,000 vs 100 gates (HTTP, parked workflows)", "scale", "inbox p95 ", "ratio <= 1.5",
         lambda r: r <= 1.5, contains=" vs "),
    Goal("inbox p95, 10,000 vs 100 open gates (service alone)", "inbox_sql", "inbox p95 at 10,000", "ratio <= 1.5",
         lambda r: r <= 1.5),
    Goal("drain rate, 10,000 parked vs 100", "scale", "drain rate with", "ratio >= 0.9", lambda r: r >= 0.9),
    Goal("worker RSS, 10,000 vs 1,000 parked", "scale", "worker RSS ", "ratio <= 1.2", lambda r: r <= 1.2,
         contains=" vs "),
    Goal("journeys/s, 2 worker processes vs 1 (median of interleaved round pairs)", "scale_out",
         "journeys/s ratio, 2 workers / 1", "ratio >= 0.9", lambda r: r >= 0.9, on_value=True),
]


def issue_21_table(out: Path) -> str:
    """Every issue-21 goal with its figure (as the benchmark named it: the sizes it reached), goal and verdict."""
    lines = ["| goal (issue 21) | figure, as measured | value | baseline | ratio | goal | met? |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for g in ISSUE_21:
        path = out / f"{g.bench}.json"
        figures = json.loads(path.read_text())["figures"] if path.exists() else []
        f = next((f for f in figures if f["name"].startswith(g.prefix) and g.contains in f["name"]), None)
        if f is None or not (f.get("baseline") or g.on_value):
            why = "not run" if not path.exists() else "no such figure"
            lines.append(f"| {g.what} | ({why}: `python -m bench.{g.bench}`) | - | - | - | {g.goal} | - |")
            continue
        ratio = f["value"] if g.on_value else f["value"] / f["baseline"]
        met = "yes" if g.holds(ratio) else "**no**"
        value, baseline = ("-", "-") if g.on_value else (_num(f["value"], f["unit"]), _num(f["baseline"], f["unit"]))
        lines.append(f"| {g.what} | {f['name']} | {value} | {baseline} | {ratio:.2f}x | {g.goal} | {met} |")
    return "\n".join(lines) + "\n"


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def markdown(reports: list[dict[str, Any]]) -> str:
    """One table of every figure (for docs/PERFORMANCE.md): the numbers exactly as measured."""
    lines = ["| figure | value | baseline | ratio | goal | met? | command |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for report in reports:
        params = " ".join(f"--{k} {v}" for k, v in report.get("params", {}).items())
        command = f"`{report['command']}` ({params}; {report['seconds']:.0f} s)"
        for f in report["figures"]:
            met = {True: "yes", False: "**no**", None: "-"}[f["met"]]
            ratio = f"{f['ratio']:.2f}x" if f.get("ratio") is not None else "-"
            lines.append(f"| {f['name']} | {_num(f['value'], f['unit'])} | {_num(f['baseline'], f['unit'])} | "
                         f"{ratio} | {f['goal'] or '-'} | {met} | {command} |")
    machine = reports[0]["machine"] if reports else {}
    lines += ["", f"Machine: {machine}; date {reports[0]['date'] if reports else '-'}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: proves the scripts, not the goals")
    parser.add_argument("--out", default=".data/bench-results", help="directory for the JSON figures")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: write figures.md from the JSON already in --out (after re-running one)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    names = args.only.split(",") if args.only else list(plan)
    failed = []
    for name in [] if args.render else names:
        start = time.monotonic()
        cmd = [sys.executable, "-m", f"bench.{name}", *plan[name], "--json", str(out / f"{name}.json")]
        print(f"\n$ {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=PROJECT_ROOT, check=False).returncode != 0:
            failed.append(name)
        print(f"({name}: {time.monotonic() - start:.0f}s)", flush=True)
    unmet = []
    reports = []
    for name in names:
        path = out / f"{name}.json"
        if path.exists():
            reports.append(json.loads(path.read_text()))
            unmet += [f"{name}: {f['name']}" for f in reports[-1]["figures"] if f["met"] is False]
    goals = issue_21_table(out)
    (out / "figures.md").write_text(markdown(reports) + "\n## Issue 21's goals\n\n" + goals)
    print(f"\nTable of every figure: {out / 'figures.md'}")
    print("\nIssue 21's goals (each from the JSON of the benchmark that measured it, in " + str(out) + "):\n")
    print(goals)
    print("\nGoals not met:" if unmet else "\nEvery goal with a figure was met.", *unmet, sep="\n  ")
    if failed:
        print("Benchmarks that failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
