"""The production topology without containers.

What docker-compose.yml runs, as separate processes on loopback: a Temporal server standing in for
the cluster (the dev server from the venv, search attributes registered by the same one-shot script
compose runs), the application database on the local PostgreSQL, the migrations job, the API and
TWO workers (``python -m launch.serve api|worker|migrate`` with PROGRESSION_* variables and
PROGRESSION_ENV=production), and a webhook receiver that checks every HMAC signature. A credit
journey walks to ``in_production`` over HTTP with five people's tokens (made by the CLI), and either
worker carries it alone: one is killed at the first gate and the other finishes that stage; a
replacement starts, the other is killed at the next gate, and the replacement finishes the journey.
Nothing asserts which worker Temporal gives a task to while both poll (it promises nothing there).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from client.repo import read_repository
from engine.settings import PROJECT_ROOT
from launch.binaries import temporal_cli_path
from testing.http import QuietHandler, http_server
from testing.polling import eventually
from testing.processes import Processes, ProductStack, processes
from testing.temporal import dev_server
from workflows.contract import SEARCH_ATTRIBUTES

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = PROJECT_ROOT / "examples" / "retail-credit-scorecard"
REGISTER_SCRIPT = PROJECT_ROOT / "deploy" / "temporal" / "register-search-attributes.sh"
SIGNATURE_HEADER = "X-Progression-Signature"
EVENT_ID_HEADER = "X-Progression-Event-Id"
# (username, roles, team): the developer owns the model's team; validator and risk officers do not.
PEOPLE = [
    ("ada", ["admin"], "platform"),
    ("dana", ["model_developer"], "retail-risk"),
    ("victor", ["model_validator"], "model-validation"),
    ("rita", ["model_risk_officer"], "model-risk"),
    ("omar", ["model_risk_officer"], "model-risk"),
]


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does (docs/PRODUCTION.md): HMAC-SHA256 over the raw body, constant-time compare."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


# --- the webhook receiver ------------------------------------------------------------------------


@dataclass
class Delivery:
    path: str
    event_id: str | None
    signature_ok: bool
    payload: dict[str, Any]
    status: int


@dataclass
class Receiver:
    secret: str
    fail_first_deployment: bool = True
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        ok = verify_signature(self.secret, body, headers.get(SIGNATURE_HEADER))
        payload = json.loads(body) if body else {}
        with self.lock:
            status = 200 if ok else 401
            if ok and payload.get("type") == "deployment" and self.fail_first_deployment:
                # The deployment system is briefly down: Temporal must retry the activity.
                self.fail_first_deployment = False
                status = 503
            self.deliveries.append(Delivery(path, headers.get(EVENT_ID_HEADER), ok, payload, status))
        answer = {"deployment_id": "ext-42"} if status == 200 and payload.get("type") == "deployment" else {}
        return status, answer


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver(secret=secrets.token_hex(32))

    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, answer = state.handle(self.path, self.headers, body)
            raw = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    with http_server(Handler) as port:
        yield state, f"http://127.0.0.1:{port}/hooks/progression"


# --- the cluster stand-in ------------------------------------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[WorkflowEnvironment]:
    """A Temporal server with no custom search attributes (as auto-setup leaves a new cluster).

    Eager activity execution is off, as on a cluster by default: activity tasks then go through
    the task queue to whichever worker polls, instead of back to the worker that scheduled them.
    """
    async with dev_server(search_attributes=False,
                          extra_args=["--dynamic-config-value", "system.enableActivityEagerExecution=false"]) as env:
        yield env


# --- processes -----------------------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path / "logs") as running:
        yield running


async def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(*args, env=env, cwd=PROJECT_ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{text}"
    return text


async def _pollers(client: Client, task_queue: str) -> set[str]:
    response = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY))
    return {p.identity for p in response.pollers}


# --- the journey ---------------------------------------------------------------------------------


async def test_split_process_credit_journey(postgres_url: str, cluster: WorkflowEnvironment,
                                            receiver: tuple[Receiver, str], procs: Processes,
                                            tmp_path: Path) -> None:
    hooks, hook_url = receiver
    client = cluster.client
    address = client.service_client.config.target_host
    task_queue = f"split-{secrets.token_hex(4)}"
    stack = ProductStack(procs, postgres_url, address, tmp_path / "data", task_queue, settings={
        "PROGRESSION_ENV": "production",
        "PROGRESSION_TEMPORAL_NAMESPACE": "default",
        "PROGRESSION_SECRET_KEY": secrets.token_urlsafe(48),
        "PROGRESSION_PROMOTION_TARGET": "webhook",
        "PROGRESSION_WEBHOOK_URL": hook_url,
        "PROGRESSION_WEBHOOK_SECRET": hooks.secret,
    })
    env = stack.env()
    python = sys.executable

    # 1. The one-shot jobs, in compose's order: search attributes and migrations.
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    attributes = compose["services"]["search-attributes"]["environment"]["SEARCH_ATTRIBUTES"]
    await _run(["/bin/sh", str(REGISTER_SCRIPT)], {
        "PATH": env.get("PATH", "/usr/bin:/bin"), "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default",
        "SEARCH_ATTRIBUTES": attributes, "TEMPORAL_CLI": temporal_cli_path(), "WAIT_SECONDS": "30"})
    await _run([python, "-m", "launch.serve", "migrate"], env)

    # 2. People, with the administrators' CLI (token on the last line).
    cli = str(Path(python).parent / "progression")
    outputs = await asyncio.gather(*[
        _run([cli, "users", "create", name, *[a for r in roles for a in ("--role", r)], "--team", team], env)
        for name, roles, team in PEOPLE])
    tokens = {name: out.strip().splitlines()[-1] for (name, _, _), out in zip(PEOPLE, outputs, strict=True)}
    assert all(t.startswith("prg_") for t in tokens.values()), tokens

    # 3. The long-running processes: one API, two workers.
    api = stack.start_api()
    workers = [stack.start_worker(f"worker-{i}") for i in (1, 2)]

    def identity(proc: subprocess.Popen[bytes]) -> str:
        return f"{proc.pid}@{socket.gethostname()}"  # the SDK's default worker identity

    await stack.wait_ready()

    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as http:  # a decision waits out a dead worker

        async def both_polling() -> bool:
            # DescribeTaskQueue answers from the root partition only, so a worker polling other
            # partitions may be missing there: its own start line counts too.
            pollers = await _pollers(client, task_queue)
            return all(f"{w.pid}@" in " ".join(pollers) or "polling task queue" in procs.log(f"worker-{i}")
                       for i, w in enumerate(workers, start=1))

        await eventually(both_polling, "both workers polling the task queue", alive=procs.assert_alive)

        def auth(name: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens[name]}"}

        # 4. The admin registers the spec's features; the developer starts the progression.
        catalog = {f["name"]: f for f in yaml.safe_load((PROJECT_ROOT / "policies" / "features.yaml").read_text())
                   ["features"]}
        spec = yaml.safe_load((REPO / "progression.yaml").read_text())
        for name in spec["features"]:
            feature = catalog[name]
            put = await http.put(f"/api/v1/features/{name}", headers=auth("ada"),
                                 json={"description": feature.get("description", ""), "tags": feature.get("tags", [])})
            assert put.status_code == 200, put.text

        started = await http.post("/api/v1/progressions", files=read_repository(REPO).multipart_files(),
                                  headers={**auth("dana"), "Idempotency-Key": "split-start"})
        assert started.status_code == 201, started.text
        pid = started.json()["progression_id"]

        async def state() -> dict[str, Any]:
            response = await http.get(f"/api/v1/progressions/{pid}", headers=auth("dana"))
            assert response.status_code == 200, response.text
            return dict(response.json())

        async def gate_open(stage: str) -> dict[str, Any] | None:
            s = await state()
            assert s["status"] not in ("blocked", "rejected"), s.get("missing")
            return s if s["status"] == "awaiting_approval" and s["current_stage"] == stage else None

        async def decide(person: str, stage: str) -> None:
            # A worker killed as the gate opened: until the surviving worker retries that workflow task (and
            # its record supersedes the dead one's, activities.progression._sync_read_model), the snapshot may
            # show a gate the history has not reached; the Update validator then refuses gate_not_open. The
            # caller retries, as any caller refused on a gate that is just changing (never anything else).
            async def attempt() -> httpx.Response | None:
                response = await http.post(f"/api/v1/progressions/{pid}/decisions", headers=auth(person),
                                           json={"stage": stage, "decision": "approve",
                                                 "comment": f"{person} approves {stage}"})
                if response.status_code == 409 and response.json().get("code") == "gate_not_open":
                    return None
                assert response.status_code == 200, response.text
                return response
            await eventually(attempt, f"{person}'s decision on {stage}", alive=procs.assert_alive)

        # 5. One validator, then two different risk officers; a worker dies at each gate.
        await eventually(lambda: gate_open("validation"), "the validation gate", alive=procs.assert_alive)
        procs.kill("worker-1")
        await decide("victor", "validation")
        # worker-2 alone ran the rest of the validation stage and opened the next gate.
        await eventually(lambda: gate_open("risk_review"), "the risk review gate", alive=procs.assert_alive)

        # worker-1 is replaced (as compose restarts a container), then worker-2 dies too.
        replacement = stack.start_worker("worker-3")

        async def replacement_polling() -> bool:
            return "polling task queue" in procs.log("worker-3")

        await eventually(replacement_polling, "the replacement worker polling", alive=procs.assert_alive)
        procs.kill("worker-2")
        await decide("rita", "risk_review")
        await decide("omar", "risk_review")

        async def in_production() -> dict[str, Any] | None:
            s = await state()
            return s if s["status"] == "in_production" else None

        final = await eventually(in_production, "in_production", alive=procs.assert_alive, timeout=180)
        assert final["deployed_at"] is not None
        assert api.poll() is None

    # 6. Webhooks: every delivery signed with the shared secret; the deployment retried by Temporal.
    async def finished_notified() -> list[Delivery]:
        with hooks.lock:
            delivered = list(hooks.deliveries)
        return delivered if any(d.payload.get("kind") == "finished" for d in delivered) else []

    deliveries = await eventually(finished_notified, "the 'finished' notification", alive=procs.assert_alive)
    assert deliveries and all(d.signature_ok for d in deliveries), [d for d in deliveries if not d.signature_ok]
    assert all(d.event_id for d in deliveries)
    assert not verify_signature("not-the-secret", json.dumps(deliveries[0].payload).encode(),
                                "sha256=" + "0" * 64)
    deployments = [d for d in deliveries if d.payload.get("type") == "deployment"]
    assert [d.status for d in deployments] == [503, 200]
    assert len({d.event_id for d in deployments}) == 1  # the same deployment key on the retry
    assert deployments[0].payload["model_id"] == spec["model"]["id"]
    assert deployments[0].payload["version_id"] == spec["version"]["id"]
    kinds = {d.payload.get("kind") for d in deliveries if d.payload.get("type") == "notification"}
    assert {"gate_opened", "decided", "finished"} <= kinds, kinds

    # 7. Temporal: findable by the registered search attributes; the work after the last decision (staging
    # checks, the deployment) ran on the replacement, the only worker alive then.
    query = f"ModelId = '{spec['model']['id']}' AND ProgressionStatus = 'in_production'"

    async def listed() -> list[Any]:
        return [w async for w in client.list_workflows(query)]

    executions = await eventually(listed, "the workflow in visibility", alive=procs.assert_alive)
    assert len(executions) == 1
    assert set(SEARCH_ATTRIBUTES) <= set(executions[0].search_attributes)
    history = await client.get_workflow_handle(executions[0].id).fetch_history()
    events = list(history.events)
    last_decision = max(i for i, e in enumerate(events)
                        if e.HasField("workflow_execution_update_accepted_event_attributes"))
    started_after = [e.activity_task_started_event_attributes.identity for e in events[last_decision:]
                     if e.HasField("activity_task_started_event_attributes")]
    assert started_after and set(started_after) == {identity(replacement)}, (started_after, identity(replacement))
    started_by = {e.activity_task_started_event_attributes.identity for e in events
                  if e.HasField("activity_task_started_event_attributes")}
    assert started_by <= {identity(w) for w in [*workers, replacement]}, started_by

