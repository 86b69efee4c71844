"""Issue 19 in a real browser (Debian's Chromium, Playwright): a risk officer reviews and decides the credit gate
on one page (evidence inline, the comparison with the version in production), the charts read without
JavaScript (SVG plus a table), a decision typed on an expired session survives sign-in and is submitted only on
confirmation, and a session cookie replayed after sign-out signs nobody in. Screenshots go to test-artifacts/."""

from __future__ import annotations

from sqlalchemy import update

from api.web.session import COOKIE_NAME
from engine.db import BrowserSession, utcnow
from testing.api import at_gate, decide, started_at_gate, wait_for
from tests.system.browser import CHROMIUM, Live, needs_chromium, reload_until, shot, sign_in

pytestmark = needs_chromium

if CHROMIUM.exists():
    from playwright.async_api import expect


async def _in_production(live: Live) -> str:
    env = live.env
    pid, _ = await started_at_gate(env, "dana")
    for who, stage in (("vera", "validation"), ("rita", "risk_review"), ("rob", "risk_review")):
        await wait_for(env, pid, at_gate(stage))
        assert (await decide(env, who, pid, stage)).status_code == 200
    await wait_for(env, pid, lambda s: s["status"] == "in_production")
    return pid


async def test_a_risk_officer_reviews_and_decides_the_credit_gate_on_one_page(live: Live) -> None:
    live_pid = await _in_production(live)
    pid, _ = await started_at_gate(live.env, "dana")
    assert (await decide(live.env, "vera", pid, "validation")).status_code == 200
    await wait_for(live.env, pid, at_gate("risk_review"))

    rita = await live.person("rita")
    await rita.goto(f"{live.base}/ui/progressions/{pid}")
    summary = rita.locator("#review-summary")
    await expect(summary).to_contain_text("For review: stage “risk review”")
    await expect(summary.locator("#summary-tier")).to_have_text("1")
    await expect(summary.locator("#summary-production")).to_contain_text(live_pid.split("@")[1])
    # Every value a check judged is on the page, beside its rule.
    auc = rita.locator('tr[data-check="discrimination"]')
    await expect(auc).to_contain_text("0.781")
    await expect(auc).to_contain_text(">= 0.7")
    await expect(rita.locator("#chart-fairness svg")).to_be_visible()
    await expect(rita.locator("#document-model_card").get_by_role("heading", name="Intended use")).to_be_visible()
    comparison = rita.locator("#production-comparison")
    await expect(comparison).to_contain_text(f"In production now: Retail credit scorecard {live_pid.split('@')[1]}")
    await expect(comparison.locator("#features-removed")).to_have_text("none")
    await shot(rita, "review-risk-officer-gate-page")
    # The policy version in force is one click away.
    href = await rita.locator("#policy-link").get_attribute("href")
    assert href and href.startswith("/ui/policies/credit-underwriting#version-sha256:")

    form = rita.locator("form[data-decision-form]")
    await form.get_by_role("radio", name="Approve").check()
    await form.get_by_label("Comment").fill("Within appetite; AUC and fairness in line with production")
    await form.get_by_role("button", name="Record decision").click()
    flash = rita.locator("#flash")
    await expect(flash).to_contain_text("Your approval was recorded.")
    await expect(flash).to_contain_text("What happens next:")
    await expect(rita.locator("#decided")).to_contain_text("You approved this stage")
    assert await rita.get_by_text("You cannot decide on this gate").count() == 0
    await shot(rita, "review-after-deciding")

    # The catalog and the model page name the version in production.
    await rita.goto(f"{live.base}/ui/models/retail-credit-scorecard")
    await expect(rita.locator("#production-version")).to_contain_text(live_pid.split("@")[1])
    await shot(rita, "review-model-page-production-version")
    await rita.goto(f"{live.base}/ui/models")
    await expect(rita.locator("#chart-inventory-funnel svg")).to_be_visible()
    await shot(rita, "review-models-funnel")


