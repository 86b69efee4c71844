"""One evaluator (issue 22): the notebook's local verdict equals the server's dry run and the workflow's checks.

A repository is generated from an example (numbers in its JSON evidence changed or removed, evidence items dropped,
features added from the catalog or unknown ones), written to disk as a model repository, and then:

- the notebook SDK evaluates it offline (``LocalPolicy.evaluate_repository``, and ``evaluate`` with the same
  evidence as Python objects),
- the server's dry run (what ``progression route`` shows) evaluates the same upload,
- ``progression start`` submits it and the workflow evaluates its checks stage by stage.

Every check's id, outcome and reason must be equal on each stage the workflow reached; a start the API refuses for a
restricted feature is one the notebook said was forbidden at the start.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.client import Client

from client.sdk import AsyncProgressionClient, InvalidInput
from engine.lifecycle import ProgressionState, Status
from engine.loading import load_feature_catalog
from progression import LocalPolicy, Verdict
from testing.api import ApiEnv, api_env
from testing.people import create_people
from testing.polling import eventually
from testing.workflow import CREDIT, EXAMPLES, MARKETING, POLICIES

FRAUD = EXAMPLES / "card-fraud-detector"
REPOS = [CREDIT, MARKETING, FRAUD]
DEVELOPERS = {CREDIT: "dana", MARKETING: "mia", FRAUD: "fay"}
CATALOG = [f.name for f in load_feature_catalog(POLICIES / "features.yaml")]
SETTLED = {Status.blocked, Status.awaiting_approval, Status.failed, Status.changes_requested, Status.approved,
           Status.in_production, Status.rejected}


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue) as e:
        async with e.sessionmaker() as session:
            tokens, ids = await create_people(session, {"mia": (["model_developer"], "marketing-analytics"),
                                                        "fay": (["model_developer"], "payments-fraud")})
            await session.commit()
        e.tokens.update(tokens)
        e.user_ids.update(ids)
        yield e


def _client(env: ApiEnv, who: str) -> AsyncProgressionClient:
    return AsyncProgressionClient("http://api.test", env.tokens[who], transport=httpx.ASGITransport(app=env.app))


def _numeric_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _numeric_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _numeric_paths(v, (*path, i))]
    return [path] if isinstance(value, int | float) and not isinstance(value, bool) else []


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    if value is _DELETE:
        del data[path[-1]]
    else:
        data[path[-1]] = value


_DELETE = object()
EDIT = st.one_of(st.floats(min_value=-0.5, max_value=2.0, allow_nan=False, allow_infinity=False),
                 st.integers(min_value=0, max_value=200_000), st.just("n/a"), st.just(_DELETE))


@st.composite
def repositories(draw: st.DrawFn) -> dict[str, Any]:
    repo = draw(st.sampled_from(REPOS))
    spec = yaml.safe_load((repo / "progression.yaml").read_text())
    files: dict[str, tuple[str, bytes]] = {}
    for name, rel in spec["evidence"].items():
        raw = (repo / rel).read_bytes()
        if rel.endswith(".json"):
            data = json.loads(raw)
            paths = _numeric_paths(data)
            for index, value in draw(st.lists(st.tuples(st.integers(0, len(paths) - 1), EDIT), max_size=4)):
                try:
                    _set(data, paths[index], value)
                except (KeyError, IndexError, TypeError):  # an earlier edit removed the parent
                    pass
            raw = json.dumps(data).encode()
        files[name] = (rel, raw)
    dropped = draw(st.sets(st.sampled_from(sorted(files)), max_size=2))
    for name in dropped:
        del files[name]
        del spec["evidence"][name]
    extra = draw(st.lists(st.sampled_from([*CATALOG, "not_registered_feature"]), max_size=3, unique=True))
    spec["features"] = list(dict.fromkeys([*spec["features"], *extra]))
    spec["version"]["id"] = f"9.9.9-p{uuid.uuid4().hex[:10]}"
    return {"repo": repo, "spec": spec, "files": files}


def _write(tmp: Path, case: dict[str, Any]) -> Path:
    root = tmp / uuid.uuid4().hex[:8]
    root.mkdir()
    (root / "progression.yaml").write_text(yaml.safe_dump(case["spec"], sort_keys=False))
    for rel, raw in case["files"].values():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(raw)
    return root


def _checks(verdict: Verdict) -> dict[str, list[tuple[str, bool, str]]]:
    return {s.name: [(c.id, c.passed, c.reason) for c in s.checks] for s in verdict.result.route}


def _as_objects(case: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (rel, raw) in case["files"].items():
        out[name] = json.loads(raw) if rel.endswith(".json") else raw.decode()
    return out


class Policies:
    """Each intent's policy fetched once through the API, then evaluated offline."""

    def __init__(self, env: ApiEnv) -> None:
        self.env = env
        self.cache: dict[str, LocalPolicy] = {}

    async def get(self, intent: str) -> LocalPolicy:
        if intent not in self.cache:
            async with _client(self.env, "ann") as c:
                self.cache[intent] = await LocalPolicy.fetch_async(intent, c)
        return self.cache[intent]


