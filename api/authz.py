"""Authorization in one place: the role x action table and the object-level team rule.

Choices (documented for clients):
- A developer acts on, and sees, only models of their own team. Another team's
  progression, model or audit trail answers **404** (not 403), so its existence
  does not leak. Validators, risk officers, auditors and admins read everything.
- Segregation of duties for decisions is :func:`engine.lifecycle.decision_refusal`,
  called here for the fast 403 and again by the workflow's Update validator.
- Fields naming the actor are never read from a body: the actor is always the
  authenticated user, and request bodies forbid unknown fields (422), so a body
  carrying ``actor`` or ``submitted_by`` is rejected rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from api.errors import ApiError
from engine.db import ApiToken, User
from engine.identity import (
    ADMIN_ISSUED_CREDENTIAL,
    CREDENTIAL_UNCONFIRMED,
    MAKER_CHECKER_ROLES,
    actor_for,
    credential_hold,
    user_roles,
)
from engine.lifecycle import Actor, Refusal
from engine.policy import Role


class Action(StrEnum):
    start_progression = "start_progression"
    add_evidence = "add_evidence"
    withdraw = "withdraw"
    decide = "decide"
    read_progression = "read_progression"
    list_progressions = "list_progressions"
    read_inbox = "read_inbox"
    read_catalog = "read_catalog"
    read_policies = "read_policies"
    dry_run = "dry_run"
    read_features = "read_features"
    write_features = "write_features"
    propose_feature = "propose_feature"  # a new feature or a change of one's description, tags or owner
    decide_feature_proposal = "decide_feature_proposal"  # narrowed to the feature's data owner or an admin
    read_audit = "read_audit"
    export_audit = "export_audit"
    verify_audit = "verify_audit"
    manage_users = "manage_users"
    read_self = "read_self"
    read_findings = "read_findings"  # findings and exceptions (the register, a model's, one's team's to-dos)
    raise_finding = "raise_finding"
    remediate_finding = "remediate_finding"
    verify_finding = "verify_finding"
    request_exception = "request_exception"  # the policy narrows it to its grant roles
    approve_exception = "approve_exception"
    post_monitoring = "post_monitoring"  # a period's results of a model in production (the policy names who)
    request_retirement = "request_retirement"  # the owning team asks; the policy's approvers decide at a gate
    override_retirement = "override_retirement"  # a risk officer lets a model with production dependents retire
    change_intent = "change_intent"  # propose, approve or reject a change of a model's business intent


A = Action
_EVERYONE = {A.read_progression, A.list_progressions, A.read_inbox, A.read_catalog, A.read_policies,
             A.read_features, A.dry_run, A.read_self, A.read_findings}
# Findings and exceptions are the reviewers' (SoD and the policy's grant roles come on top); admins do none.
_REVIEW = {A.raise_finding, A.verify_finding, A.request_exception, A.approve_exception}
# Everyone who builds or reviews models proposes catalog changes; a data owner may hold any of these roles.
_CATALOG = {A.propose_feature, A.decide_feature_proposal}

# The single table. Object-level rules (team scoping, segregation of duties) come on top.
ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.model_developer: frozenset(_EVERYONE | _CATALOG | {A.start_progression, A.add_evidence, A.withdraw,
                                                            A.read_audit, A.remediate_finding,
                                                            A.request_retirement}),
    # Validators attach validation reports (evidence) and decide validation gates.
    Role.model_validator: frozenset(_EVERYONE | _REVIEW | _CATALOG | {A.add_evidence, A.decide, A.read_audit}),
    Role.model_risk_officer: frozenset(_EVERYONE | _REVIEW | _CATALOG | {A.decide, A.read_audit, A.export_audit,
                                                                         A.verify_audit, A.override_retirement,
                                                                         A.change_intent}),
    Role.auditor: frozenset(_EVERYONE | {A.read_audit, A.export_audit, A.verify_audit}),
    # Admins never decide, raise or close findings, or grant exceptions (and cannot hold a gate role).
    # Nor post monitoring results, ask for or override a retirement (the owners and risk officers do).
    Role.admin: frozenset(set(Action) - {A.decide, A.remediate_finding, A.post_monitoring, A.request_retirement,
                                         A.override_retirement, A.change_intent} - _REVIEW),
    # The monitoring jobs' service identity: posting results is all it does (a policy may name a human role too).
    Role.monitor: frozenset({A.post_monitoring}),
}
# What a re-issued credential awaiting a second admin's confirmation may do in its held roles: read, never act.
HELD_ACTIONS = frozenset(_EVERYONE | {A.read_audit})
# Roles of service identities: a caller holding only these reaches only what ``SERVICE_PATHS`` allow.
SERVICE_ROLES = frozenset({Role.monitor})

# Roles that see every team's progressions, models and audit events.
GLOBAL_READERS = frozenset({Role.model_validator, Role.model_risk_officer, Role.auditor, Role.admin})
# Roles that act on any team's progression (developers act on their own team's only).
GLOBAL_ACTORS = frozenset({Role.admin, Role.model_validator})


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. Everything about who acts comes from here, never from a body."""

    user: User
    roles: frozenset[Role] = field(default_factory=frozenset)
    # The credential this request was made with (API token id, or SSO session) and who issued it;
    # recorded with every decision and its audit event.
    credential_id: str | None = None
    credential_issued_by: str | None = None
    credential_kind: str | None = None  # "token" or "sso"
    # Roles the user holds that this credential does not act in yet: a re-issued token (its person held one
    # before, or an admin changed their e-mail address) acts in no maker-checker role until a second admin
    # confirms it (POST /api/v1/users/{id}/tokens/{token_id}/confirm).
    # An admin-issued token never acts in them (``engine.identity.credential_hold``: ``hold`` is its code).
    held_roles: frozenset[Role] = field(default_factory=frozenset)
    hold: str | None = None

    @classmethod
    def of(cls, user: User, *, credential_id: str | None = None, credential_issued_by: str | None = None,
           credential_kind: str | None = None, hold: str | None = None) -> Principal:
        roles = frozenset(user_roles(user))
        held = roles & MAKER_CHECKER_ROLES if hold else frozenset()
        return cls(user=user, roles=roles - held, credential_id=credential_id,
                   credential_issued_by=credential_issued_by, credential_kind=credential_kind, held_roles=held,
                   hold=hold if held else None)

    @classmethod
    def of_token(cls, user: User, row: ApiToken) -> Principal:
        """The caller of an API token (a bearer token, or the token behind a web UI session): its credential and
        the roles it holds back (``engine.identity.credential_hold``)."""
        return cls.of(user, credential_id=f"token:{row.id}", credential_issued_by=row.issued_by,
                      credential_kind="token", hold=credential_hold(row))

    @property
    def id(self) -> str:
        return self.user.id

    @property
    def username(self) -> str:
        return self.user.username

    @property
    def team(self) -> str | None:
        return self.user.team

    @property
    def actor(self) -> Actor:
        actor = actor_for(self.user, credential_id=self.credential_id, credential_issued_by=self.credential_issued_by)
        if self.held_roles:  # the workflow's rules see only the roles this credential acts in
            actor = actor.model_copy(update={"roles": [r for r in actor.roles if r not in self.held_roles]})
        return actor

    @property
    def actions(self) -> frozenset[Action]:
        out: set[Action] = set()
        for role in self.roles:
            out |= ROLE_ACTIONS.get(role, frozenset())
        for role in self.held_roles:
            out |= ROLE_ACTIONS.get(role, frozenset()) & HELD_ACTIONS
        return frozenset(out)

    @property
    def service_only(self) -> bool:
        """A service identity (the monitoring jobs): it can do nothing but what its role allows."""
        return bool(self.roles) and self.roles <= SERVICE_ROLES

    @property
    def reads_all_teams(self) -> bool:
        return bool((self.roles | self.held_roles) & GLOBAL_READERS)


