"""Allowed actions agree with the real authorization: for every person x progression status, each action that
``GET /progressions/{id}`` lists as allowed is then accepted by the API, and each one it lists as not allowed is
refused with the code it named (``engine.actions.allowed_actions`` vs ``api.authz`` and the workflow's rules)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import httpx
import pytest

from engine.db import User
from testing.api import CREDIT, ApiEnv, at_gate, decide, get_state, start, wait_for

# Everyone who can see a credit progression of team retail-risk (another team's developer gets 404).
PEOPLE = ["dana", "dario", "vera", "rita", "rob", "ann", "adam", "rory", "val2"]
ACK = "reviewed the evidence"


def _content(name: str, salt: str) -> tuple[str, bytes]:
    """A contract-valid file for ``name`` whose bytes differ from the example's (so it is a change)."""
    if name in ("metrics", "fairness"):
        data = json.loads((CREDIT / "evidence" / f"{name}.json").read_text())
        data["note"] = salt
        return f"evidence/{name}.json", json.dumps(data).encode()
    path = f"docs/{name}.md"
    return path, (CREDIT / path).read_bytes() + f"\n<!-- {salt} -->\n".encode()


async def _started(env: ApiEnv, who: str = "dana", **kw: Any) -> str:
    pid, resp = await start(env, who, **kw)
    assert resp.status_code == 201, resp.text
    return pid


async def awaiting_validation(env: ApiEnv) -> str:
    pid = await _started(env)
    await wait_for(env, pid, at_gate("validation"))
    return pid


async def awaiting_risk_review(env: ApiEnv) -> str:
    pid = await awaiting_validation(env)
    assert (await decide(env, "vera", pid, "validation")).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    return pid


async def blocked_validation(env: ApiEnv) -> str:
    metrics = json.loads((CREDIT / "evidence" / "metrics.json").read_text())
    metrics["auc"] = 0.55
    pid = await _started(env, extra={"metrics": ("evidence/metrics.json", json.dumps(metrics).encode())},
                         skip=("metrics",))
    await wait_for(env, pid, lambda s: s["status"] == "blocked")
    return pid


async def changes_requested(env: ApiEnv) -> str:
    pid = await awaiting_validation(env)
    assert (await decide(env, "vera", pid, "validation", "request_changes", "add the 2025 sample")).status_code == 200
    await wait_for(env, pid, lambda s: s["status"] == "changes_requested")
    return pid


async def rejected(env: ApiEnv) -> str:
    pid = await awaiting_validation(env)
    assert (await decide(env, "vera", pid, "validation", "reject", "not fit")).status_code == 200
    await wait_for(env, pid, lambda s: s["status"] == "rejected")
    return pid


async def withdrawn(env: ApiEnv) -> str:
    pid = await awaiting_validation(env)
    resp = await env.http.post(f"/api/v1/progressions/{pid}/withdraw", json={"reason": "superseded"},
                               headers=env.auth("dana"))
    assert resp.status_code == 200, resp.text
    return pid


async def blocked_at_staging(env: ApiEnv) -> str:
    """Validation and risk review passed (metrics, fairness, model card frozen); the monitoring plan missing."""
    pid = await _started(env, skip=("monitoring_plan",))
    await wait_for(env, pid, at_gate("validation"))
    assert (await decide(env, "vera", pid, "validation")).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    assert (await decide(env, "rita", pid, "risk_review")).status_code == 200
    assert (await decide(env, "rob", pid, "risk_review")).status_code == 200
    await wait_for(env, pid, lambda s: s["current_stage"] == "staging" and s["status"] == "blocked")
    return pid


async def risk_review_submitted_by_a_risk_officer(env: ApiEnv) -> str:
    """rory is a risk officer AND a developer of the owning team, and submitted it."""
    pid = await _started(env, "rory")
    await wait_for(env, pid, at_gate("validation"))
    assert (await decide(env, "vera", pid, "validation")).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    return pid


