"""The progression spec (``progression.yaml`` in a model's repository).

Only the data model lives here; ``engine.loading`` turns YAML text into it with
errors that name the file, the field path and the line.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
VersionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")]
FeatureName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
EvidenceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelInfo(StrictModel):
    id: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    team: Slug
    business_intent: Slug


class VersionInfo(StrictModel):
    id: VersionId
    source: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    artifact: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    # sha256 of the artifact's bytes: what the approvals bind to and the deployment hands over.
    artifact_digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None


def check_relative_path(value: str) -> str:
    """Evidence paths are relative to the repository and may not leave it."""
    if not value or len(value) > 500:
        raise ValueError("must be a non-empty path of at most 500 characters")
    if "\\" in value or "\x00" in value:
        raise ValueError("must use forward slashes and no NUL characters")
    if value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"path {value!r} is absolute; evidence paths are relative to the repository")
    normalised = posixpath.normpath(value)
    if normalised == ".." or normalised.startswith("../"):
        raise ValueError(f"path {value!r} leaves the repository")
    return normalised


class ProgressionSpec(StrictModel):
    api_version: Literal["progression/v1"] = Field(alias="apiVersion")
    kind: Literal["ModelProgression"]
    model: ModelInfo
    version: VersionInfo
    features: list[FeatureName] = Field(default_factory=list, max_length=2000)
    evidence: dict[EvidenceName, str] = Field(default_factory=dict, max_length=100)
    target: Literal["staging", "production"] = "production"
    # Models this one depends on (inputs, scores it consumes): none of them retires while this one is in
    # production without a model risk officer's recorded override. Left out of the digest while unset.
    depends_on: list[Slug] | None = Field(default=None, max_length=100)
    # The model's materiality tier (1 most material): its revalidation cadence after production. Unset, the
    # policy's risk_tier. Checked against the policy at load (engine.loading.materiality_problem). Left out of
    # the digest while unset.
    materiality_tier: int | None = Field(default=None, ge=1, le=3, strict=True)

    @field_validator("evidence")
    @classmethod
    def _paths_stay_inside_repository(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: check_relative_path(path) for name, path in value.items()}

    @field_validator("features")
    @classmethod
    def _features_unique(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise ValueError(f"feature {name!r} is listed twice")
            seen.add(name)
        return value

    @property
    def progression_id(self) -> str:
        return progression_id(self.model.id, self.version.id)


def spec_digest(spec: ProgressionSpec) -> str:
    """Content hash of the spec's meaning (not its YAML formatting)."""

    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# The spec fields that identify what is being approved; none of them can change within a progression.
IDENTITY_FIELDS = ("model.id", "version.id", "version.source", "version.artifact", "version.artifact_digest",
                   "features", "model.business_intent")


def identity_changes(pinned: ProgressionSpec, other: ProgressionSpec) -> list[str]:
    """The identity fields (see ``IDENTITY_FIELDS``) in which ``other`` differs from ``pinned``."""
    def value(spec: ProgressionSpec, dotted: str) -> object:
        obj: object = spec
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    return [f for f in IDENTITY_FIELDS if value(pinned, f) != value(other, f)]


def progression_id(model_id: str, version_id: str) -> str:
    """Also the Temporal workflow id: one workflow per model version, so a twin cannot start."""
    return f"{model_id}@{version_id}"
