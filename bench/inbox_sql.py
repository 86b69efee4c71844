"""The inbox's SQL cost alone, at 100 to 100,000 open gates (no Temporal, no worker, no HTTP).

    python -m bench.inbox_sql [--counts 100,10000,100000] [--samples 200] [--db sqlite|postgresql]

Open gates are inserted straight into the read model (``progressions`` rows with a gate record, as the worker
writes them: three teams, one validator approval each), ANALYZEd as autovacuum would, and the validator's inbox
service is called in process:
the first page (50 gates) and a page deep in the listing (followed by cursor, 20 pages in). p50/p95 of
``--samples`` calls each (200); the baseline is the smallest count. ``bench.scale`` measures the same over HTTP with
real parked workflows, up to what the machine parks within its time budget; this one reaches 100,000.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import Report, base_parser, fresh_database, percentile, run

TEAMS = ("retail-risk", "payments", "cards")
BATCH = 5000


def gate_rows(start: int, n: int, model_id: str, submitter: str) -> list[dict[str, Any]]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(start, start + n):
        opened = t0 + timedelta(seconds=i)
        stage = {"name": "validation", "status": "awaiting_approval", "gate_opened_at": opened.isoformat(),
                 "attempt": 1, "approvals": [{"role": "model_validator", "count": 1, "approved_by": [],
                                              "sla": "5d", "due_at": (opened + timedelta(days=5)).isoformat()}],
                 "decisions": [], "basis": "sha256:" + "0" * 64}
        rows.append({"id": f"{model_id}@{i}.0.0", "model_id": model_id, "version_id": f"{i}.0.0",
                     "team": TEAMS[i % 3], "business_intent": "credit-underwriting", "risk_tier": 1,
                     "policy_hash": "sha256:" + "1" * 64, "status": "awaiting_approval", "current_stage": "validation",
                     "target": "production", "submitted_by": submitter, "waiting_on": ["model_validator"],
                     "gate_opened_at": opened, "sla_due_at": opened + timedelta(days=5), "escalated": False,
                     "revalidation_overdue": False, "started_at": opened, "updated_at": opened, "seq": 5,
                     "state": {}, "gate": {"stage": stage, "model_name": "Bench model",
                                           "submitted_by_username": "dana"}})
    return rows


async def main(args: argparse.Namespace) -> Report:
    from sqlalchemy import insert, text

    from api.authz import Principal
    from api.services.inbox import inbox
    from engine.db import CatalogModel, ProgressionRow, User, make_engine, make_sessionmaker
    from testing.databases import prepare_database

    counts = sorted({int(c) for c in args.counts.split(",")})
    report = Report("inbox_sql", "python -m bench.inbox_sql",
                    params={"counts": args.counts, "samples": args.samples, "db": args.db})
    secret = uuid.uuid4().hex * 2
    vera = Principal.of(User(id=str(uuid.uuid4()), username="vera", display_name="", team="validation",
                             roles=["model_validator"], active=True, external=False))
    results: dict[int, dict[str, float]] = {}
    with fresh_database(args.db) as url:
        await prepare_database(url)
        engine = make_engine(url)
        sm = make_sessionmaker(engine)
        try:
            async with sm() as session:
                session.add(CatalogModel(id="bench-model", name="Bench model", team="retail-risk",
                                         business_intent="credit-underwriting"))
                await session.commit()
            have = 0
            for n in counts:
                async with sm() as session:
                    for start in range(have, n, BATCH):
                        await session.execute(insert(ProgressionRow), gate_rows(
                            start, min(BATCH, n - start), "bench-model", str(uuid.uuid4())))
                    await session.commit()
                have = n
                async with engine.connect() as conn:  # what autovacuum does after a load this size
                    await conn.execute(text("ANALYZE progressions" if args.db == "postgresql" else "ANALYZE"))
                    await conn.commit()

                async with sm() as session:  # a cursor 20 pages in (or the last page of a small inbox)
                    cursor = None
                    for _ in range(min(20, max(1, n // 50 - 1))):
                        cursor = (await inbox(session=session, principal=vera, secret=secret, cursor=cursor,
                                              limit=50)).next_cursor

                first = [await timed(sm, vera, secret, None, n) for _ in range(args.samples)]
                deep = [await timed(sm, vera, secret, cursor, None) for _ in range(args.samples)]
                results[n] = {"p50": percentile(first, 50), "p95": percentile(first, 95),
                              "deep_p95": percentile(deep, 95)}
        finally:
            await engine.dispose()
    small = results[counts[0]]
    for n in counts[1:]:
        r = results[n]
        report.add(f"inbox p50 at {n:,} open gates ({args.db})", r["p50"], "ms", baseline=small["p50"])
        report.add(f"inbox p95 at {n:,} open gates ({args.db})", r["p95"], "ms", baseline=small["p95"],
                   goal="ratio <= 1.5", met=r["p95"] <= 1.5 * small["p95"])
        report.add(f"inbox p95, page 21, at {n:,} open gates ({args.db})", r["deep_p95"], "ms",
                   baseline=small["deep_p95"])
    report.add(f"inbox p95 at {counts[0]:,} open gates ({args.db})", small["p95"], "ms")
    return report


async def timed(sm: Any, principal: Any, secret: str, cursor: str | None, expect: int | None) -> float:
    """One inbox page, in ms; the first page's count and size are checked (the benchmark measures a real answer)."""
    from api.services.inbox import TOTAL_CAP, inbox

    async with sm() as session:
        t0 = time.perf_counter()
        page = await inbox(session=session, principal=principal, secret=secret, cursor=cursor, limit=50)
        took = (time.perf_counter() - t0) * 1000
    if expect is not None and (page.total != min(expect, TOTAL_CAP) or page.total_more != (expect > TOTAL_CAP)
                               or len(page.items) != min(50, expect)):
        raise RuntimeError(f"inbox: total {page.total}, {len(page.items)} items at {expect} gates")
    return took


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], db=True)
    p.add_argument("--counts", default="100,10000,100000")
    p.add_argument("--samples", type=int, default=200)
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
