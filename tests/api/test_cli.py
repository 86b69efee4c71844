"""The `progression` CLI against a running API: uvicorn on a free port, a real worker, the Temporal dev server.

The API, the worker and the database preparation run in one background thread with its own
event loop, so the synchronous CLI (CliRunner) can call the API over real HTTP while the
worker keeps running activities.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from api.app import create_app
from client.cli import app
from engine.settings import PROJECT_ROOT, Settings
from launch.worker import run_worker
from testing.databases import prepare_database_with_people
from testing.polling import eventually_sync
from testing.processes import free_port

# A whole stack in a thread (uvicorn on a port, the worker of `launch.serve`) and every CLI journey through it:
# `make test` runs these, the inner loop does not.
pytestmark = pytest.mark.slow

EXAMPLES = PROJECT_ROOT / "examples"
CREDIT = EXAMPLES / "retail-credit-scorecard"

# (username, roles, team)
USERS: list[tuple[str, list[str], str]] = [
    ("dana", ["model_developer"], "retail-risk"),
    ("sam", ["model_developer"], "payments"),
    ("victor", ["model_validator"], "model-validation"),
    ("rita", ["model_risk_officer"], "model-risk"),
    ("omar", ["model_risk_officer"], "model-risk"),
    ("alice", ["auditor"], "internal-audit"),
]

# ---- the live API ----------------------------------------------------------------------------


@dataclass
class LiveAPI:
    url: str
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)


async def _prepare(settings: Settings, api: LiveAPI) -> None:
    """Migrate, seed the feature catalog, create the users (through engine.identity)."""
    tokens, ids = await prepare_database_with_people(settings.resolved_database_url,
                                                      {name: (roles, team) for name, roles, team in USERS})
    api.tokens.update(tokens)
    api.user_ids.update(ids)


def _serve(api: LiveAPI, port: int, ready: threading.Event, stop: threading.Event,
           errors: list[BaseException]) -> None:
    async def main() -> None:
        await _prepare(api.settings, api)
        server = uvicorn.Server(uvicorn.Config(create_app(api.settings), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on"))
        worker = asyncio.create_task(run_worker(api.settings), name="worker")
        serve = asyncio.create_task(server.serve(), name="api")
        while not server.started:
            if serve.done() or worker.done():
                for task in (serve, worker):
                    if task.done() and task.exception():
                        raise task.exception()  # type: ignore[misc]
                raise RuntimeError("the API stopped before it started")
            await asyncio.sleep(0.05)
        ready.set()
        while not stop.is_set():
            if worker.done():
                raise worker.exception() or RuntimeError("worker stopped")
            await asyncio.sleep(0.05)
        server.should_exit = True
        worker.cancel()
        await asyncio.gather(serve, worker, return_exceptions=True)

    try:
        asyncio.run(main())
    except BaseException as exc:  # surfaced by the fixture
        errors.append(exc)
        ready.set()


@contextmanager
def running_api(temporal_address: str, data_dir: Path) -> Iterator[LiveAPI]:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        env="test",
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{data_dir / 'progression.db'}",
        temporal_address=temporal_address,
        task_queue=f"cli-{uuid.uuid4()}",
    )
    api = LiveAPI(url=f"http://127.0.0.1:{port}", settings=settings)
    ready, stop, errors = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=_serve, args=(api, port, ready, stop, errors), daemon=True)
    thread.start()
    assert ready.wait(120), "the API did not start"
    if errors:
        raise errors[0]
    try:
        yield api
    finally:
        stop.set()
        thread.join(30)


@pytest.fixture(scope="module")
def live_api(temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAPI]:
    with running_api(temporal_env.client.service_client.config.target_host, tmp_path_factory.mktemp("api")) as api:
        yield api


def make_repo(tmp_path: Path, source: Path = CREDIT, *, version: str | None = None,
              edit: dict[str, Any] | None = None) -> Path:
    """A copy of an example repository, optionally with another version id or spec changes."""
    repo = tmp_path / f"repo-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, repo)
    spec_path = repo / "progression.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    if version is not None:
        spec["version"]["id"] = version
    for dotted, value in (edit or {}).items():
        node = spec
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return repo


# ---- running the CLI -------------------------------------------------------------------------


def cli_app() -> Any:
    return app


class CLI:
    def __init__(self, api: LiveAPI, tmp_path: Path) -> None:
        self.api = api
        self.runner = CliRunner()
        self.config = tmp_path / "no-config.toml"  # never the developer's real ~/.config

    def env(self, user: str | None) -> dict[str, str | None]:
        return {
            "PROGRESSION_URL": self.api.url,
            "PROGRESSION_TOKEN": self.api.tokens[user] if user else None,
            "PROGRESSION_CONFIG": str(self.config),
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }

    def run(self, user: str | None, *args: str | Path, env: dict[str, str | None] | None = None) -> Result:
        result = self.runner.invoke(cli_app(), [str(a) for a in args], env={**self.env(user), **(env or {})})
        # Never a traceback, whatever the outcome.
        assert "Traceback" not in result.output, result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    def ok(self, user: str | None, *args: str | Path) -> Result:
        result = self.run(user, *args)
        assert result.exit_code == 0, (args, result.exit_code, result.output)
        return result

    def json(self, user: str | None, *args: str | Path) -> Any:
        return json.loads(self.ok(user, *args, "--json").stdout)


@pytest.fixture
def cli(live_api: LiveAPI, tmp_path: Path) -> CLI:
    return CLI(live_api, tmp_path)


def route_shape(route: dict[str, Any]) -> list[tuple[str, list[tuple[str, bool]], list[tuple[str, int, str | None]]]]:
    return [(s["name"], [(c["id"], c["passed"]) for c in s["checks"]],
             [(a["role"], a["count"], a["sla"]) for a in s["approvals"]]) for s in route["route"]]


def state_shape(state: dict[str, Any]) -> list[tuple[str, list[tuple[str, bool]], list[tuple[str, int, str | None]]]]:
    return [(s["name"], [(c["check_id"], c["passed"]) for c in s["checks"]],
             [(a["role"], a["count"], a["sla"]) for a in s["approvals"]]) for s in state["stages"]]


def follow(cli: CLI, user: str, pid: str) -> dict[str, Any]:
    """`status --follow --json` until the progression waits on a person or ends; the last state."""
    result = cli.run(user, "status", pid, "--follow", "--interval", "0.1", "--timeout", "60", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines, result.output
    assert [s["seq"] for s in lines] == sorted({s["seq"] for s in lines})  # one line per change, in order
    return lines[-1]


def follow_until(cli: CLI, pid: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Follow again while the state is between two people (e.g. a gate just satisfied)."""
    def probe() -> dict[str, Any] | None:
        state = follow(cli, "dana", pid)
        return state if done(state) else None

    return eventually_sync(probe, f"{pid} in the expected state")


