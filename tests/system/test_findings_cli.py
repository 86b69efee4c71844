"""`progression findings ...` and `progression exceptions ...` against a live API (uvicorn, worker, Temporal)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from client.cli.common import EXIT_REFUSED as EXIT_CODES_REFUSED
from tests.api import test_cli
from tests.api.test_cli import CLI, LiveAPI, follow_until, make_repo

live_api = test_cli.live_api  # the same live API fixture (module scope) as the CLI tests


@pytest.fixture
def cli(live_api: LiveAPI, tmp_path: Path) -> CLI:
    return CLI(live_api, tmp_path)


def test_findings_and_exceptions_from_the_terminal(cli: CLI, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, version="9.18.0")
    pid = "retail-credit-scorecard@9.18.0"
    cli.ok("dana", "start", repo)
    follow_until(cli, pid, lambda s: s["current_stage"] == "validation" and s["status"] == "awaiting_approval")

    # approve with conditions from the terminal: the conditions become findings of the model (an explicit due
    # date sooner than the policy's 180 days for low; a later one is refused, see the next call)
    soon = (datetime.now(UTC) + timedelta(days=60)).date().isoformat()
    late = (datetime.now(UTC) + timedelta(days=400)).date().isoformat()
    refused = cli.run("victor", "approve-with-conditions", pid, "--stage", "validation",
                      "-c", f"low:Document the reject inference:{late}", "-m", "validated with conditions")
    assert refused.exit_code != 0 and "due_beyond_policy" in refused.output, refused.output
    approved = cli.json("victor", "approve-with-conditions", pid, "--stage", "validation",
                        "-c", f"low:Document the reject inference:{soon}", "-c", "low:Add a challenger",
                        "-m", "validated with conditions")
    conditions = approved["stages"][1]["decisions"][-1]["conditions"]
    assert len(conditions) == 2
    follow_until(cli, pid, lambda s: s["current_stage"] == "risk_review")
    listed = cli.json("alice", "findings", "list", "--model", "retail-credit-scorecard")
    due = {f["finding_id"]: f["due_at"][:10] for f in listed["items"]}
    assert due[conditions[0]] == soon

    raised = cli.json("victor", "findings", "raise", "retail-credit-scorecard", "--version", "9.18.0",
                      "--stage", "validation", "--severity", "medium", "--title", "No challenger model")
    fid = raised["finding_id"]
    assert raised["status"] == "open" and raised["raised_by_username"] == "victor"
    refused = cli.run("dana", "findings", "raise", "retail-credit-scorecard", "--severity", "low", "--title", "x")
    assert refused.exit_code == EXIT_CODES_REFUSED and "not_a_reviewer" in refused.output

    todo = cli.json("dana", "findings", "list", "--open")
    assert {fid, *conditions} <= {f["finding_id"] for f in todo["items"]}
    assert "No findings." in cli.ok("sam", "findings", "list").stdout  # another team's findings stay hidden
    table = cli.ok("dana", "findings", "list", "--open").stdout
    assert fid in table and "medium" in table

    assert cli.json("dana", "findings", "remediate", fid, "-m", "challenger built")["status"] == \
        "remediation_submitted"
    own = cli.run("dana", "findings", "close", fid, "-m", "done")
    assert own.exit_code == EXIT_CODES_REFUSED and "own_remediation" in own.output
    assert cli.json("victor", "findings", "reopen", fid, "-m", "no backtest")["status"] == "open"
    cli.ok("dana", "findings", "remediate", fid, "-m", "backtest added")
    assert cli.json("rita", "findings", "close", fid, "-m", "verified")["status"] == "closed"
    assert "closed" in cli.ok("alice", "findings", "show", fid).stdout

    expires = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    pma = cli.json("rita", "exceptions", "request", "retail-credit-scorecard", "9.18.0", "--kind", "pma",
                   "--magnitude", "0.02", "--reason", "overlay for the new bureau feed", "--expires", expires)
    assert pma["status"] == "pending_approval"
    mine = cli.run("rita", "exceptions", "approve", pma["exception_id"])
    assert mine.exit_code == EXIT_CODES_REFUSED and "own_exception" in mine.output
    assert cli.json("omar", "exceptions", "approve", pma["exception_id"], "-m", "agreed")["status"] == "active"
    listed = cli.json("dana", "exceptions", "list", "--expiring-within", "31")
    assert [e["exception_id"] for e in listed["items"]] == [pma["exception_id"]]
    metrics = cli.json("rita", "findings", "metrics")
    assert metrics["exceptions_expiring_30d"] >= 1 and metrics["exceptions_active"] >= 1

    out = tmp_path / "register.csv"
    cli.ok("alice", "findings", "export", "--out", out, "--model", "retail-credit-scorecard")
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert fid in {r["finding_id"] for r in rows}
