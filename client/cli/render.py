"""Rich renderings of a progression's state and of a dry-run route (text only, no I/O)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from client.repo import RepositoryUpload
from engine.durations import human_duration
from engine.lifecycle import ProgressionState, StageState, StageStatus
from engine.wire import DryRunResult, PolicyDetail

# ---- rendering -------------------------------------------------------------------------------

_STAGE_MARK = {
    StageStatus.passed: ("✔", "green", "done"),
    StageStatus.rejected: ("✘", "red", "rejected"),
    StageStatus.withdrawn: ("■", "dim", "withdrawn"),
    StageStatus.blocked: ("✘", "red", "current"),
    StageStatus.awaiting_approval: ("▶", "yellow", "current"),
    StageStatus.changes_requested: ("↺", "yellow", "current"),
    StageStatus.running: ("▶", "cyan", "current"),
    StageStatus.pending: ("·", "dim", "next"),
}


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return ""
    now = now or datetime.now(UTC)
    return human_duration((now - when).total_seconds())


def _approval_text(stage: StageState) -> str:
    parts = []
    for a in stage.approvals:
        text = f"{a.role.value} {len(a.approved_by)}/{a.count}"
        extra = []
        if a.sla:
            extra.append(f"SLA {a.sla}")
        if a.due_at and not a.satisfied:
            left = (a.due_at - datetime.now(UTC)).total_seconds()
            extra.append(f"due in {human_duration(left)}" if left >= 0 else f"overdue {human_duration(-left)}")
        if a.escalated:
            extra.append(f"escalated to {a.escalate_to.value if a.escalate_to else '?'}")
        if extra:
            text += f" ({', '.join(extra)})"
        parts.append(text)
    return "\n".join(parts) or "-"


def _checks_text(stage: StageState) -> str:
    if not stage.checks:
        return "-"
    passed = sum(1 for c in stage.checks if c.passed)
    return f"{passed}/{len(stage.checks)} pass"


def render_state(state: ProgressionState) -> Group:
    status_style = {"running": "cyan", "blocked": "red", "awaiting_approval": "yellow",
                    "changes_requested": "yellow", "approved": "green", "in_production": "green",
                    "rejected": "red", "withdrawn": "dim", "retired": "dim"}.get(state.status.value, "")
    head = Text.assemble(
        (state.progression_id, "bold"), "  ", f"{state.business_intent} (tier {state.risk_tier})",
        "  status: ", (state.status.value, f"bold {status_style}"),
    )
    sub = Text(f"team {state.team} · target {state.target} · policy {state.policy_hash[:19]} · "
               f"submitted by {state.submitted_by_username}", style="dim")
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("", "stage", "status", "where", "checks", "approvals"):
        table.add_column(col)
    for stage in state.stages:
        mark, style, where = _STAGE_MARK.get(stage.status, ("?", "", ""))
        if stage.name == state.current_stage and where == "next":
            where = "current"
        name = stage.name + (f" [{stage.action}]" if stage.action else "")
        add_row(table, Text(mark, style=style), name, Text(stage.status.value, style=style), where,
                      _checks_text(stage), _approval_text(stage))
    lines: list[Any] = [head, sub, table]
    for stage in state.stages:
        for check in stage.checks:
            if stage.name == state.current_stage or not check.passed:
                lines.append(_check_line(stage.name, check.check_id, check.passed, check.reason))
    for stage in state.stages:
        for decision in stage.decisions:
            bound = ""
            if decision.basis:
                bound = f" [basis {decision.basis[7:19]}: " + (
                    "still matches]" if decision.basis_matches else "evidence changed since]")
            text = (f"  {stage.name}: {decision.decision.value} by {decision.actor_username}"
                    f"{' (superseded)' if decision.superseded else ''}{bound} — {decision.comment}")
            lines.append(Text(text, style="dim" if decision.superseded else ""))
    current = state.stage(state.current_stage) if state.current_stage else None
    if current is not None and current.basis and current.status == StageStatus.awaiting_approval:
        lines.append(Text.assemble(("Basis of the open gate: ", "bold"), current.basis))
    if state.next_action:
        lines.append(Text.assemble(("Next: ", "bold"), state.next_action))
    if state.waiting_on:
        lines.append(Text.assemble(("Waiting on: ", "bold"), ", ".join(r.value for r in state.waiting_on)))
    for missing in state.missing:
        lines.append(Text.assemble(("Missing: ", "bold red"), missing))
    if state.revalidation_due_at:
        flag = " (OVERDUE)" if state.revalidation_overdue else ""
        lines.append(Text(f"Revalidation due {state.revalidation_due_at:%Y-%m-%d}{flag}"))
    return Group(*lines)


def columns(*names: str) -> Table:
    """A plain table with these column headings (every listing looks the same)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in names:
        table.add_column(name)
    return table


