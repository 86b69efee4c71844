"""Life after production from the terminal: post and show monitoring results, ask for a retirement, record a
risk officer's retirement override."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from client.cli.common import JsonOpt, answer_or_json, handle_errors, out
from client.cli.render import add_row, columns

monitoring_app = typer.Typer(help="Monitoring results of models in production.", no_args_is_help=True)


@handle_errors
def post(
    model_id: Annotated[str, typer.Argument(help="The model in production.")],
    results: Annotated[Path, typer.Argument(help='A JSON file: {"period": "YYYY-MM-DD", "metrics": {...}}.',
                                            exists=True, dir_okay=False)],
    as_json: JsonOpt = False,
) -> None:
    """Post a period's results (with the monitor identity's token); prints the breaches and what they did."""
    try:
        document = json.loads(results.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{results}: not a JSON document ({exc})") from None
    if not isinstance(document, dict) or set(document) != {"period", "metrics"}:
        raise typer.BadParameter(f"{results}: expected exactly the keys period and metrics")
    stored = answer_or_json(lambda c: c.post_monitoring(model_id, str(document["period"]), document["metrics"]),
                            as_json)
    if stored is None:
        return
    console = out()
    console.print(Text.assemble((stored.result_id, "bold"), f"  {stored.model_id} {stored.version_id} · period "
                                                            f"{stored.period.isoformat()}"))
    if not stored.breaches:
        console.print("within every threshold")
    for action in stored.actions:
        console.print(f"- {action}")


@handle_errors
def show(
    model_id: Annotated[str, typer.Argument(help="The model.")],
    as_json: JsonOpt = False,
) -> None:
    """The monitoring history with the thresholds of the policy's rules."""
    history = answer_or_json(lambda c: c.monitoring(model_id), as_json)
    if history is None:
        return
    names = sorted(history.metrics)
    table = columns("period", *names, "breaches")
    for r in history.results:
        cells = []
        for name in names:
            value = r.metrics.get(name)
            cells.append(f"max {max(value.values()):.3g}" if isinstance(value, dict) and value else
                         f"{value:.4g}" if isinstance(value, int | float) else "-")
        add_row(table, r.period.isoformat(), *cells, ", ".join(b.rule_id for b in r.breaches) or "-")
    console = out()
    console.print(table)
    for metric, lines in sorted(history.thresholds.items()):
        console.print(f"{metric}: " + ", ".join(f"{t.rule_id} at {t.value:g}" for t in lines))


@handle_errors
def retire(
    model_id: Annotated[str, typer.Argument(help="The model in production to retire.")],
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why it is retired.")],
    replacement: Annotated[str | None, typer.Option(help="The version that takes over, if any.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask to retire a model (its owning team); the policy's approvers decide at the retirement gate."""
    state = answer_or_json(lambda c: c.retire(model_id, reason, replacement=replacement), as_json)
    if state is None:
        return
    out().print(f"{state.progression_id}: retirement awaits {', '.join(r.value for r in state.waiting_on) or '-'}")


@handle_errors
def retire_override(
    model_id: Annotated[str, typer.Argument(help="The model production models depend on.")],
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why it may retire although they depend on it.")],
    as_json: JsonOpt = False,
) -> None:
    """Record that a model may retire although production models declare it a dependency (a model risk
    officer independent of the owning team; audited). The retirement itself still goes through its gate."""
    if not reason.strip():
        raise typer.BadParameter("say why the model may retire (--reason/-m)", param_hint="--reason")
    override = answer_or_json(lambda c: c.retirement_override(model_id, reason.strip()), as_json)
    if override is None:
        return
    out().print(Text.assemble((override.override_id, "bold"), f"  {override.model_id} may retire although "
                              f"{', '.join(override.dependents)} depend on it (recorded by {override.granted_by})"))
    out().print(f"The owning team now asks: progression retire {override.model_id} -m REASON")


def register(app: typer.Typer) -> None:
    monitoring_app.command("post")(post)
    monitoring_app.command("show")(show)
    app.add_typer(monitoring_app, name="monitoring")
    app.command("retire")(retire)
    app.command("retire-override")(retire_override)
