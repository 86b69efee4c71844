"""The feature catalog in the database: seeded from YAML, changed through approved proposals, resolved for specs.

The YAML file (``policies/features.yaml``) only seeds: a feature already in the database is
never overwritten by a later seed, so an approved change survives restarts.

``features`` holds the current catalog; every write also records an immutable snapshot of the whole catalog
(``feature_catalog_versions``, see :mod:`engine.catalog`) in the same transaction, so a progression that pinned a
version keeps resolving its features exactly as they were when it was registered.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.catalog import catalog_hash, snapshot_content, snapshot_from_content
from engine.db import Feature, FeatureCatalogVersion, dialect_insert, insert_ignore, utcnow
from engine.lifecycle import ResolvedFeature
from engine.loading import load_feature_catalog
from engine.wire import CatalogEntry, CatalogSnapshot

SEED_ACTOR = "seed"


def _tags(tags: Sequence[str]) -> list[str]:
    # Sorted and unique: tag order carries no meaning and must not show up as a change.
    return sorted({str(t) for t in tags})


# ---- catalog versions ----------------------------------------------------------------------------


async def current_catalog_version(session: AsyncSession) -> int:
    """The newest recorded catalog version (0 when nothing was ever recorded)."""
    return int(await session.scalar(select(func.max(FeatureCatalogVersion.version))) or 0)


async def record_catalog_version(session: AsyncSession, *, actor: str | None, reason: str) -> int:
    """Snapshot the ``features`` table as the next catalog version, in the caller's transaction; return it.

    Two writers at once both choose the same next number and the second one's commit fails on the primary
    key (nothing half written): catalog versions are never interleaved.
    """
    rows = (await session.scalars(select(Feature))).all()
    content = snapshot_content(CatalogEntry(name=r.name, description=r.description or "", tags=list(r.tags or []),
                                            owner=r.owner) for r in rows)
    version = await current_catalog_version(session) + 1
    session.add(FeatureCatalogVersion(version=version, catalog_hash=catalog_hash(content), content=content,
                                      created_at=utcnow(), created_by=actor, reason=reason[:200]))
    await session.flush()
    return version


# Versions are immutable: cached by (version, hash), so two databases never share an entry by mistake.
_SNAPSHOTS: dict[tuple[int, str], CatalogSnapshot] = {}


async def catalog_snapshot(session: AsyncSession, version: int) -> CatalogSnapshot | None:
    """One catalog version (``None`` if it was never recorded)."""
    row = await session.get(FeatureCatalogVersion, version)
    if row is None:
        return None
    key = (version, row.catalog_hash)
    cached = _SNAPSHOTS.get(key)
    if cached is None:
        cached = snapshot_from_content(version, row.content)
        if len(_SNAPSHOTS) > 1000:
            _SNAPSHOTS.clear()
        _SNAPSHOTS[key] = cached
    return cached


async def resolve_pinned(session: AsyncSession, names: Sequence[str], version: int | None) -> list[ResolvedFeature]:
    """Names resolved against catalog ``version`` (the live catalog when ``None`` or never recorded)."""
    snapshot = None if version is None else await catalog_snapshot(session, version)
    if snapshot is None:
        return await resolve_features(session, names)
    return snapshot.resolve(names)


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
        if not await current_catalog_version(session):
            await record_catalog_version(session, actor=SEED_ACTOR, reason="catalog recorded")
        return 0
    # ON CONFLICT DO NOTHING: a second process seeding at the same moment is not an error.
    result = await session.execute(
        insert_ignore(session, Feature, ["name"], rows)
    )
    inserted = result.rowcount  # type: ignore[attr-defined]
    count = inserted if isinstance(inserted, int) and inserted >= 0 else len(rows)
    if count:
        await record_catalog_version(session, actor=SEED_ACTOR, reason=f"seeded {count} features")
    return count


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
    session: AsyncSession, *, name: str, description: str, tags: Sequence[str], updated_by: str | None,
    owner: str | None = None, keep_owner: bool = True, reason: str = "",
) -> Feature:
    """Create or replace one feature and record the new catalog version; in the caller's transaction.

    ``keep_owner``: an existing feature keeps its data owner (``owner`` only sets it on creation); pass
    ``False`` to replace it with ``owner``.
    """
    values: dict[str, object] = {"description": description, "tags": _tags(tags), "updated_at": utcnow(),
                                 "updated_by": updated_by}
    if not keep_owner:
        values["owner"] = owner
    stmt = dialect_insert(session, Feature).values(name=name, **{"owner": owner, **values})
    await session.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))
    feature = await session.get(Feature, name, populate_existing=True)
    assert feature is not None
    await record_catalog_version(session, actor=updated_by, reason=reason or f"feature {name} written")
    return feature


async def list_features(session: AsyncSession) -> list[Feature]:
    """Every feature, by name."""
    return list(await session.scalars(select(Feature).order_by(Feature.name)))
