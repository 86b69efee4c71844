"""Scale: many progressions parked at approval gates; worker memory, inbox latency, drain time.

    python -m bench.scale [--counts 100,1000,10000] [--cache 1000] [--budget-s 3600] [--db sqlite|postgresql]
                          [--series FILE]

The product runs as two processes (API, worker). Marketing progressions (one validator approval,
then deployment) are started through the API's start path (``POST /api/v1/progressions``, spec and
evidence uploaded; ``--start-concurrency`` at a time) and parked at their validation gate. The
smallest count is the baseline: parked, measured, drained. Then
progressions are parked cumulatively up to each larger count (while the time budget allows), and at each
the worker's resident memory and the validator's ``GET /api/v1/inbox`` latency (p50/p95 of 20 reads,
first page) are measured; finally the largest count (or `--drain` of it, sampled across all parked, so
most are evicted from the worker's cache) is drained with HTTP approvals (16 clients) until
each progression is ``in_production`` in the read model. Full size takes about 25-35 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

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
    upload_files,
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


async def park(http: httpx.AsyncClient, stack: Stack, n: int, tag: str, sm: Any, wave: int,
               concurrency: int) -> list[str]:
    """Start ``n`` marketing progressions through the product's start path (``POST /api/v1/progressions``,
    spec and evidence uploaded, ``concurrency`` at a time), ``wave`` at a time, each wave parked at its
    validation gate before the next starts.

    Waves, because more progressions *running* at once than the worker caches (``max_cached_workflows``,
    1,000) evict each other between activations and every activation then replays its history: a
    burst of 10,000 simultaneous starts parked 291 in 20 minutes. Parked ones sit in a wait and are
    evicted harmlessly.
    """
    async def start(i: int) -> str:
        # What a client does under load: retry on 503 "retry shortly" and on a dropped connection; a retry of a
        # start that went through is answered 409 progression_exists (the same version: it is started).
        pid, files = upload_files("marketing-propensity", f"6.{i}.0-{tag}")
        for attempt in range(8):
            try:
                resp = await http.post("/api/v1/progressions", files=files, headers=stack.auth("mia"))
            except httpx.TransportError:
                resp = None
            if resp is not None and (resp.status_code == 201 or (
                    resp.status_code == 409 and resp.json().get("code") == "progression_exists")):
                return pid
            if resp is not None and resp.status_code != 503:
                raise RuntimeError(f"start {pid}: {resp.status_code} {resp.text[:300]}")
            await asyncio.sleep(min(2 ** attempt, 30))
        raise RuntimeError(f"start {pid}: still unavailable after 8 attempts")

    ids: list[str] = []
    for first in range(0, n, wave):
        batch = await bounded_gather(min(wave, n - first), concurrency,
                                     lambda i, first=first: start(first + i))  # type: ignore[misc]
        await wait_all(sm, batch, "awaiting_approval", timeout=max(600.0, len(batch) * 2.0))
        ids += batch
    return ids


async def inbox_latency(http: httpx.AsyncClient, stack: Stack, expect: int) -> list[float]:
    out = []
    for _ in range(20):
        t0 = time.perf_counter()
        resp = await http.get("/api/v1/inbox", headers=stack.auth("vera"))
        out.append((time.perf_counter() - t0) * 1000)
        body = resp.json()
        if resp.status_code != 200 or (body["total"] < expect and not body.get("total_more")):
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
    await wait_all(sm, ids, "in_production", timeout=max(600.0, len(ids) * 2.0))
    return time.perf_counter() - t0


def counts_of(text: str) -> list[int]:
    counts = sorted({int(c) for c in text.split(",") if c.strip()})
    if len(counts) < 2 or counts[0] < 1:
        raise SystemExit("--counts: at least two positive counts, e.g. 100,1000,10000")
    return counts


async def main(args: argparse.Namespace) -> Report:
    from engine.db import make_engine, make_sessionmaker

    counts = counts_of(args.counts)
    report = Report("scale", "python -m bench.scale", params={
        "counts": args.counts, "db": args.db, "wave": args.wave, "cache": args.cache, "budget-s": args.budget_s,
        "shared-workflow-modules": args.shared_workflow_modules})
    t_start = time.perf_counter()
    series: list[dict[str, float]] = []  # one point per count reached: parked, RSS, inbox p50/p95
    drains: dict[int, float] = {}  # gates drained -> approvals/s
    skipped: list[int] = []
    async with temporal_server() as (_client, address):
        with fresh_database(args.db) as url:
            async with product_stack(address, url, extra_env={
                    "PROGRESSION_WORKER_MAX_CACHED_WORKFLOWS": str(args.cache),
                    "PROGRESSION_WORKER_SHARED_WORKFLOW_MODULES": str(args.shared_workflow_modules).lower(),
            }) as stack, \
                    http_client(stack, 16) as http:
                engine = make_engine(url)
                sm = make_sessionmaker(engine)
                try:
                    tag = uuid.uuid4().hex[:6]
                    # The baseline: the smallest count parked, measured and drained on its own.
                    ids = await park(http, stack, counts[0], f"s-{tag}", sm, args.wave, args.start_concurrency)
                    series.append(await measure(http, stack, counts[0]))
                    progress(args, series, drains)
                    drains[counts[0]] = counts[0] / await drain(http, stack, ids, sm)
                    progress(args, series, drains)
                    # Then parked cumulatively up to each larger count, as far as the time budget allows.
                    parked: list[str] = []
                    rate = 0.0
                    for n in counts[1:]:
                        left = args.budget_s - (time.perf_counter() - t_start)
                        drain_n = min(args.drain, n) if args.drain else n
                        need = (n - len(parked) + drain_n) / rate if rate else 0.0
                        if rate and need * 1.2 > left:  # parking, then draining (about as fast), must fit
                            skipped.append(n)
                            continue
                        t0, before = time.perf_counter(), len(parked)
                        parked += await park(http, stack, n - before, f"{n}-{tag}", sm, args.wave,
                                             args.start_concurrency)
                        rate = (n - before) / max(time.perf_counter() - t0, 1e-3)
                        series.append(await measure(http, stack, n))
                        progress(args, series, drains)
                    # A sample spread over everything parked (not the newest, which are still in the worker's
                    # cache): what a day of decisions on a large bank's gates looks like.
                    drained = random.Random(21).sample(parked, min(args.drain, len(parked))) if args.drain else parked
                    drains[len(parked)] = len(drained) / await drain(http, stack, drained, sm)
                finally:
                    await engine.dispose()
    small, large = series[0], series[-1]
    at_1000 = next((p for p in series if p["count"] == 1000), series[1])
    n_large = int(large["count"])
    for point in series:
        report.add(f"worker RSS with {int(point['count']):,} parked", point["rss"], "MiB",
                   note=f"worker cache (max_cached_workflows): {args.cache}")
        report.add(f"inbox p50 with {int(point['count']):,} gates", point["inbox_p50"], "ms")
        report.add(f"inbox p95 with {int(point['count']):,} gates", point["inbox_p95"], "ms")
    report.add(f"worker RSS {n_large:,} vs {int(at_1000['count']):,} parked", large["rss"], "MiB",
               baseline=at_1000["rss"], goal="ratio <= 1.2", met=large["rss"] <= 1.2 * at_1000["rss"])
    report.add(f"inbox p95 {n_large:,} vs {int(small['count']):,} gates", large["inbox_p95"], "ms",
               baseline=small["inbox_p95"], goal="ratio <= 1.5", met=large["inbox_p95"] <= 1.5 * small["inbox_p95"])
    report.add(f"inbox p50 {n_large:,} vs {int(small['count']):,} gates", large["inbox_p50"], "ms",
               baseline=small["inbox_p50"])
    d_small, d_large = drains[counts[0]], drains[len(parked)]
    report.add(f"drain rate with {n_large:,} parked vs {counts[0]:,}", d_large, "/s", baseline=d_small,
               goal="ratio >= 0.9", met=d_large >= 0.9 * d_small,
               note=f"{len(drained):,} HTTP approvals (16 clients) until in_production")
    if skipped:
        report.add("counts left out (time budget)", float(len(skipped)), "",
                   note="skipped: " + ", ".join(f"{n:,}" for n in skipped))
    if args.series:
        write_series(Path(args.series), {"cache": args.cache, "db": args.db, "label": _label(args), "points": series,
                                         "drains": {str(k): v for k, v in drains.items()}})
    return report


def _label(args: argparse.Namespace) -> str:
    return "HTTP starts" + ("" if args.shared_workflow_modules else ", sandbox per run")


def write_series(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def progress(args: argparse.Namespace, series: list[dict[str, float]], drains: dict[int, float]) -> None:
    """Each point as soon as it is measured (stdout, and the series file): a run stopped early keeps them."""
    print(f"point: {json.dumps(series[-1])} drains: {json.dumps(drains)}", flush=True)
    if args.series:
        write_series(Path(args.series), {"cache": args.cache, "db": args.db, "label": _label(args),
                                         "points": series, "partial": True,
                                         "drains": {str(k): v for k, v in drains.items()}})


async def measure(http: httpx.AsyncClient, stack: Stack, n: int) -> dict[str, float]:
    rss = rss_mib(stack.worker_pid)
    lat = await inbox_latency(http, stack, n)
    return {"count": float(n), "rss": rss, "inbox_p50": percentile(lat, 50), "inbox_p95": percentile(lat, 95)}


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], db=True)
    p.add_argument("--counts", default="100,1000,10000",
                   help="parked counts, smallest first: the smallest is the baseline (parked, drained alone); the "
                        "others are reached cumulatively, and the largest is drained")
    p.add_argument("--drain", type=int, default=0, help="drain only this many of the largest count (0: all)")
    p.add_argument("--cache", type=int, default=1000, help="the worker's max_cached_workflows")
    p.add_argument("--shared-workflow-modules", action=argparse.BooleanOptionalAction, default=True,
                   help="PROGRESSION_WORKER_SHARED_WORKFLOW_MODULES (the default: workflow modules loaded once per "
                        "process); --no-shared-workflow-modules: Temporal's sandbox re-imports them per run")
    p.add_argument("--budget-s", type=float, default=3600.0,
                   help="a larger count is left out when parking and draining it would pass this many seconds")
    p.add_argument("--wave", type=int, default=500, help="progressions started and parked at a time")
    p.add_argument("--start-concurrency", type=int, default=16, help="HTTP starts in flight while parking")
    p.add_argument("--series", metavar="FILE", help="also write the points (for bench.plot_scale)")
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
