"""In a real browser (Debian's Chromium, Playwright): a validator approves with conditions on the gate page, the
developer finds the condition among her to-dos and remediates it, and an independent validator closes it."""

from __future__ import annotations

from tests.system.browser import CHROMIUM, Live, needs_chromium, reload_until, shot
from tests.system.test_web_browser import start_credit_model

pytestmark = needs_chromium

if CHROMIUM.exists():
    from playwright.async_api import expect


async def test_validator_approves_with_conditions_and_the_developer_closes_the_loop(live: Live) -> None:
    dana = await live.person("dana")
    pid = await start_credit_model(live, dana)
    await reload_until(dana, "You cannot decide on this gate")

    vera = await live.person("vera")
    await vera.goto(f"{live.base}/ui/progressions/{pid}")
    await reload_until(vera, "Decision on stage")
    await vera.get_by_text("Approve with conditions", exact=True).click()
    form = vera.locator("#conditions-form")
    await form.locator("#c0-severity").fill("medium")
    await form.locator("#c0-title").fill("Out-of-time sample too short")
    await form.get_by_label("Comment").fill("validated; the out-of-time sample must grow")
    await shot(vera, "findings-conditional-approval-form")
    await form.get_by_role("button", name="Approve with these conditions").click()
    await expect(vera.get_by_text("Your approval was recorded.")).to_be_visible()
    await reload_until(vera, "Out-of-time sample too short")

    # the developer's to-dos: the condition with its due date; she submits a remediation
    await dana.get_by_role("link", name="Findings", exact=True).click()
    await expect(dana.get_by_role("heading", name="Your team's findings")).to_be_visible()
    await reload_until(dana, "Out-of-time sample too short")
    await shot(dana, "findings-developer-todos")
    await dana.get_by_role("link", name="Out-of-time sample too short").click()
    await dana.get_by_label("What was done").fill("24 months of out-of-time data added")
    await dana.get_by_role("button", name="Submit remediation").click()
    await expect(dana.get_by_text("Your remediation was submitted")).to_be_visible()
    await expect(dana.get_by_role("button", name="Record verification")).to_have_count(0)  # not hers to close
    finding_url = dana.url.split("?")[0]

    # an independent validator verifies and closes it
    await vera.goto(finding_url)
    await vera.get_by_role("radio", name="Close the finding").check()
    await vera.get_by_label("Comment").fill("out-of-time sample now adequate")
    await vera.get_by_role("button", name="Record verification").click()
    await expect(vera.get_by_text("The finding is closed.")).to_be_visible()
    await shot(vera, "findings-closed")

    # the register shows it closed; the developer's open to-dos no longer list it
    await vera.goto(f"{live.base}/ui/findings?status=closed")
    await expect(vera.locator("#findings-register").get_by_text("Out-of-time sample too short")).to_be_visible()
    await dana.goto(f"{live.base}/ui/findings?open=1")
    await expect(dana.get_by_text("Out-of-time sample too short")).to_have_count(0)
