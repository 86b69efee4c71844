"""Heartbeats: a running activity tells Temporal, every few seconds, that its worker is alive.

The workflows give every activity that waits on I/O a heartbeat timeout (``activities.contract.HEARTBEAT_TIMEOUT``,
30 s). A worker that dies mid-activity (SIGKILL, OOM, a lost host) stops heartbeating, so the server times the
attempt out after the heartbeat timeout and the retry goes to another worker, instead of after the attempt's
start-to-close timeout (5 min for ``evaluate_checks`` and ``deploy``).

:func:`heartbeats` wraps an activity so that a background task heartbeats for the life of the call: the activity
awaits its I/O (a database, the evidence store, a deployment webhook) as before while the task runs on the same
event loop. The SDK throttles what it sends to the server (at most every 0.8 x the heartbeat timeout), so beating
every :data:`HEARTBEAT_EVERY` seconds costs nothing when nobody listens. A local activity has no heartbeat
(its liveness is the workflow task's), so nothing is started there.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ParamSpec, TypeVar

from temporalio import activity

# Well under the workflows' heartbeat timeout (30 s): a beat or two may be late on a loaded machine.
HEARTBEAT_EVERY = 5.0

P = ParamSpec("P")
R = TypeVar("R")

# Set while a heartbeat task runs for this activity: a subclass's override (the crash harness's) that calls the
# wrapped base method then starts no second task.
_beating: contextvars.ContextVar[bool] = contextvars.ContextVar("progression_heartbeating", default=False)


async def _beat(every: float) -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def heartbeating(every: float = HEARTBEAT_EVERY) -> AsyncIterator[None]:
    """Heartbeat the current activity every ``every`` seconds until the block exits (not in a local activity)."""
    if _beating.get() or activity.info().is_local:
        yield
        return
    token = _beating.set(True)
    task = asyncio.create_task(_beat(every))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        _beating.reset(token)


def heartbeats(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorate an async activity (below ``@activity.defn``) so it heartbeats while it runs."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        async with heartbeating():
            return await fn(*args, **kwargs)

    return wrapper