def allowed(principal: Principal, action: Action) -> bool:
    return action in principal.actions


def hold_refusal(principal: Principal, action: Action) -> Refusal | None:
    """Why ``principal`` may not do ``action`` although a role its person holds may: this credential holds that
    role back (``engine.identity.credential_hold``). ``None`` when it may, or when no role of theirs may."""
    if allowed(principal, action) or not any(action in ROLE_ACTIONS.get(role, frozenset())
                                             for role in principal.held_roles):
        return None
    roles = ", ".join(sorted(r.value for r in principal.held_roles))
    if principal.hold == ADMIN_ISSUED_CREDENTIAL:
        return Refusal(code=ADMIN_ISSUED_CREDENTIAL, http_status=403,
                       message=f"an admin issued this token and saw its secret: it never acts as {roles}; "
                               "enroll for a credential of your own (the code is mailed to you)")
    return Refusal(code=CREDENTIAL_UNCONFIRMED, http_status=403,
                   message=f"this credential was re-issued and acts as {roles} only once a second admin "
                           "confirms it (POST /api/v1/users/{id}/tokens/{token_id}/confirm)")


def role_refusal(principal: Principal, action: Action) -> Refusal | None:
    """Why the role table does not let ``principal`` do ``action`` (``None`` when it does)."""
    if allowed(principal, action):
        return None
    if (hold := hold_refusal(principal, action)) is not None:
        return hold
    held = ", ".join(sorted(r.value for r in principal.roles)) or "none"
    who = sorted(r.value for r, acts in ROLE_ACTIONS.items() if action in acts)
    return Refusal(code="forbidden", http_status=403,
                   message=f"your roles ({held}) do not allow {action.value}; it needs one of: {', '.join(who)}")


