"""Builders for the API tests: a real app over a real database, worker and Temporal dev server.

``api_env`` migrates the database, seeds the feature catalog, runs a real worker on a
fresh task queue and the app (lifespan included) behind ``httpx.AsyncClient`` with
``ASGITransport``. People are real users with real API tokens.
"""

from __future__ import annotations

import asyncio
import atexit
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowHandle

from activities.notify import LogNotifier
from activities.progression import ProgressionActivities
from activities.promotion import RecordingPromotionTarget
from api.app import app_lifespan, create_app
from engine.database import sqlite_file
from engine.db import AuditEvent, ProgressionRow, User, make_engine, make_sessionmaker
from engine.evidence import EvidenceStore
from engine.identity import actor_for
from engine.lifecycle import EvidenceRef
from engine.loading import load_spec
from engine.settings import Settings
from launch.worker import build_worker
from testing.databases import prepare_database_with_people
from testing.mail import Mailbox, mailbox
from testing.polling import eventually
from testing.processes import free_port
from testing.temporal import tolerate_slow_activations

# The example repositories and the cached policy registry are shared with the workflow tests.
from testing.workflow import CREDIT, EXAMPLES, MARKETING, POLICIES, registry  # noqa: F401 - re-exported
from workflows.contract import WORKFLOW_NAME, ProgressionInput

# username -> (roles, team). Four different people walk the credit journey; the rest probe refusals.
PEOPLE: dict[str, tuple[list[str], str | None]] = {
    "dana": (["model_developer"], "retail-risk"),        # submits the credit model
    "dario": (["model_developer"], "retail-risk"),       # same team, not the submitter
    "vera": (["model_validator"], "validation"),
    "rita": (["model_risk_officer"], "model-risk"),
    "rob": (["model_risk_officer"], "model-risk"),
    "ann": (["auditor"], "audit"),
    "adam": (["admin"], "platform"),
    "sam": (["model_developer"], "payments"),            # another team's developer
    "rory": (["model_risk_officer", "model_developer"], "retail-risk"),  # risk officer in the owning team
    "val2": (["model_validator", "model_developer"], "retail-risk"),      # validator in the owning team
}


@dataclass
class ApiEnv:
    app: FastAPI
    http: httpx.AsyncClient
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    temporal: Client
    task_queue: str
    tokens: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)
    mail: Mailbox | None = None  # the SMTP server enrollment codes and notices are mailed to

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def enrollment_code(self, admin: str, user_id: str, address: str) -> tuple[httpx.Response, str]:
        """``admin`` creates an enrollment for ``user_id``; (the answer, the code the person finds in their mail)."""
        resp = await self.http.post(f"/api/v1/users/{user_id}/enrollments", headers=self.auth(admin))
        assert resp.status_code == 201, resp.text
        assert self.mail is not None
        return resp, self.mail.last_code(address)

    async def count(self, model: Any, *where: Any) -> int:
        async with self.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def make_settings(tmp_path: Path, url: str, task_queue: str, **overrides: Any) -> Settings:
    return Settings(env="test", data_dir=tmp_path, database_url=url, task_queue=task_queue, **overrides)


# One SQLite file per process at head with the feature catalog and PEOPLE, with their tokens and ids.
_people_template: tuple[Path, dict[str, str], dict[str, str]] | None = None


