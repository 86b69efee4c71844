"""The ``progression`` command: one Typer app, its commands grouped by domain in this package.

``users`` (users.py) talks to the database directly; every other command talks to the HTTP API through
:mod:`client.sdk` (progressions.py, decisions.py, catalog.py, audit.py; shared plumbing in common.py).
"""

from __future__ import annotations

import typer

from client.cli import audit, catalog, common, decisions, features, findings, guidance, monitoring, progressions
from client.cli.users import users_app

app = typer.Typer(rich_markup_mode=None, name="progression", help="Governance of the model development lifecycle.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(users_app, name="users")
app.command("login")(common.login)
app.command("init")(guidance.init)
app.command("route")(progressions.route)
app.command("start")(progressions.start)
app.command("status")(progressions.status)
app.command("list")(progressions.list_progressions)
evidence_app = typer.Typer(rich_markup_mode=None, help="Evidence of a running progression.", no_args_is_help=True)
evidence_app.command("add")(progressions.evidence_add)
app.add_typer(evidence_app, name="evidence")
app.command("withdraw")(progressions.withdraw)
app.command("inbox")(decisions.inbox)
app.command("todo")(guidance.todo)
app.command("decide")(decisions.decide)
app.command("verify")(audit.verify)
app.command("models")(catalog.models)
app.command("policies")(catalog.policies)
app.add_typer(audit.audit_app, name="audit")
findings.register(app)
features.register(app)
monitoring.register(app)
