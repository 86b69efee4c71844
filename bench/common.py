"""Shared setup for the benchmarks: servers on loopback, fresh databases, timing and the result table.

Every benchmark measures its figure and its baseline side by side in the same run, on the same
Temporal dev server and machine, so the ratio holds up when the machine is busy even though
absolute figures do not. Every loop is bounded in count (and the waits in time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from testing import databases as testing_databases
from testing.api import EXAMPLES, upload
from testing.polling import eventually
from testing.processes import ProductStack, processes
from testing.temporal import dev_server

PG_ADMIN_DSN = os.environ.get("PROGRESSION_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PYTHON = sys.executable

# ---- results -----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One line of a benchmark's table. ``ratio`` is value / baseline (None without a baseline).

    ``goal`` is in words (e.g. ``ratio >= 0.8``); ``met`` is None when there is no goal.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


@dataclass
class Report:
    bench: str
    command: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, *args: Any, **kw: Any) -> Figure:
        fig = Figure(*args, **kw)
        self.figures.append(fig)
        return fig

    def to_json(self) -> dict[str, Any]:
        return {"bench": self.bench, "command": self.command, "params": self.params, "seconds": self.seconds,
                "machine": machine(), "date": date.today().isoformat(),
                "figures": [{**asdict(f), "ratio": f.ratio} for f in self.figures]}


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def print_report(report: Report) -> None:
    """The table every benchmark prints: figure, value, baseline, ratio, goal, met?"""
    rows = [("figure", "value", "baseline", "ratio", "goal", "met?")]
    for f in report.figures:
        rows.append((f.name, f"{_fmt(f.value)} {f.unit}", f"{_fmt(f.baseline)} {f.unit}" if f.baseline is not None
                     else "-", f"{f.ratio:.2f}x" if f.ratio is not None else "-", f.goal or "-",
                     "-" if f.met is None else ("yes" if f.met else "NO")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\n== {report.bench}  ({report.command}; {report.seconds:.0f}s; "
          + ", ".join(f"{k}={v}" for k, v in report.params.items()) + ")")
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for f in report.figures:
        if f.note:
            print(f"  * {f.name}: {f.note}")
    sys.stdout.flush()


def emit(report: Report, json_path: str | None) -> None:
    print_report(report)
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2) + "\n")


def base_parser(description: str, *, db: bool = False) -> argparse.ArgumentParser:
    """``--json``; with ``db``, also ``--db sqlite|postgresql`` (the database the benchmark runs on)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    if db:
        parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    return parser


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {"nproc": os.cpu_count(), "memory_gib": mem_gib, "cpu": cpu, "python": platform.python_version(),
            "load_avg": os.getloadavg()[0]}