async def database_with_people(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """Bring ``url`` to head with the feature catalog and PEOPLE (username -> token, username -> user id).

    A SQLite file that does not exist yet is a copy of a template made once per process: every test still
    has its own database (the same people, tokens and user ids as the other tests of the process, in another
    file; nothing the shared Temporal server sees is keyed by a user id). Anything else is prepared in place.
    """
    global _people_template
    target = sqlite_file(url)
    if target is None or target.exists():
        return await prepare_database_with_people(url, PEOPLE)
    if _people_template is None:
        directory = Path(tempfile.mkdtemp(prefix="progression-people-"))
        atexit.register(shutil.rmtree, directory, True)
        path = directory / "people.db"
        tokens, ids = await prepare_database_with_people(f"sqlite+aiosqlite:///{path}", PEOPLE)
        _people_template = path, tokens, ids
    path, tokens, ids = _people_template
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return dict(tokens), dict(ids)


# Idle apps of this process by request body limit (the one setting read when an app is built). FastAPI analyses
# a route's dependencies on its first request to that app (milliseconds a route, most of an API test's own CPU
# when every test built its app): the tests reuse apps, each test with its own lifespan (database, worker, task
# queue, settings). An app a test changed (a route or a middleware added, a dependency overridden) is dropped.
_idle_apps: dict[int, list[FastAPI]] = {}


@contextmanager
def _reused_app(settings: Settings) -> Iterator[FastAPI]:
    idle = _idle_apps.setdefault(settings.max_request_bytes, [])
    app = idle.pop() if idle else create_app(settings)
    shape = (len(app.router.routes), len(app.user_middleware))
    try:
        yield app
    finally:
        if (len(app.router.routes), len(app.user_middleware)) == shape and not app.dependency_overrides:
            idle.append(app)


@asynccontextmanager
async def api_env(url: str, tmp_path: Path, temporal: Client, task_queue: str, *, worker: bool = True,
                  policies: Any = None,
                  **overrides: Any) -> AsyncIterator[ApiEnv]:
    tokens, ids = await database_with_people(url)
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    box_cm = mailbox()
    box = box_cm.__enter__()
    settings = make_settings(tmp_path, url, task_queue, **{**box.settings, **overrides})
    activities = ProgressionActivities(sm, EvidenceStore(settings.evidence_dir), RecordingPromotionTarget(),
                                       LogNotifier(), audit_chain=True)
    try:
        with _reused_app(settings) as app:
            # ``policies``: another PolicyRegistry (e.g. a policy changed for one test); default: policies/
            app.router.lifespan_context = app_lifespan(settings, temporal_client=temporal, sessionmaker=sm,
                                                       registry=policies or registry())
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=60) as http:
                    env = ApiEnv(app, http, settings, engine, sm, temporal, task_queue, tokens, ids, box)
                    if worker:
                        async with tolerate_slow_activations(build_worker(temporal, task_queue=task_queue,
                                                                          activities=activities)):
                            yield env
                    else:
                        yield env
    finally:
        box_cm.__exit__(None, None, None)
        await engine.dispose()


# ---- specs and uploads -------------------------------------------------------------------------


def unique_version(base: str = "3.2.0") -> str:
    return f"{base}-t{uuid.uuid4().hex[:10]}"


def spec_text(repo: Path = CREDIT, **changes: Any) -> str:
    data = yaml.safe_load((repo / "progression.yaml").read_text())
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return yaml.safe_dump(data, sort_keys=False)


def upload(repo: Path = CREDIT, *, version: str | None = None, text: str | None = None,
           skip: tuple[str, ...] = (), extra: dict[str, tuple[str, bytes]] | None = None,
           **changes: Any) -> tuple[str, list[tuple[str, tuple[str, bytes, str]]]]:
    """(progression id, multipart files) for an example repository with a fresh version id."""
    version = version or unique_version()
    text = text if text is not None else spec_text(repo, version={"id": version}, **changes)
    try:
        data = yaml.safe_load(text) if text else {}
    except yaml.YAMLError:  # a deliberately broken spec: upload it as is, evidence from the example
        data = {"evidence": yaml.safe_load((repo / "progression.yaml").read_text())["evidence"]}
    files: list[tuple[str, tuple[str, bytes, str]]] = [
        ("spec", ("progression.yaml", text.encode(), "application/yaml"))]
    for name, rel in (data.get("evidence") or {}).items() if isinstance(data, dict) else []:
        if name in skip:
            continue
        files.append((f"evidence.{name}", (rel, (repo / rel).read_bytes(), "application/octet-stream")))
    for name, (filename, content) in (extra or {}).items():
        files.append((f"evidence.{name}", (filename, content, "application/octet-stream")))
    model_id = data["model"]["id"] if isinstance(data, dict) and "model" in data else "?"
    return f"{model_id}@{version}", files


async def start(env: ApiEnv, who: str = "dana", repo: Path = CREDIT, **kw: Any) -> tuple[str, httpx.Response]:
    pid, files = upload(repo, **kw)
    resp = await env.http.post("/api/v1/progressions", files=files, headers=env.auth(who))
    return pid, resp


async def started_at_gate(env: ApiEnv, who: str = "dana", stage: str = "validation", **kw: Any
                          ) -> tuple[str, dict[str, Any]]:
    """Start an example progression through the API (201 Created) and wait until ``stage``'s gate is open;
    (progression id, its state then)."""
    pid, resp = await start(env, who, **kw)
    assert resp.status_code == 201, resp.text
    return pid, await wait_for(env, pid, at_gate(stage))


