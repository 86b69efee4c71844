"""Python SDK over the HTTP API v1: a sync and an async client with the same methods.

Progression state comes back as :class:`engine.lifecycle.ProgressionState`, the
model the server itself returns, so scripts and the server cannot disagree about
shapes. Errors raise typed exceptions carrying the API's ``code``, ``message``,
``details`` and HTTP status; a server that cannot be reached raises
:class:`ConnectionFailed`.

    from client.sdk import ProgressionClient
    with ProgressionClient("http://127.0.0.1:8000", token) as client:
        state = client.start("examples/retail-credit-scorecard")
        print(state.status, state.next_action)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from client.repo import RepositoryUpload, read_repository
from engine.lifecycle import DecisionKind, ProgressionDetail, ProgressionState
from engine.monitoring import MonitoringHistory, MonitoringResultOut, RetirementOverrideOut
from engine.wire import (
    AuditEventOut,
    AuditFilter,
    AuditPage,
    CatalogSnapshot,
    ChainVerification,
    DryRunResult,
    EvidenceContracts,
    FeatureList,
    FeatureOut,
    FeatureProposalList,
    FeatureProposalOut,
    Inbox,
    InboxItem,
    ModelDetail,
    ModelOut,
    ModelPage,
    PolicyDetail,
    PolicySummary,
    ProgressionPage,
    ProgressionSummary,
    ProgressionVerification,
    Todo,
)

API_PREFIX = "/api/v1"
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
_list = list  # the clients have a method named `list`; annotations inside them need the builtin

# ---- errors ----------------------------------------------------------------------------------


class ProgressionAPIError(Exception):
    """An error answer of the API (or no answer at all). ``status`` is 0 when nothing answered."""

    def __init__(self, message: str, *, code: str = "error", details: Any = None, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details
        self.status = status

    def __str__(self) -> str:
        return self.message


class Unauthorized(ProgressionAPIError):
    """401: missing, invalid, expired or revoked token."""


class Forbidden(ProgressionAPIError):
    """403: the caller's roles, team or segregation of duties forbid the action."""


class NotFound(ProgressionAPIError):
    """404: no such resource, or not visible to the caller."""


class ConflictError(ProgressionAPIError):
    """409: conflicts with the current state (existing progression, gate not open, ...)."""


class InvalidInput(ProgressionAPIError):
    """400, 413 or 422: the request (spec, body, parameters) does not validate."""


class ServerError(ProgressionAPIError):
    """5xx: the server failed; the message carries its reference id."""


class ConnectionFailed(ProgressionAPIError):
    """The API could not be reached (refused, DNS, TLS, timeout)."""


_BY_STATUS: dict[int, type[ProgressionAPIError]] = {
    400: InvalidInput, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: ConflictError,
    413: InvalidInput, 422: InvalidInput,
}


def error_from_response(response: httpx.Response) -> ProgressionAPIError:
    """The typed exception for an error answer; a body that is not the API's JSON still gives a message."""
    status = response.status_code
    code, message, details = f"http_{status}", "", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        code = str(body.get("code") or code)
        message = str(body["message"])
        details = body.get("details")
    else:
        text = response.text.strip()
        message = f"HTTP {status} {response.reason_phrase}" + (f": {text[:500]}" if text else "")
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ProgressionAPIError)
    return cls(message, code=code, details=details, status=status)


def _connection_error(exc: httpx.TransportError, base_url: str) -> ConnectionFailed:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return ConnectionFailed(f"cannot reach the Progression API at {base_url}: connection {kind} ({exc})",
                            code="connection_failed", details={"url": base_url})


# ---- reading answers with the server's own models ----------------------------------------------


def _json(response: httpx.Response) -> Any:
    return response.json()


def _state(response: httpx.Response) -> ProgressionState:
    body = response.json()
    # Decisions may answer {accepted, decision_id, state}; everything else answers the state itself.
    if isinstance(body, dict) and "state" in body and "progression_id" not in body:
        body = body["state"]
    return ProgressionDetail.model_validate(body)  # a ProgressionState; GET adds the lineage


