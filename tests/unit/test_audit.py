"""Audit chain on SQLite and PostgreSQL: append, idempotency, verification, tampering, concurrency, paging."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from engine.audit import (
    GENESIS_HASH,
    _dense_window,
    _filters,
    append_event,
    append_events,
    canonical_event,
    chain_hash,
    event_to_dict,
    iter_events,
    list_events,
    verify_chain,
)
from engine.db import AuditChainHead, AuditEvent
from engine.lifecycle import EventType

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
events_t = AuditEvent.__table__


def ev(i: int, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": f"ev-{i}",
        "event_type": EventType.stage_entered if i % 2 else EventType.check_evaluated,
        "occurred_at": T0 + timedelta(minutes=i),
        "actor_id": f"user-{i % 3}",
        "progression_id": f"prog-{i % 2}",
        "model_id": "credit-scorecard",
        "stage": "validation",
        "payload": {"i": i, "note": "naïve ✓", "nested": {"b": [1, 2.5, None], "a": True}},
    }
    base.update(kw)
    return base


async def seed(sm: async_sessionmaker[AsyncSession], n: int) -> None:
    async with sm() as s, s.begin():
        await append_events(s, [ev(i) for i in range(1, n + 1)])


async def verify(sm: async_sessionmaker[AsyncSession], **kw: int):  # type: ignore[no-untyped-def]
    async with sm() as s:
        return await verify_chain(s, **kw)


async def tamper(sm: async_sessionmaker[AsyncSession], stmt: object) -> None:
    async with sm() as s, s.begin():
        await s.execute(stmt)  # type: ignore[call-overload]


async def test_append_links_to_genesis_and_retry_is_idempotent(sm: async_sessionmaker[AsyncSession]) -> None:
    async with sm() as s, s.begin():
        first = await append_event(s, **ev(1))  # type: ignore[arg-type]
    assert first.seq == 1 and first.prev_hash == GENESIS_HASH
    expected = chain_hash(GENESIS_HASH, canonical_event(**{k: v for k, v in ev(1).items()}))  # type: ignore[arg-type]
    assert first.hash == expected

    # A Temporal retry of the same activity: same event_id, even with different content.
    async with sm() as s, s.begin():
        again = await append_event(s, **ev(1, payload={"different": True}))  # type: ignore[arg-type]
    assert again.seq == 1 and again.hash == first.hash and again.payload == first.payload
    async with sm() as s:
        assert await s.scalar(select(func.count()).select_from(AuditEvent)) == 1
        head = await s.get(AuditChainHead, 1)
        assert head is not None and head.last_seq == 1 and head.last_hash == first.hash


async def test_append_rolls_back_with_callers_transaction(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 2)
    with pytest.raises(RuntimeError):
        async with sm() as s, s.begin():
            await append_event(s, **ev(3))  # type: ignore[arg-type]
            raise RuntimeError("the decision write failed")
    async with sm() as s, s.begin():
        row = await append_event(s, **ev(4))  # type: ignore[arg-type]
    assert row.seq == 3  # no gap: the rolled-back append released its seq with the head update
    assert (await verify(sm)).ok


async def test_batch_dedupes_within_and_across_batches(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 2)
    async with sm() as s, s.begin():
        rows = await append_events(s, [ev(2), ev(3), ev(3), ev(4)])
    assert [r.seq for r in rows] == [2, 3, 3, 4]
    result = await verify(sm)
    assert result.ok and result.events_checked == 4 and result.head_seq == 4


async def test_verify_ok_across_batches(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 23)
    result = await verify(sm, batch_size=5)
    assert result.ok, result.problem
    assert result.events_checked == 23 and result.head_seq == 23 and result.first_bad_seq is None
    async with sm() as s:
        last = await s.scalar(select(AuditEvent.hash).where(AuditEvent.seq == 23))
    assert result.head_hash == last


async def test_empty_chain_verifies(sm: async_sessionmaker[AsyncSession]) -> None:
    result = await verify(sm)
    assert result.ok and result.events_checked == 0 and result.head_hash == GENESIS_HASH


async def test_same_instant_in_any_timezone_hashes_the_same() -> None:
    fields = ev(1)
    utc = canonical_event(**fields)  # type: ignore[arg-type]
    fields["occurred_at"] = T0.astimezone(timezone(timedelta(hours=-5))) + timedelta(minutes=1)
    assert canonical_event(**fields) == utc  # type: ignore[arg-type]


async def test_non_utc_occurred_at_round_trips(sm: async_sessionmaker[AsyncSession]) -> None:
    local = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    async with sm() as s, s.begin():
        await append_event(s, **ev(1, occurred_at=local))  # type: ignore[arg-type]
    async with sm() as s:
        (row,) = await list_events(s)
        assert row.occurred_at == local and row.occurred_at.tzinfo is not None
        assert event_to_dict(row)["occurred_at"] == "2026-03-01T10:00:00.123456Z"
    assert (await verify(sm)).ok


# ------------------------------------------------------------------ tampering


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"i": 5, "note": "edited"}},
        {"actor_id": "mallory"},
        {"event_type": "decision.received"},
        {"occurred_at": T0 + timedelta(days=1)},
        {"stage": None},
    ],
    ids=["payload", "actor", "type", "occurred_at", "stage"],
)
async def test_edited_row_is_named(sm: async_sessionmaker[AsyncSession], change: dict[str, object]) -> None:
    await seed(sm, 10)
    await tamper(sm, update(events_t).where(events_t.c.seq == 5).values(**change))
    result = await verify(sm, batch_size=3)
    assert not result.ok
    assert result.first_bad_seq == 5 and result.first_bad_event_id == "ev-5"
    assert result.problem is not None and result.problem.startswith("edited")
    assert result.events_checked == 4


async def test_edit_with_recomputed_hash_breaks_the_next_link(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 10)
    async with sm() as s:
        prev = await s.scalar(select(AuditEvent.prev_hash).where(AuditEvent.seq == 5))
    forged = ev(5, payload={"i": 5, "approved": "yes"})
    new_hash = chain_hash(prev, canonical_event(**forged))  # type: ignore[arg-type]
    await tamper(sm, update(events_t).where(events_t.c.seq == 5).values(payload=forged["payload"], hash=new_hash))
    result = await verify(sm)
    assert not result.ok and result.first_bad_seq == 6 and result.first_bad_event_id == "ev-6"
    assert result.problem is not None and result.problem.startswith("broken_link")


async def test_deleted_middle_row_is_named(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 10)
    await tamper(sm, delete(events_t).where(events_t.c.seq == 4))
    result = await verify(sm, batch_size=3)
    assert not result.ok and result.first_bad_seq == 4 and result.first_bad_event_id is None
    assert result.problem is not None and result.problem.startswith("missing") and "ev-5" in result.problem


async def test_deleted_middle_row_with_renumbering_breaks_the_link(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 10)
    await tamper(sm, delete(events_t).where(events_t.c.seq == 4))
    for seq in range(5, 11):  # close the gap so no seq is missing
        await tamper(sm, update(events_t).where(events_t.c.seq == seq).values(seq=seq - 1))
    await tamper(sm, update(AuditChainHead.__table__).values(last_seq=9))
    result = await verify(sm)
    assert not result.ok and result.first_bad_seq == 4 and result.first_bad_event_id == "ev-5"
    assert result.problem is not None and result.problem.startswith("broken_link")


async def test_deleted_last_row_is_named(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 10)
    await tamper(sm, delete(events_t).where(events_t.c.seq == 10))
    result = await verify(sm, batch_size=4)
    assert not result.ok and result.first_bad_seq == 10 and result.events_checked == 9
    assert result.head_seq == 10
    assert result.problem is not None and result.problem.startswith("missing")


async def test_deleted_last_row_with_head_rewound_is_named(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 10)
    await tamper(sm, delete(events_t).where(events_t.c.seq == 10))
    await tamper(sm, update(AuditChainHead.__table__).values(last_seq=9))
    result = await verify(sm)
    assert not result.ok and result.first_bad_seq == 9
    assert result.problem is not None and result.problem.startswith("head_mismatch")


async def test_inserted_row_in_the_middle_is_named(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 10)
    # Make room after seq 5 (two steps: a unique key cannot shift in place on every backend).
    await tamper(sm, update(events_t).where(events_t.c.seq > 5).values(seq=events_t.c.seq + 1000))
    await tamper(sm, update(events_t).where(events_t.c.seq > 1000).values(seq=events_t.c.seq - 999))
    async with sm() as s:
        prev = await s.scalar(select(AuditEvent.hash).where(AuditEvent.seq == 5))
    forged = ev(99, payload={"approved_by": "nobody"})
    forged_hash = chain_hash(prev, canonical_event(**forged))  # type: ignore[arg-type]
    async with sm() as s, s.begin():
        s.add(AuditEvent(seq=6, prev_hash=prev, hash=forged_hash, **forged))
        await s.execute(update(AuditChainHead.__table__).values(last_seq=11))
    result = await verify(sm)
    assert not result.ok and result.first_bad_seq == 7 and result.first_bad_event_id == "ev-6"
    assert result.problem is not None and result.problem.startswith("broken_link")


async def test_inserted_row_beyond_the_head_is_named(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 10)
    async with sm() as s:
        prev = await s.scalar(select(AuditEvent.hash).where(AuditEvent.seq == 10))
    forged = ev(11)
    async with sm() as s, s.begin():
        s.add(AuditEvent(seq=11, prev_hash=prev, hash=chain_hash(prev, canonical_event(**forged)),  # type: ignore[arg-type]
                         **forged))
    result = await verify(sm)
    assert not result.ok and result.first_bad_seq == 11 and result.first_bad_event_id == "ev-11"
    assert result.problem is not None and result.problem.startswith("beyond_head")


async def test_reordered_rows_are_named(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 10)
    await tamper(sm, update(events_t).where(events_t.c.seq == 3).values(seq=-3))
    await tamper(sm, update(events_t).where(events_t.c.seq == 7).values(seq=3))
    await tamper(sm, update(events_t).where(events_t.c.seq == -3).values(seq=7))
    result = await verify(sm, batch_size=2)
    assert not result.ok and result.first_bad_seq == 3 and result.first_bad_event_id == "ev-7"
    assert result.problem is not None and result.problem.startswith("broken_link")


async def test_unchained_events_are_reported(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 2)
    async with sm() as s, s.begin():
        row = await append_event(s, chain=False, **ev(3))  # type: ignore[arg-type]
    assert row.seq == 3 and row.hash == "" and row.prev_hash == ""
    result = await verify(sm)
    assert not result.ok and result.first_bad_seq == 3
    assert result.problem is not None and result.problem.startswith("unchained")


# ------------------------------------------------------------------ concurrency


async def test_concurrent_appends_stay_linear(sm: async_sessionmaker[AsyncSession]) -> None:
    tasks, per_task = 8, 50

    async def writer(t: int) -> None:
        for i in range(per_task):
            async with sm() as s, s.begin():
                # Read first, as a real caller does, then append in the same transaction.
                await s.execute(select(func.count()).select_from(AuditEvent))
                await append_event(s, **ev(t * 1000 + i, event_id=f"t{t}-{i}"))  # type: ignore[arg-type]
                if i % 10 == 0:  # a retried activity racing the original
                    await append_event(s, **ev(0, event_id=f"shared-{i}"))  # type: ignore[arg-type]

    await asyncio.gather(*(writer(t) for t in range(tasks)))
    async with sm() as s:
        seqs = list(await s.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
    expected = tasks * per_task + per_task // 10
    assert seqs == list(range(1, expected + 1))
    result = await verify(sm, batch_size=64)
    assert result.ok, result.problem
    assert result.events_checked == expected and result.head_seq == expected


async def test_verify_while_appending_reports_no_false_alarm(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 20)
    stop = asyncio.Event()

    async def writer() -> None:
        i = 100
        while not stop.is_set():
            async with sm() as s, s.begin():
                await append_event(s, **ev(i))  # type: ignore[arg-type]
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    try:
        results = [await verify(sm, batch_size=7) for _ in range(5)]
    finally:
        stop.set()
        await task
    assert all(r.ok for r in results), [r.problem for r in results]
    assert (await verify(sm)).ok


# ------------------------------------------------------------------ queries


async def test_list_events_filters(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 12)
    async with sm() as s:
        by_prog = await list_events(s, progression_id="prog-1")
        assert [e.event_id for e in by_prog] == [f"ev-{i}" for i in range(1, 13, 2)]
        by_actor = await list_events(s, actor_id="user-0")
        assert [e.seq for e in by_actor] == [3, 6, 9, 12]
        by_type = await list_events(s, event_type=EventType.check_evaluated)
        assert {e.event_type for e in by_type} == {"check.evaluated"} and len(by_type) == 6
        both = await list_events(s, event_type=["check.evaluated", "stage.entered"])
        assert len(both) == 12
        window = await list_events(s, since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=6))
        assert [e.seq for e in window] == [3, 4, 5]
        # A non-UTC bound names the same instant.
        est = timezone(timedelta(hours=-5))
        assert [e.seq for e in await list_events(s, since=(T0 + timedelta(minutes=11)).astimezone(est))] == [11, 12]
        combo = await list_events(s, model_id="credit-scorecard", progression_id="prog-0", actor_id="user-0")
        assert [e.seq for e in combo] == [6, 12]
        assert await list_events(s, model_id="other") == []
        assert len(await list_events(s, limit=5)) == 5
        assert event_to_dict(by_prog[0])["payload"]["nested"] == {"b": [1, 2.5, None], "a": True}


async def test_time_windows_page_exactly_whatever_plan_the_query_takes(
        sm: async_sessionmaker[AsyncSession]) -> None:
    # Events recorded out of time order (a retried activity appends late), windows from empty to
    # the whole table, paged by the seq cursor: on SQLite the engine picks a plan per window
    # (walk seq / range-scan the time index); every page must equal the rows a plain filter gives.

    rng = random.Random(5)
    minutes = list(range(300))
    for i in range(0, 300, 7):  # every 7th event arrives up to 40 minutes late
        minutes[i] = max(0, i - rng.randrange(40))
    async with sm() as s, s.begin():
        await append_events(s, [ev(i, occurred_at=T0 + timedelta(minutes=m)) for i, m in enumerate(minutes, 1)])
    at = {i: T0 + timedelta(minutes=m) for i, m in enumerate(minutes, 1)}
    windows = [(None, None), (10, None), (None, 20), (0, 300), (250, None), (100, 103), (5000, None), (150, 151),
               (200, 300), (2, 290)]
    dense_seen: set[bool] = set()
    for lo, hi in windows:
        since = T0 + timedelta(minutes=lo) if lo is not None else None
        until = T0 + timedelta(minutes=hi) if hi is not None else None
        expected = [i for i in sorted(at) if (since is None or at[i] >= since) and (until is None or at[i] < until)]
        got: list[int] = []
        cursor = None
        async with sm() as s:
            while True:
                page = await list_events(s, since=since, until=until, after_seq=cursor, limit=17)
                got += [e.seq for e in page]
                if len(page) < 17:
                    break
                cursor = page[-1].seq
            if s.get_bind().dialect.name == "sqlite" and (since or until):
                dense_seen.add(await _dense_window(s, _filters(since=since, until=until), None))
        assert got == expected, (lo, hi)
    if dense_seen:
        assert dense_seen == {True, False}  # both SQLite plans were exercised


async def test_keyset_paging_while_events_arrive(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 25)
    seen: list[int] = []
    after: int | None = None
    next_id = 1000
    while True:
        async with sm() as s:
            page = await list_events(s, progression_id="prog-0", after_seq=after, limit=4)
        if not page:
            break
        seen.extend(e.seq for e in page)
        after = page[-1].seq
        if next_id < 1006:  # writers keep appending between the reader's pages
            async with sm() as s, s.begin():
                await append_events(s, [ev(next_id), ev(next_id + 1)])
            next_id += 2
    async with sm() as s:
        everything = [e.seq for e in await list_events(s, progression_id="prog-0", limit=1000)]
    assert seen == everything  # no duplicates, no gaps, in order
    assert len(seen) == 12 + 3  # one of each appended pair is prog-0


async def test_iter_events_streams_everything_in_order(sm: async_sessionmaker[AsyncSession]) -> None:
    await seed(sm, 30)
    async with sm() as s:
        streamed = [e.seq async for e in iter_events(s, batch_size=7)]
        filtered = [e.seq async for e in iter_events(s, actor_id="user-1", after_seq=10, batch_size=2)]
    assert streamed == list(range(1, 31))
    assert filtered == [13, 16, 19, 22, 25, 28]
