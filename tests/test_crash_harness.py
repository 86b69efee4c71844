"""The crash harness in a reduced size: faults of every kind, nothing lost or duplicated, the chain verifies.

Full size (100 progressions) is ``make reliability``; see docs/RELIABILITY.md. This runs the
same harness (separate API and worker processes, Temporal dev server on a database file,
PostgreSQL behind the harness's proxy) with 12 progressions and at least one fault of each kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reliability.crash_harness import FAULT_KINDS, HarnessConfig, passed, run_harness, table

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


async def test_crash_harness_reduced(tmp_path: Path) -> None:
    cfg = HarnessConfig(progressions=12, seed=11, concurrency=8, worker_kills=3, temporal_restarts=1, db_outages=1,
                        workdir=tmp_path / "run", deadline_seconds=420, quiet=True)
    summary = await run_harness(cfg)
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    report = table(summary) + "\n" + json.dumps({k: summary[k] for k in (
        "lost_items", "duplicated_items", "wrong_final_items", "errors", "faults")}, indent=1, default=str)

    # Every kind of fault was injected, the worker kills aimed at their phases.
    assert all(summary["faults_by_kind"][kind] >= 1 for kind in FAULT_KINDS), report
    assert summary["faults_by_kind"]["worker_kill"] == 3, report
    # The verdict: each progression in its scripted final state; nothing lost, nothing twice.
    assert summary["progressions_final_as_scripted"] == 12, report
    assert summary["wrong_final"] == 0, report
    assert summary["lost"] == 0, report
    assert summary["duplicated"] == 0, report
    assert summary["decision_rows"] == summary["decision_received_events"] == summary["decisions_acknowledged"], report
    assert summary["decisions_acknowledged"] > 12, report
    assert summary["chain_ok"], report
    assert passed(summary), report