async def _notebook_equals_dry_run(env: ApiEnv, policies: Policies, case: dict[str, Any], root: Path) -> Verdict:
    intent = case["spec"]["model"]["business_intent"]
    local = (await policies.get(intent)).evaluate_repository(root)
    in_memory = (await policies.get(intent)).evaluate(spec=root / "progression.yaml", evidence=_as_objects(case))
    async with _client(env, DEVELOPERS[case["repo"]]) as c:
        served = await c.dry_run(intent, root)
    differences = [(a, b) for a, b in zip(served.route, local.result.route, strict=True) if a != b]
    assert served == local.result, differences or (served, local.result)
    assert _checks(in_memory) == _checks(local)
    assert local.result.policy_hash == served.policy_hash
    return local


async def _workflow_equals_notebook(env: ApiEnv, case: dict[str, Any], root: Path, local: Verdict) -> None:
    async with _client(env, DEVELOPERS[case["repo"]]) as c:
        try:
            started = await c.start(root)
        except InvalidInput as exc:
            if exc.code == "evidence_contract":  # the notebook predicted the refusal: the same contract problems
                assert local.result.evidence_problems, exc
                assert local.result.evidence_problems[0].message in str(exc), (exc, local.result.evidence_problems)
                return
            assert exc.code == "feature_restricted", exc
            restricted = {line.name for line in local.features.lines
                          if any(r.check_id == "feature-restricted" for r in line.verdict.rules)}
            assert restricted and restricted <= set(case["spec"]["features"])
            return
        assert not local.result.evidence_problems, "the notebook predicted a refusal the start did not give"

        async def settled() -> ProgressionState | None:
            state = await c.get(started.progression_id)
            return state if state.status in SETTLED else None

        state = await eventually(settled, f"{started.progression_id} settled")
    expected = _checks(local)
    reached = {s.name: [(r.check_id, r.passed, r.reason) for r in s.checks] for s in state.stages if s.checks}
    assert reached, state
    for stage, results in reached.items():
        assert results == expected[stage], (stage, results, expected[stage])
    # the stage where it stopped is the notebook's first failing stage, or the first gate if nothing fails first
    first_failing = next((s.name for s in local.result.route if not s.passes_now), None)
    if state.status == Status.blocked:
        assert state.current_stage == first_failing


async def test_every_example_evaluates_the_same_in_the_notebook_the_dry_run_and_the_workflow(
        env: ApiEnv, tmp_path: Path) -> None:
    policies = Policies(env)
    for repo in REPOS:
        spec = yaml.safe_load((repo / "progression.yaml").read_text())
        spec["version"]["id"] = f"9.9.9-e{uuid.uuid4().hex[:10]}"
        files = {n: (rel, (repo / rel).read_bytes()) for n, rel in spec["evidence"].items()}
        case = {"repo": repo, "spec": spec, "files": files}
        root = _write(tmp_path, case)
        local = await _notebook_equals_dry_run(env, policies, case, root)
        await _workflow_equals_notebook(env, case, root, local)


# The inner loop draws a few repositories (derandomized: the same ones every run); ``make test`` also runs the
# long property runs (``slow``).
PROPERTY = settings(deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


async def _dry_run_case(env: ApiEnv, case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await _notebook_equals_dry_run(env, Policies(env), case, _write(Path(tmp), case))


async def _workflow_case(env: ApiEnv, case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = _write(Path(tmp), case)
        local = await _notebook_equals_dry_run(env, Policies(env), case, root)
        await _workflow_equals_notebook(env, case, root, local)


@settings(PROPERTY, max_examples=10)
@given(case=repositories())
async def test_notebook_equals_dry_run_on_generated_evidence(env: ApiEnv, case: dict[str, Any]) -> None:
    await _dry_run_case(env, case)


@pytest.mark.slow  # the long property run
@settings(PROPERTY, max_examples=30)
@given(case=repositories())
async def test_notebook_equals_dry_run_on_many_generated_repositories(env: ApiEnv, case: dict[str, Any]) -> None:
    await _dry_run_case(env, case)


@settings(PROPERTY, max_examples=4)
@given(case=repositories())
async def test_notebook_equals_the_workflow_on_generated_evidence(env: ApiEnv, case: dict[str, Any]) -> None:
    await _workflow_case(env, case)


@pytest.mark.slow  # the long property run: a workflow per repository
@settings(PROPERTY, max_examples=12)
@given(case=repositories())
async def test_notebook_equals_the_workflow_on_many_generated_repositories(env: ApiEnv, case: dict[str, Any]
                                                                           ) -> None:
    await _workflow_case(env, case)
