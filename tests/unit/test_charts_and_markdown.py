"""The pure presentation modules of the review page: SVG charts with their table, and safe Markdown."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from api.web.charts import Bar, Measure, bar_chart, funnel_chart, number, series_chart, threshold_chart
from api.web.safe_markdown import render_markdown
from testing.http import html_elements

SVG = "{http://www.w3.org/2000/svg}"


def test_a_bar_chart_is_well_formed_svg_with_its_numbers_as_a_table() -> None:
    chart = bar_chart("Fairness <by> group", [Bar("black", 0.824, True), Bar("<script>", 0.79, False, "basis: x")],
                      threshold=0.8, threshold_label="rule >= 0.8", key="fairness")
    root = ET.fromstring(str(chart.svg))  # well-formed XML: every label escaped
    assert root.tag == f"{SVG}svg" and root.get("role") == "img" and root.get("aria-label") == "Fairness <by> group"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "<script>" in texts and "0.824 ✓" in texts and "0.79 ✗" in texts and "rule >= 0.8" in texts
    assert [r.get("class") for r in root.iter(f"{SVG}rect")] == ["bar bar-pass", "bar bar-fail"]
    assert len(list(root.iter(f"{SVG}line"))) == 1  # the threshold
    assert chart.columns == ["item", "value", "meets the threshold", "note"]
    assert chart.rows == [["black", "0.824", "yes", ""], ["<script>", "0.79", "no", "basis: x"]]
    assert "<script>" not in str(chart.svg)


def test_threshold_and_funnel_charts() -> None:
    chart = threshold_chart("Metrics", [Measure("metrics.auc", 0.781, 0.7, ">=", True),
                                        Measure("metrics.psi", 0.3, 0.25, "<", False)])
    root = ET.fromstring(str(chart.svg))
    assert len(list(root.iter(f"{SVG}line"))) == 2
    assert chart.rows == [["metrics.auc", "0.781", ">= 0.7", "yes"], ["metrics.psi", "0.3", "< 0.25", "no"]]
    funnel = funnel_chart("Inventory", [("Submitted", 10), ("In production", 0)])
    ET.fromstring(str(funnel.svg))
    assert funnel.rows == [["Submitted", "10"], ["In production", "0"]]


def test_a_series_chart_marks_the_points_that_break_the_rule() -> None:
    chart = series_chart("PSI by month", [("2026-01", 0.05), ("2026-02", 0.12), ("2026-03", 0.31)],
                         threshold=0.25, op="<", key="psi", value_label="psi")
    root = ET.fromstring(str(chart.svg))
    assert [c.get("class") for c in root.iter(f"{SVG}circle")] == ["point bar-pass"] * 2 + ["point bar-fail"]
    assert len(list(root.iter(f"{SVG}polyline"))) == 1
    assert chart.rows == [["2026-01", "0.05", "yes"], ["2026-02", "0.12", "yes"], ["2026-03", "0.31", "no"]]
    assert series_chart("one", [("a", 1.0)]).rows == [["a", "1"]]


def test_a_monitoring_series_draws_every_rule_threshold_and_judges_points_by_their_breaches() -> None:
    """The model and gate pages' monitoring charts: several named thresholds (one line each, labelled, on the
    scale even above every value), points judged by the period's recorded breaches, the series in words."""
    chart = series_chart("psi by period", [("2026-01-01", 0.05), ("2026-02-01", 0.31)],
                         lines=[("psi-drift", 0.25), ("psi-watch", 0.5)], verdicts=[True, False])
    root = ET.fromstring(str(chart.svg))
    assert len([ln for ln in root.iter(f"{SVG}line") if ln.get("class") == "threshold"]) == 2
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "psi-drift 0.25" in texts and "psi-watch 0.5" in texts
    assert [c.get("class") for c in root.iter(f"{SVG}circle")] == ["point bar-pass", "point bar-fail"]
    assert chart.rows == [["2026-01-01", "0.05", "yes"], ["2026-02-01", "0.31", "no"]]
    desc = root.find(f"{SVG}desc")
    assert desc is not None and desc.text == ("psi by period: 2026-01-01 0.05; 2026-02-01 0.31. "
                                              "Thresholds: psi-drift 0.25, psi-watch 0.5")
    with pytest.raises(ValueError, match="one verdict per point"):
        series_chart("x", [("a", 1.0)], verdicts=[])


@pytest.mark.parametrize(("value", "text"), [(0.781, "0.781"), (96512, "96,512"), (1.2e-05, "1.2e-05"),
                                             (0.0, "0"), (-0.021, "-0.021")])
def test_numbers_read_as_people_write_them(value: float, text: str) -> None:
    assert number(value) == text


@pytest.mark.parametrize("probe", [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "[a](javascript:alert(1))",
    "[a](JaVaScRiPt:alert(1))", "[a](data:text/html;base64,PHNjcmlwdD4=)", "![i](data:image/png;base64,AAAA)",
    "<a href='javascript:x'>z</a>", "[a](vbscript:msgbox(1))", "<iframe src=//evil.example></iframe>",
    "<div onclick=alert(1)>x</div>", "[a](&#106;avascript:alert(1))", "<svg/onload=alert(1)>",
    "[a](<javascript:alert(1)>)", "<style>body{display:none}</style>",
])
def test_markdown_probes_render_inert(probe: str) -> None:
    html = str(render_markdown(f"# Card\n\n{probe}\n"))
    for tag, attrs in html_elements(html):
        assert tag in ("h1", "p", "a"), (probe, html)
        for name, value in attrs:
            assert name in ("href", "rel"), (probe, html)
            assert name != "href" or not (value or "").lower().startswith(("javascript", "data", "vbscript")), html
    assert "<h1>Card</h1>" in html


def test_markdown_keeps_what_a_model_card_needs() -> None:
    html = str(render_markdown("## Performance\n| a | b |\n|---|---|\n| 1 | 2 |\n\n**bold** [ok](https://x.example/)"))
    assert "<h2>Performance</h2>" in html and "<td>1</td>" in html and "<strong>bold</strong>" in html
    assert '<a href="https://x.example/" rel="nofollow noopener noreferrer">ok</a>' in html


def test_a_huge_value_in_a_series_does_not_break_the_chart() -> None:
    """Evidence is the developer's: 1e308 (valid JSON) made the axis arithmetic overflow (OverflowError, a 500)."""
    for huge in (1e308, -1e308, 1.7976931348623157e308):
        chart = series_chart("PSI by month", [("2026-01", huge), ("2026-02", 0.1)], threshold=0.25, op="<=")
        assert "<svg" in str(chart.svg) and len(chart.rows) == 2
