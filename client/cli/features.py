"""``progression features ...``: the feature catalog — search it, see what each policy says of a feature and which
models use it, propose a new feature or a change, and (the data owner or an admin) approve or reject one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from client.cli.common import JsonOpt, client, emit_json, handle_errors, out
from client.cli.render import add_row, columns, printable
from engine.wire import FeatureOut, FeatureProposalOut

features_app = typer.Typer(help="The feature catalog: search, what policies say, proposals and approvals.",
                           no_args_is_help=True)
_STYLE = {"forbidden": "red", "requires": "yellow", "allowed": "green", "unknown": "red"}


def _verdicts(feature: FeatureOut, intent: str | None = None) -> Text:
    text = Text()
    for v in feature.policies:
        if intent is not None and v.intent != intent:
            continue
        if text:
            text.append("; ")
        text.append(f"{v.intent}: ")
        text.append(v.verdict if v.verdict != "requires" else v.summary, style=_STYLE.get(v.verdict, ""))
    return text


@features_app.command("search")
@handle_errors
def search(
    query: Annotated[str | None, typer.Argument(help="Words in the name, description or a tag.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only features with this exact tag.")] = None,
    intent: Annotated[str | None, typer.Option(help="Only what this intent's policy says.")] = None,
    verdict: Annotated[str | None, typer.Option(help="allowed, forbidden, requires (with --intent).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search the catalog; each feature with its tags, owner and what each policy says of it."""
    with client() as c:
        page = c.features(q=query, tag=tag, intent=intent, verdict=verdict)
    if as_json:
        emit_json(page)
        return
    table = columns("feature", "tags", "owner", "policies", "description")
    for f in page.items:
        add_row(table, f.name, ", ".join(f.tags), f.owner or "-", _verdicts(f, intent), f.description)
    out().print(table)
    out().print(Text(f"{page.total} features · catalog version {page.catalog_version}", style="dim"))


@features_app.command("show")
@handle_errors
def show(name: Annotated[str, typer.Argument(help="The feature's name.")], as_json: JsonOpt = False) -> None:
    """One feature: description, owner, tags, what each policy says and why, the models that use it."""
    with client() as c:
        f = c.feature(name)
    if as_json:
        emit_json(f)
        return
    console = out()
    console.print(Text.assemble((f.name, "bold"), f"  {printable(f.description)}"))
    console.print(Text(f"tags: {', '.join(f.tags) or '-'} · owner: {f.owner or '- (admins approve)'}"
                       + (f" · {f.pending_proposals} pending proposal(s)" if f.pending_proposals else "")))
    for v in f.policies:
        console.print(Text.assemble(f"  {v.intent}: ", (v.verdict, _STYLE.get(v.verdict, ""))))
        for rule in v.rules:
            needs = f" (needs evidence {', '.join(rule.requires_evidence)})" if rule.requires_evidence else ""
            console.print(Text(f"      {rule.stage}/{rule.check_id}: {rule.description}{needs}"))
    used = ", ".join(f"{u.model_id}@{u.version_id}" for u in f.used_by) or "no model you can see"
    console.print(Text(f"used by: {used}"))


def _proposal_line(p: FeatureProposalOut) -> str:
    change = []
    if p.tags_added:
        change.append("+" + " +".join(p.tags_added))
    if p.tags_removed:
        change.append("-" + " -".join(p.tags_removed))
    if p.previous is None:
        change.append("new feature")
    elif p.previous.description != p.description:
        change.append("description")
    if p.previous is not None and p.previous.owner != p.owner:
        change.append(f"owner → {p.owner}")
    return " ".join(change) or "-"


def _print_proposal(p: FeatureProposalOut) -> None:
    approvals = ", ".join(a.username for a in p.approvals) or "none"
    out().print(Text(f"{p.id}  {p.feature}  {p.status}  {_proposal_line(p)}  · approvals {len(p.approvals)}/"
                     f"{p.approvals_needed} ({approvals})"
                     + (f" · catalog version {p.applied_version}" if p.applied_version else "")))


@features_app.command("propose")
@handle_errors
def propose(
    name: Annotated[str, typer.Argument(help="The feature (new or existing).")],
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why.")],
    description: Annotated[str | None, typer.Option(help="New description (unchanged when omitted).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="The whole new tag set (repeat).")] = None,
    add_tag: Annotated[list[str] | None, typer.Option("--add-tag", help="Add a tag (repeat).")] = None,
    remove_tag: Annotated[list[str] | None, typer.Option("--remove-tag", help="Remove a tag (repeat).")] = None,
    no_tags: Annotated[bool, typer.Option("--no-tags", help="The new tag set is empty.")] = False,
    owner: Annotated[str | None, typer.Option(help="New data owner (a username).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Propose a new feature or a change; the feature's data owner or an admin approves (two people to remove
    protected_attribute, proxy or restricted:*)."""
    with client() as c:
        tags: list[str] | None = [] if no_tags else (list(tag) if tag else None)
        if add_tag or remove_tag:
            current = set(tags if tags is not None else c.feature(name).tags)
            tags = sorted((current | set(add_tag or [])) - set(remove_tag or []))
        p = c.propose_feature(name, comment=comment, description=description, tags=tags, owner=owner)
    if as_json:
        emit_json(p)
        return
    _print_proposal(p)


@features_app.command("proposals")
@handle_errors
def proposals(
    status: Annotated[str | None, typer.Option(help="pending, applied, rejected, superseded.")] = "pending",
    feature: Annotated[str | None, typer.Option(help="One feature's.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Proposed changes (pending ones by default)."""
    with client() as c:
        page = c.feature_proposals(status=status or None, feature=feature)
    if as_json:
        emit_json(page)
        return
    table = columns("proposal", "feature", "status", "change", "approvals", "proposed by", "comment")
    for p in page.items:
        add_row(table, p.id, p.feature, p.status, _proposal_line(p), f"{len(p.approvals)}/{p.approvals_needed}",
                p.proposed_by, p.comment)
    out().print(table)


@features_app.command("approve")
@handle_errors
def approve(proposal_id: Annotated[str, typer.Argument(help="The proposal's id.")],
            comment: Annotated[str, typer.Option("--comment", "-m", help="Why.")] = "",
            as_json: JsonOpt = False) -> None:
    """Approve a proposal (the feature's data owner or an admin; never your own)."""
    with client() as c:
        p = c.decide_feature_proposal(proposal_id, approve=True, comment=comment)
    if as_json:
        emit_json(p)
        return
    _print_proposal(p)


@features_app.command("reject")
@handle_errors
def reject(proposal_id: Annotated[str, typer.Argument(help="The proposal's id.")],
           comment: Annotated[str, typer.Option("--comment", "-m", help="Why.")],
           as_json: JsonOpt = False) -> None:
    """Reject a proposal (the feature's data owner or an admin; never your own)."""
    with client() as c:
        p = c.decide_feature_proposal(proposal_id, approve=False, comment=comment)
    if as_json:
        emit_json(p)
        return
    _print_proposal(p)


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")
