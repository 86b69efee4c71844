"""Commands on one progression's journey: route (dry run), start, status, evidence add, withdraw, list."""

from __future__ import annotations

import itertools
import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.text import Text

from client.cli.common import (
    EXIT_CHECKS_FAIL,
    EXIT_ERROR,
    EXIT_INVALID,
    JsonOpt,
    client,
    emit_json,
    err,
    fail,
    handle_errors,
    out,
)
from client.cli.render import add_row, ago, columns, render_route, render_state
from client.repo import SPEC_FILENAME, RepositoryUpload, read_repository
from client.sdk import InvalidInput, NotFound
from engine.lifecycle import ProgressionDetail, ProgressionState, Status
from engine.wire import SPEC_MAX_BYTES, DryRunResult, PolicyDetail
from engine.yaml_safe import YamlProblem, safe_load_yaml


def _repo(repo_dir: Path) -> RepositoryUpload:
    spec = repo_dir / SPEC_FILENAME
    if not spec.is_file():
        fail(f"{spec}: not found; run in a model repository or pass its directory", EXIT_INVALID)
    return read_repository(repo_dir)


# ---- commands --------------------------------------------------------------------------------

RepoArg = Annotated[Path, typer.Argument(help="The model repository (with progression.yaml).")]


def blockers(result: DryRunResult, upload: RepositoryUpload) -> list[tuple[str, int | None, str]]:
    """What keeps the route from reaching a person's decision as things stand: (file, line, message) each —
    evidence that breaks its contract (a start refuses it), evidence the spec names but the repository lacks,
    features the catalog does not know, and failing checks."""
    paths = {name: rel for name, (rel, _) in upload.evidence.items()} | dict(upload.missing)
    found: list[tuple[str, int | None, str]] = []
    for problem in result.evidence_problems:
        found.append((paths.get(problem.evidence, SPEC_FILENAME), None, f"{problem.message} [{problem.code}]"))
    for name in sorted(set(result.missing_evidence) | set(upload.missing)):
        where = upload.missing.get(name)
        found.append((SPEC_FILENAME, spec_line(upload.spec_yaml, ("evidence", name)),
                      f"evidence.{name}: missing" + (f" ({where} not found in the repository)" if where else "")))
    for feature in result.unknown_features:
        found.append((SPEC_FILENAME, spec_line(upload.spec_yaml, ("features",)),
                      f"features: {feature} is not in the feature catalog"))
    for stage in result.route:
        for check in stage.checks:
            if not check.passed:
                found.append((SPEC_FILENAME, None, f"{stage.name}/{check.id}: {check.reason}"))
    return found


def spec_line(spec_yaml: bytes, path: tuple[str, ...]) -> int | None:
    """The line of a field in the spec (the YAML is the server-validated one; best effort for annotations)."""
    try:
        _, lines = safe_load_yaml(spec_yaml, filename=SPEC_FILENAME, max_bytes=SPEC_MAX_BYTES)
    except YamlProblem:
        return None
    return lines.get(path)


def github_annotation(file: str, line: int | None, message: str) -> str:
    """A GitHub Actions workflow command that marks ``file`` (and ``line``) in the pull request."""
    escaped = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    where = f"file={file}" + (f",line={line}" if line else "")
    return f"::error {where}::{escaped}"


@handle_errors
def route(
    repo_dir: RepoArg = Path("."),
    strict: Annotated[bool, typer.Option("--strict", help="Exit 6 when a check fails now.")] = False,
    check: Annotated[bool, typer.Option("--check", help="For CI: exit 6 when the route has blockers (evidence "
                                        "breaking its contract or missing, unknown features, failing checks).")]
    = False,
    github: Annotated[bool, typer.Option("--github", help="Also print GitHub Actions annotations "
                                         "(::error file=...,line=...::) for each blocker and spec error.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Dry run: the route this repository would take now — stages, checks, approvals, what to fix first."""
    upload = _repo(repo_dir)
    try:
        with client() as c:
            result = c.dry_run(None, upload)  # the server's one loader reads the intent from the spec
            try:
                policy: PolicyDetail | None = c.policy(result.intent)
            except NotFound:
                policy = None
    except InvalidInput as exc:
        if github:  # the spec's own problems, each at its line
            for detail in exc.details if isinstance(exc.details, list) else []:
                if isinstance(detail, dict) and detail.get("message"):
                    field = f"{detail['field']}: " if detail.get("field") else ""
                    sys.stdout.write(github_annotation(SPEC_FILENAME, detail.get("line"),
                                                       f"{field}{detail['message']}") + "\n")
        raise
    found = blockers(result, upload)
    if as_json:
        body = result.model_dump(mode="json")
        if policy is not None:
            body["policy"] = {"title": policy.title, "risk_tier": policy.risk_tier, "hash": policy.hash}
        body["local_missing_evidence"] = upload.missing
        body["blockers"] = [{"file": f, "line": n, "message": m} for f, n, m in found]
        emit_json(body)
    else:
        out().print(render_route(result, policy, upload))
    if github:
        for file, line, message in found:
            sys.stdout.write(github_annotation(file, line, message) + "\n")
    if (strict and result.checks_failing) or (check and found):
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
    print_next(state)  # the answer carries the actions allowed to you now


def print_next(state: ProgressionState) -> None:
    """The exact command of the caller's next step, when one waits on them."""
    command = state.next_command if isinstance(state, ProgressionDetail) else None
    if command:
        out().print(Text.assemble(("Next: ", "bold"), command))


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
                print_next(state)
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
    if not as_json:
        print_next(state)  # it waits on a person now: if on you, what to run


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
    print_next(state)


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
def list_progressions(
    model: Annotated[str | None, typer.Option(help="Model id.")] = None,
    intent: Annotated[str | None, typer.Option(help="Business intent.")] = None,
    stage: Annotated[str | None, typer.Option(help="Current stage.")] = None,
    status_: Annotated[str | None, typer.Option("--status", help="Status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (pages on by cursor until then).", min=1)] = 50,
    all_: Annotated[bool, typer.Option("--all", help="Every page, however many.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Progressions you can see, newest first."""
    with client() as c:
        found = c.progressions(model=model, intent=intent, stage=stage, status=status_,
                               page_size=min(limit, 500) if not all_ else 500)
        items = list(found) if all_ else list(itertools.islice(found, limit))
    if as_json:
        emit_json({"items": [p.model_dump(mode="json") for p in items]})
        return
    table = columns("progression", "intent", "tier", "status", "stage", "waiting on", "updated")
    for p in items:
        add_row(table, p.id, p.business_intent, str(p.risk_tier), p.status, p.current_stage or "-",
                      ", ".join(p.waiting_on) or "-", f"{ago(p.updated_at)} ago")
    out().print(table)


