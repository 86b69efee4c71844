"""Crash, restart and outage harness: every audit event exactly as expected, whatever fails.

    python -m reliability.crash_harness --progressions 1000 [--seed 7] [--output FILE]

It runs the production topology as separate processes on loopback: the Temporal dev server on a
database file (its own ports), a private PostgreSQL cluster the harness creates (``initdb`` in a
temporary directory, its own port) reached through a TCP proxy the harness owns, the API
(``reliability.harness_api``: ``launch.serve api``) and the workers (``reliability.harness_worker``:
``launch.serve worker`` with test-only knobs). Several people drive N progressions over HTTP through
seven scripted lifecycles (approvals to production, a rejection, a change request answered with new
evidence, a withdrawal, new evidence at an open gate, a stage blocked until its evidence arrives),
with segregation-of-duties refusals and stale decisions mixed in, while faults are fired one after
another, each kind at least once:

- ``worker_kill``: SIGKILL of every worker (restarted at once), aimed at a phase that is *observed*
  in progress: ``checks`` (Temporal shows ``evaluate_checks`` started on a worker), ``deployment``
  (``deploy`` started), ``decision`` (a decision request in flight, its decision not yet recorded);
- ``api_kill``: SIGKILL of the API while a request is in flight (restarted at once);
- ``temporal_sigkill`` / ``temporal_sigterm``: the dev server stopped so and started again on the
  same database file;
- ``postgres_crash``: SIGKILL of the private cluster's postmaster (and of every backend), then a
  restart on the same data directory (crash recovery);
- ``db_outage``: the proxy cuts every database connection and refuses new ones for a while.

Clients retry after errors and timeouts with the SAME ``Idempotency-Key``. The verdict, per
progression: the audit trail against the exact multiset of events its lifecycle must leave
(``reliability.expected_events``: lost, duplicated, unexpected), the read model and Temporal's own
view of the workflow (status of every run, state, nothing pending), each acknowledged decision once
in the decisions table, each refusal with the code scripted; then the audit chain verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from engine.db import make_engine, make_sessionmaker
from engine.settings import PROJECT_ROOT
from reliability import expected_events as model
from reliability.db_proxy import TcpProxy
from reliability.pg_cluster import PgCluster
from testing.databases import prepare_database_with_people
from testing.polling import NeverHappened, eventually
from testing.processes import ProcessDied, Processes, ProductStack, TemporalPorts, free_port, temporal_dev_server_args
from workflows.contract import SEARCH_ATTRIBUTES, connect

EXAMPLES = PROJECT_ROOT / "examples"
FAULT_KINDS = ("worker_kill", "api_kill", "temporal_sigkill", "temporal_sigterm", "postgres_crash", "db_outage")
KILL_PHASES = ("checks", "decision", "deployment")

# (username, roles, team). Developers own the examples' teams; two risk officers for the credit quorum;
# tess is a validator who sits in the team that owns the credit model (a same-team decider).
PEOPLE: list[tuple[str, list[str], str]] = [
    ("dana", ["model_developer"], "retail-risk"),
    ("frank", ["model_developer"], "payments-fraud"),
    ("mia", ["model_developer"], "marketing-analytics"),
    ("victor", ["model_validator"], "model-validation"),
    ("vanessa", ["model_validator"], "model-validation"),
    ("tess", ["model_validator"], "retail-risk"),
    ("rita", ["model_risk_officer"], "model-risk"),
    ("omar", ["model_risk_officer"], "model-risk"),
]

# script -> (example repository, developer, final status)
SCRIPTS: dict[str, tuple[str, str, str]] = {
    "credit_approve": ("retail-credit-scorecard", "dana", "in_production"),
    "credit_reject": ("retail-credit-scorecard", "dana", "rejected"),
    "credit_new_evidence": ("retail-credit-scorecard", "dana", "in_production"),
    "credit_blocked_staging": ("retail-credit-scorecard", "dana", "in_production"),
    "fraud_approve": ("card-fraud-detector", "frank", "in_production"),
    "marketing_changes": ("marketing-propensity", "mia", "in_production"),
    "marketing_withdraw": ("marketing-propensity", "mia", "withdrawn"),
}
# A monitoring plan that fails the staging check (too short, no PSI trigger): the stage blocks until the
# real one is uploaded.
WEAK_MONITORING_PLAN = b"# Monitoring plan\n\nTo be written.\n"


@dataclass
class HarnessConfig:
    progressions: int = 100
    seed: int = 7
    concurrency: int = 12  # above ~14 requests in flight the API exhausts its connection pool (RELIABILITY.md)
    workers: int = 2
    worker_kills: int | None = None  # None: scaled to the number of progressions
    api_kills: int | None = None
    temporal_sigkills: int | None = None
    temporal_sigterms: int | None = None
    postgres_crashes: int | None = None
    db_outages: int | None = None
    outage_seconds: float = 8.0
    request_timeout: float = 15.0
    poll_seconds: float = 0.7
    activity_delay: float = 0.6  # harness worker: evaluate_checks and deploy take this much longer
    stale_after: float = 20.0  # harness API: an orphaned Idempotency-Key is taken over after this
    phase_wait_seconds: float = 90.0  # how long a phase-aimed kill waits to observe its phase
    mutation: str | None = None  # a bug injected in the harness worker (see reliability.harness_worker)
    deadline_seconds: float | None = None  # the whole run; None: scaled to the number of progressions
    # No new progression is started after this many seconds of traffic; those started finish and are judged.
    time_budget_seconds: float | None = None
    workdir: Path | None = None
    output: Path | None = None
    keep: bool = False
    quiet: bool = False

    def fault_counts(self) -> dict[str, int]:
        n = self.progressions

        def pick(value: int | None, default: int) -> int:
            return value if value is not None else default

        return {
            "worker_kill": pick(self.worker_kills, max(3, n // 40)),
            "api_kill": pick(self.api_kills, max(1, n // 100)),
            "temporal_sigkill": pick(self.temporal_sigkills, max(1, n // 200)),
            "temporal_sigterm": pick(self.temporal_sigterms, max(1, n // 200)),
            "postgres_crash": pick(self.postgres_crashes, max(1, n // 200)),
            "db_outage": pick(self.db_outages, max(1, n // 200)),
        }

    @property
    def deadline(self) -> float:
        return self.deadline_seconds if self.deadline_seconds is not None else 600.0 + 6.0 * self.progressions


@dataclass
class Fault:
    kind: str
    at: float  # seconds since the traffic started
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Acknowledged:
    """One progression: its script, the steps the clients saw done (2xx or the scripted refusal)."""

    script: str
    expected: str
    pid: str = ""
    started: bool = False
    steps: list[model.Step] = field(default_factory=list)
    decisions: list[dict[str, str]] = field(default_factory=list)  # decision_id, stage, decision, who
    evidence_requests: list[str] = field(default_factory=list)
    withdraw_requests: list[str] = field(default_factory=list)
    refusals_wrong: list[str] = field(default_factory=list)  # a refusal that came with another code
    final_status: str | None = None
    error: str | None = None
    skipped: bool = False  # not started: the run's time budget was spent


class HarnessError(RuntimeError):
    pass


def _log(cfg: HarnessConfig, message: str) -> None:
    if not cfg.quiet:
        print(f"[harness {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the system under test ---------------------------------------------------------------------


class Stack:
    """Temporal dev server, a private PostgreSQL behind a proxy, the API and the workers, as processes.

    The processes are ``testing.processes``' (a new session each, so a terminal's Ctrl-C reaches only
    the harness, which then stops them); the API and workers are the product's behind the harness's knobs.
    """

    def __init__(self, cfg: HarnessConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.procs = Processes(self.logs, new_session=True)
        self.temporal_ports = TemporalPorts()
        self.db_name = "progression"
        self.pg = PgCluster(free_port())
        self.pg_host, self.pg_port, self.pg_user = "127.0.0.1", self.pg.port, self.pg.user
        self.proxy = TcpProxy(self.pg_host, self.pg_port)
        self.product = ProductStack(  # database_url is set again by start_proxy, once the proxy has its port
            self.procs, self.proxied_url, self.temporal_address, workdir / "data", f"crash-{secrets.token_hex(4)}",
            settings={"PROGRESSION_ENV": "production", "PROGRESSION_SECRET_KEY": "crash-harness-" + "k" * 40},
            api_command=("reliability.harness_api",), worker_command=("reliability.harness_worker",),
            drop_prefixes=("CRASH_HARNESS_",), extra_env=self.knobs)
        self.worker_names: list[str] = []
        # Held while a fault kills and restarts processes, so the supervisor does not restart them too.
        self.restart_lock = asyncio.Lock()
        self.supervisor_restarts = Counter[str]()

    async def start_proxy(self) -> None:
        """Listen in front of PostgreSQL; the API and workers connect through it (its port is known now)."""
        await self.proxy.start()
        self.product.database_url = self.proxied_url

    @property
    def temporal_address(self) -> str:
        return self.temporal_ports.address

    @property
    def task_queue(self) -> str:
        return self.product.task_queue

    @property
    def direct_url(self) -> str:
        return f"postgresql+psycopg://{self.pg_user}@{self.pg_host}:{self.pg_port}/{self.db_name}"

    @property
    def proxied_url(self) -> str:
        return f"postgresql+psycopg://{self.pg_user}@127.0.0.1:{self.proxy.port}/{self.db_name}"

    @property
    def base_url(self) -> str:
        return self.product.base_url

    def knobs(self) -> dict[str, str]:
        knobs = {
            "CRASH_HARNESS_ACTIVITY_DELAY": str(self.cfg.activity_delay),
            "CRASH_HARNESS_STALE_AFTER": str(self.cfg.stale_after),
        }
        if self.cfg.mutation:
            knobs["CRASH_HARNESS_MUTATION"] = self.cfg.mutation
        return knobs

    # -- Temporal

    def start_temporal(self) -> None:
        args = temporal_dev_server_args(self.temporal_ports, self.workdir / "temporal.db", SEARCH_ATTRIBUTES)
        self.procs.start("temporal", args, self.product.env())

    async def wait_temporal(self, timeout: float = 90.0) -> None:
        async def answers() -> bool:
            try:
                await connect(self.temporal_address, "default")
                return True
            except Exception:
                return False

        await eventually(answers, "the Temporal dev server answering", timeout=timeout,
                         alive=lambda: self.procs.assert_alive("temporal"), max_interval=0.3)

    async def restart_temporal(self, sig: signal.Signals) -> dict[str, Any]:
        """Stop the dev server with ``sig`` and start it again on the same database file."""
        began = time.monotonic()
        code, forced = await asyncio.to_thread(self.procs.stop, "temporal", sig, 30.0)
        self.start_temporal()
        await self.wait_temporal()
        return {"signal": sig.name, "exit_code": code, "escalated_to_sigkill": forced,
                "downtime_s": round(time.monotonic() - began, 2)}

    # -- PostgreSQL

    def create_database(self) -> None:
        self.pg.init()
        self.pg.start()
        with psycopg.connect(self.pg.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')

    async def crash_postgres(self) -> dict[str, Any]:
        began = time.monotonic()
        killed = await asyncio.to_thread(self.pg.crash)
        await asyncio.to_thread(self.pg.start)
        return {**killed, "downtime_s": round(time.monotonic() - began, 2)}

    # -- API and workers

    def start_api(self) -> None:
        self.product.start_api()

    async def kill_api(self) -> float:
        began = time.monotonic()
        async with self.restart_lock:
            await asyncio.to_thread(self.procs.kill, "api")
            self.start_api()
        await self.wait_api()
        return time.monotonic() - began

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart an API or worker process that exited on its own, as a container restart policy does
        (e.g. a worker started while Temporal was down exits: it does not retry its first connection)."""
        while not stop.is_set():
            await asyncio.sleep(1.0)
            async with self.restart_lock:
                for index, name in [(-1, "api"), *enumerate(self.worker_names)]:
                    proc = self.procs.running.get(name)
                    if proc is not None and proc.poll() is not None:
                        kind = "api" if index < 0 else "worker"
                        self.supervisor_restarts[f"{kind} (exit {proc.returncode})"] += 1
                        if index < 0:
                            self.start_api()
                        else:
                            self.start_worker(index)

    def start_worker(self, index: int) -> None:
        name = f"worker{index}"
        self.product.start_worker(name)
        if index >= len(self.worker_names):
            self.worker_names.append(name)

    async def kill_workers(self, indexes: list[int]) -> None:
        async with self.restart_lock:
            for i in indexes:
                await asyncio.to_thread(self.procs.kill, self.worker_names[i])
            for i in indexes:
                self.start_worker(i)

    def assert_alive(self) -> None:
        if self.pg.proc is not None and self.pg.proc.poll() is not None:
            raise HarnessError(f"postgres exited with {self.pg.proc.returncode}; see {self.logs}")
        try:
            self.procs.assert_alive()
        except ProcessDied as died:
            raise HarnessError(str(died)) from None

    async def wait_api(self, timeout: float = 120.0) -> None:
        try:
            await self.product.wait_ready("api", timeout=timeout)
        except (ProcessDied, NeverHappened) as failed:
            raise HarnessError(str(failed)) from None

    def stop(self) -> None:
        self.procs.stop_all()
        self.pg.stop()