async def test_charts_read_without_javascript(live: Live) -> None:
    pid, _ = await started_at_gate(live.env, "dana")
    context = await live.browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(f"{live.base}/ui/login")  # plain forms: sign-in works without JavaScript
    await sign_in(page, live.env.tokens["vera"])
    await page.goto(f"{live.base}/ui/progressions/{pid}")
    chart = page.locator("#chart-fairness")
    await expect(chart.locator("svg")).to_be_visible()
    assert await chart.locator("svg").get_attribute("role") == "img"
    table = chart.locator("details.chart-data table")
    await expect(table).to_be_hidden()
    await chart.get_by_text("The numbers as a table").click()  # <details>: no script needed
    await expect(table).to_be_visible()
    await expect(table.get_by_role("row").filter(has_text="black")).to_contain_text("0.824")
    await shot(page, "review-charts-without-javascript")
    await context.close()


async def test_a_decision_typed_on_an_expired_session_is_kept_and_confirmed(live: Live) -> None:
    pid, _ = await started_at_gate(live.env, "dana")
    vera = await live.person("vera")
    await vera.goto(f"{live.base}/ui/progressions/{pid}")
    form = vera.locator("form[data-decision-form]")
    await form.get_by_role("radio", name="Approve").check()
    comment = "Independent validation complete; l'échantillon hors période est suffisant"
    await form.get_by_label("Comment").fill(comment)
    async with live.env.sessionmaker() as session:  # the session expires while the comment is being typed
        await session.execute(update(BrowserSession).values(expires_at=utcnow()))
        await session.commit()
    await form.get_by_role("button", name="Record decision").click()

    await expect(vera.locator("#pending-decision")).to_contain_text("was not submitted")
    await shot(vera, "review-expired-session-sign-in")
    state = await wait_for(live.env, pid, at_gate("validation"))
    assert not next(s for s in state["stages"] if s["name"] == "validation")["decisions"]

    await sign_in(vera, live.env.tokens["vera"])
    await expect(vera.locator("#pending-decision")).to_contain_text("Not submitted yet")
    kept = vera.locator("form[data-decision-form]")
    await expect(kept.get_by_label("Comment")).to_have_value(comment)
    await expect(kept.get_by_role("radio", name="Approve")).to_be_checked()
    await shot(vera, "review-expired-session-confirm")
    await kept.get_by_role("button", name="Record decision").click()
    await expect(vera.locator("#flash")).to_contain_text("Your approval was recorded.")
    state = await wait_for(live.env, pid, lambda s: s["current_stage"] != "validation")
    assert next(s for s in state["stages"] if s["name"] == "validation")["decisions"][0]["comment"] == comment


async def test_sign_out_invalidates_the_session_cookie(live: Live) -> None:
    rita = await live.person("rita")
    cookie = next(c for c in await rita.context.cookies() if c["name"] == COOKIE_NAME)
    await rita.get_by_role("button", name="Sign out").click()
    await expect(rita.get_by_label("API token")).to_be_visible()

    replay = await live.browser.new_context()
    await replay.add_cookies([cookie])  # the cookie as it was before sign-out, replayed elsewhere
    page = await replay.new_page()
    await page.goto(f"{live.base}/ui/inbox")
    await expect(page.get_by_label("API token")).to_be_visible()
    assert "/ui/login" in page.url and await page.get_by_text("Signed in as").count() == 0
    await shot(page, "review-replayed-cookie-refused")
    # An unknown page is an HTML page, not the API's JSON.
    await page.goto(f"{live.base}/ui/no-such-page")
    await expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    await shot(page, "review-unknown-page-404")
    await replay.close()


async def test_the_mobile_inbox_shows_the_sla(live: Live) -> None:
    pid, _ = await started_at_gate(live.env, "dana")
    vera = await live.person("vera", width=390, height=844)
    await vera.goto(f"{live.base}/ui/inbox")
    await reload_until(vera, pid.split("@")[1])
    sla = vera.locator("[data-sla]").first
    await expect(sla).to_be_visible()
    await expect(sla).to_contain_text("SLA:")
    await expect(sla).to_contain_text("left")
    box = await sla.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390  # seen without scrolling sideways
    await shot(vera, "review-mobile-inbox-sla")
