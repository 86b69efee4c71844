"""Audit: the hash chain's cost, full-chain verification rate, filtered queries at a million events.

    python -m bench.audit [--events 1000000] [--dbs sqlite,postgresql] [--journeys 40]

1. Engine throughput with the hash chain against the same run with chaining off
   (``audit_chain=False``): the whole credit journey (as ``bench.throughput``) in alternating
   rounds, and the bare append path (``append_events`` of 3 events per transaction, as the
   ``record`` activity does).
2. Each database is a fresh one (temporary SQLite file, new PostgreSQL database), dropped after.
   ``--events`` events are bulk-loaded with a valid chain (hashes computed with the engine's own
   ``canonical_event``/``chain_hash``, rows inserted in batches of 10,000); then ``verify_chain``
   walks all of them (events/s), and filtered ``list_events`` queries (by progression, model,
   actor, type, time window, type within a window) are timed: p95 against the unfiltered first
   page as the baseline; so are open-ended windows (``since`` a random day), reported apart.
   PostgreSQL gets ``VACUUM ANALYZE`` after the load, as autovacuum gives any table grown over time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, insert, text, update

from bench.common import Report, base_parser, bounded_gather, fresh_database, percentile, run, temporal_server

EVENT_TYPES = ["progression.started", "stage.entered", "check.evaluated", "gate.opened", "decision.received",
               "stage.passed", "deployment", "notification.sent", "evidence.submitted", "gate.escalated",
               "progression.rejected", "changes.requested", "revalidation.due", "stage.blocked",
               "progression.in_production"]
START = datetime(2025, 1, 1, tzinfo=UTC)


def _event(i: int, rng: random.Random, n_progressions: int) -> dict[str, Any]:
    prog = rng.randrange(n_progressions)
    model = prog // 10
    return {
        "event_id": f"bench-{i}-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}",
        "event_type": EVENT_TYPES[rng.randrange(len(EVENT_TYPES))],
        "occurred_at": START + timedelta(seconds=i * 30),  # about a year at a million events
        "actor_id": f"user-{rng.randrange(500)}" if rng.random() < 0.4 else None,
        "progression_id": f"model-{model}@1.{prog}.0",
        "model_id": f"model-{model}",
        "stage": ["registration", "validation", "risk_review", "staging", "production"][prog % 5],
        "payload": {"attempt": 1, "comment": "bench", "n": i},
    }


def bulk_load(url: str, n: int, batch: int = 10_000) -> float:
    """Insert ``n`` chained events (Core executemany in batches) and set the head; returns seconds."""
    from engine.audit import GENESIS_HASH, _utc, canonical_event, chain_hash
    from engine.database import sync_url
    from engine.db import AuditChainHead, AuditEvent

    rng = random.Random(8)
    engine = create_engine(sync_url(url))
    n_progressions = max(1, n // 50)
    t0 = time.perf_counter()
    prev, seq, now = GENESIS_HASH, 0, datetime.now(UTC)
    table = AuditEvent.__table__
    try:
        with engine.begin() as conn:
            head = conn.execute(AuditChainHead.__table__.select()).first()
            if head is None:
                conn.execute(insert(AuditChainHead.__table__).values(id=1, last_seq=0, last_hash=GENESIS_HASH))
        for start in range(0, n, batch):
            rows = []
            for i in range(start, min(n, start + batch)):
                ev = _event(i, rng, n_progressions)
                seq += 1
                h = chain_hash(prev, canonical_event(**{**ev, "occurred_at": _utc(ev["occurred_at"])}))
                rows.append({**ev, "seq": seq, "recorded_at": now, "prev_hash": prev, "hash": h})
                prev = h
            with engine.begin() as conn:
                conn.execute(insert(table), rows)
        with engine.begin() as conn:
            conn.execute(update(AuditChainHead.__table__).values(last_seq=seq, last_hash=prev))
    finally:
        engine.dispose()
    return time.perf_counter() - t0


def vacuum_analyze(url: str) -> None:
    """What autovacuum does to a table that grew over a year: statistics and the visibility map (for
    index-only scans). A bulk load of a million rows in seconds would otherwise be measured in a state
    no production table is in."""
    from engine.database import sync_url

    engine = create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("VACUUM ANALYZE audit_events"))
    finally:
        engine.dispose()


async def query_figures(report: Report, url: str, kind: str, n: int, samples: int) -> None:
    from engine.audit import list_events, verify_chain
    from engine.database import upgrade
    from engine.db import make_engine, make_sessionmaker

    await upgrade(url)
    load_s = await asyncio.to_thread(bulk_load, url, n)
    if kind == "postgresql":
        await asyncio.to_thread(vacuum_analyze, url)
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    try:
        async with sm() as session:
            t0 = time.perf_counter()
            result = await verify_chain(session)
            verify_s = time.perf_counter() - t0
        if not result.ok or result.events_checked != n:
            raise RuntimeError(f"bulk-loaded chain does not verify: {result}")
        report.add(f"verify_chain rate ({kind}, {n:,} events)", n / verify_s, "events/s",
                   goal=">= 50,000 events/s", met=n / verify_s >= 50_000,
                   note=f"bulk load took {load_s:.0f}s ({n / load_s:,.0f} events/s)")
        rng = random.Random(3)
        n_progressions = max(1, n // 50)

        def filters() -> dict[str, Any]:
            pick = rng.randrange(6)
            prog = rng.randrange(n_progressions)
            day = START + timedelta(days=rng.randrange(max(1, n * 30 // 86400)))
            return [
                {"progression_id": f"model-{prog // 10}@1.{prog}.0"},
                {"model_id": f"model-{prog // 10}"},
                {"actor_id": f"user-{rng.randrange(500)}"},
                {"event_type": rng.choice(EVENT_TYPES)},
                {"since": day, "until": day + timedelta(days=1)},
                {"event_type": rng.choice(EVENT_TYPES), "since": day, "until": day + timedelta(days=7)},
            ][pick]

        async def timed(kw: dict[str, Any]) -> float:
            async with sm() as session:
                t0 = time.perf_counter()
                await list_events(session, limit=100, **kw)
                return (time.perf_counter() - t0) * 1000

        for _ in range(10):  # warm the caches and the prepared statements
            await timed(filters())
        filtered, plain = [], []
        for _ in range(samples):
            filtered.append(await timed(filters()))
            plain.append(await timed({"after_seq": rng.randrange(n)}))
        p95, base = percentile(filtered, 95), percentile(plain, 95)
        report.add(f"filtered audit query p95 ({kind}, {n:,} events)", p95, "ms", baseline=base,
                   goal="<= 50 ms", met=p95 <= 50,
                   note="baseline: an unfiltered 100-event page by seq; filters: progression, model, actor, type, "
                        "1-day window, type in a 7-day window")
        # The auditor's broadest ask: everything since some day (most of the table, in seq order).
        open_ended = []
        for _ in range(max(10, samples // 3)):
            day = START + timedelta(days=rng.randrange(max(1, n * 30 // 86400)))
            open_ended.append(await timed({"since": day}))
        p95_open = percentile(open_ended, 95)
        report.add(f"open-ended window query p95 ({kind}, {n:,} events)", p95_open, "ms", baseline=base,
                   goal="<= 50 ms", met=p95_open <= 50,
                   note="since a random day, no end: the window holds up to the whole table")
    finally:
        await engine.dispose()


async def append_rate(url: str, chain: bool, transactions: int) -> float:
    """Events/s through ``append_events`` with 3 events per transaction (the record activity's shape)."""
    from engine.audit import append_events
    from engine.db import make_engine, make_sessionmaker

    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    try:
        t0 = time.perf_counter()
        for t in range(transactions):
            async with sm() as session, session.begin():
                await append_events(session, [
                    {"event_id": uuid.uuid4().hex, "event_type": "decision.received", "occurred_at": START,
                     "progression_id": f"p-{t}", "model_id": "m", "stage": "validation",
                     "payload": {"comment": "x" * 200, "attempt": 1, "t": t}} for _ in range(3)], chain=chain)
        return 3 * transactions / (time.perf_counter() - t0)
    finally:
        await engine.dispose()


async def chain_cost(report: Report, args: argparse.Namespace) -> None:
    from bench.throughput import engine_env, engine_journey_factory
    from engine.database import upgrade

    # The append path alone, alternating on and off on one fresh database.
    with fresh_database("sqlite") as url:
        await upgrade(url)
        on = off = 0.0
        for _ in range(args.rounds):
            off += await append_rate(url, False, args.transactions)
            on += await append_rate(url, True, args.transactions)
    report.add("audit append rate, chain on (3 events/transaction, sqlite)", on / args.rounds, "events/s",
               baseline=off / args.rounds, goal="ratio >= 0.9", met=on / off >= 0.9,
               note="baseline: the same appends with chain=False")
    # The whole engine: credit journeys with the chain on and off, alternating rounds.
    async with temporal_server() as (client, _):
        secs = {True: 0.0, False: 0.0}
        async with engine_env(client, "sqlite", audit_chain=True) as (q_on, base, _), \
                engine_env(client, "sqlite", audit_chain=False) as (q_off, _b, _e):
            journey = engine_journey_factory(base)
            for q in (q_on, q_off):
                await bounded_gather(1, 1, lambda i, q=q: journey(client, q, 90_000 + i))  # type: ignore[misc]
            for r in range(args.rounds):
                for chain, q in ((False, q_off), (True, q_on)):
                    t0 = time.perf_counter()
                    await bounded_gather(args.journeys, args.concurrency,
                                         lambda i, q=q, r=r: journey(client, q, r * 1000 + i))  # type: ignore[misc]
                    secs[chain] += time.perf_counter() - t0
    n = args.journeys * args.rounds
    report.add("engine throughput, chain on (credit journeys)", n / secs[True], "/s", baseline=n / secs[False],
               goal="ratio >= 0.9", met=secs[False] / secs[True] >= 0.9,
               note="baseline: the same journeys with audit_chain=False (separate database)")


async def main(args: argparse.Namespace) -> Report:
    report = Report("audit", "python -m bench.audit", params={
        "events": args.events, "dbs": args.dbs, "journeys": args.journeys, "rounds": args.rounds})
    await chain_cost(report, args)
    for kind in args.dbs.split(","):
        with fresh_database(kind) as url:
            await query_figures(report, url, kind, args.events, args.samples)
    return report


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events bulk-loaded per database")
    p.add_argument("--dbs", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    p.add_argument("--samples", type=int, default=300, help="timed queries of each kind")
    p.add_argument("--journeys", type=int, default=40, help="credit journeys per round and chain setting")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--transactions", type=int, default=300, help="append transactions per round and setting")
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
