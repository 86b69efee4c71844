"""The model page's life after production: the monitoring table and charts, and the retirement form."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from api.authz import Action
from api.services.catalog import get_model
from api.services.monitoring import history, request_retirement
from api.web.monitoring_svg import series_svg
from api.web.render import UI, PostWeb, UserWeb, call, redirect, render
from engine.errors import ProgressionError
from engine.monitoring import series_value

router = APIRouter(prefix=UI, include_in_schema=False)


async def _context(web: UserWeb, model_id: str, error: str | None = None) -> dict[str, object]:
    model = await call(get_model(session=web.db, principal=web.user, model_id=model_id))
    data = await call(history(session=web.db, app=web.app, principal=web.user, model_id=model_id))
    charts = []
    for metric in sorted(data.metrics):
        points = [(r.period, v) for r in data.results if (v := series_value(r.metrics.get(metric))) is not None]
        lines = [(t.rule_id, t.value) for t in data.thresholds.get(metric, [])]
        charts.append({"metric": metric, "kind": data.metrics[metric], "svg": series_svg(metric, points, lines)})
    in_production = any(v.status == "in_production" for v in model.versions)
    can_retire = in_production and Action.request_retirement in web.user.actions and web.user.team == model.team
    return {"model": model, "history": data, "charts": charts, "can_retire": can_retire, "error": error,
            "series_value": series_value}


@router.get("/models/{model_id}/monitoring", name="ui_model_monitoring")
async def monitoring_fragment(web: UserWeb, model_id: str) -> Response:
    return render(web.request, "_model_monitoring.html", await _context(web, model_id))


@router.post("/models/{model_id}/retire")
async def retire_form(web: PostWeb, model_id: str) -> Response:
    form = await web.request.form()
    reason = str(form.get("reason") or "").strip()
    replacement = str(form.get("replacement") or "").strip() or None
    if not reason:
        return render(web.request, "_model_monitoring.html",
                      await _context(web, model_id, "Say why the model is retired."), status=422)
    try:
        state = await request_retirement(session=web.db, app=web.app, principal=web.user, model_id=model_id,
                                         reason=reason, replacement=replacement,
                                         request_id=f"web-ret-{uuid.uuid4().hex}")
    except ProgressionError as exc:
        return render(web.request, "_model_monitoring.html", await _context(web, model_id, exc.message),
                      status=getattr(exc, "status", 409))
    return redirect(web.request, f"{UI}/progressions/{state.progression_id}")
