"""The auditor's commands: events, export, chain verification, and one progression's bindings (verify)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from client.cli.common import EXIT_ERROR, JsonOpt, client, emit_json, err, handle_errors, out, parse_time
from client.cli.render import add_row, columns
from engine.wire import AuditEventOut, AuditFilter

# ---- audit -----------------------------------------------------------------------------------

audit_app = typer.Typer(
    rich_markup_mode=None, help="Audit trail: events, export, chain verification.", no_args_is_help=False)


def _audit_filters(progression: str | None, model: str | None, actor: str | None, event_type: str | None,
                   since: str | None, until: str | None) -> dict[str, Any]:
    """The options as the SDK's audit keywords (the fields of :class:`engine.wire.AuditFilter`)."""
    return AuditFilter(progression=progression, model=model, actor=actor, event_type=event_type,
                       since=parse_time(since, "--since"), until=parse_time(until, "--until")).model_dump()


ProgressionOpt = Annotated[str | None, typer.Option("--progression", help="Progression id.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model id.")]
ActorOpt = Annotated[str | None, typer.Option("--actor", help="Actor: a username or a user id (one that names "
                                                             "nobody is an error, exit code 2).")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="Event type, e.g. decision.received.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="From this ISO time (inclusive).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Before this ISO time (exclusive).")]


@audit_app.callback(invoke_without_command=True)
@handle_errors
def audit(
    ctx: typer.Context,
    progression: ProgressionOpt = None,
    model: ModelOpt = None,
    actor: ActorOpt = None,
    event_type: TypeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many events.", min=1)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Audit events, oldest first (filters combine)."""
    if ctx.invoked_subcommand is not None:
        return
    filters = _audit_filters(progression, model, actor, event_type, since, until)
    events = []
    with client() as c:
        for event in c.audit_events(page_size=min(limit, 500), **filters):
            events.append(event)
            if len(events) >= limit:
                break
    if as_json:
        emit_json(events)
        return
    table = columns("seq", "when", "type", "progression", "stage", "actor", "summary")
    for e in events:
        summary = _event_summary(e.payload)
        add_row(table, str(e.seq), f"{e.occurred_at:%Y-%m-%d %H:%M:%S}", e.event_type, e.progression_id or "-",
                      e.stage or "-", _actor(e), summary)
    out().print(table)
    if len(events) >= limit:
        out().print(Text(f"(first {limit}; use --limit or filters for more)", style="dim"))


def _actor(e: AuditEventOut) -> str:
    """``username (display name)``; the id only for an actor that is no user."""
    if e.actor_username:
        return f"{e.actor_username} ({e.actor_display_name})" if e.actor_display_name else e.actor_username
    return e.actor_id or "system"


def _event_summary(payload: dict[str, Any]) -> str:
    for key in ("reason", "comment", "message", "decision", "check_id", "status"):
        value = payload.get(key)
        if isinstance(value, str | int | float) and value != "":
            text = f"{key}: {value}"
            return text if len(text) <= 80 else text[:77] + "..."
    return ""


class ExportFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


@audit_app.command("export")
@handle_errors
def audit_export(
    format: Annotated[ExportFormat, typer.Option("--format", help="csv or jsonl.")] = ExportFormat.jsonl,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file (default stdout).")]
    = None,
    progression: ProgressionOpt = None,
    model: ModelOpt = None,
    actor: ActorOpt = None,
    event_type: TypeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    bom: Annotated[bool, typer.Option("--bom", help="CSV: start with a byte order mark (spreadsheet tools).")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Export the (filtered) audit trail as CSV or JSON Lines (UTF-8, names beside ids), streamed."""
    filters = _audit_filters(progression, model, actor, event_type, since, until)
    with client() as c:
        if output is None:
            written = c.audit_export_to(sys.stdout.buffer, format.value, bom=bom, **filters)
            sys.stdout.flush()
            return
        tmp = output.with_name(output.name + ".part")
        with tmp.open("wb") as fh:
            written = c.audit_export_to(fh, format.value, bom=bom, **filters)
        tmp.replace(output)  # a failed export never leaves a half file under the real name
    if as_json:
        emit_json({"output": str(output), "format": format.value, "bytes": written})
    else:
        err().print(Text(f"wrote {written} bytes to {output}"))


@handle_errors
def verify(
    progression_id: Annotated[str, typer.Argument(help="<model-id>@<version-id>")],
    as_json: JsonOpt = False,
) -> None:
    """Re-hash the evidence and check every counted approval's basis (and the deployment's); exit 1 on a problem."""
    with client() as c:
        result = c.verify(progression_id)
    if as_json:
        emit_json(result)
    else:
        for e in result.evidence:
            out().print(Text(f"evidence {e.name}: {e.status} {e.sha256}", style="green" if e.status == "ok" else "red"))
        for a in result.approvals:
            deployed = "" if a.deployed is None else (" deployed" if a.deployed else " NOT deployed")
            out().print(Text(f"{a.stage}: {a.actor} approved {a.basis} "
                             f"{'matches' if a.matches else 'DOES NOT MATCH'}{deployed}",
                             style="green" if a.matches and a.deployed is not False else "red"))
        if result.ok:
            out().print(Text(f"{progression_id}: OK, every counted approval binds to the current evidence",
                             style="green"))
        for problem in result.problems:
            out().print(Text(problem, style="bold red"))
    if not result.ok:
        raise typer.Exit(EXIT_ERROR)


@audit_app.command("verify")
@handle_errors
def audit_verify(as_json: JsonOpt = False) -> None:
    """Verify the hash chain end to end; exit 1 and name the first bad event when it is broken."""
    with client() as c:
        result = c.audit_verify()
    if as_json:
        emit_json(result)
    elif result.ok:
        out().print(Text(f"chain OK: {result.events_checked} events, head #{result.head_seq} {result.head_hash}",
                         style="green"))
    else:
        out().print(Text(f"chain BROKEN at event #{result.first_bad_seq} ({result.first_bad_event_id}): "
                         f"{result.problem}", style="bold red"))
    if not result.ok:
        raise typer.Exit(EXIT_ERROR)