# ---- the developer's walk: route, start, status, the whole journey ---------------------------


def test_route_before_start_matches_what_then_happens(cli: CLI, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="9.0.0")
    pid = "retail-credit-scorecard@9.0.0"

    text = cli.ok("dana", "route", repo).stdout
    route = cli.json("dana", "route", repo)
    assert route["progression_id"] == pid
    assert route["intent"] == "credit-underwriting"
    assert route["policy"]["risk_tier"] == 1
    stage_names = [s["name"] for s in route["route"]]
    assert stage_names[:2] == ["registration", "validation"] and "production" in stage_names
    for name in stage_names:
        assert name in text
    assert "risk tier 1" in text and "approval: 2 model_risk_officer" in text
    assert route["checks_failing"] == 0, route["fix_first"]  # the example is meant to pass its checks
    assert "Every check passes now" in text

    started = cli.ok("dana", "start", repo)
    assert f"Started {pid}" in started.stdout
    assert "registration" in started.stdout

    state = follow(cli, "dana", pid)
    assert state["status"] == "awaiting_approval", state
    assert state["current_stage"] == "validation"
    assert state["waiting_on"] == ["model_validator"]
    text = cli.ok("dana", "status", pid).stdout
    assert "✔" in text and "done" in text and "current" in text and "next" in text
    assert "model_validator" in text

    # Walk the gates with the people the route named; each stage then shows the route's checks.
    for stage in route["route"]:
        if not stage["approvals"]:
            continue  # no gate: the workflow passes it on its own
        current = follow_until(cli, pid, lambda s, name=stage["name"]: s["current_stage"] == name
                               and s["status"] == "awaiting_approval")
        assert sorted(current["waiting_on"]) == sorted(a["role"] for a in stage["approvals"])
        for approval in stage["approvals"]:
            people = {"model_validator": ["victor"], "model_risk_officer": ["rita", "omar"]}[approval["role"]]
            assert len(people) >= approval["count"]
            for person in people[: approval["count"]]:
                inbox = cli.json(person, "inbox")
                assert any(i["progression_id"] == pid and i["stage"] == stage["name"] for i in inbox)
                cli.ok(person, "decide", pid, "--stage", stage["name"], "approve", "-m", f"{person} approves")

    final = follow_until(cli, pid, lambda s: s["status"] == "in_production")
    assert state_shape(final) == route_shape(route)
    text = cli.ok("alice", "status", pid).stdout
    assert "in_production" in text and "omar approves" in text and "still matches" in text
    verified = cli.json("alice", "verify", pid)
    assert verified["ok"] is True and verified["problems"] == []
    assert [a["stage"] for a in verified["approvals"]] == ["validation", "risk_review", "risk_review"]
    assert all(a["matches"] and a["deployed"] for a in verified["approvals"])
    assert "every counted approval binds" in cli.ok("alice", "verify", pid).stdout
    assert cli.run("sam", "verify", pid).exit_code == 4  # another team's developer cannot read it


