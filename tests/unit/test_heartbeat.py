"""activities.heartbeat: an activity heartbeats while it awaits its I/O, and not at all as a local activity."""

from __future__ import annotations

import asyncio
import dataclasses

from temporalio import activity
from temporalio.testing import ActivityEnvironment

from activities.heartbeat import heartbeating, heartbeats


async def test_an_activity_heartbeats_while_it_awaits() -> None:
    env = ActivityEnvironment()
    beats: list[tuple[object, ...]] = []
    answered = asyncio.Event()

    def on_heartbeat(*details: object) -> None:
        beats.append(details)
        if len(beats) == 2:  # the I/O answers only after the activity heartbeated twice while awaiting it
            answered.set()

    env.on_heartbeat = on_heartbeat

    @activity.defn(name="slow_io")
    @heartbeats
    async def slow_io(n: int) -> int:
        await answered.wait()
        return n + 1

    assert await asyncio.wait_for(env.run(slow_io, 41), timeout=60) == 42
    assert len(beats) >= 2


async def test_the_heartbeat_stops_with_the_activity() -> None:
    env = ActivityEnvironment()
    beats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)

    @activity.defn(name="fails")
    @heartbeats
    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the deployment system said no")

    try:
        await env.run(fails)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the activity's error is raised as is")
    assert beats  # it heartbeat while it ran
    assert _beating_tasks() == 0  # and no task is left heartbeating after it failed


def _beating_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") == "_beat")


async def test_a_nested_heartbeat_starts_no_second_task() -> None:
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: None
    seen: list[int] = []

    @activity.defn(name="nested")
    @heartbeats
    async def nested() -> None:
        async with heartbeating():  # as the crash harness's override calling the wrapped base method
            await asyncio.sleep(0)
            seen.append(_beating_tasks())

    await env.run(nested)
    assert seen == [1]


async def test_a_local_activity_starts_no_heartbeat_task() -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, is_local=True)
    beats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)

    @activity.defn(name="local")
    @heartbeats
    async def local() -> str:
        async with heartbeating():
            for _ in range(3):
                await asyncio.sleep(0)
        return "done"

    assert await env.run(local) == "done"
    assert beats == []
