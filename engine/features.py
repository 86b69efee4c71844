"""The feature catalog in the database: seeded from YAML, edited by admins, resolved for specs.

The YAML file (``policies/features.yaml``) only seeds: a feature already in the database is
never overwritten by a later seed, so an admin's edit through the API survives restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db import Feature, dialect_insert, insert_ignore, utcnow
from engine.lifecycle import ResolvedFeature
from engine.loading import load_feature_catalog

SEED_ACTOR = "seed"


def _tags(tags: Sequence[str]) -> list[str]:
    # Sorted and unique: tag order carries no meaning and must not show up as a change.
    return sorted({str(t) for t in tags})


async def seed_features(session: AsyncSession, path: Path) -> int:
    """Insert the file's features that are not in the database yet; return how many were inserted.

    The file is read with a safe loader; a malformed file raises ``InvalidPolicy`` naming the file,
    field and line (see :func:`engine.loading.load_feature_catalog`). Runs in the caller's transaction.
    """
    entries = load_feature_catalog(Path(path))
    if not entries:
        return 0
    existing = set(await session.scalars(select(Feature.name).where(Feature.name.in_([e.name for e in entries]))))
    rows = [
        {
            "name": e.name,
            "description": e.description,
            "tags": _tags(e.tags),
            "updated_at": utcnow(),
            "updated_by": SEED_ACTOR,
        }
        for e in entries
        if e.name not in existing
    ]
    if not rows:
        return 0
    # ON CONFLICT DO NOTHING: a second process seeding at the same moment is not an error.
    result = await session.execute(
        insert_ignore(session, Feature, ["name"], rows)
    )
    inserted = result.rowcount  # type: ignore[attr-defined]
    return inserted if isinstance(inserted, int) and inserted >= 0 else len(rows)


async def resolve_features(session: AsyncSession, names: Sequence[str]) -> list[ResolvedFeature]:
    """Each name looked up in the catalog, in the given order; unknown names come back ``known=False``."""
    if not names:
        return []
    found = {f.name: f for f in await session.scalars(select(Feature).where(Feature.name.in_(sorted(set(names)))))}
    out: list[ResolvedFeature] = []
    for name in names:
        feature = found.get(name)
        if feature is None:
            out.append(ResolvedFeature(name=name, known=False))
        else:
            out.append(ResolvedFeature(name=name, description=feature.description, tags=list(feature.tags), known=True))
    return out


async def upsert_feature(
    session: AsyncSession, *, name: str, description: str, tags: Sequence[str], updated_by: str | None
) -> Feature:
    """Create or replace one feature (the admin's ``PUT /features/{name}``); in the caller's transaction."""
    values = {"description": description, "tags": _tags(tags), "updated_at": utcnow(), "updated_by": updated_by}
    stmt = dialect_insert(session, Feature).values(name=name, **values)
    await session.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))
    feature = await session.get(Feature, name, populate_existing=True)
    assert feature is not None
    return feature


async def list_features(session: AsyncSession) -> list[Feature]:
    """Every feature, by name."""
    return list(await session.scalars(select(Feature).order_by(Feature.name)))
