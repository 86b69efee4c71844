"""Request and response bodies of the HTTP API (pydantic v2, documented in /openapi.json).

Request bodies forbid unknown fields: a body that tries to name the actor
(``actor``, ``submitted_by``, ...) is rejected with 422 instead of being silently
ignored, so a client never believes it acted as someone else.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from engine.lifecycle import ConditionIn, DecisionKind, ProgressionDetail
from engine.policy import Role

# Paging offsets beyond this are refused (422): the databases overflow on offsets past 64 bits.
MAX_OFFSET = 1_000_000_000


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- progressions -----------------------------------------------------------------------------


class DecisionRequest(Body):
    stage: str = Field(min_length=1, max_length=64)
    # approve_with_conditions: approves and raises ``conditions`` (findings of the model) in one act.
    decision: DecisionKind | Literal["approve_with_conditions"]
    conditions: list[ConditionIn] = Field(default_factory=list, max_length=20)
    comment: str = Field(default="", max_length=10_000)
    # The basis the decider saw: ``stages[i].basis`` of the progression they read. A decision on a basis
    # that is no longer current is refused (409 stale_basis); without it the decision binds to the basis
    # current when the workflow accepts it.
    basis: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")


class WithdrawRequest(Body):
    reason: str = Field(min_length=1, max_length=10_000)


# The state after an action, with the caller's actions allowed now and the command of their next step.
ProgressionOut = ProgressionDetail


# ---- inbox ------------------------------------------------------------------------------------


# ---- catalog ----------------------------------------------------------------------------------


# ---- policies ---------------------------------------------------------------------------------


class DryRunRequest(Body):
    spec: str = Field(min_length=1, description="the progression.yaml text")
    evidence: dict[str, Any] = Field(
        default_factory=dict, description="evidence by name: parsed JSON values, or text (used as is)")


# ---- features ---------------------------------------------------------------------------------


class FeatureIn(Body):
    description: str = Field(default="", max_length=1000)
    tags: list[str] = Field(default_factory=list, max_length=50)
    owner: str | None = Field(default=None, max_length=128, description="the data owner (a username)")


class FeatureProposalIn(Body):
    """A new feature or a change of one: the whole proposed entry (description, tags, owner)."""

    feature: str = Field(min_length=1, max_length=128)
    description: str | None = Field(default=None, max_length=1000, description="unchanged when omitted")
    tags: list[Annotated[str, StringConstraints(max_length=100)]] | None = Field(
        default=None, max_length=50, description="the whole new tag set; unchanged when omitted")
    owner: str | None = Field(default=None, max_length=128, description="unchanged when omitted")
    comment: str = Field(min_length=1, max_length=2000, description="why")


class ProposalDecisionIn(Body):
    comment: str = Field(default="", max_length=2000)


# ---- audit ------------------------------------------------------------------------------------


# ---- users ------------------------------------------------------------------------------------


class UserCreate(Body):
    username: str = Field(min_length=1, max_length=128)
    roles: list[Role] = Field(min_length=1)
    team: str | None = Field(default=None, max_length=64)
    display_name: str = Field(default="", max_length=200)
    email: str | None = Field(default=None, max_length=254,
                              description="where the person's enrollment codes are sent (never to the admin)")


class EmailChange(Body):
    email: str = Field(min_length=3, max_length=254)
    reason: str = Field(min_length=1, max_length=2000)


class TokenCreate(Body):
    name: str = Field(default="", max_length=100)


class RoleGrantOut(BaseModel):
    id: str
    user_id: str
    username: str | None = None
    role: str
    status: Literal["pending", "approved"]
    reason: str
    proposed_by: str
    proposed_at: datetime
    approved_by: str | None = None
    approved_at: datetime | None = None


class RoleGrantCreate(Body):
    role: Role
    reason: str = Field(default="", max_length=1000)


class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    team: str | None
    roles: list[str]
    active: bool
    external: bool
    created_at: datetime
    email: str | None = Field(default=None, description="where enrollment codes go")
    grants: list[RoleGrantOut] = Field(default_factory=list, description="who proposed and approved each role")


class TokenOut(BaseModel):
    id: str
    prefix: str
    name: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    issued_by: str | None = Field(default=None, description="admin, enrollment:<admin> or bootstrap")
    awaiting_confirmation: bool = Field(default=False, description="re-issued: acts in no maker-checker role "
                                                                   "until a second admin confirms it")
    confirmed_by: str | None = None
    confirmed_at: datetime | None = None


class NewToken(TokenOut):
    token: str = Field(description="the secret; shown only in this answer")


class UserCreated(BaseModel):
    user: UserOut
    token: NewToken | None = Field(description="none for a person with a deciding or admin role pending: they "
                                               "get their own token by enrollment once the role is approved")
    next_steps: list[str] = Field(default_factory=list)


class EnrollmentCreated(BaseModel):
    id: str
    user_id: str
    sent_to: str = Field(description="the masked address the one-time code was mailed to (a***@bank.example); "
                                     "the code itself is never in an answer")
    expires_at: datetime
    created_by: str
    reissue: bool = Field(description="the person held a credential before (or their address changed): the "
                                      "token they redeem acts in no maker-checker role until a second admin "
                                      "confirms it")


class EnrollRequest(Body):
    code: str = Field(min_length=1, max_length=200)
    username: str = Field(min_length=1, max_length=128, description="whose code it is: a code redeems only for "
                                                                     "the person it was mailed to")
    name: str = Field(default="", max_length=100)


class IntentChange(Body):
    business_intent: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)


class IntentChangeDecision(Body):
    reason: str = Field(min_length=1, max_length=2000)


class Me(UserOut):
    actions: list[str]
    reads_all_teams: bool
    held_roles: list[str] = Field(default_factory=list, description="roles this credential does not act in until "
                                                                    "a second admin confirms it")


# ---- operations -------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    database: str
    temporal: str


class MonitoringResultsIn(Body):
    """A period's monitoring results (``metrics`` are checked against the pinned policy's declared metrics)."""

    period: date = Field(description="the last day of the period the figures cover (ISO date, not in the future)")
    metrics: dict[str, Any] = Field(description="metric name -> number, or feature -> number for by_feature")


class RetirementRequestIn(Body):
    reason: str = Field(min_length=1, max_length=2000)
    replacement: str | None = Field(default=None, max_length=200, description="a version that takes over")


class RetirementOverrideIn(Body):
    reason: str = Field(min_length=1, max_length=2000)