# ---- statistics --------------------------------------------------------------------------------


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(round(p / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


async def bounded_gather(n: int, concurrency: int, job: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Run ``job(0..n-1)`` with at most ``concurrency`` in flight; results in index order."""
    results: list[Any] = [None] * n
    next_index = 0

    async def runner() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            results[i] = await job(i)

    await asyncio.gather(*(runner() for _ in range(min(concurrency, n))))
    return results


# ---- Temporal ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def temporal_server() -> AsyncIterator[tuple[Client, str]]:
    """A Temporal dev server on a free loopback port (in-memory state), with the search attributes.

    Yields the client and the server's ``host:port`` for processes started by the benchmark.
    """
    async with dev_server() as env:
        yield env.client, env.client.service_client.config.target_host


# ---- databases ---------------------------------------------------------------------------------


def fresh_database(kind: str) -> contextlib.AbstractContextManager[str]:
    """A fresh, empty database (SQLite file in a temporary directory or a new PostgreSQL database), dropped after."""
    return testing_databases.fresh_database(kind, prefix="progression_bench")


# ---- the product as separate processes (API, worker) ------------------------------------------


def _stat(pid: int | str) -> tuple[str, list[str]]:
    """``/proc/<pid>/stat``: the command name, and the fields after it (field 3 onwards)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 1:].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = _stat(pid)[1]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(name_prefix: str) -> list[int]:
    """This process's children whose command name starts with ``name_prefix`` (e.g. the dev server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, fields = _stat(entry.name)
        except OSError:
            continue
        if comm.startswith(name_prefix) and int(fields[1]) == os.getpid():
            found.append(int(entry.name))
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# Who the benchmarks act as: (roles, team). Two validators and risk officers so no one decides twice.
BENCH_PEOPLE: dict[str, tuple[list[str], str | None]] = {
    "dana": (["model_developer"], "retail-risk"),
    "mia": (["model_developer"], "marketing-analytics"),
    "vera": (["model_validator"], "validation"),
    "rita": (["model_risk_officer"], "model-risk"),
    "rob": (["model_risk_officer"], "model-risk"),
    "ann": (["auditor"], "audit"),
}


@dataclass
class Stack:
    """The product running as two processes (``launch.serve api`` and ``launch.serve worker``)."""

    base_url: str
    database_url: str
    data_dir: Path
    task_queue: str
    api_pid: int
    worker_pid: int
    tokens: dict[str, str]
    user_ids: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@contextlib.asynccontextmanager
async def product_stack(temporal_address: str, database_url: str, *, extra_env: dict[str, str] | None = None
                        ) -> AsyncIterator[Stack]:
    """Start the worker and the API (uvicorn, loopback, free port) against a prepared database; stop both after."""
    tokens, ids = await testing_databases.prepare_database_with_people(database_url, BENCH_PEOPLE)
    with tempfile.TemporaryDirectory(prefix="progression-bench-data-") as tmp, \
            processes(Path(tmp) / "logs") as procs:
        stack = ProductStack(procs, database_url, temporal_address, Path(tmp), f"bench-{uuid.uuid4().hex[:8]}",
                             settings={"PROGRESSION_ENV": "development", **(extra_env or {})})
        worker, api = stack.start_worker(), stack.start_api()
        await stack.wait_ready("worker", "api", timeout=90)
        yield Stack(stack.base_url, database_url, Path(tmp), stack.task_queue, api.pid, worker.pid, tokens, ids)


def http_client(stack: Stack, connections: int = 64) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=stack.base_url, timeout=120, limits=limits)


def upload_files(repo: str, version: str) -> tuple[str, list[tuple[str, tuple[str, bytes, str]]]]:
    """(progression id, multipart files) of an example repository under a fresh version id."""
    return upload(EXAMPLES / repo, version=version)


async def start_via_api(http: httpx.AsyncClient, stack: Stack, who: str, repo: str, version: str) -> str:
    pid, files = upload_files(repo, version)
    resp = await http.post("/api/v1/progressions", files=files, headers=stack.auth(who))
    if resp.status_code != 201:
        raise RuntimeError(f"start {pid}: {resp.status_code} {resp.text[:300]}")
    return pid


async def wait_status(http: httpx.AsyncClient, stack: Stack, pid: str, ok: Callable[[dict[str, Any]], bool],
                      *, timeout: float = 120.0) -> dict[str, Any]:
    """Poll GET /progressions/{id} until ``ok`` holds."""
    body: dict[str, Any] = {}

    async def probe() -> dict[str, Any] | None:
        nonlocal body
        body = (await http.get(f"/api/v1/progressions/{pid}", headers=stack.auth("ann"))).json()
        return body if ok(body) else None

    return await eventually(probe, f"{pid} in the expected state", timeout=timeout,
                            describe=lambda _: f"{body.get('status')} {body.get('current_stage')}")


def at_gate(stage: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("current_stage") == stage and s.get("status") == "awaiting_approval"


def run(main: Callable[[argparse.Namespace], Awaitable[Report]], args: argparse.Namespace) -> Report:
    start = time.monotonic()
    report = asyncio.run(main(args))
    report.seconds = time.monotonic() - start
    emit(report, getattr(args, "json", None))
    return report