def require(principal: Principal, action: Action) -> None:
    if (refusal := role_refusal(principal, action)) is not None:
        who = sorted(r.value for r, acts in ROLE_ACTIONS.items() if action in acts)
        raise ApiError(403, refusal.code, refusal.message, {"action": action.value, "roles_allowed": who})


def can_see_team(principal: Principal, team: str) -> bool:
    return principal.reads_all_teams or (principal.team is not None and principal.team == team)


def visible_team_filter(principal: Principal) -> str | None:
    """The team a listing is restricted to, or None when the caller reads all teams."""
    if principal.reads_all_teams:
        return None
    return principal.team or "\x00no-team"  # a developer without a team sees nothing


def listing_conditions(principal: Principal, team_column: Any, **equal: tuple[Any, Any]) -> list[Any]:
    """WHERE conditions of a listing: the caller's team scope on ``team_column``, then ``column == value`` for each
    filter given (``equal`` maps a filter name to ``(column, value)``; a ``None`` value filters nothing)."""
    conds: list[Any] = []
    scoped = visible_team_filter(principal)
    if scoped is not None:
        conds.append(team_column == scoped)
    conds += [column == value for column, value in equal.values() if value is not None]
    return conds


def require_visible(principal: Principal, team: str, what: str) -> None:
    """404 (not 403) for another team's object: its existence does not leak."""
    if not can_see_team(principal, team):
        raise ApiError(404, "not_found", f"{what} not found")


def team_refusal(principal: Principal, action: Action, team: str, what: str) -> Refusal | None:
    """Why ``principal`` may not do ``action`` on an object of ``team``: the role table, then the team rule
    (developers act on their own team's objects only). What :func:`require_act_on_team` enforces, as a value
    (``engine.actions.allowed_actions`` reads it)."""
    if (refusal := role_refusal(principal, action)) is not None:
        return refusal
    if principal.roles & GLOBAL_ACTORS or principal.team == team:
        return None
    return Refusal(code="not_your_team", http_status=403,
                   message=f"{what} belongs to team {team!r}; you ({principal.username}, team {principal.team!r}) "
                           f"may {action.value} only for models of your own team")


def require_act_on_team(principal: Principal, action: Action, team: str, what: str) -> None:
    """Role allows the action AND (acting on any team's objects, or the object belongs to the caller's team)."""
    require(principal, action)
    if (refusal := team_refusal(principal, action, team, what)) is not None:
        raise ApiError(403, refusal.code, refusal.message, {"team": team, "your_team": principal.team})
