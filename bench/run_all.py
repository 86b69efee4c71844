"""Every benchmark in turn, each in its own process; prints every table and writes the JSON figures.

    python -m bench.run_all [--quick] [--out .data/bench-results]

Full size (``make bench``) takes over an hour on a 2-core machine, most of it ``bench.scale``
(10,000 parked progressions) and the two million-event audit loads; ``--quick`` runs every script
at a small size in a few minutes (the figures then prove the scripts work, not the goals).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from engine.settings import PROJECT_ROOT

FULL: dict[str, list[str]] = {
    "throughput": [],
    "approval_latency": [],
    "api_reads": [],
    "audit": [],
    "scale": [],
}
QUICK: dict[str, list[str]] = {
    "throughput": ["--count", "10", "--rounds", "1", "--concurrency", "4"],
    "approval_latency": ["--samples", "10"],
    "api_reads": ["--requests", "100", "--progressions", "3", "--rounds", "1"],
    "audit": ["--events", "5000", "--journeys", "3", "--rounds", "1", "--transactions", "30", "--samples", "20"],
    "scale": ["--size", "20", "--small", "5"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: proves the scripts, not the goals")
    parser.add_argument("--out", default=".data/bench-results", help="directory for the JSON figures")
    parser.add_argument("--only", help="comma-separated benchmark names")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    names = args.only.split(",") if args.only else list(plan)
    failed = []
    for name in names:
        start = time.monotonic()
        cmd = [sys.executable, "-m", f"bench.{name}", *plan[name], "--json", str(out / f"{name}.json")]
        print(f"\n$ {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=PROJECT_ROOT, check=False).returncode != 0:
            failed.append(name)
        print(f"({name}: {time.monotonic() - start:.0f}s)", flush=True)
    unmet = []
    for name in names:
        path = out / f"{name}.json"
        if path.exists():
            unmet += [f"{name}: {f['name']}" for f in json.loads(path.read_text())["figures"] if f["met"] is False]
    print("\nGoals not met:" if unmet else "\nEvery goal with a figure was met.", *unmet, sep="\n  ")
    if failed:
        print("Benchmarks that failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
