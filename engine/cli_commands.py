"""The developer CLI over the HTTP API: every command except ``users`` (which lives in engine.cli).

Configuration: ``PROGRESSION_URL`` and ``PROGRESSION_TOKEN``, else the config file
(``PROGRESSION_CONFIG`` or ``~/.config/progression/config.toml``) written by
``progression login``. Every command has ``--json`` for scripts. Exit codes:

    0 ok, 1 server/other error, 2 invalid input, 3 refused (401/403/409),
    4 not found, 5 cannot connect, 6 a check fails (``route --strict`` only).

Errors print the API's message (and field/line details for invalid input), never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from api.schemas import DryRunResult, PolicyDetail
from engine.lifecycle import ProgressionState, StageState, StageStatus, Status
from engine.repo import SPEC_FILENAME, RepositoryUpload, read_repository
from engine.sdk import (
    ConflictError,
    ConnectionFailed,
    Forbidden,
    InvalidInput,
    NotFound,
    ProgressionAPIError,
    ProgressionClient,
    ServerError,
    Unauthorized,
    _intent_of,
    stage_basis,
)

DEFAULT_URL = "http://127.0.0.1:8000"

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_CONNECT, EXIT_CHECKS_FAIL = 0, 1, 2, 3, 4, 5, 6

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


# ---- configuration ---------------------------------------------------------------------------


def config_path() -> Path:
    explicit = os.environ.get("PROGRESSION_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "progression" / "config.toml"


def read_config() -> dict[str, str]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        fail(f"{path}: not valid TOML ({exc}); run `progression login` again", EXIT_INVALID)
    return {k: str(v) for k, v in data.items() if isinstance(v, str)}


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# written by `progression login`\nurl = {_toml_string(url)}\ntoken = {_toml_string(token)}\n"
    # Create with mode 600 from the start: the token must never be readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
    return path


def settings() -> tuple[str, str | None]:
    """(url, token): environment first, then the config file, then the embedded default URL."""
    config = read_config()
    url = os.environ.get("PROGRESSION_URL") or config.get("url") or DEFAULT_URL
    token = os.environ.get("PROGRESSION_TOKEN") or config.get("token")
    return url, token


@contextmanager
def client() -> Iterator[ProgressionClient]:
    url, token = settings()
    with ProgressionClient(url, token) as c:
        yield c


# ---- output and errors -----------------------------------------------------------------------


def out() -> Console:
    # Built per call so it writes to the current sys.stdout (test runners swap it).
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


def emit_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int, details: list[str] | None = None) -> NoReturn:
    console = err()
    console.print(Text("error: ", style="bold red") + Text(message))
    for line in details or []:
        console.print(Text("  " + line))
    raise typer.Exit(code)


def exit_code_for(exc: ProgressionAPIError) -> int:
    if isinstance(exc, ConnectionFailed):
        return EXIT_CONNECT
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, Unauthorized | Forbidden | ConflictError):
        return EXIT_REFUSED
    if isinstance(exc, InvalidInput):
        return EXIT_INVALID
    if isinstance(exc, ServerError):
        return EXIT_ERROR
    return EXIT_ERROR


def detail_lines(details: Any) -> list[str]:
    """Field/line details of a 422 in words: `progression.yaml:7: model.business_intent: ...`."""
    if not isinstance(details, list):
        return []
    lines = []
    for d in details:
        if not isinstance(d, dict):
            lines.append(str(d))
            continue
        where = ""
        if d.get("file"):
            where = f"{d['file']}:{d['line']}" if d.get("line") is not None else str(d["file"])
        elif d.get("line") is not None:
            where = f"line {d['line']}"
        field = d.get("field") or ""
        parts = [p for p in (where, field, str(d.get("message", ""))) if p]
        lines.append(": ".join(parts))
    return lines


def handle_errors(fn: F) -> F:
    """Turn API errors into a message on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProgressionAPIError as exc:
            if kwargs.get("as_json"):
                sys.stderr.write(json.dumps({"code": exc.code, "message": exc.message, "details": exc.details,
                                             "status": exc.status}, default=str) + "\n")
                raise typer.Exit(exit_code_for(exc)) from None
            lines = detail_lines(exc.details) if isinstance(exc, InvalidInput) else []
            # The first detail usually repeats the message; do not print it twice.
            lines = [line for line in lines if line != exc.message and not exc.message.endswith(line)]
            fail(f"{exc.message} [{exc.code}]", exit_code_for(exc), lines)
        except OSError as exc:
            fail(f"{getattr(exc, 'filename', '') or ''}: {exc.strerror or exc}", EXIT_INVALID)

    return wrapper  # type: ignore[return-value]


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


