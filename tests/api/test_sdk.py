"""The Python SDK against the real API: the async client over ASGI (testing/api.py), the sync
client over HTTP (the live uvicorn server of tests/api/test_cli.py), both with a real worker and Temporal."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from client.repo import read_repository
from client.sdk import (
    AsyncProgressionClient,
    ConflictError,
    ConnectionFailed,
    Forbidden,
    InvalidInput,
    NotFound,
    ProgressionAPIError,
    ProgressionClient,
    ServerError,
    Unauthorized,
    error_from_response,
    evidence_parts,
)
from engine.lifecycle import ProgressionState, Status
from testing.api import CREDIT, ApiEnv, api_env
from testing.polling import eventually
from tests.api.test_cli import LiveAPI, free_port, live_api, make_repo  # noqa: F401 - live_api is a fixture

# ---- async client over ASGI ------------------------------------------------------------------


@pytest.fixture
async def env(temporal_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path) -> AsyncIterator[ApiEnv]:
    async with api_env(sqlite_url, tmp_path, temporal_env.client, f"sdk-{uuid.uuid4()}") as e:
        yield e


def aclient(env: ApiEnv, who: str) -> AsyncProgressionClient:
    return AsyncProgressionClient("http://api.test", env.tokens[who], transport=httpx.ASGITransport(app=env.app))


async def until(client: AsyncProgressionClient, pid: str, done: Callable[[ProgressionState], bool]
                ) -> ProgressionState:
    async def probe() -> ProgressionState | None:
        state = await client.get(pid)
        return state if done(state) else None

    return await eventually(probe, f"{pid} in the expected state")


async def test_async_client_walks_the_credit_journey(env: ApiEnv, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="7.0.0")
    pid = "retail-credit-scorecard@7.0.0"
    async with aclient(env, "dana") as dana, aclient(env, "vera") as vera, aclient(env, "rita") as rita, \
            aclient(env, "rob") as rob, aclient(env, "ann") as ann:
        route = await dana.dry_run(None, repo)  # the intent is read from the spec
        assert route.progression_id == pid and route.intent == "credit-underwriting"
        assert route.checks_failing == 0

        started = await dana.start(repo, idempotency_key="start-7.0.0")
        assert isinstance(started, ProgressionState) and started.progression_id == pid
        replay = await dana.start(repo, idempotency_key="start-7.0.0")  # retried: the first answer
        assert replay.progression_id == pid
        with pytest.raises(ConflictError) as twin:
            await dana.start(repo)
        assert twin.value.status == 409 and pid in twin.value.message

        state = await until(dana, pid, lambda s: s.status == Status.awaiting_approval)
        assert state.current_stage == "validation"
        assert [s.name for s in state.stages] == [s.name for s in route.route]

        inbox = await vera.inbox()
        assert [i.stage for i in inbox if i.progression_id == pid] == ["validation"]
        with pytest.raises(Forbidden) as own:
            await dana.decide(pid, "validation", "approve", "mine")
        assert own.value.status == 403 and own.value.code in {"forbidden", "not_a_gate_role", "own_submission"}

        first = await vera.decide(pid, "validation", "approve", "sound", idempotency_key="v-1")
        again = await vera.decide(pid, "validation", "approve", "sound", idempotency_key="v-1")
        assert [d.decision_id for d in again.stage("validation").decisions] == \
            [d.decision_id for d in first.stage("validation").decisions]  # counted once
        await until(dana, pid, lambda s: s.current_stage == "risk_review" and s.status == Status.awaiting_approval)
        await rita.decide(pid, "risk_review", "approve", "ok")
        with pytest.raises(ConflictError) as twice:
            await rita.decide(pid, "risk_review", "approve", "again")
        assert twice.value.code == "already_decided"
        await rob.decide(pid, "risk_review", "approve", "ok too")
        final = await until(dana, pid, lambda s: s.status == Status.in_production)
        assert final.deployed_at is not None

        page = await ann.list(model="retail-credit-scorecard")
        assert pid in [p.id for p in page.items]
        models = await ann.models()
        assert "retail-credit-scorecard" in [m.id for m in models]
        detail = await ann.model("retail-credit-scorecard")
        assert "7.0.0" in [v.version_id for v in detail.versions]
        assert {p.intent for p in await ann.policies()} >= {"credit-underwriting", "marketing-propensity"}
        assert (await ann.policy("credit-underwriting")).risk_tier == 1

        events = [e async for e in ann.audit_events(progression=pid, page_size=3)]
        assert events[0].event_type == "progression.started"
        assert len({e.seq for e in events}) == len(events)
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        one_page = [e async for e in ann.audit_events(progression=pid, page_size=1000)]
        assert [e.seq for e in one_page] == [e.seq for e in events]  # paging neither skips nor repeats
        exported = (await ann.audit_export("jsonl", progression=pid)).decode().splitlines()
        assert [json.loads(line)["seq"] for line in exported] == [e.seq for e in events]
        assert (await ann.audit_verify()).ok


async def test_async_client_typed_errors(env: ApiEnv, tmp_path: Path) -> None:
    async with aclient(env, "dana") as dana, aclient(env, "sam") as sam:
        with pytest.raises(NotFound) as missing:
            await dana.get("nope@1.0")
        assert missing.value.status == 404 and missing.value.code == "not_found"

        repo = make_repo(tmp_path, version="7.1.0", edit={"model.business_intent": "credit-underwritting"})
        with pytest.raises(InvalidInput) as bad:
            await dana.start(repo)
        assert bad.value.status == 422
        assert "credit-underwriting" in bad.value.message  # did you mean
        assert any(d.get("field") == "model.business_intent" and d.get("line") for d in bad.value.details)

        good = make_repo(tmp_path, version="7.1.1")
        pid = (await dana.start(good)).progression_id
        with pytest.raises(NotFound):  # another team's progression does not leak
            await sam.get(pid)
        with pytest.raises(InvalidInput):
            await dana.withdraw(pid, "")
        withdrawn = await dana.withdraw(pid, "superseded")
        assert withdrawn.status == Status.withdrawn

    async with AsyncProgressionClient("http://api.test", "prg_wrong",
                                      transport=httpx.ASGITransport(app=env.app)) as nobody:
        with pytest.raises(Unauthorized) as unauth:
            await nobody.inbox()
        assert unauth.value.status == 401 and unauth.value.code == "unauthenticated"
    async with AsyncProgressionClient(f"http://127.0.0.1:{free_port()}", "prg_x") as down:
        with pytest.raises(ConnectionFailed):
            await down.policies()


# ---- sync client over real HTTP ---------------------------------------------------------------


def test_sync_client_over_http(live_api: LiveAPI, tmp_path: Path) -> None:  # noqa: F811
    repo = make_repo(tmp_path, version="7.2.0")
    pid = "retail-credit-scorecard@7.2.0"
    with ProgressionClient(live_api.url, live_api.tokens["dana"]) as dana, \
            ProgressionClient(live_api.url, live_api.tokens["alice"], timeout=120) as alice:
        route = dana.dry_run("credit-underwriting", read_repository(repo))
        assert route.progression_id == pid
        state = dana.start(repo)
        assert state.progression_id == pid and state.submitted_by == live_api.user_ids["dana"]
        assert dana.get(pid).progression_id == pid

        good = (repo / "evidence" / "metrics.json").read_bytes()
        after = dana.add_evidence(pid, {"metrics": ("metrics.json", good)}, idempotency_key="ev-1")
        assert after.evidence["metrics"].filename == "metrics.json"
        with pytest.raises(InvalidInput) as unknown:
            dana.add_evidence(pid, {"Bad-Name": b"{}"})
        assert unknown.value.code == "invalid_evidence_name" and unknown.value.status == 422

        with pytest.raises(Forbidden):
            dana.audit_verify()
        assert alice.audit_verify().ok
        events = list(alice.audit_events(progression=pid, page_size=2))
        assert events and events[0].event_type == "progression.started"
        out = tmp_path / "export.csv"
        with out.open("wb") as fh:
            written = alice.audit_export_to(fh, "csv", progression=pid)
        assert written == out.stat().st_size and out.read_text().startswith("seq")
        assert alice.audit_export("csv", progression=pid).decode().splitlines()[0] == \
            out.read_text().splitlines()[0]
        assert dana.withdraw(pid, "done").status == Status.withdrawn
    with ProgressionClient(f"http://127.0.0.1:{free_port()}", "prg_x") as down, pytest.raises(ConnectionFailed):
        down.inbox()


# ---- pieces that need no server --------------------------------------------------------------


def test_error_from_response_maps_statuses() -> None:
    cases = {400: InvalidInput, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: ConflictError,
             413: InvalidInput, 422: InvalidInput, 500: ServerError, 503: ServerError, 418: ProgressionAPIError}
    for status, cls in cases.items():
        exc = error_from_response(httpx.Response(status, json={"code": "c", "message": "m", "details": [1]}))
        assert type(exc) is cls and exc.status == status and exc.code == "c" and exc.details == [1]
    proxy = error_from_response(httpx.Response(502, text="<html>Bad gateway</html>"))
    assert isinstance(proxy, ServerError) and "Bad gateway" in proxy.message and proxy.code == "http_502"


def test_evidence_parts_names_by_stem_or_mapping(tmp_path: Path) -> None:
    file = tmp_path / "metrics.json"
    file.write_bytes(b"{}")
    assert evidence_parts([file]) == [("evidence.metrics", ("metrics.json", b"{}", "application/octet-stream"))]
    assert evidence_parts({"fairness": file, "card": b"x"}) == [
        ("evidence.fairness", ("metrics.json", b"{}", "application/octet-stream")),
        ("evidence.card", ("card", b"x", "application/octet-stream"))]
    assert read_repository(CREDIT).multipart_files()[0][0] == "spec"
