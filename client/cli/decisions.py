"""The decider's commands: the inbox of open gates and the decision on one."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.text import Text

from client.cli.common import JsonOpt, client, emit_json, handle_errors, out
from client.cli.render import add_row, columns, render_state
from client.sdk import stage_basis
from engine.durations import human_duration


@handle_errors
def inbox(as_json: JsonOpt = False) -> None:
    """The gates waiting on you (oldest first), leaving out those you may not decide."""
    with client() as c:
        items = c.inbox()
    if as_json:
        emit_json(items)
        return
    console = out()
    if not items:
        console.print("Nothing is waiting on you.")
        return
    table = columns("progression", "stage", "intent", "tier", "your role", "approvals", "waiting", "SLA left")
    for item in items:
        approvals = ", ".join(f"{a.get('role')} {len(a.get('approved_by') or [])}/{a.get('count')}"
                              for a in item.approvals)
        sla = "-" if item.seconds_to_sla is None else human_duration(item.seconds_to_sla)
        if item.escalated:
            sla += " (escalated)"
        add_row(table, item.progression_id, item.stage, item.business_intent, str(item.risk_tier),
                      ", ".join(r.value for r in item.roles), approvals, human_duration(item.waiting_seconds), sla)
    console.print(table)
    console.print(Text("Decide with: progression decide ID --stage STAGE approve|reject|request-changes -m COMMENT",
                       style="dim"))


class DecisionChoice(StrEnum):
    approve = "approve"
    reject = "reject"
    request_changes = "request-changes"


@handle_errors
def decide(
    progression_id: Annotated[str, typer.Argument(help="<model-id>@<version-id>")],
    decision: Annotated[DecisionChoice, typer.Argument(help="approve, reject or request-changes")],
    stage: Annotated[str, typer.Option("--stage", "-s", help="The stage whose gate you decide.")],
    comment: Annotated[str, typer.Option("--message", "-m", help="Your comment (recorded).")],
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    basis: Annotated[str | None, typer.Option(
        help="The basis you reviewed (shown by 'progression status'); default: the current one, read first. "
             "A decision on a basis that changed meanwhile is refused.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve, reject or request changes on an open gate (bound to the evidence it was made on)."""
    with client() as c:
        if basis is None:
            basis = stage_basis(c.get(progression_id), stage)
        state = c.decide(progression_id, stage, decision.value.replace("-", "_"), comment,
                         idempotency_key=idempotency_key, basis=basis)
    if as_json:
        emit_json(state)
        return
    out().print(Text(f"Recorded: {decision.value} on {progression_id} stage {stage}"
                     + (f", on basis {basis}" if basis else "")))
    out().print(render_state(state))