async def get_state(env: ApiEnv, pid: str, who: str = "ann") -> dict[str, Any]:
    resp = await env.http.get(f"/api/v1/progressions/{pid}", headers=env.auth(who))
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def wait_for(env: ApiEnv, pid: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll GET until ``predicate`` holds."""
    last: dict[str, Any] = {}

    async def probe() -> dict[str, Any] | None:
        nonlocal last
        last = await get_state(env, pid)
        return last if predicate(last) else None

    return await eventually(probe, f"state of {pid}", describe=lambda _: (
        f"status={last.get('status')} stage={last.get('current_stage')} missing={last.get('missing')}"))


def at_gate(stage: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s["current_stage"] == stage and s["status"] == "awaiting_approval"


async def wait_read_model(env: ApiEnv, pid: str, predicate: Callable[[Any], bool]) -> Any:
    """Poll the read-model row (written by the workflow's activities) until ``predicate`` holds."""

    async def probe() -> ProgressionRow | None:
        async with env.sessionmaker() as session:
            row = await session.get(ProgressionRow, pid)
        return row if row is not None and predicate(row) else None

    return await eventually(probe, f"read model of {pid}")


async def decide(env: ApiEnv, who: str, pid: str, stage: str, decision: str = "approve",
                 comment: str = "looks sound", **headers: str) -> httpx.Response:
    return await env.http.post(f"/api/v1/progressions/{pid}/decisions",
                               json={"stage": stage, "decision": decision, "comment": comment},
                               headers={**env.auth(who), **headers})


async def audit_events(env: ApiEnv, pid: str, event_type: str | None = None) -> list[Any]:
    async with env.sessionmaker() as session:
        q = select(AuditEvent).where(AuditEvent.progression_id == pid)
        if event_type:
            q = q.where(AuditEvent.event_type == event_type)
        return list((await session.scalars(q.order_by(AuditEvent.seq))).all())


async def wait_audit(env: ApiEnv, pid: str, event_type: str, *, where: Callable[[Any], bool] = lambda e: True
                     ) -> list[Any]:
    """Events of a type once one matching ``where`` is there (the workflow writes some after the read model)."""

    async def probe() -> list[Any] | None:
        events = await audit_events(env, pid, event_type)
        return events if any(where(e) for e in events) else None

    return await eventually(probe, f"a {event_type} event for {pid}")


@asynccontextmanager
async def serve_http(app: Any) -> AsyncIterator[str]:
    """uvicorn on loopback in this event loop (the app's lifespan already ran); yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:

        async def started() -> bool:
            if task.done():
                task.result()  # raises what stopped it
                raise AssertionError("uvicorn exited before it started")
            return bool(server.started)

        await eventually(started, "uvicorn started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def page_as(env: ApiEnv, who: str, path: str) -> str:
    """A web UI page through a real sign-in (CSRF token from the login form)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://api.test") as browser:
        login = await browser.get("/ui/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
        assert csrf, login.text[:200]
        signed = await browser.post("/ui/login", data={"token": env.tokens[who], "next": path,
                                                       "csrf_token": csrf.group(1)})
        assert signed.status_code == 303, signed.text[:200]
        page = await browser.get(path)
        assert page.status_code == 200
        return page.text


async def start_past_the_api(env: ApiEnv, text: str, who: str, evidence: dict[str, Any], **start: Any
                             ) -> WorkflowHandle[Any, Any]:
    """Start a progression of spec ``text`` straight on Temporal as ``who``, as a race between two starts or a
    client of Temporal itself would: none of the API's refusals apply, only the workflow's and its activities'.
    ``evidence`` is a state's ``evidence`` (refs of blobs already stored); ``start`` goes to ``start_workflow``."""
    spec = load_spec(text.encode(), filename="progression.yaml", registry=registry())
    loaded = registry().get(spec.model.business_intent)
    assert loaded is not None, spec.model.business_intent
    async with env.sessionmaker() as session:
        user = await session.get(User, env.user_ids[who])
        assert user is not None
    inp = ProgressionInput(spec=spec, spec_yaml=text, policy=loaded.policy, policy_hash=loaded.hash,
                           evidence={k: EvidenceRef.model_validate(v) for k, v in evidence.items()},
                           submitted_by=actor_for(user))
    return await env.temporal.start_workflow(WORKFLOW_NAME, inp, id=spec.progression_id, task_queue=env.task_queue,
                                             **start)
