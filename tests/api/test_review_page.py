"""The gate page as a review (issue 19): summary first, the evidence inline (each check's value against its
threshold, fairness by group as a chart, the model card as safe Markdown), the comparison with the version in
production, the decision form last; after deciding, what happened and what happens next. XSS probes through a
Markdown model card render inert."""

from __future__ import annotations

import json
import re

from sqlalchemy import update

from engine.db import User
from testing.api import CREDIT, ApiEnv, at_gate, decide, start, started_at_gate, wait_for
from testing.http import html_elements
from tests.api import test_web_ui
from tests.api.test_web_ui import Browser, csrf_of, signed_in

people = test_web_ui.people  # the web UI tests' browsers (env: tests/api/conftest.py)


async def test_the_gate_page_reads_as_a_review(env: ApiEnv, people: dict[str, Browser]) -> None:
    async with env.sessionmaker() as session:
        await session.execute(update(User).where(User.username == "dana").values(display_name="Dana Okafor"))
        await session.commit()
    pid, _ = await started_at_gate(env, "dana")
    vera = await signed_in(people, "vera")
    html = (await vera.get(f"/ui/progressions/{pid}")).text
    order = [html.index(marker) for marker in ('id="review-summary"', 'id="review-checks"', 'id="charts"',
                                               'id="document-model_card"', 'id="decide"', 'id="route-heading"')]
    assert order == sorted(order), order  # summary, evidence, charts, model card, then the decision
    summary = html[html.index('id="review-summary"'):html.index('id="review-checks"')]
    assert "Dana Okafor" in summary and "(dana)" in summary and 'id="summary-tier">1<' in summary
    assert "due" in summary and 'id="summary-findings"' in summary and "none open" in summary
    assert re.search(r'id="policy-link" href="/ui/policies/credit-underwriting#version-sha256:[0-9a-f]{64}"', summary)
    # Each check's value beside its rule: the AUC the check judged, not only "met: ...".
    row = html[html.index('data-check="discrimination"'):]
    row = row[:row.index("</tr>")]
    assert "0.781" in row and "&gt;= 0.7" in row
    # Fairness by group: an SVG chart with the four-fifths line, and its numbers as a table.
    chart = html[html.index('id="chart-fairness"'):]
    chart = chart[:chart.index("</figure>")]
    assert "<svg" in chart and 'role="img"' in chart and "black" in chart and "0.824" in chart
    assert "rule &gt;= 0.8" in chart and "<table>" in chart
    assert 'id="chart-metrics-thresholds"' in html
    svg = await vera.get(f"/ui/progressions/{pid}/charts/fairness.svg")  # the chart as a file, for a report
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert svg.text.startswith("<?xml") and "0.824" in svg.text and "attachment" in svg.headers["content-disposition"]
    assert (await vera.get(f"/ui/progressions/{pid}/charts/nope.svg")).status_code == 404
    # The model card as HTML, not a download link only.
    assert "<h2>Intended use</h2>" in html and "<table>" in html[html.index('id="document-model_card"'):]
    # The policy version the link points at exists on the policy page.
    policy_hash = re.search(r"#version-(sha256:[0-9a-f]{64})", summary)[1]  # type: ignore[index]
    assert f'id="version-{policy_hash}"' in (await vera.get("/ui/policies/credit-underwriting")).text


async def _to_production(env: ApiEnv, pid: str) -> None:
    for who, stage in (("vera", "validation"), ("rita", "risk_review"), ("rob", "risk_review")):
        await wait_for(env, pid, at_gate(stage))
        r = await decide(env, who, pid, stage)
        assert r.status_code == 200, r.text
    await wait_for(env, pid, lambda s: s["status"] == "in_production")


