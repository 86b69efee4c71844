"""Crash, restart and outage harness: no decision or audit event is lost or duplicated, whatever fails.

    python -m reliability.crash_harness --progressions 100 [--seed 7] [--output FILE]

It runs the production topology as separate processes on loopback: the Temporal dev server on a
database file (its own ports), the application database on the local PostgreSQL (a fresh
database, reached through a TCP proxy the harness owns so it can take the database away), the
API (``python -m engine.serve api``) and the workers (``python -m engine.serve worker``). Several
people drive N progressions over HTTP through scripted lifecycles (credit approved to production,
credit rejected, fraud approved, marketing sent back for changes then approved, marketing
withdrawn) while faults are injected at seeded random points:

- ``worker_kill``: SIGKILL of the workers (restarted at once), aimed at a phase: ``checks`` (just
  after a start or new evidence), ``decision`` (while a decision is in flight, i.e. between the
  decision and its audit event), ``deployment`` (just after the final approval, while staging
  checks and the deploy run);
- ``temporal_restart``: the dev server stopped (SIGTERM or SIGKILL) and started again on the
  same database file;
- ``db_outage``: every database connection cut and new ones refused for 10 seconds.

Clients retry after errors and timeouts with the SAME ``Idempotency-Key``. At the end, the
ledger of what clients were told (the 200s) is compared with the database: every progression
in its scripted final state, each acknowledged decision exactly once in the decisions table and
once as ``decision.received``, one ``progression.started`` per progression, one terminal event,
one deployment per progression in production, and the audit chain verifies. A summary table is
printed and written as JSON.
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
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict

from engine.lifecycle import SEARCH_ATTRIBUTES
from engine.settings import PROJECT_ROOT
from engine.temporal import connect, temporal_cli_path
from reliability.db_proxy import TcpProxy

PG_ADMIN_DSN = os.environ.get("PROGRESSION_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
EXAMPLES = PROJECT_ROOT / "examples"
FAULT_KINDS = ("worker_kill", "temporal_restart", "db_outage")
KILL_PHASES = ("checks", "decision", "deployment")

# (username, roles, team). Developers own the examples' teams; two risk officers for the credit quorum.
PEOPLE: list[tuple[str, list[str], str]] = [
    ("dana", ["model_developer"], "retail-risk"),
    ("frank", ["model_developer"], "payments-fraud"),
    ("mia", ["model_developer"], "marketing-analytics"),
    ("victor", ["model_validator"], "model-validation"),
    ("vanessa", ["model_validator"], "model-validation"),
    ("rita", ["model_risk_officer"], "model-risk"),
    ("omar", ["model_risk_officer"], "model-risk"),
]

# script -> (example repository, developer, final status)
SCRIPTS: dict[str, tuple[str, str, str]] = {
    "credit_approve": ("retail-credit-scorecard", "dana", "in_production"),
    "credit_reject": ("retail-credit-scorecard", "dana", "rejected"),
    "fraud_approve": ("card-fraud-detector", "frank", "in_production"),
    "marketing_changes": ("marketing-propensity", "mia", "in_production"),
    "marketing_withdraw": ("marketing-propensity", "mia", "withdrawn"),
}
TERMINAL_EVENT = {"in_production": "progression.in_production", "rejected": "progression.rejected",
                  "withdrawn": "progression.withdrawn"}


@dataclass
class HarnessConfig:
    progressions: int = 100
    seed: int = 7
    concurrency: int = 12
    workers: int = 2
    worker_kills: int | None = None  # None: scaled to the number of progressions
    temporal_restarts: int | None = None
    db_outages: int | None = None
    outage_seconds: float = 10.0
    request_timeout: float = 15.0
    deadline_seconds: float = 1200.0  # the whole run, faults and settling included
    workdir: Path | None = None
    output: Path | None = None
    keep: bool = False
    quiet: bool = False

    def fault_counts(self) -> dict[str, int]:
        n = self.progressions
        return {
            "worker_kill": self.worker_kills if self.worker_kills is not None else max(3, n // 6),
            "temporal_restart": self.temporal_restarts if self.temporal_restarts is not None else max(1, n // 33),
            "db_outage": self.db_outages if self.db_outages is not None else max(1, n // 33),
        }


@dataclass
class Fault:
    kind: str
    at: float  # seconds since the traffic started
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Acknowledged:
    """What one progression's clients were told: the 2xx answers, with their dedup ids."""

    script: str
    expected: str
    pid: str = ""
    started: bool = False
    decisions: list[dict[str, str]] = field(default_factory=list)  # decision_id, stage, decision, who
    evidence_requests: list[str] = field(default_factory=list)
    withdraw_requests: list[str] = field(default_factory=list)
    final_status: str | None = None
    error: str | None = None