# C0/C1 control characters but tab and newline: an escape sequence in a display name (an SSO "name" claim, say)
# would move the cursor and overwrite the actor column of the auditor's terminal ("\x1b[2K\x1b[1Gvera").
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every terminal control character shown as its escape (``\\x1b``), never sent raw."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def add_row(table: Table, *cells: str | Text) -> None:
    # Plain text, never console markup: ids, comments and reasons may contain '[...]'; nor terminal controls.
    table.add_row(*(Text(printable(c)) if isinstance(c, str) else c for c in cells))


def _check_line(stage: str, check_id: str, passed: bool, reason: str) -> Text:
    mark = Text("  ✔ ", style="green") if passed else Text("  ✘ ", style="red")
    return mark + Text(f"{stage}/{check_id}: {reason}")


def render_route(result: DryRunResult, policy: PolicyDetail | None, upload: RepositoryUpload) -> Group:
    title = f"{policy.title}, " if policy else ""
    tier = f"risk tier {policy.risk_tier}" if policy else ""
    head = Text.assemble((result.progression_id, "bold"), "  →  ", (result.intent, "bold"),
                         f" ({title}{tier})" if policy else "", f"  target {result.target}")
    sub = Text(f"policy {result.policy_hash}", style="dim")
    lines: list[Any] = [head, sub, Text("")]
    for index, stage in enumerate(result.route, 1):
        ok = stage.passes_now
        mark = Text("✔ ", style="green") if ok else Text("✘ ", style="red")
        stage_line = mark + Text(f"{index}. {stage.name}", style="bold")
        if stage.action:
            stage_line += Text(f"  action: {stage.action}")
        lines.append(stage_line)
        for check in stage.checks:
            lines.append(Text("    ") + _check_line(stage.name, check.id, check.passed, check.reason)[2:])
        for approval in stage.approvals:
            extra = [f"SLA {approval.sla}"] if approval.sla else []
            if approval.escalate_to:
                extra.append(f"escalates to {approval.escalate_to.value}")
            people = "person" if approval.count == 1 else "different people"
            lines.append(Text(f"    approval: {approval.count} {approval.role.value} ({people})"
                              + (f", {', '.join(extra)}" if extra else "")))
        if not stage.checks and not stage.approvals and not stage.action:
            lines.append(Text("    (nothing to check or approve)", style="dim"))
    lines.append(Text(""))
    lines.append(Text(f"Checks now: {result.checks_passing} pass, {result.checks_failing} fail"))
    for name in sorted(set(result.missing_evidence) | set(upload.missing)):
        where = upload.missing.get(name)
        lines.append(Text(f"Missing evidence: {name}" + (f" ({where} not found in the repository)" if where else ""),
                          style="red"))
    for feature in result.unknown_features:
        lines.append(Text(f"Unknown feature (not in the catalog): {feature}", style="red"))
    for note in result.features:
        style = "red" if note.verdict.verdict == "forbidden" else "yellow"
        lines.append(Text(f"Feature {note.name}: {note.verdict.summary}", style=style))
    for name in result.unchanged_examples:  # scaffolded by `init` and never replaced
        lines.append(Text(f"Warning: evidence {name} is still the policy's example: replace it with your model's own "
                          "(validators review it)", style="yellow"))
    for problem in result.evidence_problems:  # a start refuses these (422 evidence_contract)
        lines.append(Text(f"Evidence breaks its contract: {problem.message} [{problem.code}]", style="red"))
    if result.evidence_problems:
        first = result.evidence_problems[0]
        lines.append(Text.assemble(("Fix first: ", "bold red"), first.message,
                                   f" (see GET /api/v1/policies/{result.intent}/evidence)"))
    elif result.fix_first is not None:
        where = f"{result.fix_first_stage}/" if result.fix_first_stage else ""
        fix = result.fix_first
        lines.append(Text.assemble(("Fix first: ", "bold red"), f"{where}{fix.id}: {fix.reason}"))
    else:
        lines.append(Text("Every check passes now; the route waits only on approvals.", style="green"))
    return Group(*lines)


