"""The catalog's commands: models and their versions, policies and their routes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.text import Text

from client.cli.common import JsonOpt, client, emit_json, handle_errors, out
from client.cli.render import add_row, columns


@handle_errors
def models(
    model_id: Annotated[str | None, typer.Argument(help="One model: its versions and where each stands.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The model catalog: models, versions and where each stands."""
    with client() as c:
        if model_id is not None:
            detail = c.model(model_id)
            if as_json:
                emit_json(detail)
                return
            console = out()
            console.print(Text.assemble((detail.id, "bold"), f"  {detail.name} · team {detail.team} · "
                                                             f"{detail.business_intent}"))
            table = columns("version", "status", "stage", "waiting on", "revalidation")
            for v in detail.versions:
                reval = "" if v.revalidation_due_at is None else f"{v.revalidation_due_at:%Y-%m-%d}"
                if v.revalidation_overdue:
                    reval += " OVERDUE"
                add_row(table, v.version_id, v.status or "-", v.current_stage or "-", ", ".join(v.waiting_on) or "-",
                              reval)
            console.print(table)
            return
        items = c.models()
    if as_json:
        emit_json(items)
        return
    table = columns("model", "name", "team", "intent", "latest", "status", "versions")
    for m in items:
        status_text = (m.latest_status or "-") + (" (revalidation overdue)" if m.revalidation_overdue else "")
        add_row(table, m.id, m.name, m.team, m.business_intent, m.latest_version or "-", status_text,
                      str(m.versions_count))
    out().print(table)


@handle_errors
def policies(
    intent: Annotated[str | None, typer.Argument(help="One intent: its full route.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Policies per business intent; with INTENT, its stages, checks and approvals."""
    with client() as c:
        if intent is None:
            items = c.policies()
            if as_json:
                emit_json(items)
                return
            table = columns("intent", "title", "tier", "stages", "revalidation", "hash")
            for p in items:
                add_row(table, p.intent, p.title, str(p.risk_tier), " → ".join(p.stages), p.revalidation or "-",
                              p.hash[:19])
            out().print(table)
            return
        detail = c.policy(intent)
        contracts = c.evidence_contracts(intent)
    if as_json:
        body = detail.model_dump(mode="json")
        body["evidence_contracts"] = [ct.model_dump(mode="json", by_alias=True) for ct in contracts.contracts]
        emit_json(body)
        return
    console = out()
    console.print(Text.assemble((detail.intent, "bold"), f"  {detail.title} · risk tier {detail.risk_tier}"
                                f" · revalidation {detail.revalidation or 'none'}"))
    console.print(Text(f"policy {detail.hash}", style="dim"))
    for guidance in detail.guidance:
        console.print(Text(f"guidance: {guidance}", style="dim"))
    for index, stage in enumerate(detail.route, 1):
        console.print(Text(f"{index}. {stage.name}" + (f"  action: {stage.action}" if stage.action else ""),
                           style="bold"))
        for check in stage.checks:
            console.print(Text(f"    check {check.id}: {check.description}  [{escape(check.expr)}]"))
        for approval in stage.approvals:
            extra = f", SLA {approval.sla}" if approval.sla else ""
            extra += f", escalates to {approval.escalate_to.value}" if approval.escalate_to else ""
            console.print(Text(f"    approval: {approval.count} {approval.role.value}{extra}"))
    if contracts.contracts:
        console.print(Text("evidence (what each file must contain; `progression init` writes the examples):",
                           style="bold"))
    for ct in contracts.contracts:
        needed = f"; read at {', '.join(ct.read_by_stages)}" if ct.read_by_stages else ""
        console.print(Text(f"    {ct.name} ({ct.kind}, {ct.path}): {ct.description}{needed}"))
        if ct.json_schema:
            required = ct.json_schema.get("required") or []
            console.print(Text(f"      required fields: {', '.join(map(str, required)) or 'none'}"
                               " (full JSON Schema: --json)"))
        if ct.sections:
            console.print(Text(f"      required sections: {', '.join('## ' + h for h in ct.sections)}"
                               + (f"; at least {ct.min_length} characters" if ct.min_length else "")))


