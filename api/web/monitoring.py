"""The model page's life after production: the monitoring table and charts, the retirement form, and the
retirement override form (a model risk officer independent of the owning team, when production models depend
on the model)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from api.authz import Action
from api.services.catalog import get_model
from api.services.monitoring import dependents_in_production, history, override_retirement, request_retirement
from api.web.charts import Chart, series_chart
from api.web.render import UI, PostWeb, UserWeb, call, redirect, render
from engine.errors import ProgressionError
from engine.monitoring import MonitoringHistory, series_value
from engine.policy import Role

router = APIRouter(prefix=UI, include_in_schema=False)


async def _context(web: UserWeb, model_id: str, error: str | None = None) -> dict[str, object]:
    model = await call(get_model(session=web.db, principal=web.user, model_id=model_id))
    data = await call(history(session=web.db, app=web.app, principal=web.user, model_id=model_id))
    in_production = any(v.status == "in_production" for v in model.versions)
    can_retire = in_production and Action.request_retirement in web.user.actions and web.user.team == model.team
    # The override form: only to whom the API would accept it from (the same rules as
    # api.services.monitoring.override_retirement), and only while production models depend on this one.
    may_override = (Action.override_retirement in web.user.actions and Role.model_risk_officer in web.user.roles
                    and web.user.team is not None and web.user.team != model.team)
    dependents = await dependents_in_production(web.db, model_id) if in_production and may_override else []
    return {"model": model, "history": data, "charts": monitoring_charts(data), "can_retire": can_retire,
            "can_override": bool(dependents), "dependents": dependents, "error": error,
            "series_value": series_value}


def monitoring_charts(data: MonitoringHistory) -> list[Chart]:
    """One series chart per declared metric (a per-feature metric plots its largest figure), its rules'
    thresholds drawn, and a period marked failing when it recorded a breach of a rule reading that metric."""
    charts = []
    for metric in sorted(data.metrics):
        rules = {t.rule_id for t in data.thresholds.get(metric, [])}
        judged = [(r, v) for r in data.results if (v := series_value(r.metrics.get(metric))) is not None]
        verdicts = [None if not rules else not any(b.rule_id in rules for b in r.breaches) for r, _ in judged]
        label = metric + (" (largest feature)" if data.metrics[metric] == "by_feature" else "")
        charts.append(series_chart(f"{metric} by period", [(r.period.isoformat(), v) for r, v in judged],
                                   key=f"monitoring-{metric}", value_label=label, verdicts=verdicts,
                                   lines=[(t.rule_id, t.value) for t in data.thresholds.get(metric, [])]))
    return charts


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


@router.post("/models/{model_id}/retirement-override")
async def retirement_override_form(web: PostWeb, model_id: str) -> Response:
    form = await web.request.form()
    reason = str(form.get("reason") or "").strip()
    if not reason or len(reason) > 2000:
        return render(web.request, "_model_monitoring.html",
                      await _context(web, model_id, "Say why the model may retire although others depend on it "
                                                    "(at most 2,000 characters)."), status=422)
    try:
        await override_retirement(session=web.db, app=web.app, principal=web.user, model_id=model_id,
                                  reason=reason)
    except ProgressionError as exc:
        return render(web.request, "_model_monitoring.html", await _context(web, model_id, exc.message),
                      status=getattr(exc, "status", 409))
    return redirect(web.request, f"{UI}/models/{model_id}")
