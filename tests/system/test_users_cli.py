"""The administrators' ``progression users`` CLI as a real subprocess on the stack's SQLite database."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from engine.database import upgrade
from engine.db import make_engine, make_sessionmaker
from engine.identity import TOKEN_PREFIX, authenticate_token
from engine.settings import PROJECT_ROOT


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    exe = Path(sys.executable).parent / "progression"
    proc = await asyncio.create_subprocess_exec(str(exe), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env, cwd=PROJECT_ROOT)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def stack_database(tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI on the data directory ``tmp_path`` whose database ``make run`` made."""
    env = {**os.environ, "PROGRESSION_DATA_DIR": str(tmp_path), "PROGRESSION_ENV": "test"}
    env.pop("PROGRESSION_DATABASE_URL", None)
    await upgrade(f"sqlite+aiosqlite:///{tmp_path / 'progression.db'}")
    return env


async def test_users_cli_prints_a_working_token_last(tmp_path: Path) -> None:
    env = await stack_database(tmp_path)
    code, out, err = await run_cli("users", "create", "rita", "--role", "model_risk_officer", "--role", "auditor",
                                   "--team", "model-risk", env=env)
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    assert token.startswith(TOKEN_PREFIX)
    # The database the CLI wrote is the settings' default one; the token authenticates there.
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'progression.db'}")
    try:
        async with make_sessionmaker(engine)() as session:
            user = await authenticate_token(session, token)
            assert user is not None and user.username == "rita"
            assert set(user.roles) == {"model_risk_officer", "auditor"} and user.team == "model-risk"
    finally:
        await engine.dispose()
    code, out, err = await run_cli("users", "create", "x", "--role", "wizard", env=env)
    assert code == 2 and "unknown role 'wizard'" in err



async def test_users_cli_records_bootstrap_grants_and_refuses_an_admin_decider(tmp_path: Path) -> None:
    env = await stack_database(tmp_path)
    code, _, err = await run_cli("users", "create", "rita", "--role", "model_risk_officer", "--team", "model-risk",
                                 env=env)
    assert code == 0, err
    code, out, err = await run_cli("users", "list", env=env)
    assert code == 0, err
    assert "model_risk_officer" in out and "approved" in out and "proposed by bootstrap, approved by bootstrap" in out
    code, _, err = await run_cli("users", "create", "boss", "--role", "admin", "--role", "model_validator",
                                 "--team", "platform", env=env)
    assert code == 2 and "admin cannot also hold a deciding role" in err
    code, _, err = await run_cli("users", "create", "nemo", "--role", "model_validator", env=env)
    assert code == 2 and "needs a team" in err
