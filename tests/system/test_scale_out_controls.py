"""Scaled out, every control still holds: two API processes and two workers on one data set.

The production topology as processes (``testing/topology.py``): ``python -m launch.serve api`` twice and
``python -m launch.serve worker`` twice, ``PROGRESSION_ENV=production``, one PostgreSQL database, one Temporal
server (eager activities off, as on a cluster). Each API process guards one person's decision per gate only
within itself (``decision_in_progress``); across processes the rule "one person counts once" is the workflow's
(the Update validator and the handler's re-check on the live state) and the read model's. So the same person
decides on the same gate through both API processes at once: exactly one decision counts, the other is refused
and recorded as refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from engine.db import AuditEvent, DecisionRow, make_engine, make_sessionmaker
from testing.api import CREDIT, upload
from testing.polling import eventually
from testing.processes import processes
from testing.temporal import dev_server
from testing.topology import Topology, production_topology

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PEOPLE = {
    "dana": (["model_developer"], "retail-risk"),
    "vera": (["model_validator"], "validation"),
    "rita": (["model_risk_officer"], "model-risk"),
    "rob": (["model_risk_officer"], "model-risk"),
    "ann": (["auditor"], "audit"),
}
# A duplicate decision is refused with one of these, whichever check sees the first one counted.
ONE_COUNTS = {"already_decided", "quorum_met_for_role", "gate_not_open"}


@contextlib.asynccontextmanager
async def scaled_out(postgres_url: str, tmp_path: Path) -> AsyncIterator[tuple[Topology, list[httpx.AsyncClient]]]:
    async with dev_server(extra_args=["--dynamic-config-value", "system.enableActivityEagerExecution=false"]) as env:
        address = env.client.service_client.config.target_host
        with processes(tmp_path / "logs") as procs:
            async with production_topology(procs, address, postgres_url, tmp_path / "data", PEOPLE,
                                           apis=2, workers=2) as topo, contextlib.AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120))
                           for url in topo.base_urls]
                yield topo, clients


async def test_one_person_decides_through_both_api_processes_at_once_and_counts_once(
        postgres_url: str, tmp_path: Path) -> None:
    async with scaled_out(postgres_url, tmp_path) as (topo, (api1, api2)):
        pid, files = upload(CREDIT, version=f"4.0.0-{uuid.uuid4().hex[:8]}")
        started = await api1.post("/api/v1/progressions", files=files, headers=topo.auth("dana"))
        assert started.status_code == 201, started.text

        async def state() -> dict[str, Any]:
            response = await api2.get(f"/api/v1/progressions/{pid}", headers=topo.auth("ann"))
            assert response.status_code == 200, response.text
            return dict(response.json())

        async def gate(stage: str) -> dict[str, Any] | None:
            s = await state()
            assert s["status"] not in ("blocked", "rejected"), s.get("missing")
            return s if s["status"] == "awaiting_approval" and s["current_stage"] == stage else None

        async def at_once(who: str, stage: str) -> list[httpx.Response]:
            """``who`` decides on ``stage`` through each API process at the same moment (two requests, as two
            browser tabs would send: different idempotency keys)."""
            def one(http: httpx.AsyncClient, n: int) -> Any:
                return http.post(f"/api/v1/progressions/{pid}/decisions",
                                 json={"stage": stage, "decision": "approve", "comment": f"{who} via api-{n}"},
                                 headers={**topo.auth(who), "Idempotency-Key": f"{who}-{stage}-{n}-{uuid.uuid4()}"})
            return list(await asyncio.gather(one(api1, 1), one(api2, 2)))

        def exactly_one_counted(answers: list[httpx.Response]) -> None:
            assert sorted(r.status_code for r in answers) == [200, 409], [(r.status_code, r.text[:200])
                                                                          for r in answers]
            refused = next(r for r in answers if r.status_code == 409).json()
            assert refused["code"] in ONE_COUNTS, refused

        await eventually(lambda: gate("validation"), "the validation gate", timeout=180,
                         alive=topo.processes.assert_alive)
        exactly_one_counted(await at_once("vera", "validation"))

        # Two risk officers must approve: had rita counted twice, the gate would close without rob.
        review = await eventually(lambda: gate("risk_review"), "the risk review gate", timeout=180,
                                  alive=topo.processes.assert_alive)
        exactly_one_counted(await at_once("rita", "risk_review"))
        review = await state()
        stage = next(s for s in review["stages"] if s["name"] == "risk_review")
        assert review["status"] == "awaiting_approval" and review["current_stage"] == "risk_review", review["status"]
        assert stage["approvals"][0]["approved_by"] == [topo.user_ids["rita"]]

        # rob completes the gate; the journey ends in production on either worker.
        response = await api2.post(f"/api/v1/progressions/{pid}/decisions", headers=topo.auth("rob"),
                                   json={"stage": "risk_review", "decision": "approve", "comment": "sound"})
        assert response.status_code == 200, response.text

        async def in_production() -> dict[str, Any] | None:
            s = await state()
            return s if s["status"] == "in_production" else None

        await eventually(in_production, "in production", timeout=180, alive=topo.processes.assert_alive)

        engine = make_engine(postgres_url)
        try:
            async with make_sessionmaker(engine)() as session:
                rows = (await session.scalars(select(DecisionRow).where(DecisionRow.progression_id == pid))).all()
                refusals = (await session.scalars(select(AuditEvent).where(
                    AuditEvent.progression_id == pid, AuditEvent.event_type == "decision.refused"))).all()
        finally:
            await engine.dispose()
        counted = sorted((r.stage, r.actor_id) for r in rows)
        assert counted == sorted([("validation", topo.user_ids["vera"]), ("risk_review", topo.user_ids["rita"]),
                                  ("risk_review", topo.user_ids["rob"])]), counted
        # Each refused duplicate is in the audit trail, attributed to its person.
        assert sorted(e.actor_id for e in refusals) == sorted([topo.user_ids["vera"], topo.user_ids["rita"]]), \
            [(e.actor_id, e.payload) for e in refusals]
