"""Each benchmark runs end to end at a tiny size and prints its table (figures, not timing, are asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run_all import QUICK
from engine.settings import PROJECT_ROOT

# The figure each script must report (a prefix of the figure's name).
EXPECTED = {
    "history_size": "history bytes per journey",
    "throughput": "progressions/s",
    "approval_latency": "decision latency p99",
    "api_reads": "GET /progressions/{id} requests/s",
    "audit": "filtered audit query p95 (postgresql",
    "scale": "worker RSS",
    "inbox_sql": "inbox p95 at",
    "scale_out": "journeys/s ratio, 2 workers / 1",
    "years": "max events per run",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICK))
def test_benchmark_prints_its_figures(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *QUICK[name], "--json", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"== {name}" in proc.stdout
    assert "figure" in proc.stdout and "baseline" in proc.stdout and "ratio" in proc.stdout
    assert EXPECTED[name] in proc.stdout
    figures = json.loads(out.read_text())["figures"]
    assert any(f["name"].startswith(EXPECTED[name]) for f in figures)
    assert all(f["value"] > 0 for f in figures if "overhead" not in f["name"]), figures
    # Every figure with a baseline has its ratio; goals carry a verdict.
    assert all(f["ratio"] is not None for f in figures if f["baseline"])
    assert all(f["met"] is not None for f in figures if f["goal"])
