"""Scale: many progressions parked at approval gates; worker memory, inbox latency, drain time.

    python -m bench.scale [--size 10000] [--small 100] [--db sqlite|postgresql]

The product runs as two processes (API, worker). Marketing progressions (one validator approval,
then deployment) are started straight on Temporal (the API's start path is measured elsewhere) and
parked at their validation gate. Measured twice, first with ``--small`` parked (the baseline),
then with ``--size``: the worker's resident memory, the validator's ``GET /api/v1/inbox`` latency
(p50/p95 of 20 reads), and the time to drain every gate with HTTP approvals (16 clients) until each
progression is ``in_production`` in the read model. Full size takes about 15-25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
from sqlalchemy import func, select
from temporalio.client import Client

from bench.common import (
    Report,
    Stack,
    base_parser,
    bounded_gather,
    fresh_database,
    http_client,
    percentile,
    product_stack,
    rss_mib,
    run,
    temporal_server,
)


async def count_status(sm: Any, ids: list[str], status: str) -> int:
    from engine.db import ProgressionRow

    async with sm() as session:
        total = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            total += int(await session.scalar(select(func.count()).select_from(ProgressionRow).where(
                ProgressionRow.id.in_(chunk), ProgressionRow.status == status)) or 0)
        return total


async def wait_all(sm: Any, ids: list[str], status: str, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if await count_status(sm, ids, status) == len(ids):
            return time.perf_counter() - t0
        await asyncio.sleep(0.5)
    raise RuntimeError(f"not all {len(ids)} progressions reached {status} within {timeout:.0f}s")


async def park(client: Client, stack: Stack, base: Any, n: int, tag: str, sm: Any, wave: int) -> list[str]:
    """Start ``n`` marketing progressions on Temporal, ``wave`` at a time, each wave parked at its
    validation gate before the next starts.

    Waves, because more progressions *running* at once than the worker caches (``max_cached_workflows``,
    1,000) evict each other between activations and every activation then replays its history: a
    burst of 10,000 simultaneous starts parked 291 in 20 minutes. Parked ones sit in a wait and are
    evicted harmlessly.
    """
    from workflows.contract import WORKFLOW_NAME

    async def start(i: int) -> str:
        spec = base.spec.model_copy(update={"version": base.spec.version.model_copy(
            update={"id": f"6.{i}.0-{tag}"})})
        inp = base.model_copy(update={"spec": spec})
        await client.start_workflow(WORKFLOW_NAME, inp, id=spec.progression_id, task_queue=stack.task_queue)
        return spec.progression_id

    ids: list[str] = []
    for first in range(0, n, wave):
        batch = await bounded_gather(min(wave, n - first), 32,
                                     lambda i, first=first: start(first + i))  # type: ignore[misc]
        await wait_all(sm, batch, "awaiting_approval", timeout=max(120.0, len(batch) * 0.5))
        ids += batch
    return ids


async def inbox_latency(http: httpx.AsyncClient, stack: Stack, expect: int) -> list[float]:
    out = []
    for _ in range(20):
        t0 = time.perf_counter()
        resp = await http.get("/api/v1/inbox", headers=stack.auth("vera"))
        out.append((time.perf_counter() - t0) * 1000)
        body = resp.json()
        if resp.status_code != 200 or body["total"] < expect:
            raise RuntimeError(f"inbox: {resp.status_code} total={body.get('total')} expected >= {expect}")
    return out


async def drain(http: httpx.AsyncClient, stack: Stack, ids: list[str], sm: Any) -> float:
    async def approve(i: int) -> None:
        resp = await http.post(f"/api/v1/progressions/{ids[i]}/decisions", headers=stack.auth("vera"),
                               json={"stage": "validation", "decision": "approve", "comment": "ok"})
        if resp.status_code != 200:
            raise RuntimeError(f"approve {ids[i]}: {resp.status_code} {resp.text[:200]}")

    t0 = time.perf_counter()
    await bounded_gather(len(ids), 16, approve)
    await wait_all(sm, ids, "in_production", timeout=max(120.0, len(ids) * 0.5))
    return time.perf_counter() - t0


async def main(args: argparse.Namespace) -> Report:
    from engine.db import make_engine, make_sessionmaker
    from engine.evidence import EvidenceStore
    from engine.lifecycle import Actor
    from engine.policy import Role
    from testing import workflow as hw

    report = Report("scale", "python -m bench.scale", params={"size": args.size, "small": args.small, "db": args.db,
                                                               "wave": args.wave})
    async with temporal_server() as (client, address):
        with fresh_database(args.db) as url:
            async with product_stack(address, url) as stack, http_client(stack, 16) as http:
                engine = make_engine(url)
                sm = make_sessionmaker(engine)
                try:
                    env = SimpleNamespace(store=EvidenceStore(stack.data_dir / "evidence"), sessionmaker=sm)
                    mia = Actor(user_id=stack.user_ids["mia"], username="mia", roles=[Role.model_developer],
                                team="marketing-analytics")
                    base = await hw.example_input(env, hw.MARKETING, submitted_by=mia,  # type: ignore[arg-type]
                                                  version={"id": "6.0.0"})
                    tag = uuid.uuid4().hex[:6]
                    results: dict[str, dict[str, float]] = {}
                    for label, n in (("small", args.small), ("size", args.size)):
                        t0 = time.perf_counter()
                        ids = await park(client, stack, base, n, f"{label}-{tag}", sm, args.wave)
                        park_s = time.perf_counter() - t0
                        rss = rss_mib(stack.worker_pid)
                        lat = await inbox_latency(http, stack, n)
                        drain_s = await drain(http, stack, ids, sm)
                        results[label] = {"park_s": park_s, "rss": rss, "inbox_p50": percentile(lat, 50),
                                          "inbox_p95": percentile(lat, 95), "drain_s": drain_s,
                                          "drain_rate": n / drain_s, "park_rate": n / park_s}
                finally:
                    await engine.dispose()
    s, b = results["size"], results["small"]
    report.add(f"worker RSS with {args.size:,} parked", s["rss"], "MiB", baseline=b["rss"],
               note=f"baseline: with {args.small} parked; the worker caches at most 1,000 workflows "
                    "(max_cached_workflows), so memory is bounded beyond that")
    report.add(f"inbox p50 with {args.size:,} gates", s["inbox_p50"], "ms", baseline=b["inbox_p50"])
    report.add(f"inbox p95 with {args.size:,} gates", s["inbox_p95"], "ms", baseline=b["inbox_p95"])
    report.add(f"drain {args.size:,} gates (HTTP approvals -> in_production)", s["drain_s"], "s",
               note=f"{s['drain_rate']:.1f} approvals/s; baseline rate with {args.small}: {b['drain_rate']:.1f}/s")
    report.add("drain rate", s["drain_rate"], "/s", baseline=b["drain_rate"])
    report.add("park rate (start -> gate open)", s["park_rate"], "/s", baseline=b["park_rate"])
    return report


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10_000, help="progressions parked at the gate")
    p.add_argument("--small", type=int, default=100, help="the baseline's parked progressions")
    p.add_argument("--wave", type=int, default=500, help="progressions started and parked at a time")
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
