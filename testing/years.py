"""Years of life in production on the time-skipping server (issue 21): a model monitored monthly and revalidated
yearly for a decade, and the size of every run of its continue-as-new chain.

``live_years`` drives one credit progression to production, then delivers a result for every month (healthy, or the
breach the plan names), has each revalidation gate decided by the right person as soon as it opens (after the wrong
person was refused), and returns what it sent. ``run_chain`` follows the chain of runs from the first one and
measures each run's history; ``by_year`` splits the events by simulated year. Used by tests/workflow/test_years.py
and bench/years.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from engine.lifecycle import ProgressionState
from testing.monitoring import credit_metrics, deliver
from testing.workflow import (
    CREDIT,
    RISK1,
    VALIDATOR,
    Env,
    decide,
    example_input,
    start,
    state,
    unique_version,
    wait_state,
    walk_to_production,
    worker,
)

YEAR = timedelta(days=365)
MONTH = YEAR / 12
# Temporal's hard limits per run and the thresholds at which the server warns (docs.temporal.io, "limits").
LIMIT_EVENTS, LIMIT_BYTES = 51_200, 50 * 1024 * 1024
WARN_EVENTS, WARN_BYTES = 10_240, 10 * 1024 * 1024

# Month (1-based, since the deployment) -> the results that month (credit policy rules): a few breaches in ten years.
BREACHES: dict[int, dict[str, Any]] = {
    20: credit_metrics(auc=0.61),  # auc-decay: a high finding
    45: credit_metrics(volume=0),  # no-volume: a medium finding
    80: credit_metrics(psi=0.41),  # psi-drift: the revalidation opens now
    100: credit_metrics(fairness=0.71, auc=0.6),  # fairness-breach opens the revalidation, auc-decay a finding
}


@dataclass
class Sent:
    """What the test sent and decided: the counts every record must match."""

    progression_id: str
    first_run_id: str
    deployed_at: datetime
    results: int = 0
    breaches: list[str] = field(default_factory=list)  # rule ids, in order
    findings: list[str] = field(default_factory=list)  # finding ids raised by breaches
    triggered: int = 0  # revalidations a breach opened
    revalidations: list[datetime] = field(default_factory=list)  # when each revalidation gate was approved
    refused: int = 0  # wrong-person decisions refused
    final: ProgressionState | None = None


@dataclass
class RunStats:
    run_id: str
    events: int
    bytes: int
    continued_as_new: bool
    history: list[HistoryEvent]


async def _decide_revalidation(handle: WorkflowHandle[Any, Any], sent: Sent) -> None:
    """The open revalidation gate: the risk officer is refused (a validator gate), the validator approves."""
    try:
        await decide(handle, RISK1, "revalidation", "approve", "not mine to decide")
    except WorkflowUpdateFailedError as err:
        assert isinstance(err.cause, ApplicationError) and err.cause.type == "not_a_gate_role", err.cause
        sent.refused += 1
    else:
        raise AssertionError("a risk officer decided a validator's revalidation gate")
    done = len(sent.revalidations)
    await decide(handle, VALIDATOR, "revalidation", "approve", f"revalidation {done + 1}: performance holds")
    after = await wait_state(handle, lambda s: s.revalidations == done + 1 and s.current_stage is None)
    sent.revalidations.append(after.updated_at)


def _gate_open(s: ProgressionState) -> bool:
    return s.current_stage == "revalidation" and s.status == "in_production" and bool(
        (g := s.stage("revalidation")) and g.status == "awaiting_approval")


async def _until(ts: WorkflowEnvironment, at: datetime) -> None:
    now = await ts.get_current_time()
    if at > now:
        await ts.sleep(at - now)


async def live_years(ts: WorkflowEnvironment, task_queue: str, env: Env, *, years: int = 10,
                     breaches: dict[int, dict[str, Any]] | None = None,
                     progress: Callable[[int, ProgressionState], None] | None = None) -> Sent:
    """Deploy a credit model and live ``years`` years with it: 12 monthly results a year, every revalidation gate
    decided by a validator the moment it is noticed (the calendar's due date is slept to exactly)."""
    plan = BREACHES if breaches is None else breaches
    client = ts.client
    inp = await example_input(env, CREDIT, version=unique_version())
    async with worker(client, task_queue, env):
        handle = await start(client, inp, task_queue)
        live = await walk_to_production(handle)
        assert live.deployed_at is not None and handle.first_execution_run_id is not None
        sent = Sent(progression_id=inp.spec.progression_id, first_run_id=handle.first_execution_run_id,
                    deployed_at=live.deployed_at)
        for month in range(1, 12 * years + 1):
            # Mid-month: the test server ends every workflow chain ten years after its start (an execution timeout
            # of ten years it gives, capped there, even to one started with a longer one); a real server has none.
            at = live.deployed_at + (month - 0.5) * MONTH
            # Revalidations that fall due before this month's results: wake exactly at the due date and decide.
            while True:
                now_state = await state(handle)
                due = now_state.revalidation_due_at
                if _gate_open(now_state):
                    await _decide_revalidation(handle, sent)
                    continue
                if due is None or due > at:
                    break
                await _until(ts, due + timedelta(minutes=1))
                await wait_state(handle, _gate_open)
            await _until(ts, at)
            outcome = await deliver(ts.client, handle.id, at.date(), plan.get(month, credit_metrics()))
            sent.results += 1
            for breach in outcome.breaches:
                sent.breaches.append(breach.rule_id)
            sent.findings += [a.split("raised finding ")[1].split(" ")[0] for a in outcome.actions
                              if "raised finding " in a]
            sent.triggered += sum("opens the revalidation gate now" in a for a in outcome.actions)
            if progress is not None:
                progress(month, outcome.state or await state(handle))  # left out since lean-update-results
        # The last year's revalidation, if its gate is open now.
        if _gate_open(await state(handle)):
            await _decide_revalidation(handle, sent)
        sent.final = await state(handle)
    return sent


async def run_chain(client: Client, workflow_id: str, first_run_id: str) -> list[RunStats]:
    """Every run of the workflow's chain, from the first, following each run's continued-as-new event."""
    runs: list[RunStats] = []
    run_id: str | None = first_run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events = list(history.events)
        last = events[-1]
        nxt = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id \
            if last.HasField("workflow_execution_continued_as_new_event_attributes") else None
        runs.append(RunStats(run_id=run_id, events=len(events), bytes=History(events=events).ByteSize(),
                             continued_as_new=nxt is not None, history=events))
        run_id = nxt
    return runs


def by_year(runs: list[RunStats], deployed_at: datetime) -> dict[int, tuple[int, int]]:
    """Events and bytes per simulated year (0: the journey to production and the first year)."""
    out: dict[int, tuple[int, int]] = {}
    for run in runs:
        for event in run.history:
            at = event.event_time.ToDatetime().replace(tzinfo=deployed_at.tzinfo)
            year = max(int((at - deployed_at) / YEAR), 0) + 1
            n, b = out.get(year, (0, 0))
            out[year] = (n + 1, b + event.ByteSize())
    return out


def table(runs: list[RunStats], deployed_at: datetime) -> str:
    """The figures as text: per run and per year."""
    lines = ["run  events     bytes  continued-as-new"]
    lines += [f"{i + 1:>3} {r.events:>7} {r.bytes:>9}  {'yes' if r.continued_as_new else 'no (current)'}"
              for i, r in enumerate(runs)]
    lines.append(f"max {max(r.events for r in runs):>7} {max(r.bytes for r in runs):>9}  (limits {LIMIT_EVENTS} "
                 f"events / {LIMIT_BYTES} bytes per run; warn at {WARN_EVENTS} / {WARN_BYTES})")
    lines.append("year  events     bytes")
    lines += [f"{y:>4} {n:>7} {b:>9}" for y, (n, b) in sorted(by_year(runs, deployed_at).items())]
    return "\n".join(lines)

