"""The findings activities on a real database: writes are idempotent under retry, only a newer version lands,
and a notification the channel did not take is recorded as undelivered (not claimed as sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.contract import AuditEventIn, Notification, SaveFindingInput
from activities.findings import FindingActivities
from activities.notify import WebhookNotifier
from engine.audit import verify_chain
from engine.db import AuditEvent, FindingRow
from engine.findings import FindingRecord, FindingStatus
from engine.lifecycle import EventType
from engine.policy import Role
from testing.api import free_port
from testing.workflow import Env, app_env

AT = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with app_env(sqlite_url, tmp_path) as e:
        yield e


def _input(version: int, status: FindingStatus, event_id: str, note_id: str) -> SaveFindingInput:
    record = FindingRecord(finding_id="F-act", model_id="m-act", team="retail-risk",
                           business_intent="credit-underwriting", severity="high", title="t", due_at=AT + timedelta(30),
                           status=status, raised_by="val", raised_by_username="vera", raised_at=AT)
    return SaveFindingInput(
        record=record, version=version, at=AT,
        events=[AuditEventIn(event_id=event_id, event_type=EventType.finding_raised, occurred_at=AT)],
        notifications=[Notification(event_id=note_id, kind="finding", progression_id="", model_id="m-act",
                                    roles=[Role.model_developer], message="raised")])


async def test_saves_are_idempotent_and_undelivered_notifications_say_so(env: Env) -> None:
    # A webhook nobody listens on: the channel fails for real. No progression of the model runs, so the
    # Temporal client (to signal them) is never used.
    notifier = WebhookNotifier(f"http://127.0.0.1:{free_port()}/hook", "s" * 32, timeout=2)
    activities = FindingActivities(env.sessionmaker, notifier, cast(Client, None))
    run = ActivityEnvironment().run
    second = _input(2, FindingStatus.remediation_submitted, "e2", "n2")
    assert (await run(activities.save_finding, second)).written
    assert not (await run(activities.save_finding, _input(1, FindingStatus.open, "e1", "n1"))).written  # older
    assert not (await run(activities.save_finding, second)).written  # a retry
    async with env.sessionmaker() as session:
        row = await session.get(FindingRow, "F-act")
        assert row is not None and row.status == "remediation_submitted" and row.version == 2
        notes = (await session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "notification.sent", AuditEvent.model_id == "m-act"))).all()
        # each notification recorded once (the retry did not send again), not delivered, with the error
        assert sorted(n.event_id for n in notes) == ["n1", "n2"]
        assert all(n.payload["delivered"] is False and n.payload["error"] for n in notes)
        assert (await verify_chain(session)).ok
