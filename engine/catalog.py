"""The feature catalog's rules, without a database: versions, proposals, and what each policy says of a feature.

- **Versions.** Every change of the catalog writes an immutable snapshot (``CatalogSnapshot``) with the next
  version number and a content hash; a progression pins the version current when it is registered and its checks
  resolve features against that snapshot, as it pins its policy (``engine.features`` reads and writes them).
- **Proposals.** Anyone who may read the catalog proposes a new feature or a change of a feature's description,
  tags or owner; the feature's data owner or an admin approves. Removing a sensitive tag (``protected_attribute``,
  ``proxy``, ``restricted:<intent>``) needs two approvals by two different people; nobody approves their own
  proposal (:func:`approval_refusal`).
- **Policy verdicts.** :func:`feature_verdict` says, per business intent, whether the policy allows a feature,
  forbids it, or requires something (evidence) when it is used, by evaluating the policy's own feature checks on
  that one feature with the evaluator the workflow uses (``engine.checks``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from pydantic import BaseModel

from engine.checks import evaluate_check
from engine.lifecycle import ResolvedFeature
from engine.policy import GovernancePolicy
from engine.reads import referenced_paths
from engine.wire import CatalogEntry, CatalogSnapshot, FeatureVerdict, PolicyRule

# Removing one of these (or any restricted:<intent>) weakens a policy check: two approvers.
SENSITIVE_TAGS = frozenset({"protected_attribute", "proxy"})
RESTRICTED_PREFIX = "restricted:"


def is_sensitive(tag: str, policy_tags: AbstractSet[str] = frozenset()) -> bool:
    return tag in SENSITIVE_TAGS or tag.startswith(RESTRICTED_PREFIX) or tag in policy_tags


_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def policy_tags(policies: Iterable[GovernancePolicy]) -> frozenset[str]:
    """The tags the policies' feature checks name (``'pii' in f.tags``): removing one of them from a feature lifts
    a check as surely as removing ``proxy`` does (e.g. ``pii`` and the credit policy's pii_justification), so it
    takes two approvers too, and never a direct write."""
    out: set[str] = set()
    for policy in policies:
        for stage in policy.stages:
            for check in stage.checks:
                paths, _ = referenced_paths(check.expr)
                if any(p and p[0] in ("features", "feature_names") for p in paths):
                    out.update(a or b for a, b in _LITERAL.findall(check.expr) if a or b)
    return frozenset(out)


# Lower-case ASCII: "Proxy", "proxy\u200b" or a Cyrillic "рrоху" would read as proxy on every page yet not be the
# tag the policies' checks test ('proxy' in f.tags), so a feature could look tagged without being it, and a
# proposal's "remove proxy, add рrоху" would look like no change to its approvers.
TAG_RE = re.compile(r"[a-z0-9_*][a-z0-9_.:*-]{0,99}")


def invalid_tags(tags: Iterable[str]) -> list[str]:
    """The tags (after :func:`normalize_tags`) that are not lower-case ASCII names."""
    return [t for t in tags if not TAG_RE.fullmatch(t)]


def normalize_tags(tags: Iterable[str]) -> list[str]:
    """Sorted and unique, blanks dropped: tag order carries no meaning and must not show up as a change."""
    return sorted({str(t).strip() for t in tags if str(t).strip()})


def snapshot_content(entries: Iterable[CatalogEntry]) -> dict[str, Any]:
    """The stored form of a version: name -> {description, tags, owner}, tags normalized."""
    return {e.name: {"description": e.description, "tags": normalize_tags(e.tags), "owner": e.owner}
            for e in sorted(entries, key=lambda e: e.name)}


def catalog_hash(content: Mapping[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def snapshot_from_content(version: int, content: Mapping[str, Any]) -> CatalogSnapshot:
    return CatalogSnapshot(version=version, catalog_hash=catalog_hash(content), features=[
        CatalogEntry(name=name, description=v.get("description") or "", tags=list(v.get("tags") or []),
                     owner=v.get("owner")) for name, v in sorted(content.items())])


# ---- proposals ---------------------------------------------------------------------------------


def removed_sensitive_tags(before: Sequence[str] | None, after: Sequence[str],
                           policy_tags: AbstractSet[str] = frozenset()) -> list[str]:
    return sorted(t for t in set(before or []) - set(after) if is_sensitive(t, policy_tags))


def approvals_needed(before: Sequence[str] | None, after: Sequence[str],
                     policy_tags: AbstractSet[str] = frozenset()) -> int:
    """Two approvals (two different people) when the change removes a sensitive tag, else one."""
    return 2 if removed_sensitive_tags(before, after, policy_tags) else 1


class Refusal(BaseModel):
    status: int
    code: str
    message: str


def approval_refusal(*, proposal_status: str, proposer_id: str, approver_id: str, approver_username: str,
                     approver_is_admin: bool, feature_owner: str | None, feature: str,
                     earlier_approvers: Sequence[str], approver_holder: str | None = None,
                     linked: Sequence[tuple[str, str | None]] = ()) -> Refusal | None:
    """Why this person may not approve (or reject) this proposal now; ``None`` when they may.

    Deciders: the feature's data owner or an admin. Never the proposer; nobody counts twice. ``linked`` holds
    (username, who else holds the credential they acted with) of the proposer and the earlier approvers, and
    ``approver_holder`` who else holds the approver's: an approval made with a credential one of them holds (an
    admin saw the secret of the token they issued for another account), by the holder of one of their credentials,
    or with a credential held by the same person as one of theirs, is the same human twice and is refused.
    """
    if proposal_status != "pending":
        return Refusal(status=409, code="proposal_closed", message=f"the proposal is {proposal_status}, not pending")
    if approver_id == proposer_id:
        return Refusal(status=403, code="own_proposal",
                       message="you proposed this change; the feature's data owner or an admin decides on it")
    if not approver_is_admin and (feature_owner is None or approver_username != feature_owner):
        owner = f"its data owner {feature_owner!r}" if feature_owner else "an admin (it has no data owner)"
        return Refusal(status=403, code="not_feature_owner",
                       message=f"only {owner}{' or an admin' if feature_owner else ''} decides on changes of "
                               f"feature {feature!r}")
    if approver_id in earlier_approvers:
        return Refusal(status=409, code="already_approved",
                       message="you already approved this proposal; a second approval must come from someone else")
    mine = approver_holder
    for username, theirs in linked:
        if mine == username or theirs == approver_username or (mine is not None and mine == theirs):
            return Refusal(status=403, code="linked_credential",
                           message=f"your credential and {username}'s are held by one person ({mine or theirs} "
                                   "issued it and saw its secret): the proposer and each approver must be different "
                                   "people with their own credentials (an enrollment code they redeem themselves)")
    return None



# ---- what each policy says of a feature --------------------------------------------------------

_NEUTRAL = ResolvedFeature(name="__neutral__", description="", tags=[], known=True)
# Evidence as present as it gets: long text (size checks), so "requires" means "if you attach it".
_PRESENT = "x" * 100_000


def _context(features: list[ResolvedFeature], evidence: Mapping[str, Any], intent: str) -> dict[str, Any]:
    # The variables a check reads (engine.checks.build_context) for a spec about which nothing else is known.
    model = {"id": "", "name": "", "team": "", "business_intent": intent}
    version = {"id": "", "source": "", "artifact": ""}
    return {"spec": {"model": model, "version": version, "features": [f.name for f in features], "evidence": {},
                     "target": "production"},
            "model": model, "version": version, "evidence": dict(evidence),
            "features": [{"name": f.name, "description": f.description, "tags": list(f.tags), "known": f.known}
                         for f in features],
            "feature_names": [f.name for f in features], "target": "production"}


def _passes(expr: str, features: list[ResolvedFeature], evidence: Mapping[str, Any], intent: str) -> bool:
    return evaluate_check("", "", "", expr, _context(features, evidence, intent)).passed


def feature_verdict(policy: GovernancePolicy, feature: ResolvedFeature) -> FeatureVerdict:
    """Allowed, forbidden, or requires evidence: the policy's feature checks evaluated on this feature alone.

    A check that reads the features and fails with this feature but passes with an untagged one bears on it:
    if it then passes once the evidence it reads is present, the feature *requires* that evidence; otherwise it
    is *forbidden*. A ``restricted:<intent>`` (or ``restricted:*``) tag forbids it at the start.
    """
    intent = policy.intent
    if not feature.known:
        return FeatureVerdict(intent=intent, verdict="unknown", summary="not in the feature catalog")
    rules: list[PolicyRule] = []
    restricted = {f"{RESTRICTED_PREFIX}{intent}", f"{RESTRICTED_PREFIX}*"} & set(feature.tags)
    if restricted:
        rules.append(PolicyRule(stage="start", check_id="feature-restricted", effect="forbidden",
                                description=f"refused at the start: tagged {sorted(restricted)[0]}"))
    for stage in policy.stages:
        for check in stage.checks:
            paths, _ = referenced_paths(check.expr)
            if not any(p and p[0] in ("features", "feature_names") for p in paths):
                continue
            if _passes(check.expr, [feature], {}, intent) or not _passes(check.expr, [_NEUTRAL], {}, intent):
                continue
            reads = sorted({str(p[1]) for p in paths if len(p) > 1 and p[0] == "evidence"})
            if reads and _passes(check.expr, [feature], {name: _PRESENT for name in reads}, intent):
                rules.append(PolicyRule(stage=stage.name, check_id=check.id, description=check.description,
                                        effect="requires", requires_evidence=reads))
            else:
                rules.append(PolicyRule(stage=stage.name, check_id=check.id, description=check.description,
                                        effect="forbidden"))
    if any(r.effect == "forbidden" for r in rules):
        why = "; ".join(r.description for r in rules if r.effect == "forbidden")
        return FeatureVerdict(intent=intent, verdict="forbidden", summary=f"forbidden: {why}", rules=rules)
    if rules:
        needs = sorted({e for r in rules for e in r.requires_evidence})
        return FeatureVerdict(intent=intent, verdict="requires", rules=rules,
                              summary="requires evidence " + ", ".join(needs))
    return FeatureVerdict(intent=intent, verdict="allowed", summary="allowed")


def feature_verdicts(policies: Iterable[GovernancePolicy], feature: ResolvedFeature) -> list[FeatureVerdict]:
    return [feature_verdict(p, feature) for p in sorted(policies, key=lambda p: p.intent)]