async def seed(stack: Stack) -> tuple[dict[str, str], dict[str, str]]:
    """Migrate, seed the feature catalog and the people (direct connection). Returns tokens and user ids."""
    return await prepare_database_with_people(stack.direct_url,
                                              {name: (roles, team) for name, roles, team in PEOPLE})


# ---- faults --------------------------------------------------------------------------------------


@dataclass
class PlannedFault:
    kind: str
    arm_at_started: int  # armed once this many progressions have been started
    phase: str | None = None


@dataclass
class Trigger:
    """Traffic reached a point where a phase may be happening: a request just sent for ``pid``."""

    phase: str
    pid: str
    inflight: asyncio.Future[Any] | None = None
    decision_id: str | None = None


class Chaos:
    """Fires the planned faults one after another while traffic flows; records each."""

    def __init__(self, cfg: HarnessConfig, stack: Stack, rng: random.Random) -> None:
        self.cfg, self.stack, self.rng = cfg, stack, rng
        counts = cfg.fault_counts()
        # One of each kind first (so a run that ends early still had every kind), the rest shuffled.
        first = [k for k in FAULT_KINDS if counts[k]]
        rest = [k for k in FAULT_KINDS for _ in range(counts[k] - 1)]
        rng.shuffle(first)
        rng.shuffle(rest)
        kinds = first + rest
        n = cfg.progressions
        # Spread arming points over the first 85% of starts, so faults hit traffic, not an idle system.
        arms = sorted(rng.randint(1, max(1, int(n * 0.85))) for _ in kinds)
        phases = [KILL_PHASES[i % len(KILL_PHASES)] for i in range(counts["worker_kill"])]
        rng.shuffle(phases)
        self.plan: list[PlannedFault] = []
        for kind, arm in zip(kinds, arms, strict=True):
            fault = PlannedFault(kind=kind, arm_at_started=arm)
            if kind == "worker_kill":
                fault.phase = phases.pop()
            self.plan.append(fault)
        self.faults: list[Fault] = []
        self.started = 0
        self.t0 = time.monotonic()
        self._waiting: str | None = None
        self._triggers: asyncio.Queue[Trigger] | None = None
        self.temporal_client: Any = None

    def trigger(self, phase: str, pid: str, inflight: asyncio.Future[Any] | None = None,
                decision_id: str | None = None) -> None:
        """Traffic reached a point where ``phase`` may be happening (non-blocking)."""
        if self._waiting == phase and self._triggers is not None:
            self._triggers.put_nowait(Trigger(phase, pid, inflight, decision_id))

    async def run(self, traffic_done: asyncio.Event) -> None:
        for planned in self.plan:
            while self.started < planned.arm_at_started and not traffic_done.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # a counter bumped by many scripts: polling is simplest
            if traffic_done.is_set():
                break
            try:
                await self._fire(planned)
            except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported
                self.faults.append(Fault(kind=planned.kind, at=round(time.monotonic() - self.t0, 2),
                                         detail={"error": f"{type(exc).__name__}: {exc}"}))
                _log(self.cfg, f"fault {planned.kind} failed: {exc}")
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))  # let the system breathe between faults

    async def _fire(self, planned: PlannedFault) -> None:
        at = time.monotonic() - self.t0
        detail: dict[str, Any]
        if planned.kind == "worker_kill":
            assert planned.phase is not None
            detail = await self._kill_workers_at(planned.phase)
        elif planned.kind == "api_kill":
            detail = await self._kill_api_in_flight()
        elif planned.kind in ("temporal_sigkill", "temporal_sigterm"):
            sig = signal.SIGKILL if planned.kind == "temporal_sigkill" else signal.SIGTERM
            _log(self.cfg, f"fault: restarting Temporal ({sig.name})")
            detail = await self.stack.restart_temporal(sig)
            self.temporal_client = None
        elif planned.kind == "postgres_crash":
            _log(self.cfg, "fault: PostgreSQL crash (SIGKILL) and restart")
            detail = await self.stack.crash_postgres()
        else:
            _log(self.cfg, f"fault: database away for {self.cfg.outage_seconds:.0f}s")
            cut = len(self.stack.proxy._writers) // 2
            await self.stack.proxy.outage(self.cfg.outage_seconds)
            detail = {"seconds": self.cfg.outage_seconds, "connections_cut": cut}
        self.faults.append(Fault(kind=planned.kind, at=round(at, 2), detail=detail))

    async def _next_trigger(self, phase: str, until: float) -> Trigger | None:
        assert self._triggers is not None
        try:
            return await asyncio.wait_for(self._triggers.get(), max(0.01, until - time.monotonic()))
        except TimeoutError:
            return None

    async def _watch(self, phase: str, observe: Callable[[Trigger], Any], window: float) -> tuple[Trigger | None, Any]:
        """Wait for triggers of ``phase``; for each, poll ``observe`` for ``window`` seconds until it sees
        the phase in progress. Returns the trigger and what was observed, or (None, None)."""
        self._triggers = asyncio.Queue()
        self._waiting = phase
        until = time.monotonic() + self.cfg.phase_wait_seconds
        try:
            while time.monotonic() < until:
                trig = await self._next_trigger(phase, until)
                if trig is None:
                    break
                self._waiting = None  # one candidate at a time
                stop = time.monotonic() + window
                while time.monotonic() < stop:
                    seen = await observe(trig)
                    if seen:
                        return trig, seen
                    if trig.inflight is not None and trig.inflight.done() and phase != "checks":
                        break
                    await asyncio.sleep(0.05)
                self._triggers = asyncio.Queue()
                self._waiting = phase
            return None, None
        finally:
            self._waiting = None

    async def _client(self) -> Any:
        if self.temporal_client is None:
            self.temporal_client = await connect(self.stack.temporal_address, "default")
        return self.temporal_client

    async def _activity_started(self, pid: str, activity_type: str) -> bool:
        """Temporal's view: ``activity_type`` of ``pid`` is started on a worker and not finished."""
        from temporalio.api.enums.v1 import PendingActivityState

        started = PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        try:
            client = await self._client()
            desc = await client.get_workflow_handle(pid).describe(rpc_timeout=timedelta(seconds=3))
        except Exception:  # noqa: BLE001 - not started yet, or Temporal restarting: not observed
            return False
        return any(a.activity_type.name == activity_type and a.state == started
                   for a in desc.raw_description.pending_activities)

    async def _decision_in_flight(self, trig: Trigger) -> bool:
        if trig.inflight is None or trig.inflight.done():
            return False
        return not await _decision_recorded(self.stack, trig.decision_id)

    async def _kill_workers_at(self, phase: str) -> dict[str, Any]:
        observe: dict[str, Callable[[Trigger], Any]] = {
            "checks": lambda t: self._activity_started(t.pid, "evaluate_checks"),
            "deployment": lambda t: self._activity_started(t.pid, "deploy"),
            "decision": self._decision_in_flight,
        }
        window = {"checks": 6.0, "deployment": 10.0, "decision": 10.0}[phase]
        trig, seen = await self._watch(phase, observe[phase], window)
        victims = list(range(len(self.stack.worker_names)))
        # Re-check just before the kill: the phase is still in progress when the workers die.
        hit = bool(seen) and trig is not None and bool(await observe[phase](trig))
        _log(self.cfg, f"fault: SIGKILL workers {victims} at phase {phase} "
                       f"({trig.pid if trig else 'not observed'}; {'hit' if hit else 'missed'})")
        status = await _read_model_status(self.stack, trig.pid if trig else None)
        await self.stack.kill_workers(victims)
        return {"phase": phase, "hit": hit, "progression": trig.pid if trig else None,
                "read_model_at_kill": status, "workers_killed": len(victims)}

    async def _kill_api_in_flight(self) -> dict[str, Any]:
        async def in_flight(t: Trigger) -> bool:
            return t.inflight is not None and not t.inflight.done()

        trig, seen = await self._watch("request", in_flight, 2.0)
        hit = bool(seen) and trig is not None and await in_flight(trig)
        _log(self.cfg, f"fault: SIGKILL API ({trig.pid if trig else 'no request observed'}; "
                       f"{'hit' if hit else 'missed'})")
        downtime = await self.stack.kill_api()
        return {"phase": "request", "hit": hit, "progression": trig.pid if trig else None,
                "downtime_s": round(downtime, 2)}


