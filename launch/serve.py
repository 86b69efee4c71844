"""Entry point of the production image: one process role per container.

    python -m launch.serve api        # the HTTP API (uvicorn on api.app:create_app)
    python -m launch.serve worker     # a Temporal worker: workflows and activities
    python -m launch.serve migrate    # Alembic migrations to head, then exit
    python -m launch.serve healthcheck  # probe this container's API /healthz (Docker HEALTHCHECK)

Unlike ``make run`` (launch.run), nothing embedded is started here: the Temporal cluster and the
database are given by ``PROGRESSION_*`` settings, and production settings refuse defaults.
Every role reads the same settings, so a misconfigured deployment fails at start, in every
container, with the same message.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from pydantic import ValidationError

from engine.settings import Settings

log = logging.getLogger("progression.serve")
ROLES = ("api", "worker", "migrate", "healthcheck")


def load_settings() -> Settings:
    """Settings from the environment; an unsafe production configuration exits with its reasons."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(str(err.get("msg", err)) for err in exc.errors())
        raise SystemExit(f"progression: refusing to start: {problems}") from None


# Each role imports what it needs when it runs, not at module load: the image's HEALTHCHECK runs this module
# every 30 s and must stay light (no uvicorn, SQLAlchemy or Temporal SDK for a probe).


def run_api(settings: Settings) -> None:
    import uvicorn  # local: the role's own dependency (see above)

    # The factory, not an app built here: uvicorn owns the event loop and the app's lifespan.
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        proxy_headers=True,
        # Behind the bank's reverse proxy the client address comes from X-Forwarded-For;
        # uvicorn trusts it only from FORWARDED_ALLOW_IPS (default 127.0.0.1).
        server_header=False,
        log_level="info",
    )


async def _worker_main(settings: Settings) -> None:
    from launch.worker import run_worker  # local: the role's own dependency (see above)

    task = asyncio.ensure_future(run_worker(settings))
    loop = asyncio.get_running_loop()
    # SIGTERM (docker stop, scale down) cancels the worker so it stops polling and lets running
    # activity attempts finish within the stop grace period; Temporal retries anything cut short.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("worker stopped")


def run_worker(settings: Settings) -> None:
    from launch.worker import refuse_without_database  # local: the role's own dependency (see above)

    refuse_without_database(settings)
    asyncio.run(_worker_main(settings))


def run_migrate(settings: Settings) -> None:
    from engine.database import upgrade_sync  # local: the role's own dependency (see above)
    from launch.seed import seed_feature_catalog  # local: likewise

    upgrade_sync(settings.resolved_database_url)
    log.info("database migrated to head")
    inserted = asyncio.run(seed_feature_catalog(settings))
    log.info("feature catalog: %d features added from %s (existing entries are never overwritten)",
             inserted, settings.features_file)


def healthcheck(settings: Settings, timeout: float = 3.0) -> int:
    """0 when this container's API answers /healthz with 200 (the image's Docker HEALTHCHECK)."""
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    url = f"http://{host}:{settings.api_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed local URL
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck {url}: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.serve", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=ROLES, help="which process this container runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    if args.role == "api":
        run_api(settings)
    elif args.role == "worker":
        run_worker(settings)
    elif args.role == "migrate":
        run_migrate(settings)
    else:
        return healthcheck(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
