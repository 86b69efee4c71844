"""``progression findings ...`` and ``progression exceptions ...``: the findings register, remediation and
verification, waivers. Commands talk to the HTTP API like every other command of :mod:`client.cli`
(same configuration, ``--json``, exit codes)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from client.cli.common import JsonOpt, client, emit_json, handle_errors, out, parse_time

findings_app = typer.Typer(
    rich_markup_mode=None, help="Findings: the register, your team's to-dos, remediation and verification.",
                           no_args_is_help=True)
exceptions_app = typer.Typer(
    rich_markup_mode=None, help="Exceptions (waivers of checks or findings, post-model adjustments).",
                             no_args_is_help=True)

Model = Annotated[str | None, typer.Option("--model", help="Model id.")]
_ISO_TAIL = re.compile(r":\d{4}-\d{2}-\d{2}\S*$")  # a condition's optional ":YYYY-MM-DD" due date


def _day(value: Any) -> str:
    return str(value or "-")[:10]


def _findings_table(items: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("finding", "model", "version", "severity", "status", "due", "overdue", "title"):
        table.add_column(col)
    for f in items:
        table.add_row(f["finding_id"], f["model_id"], f.get("version_id") or "-", f["severity"], f["status"],
                      _day(f["due_at"]), "OVERDUE" if f["overdue"] else "", f["title"])
    return table


@findings_app.command("list")
@handle_errors
def findings_list(
    model: Model = None,
    team: Annotated[str | None, typer.Option(help="Owning team.")] = None,
    severity: Annotated[str | None, typer.Option(help="Severity (the policy's scale).")] = None,
    status: Annotated[str | None, typer.Option(help="open, remediation_submitted, closed, risk_accepted.")] = None,
    overdue: Annotated[bool | None, typer.Option("--overdue/--not-overdue", help="Only (not) overdue ones.")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only open ones (to-dos).")] = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The findings register (developers see their team's: their to-dos, by due date)."""
    with client() as c:
        page = c.request_json("GET", "/findings", params={"model": model, "team": team, "severity": severity,
                                                          "status": status, "overdue": overdue,
                                                          "open": open_only or None, "limit": limit})
    if as_json:
        emit_json(page)
        return
    if not page["items"]:
        out().print("No findings.")
        return
    out().print(_findings_table(page["items"]))
    out().print(Text(f"{page['total']} finding(s)", style="dim"))


@findings_app.command("show")
@handle_errors
def findings_show(finding_id: Annotated[str, typer.Argument(help="Finding id (F-...).")],
                  as_json: JsonOpt = False) -> None:
    """One finding: what, who raised it, its due date, remediation and verification."""
    with client() as c:
        f = c.request_json("GET", f"/findings/{finding_id}")
    if as_json:
        emit_json(f)
        return
    console = out()
    console.print(Text(f"{f['finding_id']} [{f['severity']}] {f['title']}", style="bold"))
    console.print(f"model {f['model_id']} {f.get('version_id') or ''} stage {f.get('stage') or '-'}; team {f['team']}")
    console.print(f"status {f['status']}; due {_day(f['due_at'])}" + (" (OVERDUE)" if f["overdue"] else "")
                  + ("; a condition of an approval" if f["condition"] else ""))
    console.print(f"raised by {f['raised_by_username']} on {_day(f['raised_at'])}")
    if f.get("remediation_note"):
        console.print(f"remediation: {f['remediation_note']}")


