"""Lineage of a model version: earlier versions of the same model, and earlier progressions of the
same artifact or source commit under any model id, with their outcomes.

A version is identified across model ids by its artifact URI and by the commit its source is pinned
to (``...@<commit>``); an artifact digest, when the spec carries one, is a third key. The register
activity uses :func:`prior_outcomes` so a decider sees (and must acknowledge) an earlier rejection of
the same thing under a new version or model id; the API shows the whole lineage on a progression.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db import ModelVersion, ProgressionRow
from engine.lifecycle import PriorOutcome

COMMIT_RE = re.compile(r"@([0-9a-fA-F]{7,40})$")


def source_commit(source: str | None) -> str | None:
    """The commit a source URI is pinned to (``git+https://host/repo@4f2a9c1`` -> ``4f2a9c1``)."""
    match = COMMIT_RE.search(source or "")
    return match.group(1).lower() if match else None


async def prior_outcomes(session: AsyncSession, *, progression_id: str, artifact: str, source: str,
                         digest: str | None = None) -> list[PriorOutcome]:
    """Other progressions whose version has the same artifact URI, source commit or artifact digest, oldest
    first."""
    commit = source_commit(source)
    conds: list[Any] = [ModelVersion.artifact == artifact]
    if commit:
        conds.append(ModelVersion.source.like(f"%@{commit}"))
    if digest:
        conds.append(ModelVersion.artifact_digest == digest)
    rows = (await session.execute(
        select(ProgressionRow.id, ProgressionRow.model_id, ProgressionRow.version_id, ProgressionRow.business_intent,
               ProgressionRow.status, ProgressionRow.risk_tier, ModelVersion.artifact, ModelVersion.source,
               ModelVersion.artifact_digest)
        .join(ModelVersion, (ModelVersion.model_id == ProgressionRow.model_id)
              & (ModelVersion.version_id == ProgressionRow.version_id))
        .where(or_(*conds), ProgressionRow.id != progression_id)
        .order_by(ProgressionRow.started_at, ProgressionRow.id))).all()
    out: list[PriorOutcome] = []
    for row in rows:
        match = []
        if row.artifact == artifact:
            match.append("artifact")
        if commit and source_commit(row.source) == commit:
            match.append("source_commit")
        if digest and row.artifact_digest == digest:
            match.append("artifact_digest")
        if match:
            out.append(PriorOutcome(progression_id=row.id, model_id=row.model_id, version_id=row.version_id,
                                    business_intent=row.business_intent, status=row.status, match=match,
                                    risk_tier=row.risk_tier))
    return out


def stricter_prior(prior: Sequence[PriorOutcome], *, model_id: str, risk_tier: int) -> PriorOutcome | None:
    """The first earlier progression of the same artifact or source commit, under another model id, that was
    governed by a stricter policy (a lower risk tier; 1 is the strictest) than ``risk_tier``.

    Submitting the same thing again under a new model id with a weaker intent would move it to a weaker policy
    (fewer gates, no risk officer) without the two model risk officers a change of intent needs; a rejected or
    withdrawn submission counts as much as an approved one. A registration that failed was never governed, and
    the same model's own versions are held to its intent by ``model_mismatch`` and its intent changes."""
    for p in prior:
        if p.model_id != model_id and p.status != "failed" and p.risk_tier is not None and p.risk_tier < risk_tier:
            return p
    return None


def downgrade_message(prior: PriorOutcome, *, intent: str, risk_tier: int) -> str:
    what = " and ".join(m.replace("_", " ") for m in prior.match) or "this version"
    return (f"the same {what} was submitted as {prior.business_intent!r} (risk tier {prior.risk_tier}) in "
            f"{prior.progression_id} ({prior.status}); as {intent!r} (risk tier {risk_tier}) it would pass a weaker "
            f"policy. Submit it as model {prior.model_id!r}: changing that model's intent is two model risk officers' "
            f"decision (POST /api/v1/models/{prior.model_id}/intent)")


async def model_versions(session: AsyncSession, *, model_id: str, progression_id: str) -> list[PriorOutcome]:
    """The model's other progressions (its earlier and later versions), oldest first, with outcomes."""
    rows = (await session.execute(
        select(ProgressionRow.id, ProgressionRow.model_id, ProgressionRow.version_id, ProgressionRow.business_intent,
               ProgressionRow.status)
        .where(ProgressionRow.model_id == model_id, ProgressionRow.id != progression_id)
        .order_by(ProgressionRow.started_at, ProgressionRow.id))).all()
    return [PriorOutcome(progression_id=r.id, model_id=r.model_id, version_id=r.version_id,
                         business_intent=r.business_intent, status=r.status) for r in rows]
