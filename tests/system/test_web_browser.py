"""The web UI in a real browser: Debian's Chromium driven by Playwright for Python.

The real app is served by uvicorn on 127.0.0.1 (a free port) with a real worker on the
Temporal dev server and SQLite in tmp_path (the ``live`` fixture, tests/system/browser.py).
Four people walk the credit journey in the browser (developer starts it, validator and two
risk officers approve, the developer watches it move), a developer is told why there is no
decision form on their own model, and an auditor exports and verifies the audit chain. A
screenshot of each page goes to test-artifacts/ (git-ignored; CI keeps it as an artifact).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from testing.api import CREDIT, spec_text, unique_version
from tests.system.browser import ARTIFACTS, CHROMIUM, Live, needs_chromium, reload_until, shot

pytestmark = needs_chromium

if CHROMIUM.exists():
    from playwright.async_api import Page, expect
else:  # pragma: no cover - the module is skipped
    Page = object  # type: ignore[misc,assignment]


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


async def start_credit_model(live: Live, page: Page) -> str:
    """The developer starts the credit model from the browser's start form; returns the progression id."""
    version = unique_version()
    spec = ARTIFACTS / f"progression-{version}.yaml"
    spec.write_text(spec_text(CREDIT, version={"id": version}))
    await page.get_by_role("link", name="Progressions", exact=True).click()
    await page.get_by_role("link", name="Start a progression").click()
    await shot(page, "start-form")
    await page.get_by_label("progression.yaml file").set_input_files(str(spec))
    await page.get_by_label("Evidence files").set_input_files([
        str(CREDIT / "evidence/metrics.json"), str(CREDIT / "evidence/fairness.json"),
        str(CREDIT / "docs/model_card.md"), str(CREDIT / "docs/monitoring_plan.md")])
    await page.get_by_role("button", name="Start").click()
    spec.unlink()
    pid = f"retail-credit-scorecard@{version}"
    await expect(page).to_have_url(f"{live.base}/ui/progressions/{pid}?done=started")
    await expect(page.get_by_role("status").filter(has_text="The progression started")).to_be_visible()
    return pid


async def decide(page: Page, decision: str, comment: str) -> None:
    form = page.locator("form[data-decision-form]")
    await form.get_by_role("radio", name=decision).check()
    await form.get_by_label("Comment").fill(comment)
    await form.get_by_role("button", name="Record decision").click()


async def test_credit_journey_in_the_browser(live: Live) -> None:
    """A risk officer approves a gate and the developer then sees the new state; four people, start to end."""
    dana = await live.person("dana")
    pid = await start_credit_model(live, dana)
    await reload_until(dana, "You cannot decide on this gate")
    await shot(dana, "progression-developer-at-validation")

    # The validator finds it in the inbox and approves with a comment.
    vera = await live.person("vera")
    await vera.get_by_role("link", name="Inbox", exact=True).click()
    await expect(vera.get_by_role("heading", name="Inbox")).to_be_visible()
    link = vera.get_by_role("link", name=f"Retail credit scorecard {pid.split('@')[1]}")
    await expect(link).to_be_visible()
    await shot(vera, "inbox-validator")
    await link.click()
    await expect(vera.get_by_role("heading", name="Decision on stage “validation”")).to_be_visible()
    await decide(vera, "Approve", "independent validation complete")
    await expect(vera.get_by_text("Your approval was recorded.")).to_be_visible()

    # A risk officer signs in and approves the risk review gate (one of two).
    rita = await live.person("rita")
    await rita.goto(f"{live.base}/ui/inbox")
    await reload_until(rita, "risk review")
    await rita.get_by_role("link", name=f"Retail credit scorecard {pid.split('@')[1]}").click()
    await expect(rita.get_by_role("heading", name="Decision on stage “risk review”")).to_be_visible()
    await shot(rita, "progression-risk-officer-decision-form")
    # A request for changes without a comment is refused before anything is recorded.
    form = rita.locator("form[data-decision-form]")
    await form.get_by_role("radio", name="Request changes").check()
    assert await form.get_by_label("Comment").evaluate("el => el.required") is True
    await decide(rita, "Approve", "capital impact acceptable")
    await expect(rita.get_by_text("Your approval was recorded.")).to_be_visible()
    await expect(rita.get_by_text("model risk officer: 1 of 2")).to_be_visible()
    await shot(rita, "progression-after-risk-approval")

    # The developer then sees the new state: validation done, risk review current with rita's approval.
    await dana.goto(f"{live.base}/ui/progressions/{pid}")
    await expect(dana.locator(".timeline li.done").filter(has_text="validation")).to_be_visible()
    await expect(dana.locator(".timeline li.current").filter(has_text="risk review")).to_be_visible()
    await expect(dana.get_by_text("model risk officer: 1 of 2 (rita)")).to_be_visible()
    await expect(dana.get_by_text("capital impact acceptable")).to_be_visible()
    await shot(dana, "progression-developer-sees-new-state")

    # The second, different risk officer completes the gate; the model reaches production.
    rob = await live.person("rob")
    await rob.goto(f"{live.base}/ui/progressions/{pid}")
    await decide(rob, "Approve", "second approval")
    await expect(rob.get_by_text("Your approval was recorded.")).to_be_visible()
    await dana.goto(f"{live.base}/ui/progressions/{pid}")
    await reload_until(dana, "in production")
    await shot(dana, "progression-in-production")

    await dana.get_by_role("link", name="Models", exact=True).click()
    await expect(dana.get_by_role("link", name="Retail credit scorecard")).to_be_visible()
    await shot(dana, "models")
    await dana.get_by_role("link", name="Retail credit scorecard").click()
    await expect(dana.get_by_role("link", name=pid.split("@")[1], exact=True)).to_be_visible()
    await shot(dana, "model-detail")


