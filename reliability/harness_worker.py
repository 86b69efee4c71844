"""The harness's worker process: the product worker with test-only knobs (never used in production).

    python -m reliability.harness_worker

It runs ``launch.worker.run_worker`` with the product's workflow and activities; the environment
may add, for the crash harness only:

- ``CRASH_HARNESS_ACTIVITY_DELAY`` (seconds): ``evaluate_checks`` and ``deploy`` take that much
  longer, as checks over large evidence and a real deployment system do, so a kill aimed at
  "checks running" or "deployment running" can observe the phase before it ends;
- ``CRASH_HARNESS_MUTATION``: a deliberately injected bug, to prove the harness catches it:
  ``duplicate_check_event`` (every check evaluation appends its first ``check.evaluated`` a second
  time, under another event id, as a retry that is not idempotent would) or ``drop_gate_opened``
  (``record`` drops ``gate.opened`` events).

The activities keep the product's timeouts: an attempt lost with a killed worker is retried after the 30 s
heartbeat timeout (``activities.heartbeat``). (A former knob, ``CRASH_HARNESS_ACTIVITY_TIMEOUT``, meant to shorten
their start-to-close timeout, never took effect: ``run_worker`` passes its own ``workflow_runner``, which replaced
the knob's pass-through one, so the sandbox re-imported the workflow with its 5-minute timeouts.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from temporalio import activity

from activities.contract import (
    AuditEventIn,
    DeployInput,
    DeployResult,
    EvaluateChecksInput,
    EvaluateChecksResult,
    RecordInput,
    RecordResult,
)
from activities.heartbeat import heartbeats
from activities.progression import ProgressionActivities
from engine.lifecycle import EventType

MUTATIONS = ("duplicate_check_event", "drop_gate_opened")
log = logging.getLogger("progression.harness_worker")


class HarnessActivities(ProgressionActivities):
    delay: float = 0.0
    mutation: str | None = None

    @activity.defn(name="evaluate_checks")
    @heartbeats  # the delay too is part of the attempt
    async def evaluate_checks(self, inp: EvaluateChecksInput) -> EvaluateChecksResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        result = await super().evaluate_checks(inp)
        if self.mutation == "duplicate_check_event" and result.results:
            first = result.results[0]
            dup = AuditEventIn(event_id=f"{inp.event_id_prefix}/{first.check_id}/again",
                               event_type=EventType.check_evaluated, occurred_at=inp.now, stage=inp.stage.name,
                               payload={"check_id": first.check_id, "passed": first.passed, "reason": first.reason})
            subject = inp.subject or inp.state  # a CheckSubject since the patch lean-payloads
            assert subject is not None
            async with self.sessionmaker() as session, session.begin():
                await self._append(session, subject, [dup])
        return result

    @activity.defn(name="deploy")
    @heartbeats
    async def deploy(self, inp: DeployInput) -> DeployResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().deploy(inp)

    @activity.defn(name="record")
    async def record(self, inp: RecordInput) -> RecordResult:
        if self.mutation == "drop_gate_opened":
            inp = inp.model_copy(update={"events": [e for e in inp.events if e.event_type != EventType.gate_opened]})
        return await super().record(inp)


def _configure() -> dict[str, Any]:
    """Apply the knobs; returns extra ``Worker`` arguments."""
    import launch.worker as product_worker

    HarnessActivities.delay = float(os.environ.get("CRASH_HARNESS_ACTIVITY_DELAY") or 0)
    mutation = os.environ.get("CRASH_HARNESS_MUTATION") or None
    if mutation is not None and mutation not in MUTATIONS:
        raise SystemExit(f"CRASH_HARNESS_MUTATION must be one of {', '.join(MUTATIONS)}")
    HarnessActivities.mutation = mutation
    if mutation:
        log.warning("INJECTED BUG for the crash harness: %s", mutation)
    # launch.worker builds ProgressionActivities by name: point it at the harness's subclass.
    product_worker.ProgressionActivities = HarnessActivities  # type: ignore[misc]
    return {}


async def _main() -> None:
    import launch.worker as product_worker

    extra = _configure()
    build = product_worker.build_worker

    def build_worker(client: Any, **kw: Any) -> Any:
        return build(client, **{**extra, **kw})

    product_worker.build_worker = build_worker  # type: ignore[assignment]
    task = asyncio.ensure_future(product_worker.run_worker())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("worker stopped")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main())
