"""A developer follows only what the tool tells her, from an empty directory to a gate waiting on a validator:
`progression init` (the real CLI over HTTP), then the browser — the policy page's evidence contracts, a start refused
for a missing model-card section (named), fixed, started, and the progression page refreshing by itself until the
validator must act; the validator finds it on the To do page.

Debian's Chromium driven by Playwright, as in test_web_browser.py (nothing downloaded)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from client.cli import app as cli
from tests.system.browser import CHROMIUM, Live, needs_chromium, shot

pytestmark = needs_chromium

if CHROMIUM.exists():
    from playwright.async_api import expect


async def test_from_an_empty_directory_to_a_gate_following_the_guidance(live: Live, tmp_path: Path) -> None:
    repo = tmp_path / "household-scorecard"
    env = {"PROGRESSION_URL": live.base, "PROGRESSION_TOKEN": live.env.tokens["dana"],
           "PROGRESSION_CONFIG": str(tmp_path / "none.toml")}
    # The CLI is synchronous and the server runs in this event loop: the CLI runs in a thread.
    made = await asyncio.to_thread(CliRunner().invoke, cli, ["init", "--intent", "credit-underwriting", str(repo)],
                                   env=env)
    assert made.exit_code == 0, made.output
    assert "Next: progression route --check" in made.output
    # The developer writes her own model card and forgets a required section.
    card = repo / "docs" / "model_card.md"
    complete = card.read_text()
    card.write_text(complete.replace("## Limitations", "## Known issues"))

    dana = await live.person("dana")
    # What the policy needs, on its page.
    await dana.goto(f"{live.base}/ui/policies/credit-underwriting")
    await expect(dana.get_by_role("heading", name="Evidence it needs")).to_be_visible()
    await expect(dana.locator('[data-contract="model_card"]')).to_contain_text("## Limitations")
    await shot(dana, "guidance-policy-contracts")

    async def start() -> None:
        await dana.goto(f"{live.base}/ui/start")
        await dana.get_by_label("progression.yaml file").set_input_files(str(repo / "progression.yaml"))
        await dana.get_by_label("Evidence files").set_input_files([
            str(repo / "evidence/metrics.json"), str(repo / "evidence/fairness.json"), str(card),
            str(repo / "docs/monitoring_plan.md")])
        await dana.get_by_role("button", name="Start").click()

    await start()
    error = dana.locator("#start-error")
    await expect(error).to_contain_text("section 'Limitations' is missing")
    await shot(dana, "guidance-start-refused-section")

    card.write_text(complete)  # she adds the section the message named
    await start()
    pid = "household-scorecard@0.1.0"
    await expect(dana).to_have_url(f"{live.base}/ui/progressions/{pid}?done=started")
    # No reload: a running progression's page refreshes itself until a person must act.
    await expect(dana.locator(".next-action")).to_contain_text("a model validator decides on stage validation",
                                                               timeout=60_000)
    await expect(dana.get_by_text("Who acts next: model validator")).to_be_visible()
    await shot(dana, "guidance-waiting-on-validator")

    vera = await live.person("vera")
    await vera.goto(f"{live.base}/ui/todo")
    await expect(vera.get_by_role("link", name="Decide stage validation of Household scorecard 0.1.0")).to_be_visible()
    await expect(vera.get_by_text(f"progression decide {pid} approve --stage validation")).to_be_visible()
    await shot(vera, "guidance-validator-todo")
