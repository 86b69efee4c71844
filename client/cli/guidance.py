"""Commands that guide a developer: ``init`` (a new repository from what its policy demands) and ``todo``
(everything waiting on me, most urgent first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from client.cli.common import EXIT_INVALID, JsonOpt, client, emit_json, fail, handle_errors, out
from client.cli.render import add_row, ago, columns
from client.repo import SPEC_FILENAME
from engine.scaffold import SCHEMA_FILE, scaffold, slug


@handle_errors
def init(
    directory: Annotated[Path, typer.Argument(help="The new model repository (created if needed).")],
    intent: Annotated[str, typer.Option("--intent", help="The model's business intent, e.g. credit-underwriting.")],
    model_id: Annotated[str | None, typer.Option("--model-id", help="Default: from the directory name.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="The model's display name.")] = None,
    team: Annotated[str | None, typer.Option("--team", help="The owning team. Default: yours.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that exist.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Scaffold a model repository: progression.yaml (with the editor schema), evidence templates and the
    model card with the sections the intent's policy requires."""
    with client() as c:
        contracts = c.evidence_contracts(intent)
        schema = c.progression_schema()
        owner = team or c.me().get("team")
    if not owner:
        fail("you belong to no team: pass --team TEAM", EXIT_INVALID)
    model = model_id or slug(directory.resolve().name)
    files = scaffold(contracts, model_id=model, model_name=name or model.replace("-", " ").capitalize(),
                     team=str(owner), schema=json.dumps(schema, indent=2, sort_keys=True) + "\n")
    existing = [rel for rel in files if (directory / rel).exists()]
    if existing and not force:
        fail(f"{directory / existing[0]}: exists; pass --force to overwrite ({len(existing)} file(s))", EXIT_INVALID)
    for rel, text in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if as_json:
        emit_json({"directory": str(directory), "intent": intent, "policy_hash": contracts.policy_hash,
                   "files": sorted(files)})
        return
    console = out()
    console.print(Text.assemble("Created ", (str(directory), "bold"), f" for {intent} ({contracts.title}, "
                                f"risk tier {contracts.risk_tier})"))
    console.print(Text(f"  {SPEC_FILENAME}  (editor schema: {SCHEMA_FILE})"))
    for contract in contracts.contracts:
        needed = f"; read at {', '.join(contract.read_by_stages)}" if contract.read_by_stages else ""
        sections = f"; sections: {', '.join(contract.sections)}" if contract.sections else ""
        console.print(Text(f"  {contract.path}  {contract.description}{sections}{needed}"))
    console.print(Text("Replace the examples with your model's own figures and documents, then:"))
    console.print(Text.assemble(("Next: ", "bold"), f"progression route --check {directory}"))


@handle_errors
def todo(as_json: JsonOpt = False) -> None:
    """Everything waiting on you, most urgent first: gates to decide, evidence to fix, change requests,
    findings to remediate or verify."""
    with client() as c:
        items = c.todo()
    if as_json:
        emit_json(items)
        return
    if not items.items:
        out().print(Text("Nothing waits on you."))
        return
    table = columns("what", "due", "waiting", "command")
    for item in items.items:
        due = ("OVERDUE " if item.overdue else "") + (item.due_at.date().isoformat() if item.due_at else "-")
        add_row(table, item.title, due, f"{ago(item.since)}" if item.since else "-", item.command or "-")
    out().print(table)