async def test_developer_sees_no_decision_form_on_own_model(live: Live) -> None:
    dana = await live.person("dana")
    pid = await start_credit_model(live, dana)
    await reload_until(dana, "You cannot decide on this gate")
    note = dana.locator("#no-decision")
    await expect(note).to_contain_text("You submitted this progression; segregation of duties forbids deciding")
    assert await dana.locator("form[data-decision-form]").count() == 0
    assert await dana.get_by_role("button", name="Record decision").count() == 0
    # The checks with their reasons and the evidence links are there; the evidence downloads.
    await expect(dana.get_by_role("cell", name="no-protected-attributes")).to_be_visible()
    async with dana.expect_download() as info:
        await dana.locator("table").get_by_role("link", name="metrics").first.click()
    download = await info.value
    assert _read(await download.path()) == _read(CREDIT / "evidence/metrics.json")
    await shot(dana, "progression-own-model-no-decision-form")

    # Narrow window: one column, nothing wider than the viewport (tables scroll in their own box).
    narrow = await live.person("dana", width=375, height=800)
    await narrow.goto(f"{live.base}/ui/progressions/{pid}")
    await expect(narrow.locator("#no-decision")).to_be_visible()
    overflow = await narrow.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"page is {overflow}px wider than a 375px window"
    await shot(narrow, "progression-narrow-375px")


async def test_auditor_exports_and_verifies(live: Live) -> None:
    dana = await live.person("dana")
    pid = await start_credit_model(live, dana)
    await reload_until(dana, "You cannot decide on this gate")

    ann = await live.person("ann")
    await ann.get_by_role("link", name="Audit", exact=True).click()
    await ann.get_by_label("Progression").fill(pid)
    await ann.get_by_role("button", name="Filter").click()
    await expect(ann).to_have_url(re.compile(re.escape(f"/ui/audit?progression={pid.replace('@', '%40')}")))
    await expect(ann.locator("#audit-results").get_by_text("progression.started").first).to_be_visible()
    await shot(ann, "audit-explorer")

    async with ann.expect_download() as info:
        await ann.get_by_role("link", name="CSV").click()
    csv_file = await info.value
    rows = list(csv.DictReader(io.StringIO(_read(await csv_file.path()).decode())))
    assert rows and {r["progression_id"] for r in rows} == {pid}
    assert "progression.started" in {r["event_type"] for r in rows}
    async with ann.expect_download() as info:
        await ann.get_by_role("link", name="JSON Lines").click()
    jsonl = await info.value
    lines = [json.loads(x) for x in _read(await jsonl.path()).decode().splitlines()]
    assert [x["seq"] for x in lines] == [int(r["seq"]) for r in rows]

    await ann.get_by_role("button", name="Verify the chain").click()
    await expect(ann.locator("#verify-outcome")).to_contain_text("The chain verifies.")
    await shot(ann, "audit-verified")

    # Policies and the dry run, by keyboard only: the form is labelled and reachable with Tab.
    await ann.get_by_role("link", name="Policies", exact=True).click()
    await expect(ann.get_by_role("link", name="Consumer credit underwriting")).to_be_visible()
    await shot(ann, "policies")
    await ann.get_by_role("link", name="Consumer credit underwriting").click()
    await shot(ann, "policy-credit-underwriting")
    await ann.goto(f"{live.base}/ui/policies/dry-run")
    await ann.get_by_label("progression.yaml").focus()
    await ann.keyboard.insert_text(spec_text(CREDIT))
    await ann.keyboard.press("Tab")  # intent
    await ann.keyboard.press("Tab")  # evidence
    await ann.keyboard.press("Tab")  # the button
    await ann.keyboard.press("Enter")
    await expect(ann.get_by_role("heading", name="Route for retail-credit-scorecard@3.2.0")).to_be_visible()
    await expect(ann.locator("#dry-run-result .timeline li")).to_have_count(5)
    await shot(ann, "dry-run")


async def test_sign_in_by_keyboard_and_csrf_refusal_page(live: Live) -> None:
    context = await live.browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(f"{live.base}/ui/login")
    await expect(page.get_by_label("API token")).to_be_focused()  # autofocus: type straight away
    await page.keyboard.type("prg_wrong")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("That token is not valid")
    await shot(page, "login-refused")
    await page.get_by_label("API token").fill(live.env.tokens["rita"])
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    await shot(page, "inbox-risk-officer")
    # The first Tab reaches the skip link; following it puts the keyboard in the page's content.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("main")).to_be_focused()
    # A form whose CSRF token was tampered with gets the 403 page, not a blank one.
    await page.evaluate("document.querySelector('header form input[name=csrf_token]').value = 'forged'")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Security check failed")).to_be_visible()
    await shot(page, "csrf-refused")
    await context.close()