@findings_app.command("raise")
@handle_errors
def findings_raise(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    severity: Annotated[str, typer.Option(help="Severity (the policy's scale).")],
    title: Annotated[str, typer.Option(help="One line.")],
    version: Annotated[str | None, typer.Option(help="Version where it was found.")] = None,
    stage: Annotated[str | None, typer.Option(help="Stage where it was found.")] = None,
    description: Annotated[str, typer.Option(help="What and why.")] = "",
    due: Annotated[str | None, typer.Option(help="Due date (ISO 8601); default: the policy's.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Raise a finding on a model (validators and risk officers independent of its team)."""
    due_at = parse_time(due, "--due")
    with client() as c:
        f = c.request_json("POST", "/findings", json={
            "model_id": model_id, "version_id": version, "stage": stage, "severity": severity, "title": title,
            "description": description, "due_at": due_at.isoformat() if due_at else None},
            idempotency_key=idempotency_key)
    if as_json:
        emit_json(f)
        return
    out().print(f"raised {f['finding_id']} ({f['severity']}) on {f['model_id']}, due {_day(f['due_at'])}")


@findings_app.command("remediate")
@handle_errors
def findings_remediate(
    finding_id: Annotated[str, typer.Argument(help="Finding id.")],
    note: Annotated[str, typer.Option("--message", "-m", help="What was done.")],
    evidence_ref: Annotated[list[str] | None, typer.Option("--evidence-ref", help="sha256:... ; repeat.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a remediation (a model developer of the owning team)."""
    with client() as c:
        f = c.request_json("POST", f"/findings/{finding_id}/remediation",
                           json={"note": note, "evidence_refs": evidence_ref or []})
    if as_json:
        emit_json(f)
        return
    out().print(f"{f['finding_id']} is {f['status']}: an independent reviewer verifies it next")


def _verify(finding_id: str, outcome: str, comment: str, as_json: bool) -> None:
    with client() as c:
        f = c.request_json("POST", f"/findings/{finding_id}/verification",
                           json={"outcome": outcome, "comment": comment})
    if as_json:
        emit_json(f)
        return
    out().print(f"{f['finding_id']} is {f['status']}")


@findings_app.command("close")
@handle_errors
def findings_close(finding_id: Annotated[str, typer.Argument(help="Finding id.")],
                   comment: Annotated[str, typer.Option("--message", "-m", help="Why it is resolved.")],
                   as_json: JsonOpt = False) -> None:
    """Verify the remediation and close the finding (not the remediator, not the owning team)."""
    _verify(finding_id, "close", comment, as_json)


@findings_app.command("reopen")
@handle_errors
def findings_reopen(finding_id: Annotated[str, typer.Argument(help="Finding id.")],
                    comment: Annotated[str, typer.Option("--message", "-m", help="What is still missing.")],
                    as_json: JsonOpt = False) -> None:
    """Send the remediation back: the finding is open again."""
    _verify(finding_id, "reopen", comment, as_json)


@findings_app.command("metrics")
@handle_errors
def findings_metrics(as_json: JsonOpt = False) -> None:
    """Open findings by severity, overdue ones, exceptions expiring within 30 days."""
    with client() as c:
        m = c.request_json("GET", "/findings/metrics")
    if as_json:
        emit_json(m)
        return
    by = ", ".join(f"{k} {v}" for k, v in sorted(m["open_by_severity"].items())) or "none"
    out().print(f"open findings: {by}; overdue: {m['overdue']}; exceptions expiring in 30 days: "
                f"{m['exceptions_expiring_30d']} (active {m['exceptions_active']}, pending approval "
                f"{m['exceptions_pending_approval']})")


@findings_app.command("export")
@handle_errors
def findings_export(output: Annotated[Path | None, typer.Option("--out", "-o", help="File; default stdout.")] = None,
                    model: Model = None, open_only: Annotated[bool, typer.Option("--open")] = False) -> None:
    """The register as CSV, with each finding's age in days."""
    with client() as c:
        text = c.request_text("/findings/export", params={"model": model, "open": open_only or None})
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        out().print(f"wrote {output}")


@exceptions_app.command("list")
@handle_errors
def exceptions_list(
    model: Model = None,
    status: Annotated[str | None, typer.Option(help="pending_approval, active, lapsed.")] = None,
    expiring_within: Annotated[int | None, typer.Option(help="Active ones expiring within N days.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Exceptions, soonest expiry first."""
    with client() as c:
        page = c.request_json("GET", "/exceptions", params={"model": model, "status": status,
                                                            "expiring_within_days": expiring_within})
    if as_json:
        emit_json(page)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("exception", "kind", "model", "version", "scope", "status", "expires", "requested by", "approved by"):
        table.add_column(col)
    for e in page["items"]:
        table.add_row(e["exception_id"], e["kind"], e["model_id"], e["version_id"],
                      e.get("check_id") or e.get("finding_id") or f"magnitude {e.get('magnitude')}", e["status"],
                      _day(e["expires_at"]), e["requested_by_username"], e.get("approved_by_username") or "-")
    out().print(table if page["items"] else "No exceptions.")


@exceptions_app.command("request")
@handle_errors
def exceptions_request(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    version: Annotated[str, typer.Argument(help="Version the exception is scoped to.")],
    kind: Annotated[str, typer.Option(help="check, finding or pma.")],
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (recorded).")],
    expires: Annotated[str, typer.Option(help="Expiry (ISO 8601); mandatory, at most the policy's maximum.")],
    check: Annotated[str | None, typer.Option(help="Check id (kind check).")] = None,
    finding: Annotated[str | None, typer.Option(help="Finding id (kind finding).")] = None,
    magnitude: Annotated[float | None, typer.Option(help="Size of the adjustment (kind pma).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Request an exception; on tier 1 a second person approves it before it takes effect."""
    expires_at: datetime | None = parse_time(expires, "--expires")
    with client() as c:
        e = c.request_json("POST", "/exceptions", json={
            "model_id": model_id, "version_id": version, "kind": kind, "check_id": check, "finding_id": finding,
            "magnitude": magnitude, "reason": reason, "expires_at": expires_at.isoformat() if expires_at else None})
    if as_json:
        emit_json(e)
        return
    out().print(f"{e['exception_id']} is {e['status']} until {_day(e['expires_at'])}")


@exceptions_app.command("approve")
@handle_errors
def exceptions_approve(exception_id: Annotated[str, typer.Argument(help="Exception id (X-...).")],
                       comment: Annotated[str, typer.Option("--message", "-m")] = "",
                       as_json: JsonOpt = False) -> None:
    """Approve a pending exception (maker-checker: not its requester)."""
    with client() as c:
        e = c.request_json("POST", f"/exceptions/{exception_id}/approval", json={"comment": comment})
    if as_json:
        emit_json(e)
        return
    out().print(f"{e['exception_id']} is {e['status']} until {_day(e['expires_at'])}")


@handle_errors
def approve_with_conditions(
    progression_id: Annotated[str, typer.Argument(help="<model-id>@<version-id>")],
    stage: Annotated[str, typer.Option("--stage", "-s", help="The stage whose gate you approve.")],
    condition: Annotated[list[str], typer.Option(
        "--condition", "-c", help="SEVERITY:TITLE[:DUE], e.g. 'medium:Out-of-time sample too short:2027-03-01'; "
                                  "repeat for several.")],
    comment: Annotated[str, typer.Option("--message", "-m", help="Your comment (recorded).")] = "",
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve an open gate and raise its conditions (findings of the model) in one act."""
    conditions = []
    for text in condition:
        severity, _, rest = text.partition(":")
        title, _, due = rest.rpartition(":") if _ISO_TAIL.search(rest) else (rest, "", "")
        due_at = parse_time(due, "--condition") if due else None
        conditions.append({"severity": severity.strip(), "title": title.strip(),
                           "due_at": due_at.isoformat() if due_at else None})
    with client() as c:
        current = c.get(progression_id).stage(stage)
        state = c.request_json("POST", f"/progressions/{progression_id}/decisions", json={
            "stage": stage, "decision": "approve_with_conditions", "comment": comment, "conditions": conditions,
            "basis": current.basis if current is not None else None}, idempotency_key=idempotency_key)
    if as_json:
        emit_json(state)
        return
    raised: list[str] = next((d["conditions"] for s in state["stages"] if s["name"] == stage
                              for d in reversed(s["decisions"]) if d["conditions"]), [])
    out().print(f"Recorded: approve with {len(raised)} condition(s) on {progression_id} stage {stage}: "
                + ", ".join(raised))


def register(app: typer.Typer) -> None:
    app.command("approve-with-conditions")(approve_with_conditions)
    app.add_typer(findings_app, name="findings")
    app.add_typer(exceptions_app, name="exceptions")
