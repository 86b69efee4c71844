"""The progression workflow's contract: what a caller needs to start it, update it, query it and find it.

One definition each of the workflow's name, its Update and query names, their input and result models, and the
search attributes (the keys the workflow upserts and the names and kinds a Temporal server registers). The API,
the worker, the launcher and the workflow itself import them from here; nothing here touches a database or CEL.
The data converter is part of the contract too: every party connects with :func:`connect`.
"""

from __future__ import annotations

from datetime import date
from typing import Any, cast

from pydantic import Field
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter

from engine.lifecycle import Actor, Breach, ConditionIn, DecisionKind, EvidenceRef, Model, ProgressionState, Status
from engine.policy import GovernancePolicy
from engine.spec import ProgressionSpec

WORKFLOW_NAME = "ProgressionWorkflow"
UPDATE_DECIDE = "decide"
UPDATE_SUBMIT_EVIDENCE = "submit_evidence"
UPDATE_WITHDRAW = "withdraw"
UPDATE_MONITORING = "record_monitoring"  # a period's monitoring results (patch ``monitoring``)
UPDATE_RETIRE = "request_retirement"  # the owner asks to retire a model in production (patch ``monitoring``)
QUERY_STATE = "state"

# Custom search attributes: upserted by the workflow, filtered on by the API, registered on every server.
SA_MODEL_ID = SearchAttributeKey.for_keyword("ModelId")
SA_INTENT = SearchAttributeKey.for_keyword("BusinessIntent")
SA_RISK_TIER = SearchAttributeKey.for_int("RiskTier")
SA_STAGE = SearchAttributeKey.for_keyword("ProgressionStage")
SA_STATUS = SearchAttributeKey.for_keyword("ProgressionStatus")
SEARCH_ATTRIBUTE_KEYS: list[SearchAttributeKey[Any]] = [SA_MODEL_ID, SA_INTENT, SA_RISK_TIER, SA_STAGE, SA_STATUS]
# The same keys as the Temporal CLI spells them (``--name ModelId --type Keyword``), derived from the keys above.
_CLI_TYPE = {SearchAttributeIndexedValueType.KEYWORD: "Keyword", SearchAttributeIndexedValueType.INT: "Int"}
SEARCH_ATTRIBUTES: dict[str, str] = {key.name: _CLI_TYPE[key.indexed_value_type] for key in SEARCH_ATTRIBUTE_KEYS}


class WorkflowMemory(Model):
    """What a run remembers beyond the state, carried across continue-as-new beside ``resume_state``.

    Only what deduplication needs: ids of evidence submissions already applied, so a client's retry that reaches
    the next run is answered, not applied twice. Decisions need nothing here (the state's decisions carry their
    ids); everything else the workflow keeps is per run (locks, pending events) or derived from the state.
    """

    evidence_requests: list[str] = Field(default_factory=list)


class ProgressionInput(Model):
    spec: ProgressionSpec
    spec_yaml: str
    policy: GovernancePolicy
    policy_hash: str
    evidence: dict[str, EvidenceRef]
    submitted_by: Actor
    # Carried across continue-as-new so the history stays bounded without losing the state.
    resume_state: ProgressionState | None = None
    resume_memory: WorkflowMemory | None = None
    # The model's materiality tier (1 most material): scales its revalidation period and depth (the policy's
    # ``cadence``). An input, not a constant: unset, the policy's risk_tier; a computed tier will be passed here.
    materiality_tier: int | None = Field(default=None, ge=1, le=3)


class DecideInput(Model):
    stage: str
    decision: DecisionKind
    comment: str = Field(max_length=10_000)
    actor: Actor
    decision_id: str  # unique per request (idempotency key or a fresh uuid), deduplicates retries
    # The basis the decider saw (``stages[i].basis`` of the state they read); a stale one is refused.
    basis: str | None = None
    # approve_with_conditions: the approval raises these findings in the same act (patch ``findings``).
    conditions: list[ConditionIn] = Field(default_factory=list, max_length=20)


class UpdateAnswer(Model):
    """What an Update of a progression answers since patch ``lean-update-results``: which state it left behind.

    ``seq`` is the state's sequence number when the handler answered; the handler awaited its own ``record``, so
    the read-model snapshot holds that ``seq`` (or a later one) when the answer arrives. A caller that wants the
    state reads the snapshot (as ``GET`` does) instead of carrying ~16 KB through the history for each Update.
    """

    seq: int = -1  # -1: an answer from before the patch (its ``state`` holds the seq)
    status: Status | None = None
    current_stage: str | None = None


class DecideResult(UpdateAnswer):
    accepted: bool
    decision_id: str
    # Only progressions started before patch ``lean-update-results`` fill it (the whole state, as they always
    # did); newer ones answer with ``seq``/``status``/``current_stage`` and the caller reads the snapshot.
    state: ProgressionState | None = None


class EvidenceResult(UpdateAnswer):
    """``submit_evidence``'s answer since patch ``lean-update-results`` (before it: the whole state)."""

    request_id: str


class WithdrawResult(UpdateAnswer):
    """``withdraw``'s answer since patch ``lean-update-results`` (before it: the whole state)."""

    request_id: str


class RetireResult(UpdateAnswer):
    """``request_retirement``'s answer since patch ``lean-update-results`` (before it: the whole state)."""

    request_id: str


# What each of those Updates may answer: progressions started before the patch keep answering with the state.
EvidenceAnswer = EvidenceResult | ProgressionState
WithdrawAnswer = WithdrawResult | ProgressionState
RetireAnswer = RetireResult | ProgressionState
# The same as ``execute_update``'s ``result_type`` (typed ``type``; the pydantic converter decodes any union).
EVIDENCE_ANSWER = cast(type, EvidenceAnswer)
WITHDRAW_ANSWER = cast(type, WithdrawAnswer)
RETIRE_ANSWER = cast(type, RetireAnswer)


class EvidenceInput(Model):
    evidence: dict[str, EvidenceRef]
    actor: Actor
    request_id: str


class WithdrawInput(Model):
    reason: str = Field(max_length=10_000)
    actor: Actor
    request_id: str


class MonitoringInput(Model):
    """One period's results, stored by the API first (``result_id`` is the stored row's id)."""

    result_id: str = Field(min_length=1, max_length=64)
    period: date
    metrics: dict[str, float | dict[str, float]]
    actor: Actor


class MonitoringOutcome(UpdateAnswer):
    result_id: str
    period: date
    breaches: list[Breach] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)  # what the breaches did, in words
    # Only progressions started before patch ``lean-update-results`` fill it; nobody reads it (the API keeps the
    # breaches and actions), so newer ones leave it out (and ``seq`` says which state the outcome left behind).
    state: ProgressionState | None = None


class RetireInput(Model):
    request_id: str
    actor: Actor
    reason: str = Field(min_length=1, max_length=10_000)
    replacement: str | None = Field(default=None, max_length=200)  # a version that takes over, if any
    # Computed by the API from the catalog: production models declaring this one a dependency, and the risk
    # officer's recorded override (the validator refuses dependents without one).
    dependents: list[str] = Field(default_factory=list)
    override_id: str | None = None
    override_by: str | None = None


async def connect(address: str, namespace: str) -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter)
