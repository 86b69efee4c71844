"""The Temporal worker: the progression workflow and its activities.

``python -m launch.worker`` runs one with settings from the environment. Policies are loaded
and validated once at start: a bad policy refuses the worker (file, field, line), instead of
failing a progression at 2 a.m.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.findings import FindingActivities
from activities.monitoring import monitoring_activities
from activities.notify import build_notifier
from activities.progression import ProgressionActivities
from activities.promotion import build_promotion_target
from engine.database import require_database
from engine.db import make_engine, make_sessionmaker
from engine.errors import NoDatabase
from engine.evidence import EvidenceStore
from engine.loading import PolicyRegistry
from engine.settings import Settings, get_settings
from workflows.contract import connect
from workflows.finding import ExceptionWorkflow, FindingWorkflow
from workflows.progression import ProgressionWorkflow

log = logging.getLogger("progression.worker")


def workflow_runner(*, shared_workflow_modules: bool) -> SandboxedWorkflowRunner:
    """Temporal's sandbox; with ``shared_workflow_modules`` the ``workflows`` package is loaded once per process
    (``Settings.worker_shared_workflow_modules``: why, and the price)."""
    restrictions = SandboxRestrictions.default
    if shared_workflow_modules:
        restrictions = restrictions.with_passthrough_modules("workflows")
    return SandboxedWorkflowRunner(restrictions=restrictions)


def build_worker(client: Client, *, task_queue: str, activities: ProgressionActivities, **kw: Any) -> Worker:
    """A worker serving ``ProgressionWorkflow`` and every activity of ``activities`` on ``task_queue``."""
    # Running activities get time to finish on shutdown (SIGTERM on a rolling deploy) instead of being retried.
    kw.setdefault("graceful_shutdown_timeout", timedelta(seconds=30))
    findings = FindingActivities.beside(activities, client)
    return Worker(client, task_queue=task_queue, workflows=[ProgressionWorkflow, FindingWorkflow, ExceptionWorkflow],
                  activities=activities.all() + findings.all() + monitoring_activities(), **kw)


def build_activities(settings: Settings) -> tuple[ProgressionActivities, Any]:
    """Activities wired from settings; also returns the database engine so the caller can dispose it."""
    engine = make_engine(settings.resolved_database_url, sqlite_single_connection=True)
    activities = ProgressionActivities(
        make_sessionmaker(engine),
        EvidenceStore(settings.evidence_dir),
        build_promotion_target(settings),
        build_notifier(settings),
        audit_chain=settings.audit_chain,
    )
    return activities, engine


async def run_worker(settings: Settings | None = None) -> None:
    """Validate policies, connect to Temporal, serve until cancelled."""
    settings = settings or get_settings()
    registry = PolicyRegistry.from_dir(settings.policies_dir)  # raises InvalidPolicy naming file and line
    log.info("policies loaded: %s", ", ".join(f"{p.intent} {p.hash[:19]}" for p in registry.all()))
    address = settings.temporal_address or f"127.0.0.1:{settings.temporal_port}"
    client = await connect(address, settings.temporal_namespace)
    activities, engine = build_activities(settings)
    try:
        worker = build_worker(client, task_queue=settings.task_queue, activities=activities,
                              max_cached_workflows=settings.worker_max_cached_workflows,
                              workflow_runner=workflow_runner(
                                  shared_workflow_modules=settings.worker_shared_workflow_modules))
        log.info("worker polling task queue %r on %s", settings.task_queue, address)
        await worker.run()
    finally:
        await engine.dispose()


def refuse_without_database(settings: Settings) -> None:
    """A worker needs the migrated database; with SQLite it would otherwise create an empty file."""
    try:
        asyncio.run(require_database(settings.resolved_database_url, server=False))
    except NoDatabase as exc:
        raise SystemExit(f"progression: refusing to start: {exc.message}") from None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    refuse_without_database(get_settings())
    try:
        asyncio.run(run_worker())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
