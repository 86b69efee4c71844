"""The one polling helper of the tests, the benchmarks and the crash harness.

Asynchronous work (a workflow opening a gate, an activity writing the audit trail, a process becoming
ready) is awaited by probing until the probe answers. The probe is retried quickly at first (10 ms, the
common case: the answer is almost there) and then every ``MAX_INTERVAL``. The ``timeout`` only bounds
a failure; nothing asserts how long anything took, so a loaded machine makes a run slower, never red.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

T = TypeVar("T")

FIRST_INTERVAL = 0.05
MAX_INTERVAL = 0.1
# Generous on purpose: 2 loaded cores shared with other test runs. A failure, not a timing, is asserted.
DEFAULT_TIMEOUT = 90.0


class NeverHappened(AssertionError):
    """What was awaited did not happen within the timeout (the message names it and the last answer)."""


def intervals(max_interval: float = MAX_INTERVAL) -> Callable[[], float]:
    """Successive sleeps: 10 ms, growing by half each time, up to ``max_interval``."""
    current = FIRST_INTERVAL / 1.5

    def following() -> float:
        nonlocal current
        current = min(current * 1.5, max_interval)
        return current

    return following


def _failure(what: str, timeout: float, last: object, describe: Callable[[object], str] | None) -> NeverHappened:
    shown = describe(last) if describe is not None else repr(last)
    return NeverHappened(f"{what}: not within {timeout:.0f}s; last answer: {shown[-3000:]}")


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, *, timeout: float = DEFAULT_TIMEOUT,
                     alive: Callable[[], object] | None = None, max_interval: float = MAX_INTERVAL,
                     describe: Callable[[object], str] | None = None) -> T:
    """Await ``probe()`` until its answer is truthy and return that answer.

    ``alive`` runs before every probe and raises when something it depends on died (a process exited),
    so a dead stack fails at once with its log instead of at the timeout. ``describe`` renders the last
    answer in the failure message.
    """
    deadline = time.monotonic() + timeout
    following = intervals(max_interval)
    while True:
        if alive is not None:
            alive()
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last, describe)
        await asyncio.sleep(following())


def eventually_sync(probe: Callable[[], T | None], what: str, *, timeout: float = DEFAULT_TIMEOUT,
                    alive: Callable[[], object] | None = None, max_interval: float = MAX_INTERVAL,
                    describe: Callable[[object], str] | None = None) -> T:
    """:func:`eventually` for synchronous probes (a CLI run, a log file, a process table)."""
    deadline = time.monotonic() + timeout
    following = intervals(max_interval)
    while True:
        if alive is not None:
            alive()
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last, describe)
        time.sleep(following())


async def within(call: Awaitable[T], what: str, *, timeout: float = DEFAULT_TIMEOUT) -> T:
    """Await one call that waits on a workflow (an Update, a query, a workflow's result, a time-skipping sleep) at
    most ``timeout``: the client waits on these without end, so a lost Update or a stuck clock would hang the test.

    ``asyncio.wait_for`` cancels the call at the timeout; the Temporal client reports a cancelled Update as
    ``WorkflowUpdateRPCTimeoutOrCancelledError``, so both end here as :class:`NeverHappened` naming ``what``.
    """
    try:
        return await asyncio.wait_for(call, timeout)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
        raise NeverHappened(f"{what}: not within {timeout:.0f}s ({type(err).__name__})") from err
