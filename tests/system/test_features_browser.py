"""In a real browser (Debian's Chromium, Playwright): a developer searches the feature catalog, reads what the credit
policy says of zip_code, proposes removing its proxy tag; the admin's approval is one of the two it needs, and the
catalog keeps the tag."""

from __future__ import annotations

from tests.system.browser import CHROMIUM, Live, needs_chromium, shot

pytestmark = needs_chromium

if CHROMIUM.exists():
    from playwright.async_api import expect


async def test_search_a_feature_and_propose_removing_a_sensitive_tag(live: Live) -> None:
    dana = await live.person("dana")
    await dana.get_by_role("link", name="Features", exact=True).click()
    await expect(dana.get_by_role("heading", name="Features", exact=True)).to_be_visible()
    await dana.get_by_role("textbox", name="Search").fill("zip")
    await dana.get_by_role("button", name="Search").click()
    rows = dana.locator("#features-table tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first.locator('[data-intent="credit-underwriting"]')).to_contain_text("requires")
    await shot(dana, "features-search")

    # age: forbidden for credit, allowed for marketing
    await dana.get_by_role("textbox", name="Search").fill("age")
    await dana.get_by_role("button", name="Search").click()
    age = dana.locator('#features-table tr[data-feature="age"]')
    await expect(age.locator('[data-intent="credit-underwriting"]')).to_contain_text("forbidden")
    await expect(age.locator('[data-intent="marketing-propensity"]')).to_contain_text("allowed")

    await dana.goto(f"{live.base}/ui/features/zip_code")
    policies = dana.locator("#feature-policies")
    await expect(policies.locator('tr[data-intent="credit-underwriting"]')).to_contain_text("proxy_analysis")
    form = dana.locator("#change-feature-form")
    await form.get_by_label("Tags").fill("pii geographic")
    await form.get_by_label("Why").fill("zip_code is not a proxy in our region")
    await form.get_by_role("button", name="Propose the change").click()
    await expect(dana.get_by_text("Proposal recorded")).to_be_visible()
    proposals = dana.locator("#feature-proposals")
    await expect(proposals).to_contain_text("remove proxy")
    await expect(proposals).to_contain_text("0/2 approvals")
    await expect(proposals.get_by_role("button", name="Approve")).to_have_count(0)  # never the proposer's
    await shot(dana, "features-proposal")

    adam = await live.person("adam")
    await adam.goto(f"{live.base}/ui/features/zip_code")
    await adam.locator("#feature-proposals").get_by_role("button", name="Approve").click()
    await expect(adam.get_by_text("Approval recorded.")).to_be_visible()
    await expect(adam.locator("#feature-proposals")).to_contain_text("1/2 approvals")
    await expect(adam.locator("#feature-proposals").get_by_role("button", name="Approve")).to_have_count(0)
    await expect(adam.locator("#feature-tags")).to_contain_text("proxy")  # one approver is not enough
    await shot(adam, "features-one-of-two-approvals")
