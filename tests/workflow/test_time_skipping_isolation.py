"""Order independence of the time-skipping tests: a test that leaves a model in production with an open monitoring
finding (a finding workflow outlives its progression by design) does not stop the next test's clock.

With one time-skipping server shared by the session, the second test here failed: its ``sleep`` over 300 days
timed out. ``time_skipping_env`` is now a server of each test's own (tests/conftest.py). The two tests run in file
order (``--dist loadfile`` keeps a file on one worker).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from testing.monitoring import credit_metrics, deliver
from testing.workflow import CREDIT, Env, example_input, start, unique_version, wait_state, walk_to_production, worker
from tests.workflow.test_workflow_timers import test_yearly_revalidation_flags_overdue_and_opens_gate as yearly


async def test_a_model_left_in_production_with_an_open_monitoring_finding(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    inp = await example_input(env, CREDIT, version=unique_version())
    async with worker(client, task_queue, env):
        handle = await start(client, inp, task_queue)
        live = await walk_to_production(handle)
        assert live.deployed_at is not None
        decayed = await deliver(client, handle.id, live.deployed_at.date() + timedelta(days=1), credit_metrics(auc=0.5))
        assert [b.rule_id for b in decayed.breaches] == ["auc-decay"]
        await wait_state(handle, lambda s: len(s.findings) == 1)
    # the worker is gone; the progression and its finding's workflow stay, with their timers


async def test_the_next_test_still_skips_years(time_skipping_env: WorkflowEnvironment, env: Env) -> None:
    await yearly(time_skipping_env, f"tq-{uuid.uuid4()}", env)
