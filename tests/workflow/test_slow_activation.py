"""A workflow activation slower than the SDK's 2 s deadlock deadline (a starved CPU on a loaded machine) must not
leave the progression stuck: the SDK interrupts such an activation as a "potential deadlock", and the interrupted run
can then never be evicted, so its Updates, its result and a time-skipping sleep hang for good (issue 14: the yearly
revalidation test hung under load). Tests raise the deadline (testing.temporal.tolerate_slow_activations)."""

from __future__ import annotations

import time
from typing import Any

from temporalio import workflow
from temporalio.worker import HandleUpdateInput, Interceptor, WorkflowInboundInterceptor, WorkflowInterceptorClassInput

from launch.worker import build_worker
from testing.temporal import tolerate_slow_activations
from testing.workflow import CREDIT, VALIDATOR, Env, at_gate, decide, example_input, start, unique_version, wait_state
from workflows.contract import UPDATE_DECIDE

SLOW_S = 3.0  # longer than the SDK's 2 s


class SlowDecisionOnce(Interceptor):
    """The first decision's activation takes ``SLOW_S`` of wall time, as it may on 2 cores shared by 30 processes."""

    def __init__(self) -> None:
        self.slowed = False

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput
                                   ) -> type[WorkflowInboundInterceptor] | None:
        outer = self

        class Inbound(WorkflowInboundInterceptor):
            async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
                if input.update == UPDATE_DECIDE and not outer.slowed and not workflow.unsafe.is_replaying():
                    outer.slowed = True
                    time.sleep(SLOW_S)  # noqa: ASYNC251 - blocks the activation's thread, as a starved CPU does
                return await super().handle_update_handler(input)

        return Inbound


async def test_a_slow_activation_does_not_strand_the_progression(temporal_env: Any, task_queue: str,
                                                                 env: Env) -> None:
    client = temporal_env.client
    slow = SlowDecisionOnce()
    inp = await example_input(env, CREDIT, version=unique_version())
    async with tolerate_slow_activations(build_worker(client, task_queue=task_queue, activities=env.activities,
                                                      interceptors=[slow])):
        handle = await start(client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        # Without the raised deadline this Update never completes (decide's bound fails it as NeverHappened).
        result = await decide(handle, VALIDATOR, "validation", "approve", "independent validation complete")
        assert result.accepted and slow.slowed
        await wait_state(handle, at_gate("risk_review"))
