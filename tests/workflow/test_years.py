"""Ten years in production (issue 21): monthly monitoring and yearly revalidation stay within Temporal's history
limits through continue-as-new, and nothing is lost on the way.

On the time-skipping server (``testing.years.live_years``): 120 monthly results (a few of them breaches that raise
findings or open the revalidation now, as the credit policy says), every revalidation gate refused to a risk officer
and approved by a validator. Then the chain of runs is followed from the first run and every run's history measured.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from engine.audit import verify_chain
from engine.db import FindingRow, ProgressionRow
from testing.workflow import Env, events
from testing.years import (
    BREACHES,
    WARN_BYTES,
    WARN_EVENTS,
    YEAR,
    by_year,
    live_years,
    run_chain,
    table,
)

YEARS = 10


@pytest.mark.slow  # about 25 s on the loaded 2-core machine
async def test_ten_years_of_monitoring_and_revalidation_stay_within_history_limits(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    sent = await live_years(time_skipping_env, task_queue, env, years=YEARS)
    final, pid = sent.final, sent.progression_id
    assert final is not None

    # Alive and correct after ten years: in production, every revalidation counted, one a year at least.
    assert final.status == "in_production" and final.current_stage is None and not final.revalidation_overdue
    assert sent.results == 12 * YEARS
    assert final.revalidations == len(sent.revalidations) >= YEARS
    gaps = [b - a for a, b in zip([sent.deployed_at, *sent.revalidations], sent.revalidations, strict=False)]
    assert max(gaps) <= YEAR + timedelta(days=1), gaps  # never more than a year without a revalidation
    assert sent.triggered == 2 and sent.refused == final.revalidations
    assert sorted(sent.breaches) == sorted(["auc-decay", "no-volume", "psi-drift", "fairness-breach", "auc-decay"])
    assert len(sent.findings) == 3
    assert {f.finding_id for f in final.findings} >= set(sent.findings)  # carried across every continue-as-new
    assert final.monitoring is not None
    assert final.monitoring.periods[-1] == (sent.deployed_at + (12 * YEARS - 0.5) * (YEAR / 12)).date()
    assert len(final.monitoring.periods) == min(60, sent.results)  # the last KEEP periods, none dropped early
    assert final.revalidation_due_at is not None and final.revalidation_due_at - sent.revalidations[-1] == YEAR

    # Every run of the chain stays well under the limits (under the server's warning thresholds, a fifth of them).
    # The time-skipping server never suggests continue-as-new (a real one does at 4 Ki events or 4 MB): the decade
    # may be one run, which must then hold it all.
    runs = await run_chain(time_skipping_env.client, pid, sent.first_run_id)
    print(f"\n{pid}: {len(runs)} run(s) over {YEARS} years\n{table(runs, sent.deployed_at)}")
    assert all(r.continued_as_new for r in runs[:-1]) and not runs[-1].continued_as_new
    assert max(r.events for r in runs) < WARN_EVENTS and max(r.bytes for r in runs) < WARN_BYTES
    assert len(by_year(runs, sent.deployed_at)) >= YEARS

    # Nothing lost across continue-as-new: the audit trail has exactly what was sent and decided.
    async def count(kind: str) -> int:
        return len(await events(env, pid, kind))

    assert await count("monitoring.received") == sent.results
    assert await count("monitoring.breach") == len(sent.breaches)
    assert await count("revalidation.completed") == final.revalidations
    assert await count("revalidation.triggered") == sent.triggered
    assert await count("revalidation.due") == final.revalidations - sent.triggered
    assert await count("decision.received") == 3 + final.revalidations  # the route's three, one per revalidation
    assert await count("monitoring.overdue") == 0  # a result every month: never two periods without one
    async with env.sessionmaker() as session:
        rows = (await session.scalars(select(FindingRow).where(FindingRow.model_id == final.model_id))).all()
        assert sorted(r.id for r in rows) == sorted(sent.findings)
        assert {r.severity for r in rows} == {"high", "medium"}
        # The read model matches the workflow's state.
        row = await session.get(ProgressionRow, pid)
        assert row is not None
        assert (row.status, row.current_stage, row.seq) == (final.status, final.current_stage, final.seq)
        assert row.state["revalidations"] == final.revalidations
        assert row.revalidation_due_at is not None
        assert row.revalidation_due_at.replace(tzinfo=None) == final.revalidation_due_at.replace(tzinfo=None)
        assert (await verify_chain(session)).ok
    assert set(BREACHES) <= set(range(1, 12 * YEARS + 1))