def test_start_twice_is_refused_and_names_the_existing(cli: CLI, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="9.1.0")
    first = cli.json("dana", "start", repo)
    assert first["progression_id"] == "retail-credit-scorecard@9.1.0"
    again = cli.run("dana", "start", repo)
    assert again.exit_code == 3
    assert "retail-credit-scorecard@9.1.0" in again.output
    assert "Traceback" not in again.output


def test_invalid_spec_exits_2_with_field_and_line(cli: CLI, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="9.2.0", edit={"model.business_intent": "credit-underwritting"})
    for command in ("route", "start"):
        result = cli.run("dana", command, repo)
        assert result.exit_code == 2, (command, result.output)
        assert "business_intent" in result.output
        assert "credit-underwriting" in result.output  # the did-you-mean
        assert "progression.yaml:" in result.output
    result = cli.run("dana", "start", repo, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stderr)["status"] == 422
    missing = cli.run("dana", "route", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "progression.yaml" in missing.output


def test_route_strict_exits_6_when_a_check_fails(cli: CLI, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="9.3.0")
    metrics_path = repo / "evidence" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["auc"] = 0.55
    metrics_path.write_text(json.dumps(metrics))

    loose = cli.ok("dana", "route", repo)
    assert "Fix first" in loose.stdout and "discrimination" in loose.stdout
    assert "✘" in loose.stdout
    strict = cli.run("dana", "route", repo, "--strict")
    assert strict.exit_code == 6
    route = cli.json("dana", "route", repo)
    assert route["fix_first"]["id"] == "discrimination" and route["fix_first_stage"] == "validation"


# ---- evidence, withdraw, decisions refused ---------------------------------------------------


def test_blocked_then_evidence_add_unblocks_then_withdraw(cli: CLI, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="9.4.0")
    pid = "retail-credit-scorecard@9.4.0"
    metrics_path = repo / "evidence" / "metrics.json"
    good = metrics_path.read_text()
    metrics = json.loads(good)
    metrics["auc"] = 0.55
    metrics_path.write_text(json.dumps(metrics))
    cli.ok("dana", "start", repo)
    blocked = follow(cli, "dana", pid)
    assert blocked["status"] == "blocked"
    assert blocked["current_stage"] == "validation"
    assert "discrimination" in cli.ok("dana", "status", pid).stdout

    fixed = tmp_path / "fixed-metrics.json"
    fixed.write_text(good)
    # Another team's developer does not even see it; an unknown progression is not found.
    assert cli.run("sam", "evidence", "add", pid, f"metrics={fixed}").exit_code == 4
    assert cli.run("dana", "evidence", "add", "nope@1.0", f"metrics={fixed}").exit_code == 4
    added = cli.ok("dana", "evidence", "add", pid, f"metrics={fixed}")
    assert "Evidence metrics added" in added.stdout
    state = follow_until(cli, pid, lambda s: s["status"] == "awaiting_approval")
    assert state["current_stage"] == "validation"
    assert state["evidence"]["metrics"]["filename"] == "fixed-metrics.json"

    # Named by the file's stem: a second evidence upload the spec declares.
    seen = next(s for s in state["stages"] if s["name"] == "validation")["basis"]
    card = tmp_path / "model_card.md"
    card.write_text((repo / "docs" / "model_card.md").read_text() + "\n\nRevised.\n")
    by_stem = cli.json("dana", "evidence", "add", pid, card)
    assert by_stem["evidence"]["model_card"]["filename"] == "model_card.md"
    # The card is read by registration: the journey went back there and came again to the validation gate.
    state = follow_until(cli, pid, lambda s: s["status"] == "awaiting_approval")
    current = next(s for s in state["stages"] if s["name"] == "validation")["basis"]
    assert current != seen
    stale = cli.run("victor", "decide", pid, "--stage", "validation", "approve", "-m", "x", "--basis", seen)
    assert stale.exit_code == 3 and "model_card" in stale.output

    dashed = tmp_path / "model-card.md"
    dashed.write_text("x")
    invalid = cli.run("dana", "evidence", "add", pid, dashed)
    assert invalid.exit_code == 2 and "evidence.model-card" in invalid.output

    # Decisions that are refused: the submitter, a developer, a stage that is not open.
    assert cli.run("dana", "decide", pid, "--stage", "validation", "approve", "-m", "mine").exit_code == 3
    assert cli.run("rita", "decide", pid, "--stage", "validation", "approve", "-m", "x").exit_code == 3
    assert cli.run("rita", "decide", pid, "--stage", "risk_review", "approve", "-m", "early").exit_code == 3
    assert cli.run("victor", "decide", pid, "--stage", "no_such_stage", "approve", "-m", "x").exit_code == 4
    assert cli.run("victor", "decide", "nope@1.0", "--stage", "validation", "approve", "-m", "x").exit_code == 4
    refused = cli.run("dana", "decide", pid, "--stage", "validation", "approve", "-m", "mine", "--json")
    assert refused.exit_code == 3
    assert json.loads(refused.stderr)["status"] == 403

    changes = cli.json("victor", "decide", pid, "--stage", "validation", "request-changes", "-m", "explain PSI")
    assert changes["status"] == "changes_requested"

    assert cli.run("sam", "withdraw", pid, "--reason", "not mine").exit_code in (3, 4)
    withdrawn = cli.ok("dana", "withdraw", pid, "--reason", "superseded by 9.5.0")
    assert f"{pid} is withdrawn" in withdrawn.stdout
    assert cli.json("dana", "status", pid)["status"] == "withdrawn"
    again = cli.run("dana", "withdraw", pid, "--reason", "twice")
    assert again.exit_code == 3


def test_reject_is_final_and_follow_stops(cli: CLI, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="9.5.0")
    pid = "retail-credit-scorecard@9.5.0"
    cli.json("dana", "start", repo)
    assert follow(cli, "dana", pid)["status"] == "awaiting_approval"
    rejected = cli.json("victor", "decide", pid, "--stage", "validation", "reject", "-m", "unsound")
    assert rejected["status"] == "rejected"
    assert follow(cli, "dana", pid)["status"] == "rejected"
    text = cli.ok("dana", "status", pid, "--follow", "--interval", "0.1").stdout  # ends at once
    assert "rejected" in text and "unsound" in text


# ---- reading: list, inbox, models, policies --------------------------------------------------


def test_inbox_models_policies_and_list(cli: CLI, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="9.6.0")
    pid = "retail-credit-scorecard@9.6.0"
    cli.ok("dana", "start", repo)
    follow(cli, "dana", pid)

    inbox = cli.json("victor", "inbox")
    item = next(i for i in inbox if i["progression_id"] == pid)
    assert item["stage"] == "validation" and item["roles"] == ["model_validator"]
    assert pid in cli.ok("victor", "inbox").stdout
    assert all(i["progression_id"] != pid for i in cli.json("rita", "inbox"))  # not waiting on risk officers yet
    assert "Nothing is waiting on you" in cli.ok("dana", "inbox").stdout

    listed = cli.json("dana", "list", "--model", "retail-credit-scorecard")
    assert pid in [p["id"] for p in listed["items"]]
    assert pid in cli.ok("dana", "list", "--status", "awaiting_approval").stdout
    assert cli.json("sam", "list", "--model", "retail-credit-scorecard")["items"] == []  # another team

    models = cli.json("alice", "models")
    assert "retail-credit-scorecard" in [m["id"] for m in models]
    assert "retail-credit-scorecard" in cli.ok("alice", "models").stdout
    detail = cli.json("alice", "models", "retail-credit-scorecard")
    assert "9.6.0" in [v["version_id"] for v in detail["versions"]]
    assert "9.6.0" in cli.ok("alice", "models", "retail-credit-scorecard").stdout
    assert cli.run("alice", "models", "no-such-model").exit_code == 4
    assert cli.run("sam", "models", "retail-credit-scorecard").exit_code == 4

    policies = cli.json("dana", "policies")
    intents = {p["intent"] for p in policies}
    assert {"credit-underwriting", "fraud-detection", "marketing-propensity", "internal-analytics"} <= intents
    assert "credit-underwriting" in cli.ok("dana", "policies").stdout
    credit = cli.json("dana", "policies", "credit-underwriting")
    assert credit["risk_tier"] == 1
    text = cli.ok("dana", "policies", "credit-underwriting").stdout
    for stage in credit["route"]:
        assert stage["name"] in text
    assert cli.run("dana", "policies", "credit-underwritting").exit_code == 4


# ---- audit -----------------------------------------------------------------------------------


def test_audit_events_export_verify(cli: CLI, live_api: LiveAPI, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="9.7.0")
    pid = "retail-credit-scorecard@9.7.0"
    cli.ok("dana", "start", repo)
    follow(cli, "dana", pid)
    assert cli.run("dana", "decide", pid, "--stage", "validation", "approve", "-m", "self — 同意").exit_code == 3

    events = cli.json("alice", "audit", "--progression", pid)
    types = [e["event_type"] for e in events]
    assert types[0] == "progression.started"
    assert "check.evaluated" in types and "decision.refused" in types
    assert all(e["progression_id"] == pid for e in events)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    text = cli.ok("alice", "audit", "--progression", pid).stdout
    assert "progression.started" in text
    raw = cli.ok("alice", "audit", "--progression", pid, "--json").stdout
    assert "同意" in raw and "\\u540c" not in raw  # UTF-8 text stays text in the JSON output

    only = cli.json("alice", "audit", "--progression", pid, "--type", "decision.refused")
    assert only and {e["event_type"] for e in only} == {"decision.refused"}
    by_actor = cli.json("alice", "audit", "--actor", live_api.user_ids["dana"], "--progression", pid)
    assert by_actor and all(e["actor_id"] == live_api.user_ids["dana"] for e in by_actor)
    # People, not ids: a username filters as the id does, names show beside ids, an unknown name is an error.
    by_name = cli.json("alice", "audit", "--actor", "dana", "--progression", pid)
    assert [e["seq"] for e in by_name] == [e["seq"] for e in by_actor]
    assert all(e["actor_username"] == "dana" for e in by_name)
    assert "dana" in cli.ok("alice", "audit", "--actor", "dana", "--progression", pid).stdout
    unknown = cli.run("alice", "audit", "--actor", "no-such-person")
    assert unknown.exit_code == 2 and "unknown_user" in unknown.output
    assert cli.run("alice", "audit", "export", "--actor", "no-such-person").exit_code == 2
    limited = cli.json("alice", "audit", "--progression", pid, "--limit", "2")
    assert [e["seq"] for e in limited] == [e["seq"] for e in events[:2]]
    since = events[1]["occurred_at"]
    later = cli.json("alice", "audit", "--progression", pid, "--since", since)
    assert later and all(e["occurred_at"] >= since for e in later)
    assert cli.json("alice", "audit", "--progression", pid, "--until", "2000-01-01") == []
    assert cli.run("alice", "audit", "--since", "yesterday").exit_code == 2
    assert cli.json("alice", "audit", "--model", "no-such-model") == []

    out_jsonl = tmp_path / "audit.jsonl"
    written = cli.json("alice", "audit", "export", "--format", "jsonl", "--progression", pid, "--output", out_jsonl)
    assert written["bytes"] == out_jsonl.stat().st_size
    exported = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [e["seq"] for e in exported] == [e["seq"] for e in events]
    csv_text = cli.ok("alice", "audit", "export", "--format", "csv", "--progression", pid).stdout
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [int(r["seq"]) for r in rows] == [e["seq"] for e in events]
    assert {r["actor_username"] for r in rows if r["actor_id"] == live_api.user_ids["dana"]} == {"dana"}
    with_bom = cli.ok("alice", "audit", "export", "--format", "csv", "--bom", "--progression", pid).stdout
    assert with_bom.startswith("\ufeffseq,") and not csv_text.startswith("\ufeff")
    assert cli.run("dana", "audit", "export", "--format", "csv").exit_code == 3  # developers may not export

    verified = cli.json("alice", "audit", "verify")
    assert verified["ok"] is True and verified["events_checked"] >= len(events)
    assert "chain OK" in cli.ok("alice", "audit", "verify").stdout
    assert cli.run("dana", "audit", "verify").exit_code == 3


# ---- configuration, authentication, connection ------------------------------------------------


def test_login_writes_config_600_and_is_used(cli: CLI, live_api: LiveAPI, tmp_path: Path) -> None:
    config = tmp_path / "cfg" / "config.toml"
    env = {"PROGRESSION_CONFIG": str(config), "PROGRESSION_URL": None, "PROGRESSION_TOKEN": None}
    result = cli.run(None, "login", "--url", live_api.url + "/", "--token", live_api.tokens["alice"], env=env)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    assert live_api.tokens["alice"] in config.read_text()
    # No environment: the config file is used.
    result = cli.run(None, "policies", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert "credit-underwriting" in {p["intent"] for p in json.loads(result.stdout)}
    # The environment wins over the file.
    bad = cli.run(None, "policies", env={**env, "PROGRESSION_TOKEN": "prg_not-a-token"})
    assert bad.exit_code == 3 and "token" in bad.output
    written = cli.run(None, "login", "--url", live_api.url, "--token", "t", "--json",
                      env={**env, "PROGRESSION_CONFIG": str(tmp_path / "other.toml")})
    assert json.loads(written.stdout)["url"] == live_api.url


def test_unauthenticated_and_unreachable(cli: CLI, tmp_path: Path) -> None:
    no_token = cli.run(None, "inbox")
    assert no_token.exit_code == 3 and "token" in no_token.output
    as_json = cli.run(None, "inbox", "--json")
    assert as_json.exit_code == 3 and json.loads(as_json.stderr)["code"] == "unauthenticated"
    down = f"http://127.0.0.1:{free_port()}"
    for args in (("inbox",), ("status", "x@1"), ("route", CREDIT), ("audit", "verify")):
        result = cli.run("dana", *args, env={"PROGRESSION_URL": down})
        assert result.exit_code == 5, (args, result.output)
        assert "cannot reach" in result.output


def _to_production(cli: CLI, repo: Path) -> str:
    """Start a repository and approve every gate with the people of USERS: the progression id, in production."""
    pid = cli.json("dana", "start", repo)["progression_id"]
    for stage, people in (("validation", ["victor"]), ("risk_review", ["rita", "omar"])):
        follow_until(cli, pid, lambda s, name=stage: s["current_stage"] == name and s["status"] == "awaiting_approval")
        for person in people:
            cli.ok(person, "decide", pid, "--stage", stage, "approve", "-m", f"{person} approves")
    follow_until(cli, pid, lambda s: s["status"] == "in_production")
    return pid


def test_retire_override_is_a_risk_officers_and_refusals_say_why(cli: CLI, tmp_path: Path) -> None:
    """`progression retire-override MODEL -m REASON`: the owner and an auditor are refused with the code, an
    independent risk officer records it once a production model depends on the model, and the owner's
    `retire` then reaches the retirement gate."""
    base, dependent = f"cli-base-{uuid.uuid4().hex[:6]}", f"cli-dependent-{uuid.uuid4().hex[:6]}"
    def own(model_id: str, **edit: Any) -> dict[str, Any]:  # its own artifact, digest and source: no earlier rejection
        return {"model.id": model_id, "version.source": f"git+https://git.example/{model_id}@{uuid.uuid4().hex[:12]}",
                "version.artifact": f"s3://models/{model_id}/1.0.0/",
                "version.artifact_digest": f"sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}", **edit}

    base_pid = _to_production(cli, make_repo(tmp_path, version="1.0.0", edit=own(base)))
    assert cli.run("rita", "retire-override", base, "-m", "   ").exit_code == 2  # a reason is required

    nothing = cli.run("rita", "retire-override", base, "-m", "consolidation")
    assert nothing.exit_code == 3 and "nothing to override [no_dependents]" in nothing.stderr, nothing.output
    dep_pid = _to_production(cli, make_repo(tmp_path, version="1.0.0", edit=own(dependent, depends_on=[base])))
    blocked = cli.run("dana", "retire", base, "-m", "replaced")
    assert blocked.exit_code == 3 and "[dependency_in_production]" in blocked.stderr, blocked.output
    for who, code in (("dana", "forbidden"), ("alice", "forbidden")):
        refused = cli.run(who, "retire-override", base, "-m", "let it go")
        assert refused.exit_code == 3 and f"[{code}]" in refused.stderr, (who, refused.output)
        assert "Traceback" not in refused.output
    missing = cli.run("rita", "retire-override", "no-such-model", "-m", "x")
    assert missing.exit_code == 4, missing.output

    text = cli.ok("rita", "retire-override", base, "-m", "the dependent moves to the new base").stdout
    assert f"{base} may retire although {dep_pid} depend on it (recorded by rita)" in text
    as_json = cli.json("omar", "retire-override", base, "-m", "second opinion")
    assert as_json["dependents"] == [dep_pid] and as_json["granted_by"] == "omar"
    asked = cli.ok("dana", "retire", base, "-m", "replaced")
    assert f"{base_pid}: retirement awaits model_risk_officer" in asked.stdout


def test_usage_errors_exit_2(cli: CLI) -> None:
    assert cli.run("victor", "decide", "x@1", "--stage", "validation", "maybe", "-m", "x").exit_code == 2
    assert cli.run("victor", "decide", "x@1", "approve", "-m", "x").exit_code == 2  # --stage missing
    assert cli.run("dana", "withdraw", "x@1").exit_code == 2  # --reason missing
    assert cli.run("dana", "evidence", "add", "x@1", "/no/such/file.json").exit_code == 2
    assert cli.run("alice", "audit", "export", "--format", "xml").exit_code == 2


def test_server_error_exits_1_with_the_reference(temporal_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """A real 500: an API whose token table vanished under it answers internal_error; the CLI exits 1."""
    import sqlite3

    with running_api(temporal_env.client.service_client.config.target_host, tmp_path / "broken") as api:
        cli = CLI(api, tmp_path)
        assert cli.run("alice", "inbox").exit_code == 0
        with sqlite3.connect(tmp_path / "broken" / "progression.db") as db:
            db.execute("ALTER TABLE api_tokens RENAME TO api_tokens_gone")
        result = cli.run("alice", "inbox")
        assert result.exit_code == 1, result.output
        assert "internal error (reference" in result.output and "internal_error" in result.output
        as_json = cli.run("alice", "inbox", "--json")
        assert as_json.exit_code == 1 and json.loads(as_json.stderr)["status"] == 500