class HarnessError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log(cfg: HarnessConfig, message: str) -> None:
    if not cfg.quiet:
        print(f"[harness {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the system under test ---------------------------------------------------------------------


class Stack:
    """Temporal dev server, PostgreSQL behind a proxy, the API and the workers, as processes."""

    def __init__(self, cfg: HarnessConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.temporal_port = _free_port()
        self.temporal_http_port = _free_port()
        self.temporal_metrics_port = _free_port()
        self.api_port = _free_port()
        self.task_queue = f"crash-{secrets.token_hex(4)}"
        self.db_name = f"progression_crash_{uuid.uuid4().hex[:10]}"
        admin = conninfo_to_dict(PG_ADMIN_DSN)
        self.pg_host = str(admin.get("host") or "127.0.0.1")
        self.pg_port = int(admin.get("port") or 5432)
        self.pg_user = str(admin.get("user") or "postgres")
        self.proxy = TcpProxy(self.pg_host, self.pg_port)
        self.temporal: subprocess.Popen[bytes] | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._spawned = Counter[str]()

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def direct_url(self) -> str:
        return f"postgresql+psycopg://{self.pg_user}@{self.pg_host}:{self.pg_port}/{self.db_name}"

    @property
    def proxied_url(self) -> str:
        return f"postgresql+psycopg://{self.pg_user}@127.0.0.1:{self.proxy.port}/{self.db_name}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PROGRESSION_")}
        return {
            **base,
            "PROGRESSION_ENV": "production",
            "PROGRESSION_DATABASE_URL": self.proxied_url,
            "PROGRESSION_TEMPORAL_ADDRESS": self.temporal_address,
            "PROGRESSION_TASK_QUEUE": self.task_queue,
            "PROGRESSION_SECRET_KEY": "crash-harness-" + "k" * 40,
            "PROGRESSION_DATA_DIR": str(self.workdir / "data"),
            "PROGRESSION_API_HOST": "127.0.0.1",
            "PROGRESSION_API_PORT": str(self.api_port),
        }

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self._spawned[name] += 1
        log = open(self.logs / f"{name}-{self._spawned[name]}.log", "wb")  # noqa: SIM115 - the child owns it
        try:
            return subprocess.Popen(args, env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                    start_new_session=True)
        finally:
            log.close()

    # -- Temporal

    def start_temporal(self) -> None:
        """Like engine.run.start_embedded_temporal, on our own ports and headless."""
        args = [temporal_cli_path(), "server", "start-dev", "--ip", "127.0.0.1",
                "--port", str(self.temporal_port), "--http-port", str(self.temporal_http_port),
                "--metrics-port", str(self.temporal_metrics_port), "--headless",
                "--db-filename", str(self.workdir / "temporal.db"), "--sqlite-pragma", "journal_mode=wal",
                "--log-level", "error"]
        for name, kind in SEARCH_ATTRIBUTES.items():
            args += ["--search-attribute", f"{name}={kind}"]
        self.temporal = self._spawn("temporal", args)

    async def wait_temporal(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.temporal is not None and self.temporal.poll() is not None:
                raise HarnessError(f"the Temporal dev server exited with {self.temporal.returncode}")
            try:
                await connect(self.temporal_address, "default")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise HarnessError("the Temporal dev server did not answer") from None
                await asyncio.sleep(0.3)

    async def restart_temporal(self, sig: signal.Signals) -> float:
        """Stop the dev server with ``sig`` and start it again on the same database file; the downtime."""
        assert self.temporal is not None
        began = time.monotonic()
        self.temporal.send_signal(sig)
        try:
            await asyncio.to_thread(self.temporal.wait, 30)
        except subprocess.TimeoutExpired:
            self.temporal.kill()
            await asyncio.to_thread(self.temporal.wait)
        self.start_temporal()
        await self.wait_temporal()
        return time.monotonic() - began

    # -- database

    def create_database(self) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')

    def drop_database(self) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    # -- API and workers

    def start_api(self) -> None:
        self.api = self._spawn("api", [sys.executable, "-m", "engine.serve", "api"])

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        proc = self._spawn(f"worker{index}", [sys.executable, "-m", "engine.serve", "worker"])
        if index < len(self.workers):
            self.workers[index] = proc
        else:
            self.workers.append(proc)
        return proc

    async def kill_workers(self, indexes: list[int]) -> None:
        for i in indexes:
            self.workers[i].send_signal(signal.SIGKILL)
        for i in indexes:
            await asyncio.to_thread(self.workers[i].wait)
        for i in indexes:
            self.start_worker(i)

    def assert_alive(self) -> None:
        for name, proc in [("api", self.api), ("temporal", self.temporal), *[(f"worker{i}", w) for i, w in
                                                                             enumerate(self.workers)]]:
            if proc is not None and proc.poll() is not None:
                raise HarnessError(f"{name} exited with {proc.returncode}; see {self.logs}")

    async def wait_api(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as http:
            while True:
                self.assert_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise HarnessError(f"the API did not become ready; see {self.logs}")
                await asyncio.sleep(0.3)

    def stop(self) -> None:
        procs = [p for p in [self.api, *self.workers, self.temporal] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def seed(stack: Stack) -> tuple[dict[str, str], dict[str, str]]:
    """Migrate, seed the feature catalog and the people (direct connection). Returns tokens and user ids."""
    from engine.database import upgrade
    from engine.db import make_engine, make_sessionmaker
    from engine.features import seed_features
    from engine.identity import create_user

    await upgrade(stack.direct_url)
    engine = make_engine(stack.direct_url)
    tokens: dict[str, str] = {}
    ids: dict[str, str] = {}
    try:
        sessions = make_sessionmaker(engine)
        async with sessions() as session:
            await seed_features(session, PROJECT_ROOT / "policies" / "features.yaml")
            for name, roles, team in PEOPLE:
                user, token = await create_user(session, username=name, roles=roles, team=team)
                tokens[name], ids[name] = token, user.id
            await session.commit()
    finally:
        await engine.dispose()
    return tokens, ids


# ---- faults --------------------------------------------------------------------------------------


@dataclass
class PlannedFault:
    kind: str
    arm_at_started: int  # armed once this many progressions have been started
    phase: str | None = None
    signal_name: str | None = None


class Chaos:
    """Fires the planned faults one after another while traffic flows; records each."""

    def __init__(self, cfg: HarnessConfig, stack: Stack, rng: random.Random) -> None:
        self.cfg, self.stack, self.rng = cfg, stack, rng
        counts = cfg.fault_counts()
        kinds = [k for k in FAULT_KINDS for _ in range(counts[k])]
        rng.shuffle(kinds)
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
            if kind == "temporal_restart":
                fault.signal_name = rng.choice(["SIGTERM", "SIGKILL"])
            self.plan.append(fault)
        self.faults: list[Fault] = []
        self.started = 0
        self.t0 = time.monotonic()
        self._waiting_phase: str | None = None
        self._phase_hit: asyncio.Future[dict[str, Any]] | None = None
        self.busy = False

    def trigger(self, phase: str, **context: Any) -> None:
        """Traffic reached a point where ``phase`` is happening (non-blocking)."""
        if self._waiting_phase == phase and self._phase_hit is not None and not self._phase_hit.done():
            self._phase_hit.set_result(context)

    async def run(self, traffic_done: asyncio.Event) -> None:
        for planned in self.plan:
            while self.started < planned.arm_at_started and not traffic_done.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # a counter bumped by many scripts: polling is simplest
            if traffic_done.is_set():
                break
            await self._fire(planned)
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))  # let the system breathe between faults

    async def _fire(self, planned: PlannedFault) -> None:
        at = time.monotonic() - self.t0
        detail: dict[str, Any] = {}
        self.busy = True
        try:
            if planned.kind == "worker_kill":
                assert planned.phase is not None
                detail = await self._kill_at_phase(planned.phase)
            elif planned.kind == "temporal_restart":
                sig = signal.Signals[planned.signal_name or "SIGTERM"]
                _log(self.cfg, f"fault: restarting Temporal ({sig.name})")
                downtime = await self.stack.restart_temporal(sig)
                detail = {"signal": sig.name, "downtime_s": round(downtime, 2)}
            else:
                _log(self.cfg, f"fault: database away for {self.cfg.outage_seconds:.0f}s")
                cut = len(self.stack.proxy._writers) // 2
                await self.stack.proxy.outage(self.cfg.outage_seconds)
                detail = {"seconds": self.cfg.outage_seconds, "connections_cut": cut}
        finally:
            self.busy = False
        self.faults.append(Fault(kind=planned.kind, at=round(at, 2), detail=detail))

    async def _kill_at_phase(self, phase: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self._phase_hit = loop.create_future()
        self._waiting_phase = phase
        try:
            context = await asyncio.wait_for(self._phase_hit, 60)
            aimed = True
        except TimeoutError:
            context, aimed = {}, False  # the phase did not come round: a random moment instead
        finally:
            self._waiting_phase = None
        delays = {"checks": (0.0, 0.15), "decision": (0.01, 0.2), "deployment": (0.05, 0.5)}
        await asyncio.sleep(self.rng.uniform(*delays[phase]))
        inflight: asyncio.Future[Any] | None = context.pop("inflight", None)
        victims = list(range(len(self.stack.workers)))
        status = await _read_model_status(self.stack, context.get("pid"))
        _log(self.cfg, f"fault: SIGKILL workers {victims} at phase {phase} ({context.get('pid', 'random')})")
        await self.stack.kill_workers(victims)
        detail: dict[str, Any] = {"phase": phase if aimed else "random", "progression": context.get("pid"),
                                  "read_model_at_kill": status, "workers_killed": len(victims)}
        if inflight is not None:
            detail["request_in_flight"] = not inflight.done()
        return detail


async def _read_model_status(stack: Stack, pid: str | None) -> str | None:
    if pid is None:
        return None
    try:
        conn = await psycopg.AsyncConnection.connect(
            f"host={stack.pg_host} port={stack.pg_port} user={stack.pg_user} dbname={stack.db_name}",
            connect_timeout=3)
        async with conn:
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
        self.http = httpx.AsyncClient(base_url=stack.base_url, timeout=cfg.request_timeout)
        self.tokens, self.user_ids, self.deadline = tokens, user_ids, deadline
        self.retries = Counter[str]()

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def post(self, who: str, path: str, *, key: str, ok: tuple[int, ...] = (200, 201),
                   on_send: Callable[[asyncio.Future[Any]], None] | None = None, **kw: Any) -> dict[str, Any]:
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
                if response.status_code in ok:
                    return dict(response.json())
                code = _code(response)
                if response.status_code >= 500 or code == "idempotency_in_flight":
                    self.retries[f"{response.status_code} {code}"] += 1
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
            if state.get("status") in ("blocked", "rejected", "withdrawn") and not predicate(state):
                raise HarnessError(f"{pid} is {state.get('status')} while waiting for {what}: {state.get('missing')}")
            await asyncio.sleep(0.3)
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


def gate(stage: str, attempt: int = 1) -> Callable[[dict[str, Any]], bool]:
    def ready(state: dict[str, Any]) -> bool:
        current = next((s for s in state.get("stages", []) if s["name"] == stage), None)
        return (state.get("status") == "awaiting_approval" and state.get("current_stage") == stage
                and current is not None and current.get("attempt", 1) >= attempt)
    return ready


def status_is(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state.get("status") == status


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

    async def _decide(self, ack: Acknowledged, who: str, stage: str, decision: str, *, final: bool = False,
                      comment: str = "") -> dict[str, Any]:
        key = f"{self.run_id}-{ack.pid}-{stage}-{who}-{decision}"
        pid = ack.pid
        body = {"stage": stage, "decision": decision, "comment": comment or f"{who}: {decision} on {stage}"}
        state = await self.client.post(
            who, f"/api/v1/progressions/{pid}/decisions", key=key, json=body,
            on_send=lambda fut: self.chaos.trigger("decision", pid=pid, inflight=fut))
        ack.decisions.append({"decision_id": self.client.decision_id(who, key), "stage": stage, "decision": decision,
                              "who": who})
        if final:
            self.chaos.trigger("deployment", pid=pid)
        return state

    async def _script(self, index: int, ack: Acknowledged) -> None:
        repo, dev, _ = SCRIPTS[ack.script]
        spec, evidence = self.repos[repo]
        version = f"{spec['version']['id']}-crash{self.run_id}.{index}"
        text = yaml.safe_dump({**spec, "version": {**spec["version"], "id": version}}, sort_keys=False)
        files = [("spec", ("progression.yaml", text.encode(), "application/yaml"))]
        files += [(f"evidence.{n}", (rel, data, "application/octet-stream")) for n, (rel, data) in evidence.items()]
        ack.pid = f"{spec['model']['id']}@{version}"
        self.chaos.started += 1
        await self.client.post(dev, "/api/v1/progressions", key=f"{self.run_id}-start-{index}", files=files,
                               on_send=lambda fut: self.chaos.trigger("checks", pid=ack.pid, inflight=fut))
        ack.started = True
        c, pid = self.client, ack.pid
        risk = self.rng.sample(["rita", "omar"], 2)
        validator = self.rng.choice(["victor", "vanessa"])
        await c.wait(dev, pid, gate("validation"), "the validation gate")
        if ack.script == "marketing_withdraw":
            key = f"{self.run_id}-withdraw-{index}"
            await c.post(dev, f"/api/v1/progressions/{pid}/withdraw", key=key, json={"reason": "superseded"})
            ack.withdraw_requests.append(c.decision_id(dev, key))
        elif ack.script == "marketing_changes":
            await self._decide(ack, validator, "validation", "request_changes", comment="add the consent basis")
            await c.wait(dev, pid, status_is("changes_requested"), "changes requested")
            rel, card = evidence["model_card"]
            key = f"{self.run_id}-evidence-{index}"
            await c.post(dev, f"/api/v1/progressions/{pid}/evidence", key=key, files=[
                ("evidence.model_card", (rel, card + b"\n\nConsent basis: documented opt-in.\n",
                                         "application/octet-stream"))],
                on_send=lambda fut: self.chaos.trigger("checks", pid=pid, inflight=fut))
            ack.evidence_requests.append(c.decision_id(dev, key))
            await c.wait(dev, pid, gate("validation", attempt=2), "the validation gate, second attempt")
            await self._decide(ack, validator, "validation", "approve", final=True)
        elif ack.script == "fraud_approve":
            await self._decide(ack, validator, "validation", "approve")
            await c.wait(dev, pid, gate("risk_review"), "the risk review gate")
            await self._decide(ack, risk[0], "risk_review", "approve", final=True)
        else:
            await self._decide(ack, validator, "validation", "approve")
            await c.wait(dev, pid, gate("risk_review"), "the risk review gate")
            await self._decide(ack, risk[0], "risk_review", "approve")
            if ack.script == "credit_reject":
                await self._decide(ack, risk[1], "risk_review", "reject", comment="outside risk appetite")
            else:
                await self._decide(ack, risk[1], "risk_review", "approve", final=True)
        final = await c.wait(dev, pid, status_is(ack.expected), ack.expected)
        ack.final_status = final["status"]


def _read_example(repo: Path) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    spec = yaml.safe_load((repo / "progression.yaml").read_text())
    return spec, {name: (rel, (repo / rel).read_bytes()) for name, rel in spec["evidence"].items()}


# ---- the verdict -------------------------------------------------------------------------------------


async def verify(stack: Stack, acks: list[Acknowledged]) -> dict[str, Any]:
    """Compare what clients were told with the database; verify the audit chain."""
    from sqlalchemy import select

    from engine.audit import verify_chain
    from engine.db import AuditEvent, DecisionRow, ProgressionRow, make_engine, make_sessionmaker

    engine = make_engine(stack.direct_url)
    try:
        sessions = make_sessionmaker(engine)
        pids = [a.pid for a in acks if a.pid]
        async with sessions() as session:
            rows = {r.id: r for r in (await session.scalars(
                select(ProgressionRow).where(ProgressionRow.id.in_(pids)))).all()}
            decisions = Counter((await session.scalars(
                select(DecisionRow.id).where(DecisionRow.progression_id.in_(pids)))).all())
            events = (await session.execute(select(AuditEvent.event_type, AuditEvent.progression_id,
                                                   AuditEvent.payload)
                                            .where(AuditEvent.progression_id.in_(pids)))).all()
            chain = await verify_chain(session)
    finally:
        await engine.dispose()

    per_type: dict[str, Counter[str]] = {}
    by_dedup: dict[str, Counter[str]] = {"decision.received": Counter(), "evidence.submitted": Counter(),
                                         "progression.withdrawn": Counter()}
    dedup_field = {"decision.received": "decision_id", "evidence.submitted": "request_id",
                   "progression.withdrawn": "request_id"}
    for event_type, pid, payload in events:
        per_type.setdefault(event_type, Counter())[pid] += 1
        if event_type in by_dedup:
            by_dedup[event_type][str((payload or {}).get(dedup_field[event_type]))] += 1

    lost: list[str] = []
    duplicated: list[str] = []
    wrong_final: list[str] = []

    def exactly_once(count: int, what: str) -> None:
        if count == 0:
            lost.append(what)
        elif count > 1:
            duplicated.append(f"{what} x{count}")

    acked_decisions = {d["decision_id"] for a in acks for d in a.decisions}
    acked_evidence = {r for a in acks for r in a.evidence_requests}
    acked_withdrawals = {r for a in acks for r in a.withdraw_requests}
    for ack in acks:
        if not ack.started:
            wrong_final.append(f"{ack.pid or ack.script}: never started ({ack.error})")
            continue
        row = rows.get(ack.pid)
        if row is None or row.status != ack.expected or ack.final_status != ack.expected:
            wrong_final.append(f"{ack.pid}: expected {ack.expected}, read model "
                               f"{row.status if row else None}, API {ack.final_status} ({ack.error})")
        exactly_once(per_type.get("progression.started", Counter())[ack.pid], f"{ack.pid} progression.started")
        exactly_once(per_type.get(TERMINAL_EVENT[ack.expected], Counter())[ack.pid],
                     f"{ack.pid} {TERMINAL_EVENT[ack.expected]}")
        deployments = per_type.get("deployment.recorded", Counter())[ack.pid]
        if ack.expected == "in_production":
            exactly_once(deployments, f"{ack.pid} deployment.recorded")
        elif deployments:
            duplicated.append(f"{ack.pid} deployment.recorded x{deployments} (not expected)")
        for d in ack.decisions:
            what = f"{ack.pid} {d['stage']} {d['decision']} by {d['who']}"
            exactly_once(decisions[d["decision_id"]], f"decision row: {what}")
            exactly_once(by_dedup["decision.received"][d["decision_id"]], f"decision.received: {what}")
        for r in ack.evidence_requests:
            exactly_once(by_dedup["evidence.submitted"][r], f"{ack.pid} evidence.submitted {r}")
        for r in ack.withdraw_requests:
            exactly_once(by_dedup["progression.withdrawn"][r], f"{ack.pid} progression.withdrawn {r}")
    # Effects nobody was told about: a decision or event the clients never got a 2xx for.
    duplicated += [f"decision row {d} not acknowledged" for d in decisions if d not in acked_decisions]
    duplicated += [f"decision.received {d} not acknowledged" for d in by_dedup["decision.received"]
                   if d not in acked_decisions]
    duplicated += [f"evidence.submitted {r} not acknowledged" for r in by_dedup["evidence.submitted"]
                   if r not in acked_evidence]
    duplicated += [f"progression.withdrawn {r} not acknowledged" for r in by_dedup["progression.withdrawn"]
                   if r not in acked_withdrawals]
    return {
        "lost": len(lost), "duplicated": len(duplicated), "wrong_final": len(wrong_final),
        "lost_items": lost[:50], "duplicated_items": duplicated[:50], "wrong_final_items": wrong_final[:50],
        "decisions_acknowledged": len(acked_decisions), "decision_rows": sum(decisions.values()),
        "decision_received_events": sum(by_dedup["decision.received"].values()),
        "audit_events": len(events),
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
    _log(cfg, f"work directory {workdir}; database {stack.db_name}; Temporal on {stack.temporal_address}")
    stack.create_database()
    try:
        await stack.proxy.start()
        stack.start_temporal()
        await stack.wait_temporal()
        tokens, ids = await seed(stack)
        stack.start_api()
        for i in range(cfg.workers):
            stack.start_worker(i)
        await stack.wait_api()
        _log(cfg, f"stack ready; {cfg.progressions} progressions, faults planned {cfg.fault_counts()}")

        deadline = time.monotonic() + cfg.deadline_seconds
        client = Client(cfg, stack, tokens, ids, deadline)
        chaos = Chaos(cfg, stack, rng)
        traffic = Traffic(cfg, client, chaos, random.Random(cfg.seed + 1), run_id)
        acks = traffic.plan()
        traffic_done = asyncio.Event()
        chaos_task = asyncio.create_task(chaos.run(traffic_done))
        limit = asyncio.Semaphore(cfg.concurrency)

        async def one(i: int, ack: Acknowledged) -> None:
            async with limit:
                await traffic.run_one(i, ack)

        t_traffic = time.monotonic()
        try:
            await asyncio.gather(*(one(i, a) for i, a in enumerate(acks)))
        finally:
            traffic_done.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(chaos_task, cfg.outage_seconds + 60)
        traffic_seconds = time.monotonic() - t_traffic
        stack.assert_alive()
        # Let the last activities land (notifications, read model) before judging.
        await asyncio.sleep(2)
        verdict = await verify(stack, acks)
        await client.http.aclose()
        faults_by_kind = Counter(f.kind for f in chaos.faults)
        phases = Counter(f.detail.get("phase") for f in chaos.faults if f.kind == "worker_kill")
        summary: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
                       f"Python {platform.python_version()}",
            "seed": cfg.seed,
            "progressions": cfg.progressions,
            "progressions_final_as_scripted": sum(1 for a in acks if a.final_status == a.expected and not a.error),
            "scripts": dict(Counter(a.script for a in acks)),
            "faults_by_kind": {k: faults_by_kind.get(k, 0) for k in FAULT_KINDS},
            "worker_kills_by_phase": dict(phases),
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
            with contextlib.suppress(Exception):
                stack.drop_database()


def passed(summary: dict[str, Any]) -> bool:
    return (summary["lost"] == 0 and summary["duplicated"] == 0 and summary["wrong_final"] == 0
            and summary["chain_ok"] and summary["progressions_final_as_scripted"] == summary["progressions"])


def table(summary: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [
        ("progressions run", summary["progressions"]),
        ("final state as scripted", summary["progressions_final_as_scripted"]),
        *[(f"faults: {k}", v) for k, v in summary["faults_by_kind"].items()],
        ("worker kills by phase", ", ".join(f"{k} {v}" for k, v in sorted(summary["worker_kills_by_phase"].items(),
                                                                          key=lambda kv: str(kv[0]))) or "-"),
        ("decisions acknowledged (2xx)", summary["decisions_acknowledged"]),
        ("decision rows / decision.received", f"{summary['decision_rows']} / {summary['decision_received_events']}"),
        ("lost", summary["lost"]),
        ("duplicated", summary["duplicated"]),
        ("audit chain", f"{'ok' if summary['chain_ok'] else 'BROKEN'} ({summary['chain_events_checked']} events)"),
        ("client retries", sum(summary["client_retries"].values())),
        ("duration", f"{summary['duration_seconds']} s (traffic {summary['traffic_seconds']} s)"),
        ("verdict", "PASS" if passed(summary) else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.crash_harness", description=__doc__.splitlines()[0])
    parser.add_argument("--progressions", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-kills", type=int)
    parser.add_argument("--temporal-restarts", type=int)
    parser.add_argument("--db-outages", type=int)
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "test-artifacts" / "crash-harness.json")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database afterwards")
    args = parser.parse_args(argv)
    cfg = HarnessConfig(progressions=args.progressions, seed=args.seed, concurrency=args.concurrency,
                        workers=args.workers, worker_kills=args.worker_kills, temporal_restarts=args.temporal_restarts,
                        db_outages=args.db_outages, outage_seconds=args.outage_seconds, workdir=args.workdir,
                        output=args.output, keep=args.keep)
    summary = asyncio.run(run_harness(cfg))
    assert cfg.output is not None
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print("\nCrash harness summary\n" + table(summary))
    for key in ("lost_items", "duplicated_items", "wrong_final_items", "errors"):
        for item in summary[key]:
            print(f"  {key}: {item}")
    print(f"\nwritten to {cfg.output}")
    return 0 if passed(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
