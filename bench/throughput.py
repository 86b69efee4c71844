"""Throughput: progressions per second through the whole credit journey, against a bare workflow.

    python -m bench.throughput [--count 100] [--concurrency 16] [--rounds 2] [--db sqlite|postgresql]

One progression = start, registration and validation checks, the validator's approval, two risk
officers' approvals, staging checks, deployment, ``in_production``. The baseline
(``bench/bare.py``) has the same number of activities, Updates and timers in the same places,
with no-op activities. Both run on the same dev server, with the same worker settings, in the
same process, driven by the same client code (every ``--poll`` seconds, read where each journey stands until
its gate is open, then the Update), in alternating rounds so both see the same machine load.

Where the driver reads (``--read``): by default each app's read model, as its users read it: the engine's is the
``progressions`` table its ``record`` activity writes (what the API's GET and inbox serve), the bare app's a dict
its ``bare_record`` activity writes at the same points; one scan per interval covers every journey in flight,
and no read reaches the Temporal server. ``--read query`` queries each workflow's ``state`` instead (the
driver of earlier measurements): each poll is then a query task on the server and the worker, and the engine's
answer is its whole state while the bare one is three fields, so it charges the driver's reads to the engine
(docs/PERFORMANCE.md has both).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from bench.bare import BARE_ACTIVITIES, BARE_WORKFLOW, READ_MODEL, BareDecision, BareGovernedWorkflow
from bench.common import (
    Report,
    base_parser,
    bounded_gather,
    child_pids,
    cpu_seconds,
    fresh_database,
    run,
    temporal_server,
)

POLL = 0.05  # default seconds between the driver's reads (--poll)
MAX_WAIT = 60.0  # seconds per wait at most
# Issue 21's goals against the bare workflow (issue 8 asked 0.8x throughput; see docs/PERFORMANCE.md).
GOAL_THROUGHPUT = 0.5
GOAL_SERVER_CPU = 1.5


State = dict[str, Any]
Predicate = Callable[[State], bool]


async def _poll(handle: WorkflowHandle[Any, Any], ok: Predicate) -> None:
    for _ in range(int(MAX_WAIT / POLL)):
        state = await handle.query("state")
        if ok(state):
            return
        await asyncio.sleep(POLL)
    raise RuntimeError(f"{handle.id} did not reach the expected state")


class ReadModelWatcher:
    """Waits on a read model: every ``POLL`` seconds one ``read`` of every journey waited on, and each waiter whose
    state satisfies its predicate is woken (one scan for all journeys, as a dashboard would, not one per journey)."""

    def __init__(self, read: Callable[[list[str]], Awaitable[dict[str, State]]]) -> None:
        self._read = read
        self._waiting: dict[str, tuple[Predicate, asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait(self, workflow_id: str, ok: Predicate) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._scan())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[workflow_id] = (ok, future)
        try:
            await asyncio.wait_for(future, MAX_WAIT)
        except TimeoutError:
            raise RuntimeError(f"{workflow_id} did not reach the expected state") from None
        finally:
            self._waiting.pop(workflow_id, None)

    async def _scan(self) -> None:
        while True:
            if self._waiting:
                states = await self._read(list(self._waiting))
                for wid, (ok, future) in list(self._waiting.items()):
                    if wid in states and ok(states[wid]) and not future.done():
                        future.set_result(None)
            await asyncio.sleep(POLL)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


Wait = Callable[[WorkflowHandle[Any, Any], Predicate], Awaitable[None]]


def waiter(watcher: ReadModelWatcher | None) -> Wait:
    """How a journey waits for its next step: on the read model (``watcher``) or by querying its workflow."""
    if watcher is None:
        return _poll

    async def wait(handle: WorkflowHandle[Any, Any], ok: Predicate) -> None:
        await watcher.wait(handle.id, ok)
    return wait


async def _bare_read(ids: list[str]) -> dict[str, State]:
    return {i: READ_MODEL[i] for i in ids if i in READ_MODEL}


def engine_read(sessionmaker: Any) -> Callable[[list[str]], Awaitable[dict[str, State]]]:
    """The engine's read model: the ``progressions`` rows its ``record`` activity writes."""
    from sqlalchemy import select

    from engine.db import ProgressionRow

    async def read(ids: list[str]) -> dict[str, State]:
        async with sessionmaker() as session:
            rows = await session.execute(select(ProgressionRow.id, ProgressionRow.current_stage,
                                                ProgressionRow.status).where(ProgressionRow.id.in_(ids)))
            return {r.id: {"current_stage": r.current_stage, "status": r.status} for r in rows}
    return read


# ---- the two kinds, driven identically --------------------------------------------------------