async def _pg(stack: Stack) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        f"host={stack.pg_host} port={stack.pg_port} user={stack.pg_user} dbname={stack.db_name}", connect_timeout=3)


async def _decision_recorded(stack: Stack, decision_id: str | None) -> bool:
    if decision_id is None:
        return True
    try:
        async with await _pg(stack) as conn:
            cur = await conn.execute("SELECT 1 FROM decisions WHERE id = %s", (decision_id,))
            return await cur.fetchone() is not None
    except psycopg.Error:
        return True  # cannot tell: do not count it as observed


async def _read_model_status(stack: Stack, pid: str | None) -> str | None:
    if pid is None:
        return None
    try:
        async with await _pg(stack) as conn:
            cur = await conn.execute("SELECT status, current_stage FROM progressions WHERE id = %s", (pid,))
            row = await cur.fetchone()
        return f"{row[0]}@{row[1]}" if row else "not yet registered"
    except psycopg.Error:
        return None


# ---- traffic ---------------------------------------------------------------------------------------


class Client:
    """HTTP with retries: the same Idempotency-Key after an error or a timeout."""

    def __init__(self, cfg: HarnessConfig, stack: Stack, tokens: dict[str, str], user_ids: dict[str, str],
                 deadline: float) -> None:
        self.cfg = cfg
        self.http = httpx.AsyncClient(base_url=stack.base_url, timeout=cfg.request_timeout,
                                      limits=httpx.Limits(max_connections=cfg.concurrency * 2 + 10))
        self.tokens, self.user_ids, self.deadline = tokens, user_ids, deadline
        self.retries = Counter[str]()

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def post(self, who: str, path: str, *, key: str, ok: tuple[int, ...] = (200, 201),
                   on_send: Callable[[asyncio.Future[Any]], None] | None = None,
                   **kw: Any) -> tuple[int, dict[str, Any]]:
        backoff = 0.3
        first = True
        while True:
            if time.monotonic() > self.deadline:
                raise HarnessError(f"POST {path} by {who} never succeeded before the deadline")
            request = asyncio.ensure_future(
                self.http.post(path, headers={**self.auth(who), "Idempotency-Key": key}, **kw))
            if on_send is not None and first:
                on_send(request)
            first = False
            try:
                response = await request
            except httpx.TransportError as exc:
                self.retries[type(exc).__name__] += 1
            else:
                code = _code(response)
                if response.status_code >= 500 or code == "idempotency_in_flight":
                    # Checked first: a 409 "still in flight" is never an answer, even where a 409 refusal is.
                    self.retries[f"{response.status_code} {code}"] += 1
                elif response.status_code in ok:
                    return response.status_code, dict(response.json())
                else:
                    raise HarnessError(f"POST {path} by {who}: {response.status_code} {response.text[:400]}")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 1.6, 4.0)

    async def state(self, who: str, pid: str) -> dict[str, Any]:
        while True:
            if time.monotonic() > self.deadline:
                raise HarnessError(f"GET {pid} never answered before the deadline")
            try:
                response = await self.http.get(f"/api/v1/progressions/{pid}", headers=self.auth(who))
                if response.status_code == 200:
                    return dict(response.json())
                self.retries[f"GET {response.status_code}"] += 1
            except httpx.TransportError as exc:
                self.retries[f"GET {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)

    async def wait(self, who: str, pid: str, predicate: Callable[[dict[str, Any]], bool],
                   what: str) -> dict[str, Any]:
        state: dict[str, Any] = {}
        while time.monotonic() < self.deadline:
            state = await self.state(who, pid)
            if predicate(state):
                return state
            if state.get("status") in ("rejected", "withdrawn"):
                raise HarnessError(f"{pid} is {state.get('status')} while waiting for {what}")
            await asyncio.sleep(self.cfg.poll_seconds)
        raise HarnessError(f"{pid} never reached {what}; last {state.get('status')}@{state.get('current_stage')}")

    def decision_id(self, who: str, key: str) -> str:
        """The dedup id the API derives from (user, key): what the decisions table is keyed by."""
        from api.authz import Principal
        from api.idempotency import decision_id_for
        from engine.db import User

        return decision_id_for(Principal(user=User(id=self.user_ids[who])), key, "")


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("code", ""))
    except ValueError:
        return ""


