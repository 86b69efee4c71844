"""The model catalog: models and one model's versions."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response

from api.services.catalog import get_model, inventory_funnel, list_models
from api.web.charts import funnel_chart
from api.web.render import PAGE_SIZE, UI, PageOffset, UserWeb, call, render

router = APIRouter(prefix=UI, include_in_schema=False)


@router.get("/models", name="ui_models")
async def models_page(web: UserWeb, intent: str | None = None, offset: PageOffset = 0) -> Response:
    page = await call(list_models(session=web.db, principal=web.user, intent=intent or None, limit=PAGE_SIZE,
                                  offset=max(offset, 0)))
    steps = await call(inventory_funnel(session=web.db, principal=web.user, intent=intent or None))
    funnel = funnel_chart("The inventory: model versions by how far they got", steps, key="inventory-funnel") \
        if steps and steps[0][1] else None
    return render(web.request, "models.html", {"title": "Models", "active": "models", "page": page,
                                               "intent": intent or "", "intents": web.app.registry.intents(),
                                               "funnel": funnel})


@router.get("/models/{model_id}", name="ui_model")
async def model_page(web: UserWeb, model_id: str) -> Response:
    model = await call(get_model(session=web.db, principal=web.user, model_id=model_id))
    return render(web.request, "model.html", {"title": model.name, "active": "models", "model": model,
                                              "now": datetime.now(UTC)})