def _ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return ""
    now = now or datetime.now(UTC)
    return human_seconds((now - when).total_seconds())


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    sign = "-" if seconds < 0 else ""
    s = abs(int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            major, rest = divmod(s, size)
            return f"{sign}{major}{unit}"
    return f"{sign}{s}s"


def _approval_text(stage: StageState) -> str:
    parts = []
    for a in stage.approvals:
        text = f"{a.role.value} {len(a.approved_by)}/{a.count}"
        extra = []
        if a.sla:
            extra.append(f"SLA {a.sla}")
        if a.due_at and not a.satisfied:
            left = (a.due_at - datetime.now(UTC)).total_seconds()
            extra.append(f"due in {human_seconds(left)}" if left >= 0 else f"overdue {human_seconds(-left)}")
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
        _row(table, Text(mark, style=style), name, Text(stage.status.value, style=style), where,
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


def _row(table: Table, *cells: str | Text) -> None:
    # Plain text, never console markup: ids, comments and reasons may contain '[...]'.
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


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
    if result.fix_first is not None:
        where = f"{result.fix_first_stage}/" if result.fix_first_stage else ""
        fix = result.fix_first
        lines.append(Text.assemble(("Fix first: ", "bold red"), f"{where}{fix.id}: {fix.reason}"))
    else:
        lines.append(Text("Every check passes now; the route waits only on approvals.", style="green"))
    return Group(*lines)


def _line_of(text: bytes, key: str) -> int | None:
    for number, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        if line.strip().startswith(f"{key}:"):
            return number
    return None


def _repo(repo_dir: Path) -> RepositoryUpload:
    spec = repo_dir / SPEC_FILENAME
    if not spec.is_file():
        fail(f"{spec}: not found; run in a model repository or pass its directory", EXIT_INVALID)
    return read_repository(repo_dir)


# ---- commands --------------------------------------------------------------------------------

RepoArg = Annotated[Path, typer.Argument(help="The model repository (with progression.yaml).")]


@handle_errors
def route(
    repo_dir: RepoArg = Path("."),
    strict: Annotated[bool, typer.Option("--strict", help="Exit 6 when a check fails now.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Dry run: the route this repository would take now — stages, checks, approvals, what to fix first."""
    upload = _repo(repo_dir)
    with client() as c:
        intent = _intent_of(upload)
        try:
            result = c.dry_run(intent, upload)
        except NotFound as exc:
            if not (isinstance(exc.details, dict) and exc.details.get("intent") == intent):
                raise
            # The intent came from the spec: a typo there is invalid input, pointed at its line.
            line = _line_of(upload.spec_yaml, "business_intent")
            where = f"{SPEC_FILENAME}:{line}" if line else SPEC_FILENAME
            raise InvalidInput(f"{where}: model.business_intent: {exc.message}", code="unknown_intent",
                               details=exc.details, status=exc.status) from None
        try:
            policy: PolicyDetail | None = c.policy(result.intent)
        except NotFound:
            policy = None
    if as_json:
        body = result.model_dump(mode="json")
        if policy is not None:
            body["policy"] = {"title": policy.title, "risk_tier": policy.risk_tier, "hash": policy.hash}
        body["local_missing_evidence"] = upload.missing
        emit_json(body)
    else:
        out().print(render_route(result, policy, upload))
    if strict and result.checks_failing:
        raise typer.Exit(EXIT_CHECKS_FAIL)


@handle_errors
def start(
    repo_dir: RepoArg = Path("."),
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key (e.g. the CI job id).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a progression: upload progression.yaml and the evidence it names; print the id and the route."""
    upload = _repo(repo_dir)
    if upload.missing:
        missing = ", ".join(f"{n} ({p})" for n, p in sorted(upload.missing.items()))
        err().print(Text(f"warning: evidence not found in the repository: {missing}", style="yellow"))
    with client() as c:
        state = c.start(upload, idempotency_key=idempotency_key)
    if as_json:
        emit_json(state)
        return
    console = out()
    console.print(Text.assemble("Started ", (state.progression_id, "bold")))
    console.print(render_state(state))


def _waits_on_person_or_ended(state: ProgressionState) -> bool:
    return state.status != Status.running


@handle_errors
def status(
    progression_id: Annotated[str, typer.Argument(help="<model-id>@<version-id>")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Update until it waits on a person or ends.")]
    = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --follow.", min=0.05)] = 2.0,
    timeout: Annotated[float | None, typer.Option(help="Give up following after this many seconds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The route with done / current / next stages, checks, approvals and who acts next."""
    with client() as c:
        state = c.get(progression_id)
        if not follow:
            if as_json:
                emit_json(state)
            else:
                out().print(render_state(state))
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        console = out()
        if as_json:
            # One JSON document per line per change, so a script can stream it. Never an older state than one
            # already shown (when the workflow does not answer in time the API serves its last recorded snapshot).
            last = -1
            while True:
                if state.seq > last:
                    sys.stdout.write(state.model_dump_json() + "\n")
                    sys.stdout.flush()
                    last = state.seq
                if _waits_on_person_or_ended(state) or (deadline and time.monotonic() > deadline):
                    break
                time.sleep(interval)
                state = c.get(progression_id)
        elif console.is_terminal:
            with Live(render_state(state), console=console, refresh_per_second=4) as live:
                while not _waits_on_person_or_ended(state) and not (deadline and time.monotonic() > deadline):
                    time.sleep(interval)
                    state = c.get(progression_id)
                    live.update(render_state(state))
        else:
            last = -1
            while True:
                if state.seq > last:
                    console.print(render_state(state))
                    last = state.seq
                if _waits_on_person_or_ended(state) or (deadline and time.monotonic() > deadline):
                    break
                time.sleep(interval)
                state = c.get(progression_id)
    if not _waits_on_person_or_ended(state):
        fail(f"{progression_id} is still {state.status.value} after {timeout}s", EXIT_ERROR)


_NAME_FILE = re.compile(r"^([a-z][a-z0-9_]{0,63})=(.+)$")


@handle_errors
def evidence_add(
    progression_id: Annotated[str, typer.Argument(help="<model-id>@<version-id>")],
    files: Annotated[list[str], typer.Argument(help="FILE (named by its stem) or NAME=FILE.")],
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add or replace evidence; the current stage's checks run again."""
    named: dict[str, Path] = {}
    for item in files:
        match = _NAME_FILE.match(item)
        name, path = (match.group(1), Path(match.group(2))) if match else (Path(item).stem, Path(item))
        if not path.is_file():
            fail(f"{path}: no such file", EXIT_INVALID)
        if name in named:
            fail(f"evidence {name!r} is given twice ({named[name]} and {path})", EXIT_INVALID)
        named[name] = path
    with client() as c:
        state = c.add_evidence(progression_id, named, idempotency_key=idempotency_key)
    if as_json:
        emit_json(state)
        return
    out().print(Text(f"Evidence {', '.join(sorted(named))} added to {progression_id}"))
    out().print(render_state(state))


@handle_errors
def withdraw(
    progression_id: Annotated[str, typer.Argument(help="<model-id>@<version-id>")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why it stops (recorded in the audit trail).")],
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a progression (the submitting team only)."""
    with client() as c:
        state = c.withdraw(progression_id, reason, idempotency_key=idempotency_key)
    if as_json:
        emit_json(state)
        return
    out().print(Text(f"{state.progression_id} is {state.status.value}"))


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
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("progression", "stage", "intent", "tier", "your role", "approvals", "waiting", "SLA left"):
        table.add_column(col)
    for item in items:
        approvals = ", ".join(f"{a.get('role')} {len(a.get('approved_by') or [])}/{a.get('count')}"
                              for a in item.approvals)
        sla = "-" if item.seconds_to_sla is None else human_seconds(item.seconds_to_sla)
        if item.escalated:
            sla += " (escalated)"
        _row(table, item.progression_id, item.stage, item.business_intent, str(item.risk_tier),
                      ", ".join(r.value for r in item.roles), approvals, human_seconds(item.waiting_seconds), sla)
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


@handle_errors
def list_progressions(
    model: Annotated[str | None, typer.Option(help="Model id.")] = None,
    intent: Annotated[str | None, typer.Option(help="Business intent.")] = None,
    stage: Annotated[str | None, typer.Option(help="Current stage.")] = None,
    status_: Annotated[str | None, typer.Option("--status", help="Status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Progressions you can see, newest first."""
    with client() as c:
        page = c.list(model=model, intent=intent, stage=stage, status=status_, limit=limit)
    if as_json:
        emit_json(page)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("progression", "intent", "tier", "status", "stage", "waiting on", "updated"):
        table.add_column(col)
    for p in page.items:
        _row(table, p.id, p.business_intent, str(p.risk_tier), p.status, p.current_stage or "-",
                      ", ".join(p.waiting_on) or "-", f"{_ago(p.updated_at)} ago")
    out().print(table)


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
            table = Table(box=None, header_style="bold", pad_edge=False)
            for col in ("version", "status", "stage", "waiting on", "revalidation"):
                table.add_column(col)
            for v in detail.versions:
                reval = "" if v.revalidation_due_at is None else f"{v.revalidation_due_at:%Y-%m-%d}"
                if v.revalidation_overdue:
                    reval += " OVERDUE"
                _row(table, v.version_id, v.status or "-", v.current_stage or "-", ", ".join(v.waiting_on) or "-",
                              reval)
            console.print(table)
            return
        items = c.models()
    if as_json:
        emit_json(items)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("model", "name", "team", "intent", "latest", "status", "versions"):
        table.add_column(col)
    for m in items:
        status_text = (m.latest_status or "-") + (" (revalidation overdue)" if m.revalidation_overdue else "")
        _row(table, m.id, m.name, m.team, m.business_intent, m.latest_version or "-", status_text,
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
            table = Table(box=None, header_style="bold", pad_edge=False)
            for col in ("intent", "title", "tier", "stages", "revalidation", "hash"):
                table.add_column(col)
            for p in items:
                _row(table, p.intent, p.title, str(p.risk_tier), " → ".join(p.stages), p.revalidation or "-",
                              p.hash[:19])
            out().print(table)
            return
        detail = c.policy(intent)
    if as_json:
        emit_json(detail)
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


# ---- audit -----------------------------------------------------------------------------------

audit_app = typer.Typer(help="Audit trail: events, export, chain verification.", no_args_is_help=False)


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not an ISO-8601 date or time (e.g. 2026-05-01 or 2026-05-01T12:00:00Z)",
             EXIT_INVALID)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _audit_filters(progression: str | None, model: str | None, actor: str | None, event_type: str | None,
                   since: str | None, until: str | None) -> dict[str, Any]:
    return {"progression": progression, "model": model, "actor": actor, "event_type": event_type,
            "since": _parse_time(since, "--since"), "until": _parse_time(until, "--until")}


ProgressionOpt = Annotated[str | None, typer.Option("--progression", help="Progression id.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model id.")]
ActorOpt = Annotated[str | None, typer.Option("--actor", help="Actor (user id).")]
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
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("seq", "when", "type", "progression", "stage", "actor", "summary"):
        table.add_column(col)
    for e in events:
        summary = _event_summary(e.payload)
        _row(table, str(e.seq), f"{e.occurred_at:%Y-%m-%d %H:%M:%S}", e.event_type, e.progression_id or "-",
                      e.stage or "-", (e.actor_id or "-")[:12], summary)
    out().print(table)
    if len(events) >= limit:
        out().print(Text(f"(first {limit}; use --limit or filters for more)", style="dim"))


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
    as_json: JsonOpt = False,
) -> None:
    """Export the (filtered) audit trail as CSV or JSON Lines, streamed."""
    filters = _audit_filters(progression, model, actor, event_type, since, until)
    with client() as c:
        if output is None:
            written = c.audit_export_to(sys.stdout.buffer, format.value, **filters)
            sys.stdout.flush()
            return
        tmp = output.with_name(output.name + ".part")
        with tmp.open("wb") as fh:
            written = c.audit_export_to(fh, format.value, **filters)
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


# ---- login -----------------------------------------------------------------------------------


def login(
    url: Annotated[str, typer.Option("--url", help="The API's base URL, e.g. http://127.0.0.1:8000")],
    token: Annotated[str, typer.Option("--token", help="Your API token (prg_...).", prompt=True,
                                       hide_input=True)],
    as_json: JsonOpt = False,
) -> None:
    """Save the API URL and token to the config file (mode 600)."""
    path = write_config(url.rstrip("/"), token)
    if as_json:
        emit_json({"config": str(path), "url": url.rstrip("/")})
    else:
        out().print(Text(f"saved {url.rstrip('/')} and your token to {path} (mode 600)"))


# ---- registration ----------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add every non-``users`` command to the ``progression`` app (called at the end of engine.cli)."""
    app.command("login")(login)
    app.command("route")(route)
    app.command("start")(start)
    app.command("status")(status)
    app.command("list")(list_progressions)
    evidence_app = typer.Typer(help="Evidence of a running progression.", no_args_is_help=True)
    evidence_app.command("add")(evidence_add)
    app.add_typer(evidence_app, name="evidence")
    app.command("withdraw")(withdraw)
    app.command("inbox")(inbox)
    app.command("decide")(decide)
    app.command("verify")(verify)
    app.command("models")(models)
    app.command("policies")(policies)
    app.add_typer(audit_app, name="audit")