def _stage(state: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in state.get("stages", []) if s["name"] == name), None)


def gate(stage: str, attempt: int = 1) -> Callable[[dict[str, Any]], bool]:
    def ready(state: dict[str, Any]) -> bool:
        current = _stage(state, stage)
        return (state.get("status") == "awaiting_approval" and state.get("current_stage") == stage
                and current is not None and current.get("attempt", 1) >= attempt)
    return ready


def blocked_at(stage: str) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state.get("status") == "blocked" and state.get("current_stage") == stage


def status_is(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state.get("status") == status


def gate_basis(state: dict[str, Any] | None, stage: str) -> Any:
    """The evidence basis the open gate offers, when the API exposes one (decisions then carry it)."""
    if not state:
        return None
    current = _stage(state, stage) or {}
    for holder in (current, current.get("gate") or {}, state.get("gate") or {}, state):
        if isinstance(holder, dict) and holder.get("basis") is not None:
            return holder["basis"]
    return None


class Traffic:
    def __init__(self, cfg: HarnessConfig, client: Client, chaos: Chaos, rng: random.Random, run_id: str) -> None:
        self.cfg, self.client, self.chaos, self.rng, self.run_id = cfg, client, chaos, rng, run_id
        self.repos = {name: _read_example(EXAMPLES / name) for name in {s[0] for s in SCRIPTS.values()}}

    def plan(self) -> list[Acknowledged]:
        names = list(SCRIPTS)
        scripts = [names[i % len(names)] for i in range(self.cfg.progressions)]
        self.rng.shuffle(scripts)
        return [Acknowledged(script=s, expected=SCRIPTS[s][2]) for s in scripts]

    async def run_one(self, index: int, ack: Acknowledged) -> None:
        try:
            await self._script(index, ack)
        except HarnessError as exc:
            ack.error = str(exc)
            _log(self.cfg, f"progression {ack.pid or index} failed: {exc}")

    def _on_send(self, phase: str, pid: str, decision_id: str | None = None) -> Callable[[asyncio.Future[Any]], None]:
        def sent(fut: asyncio.Future[Any]) -> None:
            self.chaos.trigger(phase, pid, fut, decision_id)
            self.chaos.trigger("request", pid, fut, decision_id)
        return sent

    async def _decide(self, ack: Acknowledged, who: str, stage: str, decision: str, *, state: dict[str, Any] | None,
                      role: str | None = None, final: bool = False, comment: str = "",
                      refused: tuple[int, str] | None = None, tag: str = "") -> None:
        """A decision; ``refused`` = (status, code) when the script expects a refusal."""
        key = f"{self.run_id}-{ack.pid}-{stage}-{who}-{decision}{tag}"
        pid = ack.pid
        decision_id = self.client.decision_id(who, key)
        body: dict[str, Any] = {"stage": stage, "decision": decision,
                                "comment": comment or f"{who}: {decision} on {stage}"}
        if (basis := gate_basis(state, stage)) is not None:
            body["basis"] = basis
        if decision == "approve" and state and state.get("prior_rejections"):
            # Versions of one example share its artifact and commit: after a scripted rejection, an
            # approval acknowledges it by name (else 409 prior_rejection_unacknowledged, by design).
            body["comment"] += "; acknowledged earlier rejection(s): " + ", ".join(
                p["progression_id"] for p in state["prior_rejections"])
        ok = (200, 201) if refused is None else (refused[0], 200, 201, 403, 404, 409)
        status, answer = await self.client.post(
            who, f"/api/v1/progressions/{pid}/decisions", key=key, json=body, ok=ok,
            on_send=self._on_send("decision", pid, decision_id))
        if refused is None:
            ack.steps.append(model.Step("decide", stage=stage, decision=decision, role=role))
            ack.decisions.append({"decision_id": decision_id, "stage": stage, "decision": decision, "who": who})
            if final:
                self.chaos.trigger("deployment", pid)
            return
        ack.steps.append(model.Step("refused", stage=stage, code=refused[1]))
        got = (status, str(answer.get("code", "")))
        if got != refused:
            ack.refusals_wrong.append(f"{who} {decision} on {stage}: expected {refused}, got {got}")

    async def _evidence(self, ack: Acknowledged, who: str, name: str, rel: str, data: bytes, tag: str) -> None:
        key = f"{self.run_id}-{ack.pid}-evidence-{tag}"
        await self.client.post(who, f"/api/v1/progressions/{ack.pid}/evidence", key=key,
                               files=[(f"evidence.{name}", (rel, data, "application/octet-stream"))],
                               on_send=self._on_send("checks", ack.pid))
        ack.steps.append(model.Step("evidence", items=(name,)))
        ack.evidence_requests.append(self.client.decision_id(who, key))

    async def _script(self, index: int, ack: Acknowledged) -> None:
        repo, dev, _ = SCRIPTS[ack.script]
        spec, evidence = self.repos[repo]
        evidence = dict(evidence)
        if ack.script == "credit_blocked_staging":
            rel, _good = evidence["monitoring_plan"]
            evidence["monitoring_plan"] = (rel, WEAK_MONITORING_PLAN)
        version = f"{spec['version']['id']}-crash{self.run_id}.{index}"
        text = yaml.safe_dump({**spec, "version": {**spec["version"], "id": version}}, sort_keys=False)
        files = [("spec", ("progression.yaml", text.encode(), "application/yaml"))]
        files += [(f"evidence.{n}", (rel, data, "application/octet-stream")) for n, (rel, data) in evidence.items()]
        ack.pid = f"{spec['model']['id']}@{version}"
        self.chaos.started += 1
        await self.client.post(dev, "/api/v1/progressions", key=f"{self.run_id}-start-{index}", files=files,
                               on_send=self._on_send("checks", ack.pid))
        ack.started = True
        c, pid = self.client, ack.pid
        risk = self.rng.sample(["rita", "omar"], 2)
        validators = self.rng.sample(["victor", "vanessa"], 2)
        validator = validators[0]
        st = await c.wait(dev, pid, gate("validation"), "the validation gate")
        s = ack.script
        if s == "marketing_withdraw":
            key = f"{self.run_id}-withdraw-{index}"
            await c.post(dev, f"/api/v1/progressions/{pid}/withdraw", key=key, json={"reason": "superseded"},
                         on_send=self._on_send("request", pid))
            ack.steps.append(model.Step("withdraw"))
            ack.withdraw_requests.append(c.decision_id(dev, key))
            await c.wait(dev, pid, status_is("withdrawn"), "withdrawn")
            # A stale decision on the withdrawn progression.
            await self._decide(ack, validator, "validation", "approve", state=None, refused=(409, "progression_closed"))
        elif s == "marketing_changes":
            await self._decide(ack, validator, "validation", "request_changes", state=st,
                               comment="add the consent basis")
            await c.wait(dev, pid, status_is("changes_requested"), "changes requested")
            rel, card = evidence["model_card"]
            await self._evidence(ack, dev, "model_card", rel, card + b"\n\nConsent basis: documented opt-in.\n", "card")
            st = await c.wait(dev, pid, gate("validation", attempt=2), "the validation gate, second attempt")
            await self._decide(ack, validator, "validation", "approve", state=st, role="model_validator", final=True)
        elif s == "fraud_approve":
            # The submitter tries to approve: a developer cannot decide on gates.
            await self._decide(ack, dev, "validation", "approve", state=st, refused=(403, "not_a_gate_role"))
            await self._decide(ack, validator, "validation", "approve", state=st, role="model_validator")
            st = await c.wait(dev, pid, gate("risk_review"), "the risk review gate")
            await self._decide(ack, risk[0], "risk_review", "approve", state=st, role="model_risk_officer", final=True)
        else:  # the credit scripts
            # A validator of the team that owns the model tries to approve: segregation of duties.
            await self._decide(ack, "tess", "validation", "approve", state=st, refused=(403, "own_team"))
            if s == "credit_new_evidence":
                rel, metrics = evidence["metrics"]
                await self._evidence(ack, dev, "metrics", rel, metrics + b"\n", "metrics")
                st = await c.wait(dev, pid, gate("validation", attempt=2), "the validation gate, second attempt")
            await self._decide(ack, validator, "validation", "approve", state=st, role="model_validator")
            st = await c.wait(dev, pid, gate("risk_review"), "the risk review gate")
            await self._decide(ack, risk[0], "risk_review", "approve", state=st, role="model_risk_officer")
            # The same officer approves a second time: one person counts once.
            await self._decide(ack, risk[0], "risk_review", "approve", state=st, refused=(409, "already_decided"),
                               tag="-again")
            if s == "credit_reject":
                await self._decide(ack, risk[1], "risk_review", "reject", state=st, comment="outside risk appetite")
                await c.wait(dev, pid, status_is("rejected"), "rejected")
                # A stale decision on the rejected progression.
                await self._decide(ack, validators[1], "risk_review", "approve", state=None,
                                   refused=(409, "progression_closed"))
            elif s == "credit_blocked_staging":
                await self._decide(ack, risk[1], "risk_review", "approve", state=st, role="model_risk_officer")
                await c.wait(dev, pid, blocked_at("staging"), "blocked at staging")
                rel, plan = self.repos[repo][1]["monitoring_plan"]
                await self._evidence(ack, dev, "monitoring_plan", rel, plan, "plan")
                self.chaos.trigger("deployment", pid)
            else:
                await self._decide(ack, risk[1], "risk_review", "approve", state=st, role="model_risk_officer",
                                   final=True)
        final = await c.wait(dev, pid, status_is(ack.expected), ack.expected)
        ack.final_status = final["status"]
        if s in ("credit_approve", "fraud_approve"):
            # A stale decision: the validation gate closed long ago.
            await self._decide(ack, validators[1], "validation", "approve", state=None, refused=(409, "gate_not_open"),
                               tag="-stale")


def _read_example(repo: Path) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    spec = yaml.safe_load((repo / "progression.yaml").read_text())
    return spec, {name: (rel, (repo / rel).read_bytes()) for name, rel in spec["evidence"].items()}


# ---- the verdict -------------------------------------------------------------------------------------


def _routes() -> tuple[dict[str, list[model.StageFacts]], dict[str, bool]]:
    """Route facts and "has revalidation" per script, from the policies the workers load."""
    from engine.checks import builtin_checks
    from engine.loading import PolicyRegistry
    from engine.reads import stage_evidence_reads

    registry = PolicyRegistry.from_dir(PROJECT_ROOT / "policies")
    routes: dict[str, list[model.StageFacts]] = {}
    revalidates: dict[str, bool] = {}
    for script, (repo, _dev, _final) in SCRIPTS.items():
        spec = yaml.safe_load((EXAMPLES / repo / "progression.yaml").read_text())
        loaded = registry.get(spec["model"]["business_intent"])
        assert loaded is not None, spec["model"]["business_intent"]
        policy = loaded.policy
        first = [c["id"] for c in builtin_checks(True)]
        routes[script] = model.route_facts(policy.route_for(spec["target"]), first, stage_evidence_reads)
        revalidates[script] = policy.revalidation_delta is not None
    return routes, revalidates


def expected_trail(ack: Acknowledged, routes: dict[str, list[model.StageFacts]]) -> Any:
    blocked = "staging" if ack.script == "credit_blocked_staging" else None
    return model.expected_events(routes[ack.script], ack.steps, blocked_until_evidence=blocked)


async def temporal_view(stack: Stack, acks: list[Acknowledged], revalidates: dict[str, bool],
                        rows: dict[str, Any]) -> dict[str, Any]:
    """Temporal's own view of every progression: runs, status, state, nothing pending."""
    from temporalio.client import WorkflowExecutionStatus as S

    from engine.lifecycle import ProgressionState
    from workflows.contract import QUERY_STATE

    client = await connect(stack.temporal_address, "default")
    pids = {a.pid for a in acks if a.started}
    runs: dict[str, list[Any]] = {}
    for _ in range(20):  # visibility is eventually consistent
        runs = {}
        async for wf in client.list_workflows(f"TaskQueue = '{stack.task_queue}'"):
            runs.setdefault(wf.id, []).append(wf)
        if pids <= set(runs):
            break
        await asyncio.sleep(1)
    wrong: list[str] = []
    statuses: Counter[str] = Counter()
    chains = 0
    limit = asyncio.Semaphore(8)

    async def one(ack: Acknowledged) -> None:
        nonlocal chains
        mine = runs.get(ack.pid, [])
        open_runs = [r for r in mine if r.status != S.CONTINUED_AS_NEW]
        chains += len(mine) - len(open_runs)
        if len(open_runs) != 1:
            wrong.append(f"{ack.pid}: {len(open_runs)} runs that are not continued-as-new "
                         f"({[r.status.name if r.status else None for r in mine]})")
            return
        want = S.RUNNING if ack.expected == "in_production" and revalidates[ack.script] else S.COMPLETED
        handle = client.get_workflow_handle(ack.pid, result_type=ProgressionState)
        async with limit:
            desc = await handle.describe()
            status = desc.status
            statuses[status.name if status else "?"] += 1
            if status != want:
                wrong.append(f"{ack.pid}: Temporal says {status.name if status else None}, expected {want.name}")
                return
            if status == S.RUNNING:
                pending = [a.activity_type.name for a in desc.raw_description.pending_activities]
                if pending:
                    wrong.append(f"{ack.pid}: activities still pending {pending}")
                state = await handle.query(QUERY_STATE, result_type=ProgressionState)
            else:
                state = await handle.result()
        row = rows.get(ack.pid)
        if state.status.value != ack.expected:
            wrong.append(f"{ack.pid}: workflow state {state.status.value}, expected {ack.expected}")
        if row is None or row.status != state.status.value or row.seq != state.seq:
            wrong.append(f"{ack.pid}: read model {row.status if row else None} seq {row.seq if row else None} "
                         f"!= workflow {state.status.value} seq {state.seq}")

    await asyncio.gather(*(one(a) for a in acks if a.started))
    stray = sorted(set(runs) - pids)
    wrong += [f"{pid}: a workflow no client started" for pid in stray]
    return {"temporal_wrong": len(wrong), "temporal_wrong_items": wrong[:50], "temporal_statuses": dict(statuses),
            "continue_as_new_runs": chains}


async def verify(stack: Stack, acks: list[Acknowledged]) -> dict[str, Any]:
    """Every progression's trail against its expected events, its read model and Temporal's view;
    acknowledged decisions once in the decisions table; the audit chain."""
    from sqlalchemy import select

    from engine.audit import verify_chain
    from engine.db import AuditEvent, DecisionRow, ProgressionRow

    engine = make_engine(stack.direct_url)
    try:
        sessions = make_sessionmaker(engine)
        pids = [a.pid for a in acks if a.pid]
        async with sessions() as session:
            rows = {r.id: r for r in (await session.scalars(
                select(ProgressionRow).where(ProgressionRow.id.in_(pids)))).all()}
            decisions = Counter((await session.scalars(
                select(DecisionRow.id).where(DecisionRow.progression_id.in_(pids)))).all())
            events = (await session.execute(
                select(AuditEvent.progression_id, AuditEvent.event_type, AuditEvent.stage, AuditEvent.payload)
                .where(AuditEvent.progression_id.in_(pids)).order_by(AuditEvent.seq))).all()
            chain = await verify_chain(session)
    finally:
        await engine.dispose()

    trails: dict[str, list[tuple[str, str | None, Any]]] = {}
    received: Counter[str] = Counter()
    for pid, event_type, stage, payload in events:
        trails.setdefault(pid, []).append((event_type, stage, payload))
        if event_type == "decision.received":
            received[str((payload or {}).get("decision_id"))] += 1

    routes, revalidates = _routes()
    lost = duplicated = unexpected = 0
    event_items: list[str] = []
    progressions_with_differences = 0
    expected_total = 0
    wrong_final: list[str] = []
    by_type: dict[str, Counter[str]] = {"lost": Counter(), "duplicated": Counter(), "unexpected": Counter()}
    for ack in acks:
        if not ack.started:
            wrong_final.append(f"{ack.pid or ack.script}: never started ({ack.error})")
            continue
        row = rows.get(ack.pid)
        if row is None or row.status != ack.expected or ack.final_status != ack.expected or ack.error:
            wrong_final.append(f"{ack.pid} ({ack.script}): expected {ack.expected}, read model "
                               f"{row.status if row else None}, API {ack.final_status} ({ack.error})")
        expected = expected_trail(ack, routes)
        expected_total += sum(expected.values())
        diff = model.compare(expected, model.trail_keys(trails.get(ack.pid, [])))
        if not diff.ok:
            progressions_with_differences += 1
        for kind, items in (("lost", diff.lost), ("duplicated", diff.duplicated), ("unexpected", diff.unexpected)):
            for key, n in items:
                by_type[kind][key[0]] += n
                event_items.append(f"{ack.pid} ({ack.script}): {kind} {model.show(key)} x{n}")
        lost += sum(n for _, n in diff.lost)
        duplicated += sum(n for _, n in diff.duplicated)
        unexpected += sum(n for _, n in diff.unexpected)
        for d in ack.decisions:
            what = f"{ack.pid} {d['stage']} {d['decision']} by {d['who']}"
            for count, table_name in ((decisions[d["decision_id"]], "decision row"),
                                      (received[d["decision_id"]], "decision.received")):
                if count != 1:
                    event_items.append(f"{table_name} x{count}: {what}")
                    lost += count == 0
                    duplicated += max(0, count - 1)
    acked = {d["decision_id"] for a in acks for d in a.decisions}
    for decision_id, count in decisions.items():
        if decision_id not in acked:
            unexpected += count
            event_items.append(f"decision row {decision_id} that no client was told about")
    refusals_wrong = [f"{a.pid}: {r}" for a in acks for r in a.refusals_wrong]
    temporal = await temporal_view(stack, acks, revalidates, rows)
    return {
        "lost": lost, "duplicated": duplicated, "unexpected": unexpected,
        "events_expected": expected_total, "events_in_trails": len(events),
        "progressions_with_event_differences": progressions_with_differences,
        "differences_by_event_type": {k: dict(v) for k, v in by_type.items()},
        "event_items": event_items[:60],
        "wrong_final": len(wrong_final), "wrong_final_items": wrong_final[:50],
        "refusals_wrong": len(refusals_wrong), "refusals_wrong_items": refusals_wrong[:50],
        "refusals_expected": sum(1 for a in acks for s in a.steps if s.kind == "refused"),
        "decisions_acknowledged": len(acked), "decision_rows": sum(decisions.values()),
        "decision_received_events": sum(received.values()),
        **temporal,
        "chain_ok": chain.ok, "chain_events_checked": chain.events_checked, "chain_problem": chain.problem,
    }


# ---- the run ------------------------------------------------------------------------------------------


async def run_harness(cfg: HarnessConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    workdir = cfg.workdir or Path(PROJECT_ROOT / ".data" / "reliability" / f"run-{int(time.time())}")
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(cfg, workdir)
    began = time.monotonic()
    run_id = f"{cfg.seed}x{secrets.token_hex(2)}"
    _log(cfg, f"work directory {workdir}; PostgreSQL cluster {stack.pg.root} on port {stack.pg_port}; "
              f"Temporal on {stack.temporal_address}")
    try:
        await asyncio.to_thread(stack.create_database)
        await stack.start_proxy()
        stack.start_temporal()
        await stack.wait_temporal()
        tokens, ids = await seed(stack)
        stack.start_api()
        for i in range(cfg.workers):
            stack.start_worker(i)
        await stack.wait_api()
        _log(cfg, f"stack ready; {cfg.progressions} progressions, faults planned {cfg.fault_counts()}"
                  + (f"; INJECTED BUG {cfg.mutation}" if cfg.mutation else ""))

        deadline = time.monotonic() + cfg.deadline
        client = Client(cfg, stack, tokens, ids, deadline)
        chaos = Chaos(cfg, stack, rng)
        traffic = Traffic(cfg, client, chaos, random.Random(cfg.seed + 1), run_id)
        acks = traffic.plan()
        traffic_done = asyncio.Event()
        chaos_task = asyncio.create_task(chaos.run(traffic_done))
        limit = asyncio.Semaphore(cfg.concurrency)
        done = 0

        async def one(i: int, ack: Acknowledged) -> None:
            nonlocal done
            async with limit:
                if budget_end is not None and time.monotonic() > budget_end:
                    ack.skipped = True
                    return
                await traffic.run_one(i, ack)
            done += 1
            if done % 50 == 0:
                _log(cfg, f"{done}/{cfg.progressions} progressions finished, {len(chaos.faults)} faults so far")

        t_traffic = time.monotonic()
        budget_end = t_traffic + cfg.time_budget_seconds if cfg.time_budget_seconds else None
        supervisor = asyncio.create_task(stack.supervise(traffic_done))
        try:
            await asyncio.gather(*(one(i, a) for i, a in enumerate(acks)))
        finally:
            traffic_done.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(chaos_task, cfg.outage_seconds + 120)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(supervisor, 10)
        traffic_seconds = time.monotonic() - t_traffic
        skipped = [a for a in acks if a.skipped]
        acks = [a for a in acks if not a.skipped]
        if skipped:
            _log(cfg, f"time budget reached: {len(acks)} progressions run, {len(skipped)} not started")
        stack.assert_alive()
        # Let the last activities land (notifications, read model) before judging.
        await asyncio.sleep(3)
        verdict = await verify(stack, acks)
        await client.http.aclose()
        faults_by_kind = Counter(f.kind for f in chaos.faults if "error" not in f.detail)
        hits: dict[str, dict[str, int]] = {}
        for f in chaos.faults:
            if "phase" in f.detail:
                label = f"{f.kind}@{f.detail['phase']}"
                hits.setdefault(label, {"fired": 0, "hit": 0})
                hits[label]["fired"] += 1
                hits[label]["hit"] += bool(f.detail.get("hit"))
        summary: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
                       f"Python {platform.python_version()}",
            "seed": cfg.seed,
            "progressions": len(acks),
            "progressions_planned": cfg.progressions,
            "supervisor_restarts": dict(stack.supervisor_restarts),
            "concurrency": cfg.concurrency,
            "mutation": cfg.mutation,
            "progressions_final_as_scripted": sum(1 for a in acks if a.final_status == a.expected and not a.error),
            "scripts": dict(Counter(a.script for a in acks)),
            "faults_by_kind": {k: faults_by_kind.get(k, 0) for k in FAULT_KINDS},
            "faults_failed": [asdict(f) for f in chaos.faults if "error" in f.detail],
            "phase_hits": hits,
            "faults_planned": cfg.fault_counts(),
            "client_retries": dict(client.retries),
            **verdict,
            "errors": [a.error for a in acks if a.error][:20],
            "traffic_seconds": round(traffic_seconds, 1),
            "duration_seconds": round(time.monotonic() - began, 1),
            "faults": [asdict(f) for f in chaos.faults],
            "workdir": str(workdir),
        }
        return summary
    finally:
        stack.stop()
        await stack.proxy.stop()
        if not cfg.keep:
            stack.pg.remove()


def passed(summary: dict[str, Any]) -> bool:
    return (summary["lost"] == 0 and summary["duplicated"] == 0 and summary["unexpected"] == 0
            and summary["wrong_final"] == 0 and summary["refusals_wrong"] == 0 and summary["temporal_wrong"] == 0
            and summary["chain_ok"] and summary["progressions_final_as_scripted"] == summary["progressions"]
            and not summary["faults_failed"] and all(
                summary["faults_by_kind"][k] >= 1 for k, n in summary["faults_planned"].items() if n))


def table(summary: dict[str, Any]) -> str:
    hits = summary["phase_hits"]
    rows: list[tuple[str, Any]] = [
        ("progressions run",
         f"{summary['progressions']} of {summary['progressions_planned']} (seed {summary['seed']})"),
        ("processes restarted by the supervisor", ", ".join(f"{k} {v}" for k, v in
                                                           summary["supervisor_restarts"].items()) or "-"),
        ("final state as scripted", summary["progressions_final_as_scripted"]),
        *[(f"faults: {k} (fired / planned)", f"{v} / {summary['faults_planned'][k]}")
          for k, v in summary["faults_by_kind"].items()],
        ("kills that hit their phase", ", ".join(f"{k} {v['hit']}/{v['fired']}" for k, v in sorted(hits.items()))
         or "-"),
        ("audit events expected / in trails", f"{summary['events_expected']} / {summary['events_in_trails']}"),
        ("lost / duplicated / unexpected",
         f"{summary['lost']} / {summary['duplicated']} / {summary['unexpected']}"),
        ("refusals expected / with another code", f"{summary['refusals_expected']} / {summary['refusals_wrong']}"),
        ("decisions acknowledged / rows / decision.received",
         f"{summary['decisions_acknowledged']} / {summary['decision_rows']} / {summary['decision_received_events']}"),
        ("Temporal: statuses", ", ".join(f"{k} {v}" for k, v in sorted(summary["temporal_statuses"].items()))),
        ("Temporal: workflows in a wrong state", summary["temporal_wrong"]),
        ("audit chain", f"{'ok' if summary['chain_ok'] else 'BROKEN'} ({summary['chain_events_checked']} events)"),
        ("client retries", sum(summary["client_retries"].values())),
        ("duration", f"{summary['duration_seconds']} s (traffic {summary['traffic_seconds']} s)"),
        ("verdict", "PASS" if passed(summary) else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


async def _run_until_signalled(cfg: HarnessConfig) -> dict[str, Any]:
    """The run; SIGTERM or SIGINT cancels it, so the stack it started is stopped and removed."""
    task = asyncio.ensure_future(run_harness(cfg))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.crash_harness", description=__doc__.splitlines()[0])
    parser.add_argument("--progressions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-kills", type=int)
    parser.add_argument("--api-kills", type=int)
    parser.add_argument("--temporal-sigkills", type=int)
    parser.add_argument("--temporal-sigterms", type=int)
    parser.add_argument("--postgres-crashes", type=int)
    parser.add_argument("--db-outages", type=int)
    parser.add_argument("--outage-seconds", type=float, default=8.0)
    parser.add_argument("--mutation", help="inject a bug in the harness worker (the run must then FAIL)")
    parser.add_argument("--deadline-seconds", type=float)
    parser.add_argument("--time-budget-seconds", type=float,
                        help="start no new progression after this many seconds of traffic (the verdict covers "
                             "those started)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "test-artifacts" / "crash-harness.json")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL cluster afterwards")
    args = parser.parse_args(argv)
    cfg = HarnessConfig(progressions=args.progressions, seed=args.seed, concurrency=args.concurrency,
                        workers=args.workers, worker_kills=args.worker_kills, api_kills=args.api_kills,
                        temporal_sigkills=args.temporal_sigkills, temporal_sigterms=args.temporal_sigterms,
                        postgres_crashes=args.postgres_crashes, db_outages=args.db_outages,
                        outage_seconds=args.outage_seconds, mutation=args.mutation,
                        deadline_seconds=args.deadline_seconds, time_budget_seconds=args.time_budget_seconds,
                        workdir=args.workdir, output=args.output,
                        keep=args.keep)
    summary = asyncio.run(_run_until_signalled(cfg))
    assert cfg.output is not None
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print("\nCrash harness summary\n" + table(summary))
    for key in ("event_items", "wrong_final_items", "refusals_wrong_items", "temporal_wrong_items", "errors",
                "faults_failed"):
        for item in summary[key]:
            print(f"  {key}: {item}")
    print(f"\nwritten to {cfg.output}")
    return 0 if passed(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