STATUSES: dict[str, Callable[[ApiEnv], Awaitable[str]]] = {
    "awaiting_validation": awaiting_validation, "awaiting_risk_review": awaiting_risk_review,
    "blocked_validation": blocked_validation, "changes_requested": changes_requested, "withdrawn": withdrawn,
    "blocked_at_staging": blocked_at_staging, "risk_review_by_rory": risk_review_submitted_by_a_risk_officer,
    # Last: a rejection of the example's artifact makes every later approval name it (prior_rejections).
    "rejected": rejected,
}


async def _perform(env: ApiEnv, who: str, pid: str, option: dict[str, Any], salt: str) -> httpx.Response:
    if option["action"] == "decide":
        kind = option["decisions"][0] if option["decisions"] else "approve"
        state = await get_state(env, pid, who)
        basis = next(s["basis"] for s in state["stages"] if s["name"] == option["stage"])
        return await env.http.post(f"/api/v1/progressions/{pid}/decisions", headers=env.auth(who), json={
            "stage": option["stage"], "decision": kind, "comment": ACK, "basis": basis})
    if option["action"] == "add_evidence":
        filename, content = _content(option["evidence"], salt)
        return await env.http.post(f"/api/v1/progressions/{pid}/evidence", headers=env.auth(who),
                                   files=[(f"evidence.{option['evidence']}", (filename, content, "text/plain"))])
    return await env.http.post(f"/api/v1/progressions/{pid}/withdraw", headers=env.auth(who),
                               json={"reason": "matrix"})


def _key(option: dict[str, Any]) -> tuple[str, str | None]:
    return option["action"], option.get("evidence") or option.get("stage")


Verdicts = dict[tuple[str, str], dict[tuple[str, str | None], bool]]


async def _walk(env: ApiEnv, refused: Collection[str], accepted: Collection[str]) -> Verdicts:
    """For every status x person the actions the detail lists (the verdicts, returned); for the statuses in
    ``refused``, each action listed as refused is refused by the API with the named code; for those in
    ``accepted``, each kind of action listed as allowed is then accepted."""
    verdicts: Verdicts = {}
    for status, build in STATUSES.items():
        pid = await build(env)
        options_by_person: dict[str, list[dict[str, Any]]] = {}
        for who in PEOPLE:
            options_by_person[who] = (await get_state(env, pid, who))["actions"]
        # Refusals first, on the shared progression: a refused action changes nothing.
        for who, options in options_by_person.items():
            verdicts[(status, who)] = {_key(o): o["allowed"] for o in options}
            if status not in refused:
                continue
            for option in options:
                if option["allowed"]:
                    assert option["command"], option
                    continue
                assert option["code"] and option["reason"] and option["command"] is None, option
                resp = await _perform(env, who, pid, option, f"{status}-{who}")
                assert resp.status_code in (403, 409, 422), (status, who, option, resp.text)
                assert resp.json()["code"] == option["code"], (status, who, option, resp.text)
        if status not in accepted:
            continue
        # Each kind of allowed action on a fresh progression in the same status (an accepted action changes it):
        # per person the decision, the first allowed upload slot and the withdrawal (the slots share one rule set
        # but the frozen items, which the refusals above cover).
        for who, options in options_by_person.items():
            firsts = {o["action"]: o for o in reversed(options) if o["allowed"]}
            for option in firsts.values():
                fresh = await build(env)
                resp = await _perform(env, who, fresh, option, f"{status}-{who}-ok")
                assert resp.status_code == 200, (status, who, option, resp.text)
    return verdicts


def _assert_the_rules_a_person_can_recite(verdicts: Verdicts) -> None:
    """The table the matrix walked, spot-checked against the rules a person can recite."""

    def may(status: str, who: str, action: str, what: str | None = None) -> bool:
        return verdicts[(status, who)].get((action, what), False)

    assert may("awaiting_validation", "vera", "decide", "validation")
    assert not may("awaiting_validation", "rita", "decide", "validation")  # not a validation gate role
    assert not may("awaiting_validation", "val2", "decide", "validation")  # validator of the owning team
    assert may("awaiting_risk_review", "rita", "decide", "risk_review")
    assert not may("awaiting_risk_review", "rory", "decide", "risk_review")  # risk officer of the owning team
    assert may("blocked_validation", "dana", "add_evidence", "metrics")
    assert not may("blocked_validation", "ann", "add_evidence", "metrics")  # auditors read only
    assert not may("blocked_at_staging", "dana", "add_evidence", "metrics")  # frozen after validation
    assert may("blocked_at_staging", "dana", "add_evidence", "monitoring_plan")
    assert not may("rejected", "dana", "withdraw") and not may("withdrawn", "dana", "add_evidence", "metrics")
    for status in STATUSES:
        # Attack: a decision is never offered to the submitter, the owning team, an admin or an auditor.
        for who in ("dana", "dario", "adam", "ann", "rory", "val2"):
            assert not any(action == "decide" and allowed for (action, _), allowed in verdicts[(status, who)].items()
                           ), (status, who)


