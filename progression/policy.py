"""A policy fetched once over HTTP, then evaluated locally and offline with the engine's own evaluation path."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from client.repo import read_repository
from client.sdk import AsyncProgressionClient, ProgressionClient
from engine.catalog import feature_verdict
from engine.checks import evidence_value
from engine.evaluation import evaluate_route
from engine.loading import LoadedPolicy, load_spec, policy_from_text
from engine.reads import referenced_paths
from engine.spec import ProgressionSpec
from engine.wire import CatalogSnapshot, PolicyDetail
from progression.evidence import evidence_file
from progression.report import FeatureLine, FeatureReport, Verdict

DEFAULT_URL = "http://127.0.0.1:8000"
SAVED_FORMAT = "progression/local-policy/v1"


class PolicyMismatch(ValueError):
    """The policy text does not hash to the version the server (or the saved file) names."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LocalPolicy:
    """One intent's policy and the feature catalog version it was fetched with; everything after is offline."""

    def __init__(self, loaded: LoadedPolicy, catalog: CatalogSnapshot, *, source: str = "") -> None:
        self.loaded = loaded
        self.catalog = catalog
        self.source = source

    # ---- getting one ------------------------------------------------------------------------------

    @classmethod
    def from_detail(cls, detail: PolicyDetail, catalog: CatalogSnapshot, *, source: str = "") -> LocalPolicy:
        loaded = policy_from_text(detail.yaml, filename=f"{detail.intent}.yaml")
        if loaded.hash != detail.hash:
            raise PolicyMismatch(f"the {detail.intent} policy text hashes to {loaded.hash}, not {detail.hash}")
        return cls(loaded, catalog, source=source)

    @classmethod
    def fetch(cls, intent: str, *, url: str | None = None, token: str | None = None,
              client: ProgressionClient | None = None) -> LocalPolicy:
        """Fetch ``intent``'s active policy and the current feature catalog (``PROGRESSION_URL`` and
        ``PROGRESSION_TOKEN`` by default): the only network calls."""
        if client is not None:
            return cls.from_detail(client.policy(intent), client.catalog_version(), source=client.base_url)
        base = url or os.environ.get("PROGRESSION_URL") or DEFAULT_URL
        with ProgressionClient(base, token or os.environ.get("PROGRESSION_TOKEN")) as c:
            return cls.from_detail(c.policy(intent), c.catalog_version(), source=base)

    @classmethod
    async def fetch_async(cls, intent: str, client: AsyncProgressionClient) -> LocalPolicy:
        return cls.from_detail(await client.policy(intent), await client.catalog_version(), source=client.base_url)

    def save(self, path: str | Path) -> Path:
        """Keep it for offline work: the policy text, its hash and the catalog version, in one JSON file."""
        target = Path(path)
        target.write_text(json.dumps({
            "format": SAVED_FORMAT, "intent": self.intent, "policy_hash": self.policy_hash,
            "policy_yaml": self.loaded.yaml_text, "catalog": self.catalog.model_dump(mode="json"),
            "source": self.source}, indent=1))
        return target

    @classmethod
    def load(cls, path: str | Path) -> LocalPolicy:
        data = json.loads(Path(path).read_text())
        if data.get("format") != SAVED_FORMAT:
            raise ValueError(f"{path}: not a saved policy ({SAVED_FORMAT})")
        loaded = policy_from_text(data["policy_yaml"], filename=f"{data['intent']}.yaml")
        if loaded.hash != data["policy_hash"]:
            raise PolicyMismatch(f"{path}: the policy text hashes to {loaded.hash}, not {data['policy_hash']}")
        return cls(loaded, CatalogSnapshot.model_validate(data["catalog"]), source=data.get("source", ""))

    # ---- what it says ------------------------------------------------------------------------------

    @property
    def intent(self) -> str:
        return self.loaded.intent

    @property
    def policy_hash(self) -> str:
        return self.loaded.hash

    def features(self, names: Sequence[str]) -> FeatureReport:
        """What this policy says of each feature (forbidden, requires evidence, allowed, unknown)."""
        resolved = self.catalog.resolve(list(names))
        return FeatureReport(intent=self.intent, catalog_version=self.catalog.version,
                             lines=[FeatureLine(f.name, feature_verdict(self.loaded.policy, f)) for f in resolved])

    def _spec(self, spec: str | Path | ProgressionSpec | None, features: Sequence[str] | None,
              evidence: Mapping[str, Any], target: str | None) -> ProgressionSpec:
        if isinstance(spec, ProgressionSpec):
            base = spec
        elif spec is not None:
            text = Path(spec).read_text() if isinstance(spec, Path) or (
                isinstance(spec, str) and "\n" not in spec and Path(spec).is_file()) else str(spec)
            base = load_spec(text, filename="progression.yaml")
        else:
            base = ProgressionSpec.model_validate({
                "apiVersion": "progression/v1", "kind": "ModelProgression",
                "model": {"id": "notebook-model", "name": "Notebook model", "team": "notebook",
                          "business_intent": self.intent},
                "version": {"id": "0.0.0", "source": "notebook", "artifact": "notebook"}})
        if base.model.business_intent != self.intent:
            raise ValueError(f"the spec's intent is {base.model.business_intent!r}; this policy is {self.intent!r}")
        declared = dict(base.evidence)
        for name, value in evidence.items():
            declared.setdefault(name, evidence_file(name, value)[0])
        changes: dict[str, Any] = {"evidence": declared}
        if features is not None:
            changes["features"] = list(features)
        if target is not None:
            changes["target"] = target
        return ProgressionSpec.model_validate({**base.model_dump(mode="json", by_alias=True), **changes})

    def _required_evidence(self, spec: ProgressionSpec) -> set[str]:
        names: set[str] = set()
        for stage in self.loaded.policy.route_for(spec.target):
            names.update(stage.requires_evidence)
            for check in stage.checks:
                paths, guarded = referenced_paths(check.expr)
                names.update(str(p[1]) for p in paths if len(p) > 1 and p[0] == "evidence"
                             and isinstance(p[1], str) and p[1] not in guarded)
        return names

    def evaluate(self, *, evidence: Mapping[str, Any] | None = None, features: Sequence[str] | None = None,
                 spec: str | Path | ProgressionSpec | None = None, target: str | None = None,
                 now: dt.datetime | None = None) -> Verdict:
        """Which stages would pass, which checks fail and why, what evidence is missing, which features the
        policy forbids or conditions: evidence as Python values (dicts for JSON, text for documents)."""
        evidence = dict(evidence or {})
        spec_used = self._spec(spec, features, evidence, target)
        # The bytes the evidence writers would write: the values go through the same parsing as submitted files.
        files = {name: evidence_file(name, value, spec_used.evidence.get(name)) for name, value in evidence.items()}
        return self._verdict(spec_used, files, now)

    def evaluate_repository(self, repo: str | Path, *, now: dt.datetime | None = None) -> Verdict:
        """The verdict on a repository as ``progression start`` would submit it (its progression.yaml and files)."""
        upload = read_repository(Path(repo))
        spec = load_spec(upload.spec_yaml, filename="progression.yaml")
        return self._verdict(spec, upload.evidence, now)

    def _verdict(self, spec: ProgressionSpec, files: Mapping[str, tuple[str, bytes]],
                 now: dt.datetime | None) -> Verdict:
        values = {name: evidence_value(data, relpath, None) for name, (relpath, data) in files.items()}
        resolved = self.catalog.resolve(spec.features)
        result = evaluate_route(self.loaded.policy, self.policy_hash, spec=spec, evidence=values, features=resolved,
                                now=now or _utcnow())
        report = self.features(spec.features)
        needed = self._required_evidence(spec) | {e for needs in report.requires.values() for e in needs}
        return Verdict(result=result, features=report, missing_evidence=sorted(needed - set(values)))
