"""The worker's workflow modules loaded once per process (``Settings.worker_shared_workflow_modules``).

With no workflow cache every activation replays the history from the start, as an Update on an evicted,
parked progression does: a credit journey still walks to production.
"""

from __future__ import annotations

from temporalio.client import Client

from engine.settings import Settings
from launch.worker import build_worker, workflow_runner
from testing.temporal import tolerate_slow_activations
from testing.workflow import CREDIT, Env, example_input, start, unique_version, walk_to_production


def test_the_workflow_modules_are_shared_unless_the_setting_says_otherwise() -> None:
    assert Settings().worker_shared_workflow_modules is True
    assert Settings(worker_shared_workflow_modules=False).worker_shared_workflow_modules is False
    assert "workflows" not in workflow_runner(shared_workflow_modules=False).restrictions.passthrough_modules
    assert "workflows" in workflow_runner(shared_workflow_modules=True).restrictions.passthrough_modules


async def test_a_journey_replayed_at_every_step_with_shared_workflow_modules(temporal_client: Client,
                                                                           task_queue: str, env: Env) -> None:
    inp = await example_input(env, CREDIT, version=unique_version())
    async with tolerate_slow_activations(build_worker(
            temporal_client, task_queue=task_queue, activities=env.activities, max_cached_workflows=0,
            workflow_runner=workflow_runner(shared_workflow_modules=True))):
        handle = await start(temporal_client, inp, task_queue)
        final = await walk_to_production(handle)
    assert final.status == "in_production"