def bare_journey_factory(wait: Wait = _poll) -> Callable[[Client, str, int], Awaitable[str]]:
    async def journey(client: Client, task_queue: str, i: int) -> str:
        handle = await client.start_workflow(BARE_WORKFLOW, id=f"bare-{uuid.uuid4().hex}", task_queue=task_queue)
        await wait(handle, lambda s: s["gate"] == 0)
        await handle.execute_update("decide", BareDecision(gate=0, actor="validator"))
        await wait(handle, lambda s: s["gate"] == 1)
        await handle.execute_update("decide", BareDecision(gate=1, actor="risk1"))
        await handle.execute_update("decide", BareDecision(gate=1, actor="risk2"))
        await wait(handle, lambda s: s["status"] == "done")
        READ_MODEL.pop(handle.id, None)
        return handle.id
    return journey


bare_journey = bare_journey_factory()  # querying its workflow (bench.history_size)


def engine_journey_factory(base_input: Any, wait: Wait = _poll) -> Callable[[Client, str, int], Awaitable[str]]:
    from engine.lifecycle import DecisionKind
    from testing import workflow as hw
    from workflows.contract import UPDATE_DECIDE, WORKFLOW_NAME, DecideInput

    def gate(stage: str) -> Callable[[dict[str, Any]], bool]:
        return lambda s: s["current_stage"] == stage and s["status"] == "awaiting_approval"

    async def journey(client: Client, task_queue: str, i: int) -> str:
        version = f"9.{i}.0-b{uuid.uuid4().hex[:10]}"
        spec = base_input.spec.model_copy(update={"version": base_input.spec.version.model_copy(
            update={"id": version})})
        inp = base_input.model_copy(update={"spec": spec})
        handle = await client.start_workflow(WORKFLOW_NAME, inp, id=spec.progression_id, task_queue=task_queue)

        async def approve(actor: Any, stage: str) -> None:
            await handle.execute_update(UPDATE_DECIDE, DecideInput(
                stage=stage, decision=DecisionKind.approve, comment="ok", actor=actor,
                decision_id=uuid.uuid4().hex))

        await wait(handle, gate("validation"))
        await approve(hw.VALIDATOR, "validation")
        await wait(handle, gate("risk_review"))
        await approve(hw.RISK1, "risk_review")
        await approve(hw.RISK2, "risk_review")
        await wait(handle, lambda s: s["status"] == "in_production")
        return handle.id

    return journey


@contextlib.asynccontextmanager
async def engine_env(client: Client, db: str, *, engine_kw: dict[str, Any] | None = None, audit_chain: bool = True,
                     **worker_kw: Any) -> AsyncIterator[tuple[str, Any, Any]]:
    """A fresh database, the real activities and worker on their own task queue; yields (queue, input, env)."""
    from activities.notify import LogNotifier
    from activities.progression import ProgressionActivities
    from activities.promotion import RecordingPromotionTarget
    from engine.db import make_engine, make_sessionmaker
    from launch.worker import build_worker
    from testing import workflow as hw

    with fresh_database(db) as url, tempfile.TemporaryDirectory(prefix="progression-bench-") as tmp:
        async with hw.app_env(url, Path(tmp)) as env:
            # The same database settings as the product's worker (launch.worker.build_activities).
            engine = make_engine(url, **{"sqlite_single_connection": True, **(engine_kw or {})})
            sm = make_sessionmaker(engine)
            env.activities = ProgressionActivities(sm, env.store, RecordingPromotionTarget(), LogNotifier(),
                                                   audit_chain=audit_chain)
            base = await hw.example_input(env, hw.CREDIT, version={"id": "9.0.0"})
            queue = f"bench-engine-{uuid.uuid4().hex[:8]}"
            try:
                async with build_worker(client, task_queue=queue, activities=env.activities, **worker_kw):
                    yield queue, base, env
            finally:
                await engine.dispose()


def runner_kw(runner: str) -> dict[str, Any]:
    """Worker keyword arguments for a workflow runner variant (the same for both kinds)."""
    from temporalio.worker import UnsandboxedWorkflowRunner
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    if runner == "unsandboxed":
        return {"workflow_runner": UnsandboxedWorkflowRunner()}
    if runner == "passthrough-all":
        return {"workflow_runner": SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_all_modules())}
    return {}


