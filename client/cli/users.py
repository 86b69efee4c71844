"""``progression users``: users and API tokens, straight in the database (for administrators).

It talks to the database, not the API, so an administrator can create the first user before anyone holds a token.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from sqlalchemy import select

from engine import audit
from engine.database import require_database, upgrade
from engine.db import User, make_engine, make_sessionmaker, utcnow
from engine.errors import ProgressionError
from engine.identity import create_user, role_grants
from engine.lifecycle import EventType
from engine.settings import get_settings

users_app = typer.Typer(
    rich_markup_mode=None, help="Users and API tokens (direct database access; for administrators).",
                        no_args_is_help=True)


async def _create_user(username: str, roles: list[str], team: str | None, display_name: str,
                       email: str | None = None) -> tuple[str, str]:
    settings = get_settings()
    url = settings.resolved_database_url
    # Never create one: a user in a database no stack reads gets a token every request answers 401 to.
    await require_database(url)
    await upgrade(url)
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            user, token = await create_user(session, username=username, roles=roles, team=team,
                                            display_name=display_name, email=email)
            await audit.append_event(
                session, event_id=f"user-{user.id}", event_type=EventType.user_created.value,
                occurred_at=utcnow(), actor_id=None,
                payload={"user_id": user.id, "username": user.username, "roles": user.roles, "team": user.team,
                         "by": "cli"}, chain=settings.audit_chain)
            await session.commit()
            return user.id, token
    finally:
        await engine.dispose()


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="username (letters, digits, . _ @ -)")],
    role: Annotated[list[str], typer.Option("--role", "-r", help="a role; repeat for several")],
    team: Annotated[str | None, typer.Option("--team", "-t", help="the user's team (slug)")] = None,
    display_name: Annotated[str, typer.Option("--display-name", help="full name")] = "",
    email: Annotated[str | None, typer.Option("--email", help="where their enrollment codes are mailed")] = None,
) -> None:
    """Create a user (the operator's bootstrap); prints the new API token as the LAST line (shown only once).

    Through the API, people holding deciding roles never get a token from an admin: an enrollment code is mailed
    to their --email address and they redeem it themselves (POST /api/v1/enroll)."""

    try:
        user_id, token = asyncio.run(_create_user(name, role, team, display_name, email))
    except ProgressionError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"created user {name} ({user_id}) roles={','.join(role)} team={team or '-'}")
    typer.echo("API token (shown once; store it now):")
    typer.echo(token)


async def _list_users() -> list[tuple[str, str, str, list[tuple[str, str, str, str]]]]:
    settings = get_settings()
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade(url)  # a fresh data directory lists no users instead of failing
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            users = list((await session.execute(select(User).order_by(User.username))).scalars())
            grants = await role_grants(session)
            return [(u.username, u.team or "-", ",".join(u.roles or []) or "-",
                     [(g.role, g.status, g.proposed_by, g.approved_by or "-") for g in grants if g.user_id == u.id])
                    for u in users]
    finally:
        await engine.dispose()


@users_app.command("list")
def users_list() -> None:
    """Every user with their roles and, per role, who proposed and who approved the grant."""
    for username, team, roles, grants in asyncio.run(_list_users()):
        typer.echo(f"{username:20s} team={team:20s} roles={roles}")
        for role, status, proposed, approved in grants:
            typer.echo(f"    {role:20s} {status:9s} proposed by {proposed}, approved by {approved}")
