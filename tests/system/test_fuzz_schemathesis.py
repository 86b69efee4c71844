"""Schemathesis over the app's own /openapi.json: every operation, every role, real HTTP.

The app runs with a real worker on the Temporal dev server (``api_env``) behind uvicorn on
loopback; Schemathesis generates requests from the schema (valid ones and, in negative mode,
invalid ones), sends them with each role's real API token (and with none), and checks every
answer: never a 5xx, the status code is documented for the operation, the content type and
the body match the documented schema, documented headers conform.

Path parameters are drawn at random (mostly 404s) AND pinned to real objects (a running
credit progression of team retail-risk, its model, a policy, a user and their token), so the
deep code paths are fuzzed too.

Size: ``PROGRESSION_FUZZ_EXAMPLES`` examples per (operation, principal, mode, path variant)
(default 5, under two minutes in CI, the same inputs every run). A bigger run with fresh inputs::

    PROGRESSION_FUZZ_RANDOM=1 PROGRESSION_FUZZ_EXAMPLES=100 \
        .venv/bin/python -m pytest -q tests/system/test_fuzz_schemathesis.py -s

The test prints ``schemathesis: N cases, F failures`` and writes the figures to
``test-artifacts/schemathesis.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.client import Client

from engine.db import utcnow
from engine.settings import PROJECT_ROOT
from testing.api import ApiEnv, api_env, serve_http, started_at_gate

EXAMPLES = int(os.environ.get("PROGRESSION_FUZZ_EXAMPLES", "5"))
# CI replays the same inputs every run (a red build is a real regression, not bad luck); set
# PROGRESSION_FUZZ_RANDOM=1 to explore new inputs on every run.
RANDOM = os.environ.get("PROGRESSION_FUZZ_RANDOM") == "1"
# One principal per role, plus no token at all. Team retail-risk owns the pinned progression.
PRINCIPALS = {"developer": "dana", "validator": "vera", "risk_officer": "rita", "auditor": "ann", "admin": "adam",
              "other_team_developer": "sam", "anonymous": None}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
ARTIFACT = PROJECT_ROOT / "test-artifacts" / "schemathesis.json"



@dataclass
class FuzzReport:
    cases: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    unsatisfiable: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, label: str, status: int) -> None:
        with self.lock:
            self.cases += 1
            self.by_operation[label] = self.by_operation.get(label, 0) + 1
            key = f"{status // 100}xx"
            self.statuses[key] = self.statuses.get(key, 0) + 1


def _fuzz_one(op: Any, *, mode: GenerationMode, token: str | None, base_url: str, report: FuzzReport,
              path_parameters: dict[str, Any] | None, session: requests.Session) -> None:
    label = f"{op.method.upper()} {op.path}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM, print_blob=True,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        if token is None:
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=60)
        report.count(label, response.status_code)
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        run()
    except Unsatisfiable:
        # Negative mode on an operation with nothing to make invalid (no parameters, free-form strings only).
        with report.lock:
            report.unsatisfiable += 1
    except (Exception, BaseExceptionGroup) as exc:  # check failures (a BaseExceptionGroup) or transport errors
        report.failures.append(f"{label} [{mode.value}, token={'yes' if token else 'no'}, "
                               f"path={'pinned' if path_parameters else 'random'}]: {str(exc)[:3000]}")


def run_fuzz(schema: Any, base_url: str, tokens: dict[str, str | None], pinned: dict[str, Any],
             report: FuzzReport, only: Callable[[str], bool] = lambda label: True) -> list[str]:
    """Every operation x principal x mode x path variant; returns the labels of the operations fuzzed."""
    labels = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            op = result.ok()
            label = f"{op.method.upper()} {op.path}"
            if not only(label):
                continue
            labels.append(label)
            names = [p.name for p in op.path_parameters]
            variants: list[dict[str, Any] | None] = [None]
            if names:
                variants.append({n: pinned[n] for n in names})
            for token in tokens.values():
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    for path_parameters in variants:
                        _fuzz_one(op, mode=mode, token=token, base_url=base_url, report=report,
                                  path_parameters=path_parameters, session=session)
    return labels


@pytest.fixture
async def live(sqlite_url: str, tmp_path: Path, temporal_client: Client,
               task_queue: str) -> AsyncIterator[tuple[ApiEnv, str, dict[str, Any]]]:
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue) as env:
        pid, _ = await started_at_gate(env)
        token = await env.http.post(f"/api/v1/users/{env.user_ids['sam']}/tokens", json={"name": "fuzz"},
                                    headers=env.auth("adam"))
        assert token.status_code == 201, token.text
        grant = await env.http.post(f"/api/v1/users/{env.user_ids['sam']}/role-grants",
                                    json={"role": "model_validator", "reason": "fuzz"}, headers=env.auth("adam"))
        assert grant.status_code == 201, grant.text
        model_id, version_id = pid.split("@")
        finding = await env.http.post("/api/v1/findings", headers=env.auth("vera"), json={
            "model_id": model_id, "version_id": version_id, "severity": "low", "title": "fuzz"})
        assert finding.status_code == 201, finding.text
        exception = await env.http.post("/api/v1/exceptions", headers=env.auth("rita"), json={
            "model_id": model_id, "version_id": version_id, "kind": "pma", "magnitude": 0.1, "reason": "fuzz",
            "expires_at": (utcnow() + timedelta(days=30)).isoformat()})
        assert exception.status_code == 201, exception.text
        proposal = await env.http.post("/api/v1/features/proposals", headers=env.auth("dana"), json={
            "feature": "zip_code", "tags": ["pii", "geographic"], "comment": "fuzz"})
        assert proposal.status_code == 201, proposal.text
        change = await env.http.post(f"/api/v1/models/{model_id}/intent", headers=env.auth("rita"), json={
            "business_intent": "fraud-detection", "reason": "fuzz"})
        assert change.status_code == 202, change.text
        pinned = {"progression_id": pid, "model_id": model_id, "intent": "credit-underwriting",
                  "name": "income_to_debt", "user_id": env.user_ids["sam"], "token_id": token.json()["id"],
                  "grant_id": grant.json()["id"], "finding_id": finding.json()["finding_id"],
                  "exception_id": exception.json()["exception_id"], "version": 1,
                  "proposal_id": proposal.json()["id"], "change_id": change.json()["id"]}
        async with serve_http(env.app) as base_url:
            yield env, base_url, pinned


def _write_artifact(report: FuzzReport, operations: list[str]) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps({
        "examples_per_variant": EXAMPLES, "operations": len(operations), "principals": list(PRINCIPALS),
        "cases": report.cases, "failures": len(report.failures), "status_classes": report.statuses,
        "cases_by_operation": report.by_operation}, indent=2, sort_keys=True) + "\n")


@pytest.mark.slow
async def test_schemathesis_every_operation_every_role(live: tuple[ApiEnv, str, dict[str, Any]]) -> None:
    env, base_url, pinned = live
    raw = (await env.http.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(raw)
    tokens = {role: env.tokens[who] if who else None for role, who in PRINCIPALS.items()}
    report = FuzzReport()
    # Hypothesis drives synchronous requests; run it in a thread so this loop keeps serving uvicorn and the worker.
    operations = await asyncio.to_thread(run_fuzz, schema, base_url, tokens, pinned, report)

    documented = {f"{m.upper()} {p}" for p, ops in raw["paths"].items() for m in ops}
    assert set(operations) == documented, "every documented operation is fuzzed"
    assert all(report.by_operation.get(label, 0) > 0 for label in operations)
    _write_artifact(report, operations)
    print(f"\nschemathesis: {report.cases} cases over {len(operations)} operations x {len(PRINCIPALS)} "
          f"principals, {len(report.failures)} failures; status classes {report.statuses}")
    assert not report.failures, "\n\n".join(report.failures)
    # The service is still up and the audit chain still verifies after everything it was sent.
    assert (await env.http.get("/healthz")).status_code == 200
    verified = (await env.http.get("/api/v1/audit/verify", headers=env.auth("ann"))).json()
    assert verified["ok"] is True, verified


