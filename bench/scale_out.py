"""Scale out: credit journeys/s through the HTTP API with one worker process against two, side by side.

    python -m bench.scale_out [--count 12] [--rounds 5] [--concurrency 8] [--poll 0.2]

The production topology as plain processes (``testing/topology.py``): one Temporal dev server standing in for
the cluster (eager activity execution off, as on a cluster: activity tasks go through the task queue to any
worker), the application database on the local PostgreSQL, and ``python -m launch.serve api|worker`` with
``PROGRESSION_ENV=production``. Two topologies run at once, each on its own fresh database (dropped after),
task queue and evidence directory: two API processes with **one** worker, and two API processes with **two**
workers. The idle one only long-polls while the other is driven.

A journey, all over HTTP, each request to the next API process in turn (no proxy): the developer starts a
credit progression (spec and evidence files), the validator approves once the validation gate is open, the
two risk officers approve at once (each through a different API process), until ``in_production``. Gates are
awaited by reading ``GET /progressions/{id}`` every ``--poll`` seconds. Rounds interleave 1, 2, 1, 2 ...
workers so the machine's other load hits both alike; each round runs ``--count`` journeys, ``--concurrency``
at a time. Measured per round: wall time, the latency of every ``POST /decisions``, and the CPU time of every
process from ``/proc/<pid>/stat``: each API, each worker, the Temporal server, the PostgreSQL backends serving
the topology's database (``pg_stat_activity``; the server's shared background processes are left out), this
driver, and the machine as a whole (``/proc/stat``). The goal is on the median of the round pairs' ratios
(two workers' round over the one-worker round just before it): a pooled rate is dominated by its slowest round.
About 10 minutes at the defaults on 2 loaded cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import (
    BENCH_PEOPLE,
    PG_ADMIN_DSN,
    Report,
    base_parser,
    bounded_gather,
    child_pids,
    cpu_seconds,
    fresh_database,
    median,
    percentile,
    run,
    upload_files,
)
from testing.polling import eventually
from testing.processes import processes
from testing.temporal import dev_server
from testing.topology import Topology, production_topology

REPO = "retail-credit-scorecard"
# Four API processes and three workers share one PostgreSQL (max_connections 100 by default, other work on it
# too): each API process keeps at most 10 + 10 connections instead of 20 + 20 (docs/PRODUCTION.md, "Sizing").
API_POOL = {"PROGRESSION_DB_POOL_SIZE": "10", "PROGRESSION_DB_MAX_OVERFLOW": "10"}
# The components whose CPU is reported, in the table's order.
COMPONENTS = ("api", "worker", "temporal", "postgres", "driver")
COMPONENT_NAMES = {"api": "API processes (2)", "worker": "worker process(es)", "temporal": "Temporal server",
                   "postgres": "PostgreSQL backends", "driver": "driver (this process)"}


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy so far (``/proc/stat``, all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


_admin: list[psycopg.Connection[Any]] = []  # one connection for the whole run: the server may be full later


def backend_pids(database: str) -> list[int]:
    """PostgreSQL backends connected to ``database`` now."""
    if not _admin:
        _admin.append(psycopg.connect(PG_ADMIN_DSN, autocommit=True))
    rows = _admin[0].execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)).fetchall()
    return [int(r[0]) for r in rows]


def _cpu_or_none(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Side:
    """One topology under test and what its rounds measured."""

    workers: int
    topology: Topology
    database: str
    clients: list[httpx.AsyncClient]
    journeys: int = 0
    decisions: int = 0
    reads: int = 0
    wall: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))
    per_process: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0
    rates: list[float] = field(default_factory=list)  # journeys/s of each round
    retries: int = 0  # requests answered 503 (a dependency briefly unavailable) and sent again
    _next: itertools.cycle[int] = field(default_factory=lambda: itertools.cycle(range(2)))

    @property
    def label(self) -> str:
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}"

    def http(self) -> httpx.AsyncClient:
        """The next API process, in turn."""
        return self.clients[next(self._next) % len(self.clients)]


class CpuSnapshot:
    """CPU seconds of every process that serves one topology, at one moment."""

    def __init__(self, side: Side, temporal_pids: list[int]) -> None:
        self.processes = {name: _cpu_or_none(pid) or 0.0 for name, pid in side.topology.pids().items()}
        self.temporal = sum(_cpu_or_none(p) or 0.0 for p in temporal_pids)
        self.backends = {pid: _cpu_or_none(pid) for pid in backend_pids(side.database)}
        self.driver = time.process_time()
        self.machine = machine_busy_seconds()


def add_cpu(side: Side, before: CpuSnapshot, after: CpuSnapshot) -> None:
    for name, value in after.processes.items():
        delta = value - before.processes.get(name, 0.0)
        side.per_process[name] = side.per_process.get(name, 0.0) + delta
        side.cpu["api" if name.startswith("api") else "worker"] += delta
    side.cpu["temporal"] += after.temporal - before.temporal
    # Backends opened during the round count whole; one closed during it loses its last part (pools keep
    # theirs open, so this is small).
    side.cpu["postgres"] += sum((cpu or 0.0) - (before.backends.get(pid) or 0.0)
                                for pid, cpu in after.backends.items())
    side.cpu["driver"] += after.driver - before.driver
    side.machine_busy += after.machine - before.machine


async def send(side: Side, method: str, url: str, **kw: Any) -> httpx.Response:
    """One request to the next API process; a 503 ("retry shortly": e.g. the shared PostgreSQL out of
    connections) is sent again, up to 8 times, with the same Idempotency-Key."""
    for attempt in range(8):
        resp = await side.http().request(method, url, **kw)
        if resp.status_code != 503:
            break
        side.retries += 1
        await asyncio.sleep(0.5 * (attempt + 1))
    return resp


async def journey(side: Side, i: int, tag: str, poll: float, timeout: float) -> None:
    topo = side.topology
    pid, files = upload_files(REPO, f"5.{i}.{side.workers}-{tag}")
    resp = await send(side, "POST", "/api/v1/progressions", files=files,
                      headers={**topo.auth("dana"), "Idempotency-Key": f"start-{pid}"})
    if resp.status_code != 201:
        raise RuntimeError(f"start {pid}: {resp.status_code} {resp.text[:300]}")

    async def until(ok: Callable[[dict[str, Any]], bool], what: str) -> None:
        body: dict[str, Any] = {}

        async def probe() -> bool:
            nonlocal body
            side.reads += 1
            body = (await send(side, "GET", f"/api/v1/progressions/{pid}", headers=topo.auth("ann"))).json()
            if body.get("status") in ("blocked", "rejected", "failed"):
                raise RuntimeError(f"{pid}: {body.get('status')} at {body.get('current_stage')}: "
                                   f"{body.get('missing')}")
            return ok(body)

        await eventually(probe, f"{pid} {what}", timeout=timeout, max_interval=poll,
                         describe=lambda _: f"{body.get('status')} {body.get('current_stage')}")

    def gate(stage: str) -> Callable[[dict[str, Any]], bool]:
        return lambda s: s.get("current_stage") == stage and s.get("status") == "awaiting_approval"

    async def decide(who: str, stage: str) -> None:
        t0 = time.perf_counter()
        resp = await send(side, "POST", f"/api/v1/progressions/{pid}/decisions",
                          headers={**topo.auth(who), "Idempotency-Key": f"{who}-{stage}-{pid}"},
                          json={"stage": stage, "decision": "approve", "comment": f"{who}: sound"})
        side.latencies_ms.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 200:
            raise RuntimeError(f"{who} on {pid} {stage}: {resp.status_code} {resp.text[:300]}")
        side.decisions += 1

    await until(gate("validation"), "at the validation gate")
    await decide("vera", "validation")
    await until(gate("risk_review"), "at the risk review gate")
    await asyncio.gather(decide("rita", "risk_review"), decide("rob", "risk_review"))
    await until(lambda s: s.get("status") == "in_production", "in production")


async def measured_round(side: Side, count: int, concurrency: int, first: int, tag: str, poll: float,
                         timeout: float, temporal_pids: list[int]) -> None:
    decisions, reads, latencies = side.decisions, side.reads, len(side.latencies_ms)
    before = CpuSnapshot(side, temporal_pids)
    t0 = time.perf_counter()
    await bounded_gather(count, concurrency, lambda i: journey(side, first + i, tag, poll, timeout))
    wall = time.perf_counter() - t0
    add_cpu(side, before, CpuSnapshot(side, temporal_pids))
    side.wall += wall
    side.journeys += count
    side.rates.append(count / wall)
    print(f"round: {side.label}: {count} journeys in {wall:.1f}s ({count / wall:.2f}/s), "
          f"{side.decisions - decisions} decisions, {side.reads - reads} reads, "
          f"decision p50 {percentile(side.latencies_ms[latencies:], 50):.0f} ms", flush=True)


@contextlib.asynccontextmanager
async def side(address: str, workers: int, root: Path) -> AsyncIterator[Side]:
    """One topology (two APIs, ``workers`` workers) on a fresh PostgreSQL database, with an HTTP client per API."""
    with fresh_database("postgresql") as url, processes(root / f"logs-{workers}w") as procs:
        database = url.rsplit("/", 1)[1]
        async with production_topology(procs, address, url, root / f"data-{workers}w", BENCH_PEOPLE,
                                       apis=2, workers=workers, settings=API_POOL) as topo, \
                contextlib.AsyncExitStack() as stack:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=120, limits=limits))
                       for base in topo.base_urls]
            yield Side(workers, topo, database, clients)


def _ms_per(side: Side, seconds: float) -> float:
    return seconds / side.journeys * 1000


async def main(args: argparse.Namespace) -> Report:
    report = Report("scale_out", "python -m bench.scale_out", params={
        "count": args.count, "rounds": args.rounds, "concurrency": args.concurrency, "poll": args.poll})
    tag = uuid.uuid4().hex[:6]
    # As on a cluster: an activity task goes through the task queue to whichever worker polls.
    backend_pids("postgres")  # the monitoring connection, before the topologies take theirs
    async with dev_server(extra_args=["--dynamic-config-value", "system.enableActivityEagerExecution=false"]) as env:
        address = env.client.service_client.config.target_host
        temporal_pids = child_pids("temporal")
        with tempfile.TemporaryDirectory(prefix="progression-scale-out-") as tmp:
            async with side(address, 1, Path(tmp)) as one, side(address, 2, Path(tmp)) as two:
                sides = [one, two]
                # Warm-up on each: imports, sandbox, connections, and the catalog's model row (the first journey
                # alone, so concurrent ones do not race to create it).
                for s in sides:
                    await journey(s, 0, f"w{tag}", args.poll, args.timeout)
                    await bounded_gather(args.warmup, args.concurrency,
                                         lambda i, s=s: journey(s, 1 + i, f"w{tag}", args.poll, args.timeout))  # type: ignore[misc]
                for r in range(args.rounds):
                    for s in sides:  # 1, 2, 1, 2 ...
                        await measured_round(s, args.count, args.concurrency, r * args.count, tag, args.poll,
                                             args.timeout, temporal_pids)
                for s in sides:
                    s.topology.processes.assert_alive()
    _admin.pop().close()
    for s in sides:
        for name, seconds in s.per_process.items():
            print(f"cpu: {s.label}: {name}: {seconds / s.wall:.2f} cores, {_ms_per(s, seconds):.0f} ms/journey")
    add_figures(report, one, two)
    return report


def add_figures(report: Report, one: Side, two: Side) -> None:
    rate1, rate2 = one.journeys / one.wall, two.journeys / two.wall
    # Each round with two workers against the round with one just before it: the machine's load changes
    # between pairs more than within one, and a pooled rate is dominated by the slowest round.
    pairs = sorted(b / a for a, b in zip(one.rates, two.rates, strict=True))
    ratio = median(pairs)
    report.add("journeys/s ratio, 2 workers / 1, median of round pairs", ratio, "x", goal=">= 0.9",
               met=ratio >= 0.9, note="each round pair (1 worker, then 2): " + ", ".join(f"{r:.2f}x" for r in pairs)
               + "; goal: a second worker costs nothing (2 shared cores cannot double the rate)")
    report.add("journeys/s, 2 workers vs 1 (HTTP, full credit journey)", rate2, "/s", baseline=rate1,
               note="pooled over the rounds; baseline: the same journeys with one worker process, interleaved rounds")
    report.add("decisions/s, 2 workers vs 1", two.decisions / two.wall, "/s", baseline=one.decisions / one.wall)
    for p in (50, 95):
        report.add(f"decision latency p{p}, 2 workers vs 1", percentile(two.latencies_ms, p), "ms",
                   baseline=percentile(one.latencies_ms, p))
    for c in COMPONENTS:
        report.add(f"CPU per journey, {COMPONENT_NAMES[c]}", _ms_per(two, two.cpu[c]), "ms",
                   baseline=_ms_per(one, one.cpu[c]),
                   note=f"cores busy: {two.cpu[c] / two.wall:.2f} with 2 workers, {one.cpu[c] / one.wall:.2f} with 1")
    report.add("CPU per journey, the whole machine", _ms_per(two, two.machine_busy), "ms",
               baseline=_ms_per(one, one.machine_busy),
               note=f"/proc/stat, every process (also other work on the machine): {two.machine_busy / two.wall:.2f} "
                    f"of {os.cpu_count()} cores busy with 2 workers, {one.machine_busy / one.wall:.2f} with 1")
    report.add("one worker: journeys/s per core of the worker process", one.journeys / one.cpu["worker"], "/s",
               note="what one worker process carries at full CPU (it runs on one core)")
    report.add("GET reads per journey (the driver's polling)", (one.reads + two.reads) / (one.journeys + two.journeys),
               "", note=f"requests answered 503 and sent again: {one.retries} with 1 worker, {two.retries} with 2")


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=12, help="journeys per round and topology")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (1 worker, 2 workers) ...")
    p.add_argument("--concurrency", type=int, default=8, help="journeys in flight")
    p.add_argument("--warmup", type=int, default=2, help="concurrent warm-up journeys per topology (after one alone)")
    p.add_argument("--poll", type=float, default=0.2, help="seconds between the driver's reads of a journey's state")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a journey may wait for one gate")
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
