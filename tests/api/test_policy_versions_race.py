"""API replicas starting together on a new database each record the loaded policy versions: the one that loses
the race must start all the same (seen: the second of two API processes exited at startup with
``UniqueViolation uq_policy_versions_intent_hash``, raised at the audit append's autoflush)."""

from __future__ import annotations

from sqlalchemy import func, select

from api.services.policies import record_policy_versions
from engine.db import AuditEvent, PolicyVersion, make_engine, make_sessionmaker
from testing.databases import prepare_database
from testing.workflow import registry


async def test_the_replica_that_loses_the_race_starts_all_the_same(postgres_url: str) -> None:
    await prepare_database(postgres_url)
    engine = make_engine(postgres_url)
    sm = make_sessionmaker(engine)
    policies = registry()
    try:
        async with sm() as late, sm() as first:
            # The late replica's transaction sees the database as it was before the first replica wrote
            # (REPEATABLE READ: its snapshot is taken at its first read), as when both start together.
            await late.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            assert await late.scalar(select(func.count()).select_from(PolicyVersion)) == 0
            assert await record_policy_versions(first, policies) == len(policies.all())
            assert await record_policy_versions(late, policies) == 0  # every insert lost; nothing raised
        async with sm() as session:
            versions = (await session.execute(select(PolicyVersion.intent, PolicyVersion.active))).all()
            published = await session.scalar(select(func.count()).select_from(AuditEvent).where(
                AuditEvent.event_type == "policy.published"))
        assert sorted(versions) == sorted((p.policy.intent, True) for p in policies.all())
        assert published == len(policies.all())  # one event per version: the loser's append was rolled back
    finally:
        await engine.dispose()
