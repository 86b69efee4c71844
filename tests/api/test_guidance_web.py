"""The web UI's guidance: the to-do page, upload slots per evidence item (missing ones named), only the allowed
actions, and why the others are not available."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator

import pytest

from testing.api import ApiEnv, at_gate, decide, started_at_gate, wait_for
from testing.specs import MALFORMED_SPECS
from tests.api.test_web_ui import Browser, signed_in


@pytest.fixture
async def people(env: ApiEnv) -> AsyncIterator[dict[str, Browser]]:
    """One signed-in browser per person (test_web_ui's cookie jars), closed at the end."""
    browsers = {who: Browser(env) for who in ("dana", "vera", "adam")}
    yield browsers
    for b in browsers.values():
        await b.aclose()


async def test_the_todo_page_lists_the_gate_for_the_validator(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana")
    vera = await signed_in(people, "vera")
    page = await vera.get("/ui/todo")
    assert page.status_code == 200 and f"/ui/progressions/{pid}" in page.text
    assert f"progression decide {pid} approve --stage validation" in page.text
    dana = await signed_in(people, "dana")
    assert "Nothing is waiting on you right now." in (await dana.get("/ui/todo")).text


async def test_a_missing_item_gets_an_upload_slot_and_frozen_ones_say_why(env: ApiEnv,
                                                                          people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana", skip=("monitoring_plan",))
    url = f"/ui/progressions/{pid}"
    dana = await signed_in(people, "dana")
    page = (await dana.get(url)).text
    assert 'data-slot="monitoring_plan"' in page and "missing — add it" in page
    assert "ongoing-monitoring plan" in page  # the contract's description
    assert 'name="decision"' not in page  # the submitter gets no decision form
    assert (await decide(env, "vera", pid, "validation")).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    for who in ("rita", "rob"):
        assert (await decide(env, who, pid, "risk_review")).status_code == 200
    await wait_for(env, pid, lambda s: s["current_stage"] == "staging" and s["status"] == "blocked")
    page = (await dana.get(url)).text
    # The route card and "who acts next" agree: the blocked stage waits on the developer.
    assert "Who acts next: <strong>model developer</strong>" in page
    assert "waiting on model developer" in page and "waiting on model validator" not in page
    assert 'name="evidence.metrics"' not in page and 'name="evidence.monitoring_plan"' in page
    assert "Not available to you now" in page and "frozen after stage" in page
    assert "What would change it: nothing in this progression: start a new version" in page
    adam = await signed_in(people, "adam")
    admin_page = (await adam.get(url)).text
    assert 'name="decision"' not in admin_page  # an admin never gets a decision form


async def test_the_policy_page_shows_its_evidence_contracts(env: ApiEnv, people: dict[str, Browser]) -> None:
    dana = await signed_in(people, "dana")
    page = (await dana.get("/ui/policies/credit-underwriting")).text
    assert 'data-contract="fairness"' in page and "adverse_impact_ratio" in page
    assert "<code>## Training data</code>" in page and "progression init --intent credit-underwriting" in page


async def test_the_web_dry_run_reads_the_spec_like_a_start(env: ApiEnv, people: dict[str, Browser]) -> None:
    """One loader in the web UI too: the dry-run form answers a misspelt key as the API's start does."""
    spec = MALFORMED_SPECS["unknown_key_modle"].decode()
    dana = await signed_in(people, "dana")
    page = await dana.post("/ui/policies/dry-run", {"spec": spec}, csrf_from="/ui/policies/dry-run")
    api = await env.http.post("/api/v1/progressions", headers=env.auth("dana"),
                              files=[("spec", ("progression.yaml", spec.encode(), "application/yaml"))])
    assert page.status_code == api.status_code == 422
    assert api.json()["message"] in html.unescape(page.text)