async def test_the_review_compares_with_the_version_in_production(env: ApiEnv, people: dict[str, Browser]) -> None:
    live, _ = await started_at_gate(env, "dana")
    await _to_production(env, live)
    metrics = json.loads((CREDIT / "evidence/metrics.json").read_text())
    metrics["auc"] = 0.802
    features = ["bureau_score", "utilization_ratio", "months_since_delinquency", "debt_to_income",
                "inquiries_last_6m", "oldest_tradeline_months"]  # revolving_balance removed
    pid, resp = await start(env, "dana", features=features, skip=("metrics",),
                            extra={"metrics": ("evidence/metrics.json", json.dumps(metrics).encode())})
    assert resp.status_code == 201, resp.text
    await wait_for(env, pid, at_gate("validation"))
    vera = await signed_in(people, "vera")
    html = (await vera.get(f"/ui/progressions/{pid}")).text
    assert f"version {live.split('@')[1]}: compared below" in html
    section = html[html.index('id="production-comparison"'):]
    section = section[:section.index("</section>")]
    assert 'id="features-removed">revolving_balance<' in section
    assert 'id="features-added"><span class="muted">none' in section
    auc = re.search(r"<td>auc</td><td>([^<]+)</td>\s*<td>([^<]+)</td><td class=\"mono\">([^<]+)</td>", section)
    assert auc is not None and auc.groups() == ("0.802", "0.781", "+0.021"), section[:2000]
    assert "the same:" in section  # same policy version
    # The model page and the catalog name the version in production, not only the latest.
    model = (await vera.get("/ui/models/retail-credit-scorecard")).text
    assert "In production: <a" in model and live.split("@")[1] in model
    catalog = (await vera.get("/ui/models")).text
    assert live.split("@")[1] in catalog
    api = (await env.http.get("/api/v1/models/retail-credit-scorecard", headers=env.auth("ann"))).json()
    assert api["production_version"] == live.split("@")[1] and api["production_progression_id"] == live


async def test_after_deciding_the_page_says_what_happened_and_what_is_next(env: ApiEnv,
                                                                           people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana")
    r = await decide(env, "vera", pid, "validation")
    assert r.status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    rita = await signed_in(people, "rita")
    url = f"/ui/progressions/{pid}"
    page = await rita.get(url)
    done = await rita.http.post(f"{url}/decisions", data={"csrf_token": csrf_of(page.text), "stage": "risk_review",
                                                         "decision": "approve", "comment": "within appetite"})
    assert done.status_code == 303
    after = (await rita.get(done.headers["location"])).text
    assert 'id="flash"' in after and "Your approval was recorded." in after and "What happens next:" in after
    assert "You cannot decide" not in after and 'id="no-decision"' not in after
    assert 'id="decided"' in after and "You approved this stage" in after


PROBES = """

## Probes
<script>alert('xss-script')</script>
<img src=x onerror="alert('xss-img')">
<a href="javascript:alert('xss-raw-link')">raw link</a>
[md link](javascript:alert('xss-md-link'))
[upper](JAVASCRIPT:alert('xss-upper'))
[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)
![data image](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)
<iframe src="https://evil.example/"></iframe>
<div onmouseover="alert('xss-event')">hover</div>
<svg onload="alert('xss-svg')"></svg>
[ok](https://example.org/ok)
"""


async def test_xss_probes_in_a_markdown_model_card_render_inert(env: ApiEnv, people: dict[str, Browser]) -> None:
    card = (CREDIT / "docs/model_card.md").read_text() + PROBES
    pid, resp = await start(env, "dana", skip=("model_card",),
                            extra={"model_card": ("docs/model_card.md", card.encode())})
    assert resp.status_code == 201, resp.text
    await wait_for(env, pid, at_gate("validation"))
    vera = await signed_in(people, "vera")
    html = (await vera.get(f"/ui/progressions/{pid}")).text
    doc = html[html.index('id="document-model_card"'):]
    doc = doc[:doc.index("</section>")]
    assert "<h2>Probes</h2>" in doc  # the Markdown around the probes still renders
    found = html_elements(doc[doc.index('<div class="markdown">') + len('<div class="markdown">'):])
    tags = {tag for tag, _ in found}
    assert not tags & {"script", "img", "iframe", "svg", "object", "embed", "style", "form", "input"}, tags
    for tag, attrs in found:
        for name, value in attrs:
            assert not name.lower().startswith("on"), (tag, name)  # no event attribute survives
            assert name.lower() not in ("style", "src", "srcdoc"), (tag, name)
            if name.lower() == "href":
                assert (value or "").lower().startswith(("https:", "http:", "#", "docs/")), value
    assert {"h2", "a", "p"} <= tags and len(found) > 20
    assert re.search(r'<a href="https://example.org/ok" rel="nofollow noopener noreferrer">ok</a>', doc)
    assert "&lt;script&gt;alert(" in doc  # shown as text, inert
    assert "Content-Security-Policy" in (await vera.get(f"/ui/progressions/{pid}")).headers
