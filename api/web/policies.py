"""Policies: the list, one policy's route, and the dry run."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Response

from api.authz import Action
from api.errors import ApiError
from api.services.policies import dry_run, evidence_contracts, get_policy, parse_json_evidence
from api.web.render import UI, PostWeb, UserWeb, _problem_text, call, render, require_or_page
from engine.errors import ProgressionError

router = APIRouter(prefix=UI, include_in_schema=False)


@router.get("/policies", name="ui_policies")
async def policies_page(web: UserWeb) -> Response:
    require_or_page(web.user, Action.read_policies)
    details = [await call(get_policy(session=web.db, principal=web.user, registry=web.app.registry, intent=i))
               for i in web.app.registry.intents()]
    return render(web.request, "policies.html", {"title": "Policies", "active": "policies", "policies": details})


@router.get("/policies/dry-run", name="ui_dry_run")
async def dry_run_page(web: UserWeb) -> Response:
    require_or_page(web.user, Action.dry_run)
    return render(web.request, "dry_run.html", {"title": "Dry run", "active": "policies",
                                                "intents": web.app.registry.intents(), "form": {}})


@router.get("/policies/{intent}", name="ui_policy")
async def policy_page(web: UserWeb, intent: str) -> Response:
    policy = await call(get_policy(session=web.db, principal=web.user, registry=web.app.registry, intent=intent))
    contracts = await call(evidence_contracts(principal=web.user, registry=web.app.registry, intent=intent))
    return render(web.request, "policy.html", {"title": policy.title, "active": "policies", "policy": policy,
                                               "contracts": contracts.contracts})


@router.post("/policies/dry-run")
async def dry_run_form(web: PostWeb) -> Response:
    form = await web.request.form()
    spec_text = str(form.get("spec") or "")
    evidence_text = str(form.get("evidence") or "").strip()
    intent = str(form.get("intent") or "")
    ctx: dict[str, Any] = {"title": "Dry run", "active": "policies", "intents": web.app.registry.intents(),
                           "form": {"spec": spec_text, "evidence": evidence_text, "intent": intent}}
    status = 200
    try:
        if not spec_text.strip():
            raise ApiError(422, "spec_required", "Paste the text of your progression.yaml.")
        evidence: dict[str, Any] = {}
        if evidence_text:
            try:
                raw = json.loads(evidence_text)
            except ValueError as exc:
                raise ApiError(422, "invalid_evidence_json", f"evidence: not valid JSON ({exc})") from None
            if not isinstance(raw, dict):
                raise ApiError(422, "invalid_evidence_json", "evidence: give a JSON object of evidence by name")
            evidence = parse_json_evidence(raw)
        # Without a chosen intent the spec's own is read by the start's loader (same message, code and line).
        ctx["result"] = await dry_run(session=web.db, principal=web.user, registry=web.app.registry,
                                      intent=intent or None,
                                      spec_text=spec_text, evidence=evidence,
                                      max_yaml_bytes=web.app.settings.max_yaml_bytes)
    except ProgressionError as exc:
        ctx["error"], status = _problem_text(exc), exc.status
    name = "_dry_run_result.html" if web.htmx else "dry_run.html"
    return render(web.request, name, ctx, status=status)

