"""Operations: liveness, readiness, Prometheus metrics.

``/healthz`` and ``/readyz`` need no token (probes). ``/metrics`` needs no token
either: it holds aggregate counts only (no names, no ids beyond intents and
stages), and the API listens on loopback by default; put it behind the network
policy of the scraper when the API is exposed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from api.deps import SessionDep, StateDep
from api.errors import ErrorBody
from api.metrics import metrics_content_type
from api.schemas import Health, Readiness

router = APIRouter(tags=["operations"])
CHECK_TIMEOUT = 3.0


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "database or Temporal unreachable"}},
            summary="Readiness: database and Temporal reachable")
async def readyz(session: SessionDep, app: StateDep) -> JSONResponse:
    database = temporal = "ok"
    try:
        await asyncio.wait_for(session.execute(text("SELECT 1")), CHECK_TIMEOUT)
    except Exception as exc:  # any failure means not ready; the reason is for the operator
        database = f"unreachable: {type(exc).__name__}"
    try:
        healthy = await app.temporal.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT))
        if not healthy:
            temporal = "unhealthy"
    except Exception as exc:
        temporal = f"unreachable: {type(exc).__name__}"
    ready = database == "ok" and temporal == "ok"
    body = Readiness(status="ready" if ready else "not_ready", database=database, temporal=temporal)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                       500: {"model": ErrorBody, "description": "internal_error"}},
            summary="Prometheus metrics (no token: aggregate counts only)")
async def metrics(request: Request, session: SessionDep) -> Response:
    m = request.app.state.metrics
    await m.refresh(session)
    return Response(m.render(), media_type=metrics_content_type())
