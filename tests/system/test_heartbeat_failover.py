"""A worker killed in the middle of a deployment: another worker deploys, within the heartbeat timeout.

Two worker processes (``python -m launch.serve worker``, ``PROGRESSION_ENV=production``) on one task queue, eager
activities off (as on a cluster). A marketing progression passes its one gate; its ``deploy`` activity POSTs the
deployment to a webhook receiver that holds the first request open, so the attempt is observably in progress on
whichever worker took it. That worker (named by Temporal's pending activity) gets SIGKILL. The activity heartbeats
under a 30 s heartbeat timeout (``activities.heartbeat``), so the server times the lost attempt out and the retry
runs on the surviving worker: the progression is in production well within 120 s. Without heartbeats the retry
waits for the attempt's 5-minute start-to-close timeout and the bounded wait fails.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType

from testing.api import MARKETING, upload
from testing.http import QuietHandler, http_server
from testing.polling import eventually
from testing.processes import processes
from testing.temporal import dev_server
from testing.topology import production_topology

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PEOPLE = {
    "dana": (["model_developer"], "marketing-analytics"),
    "vera": (["model_validator"], "validation"),
    "ann": (["auditor"], "audit"),
}
# Shorter than the deploy's start-to-close timeout (5 min): only a retry after the heartbeat timeout (30 s, plus
# the retry's 2 s backoff and a workflow task) finishes within it, with room for a loaded machine.
RECOVERY_BOUND = 120.0


@dataclass
class HoldingReceiver:
    """A deployment system that keeps the first deployment request open until released; answers the rest."""

    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    deployments: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, event_id: str | None, body: bytes) -> dict[str, Any]:
        payload = json.loads(body) if body else {}
        if payload.get("type") != "deployment":
            return {}  # notifications
        with self.lock:
            first = not self.deployments
            self.deployments.append((event_id, payload))
        if first:
            self.held.set()
            self.release.wait(timeout=600)  # bounded: the test releases it after the kill
        return {"deployment_id": "ext-1"}


@pytest.fixture
def receiver() -> Iterator[tuple[HoldingReceiver, str]]:
    state = HoldingReceiver()

    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            raw = json.dumps(state.handle(self.headers.get("X-Progression-Event-Id"), body)).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:
                pass  # the held request's worker was killed: nobody reads this answer

    with http_server(Handler) as port:
        try:
            yield state, f"http://127.0.0.1:{port}/hooks/progression"
        finally:
            state.release.set()


async def test_deploy_lost_with_its_worker_is_retried_on_the_other_worker(
        postgres_url: str, tmp_path: Path, receiver: tuple[HoldingReceiver, str]) -> None:
    hold, hook_url = receiver
    settings = {"PROGRESSION_PROMOTION_TARGET": "webhook", "PROGRESSION_WEBHOOK_URL": hook_url,
                "PROGRESSION_WEBHOOK_SECRET": secrets.token_hex(32)}
    async with dev_server(extra_args=["--dynamic-config-value", "system.enableActivityEagerExecution=false"]) as env:
        address = env.client.service_client.config.target_host
        with processes(tmp_path / "logs") as procs:
            async with production_topology(procs, address, postgres_url, tmp_path / "data", PEOPLE, apis=1,
                                           workers=2, settings=settings) as topo, \
                    httpx.AsyncClient(base_url=topo.base_urls[0], timeout=60) as http:
                pid, files = upload(MARKETING, version=f"2.0.0-{uuid.uuid4().hex[:8]}")
                started = await http.post("/api/v1/progressions", files=files, headers=topo.auth("dana"))
                assert started.status_code == 201, started.text

                async def state() -> dict[str, Any]:
                    response = await http.get(f"/api/v1/progressions/{pid}", headers=topo.auth("ann"))
                    assert response.status_code == 200, response.text
                    return dict(response.json())

                async def gate_open() -> dict[str, Any] | None:
                    s = await state()
                    assert s["status"] not in ("blocked", "rejected"), s.get("missing")
                    return s if s["status"] == "awaiting_approval" and s["current_stage"] == "validation" else None

                await eventually(gate_open, "the validation gate", alive=procs.assert_alive)
                decided = await http.post(f"/api/v1/progressions/{pid}/decisions", headers=topo.auth("vera"),
                                          json={"stage": "validation", "decision": "approve", "comment": "ok"})
                assert decided.status_code == 200, decided.text

                # The deployment is in progress: its first request is held open by the receiver.
                async def deployment_held() -> bool:
                    return hold.held.is_set()

                await eventually(deployment_held, "the deployment request held", alive=procs.assert_alive)
                handle = env.client.get_workflow_handle(pid)

                async def running_deploy() -> str | None:
                    pending = (await handle.describe()).raw_description.pending_activities
                    return next((p.last_worker_identity for p in pending
                                 if p.activity_type.name == "deploy" and p.last_worker_identity), None)

                identity = await eventually(running_deploy, "the deploy activity's worker", alive=procs.assert_alive)
                pids = topo.pids()
                running_on = [name for name in topo.workers if identity.startswith(f"{pids[name]}@")]
                assert len(running_on) == 1, (identity, pids)
                procs.kill(running_on[0])  # SIGKILL in the middle of the attempt: it never completes
                hold.release.set()
                survivor = [name for name in topo.workers if name != running_on[0]]

                async def in_production() -> dict[str, Any] | None:
                    s = await state()
                    return s if s["status"] == "in_production" else None

                final = await eventually(in_production, "in_production after the worker died",
                                         timeout=RECOVERY_BOUND, alive=lambda: procs.assert_alive(*survivor))
                assert final["deployed_at"] is not None

                # The deployment ran twice: the lost attempt and its retry, with the same deployment key.
                history = await handle.fetch_history()
                started_deploys = [e.activity_task_started_event_attributes.attempt for e in history.events
                                   if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                                   and _scheduled_type(history.events, e) == "deploy"]
                assert started_deploys == [2], started_deploys
                with hold.lock:
                    keys = [key for key, _ in hold.deployments]
                assert len(keys) == 2 and len(set(keys)) == 1, keys


def _scheduled_type(events: Any, started: Any) -> str:
    scheduled_id = started.activity_task_started_event_attributes.scheduled_event_id
    scheduled = next(e for e in events if e.event_id == scheduled_id)
    return str(scheduled.activity_task_scheduled_event_attributes.activity_type.name)
