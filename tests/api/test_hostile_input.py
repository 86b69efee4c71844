"""Hostile input through HTTP: each gets a clear 4xx with a stable code, nothing is stored, the service stays up.

Every case runs against the real app (real worker, Temporal dev server, SQLite) and checks three
things: the status and ``code`` of the answer, that no row was added anywhere that a request
could write (progressions, catalog, evidence metadata and blobs on disk, decisions, audit events,
idempotency records), and that ``/healthz`` still answers afterwards. The run prints the number
of cases.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import yaml

from engine.db import (
    AuditEvent,
    CatalogModel,
    DecisionRow,
    EvidenceBlob,
    IdempotencyRecord,
    ModelVersion,
    ProgressionRow,
    User,
)
from testing.api import CREDIT, ApiEnv, at_gate, spec_text, started_at_gate, unique_version, upload, wait_for

TABLES = (ProgressionRow, CatalogModel, ModelVersion, EvidenceBlob, DecisionRow, AuditEvent, IdempotencyRecord, User)


async def snapshot(env: ApiEnv) -> dict[str, int]:
    counts = {t.__tablename__: await env.count(t) for t in TABLES}
    store = env.settings.evidence_dir
    counts["evidence_files"] = sum(1 for p in store.rglob("*") if p.is_file()) if store.exists() else 0
    return counts


def spec_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(spec_text(version={"id": unique_version()}))
    data.update(changes)
    return data


def files_for(text: str | bytes, *, evidence: bool = True) -> list[tuple[str, tuple[str, bytes, str]]]:
    raw = text.encode() if isinstance(text, str) else text
    parts: list[tuple[str, tuple[str, bytes, str]]] = [("spec", ("progression.yaml", raw, "application/yaml"))]
    if evidence:
        _, example = upload(CREDIT)
        parts += [p for p in example if p[0] != "spec"]
    return parts


BILLION_LAUGHS = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n" for i in range(8))


@dataclass
class Case:
    name: str
    send: Callable[[ApiEnv], Awaitable[httpx.Response]]
    status: int
    code: str
    says: str = ""  # a fragment the message must contain (what is wrong, where)


def post_start(files: list[tuple[str, tuple[str, bytes, str]]], who: str = "dana",
               **headers: str) -> Callable[[ApiEnv], Awaitable[httpx.Response]]:
    async def send(env: ApiEnv) -> httpx.Response:
        return await env.http.post("/api/v1/progressions", files=files, headers={**env.auth(who), **headers})
    return send


def dry_run_json(body: bytes | dict[str, Any]) -> Callable[[ApiEnv], Awaitable[httpx.Response]]:
    async def send(env: ApiEnv) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await env.http.post("/api/v1/policies/credit-underwriting/dry-run", content=content,
                                   headers={**env.auth("dana"), "Content-Type": "application/json"})
    return send


def get(url: str, who: str = "ann") -> Callable[[ApiEnv], Awaitable[httpx.Response]]:
    async def send(env: ApiEnv) -> httpx.Response:
        return await env.http.get(url, headers=env.auth(who))
    return send


def raw_post(url: str, content: bytes, content_type: str, who: str = "vera",
             **headers: str) -> Callable[[ApiEnv], Awaitable[httpx.Response]]:
    async def send(env: ApiEnv) -> httpx.Response:
        url_ = url.replace("{pid}", env.pid)  # type: ignore[attr-defined]
        return await env.http.post(url_, content=content,
                                   headers={**env.auth(who), "Content-Type": content_type, **headers})
    return send


def deep(levels: int) -> str:
    return "model:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(levels)) + "  " * (levels + 1) + "x: 1\n"


def nested_json(levels: int) -> bytes:
    return b'{"spec": "a: 1", "evidence": {"metrics": ' + b"[" * levels + b"]" * levels + b"}}"


TEN_MB = b"a: " + b"x" * (10 * 1024 * 1024) + b"\n"
LONG = "x" * 200_000


def _cases() -> list[Case]:
    spec_ok = spec_text(version={"id": unique_version()})
    return [
        # YAML bombs and size
        Case("billion laughs (start)", post_start(files_for(BILLION_LAUGHS)), 422, "invalid_spec", "anchors are not"),
        Case("billion laughs (dry run)", dry_run_json({"spec": BILLION_LAUGHS}), 422, "invalid_spec",
             "anchors are not"),
        Case("alias alone", post_start(files_for("a: *x\n")), 422, "invalid_spec", "aliases are not allowed"),
        Case("anchor without alias", post_start(files_for("model: &m {id: x}\n")), 422, "invalid_spec", "anchors"),
        Case("10 MB document", post_start(files_for(TEN_MB, evidence=False)), 413, "request_too_large"),
        Case("spec over the YAML limit", post_start(files_for(b"a: " + b"y" * 300_000 + b"\n")), 422,
             "invalid_spec", "limit"),
        Case("10 MB evidence part", post_start(files_for(spec_ok) + [
            ("evidence.model_card", ("card.md", b"z" * (10 * 1024 * 1024), "text/markdown"))]),
             413, "request_too_large"),
        Case("deeply nested YAML", post_start(files_for(deep(200))), 422, "invalid_spec", "nesting"),
        Case("deeply nested JSON", dry_run_json(nested_json(5000)), 422, "validation_error"),
        Case("several YAML documents", post_start(files_for(spec_ok + "---\na: 1\n")), 422, "invalid_spec",
             "one YAML document"),
        Case("python object tag", post_start(files_for("a: !!python/object/apply:os.system ['true']\n")), 422,
             "invalid_spec", "tag"),
        # wrong types
        Case("model is a string", post_start(files_for(yaml.safe_dump(spec_data(model="credit")))), 422,
             "invalid_spec", "model"),
        Case("version id is a list", post_start(files_for(yaml.safe_dump(spec_data(
            version={**spec_data()["version"], "id": [1, 2]})))), 422, "invalid_spec", "version.id"),
        Case("document is a list", post_start(files_for("- a\n- b\n")), 422, "invalid_spec"),
        Case("decision is a number", raw_post("/api/v1/progressions/{pid}/decisions",
                                              b'{"stage": "validation", "decision": 7}', "application/json"),
             422, "validation_error", "decision"),
        Case("evidence map in dry run is a list", dry_run_json({"spec": spec_ok, "evidence": [1]}), 422,
             "validation_error", "evidence"),
        # evidence paths
        Case("evidence path with ..", post_start(files_for(yaml.safe_dump(spec_data(
            evidence={"metrics": "../../etc/passwd"})), evidence=False)), 422, "invalid_spec", "leaves the repository"),
        Case("absolute evidence path", post_start(files_for(yaml.safe_dump(spec_data(
            evidence={"metrics": "/etc/passwd"})), evidence=False)), 422, "invalid_spec", "absolute"),
        Case("evidence part named with ..", post_start(files_for(spec_ok) + [
            ("evidence.../x", ("x.json", b"{}", "application/json"))]), 422, "invalid_evidence_name"),
        # encodings
        Case("invalid UTF-8 spec", post_start(files_for(b"model:\n  id: \xff\xfe\n")), 422, "invalid_spec",
             "UTF-8"),
        Case("control character in spec (start)", post_start(files_for("model:\n  name: \x98\n")), 422,
             "invalid_spec", "special characters"),
        Case("control character in spec (dry run)", dry_run_json({"spec": "\x98~:k"}), 422, "invalid_spec",
             "special characters"),
        Case("invalid UTF-8 JSON body", raw_post("/api/v1/progressions/{pid}/decisions", b'{"stage": "\xff"}',
                                                 "application/json"), 400, "invalid_body", "cannot be parsed"),
        # long strings
        Case("200k-character comment", raw_post("/api/v1/progressions/{pid}/decisions", json.dumps(
            {"stage": "validation", "decision": "approve", "comment": LONG}).encode(), "application/json"),
             422, "validation_error", "comment"),
        Case("200k-character model name", post_start(files_for(yaml.safe_dump(spec_data(
            model={**spec_data()["model"], "name": LONG})))), 422, "invalid_spec"),
        Case("10k-character progression id", get("/api/v1/progressions/" + "p" * 10_000), 404, "not_found"),
        Case("10k-character audit filter", get("/api/v1/audit/events?progression=" + "q" * 10_000), 200, ""),
        # multipart shape
        Case("many parts", post_start(files_for(spec_ok) + [
            (f"evidence.e{i}", (f"e{i}.json", b"{}", "application/json")) for i in range(300)]),
             400, "invalid_body", "cannot be parsed"),
        Case("broken multipart", raw_post("/api/v1/progressions", b"--b\r\nnot a header\r\n\r\nx--b--\r\n",
                                          "multipart/form-data; boundary=b", who="dana"), 400, "invalid_body"),
        Case("JSON where multipart is expected", raw_post("/api/v1/progressions", b'{"spec": "a: 1"}',
                                                          "application/json", who="dana"),
             415, "unsupported_media_type", "multipart/form-data"),
        Case("two spec parts", post_start(files_for(spec_ok) + [("spec", ("b.yaml", b"a: 1", "text/yaml"))]),
             422, "duplicate_spec"),
        # JSON bodies
        Case("bad JSON", raw_post("/api/v1/progressions/{pid}/decisions", b'{"stage": "validation",',
                                  "application/json"), 422, "validation_error"),
        Case("JSON null body", raw_post("/api/v1/progressions/{pid}/decisions", b"null", "application/json"),
             422, "validation_error"),
        # headers and query parameters
        Case("Idempotency-Key too long", raw_post("/api/v1/progressions/{pid}/decisions", json.dumps(
            {"stage": "validation", "decision": "approve"}).encode(), "application/json",
            **{"Idempotency-Key": "k" * 201}), 422, "invalid_idempotency_key", "Idempotency-Key"),
        Case("Idempotency-Key with control characters", raw_post(
            "/api/v1/progressions/{pid}/decisions", json.dumps({"stage": "validation", "decision": "approve"}).encode(),
            "application/json", **{"Idempotency-Key": "a\tb"}), 422, "invalid_idempotency_key"),
        Case("bad cursor", get("/api/v1/audit/events?cursor=not-a-cursor"), 422, "invalid_cursor", "cursor"),
        Case("cursor of another kind", get("/api/v1/audit/events?cursor=aWQ6MTA"), 422, "invalid_cursor"),
        Case("bad date", get("/api/v1/audit/events?since=yesterday"), 422, "validation_error", "since"),
        Case("bad date in export", get("/api/v1/audit/export?until=2026-13-45"), 422, "validation_error", "until"),
        Case("negative offset", get("/api/v1/progressions?offset=-1"), 422, "validation_error", "offset"),
        Case("offset past 64 bits (progressions)", get("/api/v1/progressions?offset=" + "9" * 40), 422,
             "validation_error", "offset"),
        Case("offset past 64 bits (models)", get("/api/v1/models?offset=12166905795698712576"), 422,
             "validation_error", "offset"),
        Case("huge limit", get("/api/v1/models?limit=99999999999999999999"), 422, "validation_error", "limit"),
        Case("unknown export format", get("/api/v1/audit/export?format=xml"), 422, "validation_error", "format"),
    ]


async def test_hostile_inputs_are_refused_store_nothing_and_service_stays_up(env: ApiEnv) -> None:
    pid, _ = await started_at_gate(env)
    env.pid = pid  # type: ignore[attr-defined]
    refused = 0
    cases = _cases()
    problems: list[str] = []
    for case in cases:
        before = await snapshot(env)
        resp = await case.send(env)
        got = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
        if resp.status_code != case.status or (case.code and (
                got.get("code") != case.code or set(got) != {"code", "message", "details"}
                or case.says.lower() not in str(got.get("message", "")).lower())):
            problems.append(f"{case.name}: expected {case.status} {case.code} ~{case.says!r}, got "
                            f"{resp.status_code} {resp.text[:300]}")
        elif case.code:
            refused += 1
        if await snapshot(env) != before:
            problems.append(f"{case.name}: something was stored")
        if (await env.http.get("/healthz")).status_code != 200:
            problems.append(f"{case.name}: the service did not answer /healthz afterwards")
    assert not problems, "\n".join(problems)
    print(f"\nhostile input: {len(cases)} cases, {refused} refused with a stable code, nothing stored")
    # The progression those requests aimed at is untouched and still waits at its gate.
    state = await wait_for(env, pid, at_gate("validation"))
    assert all(not s["decisions"] for s in state["stages"])
    verified = (await env.http.get("/api/v1/audit/verify", headers=env.auth("ann"))).json()
    assert verified["ok"] is True


async def test_yaml_control_characters_are_422_not_500(env: ApiEnv) -> None:
    """Regression (found by Schemathesis): PyYAML's reader refused the text before the guarded parse: a 500."""
    for text in ("\x98~:k", "model:\n  name: ok\n  team: \x85\x07\n"):
        resp = await dry_run_json({"spec": text})(env)
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert body["code"] == "invalid_spec" and "special characters" in body["message"]
        assert body["message"].startswith("progression.yaml:")  # names the file (and the line)


async def test_unparseable_bodies_are_documented_400s(env: ApiEnv) -> None:
    """Regression (found by Schemathesis): 400 answers were undocumented and coded `bad_request`."""
    env.pid = "m@1"  # type: ignore[attr-defined]
    resp = await raw_post("/api/v1/progressions/{pid}/decisions", b'{"stage": "\xff"}', "application/json")(env)
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_body"
    paths = (await env.http.get("/openapi.json")).json()["paths"]
    for path, method in [("/api/v1/progressions", "post"), ("/api/v1/progressions/{progression_id}/decisions", "post"),
                         ("/api/v1/progressions/{progression_id}/evidence", "post"),
                         ("/api/v1/progressions/{progression_id}/withdraw", "post"),
                         ("/api/v1/policies/{intent}/dry-run", "post"), ("/api/v1/features/{name}", "put"),
                         ("/api/v1/users", "post"), ("/api/v1/users/{user_id}/tokens", "post")]:
        assert {"400", "415"} <= set(paths[path][method]["responses"]), (method, path)
