"""/api/v1/audit: filtered cursor-paged events, streaming export, chain verification."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import COMMON_ERRORS
from api.services import audit as svc
from engine.wire import AuditFilter, AuditPage, ChainVerification

ACTOR_HELP = "the actor's username or user id (one that names nobody: 422 unknown_user)"

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], responses=COMMON_ERRORS)


def _filters(progression: str | None, model: str | None, actor: str | None, event_type: str | None,
             since: datetime | None, until: datetime | None) -> AuditFilter:
    return AuditFilter(progression=progression, model=model, actor=actor, event_type=event_type,
                            since=since, until=until)


@router.get("/events", response_model=AuditPage,
            summary="Audit events by seq; filters combine; pass next_cursor to page on")
async def list_events(
    session: SessionDep, user: CurrentUser,
    progression: str | None = None, model: str | None = None,
    actor: Annotated[str | None, Query(description=ACTOR_HELP)] = None,
    event_type: Annotated[str | None, Query(description="one type or a comma-separated list")] = None,
    since: Annotated[datetime | None, Query(description="occurred_at >= since (ISO-8601)")] = None,
    until: Annotated[datetime | None, Query(description="occurred_at < until (ISO-8601)")] = None,
    cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    return await svc.list_events(session=session, principal=user,
                                 filters=_filters(progression, model, actor, event_type, since, until),
                                 cursor=cursor, limit=limit)


@router.get("/export", response_class=StreamingResponse, responses={
    200: {"description": "CSV (header row first) or JSON Lines, streamed",
          "content": {"text/csv": {}, "application/x-ndjson": {}}}},
    summary="Export every matching event as CSV or JSON Lines (streamed)")
async def export(
    user: CurrentUser, app: StateDep,
    format: Literal["csv", "jsonl"] = "jsonl",
    progression: str | None = None, model: str | None = None,
    actor: Annotated[str | None, Query(description=ACTOR_HELP)] = None,
    event_type: str | None = None, since: datetime | None = None, until: datetime | None = None,
    bom: Annotated[bool, Query(description="CSV only: start with a UTF-8 byte order mark (spreadsheet tools)")]
    = False,
) -> StreamingResponse:
    stream = await svc.export_events(sessionmaker=app.sessionmaker, principal=user,
                                     filters=_filters(progression, model, actor, event_type, since, until),
                                     fmt=format, bom=bom)
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    filename = f"audit-events.{format}"
    return StreamingResponse(stream, media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/verify", response_model=ChainVerification, summary="Verify the hash chain end to end")
async def verify(session: SessionDep, user: CurrentUser) -> ChainVerification:
    return await svc.verify(session=session, principal=user)
