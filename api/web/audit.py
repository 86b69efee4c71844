"""The audit explorer: filtered events, export, chain verification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from api.authz import Action, allowed
from api.services.audit import export_events, list_events, verify
from api.web.render import PAGE_SIZE, UI, PostWeb, UserWeb, WebError, call, finish, render
from engine.lifecycle import (
    EventType,
)
from engine.wire import AuditFilter

router = APIRouter(prefix=UI, include_in_schema=False)


@dataclass
class AuditForm:
    """The explorer's filter form, as typed (kept to refill the form and build links)."""

    progression: str = ""
    model: str = ""
    actor: str = ""
    event_type: str = ""
    since: str = ""
    until: str = ""

    def query(self, **extra: Any) -> str:
        data = {k: v for k, v in self.__dict__.items() if v}
        data.update({k: v for k, v in extra.items() if v is not None})
        return urlencode(data)


def _parse_when(value: str, field: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise WebError(422, f"{field}: {value!r} is not a date and time (use YYYY-MM-DDTHH:MM, UTC)",
                       "validation_error") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _service_filters(f: AuditForm) -> AuditFilter:
    """The API service's filters (an actor typed as a username or a user id; the service resolves it)."""
    return AuditFilter(progression=f.progression or None, model=f.model or None, actor=f.actor or None,
                        event_type=f.event_type or None, since=_parse_when(f.since, "since"),
                        until=_parse_when(f.until, "until"))


def _audit_form(progression: str | None, model: str | None, actor: str | None, event_type: str | None,
                since: str | None, until: str | None) -> AuditForm:
    return AuditForm(progression=(progression or "").strip(), model=(model or "").strip(),
                     actor=(actor or "").strip(), event_type=(event_type or "").strip(),
                     since=(since or "").strip(), until=(until or "").strip())


@router.get("/audit", name="ui_audit")
async def audit_page(web: UserWeb, progression: str | None = None, model: str | None = None,
                     actor: str | None = None, event_type: str | None = None, since: str | None = None,
                     until: str | None = None, cursor: str | None = None, page_no: int = 1) -> Response:
    f = _audit_form(progression, model, actor, event_type, since, until)
    page = await call(list_events(session=web.db, principal=web.user, filters=_service_filters(f),
                                  cursor=cursor or None, limit=PAGE_SIZE))
    page_no = max(page_no, 1)
    ctx = {"title": "Audit", "active": "audit", "page": page, "filters": f, "page_no": page_no,
           "event_types": [t.value for t in EventType],
           "can_export": allowed(web.user, Action.export_audit), "can_verify": allowed(web.user, Action.verify_audit),
           "next_query": f.query(cursor=page.next_cursor, page_no=page_no + 1) if page.has_more else None,
           "first_query": f.query() if cursor else None,
           "csv_query": f.query(format="csv"), "csv_bom_query": f.query(format="csv", bom="true"),
           "jsonl_query": f.query(format="jsonl")}
    name = "_audit_results.html" if web.htmx and web.request.headers.get("HX-Target") == "audit-results" \
        else "audit.html"
    return render(web.request, name, ctx)


@router.get("/audit/export", name="ui_audit_export")
async def audit_export(web: UserWeb, format: str = "csv", progression: str | None = None, model: str | None = None,
                       actor: str | None = None, event_type: str | None = None, since: str | None = None,
                       until: str | None = None, bom: bool = False) -> Response:
    f = _audit_form(progression, model, actor, event_type, since, until)
    stream = await call(export_events(sessionmaker=web.app.sessionmaker, principal=web.user,
                                      filters=_service_filters(f), fmt=format, bom=bom))
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    headers = {"Content-Disposition": f'attachment; filename="audit-events.{format}"'}
    return finish(web.request, StreamingResponse(stream, media_type=media, headers=headers))


@router.post("/audit/verify")
async def audit_verify(web: PostWeb) -> Response:
    result = await call(verify(session=web.db, principal=web.user))
    name = "_verify_result.html" if web.htmx else "verify.html"
    return render(web.request, name, {"title": "Audit chain verification", "active": "audit", "result": result})
