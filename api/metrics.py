"""Prometheus metrics and the two pure-ASGI middlewares (request metrics, body size limit).

Each app owns its CollectorRegistry, so several apps in one process (tests) do not
collide. Request metrics are labelled by route *template* (``/api/v1/progressions/{id}``),
never by raw path, to keep cardinality bounded. Progressions by status and gate
waiting time are computed from the read model at scrape time.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BodyTooLarge, error_response
from api.services.findings import finding_metrics
from engine.db import ProgressionRow, utcnow
from engine.lifecycle import ProgressionState, StageStatus


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("progression_http_requests", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("progression_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.by_status = Gauge("progression_progressions", "Progressions by status (read model)", ["status"],
                               registry=self.registry)
        self.gates_open = Gauge("progression_gates_open", "Open approval gates by intent and stage",
                                ["intent", "stage"], registry=self.registry)
        self.gate_wait_max = Gauge("progression_gate_waiting_seconds_max",
                                   "Longest time an open gate has been waiting, by intent and stage",
                                   ["intent", "stage"], registry=self.registry)
        self.gate_wait_sum = Gauge("progression_gate_waiting_seconds_sum",
                                   "Total waiting time of open gates, by intent and stage",
                                   ["intent", "stage"], registry=self.registry)
        self.gates_escalated = Gauge("progression_gates_escalated", "Open gates past their SLA (escalated)",
                                     registry=self.registry)
        self.findings_open = Gauge("progression_findings_open", "Open findings by severity", ["severity"],
                                   registry=self.registry)
        self.findings_overdue = Gauge("progression_findings_overdue", "Open findings past their due date",
                                      registry=self.registry)
        self.exceptions_expiring = Gauge("progression_exceptions_expiring_30d",
                                         "Active exceptions expiring within 30 days", registry=self.registry)

    async def refresh(self, session: AsyncSession, now: datetime | None = None) -> None:
        now = now or utcnow()
        self.by_status.clear()
        for status, count in (await session.execute(
                select(ProgressionRow.status, func.count()).group_by(ProgressionRow.status))).all():
            self.by_status.labels(status=status).set(count)
        self.gates_open.clear()
        self.gate_wait_max.clear()
        self.gate_wait_sum.clear()
        escalated = 0
        rows = (await session.execute(select(ProgressionRow).where(
            ProgressionRow.gate_opened_at.is_not(None)))).scalars()
        for row in rows:
            stage = row.current_stage or ""
            try:
                state = ProgressionState.model_validate(row.state)
                current = state.stage(stage)
                if current is None or current.status != StageStatus.awaiting_approval:
                    continue
            except ValueError:
                continue
            assert row.gate_opened_at is not None
            waited = max(0.0, (now - row.gate_opened_at).total_seconds())
            labels = {"intent": row.business_intent, "stage": stage}
            self.gates_open.labels(**labels).inc()
            self.gate_wait_sum.labels(**labels).inc(waited)
            child = self.gate_wait_max.labels(**labels)
            child.set(max(child._value.get(), waited))  # noqa: SLF001 - no public getter on a Gauge child
            escalated += int(row.escalated)
        self.gates_escalated.set(escalated)
        findings = await finding_metrics(session=session)
        self.findings_open.clear()
        for severity, count in findings.open_by_severity.items():
            self.findings_open.labels(severity=severity).set(count)
        self.findings_overdue.set(findings.overdue)
        self.exceptions_expiring.set(findings.exceptions_expiring_30d)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=template, status=str(status["code"])).inc()
            self.metrics.latency.labels(method=method, route=template).observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """Refuse request bodies above ``limit`` bytes with a 413 JSON error, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def _receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def _send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, _receive, _send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = BodyTooLarge(self.limit)
        response = error_response(413, "request_too_large", exc.detail, {"limit_bytes": self.limit},
                                  {"Connection": "close"})
        await response(scope, receive, send)


def metrics_content_type() -> str:
    return CONTENT_TYPE_LATEST


__all__: list[Any] = ["Metrics", "MetricsMiddleware", "BodyLimitMiddleware", "metrics_content_type"]