# The inner loop's share: an open gate, a stage whose evidence is frozen, a finished progression.
FAST_REFUSED = ("awaiting_validation", "blocked_at_staging", "withdrawn")


async def test_allowed_actions_match_the_api_at_a_gate_a_frozen_stage_and_an_end(env: ApiEnv) -> None:
    """The inner loop's share of the matrix: the rules checked on every status's verdicts, every refusal at an
    open gate, a frozen stage and an end, and every kind of allowed action (a decision, an upload, a withdrawal)
    accepted at the validation gate. The whole matrix below (``slow``, in ``make test``) walks every cell."""
    _assert_the_rules_a_person_can_recite(await _walk(env, refused=FAST_REFUSED, accepted=("awaiting_validation",)))


@pytest.mark.slow  # the whole matrix: a fresh progression for every allowed action of every person and status
async def test_allowed_actions_match_what_the_api_does_for_every_role_and_status(env: ApiEnv) -> None:
    _assert_the_rules_a_person_can_recite(await _walk(env, refused=STATUSES, accepted=STATUSES))


async def test_the_detail_names_the_next_command_and_upload_slots(env: ApiEnv) -> None:
    pid, resp = await start(env, skip=("monitoring_plan",))
    assert resp.status_code == 201
    # The answer to an action carries the caller's actions too.
    assert {o["action"] for o in resp.json()["actions"]} >= {"add_evidence", "withdraw"}
    await wait_for(env, pid, at_gate("validation"))
    for_vera = await get_state(env, pid, "vera")
    assert for_vera["next_command"] == f"progression decide {pid} approve --stage validation -m 'your comment'"
    for_dana = await get_state(env, pid, "dana")
    assert for_dana["next_command"] is None  # nothing waits on the developer now
    slots = {o["evidence"]: o for o in for_dana["actions"] if o["action"] == "add_evidence"}
    assert slots["monitoring_plan"]["missing"] and slots["monitoring_plan"]["allowed"]
    assert "monitoring plan" in slots["monitoring_plan"]["description"]
    assert slots["monitoring_plan"]["command"] == (
        f"progression evidence add {pid} monitoring_plan=docs/monitoring_plan.md")
    refused = next(o for o in for_dana["actions"] if o["action"] == "decide")
    assert refused["code"] == "not_a_gate_role" and "model validator" in refused["unlock"]


async def test_an_admin_whose_row_also_says_risk_officer_is_offered_no_decision_and_refused(env: ApiEnv) -> None:
    """Attack: the admin edits their own user row to add model_risk_officer (identity refuses that combination;
    the database does not). Allowed actions offer no decision, and the API refuses it."""
    pid = await awaiting_risk_review(env)
    async with env.sessionmaker() as session:
        admin = await session.get(User, env.user_ids["adam"])
        assert admin is not None
        admin.roles = ["admin", "model_risk_officer"]
        await session.commit()
    state = await get_state(env, pid, "adam")
    [option] = [o for o in state["actions"] if o["action"] == "decide"]
    assert not option["allowed"] and option["code"] == "admin_cannot_decide"
    resp = await decide(env, "adam", pid, "risk_review", comment=ACK)
    assert resp.status_code == 403 and resp.json()["code"] == "admin_cannot_decide", resp.text
    assert all(not d for d in [s["decisions"] for s in (await get_state(env, pid))["stages"]
                               if s["name"] == "risk_review"])
