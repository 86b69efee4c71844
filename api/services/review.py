"""What a reviewer reads on a gate page: the evidence's content (not only its digests) and the version of the
same model in production, for a side-by-side comparison.

Read-only, with the caller's visibility (a production version of a model the caller cannot see is not
looked up: the model is the same, so its team is too). Evidence is read from the content-addressed store and
parsed exactly as the checks parse it (:func:`engine.checks.evidence_value`); a file that is too large to
show inline, binary, or missing from the store is reported as such, never served half.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Principal
from api.deps import AppState
from api.services.catalog import production_version
from api.services.monitoring import history
from api.services.progressions import get_progression
from engine.checks import evidence_value
from engine.db import ModelVersion, ProgressionRow
from engine.errors import ProgressionError
from engine.evidence import EvidenceStore
from engine.lifecycle import POST_PRODUCTION_STAGES, ProgressionState
from engine.monitoring import MonitoringHistory

INLINE_MAX_BYTES = 1_000_000  # larger evidence is downloaded, not shown inline


@dataclass
class EvidenceContent:
    name: str
    filename: str | None
    value: Any = None  # parsed JSON/YAML, or text
    problem: str | None = None  # why it is not shown (too large, binary, missing from the store)

    @property
    def is_text(self) -> bool:
        return isinstance(self.value, str)

    @property
    def is_markdown(self) -> bool:
        return self.is_text and (self.filename or "").lower().endswith((".md", ".markdown"))


@dataclass
class VersionMaterial:
    state: ProgressionState
    features: list[str] = field(default_factory=list)
    materiality_tier: int | None = None  # the spec's, when set at start (else the policy's risk_tier holds)
    evidence: dict[str, EvidenceContent] = field(default_factory=dict)


@dataclass
class ReviewMaterial:
    this: VersionMaterial
    production: VersionMaterial | None = None
    monitoring: MonitoringHistory | None = None  # at a revalidation or retirement gate of a monitored model


async def _read(store: EvidenceStore, sha256: str, size: int) -> bytes | None:
    if not re.fullmatch(r"[0-9a-f]{64}", sha256) or size > INLINE_MAX_BYTES:
        return None
    if not await asyncio.to_thread(store.exists, sha256):
        return None
    data: bytes = await asyncio.to_thread(store.get, sha256)
    return data


async def _material(session: AsyncSession, app: AppState, state: ProgressionState) -> VersionMaterial:
    version = (await session.execute(select(ModelVersion).where(
        ModelVersion.model_id == state.model_id, ModelVersion.version_id == state.version_id))).scalar_one_or_none()
    store = EvidenceStore(app.settings.evidence_dir)
    contents: dict[str, EvidenceContent] = {}
    for name, ref in sorted(state.evidence.items()):
        content = EvidenceContent(name=name, filename=ref.filename)
        if ref.size > INLINE_MAX_BYTES:
            content.problem = f"too large to show here ({ref.size:,} bytes): download it"
        else:
            data = await _read(store, ref.sha256, ref.size)
            if data is None:
                content.problem = "the file is not in the evidence store"
            else:
                value = evidence_value(data, ref.filename, ref.media_type)
                if isinstance(value, dict) and set(value) == {"sha256", "size"}:
                    content.problem = "a binary file: download it"
                else:
                    content.value = value
        contents[name] = content
    return VersionMaterial(state=state, features=list(version.features or []) if version else [], evidence=contents,
                           materiality_tier=_materiality_tier(version.spec_yaml if version else None))


def _materiality_tier(spec_yaml: str | None) -> int | None:
    """The stored spec's materiality tier (validated at start; read again here as plain YAML)."""
    try:
        data = yaml.safe_load(spec_yaml) if spec_yaml else None
    except yaml.YAMLError:
        return None
    tier = data.get("materiality_tier") if isinstance(data, dict) else None
    return tier if isinstance(tier, int) and not isinstance(tier, bool) else None


async def review_material(*, session: AsyncSession, app: AppState, principal: Principal,
                          state: ProgressionState) -> ReviewMaterial:
    """This version's evidence content, when another version of the model is in production its own, and at a
    revalidation or retirement gate the model's monitoring history."""
    material = ReviewMaterial(this=await _material(session, app, state))
    rows = list((await session.execute(select(ProgressionRow).where(
        ProgressionRow.model_id == state.model_id, ProgressionRow.id != state.progression_id))).scalars())
    live = production_version(rows)
    if live is not None:
        production = await get_progression(session=session, app=app, principal=principal, progression_id=live.id)
        material.production = await _material(session, app, production)
    if state.current_stage in POST_PRODUCTION_STAGES:
        # the model's monitoring series, read with the caller's visibility (the gate's model is visible)
        try:
            series = await history(session=session, app=app, principal=principal, model_id=state.model_id)
        except ProgressionError:  # the page still reviews the gate; the history is one part of it
            series = None
        material.monitoring = series if series is not None and series.results else None
    return material
