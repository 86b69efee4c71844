"""The production topology as plain processes: several API and worker processes on one data set.

What docker-compose.yml runs with ``--scale api=N --scale worker=M``, without containers: every process is
``python -m launch.serve api|worker`` with ``PROGRESSION_ENV=production`` (so the production checks apply),
all on one Temporal server, one PostgreSQL database, one task queue and one evidence directory. There is no
proxy: each API process listens on its own loopback port and the caller picks one per request. Used by
``bench/scale_out.py`` and the system test of the controls across processes.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testing.databases import prepare_database_with_people
from testing.people import People
from testing.polling import eventually
from testing.processes import Processes, ProductStack


@dataclass
class Topology:
    """API processes ``api-1..n`` and workers ``worker-1..m`` sharing one database and task queue."""

    processes: Processes
    apis: list[ProductStack]  # one per API process (its own port), otherwise the same settings
    task_queue: str
    tokens: dict[str, str]
    user_ids: dict[str, str]
    workers: list[str] = field(default_factory=list)

    @property
    def base_urls(self) -> list[str]:
        return [api.base_url for api in self.apis]

    def api_names(self) -> list[str]:
        return [f"api-{i}" for i in range(1, len(self.apis) + 1)]

    def pids(self) -> dict[str, int]:
        """Process name -> pid of every API and worker process."""
        return {name: self.processes[name].pid for name in [*self.api_names(), *self.workers]}

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@contextlib.asynccontextmanager
async def production_topology(procs: Processes, temporal_address: str, database_url: str, data_dir: Path,
                              people: People, *, apis: int = 2, workers: int = 2,
                              settings: Mapping[str, str] | None = None, timeout: float = 180.0
                              ) -> AsyncIterator[Topology]:
    """Migrate and seed ``database_url`` (PostgreSQL), create ``people``, start the processes and wait until
    every API answers /readyz and every worker polls; the caller's ``procs`` stops them all after."""
    tokens, ids = await prepare_database_with_people(database_url, people)
    task_queue = f"topology-{uuid.uuid4().hex[:8]}"
    env = {"PROGRESSION_ENV": "production", "PROGRESSION_SECRET_KEY": secrets.token_urlsafe(48),
           "PROGRESSION_TEMPORAL_NAMESPACE": "default", **(settings or {})}
    stacks = [ProductStack(procs, database_url, temporal_address, data_dir, task_queue, settings=env)
              for _ in range(apis)]
    topology = Topology(procs, stacks, task_queue, tokens, ids)
    for i, stack in enumerate(stacks, start=1):
        stack.start_api(f"api-{i}")
    for i in range(1, workers + 1):
        stacks[0].start_worker(f"worker-{i}")
        topology.workers.append(f"worker-{i}")
    names = [*topology.api_names(), *topology.workers]
    for stack in stacks:
        await stack.wait_ready(*names, timeout=timeout)

    async def polling() -> bool:  # the line launch.worker logs once its Worker runs
        return all("polling task queue" in procs.log(name) for name in topology.workers)

    await eventually(polling, "every worker polling", timeout=timeout, alive=lambda: procs.assert_alive(*names))
    yield topology