def _as(model: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        return model.model_validate(response.json())
    return parse


def _list_of(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    def parse(response: httpx.Response) -> list[M]:
        body = response.json()
        if isinstance(body, dict) and "items" in body:
            body = body["items"]
        return [model.model_validate(item) for item in body]
    return parse


def _bytes(response: httpx.Response) -> bytes:
    return response.content


# ---- requests, built once and run by either client -------------------------------------------


@dataclass
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _pid(progression_id: str) -> str:
    # '@' is a legal path character; quote everything else that is not.
    return quote(progression_id, safe="@+")


def _clean(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        out[key] = value
    return out


def _idem(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


EvidenceFiles = Mapping[str, "str | Path | bytes | tuple[str, bytes]"] | Sequence["str | Path"]


def evidence_parts(files: EvidenceFiles) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``evidence.<name>`` parts.

    ``files`` is a mapping name -> path | bytes | (filename, bytes), or a list of paths each named
    by its file stem (``evidence/metrics.json`` -> ``metrics``).
    """
    items: list[tuple[str, Any]]
    if isinstance(files, Mapping):
        items = list(files.items())
    else:
        items = [(Path(p).stem, p) for p in files]
    parts: list[tuple[str, tuple[str, bytes, str]]] = []
    for name, value in items:
        if isinstance(value, bytes):
            filename, content = name, value
        elif isinstance(value, tuple):
            filename, content = value
        else:
            path = Path(value)
            filename, content = path.name, path.read_bytes()
        parts.append((f"evidence.{name}", (filename, content, "application/octet-stream")))
    return parts


def _upload(source: str | Path | RepositoryUpload) -> RepositoryUpload:
    return source if isinstance(source, RepositoryUpload) else read_repository(Path(source))


def stage_basis(state: ProgressionState, stage: str) -> str | None:
    """The basis a decision on ``stage`` binds to now (``None`` when the stage has no open gate)."""
    found = state.stage(stage)
    return found.basis if found is not None else None


class _Calls:
    """One place that knows every endpoint: path, parameters and how to read the answer."""

    @staticmethod
    def start(source: str | Path | RepositoryUpload, idempotency_key: str | None) -> _Call[ProgressionState]:
        return _Call("POST", "/progressions", _state, files=_upload(source).multipart_files(),
                     headers=_idem(idempotency_key))

    @staticmethod
    def get(progression_id: str) -> _Call[ProgressionState]:
        return _Call("GET", f"/progressions/{_pid(progression_id)}", _state)

    @staticmethod
    def list(filters: Mapping[str, Any]) -> _Call[ProgressionPage]:
        return _Call("GET", "/progressions", _as(ProgressionPage), params=_clean(filters))

    @staticmethod
    def decide(progression_id: str, stage: str, decision: DecisionKind | str, comment: str,
               idempotency_key: str | None, basis: str | None = None) -> _Call[ProgressionState]:
        kind = DecisionKind(str(decision).replace("-", "_"))
        body = {"stage": stage, "decision": kind.value, "comment": comment}
        if basis is not None:
            body["basis"] = basis
        return _Call("POST", f"/progressions/{_pid(progression_id)}/decisions", _state, json=body,
                     headers=_idem(idempotency_key))

    @staticmethod
    def verify(progression_id: str) -> _Call[ProgressionVerification]:
        return _Call("GET", f"/progressions/{_pid(progression_id)}/verify", _as(ProgressionVerification))

    @staticmethod
    def add_evidence(progression_id: str, files: EvidenceFiles, idempotency_key: str | None) -> _Call[ProgressionState]:
        return _Call("POST", f"/progressions/{_pid(progression_id)}/evidence", _state, files=evidence_parts(files),
                     headers=_idem(idempotency_key))

    @staticmethod
    def withdraw(progression_id: str, reason: str, idempotency_key: str | None) -> _Call[ProgressionState]:
        return _Call("POST", f"/progressions/{_pid(progression_id)}/withdraw", _state, json={"reason": reason},
                     headers=_idem(idempotency_key))

    @staticmethod
    def inbox(cursor: str | None, limit: int | None) -> _Call[Inbox]:
        return _Call("GET", "/inbox", _as(Inbox), params=_clean({"cursor": cursor, "limit": limit}))

    @staticmethod
    def models(filters: Mapping[str, Any]) -> _Call[ModelPage]:
        return _Call("GET", "/models", _as(ModelPage), params=_clean(filters))

    @staticmethod
    def model(model_id: str) -> _Call[ModelDetail]:
        return _Call("GET", f"/models/{quote(model_id, safe='')}", _as(ModelDetail))

    @staticmethod
    def post_monitoring(model_id: str, period: str, metrics: Mapping[str, Any],
                        idempotency_key: str | None) -> _Call[MonitoringResultOut]:
        return _Call("POST", f"/models/{quote(model_id, safe='')}/monitoring", _as(MonitoringResultOut),
                     json={"period": period, "metrics": dict(metrics)}, headers=_idem(idempotency_key))

    @staticmethod
    def monitoring(model_id: str) -> _Call[MonitoringHistory]:
        return _Call("GET", f"/models/{quote(model_id, safe='')}/monitoring", _as(MonitoringHistory))

    @staticmethod
    def retire(model_id: str, reason: str, replacement: str | None,
               idempotency_key: str | None) -> _Call[ProgressionState]:
        return _Call("POST", f"/models/{quote(model_id, safe='')}/retire", _state,
                     json={"reason": reason, "replacement": replacement}, headers=_idem(idempotency_key))

    @staticmethod
    def retirement_override(model_id: str, reason: str) -> _Call[RetirementOverrideOut]:
        return _Call("POST", f"/models/{quote(model_id, safe='')}/retirement-override", _as(RetirementOverrideOut),
                     json={"reason": reason})

    @staticmethod
    def policies() -> _Call[_list[PolicySummary]]:
        return _Call("GET", "/policies", _list_of(PolicySummary))

    @staticmethod
    def policy(intent: str) -> _Call[PolicyDetail]:
        return _Call("GET", f"/policies/{quote(intent, safe='')}", _as(PolicyDetail))

    @staticmethod
    def evidence_contracts(intent: str) -> _Call[EvidenceContracts]:
        return _Call("GET", f"/policies/{quote(intent, safe='')}/evidence", _as(EvidenceContracts))

    @staticmethod
    def progression_schema() -> _Call[dict[str, Any]]:
        return _Call("GET", "/schemas/progression.json", _json)

    @staticmethod
    def me() -> _Call[dict[str, Any]]:
        return _Call("GET", "/me", _json)

    @staticmethod
    def todo() -> _Call[Todo]:
        return _Call("GET", "/todo", _as(Todo))

    @staticmethod
    def dry_run(intent: str | None, source: str | Path | RepositoryUpload) -> _Call[DryRunResult]:
        # Without an intent the server reads it from the spec with the same loader as a start (same messages,
        # codes and lines for a YAML error, an unknown key or an unknown intent).
        path = f"/policies/{quote(intent, safe='')}/dry-run" if intent else "/dry-run"
        return _Call("POST", path, _as(DryRunResult), files=_upload(source).multipart_files())

    @staticmethod
    def features(filters: Mapping[str, Any]) -> _Call[FeatureList]:
        return _Call("GET", "/features", _as(FeatureList), params=_clean(filters))

    @staticmethod
    def feature(name: str) -> _Call[FeatureOut]:
        return _Call("GET", f"/features/{quote(name, safe='')}", _as(FeatureOut))

    @staticmethod
    def catalog_version(version: int | None) -> _Call[CatalogSnapshot]:
        return _Call("GET", f"/features/versions/{'current' if version is None else int(version)}",
                     _as(CatalogSnapshot))

    @staticmethod
    def feature_proposals(filters: Mapping[str, Any]) -> _Call[FeatureProposalList]:
        return _Call("GET", "/features/proposals", _as(FeatureProposalList), params=_clean(filters))

    @staticmethod
    def propose_feature(body: Mapping[str, Any], idempotency_key: str | None) -> _Call[FeatureProposalOut]:
        return _Call("POST", "/features/proposals", _as(FeatureProposalOut), json=_clean(body),
                     headers=_idem(idempotency_key))

    @staticmethod
    def decide_feature_proposal(proposal_id: str, approve: bool, comment: str,
                                idempotency_key: str | None) -> _Call[FeatureProposalOut]:
        return _Call("POST", f"/features/proposals/{quote(proposal_id, safe='')}/"
                             f"{'approval' if approve else 'rejection'}", _as(FeatureProposalOut),
                     json={"comment": comment}, headers=_idem(idempotency_key))

    @staticmethod
    def audit_page(filters: Mapping[str, Any], cursor: str | None, limit: int | None) -> _Call[AuditPage]:
        params = {**AuditFilter(**filters).query_params(), **_clean({"cursor": cursor, "limit": limit})}
        return _Call("GET", "/audit/events", _as(AuditPage), params=params)

    @staticmethod
    def audit_export(format: str, filters: Mapping[str, Any], bom: bool = False) -> _Call[bytes]:
        params = {**AuditFilter(**filters).query_params(), "format": format, **({"bom": "true"} if bom else {})}
        return _Call("GET", "/audit/export", _bytes, params=params)

    @staticmethod
    def audit_verify() -> _Call[ChainVerification]:
        return _Call("GET", "/audit/verify", _as(ChainVerification))


AuditFormat = Literal["csv", "jsonl"]


def _headers(token: str | None, user_agent: str) -> dict[str, str]:
    headers = {"User-Agent": user_agent, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


USER_AGENT = "progression-sdk/0.1"


# ---- sync client -----------------------------------------------------------------------------


class ProgressionClient:
    """Synchronous client. Use as a context manager or call :meth:`close`."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + API_PREFIX, headers=_headers(token, USER_AGENT),
                                  timeout=timeout, transport=transport)

    def __enter__(self) -> ProgressionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, params=call.params, json=call.json,
                                          files=call.files, headers=call.headers)
        except httpx.TransportError as exc:
            raise _connection_error(exc, self.base_url) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return call.parse(response)

    def start(self, repo_dir: str | Path | RepositoryUpload, *, idempotency_key: str | None = None
              ) -> ProgressionState:
        """Upload ``progression.yaml`` and the evidence it names; the new progression's state."""
        return self._run(_Calls.start(repo_dir, idempotency_key))

    def get(self, progression_id: str) -> ProgressionState:
        return self._run(_Calls.get(progression_id))

    def list(self, **filters: Any) -> ProgressionPage:
        """One page of summaries. Filters: ``model``, ``intent``, ``stage``, ``status``, ``team``; ``limit``,
        ``cursor`` (a page's ``next_cursor``)."""
        return self._run(_Calls.list(filters))

    def progressions(self, *, page_size: int | None = None, **filters: Any) -> Iterator[ProgressionSummary]:
        """Every progression visible to the caller (newest first), page after page by cursor."""
        cursor: str | None = None
        while True:
            page = self._run(_Calls.list({**filters, "cursor": cursor, "limit": page_size}))
            yield from page.items
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    def decide(self, progression_id: str, stage: str, decision: DecisionKind | str, comment: str,
               idempotency_key: str | None = None, basis: str | None = None) -> ProgressionState:
        """Decide on the open gate of ``stage``. ``basis`` is what you decided on (``stages[i].basis`` of
        the state you read); without it the progression is read first and its current basis is sent, so
        a change that lands in between is refused (409 stale_basis) instead of being approved unseen."""
        if basis is None:
            basis = stage_basis(self.get(progression_id), stage)
        return self._run(_Calls.decide(progression_id, stage, decision, comment, idempotency_key, basis))

    def verify(self, progression_id: str) -> ProgressionVerification:
        """Evidence re-hashed and every counted approval's basis checked (``GET .../verify``)."""
        return self._run(_Calls.verify(progression_id))

    def add_evidence(self, progression_id: str, files: EvidenceFiles, *, idempotency_key: str | None = None
                     ) -> ProgressionState:
        return self._run(_Calls.add_evidence(progression_id, files, idempotency_key))

    def withdraw(self, progression_id: str, reason: str, *, idempotency_key: str | None = None) -> ProgressionState:
        return self._run(_Calls.withdraw(progression_id, reason, idempotency_key))

    def inbox(self, *, page_size: int | None = None) -> _list[InboxItem]:
        """Every gate waiting on the caller (oldest first), all pages."""
        out: _list[InboxItem] = []
        cursor: str | None = None
        while True:
            page = self._run(_Calls.inbox(cursor, page_size))
            out.extend(page.items)
            if not page.next_cursor:  # a page may be short (or empty) and still not the last
                return out
            cursor = page.next_cursor

    def todo(self) -> Todo:
        """Everything waiting on me, most urgent first."""
        return self._run(_Calls.todo())

    def me(self) -> dict[str, Any]:
        return self._run(_Calls.me())

    def evidence_contracts(self, intent: str) -> EvidenceContracts:
        """What each evidence item of ``intent``'s policy must look like (schema, sections, example)."""
        return self._run(_Calls.evidence_contracts(intent))

    def progression_schema(self) -> dict[str, Any]:
        """The JSON Schema of progression.yaml, with this installation's business intents."""
        return self._run(_Calls.progression_schema())

    def models(self, **filters: Any) -> _list[ModelOut]:
        """Every model visible to the caller (all pages)."""
        out: _list[ModelOut] = []
        offset = 0
        while True:
            page = self._run(_Calls.models({**filters, "offset": offset}))
            out.extend(page.items)
            if page.next_offset is None or not page.items:
                return out
            offset = page.next_offset

    def model(self, model_id: str) -> ModelDetail:
        return self._run(_Calls.model(model_id))

    def post_monitoring(self, model_id: str, period: str, metrics: Mapping[str, Any], *,
                        idempotency_key: str | None = None) -> MonitoringResultOut:
        """A period's monitoring results (the ``monitor`` service identity's token)."""
        return self._run(_Calls.post_monitoring(model_id, period, metrics, idempotency_key))

    def monitoring(self, model_id: str) -> MonitoringHistory:
        return self._run(_Calls.monitoring(model_id))

    def retire(self, model_id: str, reason: str, *, replacement: str | None = None,
               idempotency_key: str | None = None) -> ProgressionState:
        """Ask to retire the model in production (the owning team); the policy's approvers decide at a gate."""
        return self._run(_Calls.retire(model_id, reason, replacement, idempotency_key))

    def retirement_override(self, model_id: str, reason: str) -> RetirementOverrideOut:
        return self._run(_Calls.retirement_override(model_id, reason))

    def policies(self) -> _list[PolicySummary]:
        return self._run(_Calls.policies())

    def policy(self, intent: str) -> PolicyDetail:
        return self._run(_Calls.policy(intent))

    def dry_run(self, intent: str | None, repo_dir: str | Path | RepositoryUpload) -> DryRunResult:
        """The route the repository would take now; ``intent=None`` reads it from the spec."""
        upload = _upload(repo_dir)
        return self._run(_Calls.dry_run(intent, upload))

    def audit_events(self, *, page_size: int | None = None, **filters: Any) -> Iterator[AuditEventOut]:
        """Every matching event, page after page. Filters: the fields of :class:`engine.wire.AuditFilter`
        (``progression``, ``model``, ``actor``, ``event_type``, ``since``, ``until``); an unknown one is refused."""
        cursor: str | None = None
        while True:
            page = self._run(_Calls.audit_page(filters, cursor, page_size))
            yield from page.items
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    def audit_export(self, format: AuditFormat = "jsonl", *, bom: bool = False, **filters: Any) -> bytes:
        return self._run(_Calls.audit_export(format, filters, bom))

    def audit_export_to(self, dest: Any, format: AuditFormat = "jsonl", *, bom: bool = False, **filters: Any) -> int:
        """Stream the export into a binary file object; returns the bytes written. ``bom``: CSV with a byte
        order mark (spreadsheet tools); ``actor`` may be a username."""
        call = _Calls.audit_export(format, filters, bom)
        written = 0
        try:
            with self._http.stream("GET", call.path, params=call.params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                for chunk in response.iter_bytes():
                    dest.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise _connection_error(exc, self.base_url) from None
        return written

    def audit_verify(self) -> ChainVerification:
        return self._run(_Calls.audit_verify())

    def features(self, **filters: Any) -> FeatureList:
        """The catalog (filters ``q``, ``tag``, ``intent``, ``verdict``), each feature with what each policy says."""
        return self._run(_Calls.features(filters))

    def feature(self, name: str) -> FeatureOut:
        return self._run(_Calls.feature(name))

    def catalog_version(self, version: int | None = None) -> CatalogSnapshot:
        """One catalog version as a whole (the current one by default)."""
        return self._run(_Calls.catalog_version(version))

    def feature_proposals(self, **filters: Any) -> FeatureProposalList:
        return self._run(_Calls.feature_proposals(filters))

    def propose_feature(self, feature: str, *, comment: str, description: str | None = None,
                        tags: Sequence[str] | None = None, owner: str | None = None,
                        idempotency_key: str | None = None) -> FeatureProposalOut:
        body = {"feature": feature, "comment": comment, "description": description,
                "tags": None if tags is None else list(tags), "owner": owner}
        return self._run(_Calls.propose_feature(body, idempotency_key))

    def decide_feature_proposal(self, proposal_id: str, *, approve: bool, comment: str = "",
                                idempotency_key: str | None = None) -> FeatureProposalOut:
        return self._run(_Calls.decide_feature_proposal(proposal_id, approve, comment, idempotency_key))

    def request_json(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
                     idempotency_key: str | None = None) -> Any:
        """Any endpoint under /api/v1 (e.g. ``/findings``), answered as parsed JSON; errors as typed exceptions."""
        return self._run(_Call(method, path, _json, params=_clean(params or {}), json=json,
                               headers=_idem(idempotency_key)))

    def request_text(self, path: str, *, params: Mapping[str, Any] | None = None) -> str:
        return self._run(_Call("GET", path, lambda r: r.text, params=_clean(params or {})))


# ---- async client ----------------------------------------------------------------------------


class AsyncProgressionClient:
    """The same methods as :class:`ProgressionClient`, awaitable."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url + API_PREFIX, headers=_headers(token, USER_AGENT),
                                       timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncProgressionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, params=call.params, json=call.json,
                                                files=call.files, headers=call.headers)
        except httpx.TransportError as exc:
            raise _connection_error(exc, self.base_url) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return call.parse(response)

    async def start(self, repo_dir: str | Path | RepositoryUpload, *, idempotency_key: str | None = None
                    ) -> ProgressionState:
        return await self._run(_Calls.start(repo_dir, idempotency_key))

    async def get(self, progression_id: str) -> ProgressionState:
        return await self._run(_Calls.get(progression_id))

    async def list(self, **filters: Any) -> ProgressionPage:
        return await self._run(_Calls.list(filters))

    async def progressions(self, *, page_size: int | None = None, **filters: Any
                           ) -> AsyncIterator[ProgressionSummary]:
        cursor: str | None = None
        while True:
            page = await self._run(_Calls.list({**filters, "cursor": cursor, "limit": page_size}))
            for item in page.items:
                yield item
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    async def decide(self, progression_id: str, stage: str, decision: DecisionKind | str, comment: str,
                     idempotency_key: str | None = None, basis: str | None = None) -> ProgressionState:
        if basis is None:
            basis = stage_basis(await self.get(progression_id), stage)
        return await self._run(_Calls.decide(progression_id, stage, decision, comment, idempotency_key, basis))

    async def verify(self, progression_id: str) -> ProgressionVerification:
        return await self._run(_Calls.verify(progression_id))

    async def add_evidence(self, progression_id: str, files: EvidenceFiles, *, idempotency_key: str | None = None
                           ) -> ProgressionState:
        return await self._run(_Calls.add_evidence(progression_id, files, idempotency_key))

    async def withdraw(self, progression_id: str, reason: str, *, idempotency_key: str | None = None
                       ) -> ProgressionState:
        return await self._run(_Calls.withdraw(progression_id, reason, idempotency_key))

    async def inbox(self, *, page_size: int | None = None) -> _list[InboxItem]:
        out: _list[InboxItem] = []
        cursor: str | None = None
        while True:
            page = await self._run(_Calls.inbox(cursor, page_size))
            out.extend(page.items)
            if not page.next_cursor:  # a page may be short (or empty) and still not the last
                return out
            cursor = page.next_cursor

    async def todo(self) -> Todo:
        return await self._run(_Calls.todo())

    async def evidence_contracts(self, intent: str) -> EvidenceContracts:
        return await self._run(_Calls.evidence_contracts(intent))

    async def models(self, **filters: Any) -> _list[ModelOut]:
        out: _list[ModelOut] = []
        offset = 0
        while True:
            page = await self._run(_Calls.models({**filters, "offset": offset}))
            out.extend(page.items)
            if page.next_offset is None or not page.items:
                return out
            offset = page.next_offset

    async def model(self, model_id: str) -> ModelDetail:
        return await self._run(_Calls.model(model_id))

    async def post_monitoring(self, model_id: str, period: str, metrics: Mapping[str, Any], *,
                              idempotency_key: str | None = None) -> MonitoringResultOut:
        return await self._run(_Calls.post_monitoring(model_id, period, metrics, idempotency_key))

    async def monitoring(self, model_id: str) -> MonitoringHistory:
        return await self._run(_Calls.monitoring(model_id))

    async def retire(self, model_id: str, reason: str, *, replacement: str | None = None,
                     idempotency_key: str | None = None) -> ProgressionState:
        return await self._run(_Calls.retire(model_id, reason, replacement, idempotency_key))

    async def retirement_override(self, model_id: str, reason: str) -> RetirementOverrideOut:
        return await self._run(_Calls.retirement_override(model_id, reason))

    async def policies(self) -> _list[PolicySummary]:
        return await self._run(_Calls.policies())

    async def policy(self, intent: str) -> PolicyDetail:
        return await self._run(_Calls.policy(intent))

    async def dry_run(self, intent: str | None, repo_dir: str | Path | RepositoryUpload) -> DryRunResult:
        upload = _upload(repo_dir)
        return await self._run(_Calls.dry_run(intent, upload))

    async def audit_events(self, *, page_size: int | None = None, **filters: Any) -> AsyncIterator[AuditEventOut]:
        cursor: str | None = None
        while True:
            page = await self._run(_Calls.audit_page(filters, cursor, page_size))
            for event in page.items:
                yield event
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    async def audit_export(self, format: AuditFormat = "jsonl", *, bom: bool = False, **filters: Any) -> bytes:
        return await self._run(_Calls.audit_export(format, filters, bom))

    async def audit_verify(self) -> ChainVerification:
        return await self._run(_Calls.audit_verify())

    async def features(self, **filters: Any) -> FeatureList:
        return await self._run(_Calls.features(filters))

    async def feature(self, name: str) -> FeatureOut:
        return await self._run(_Calls.feature(name))

    async def catalog_version(self, version: int | None = None) -> CatalogSnapshot:
        return await self._run(_Calls.catalog_version(version))

    async def feature_proposals(self, **filters: Any) -> FeatureProposalList:
        return await self._run(_Calls.feature_proposals(filters))

    async def propose_feature(self, feature: str, *, comment: str, description: str | None = None,
                              tags: Sequence[str] | None = None, owner: str | None = None,
                              idempotency_key: str | None = None) -> FeatureProposalOut:
        body = {"feature": feature, "comment": comment, "description": description,
                "tags": None if tags is None else list(tags), "owner": owner}
        return await self._run(_Calls.propose_feature(body, idempotency_key))

    async def decide_feature_proposal(self, proposal_id: str, *, approve: bool, comment: str = "",
                                      idempotency_key: str | None = None) -> FeatureProposalOut:
        return await self._run(_Calls.decide_feature_proposal(proposal_id, approve, comment, idempotency_key))


def new_idempotency_key() -> str:
    return str(uuid.uuid4())
