"""Features: search the catalog, what each policy says of a feature and which models use it, proposals and their
approvals (the same service functions and rules as ``/api/v1/features``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.authz import Action, allowed
from api.errors import ApiError
from api.schemas import FeatureProposalIn
from api.services import features as svc
from api.web.render import UI, PostWeb, UserWeb, call, redirect, render, require_or_page
from engine.errors import ProgressionError
from engine.policy import Role
from engine.wire import FeatureOut, FeatureProposalOut

router = APIRouter(prefix=UI, include_in_schema=False)
Text200 = Annotated[str, Query(max_length=svc.MAX_QUERY)]
_DONE = {"proposed": "Proposal recorded: the feature's data owner or an admin decides on it.",
         "approved": "Approval recorded.", "applied": "Approved and applied: a new catalog version is recorded.",
         "rejected": "Proposal rejected."}


@router.get("/features", name="ui_features")
async def features_page(web: UserWeb, q: Text200 = "", tag: Text200 = "", intent: Text200 = "",
                        done: str = "") -> Response:
    require_or_page(web.user, Action.read_features)
    page = await call(svc.list_features(session=web.db, principal=web.user, registry=web.app.registry,
                                        q=q or None, tag=tag or None, intent=intent or None))
    pending = await call(svc.list_proposals(session=web.db, principal=web.user, status="pending"))
    return render(web.request, "features.html", {
        "title": "Features", "active": "features", "page": page, "q": q, "tag": tag, "intent": intent,
        "intents": web.app.registry.intents(), "pending": pending.items, "flash": _DONE.get(done),
        "can_propose": allowed(web.user, Action.propose_feature), "error": None, "form": {}})


def _can_decide(web: UserWeb, feature: FeatureOut | None, proposal: FeatureProposalOut) -> bool:
    if not allowed(web.user, Action.decide_feature_proposal) or proposal.status != "pending":
        return False
    if proposal.proposed_by == web.user.username or any(a.actor_id == web.user.id for a in proposal.approvals):
        return False
    return Role.admin in web.user.roles or (feature is not None and feature.owner == web.user.username)


async def _feature_context(web: UserWeb, name: str, **extra: object) -> dict[str, object]:
    feature = await call(svc.get_feature(session=web.db, principal=web.user, registry=web.app.registry, name=name))
    proposals = await call(svc.list_proposals(session=web.db, principal=web.user, feature=name, limit=20))
    return {"title": feature.name, "active": "features", "f": feature, "proposals": proposals.items,
            "deciding": {p.id for p in proposals.items if _can_decide(web, feature, p)},
            "can_propose": allowed(web.user, Action.propose_feature), "flash": None, "error": None, "form": {},
            **extra}


@router.get("/features/{name}", name="ui_feature")
async def feature_page(web: UserWeb, name: str, done: str = "") -> Response:
    return render(web.request, "feature.html", await _feature_context(web, name, flash=_DONE.get(done)))


def _tags(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


@router.post("/features/proposals")
async def propose_form(web: PostWeb) -> Response:
    form = await web.request.form()
    name = str(form.get("feature") or "").strip()
    existing = str(form.get("existing") or "") == "1"
    values = {k: str(form.get(k) or "").strip() for k in ("description", "tags", "owner", "comment")}
    try:
        if not name:
            raise ApiError(422, "feature_required", "feature: give the feature's name")
        if not values["comment"]:
            raise ApiError(422, "comment_required", "comment: say why the catalog should change")
        body = FeatureProposalIn(
            feature=name, comment=values["comment"],
            description=values["description"] if values["description"] or not existing else None,
            tags=_tags(values["tags"]), owner=values["owner"] or None)
        await svc.propose(session=web.db, principal=web.user, body=body, chain=web.app.settings.audit_chain,
                          registry=web.app.registry)
    except ProgressionError as exc:
        if existing:
            return render(web.request, "feature.html", await _feature_context(
                web, name, error=exc.message, form=values), status=exc.status)
        page = await call(svc.list_features(session=web.db, principal=web.user, registry=web.app.registry))
        return render(web.request, "features.html", {
            "title": "Features", "active": "features", "page": page, "q": "", "tag": "", "intent": "",
            "intents": web.app.registry.intents(), "pending": [], "flash": None, "error": exc.message,
            "can_propose": True, "form": {"feature": name, **values}}, status=exc.status)
    except ValueError as exc:  # the body's own limits (lengths), said in words
        return render(web.request, "features.html", {
            "title": "Features", "active": "features", "page": None, "q": "", "tag": "", "intent": "",
            "intents": [], "pending": [], "flash": None, "error": str(exc).splitlines()[0], "can_propose": True,
            "form": {"feature": name, **values}}, status=422)
    target = f"{UI}/features/{name}?done=proposed" if existing else f"{UI}/features?done=proposed"
    return redirect(web.request, target)


@router.post("/features/proposals/{proposal_id}/{act}")
async def decide_form(web: PostWeb, proposal_id: str, act: str) -> Response:
    form = await web.request.form()
    comment = str(form.get("comment") or "").strip()[:2000]
    proposal = await call(svc.get_proposal(session=web.db, principal=web.user, proposal_id=proposal_id))
    try:
        if act == "approval":
            result = await svc.approve(session=web.db, principal=web.user, proposal_id=proposal_id, comment=comment,
                                       chain=web.app.settings.audit_chain)
            done = "applied" if result.status == "applied" else "approved"
        elif act == "rejection":
            await svc.reject(session=web.db, principal=web.user, proposal_id=proposal_id, comment=comment,
                             chain=web.app.settings.audit_chain)
            done = "rejected"
        else:
            raise ApiError(404, "not_found", "no such action")
    except ProgressionError as exc:
        await web.db.rollback()
        return render(web.request, "feature.html", await _feature_context(web, proposal.feature, error=exc.message),
                      status=exc.status)
    return redirect(web.request, f"{UI}/features/{proposal.feature}?done={done}")