class Timer:
    """Wall clock, and CPU of this process (worker + driver) and of the dev server, per kind of journey."""

    def __init__(self) -> None:
        self.servers = child_pids("temporal")
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.server_cpu: dict[str, float] = {}
        self.rounds: list[dict[str, tuple[float, float]]] = []  # per round and kind: (wall, server CPU)

    def _server(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.servers)

    async def run(self, kind: str, count: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> None:
        wall, cpu, server = time.perf_counter(), time.process_time(), self._server()
        await bounded_gather(count, concurrency, job)
        self.wall[kind] = self.wall.get(kind, 0.0) + time.perf_counter() - wall
        self.cpu[kind] = self.cpu.get(kind, 0.0) + time.process_time() - cpu
        self.server_cpu[kind] = self.server_cpu.get(kind, 0.0) + self._server() - server
        if not self.rounds or kind in self.rounds[-1]:
            self.rounds.append({})
        self.rounds[-1][kind] = (time.perf_counter() - wall, self._server() - server)

    def spread(self) -> tuple[list[float], list[float]]:
        """Per round with both kinds: engine/bare throughput ratio, engine/bare server CPU ratio."""
        both = [r for r in self.rounds if {"engine", "bare"} <= r.keys()]
        return ([r["bare"][0] / r["engine"][0] for r in both],
                [r["engine"][1] / r["bare"][1] for r in both if r["bare"][1] > 0])


async def main(args: argparse.Namespace) -> Report:
    global POLL
    POLL = args.poll
    report = Report("throughput", "python -m bench.throughput", params={
        "count": args.count, "concurrency": args.concurrency, "rounds": args.rounds, "db": args.db,
        "poll": args.poll, "read": args.read})
    worker_kw = runner_kw(args.runner)
    async with temporal_server() as (client, _):
        bare_queue = f"bench-bare-{uuid.uuid4().hex[:8]}"
        engine_kw = json.loads(args.engine_kw)
        async with engine_env(client, args.db, engine_kw=engine_kw, **worker_kw) as (queue, base, env), Worker(
                client, task_queue=bare_queue, workflows=[BareGovernedWorkflow], activities=BARE_ACTIVITIES,
                **worker_kw):
            watchers = ([ReadModelWatcher(engine_read(env.sessionmaker)), ReadModelWatcher(_bare_read)]
                        if args.read == "read-model" else [None, None])
            journey = engine_journey_factory(base, waiter(watchers[0]))
            bare_journey = bare_journey_factory(waiter(watchers[1]))
            # Warm-up: imports, sandbox module cache, connections, JIT-free but cache-hot paths.
            # Sequential, so the first journey creates the catalog model before concurrent ones run.
            await bounded_gather(2, 1, lambda i: journey(client, queue, 10_000_000 + i))
            await bounded_gather(2, 1, lambda i: bare_journey(client, bare_queue, i))
            timer = Timer()
            for r in range(args.rounds):
                if args.profile != "engine":
                    await timer.run("bare", args.count, args.concurrency, lambda i: bare_journey(client, bare_queue, i))
                await timer.run("engine", args.count, args.concurrency,
                                lambda i, r=r: journey(client, queue, r * args.count + i))  # type: ignore[misc]
            for watcher in watchers:
                if watcher is not None:
                    await watcher.close()
    n = args.count * args.rounds
    if args.profile == "engine":
        for table in (timer.wall, timer.cpu, timer.server_cpu):
            table["bare"] = table["engine"]
    engine_rate, bare_rate = n / timer.wall["engine"], n / timer.wall["bare"]
    rates, servers = timer.spread()

    def span(values: list[float]) -> str:
        return f"per round {min(values):.2f}x..{max(values):.2f}x ({len(values)} rounds)" if values else ""

    report.add("progressions/s (full credit journey)", engine_rate, "/s", baseline=bare_rate,
               goal=f"ratio >= {GOAL_THROUGHPUT:g}", met=engine_rate / bare_rate >= GOAL_THROUGHPUT,
               note="baseline: bare workflow, same activities/Updates/timers, no-op activities; " + span(rates))
    report.add("mean journey time at this concurrency", timer.wall["engine"] / n * args.concurrency,
               "s", baseline=timer.wall["bare"] / n * args.concurrency)
    report.add("CPU per journey, worker + driver process", timer.cpu["engine"] / n * 1000, "ms",
               baseline=timer.cpu["bare"] / n * 1000, note="time.process_time() of this process")
    server_ratio = timer.server_cpu["engine"] / timer.server_cpu["bare"] if timer.server_cpu["bare"] else 0.0
    report.add("CPU per journey, Temporal dev server", timer.server_cpu["engine"] / n * 1000, "ms",
               baseline=timer.server_cpu["bare"] / n * 1000, goal=f"ratio <= {GOAL_SERVER_CPU:g}",
               met=server_ratio <= GOAL_SERVER_CPU, note="/proc/<pid>/stat of the dev server; " + span(servers))
    return report


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], db=True)
    p.add_argument("--count", type=int, default=100, help="progressions per round and kind")
    p.add_argument("--concurrency", type=int, default=16, help="journeys in flight")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (bare, engine)")
    p.add_argument("--poll", type=float, default=POLL, help="seconds between the driver's reads")
    p.add_argument("--read", choices=["read-model", "query"], default="read-model",
                   help="where the driver reads each journey's progress: each app's read model (as its users "
                        "do), or a query to each workflow (earlier measurements)")
    p.add_argument("--engine-kw", default="{}", help="JSON keyword arguments for the worker's database engine, "
                                                    "over the product worker's")
    p.add_argument("--runner", choices=["default", "passthrough-all", "unsandboxed"], default="default",
                   help="workflow runner of both workers (tuning experiments)")
    p.add_argument("--profile", choices=["engine"], help="run only the engine (to attach a profiler)")
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
