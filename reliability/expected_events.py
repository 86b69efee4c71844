"""The exact audit trail a scripted lifecycle must leave: a pure model, compared event for event.

This module is the harness's statement of the lifecycle semantics, kept apart from the harness so it
can be adjusted in one place when the semantics change (evidence bases, re-opened stages, frozen
evidence...). It imports nothing from the engine at run time: the route is given as plain facts
(:func:`route_facts` builds them from a loaded policy) and the lifecycle as a list of steps.

An audit event is reduced to a key ``(event_type, stage, attempt, detail)``:

- ``attempt``: the stage attempt the event belongs to: the payload's ``attempt`` when it has one,
  otherwise the attempt of the stage's latest ``stage.entered`` or ``stage.reopened`` before it in
  the trail (``None`` for events without a stage, or on a stage never entered);
- ``detail``: ``check_id`` for ``check.evaluated``, the decision for ``decision.received``, the
  refusal ``code`` for ``decision.refused``, the notification ``kind`` for ``notification.sent``,
  otherwise ``None``.

:func:`expected_events` replays the steps on a small model of the workflow and returns the multiset
of keys; :func:`trail_keys` reduces a real trail the same way; :func:`compare` says what was lost
(expected, missing), duplicated (expected, present more often) and unexpected (never expected).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

EventKey = tuple[str, str | None, int | None, str | None]

# Payload field that names an event's detail.
DETAIL_FIELD = {"check.evaluated": "check_id", "decision.received": "decision", "decision.refused": "code",
                "notification.sent": "kind"}


@dataclass(frozen=True)
class StageFacts:
    """What the model needs to know of one stage of a policy route."""

    name: str
    checks: tuple[str, ...] = ()  # check ids, built-in first-stage checks included
    approvals: tuple[tuple[str, int], ...] = ()  # (role, count)
    action: str | None = None
    # Evidence names the stage's checks read (``engine.reads.stage_evidence_reads``); None: all of it.
    reads: tuple[str, ...] | None = ()


@dataclass(frozen=True)
class Step:
    """One scripted action whose effect the client saw (a 2xx, or the refusal expected).

    ``kind``: ``decide`` (an accepted ``decision`` on ``stage`` counting under ``role``), ``refused``
    (a decision on ``stage`` refused with ``code``), ``evidence`` (new evidence accepted), ``withdraw``.
    """

    kind: str
    stage: str | None = None
    decision: str | None = None
    role: str | None = None
    code: str | None = None
    items: tuple[str, ...] = ()  # evidence: the names uploaded (each with new content)


@dataclass
class _Stage:
    facts: StageFacts
    attempt: int = 0
    status: str = "pending"  # pending, blocked, gate, changes_requested, passed, rejected, withdrawn
    approved: Counter[str] = field(default_factory=Counter)


def route_facts(stages: Iterable[Any], builtin_first: Sequence[str],
                reads: Callable[[Any], Sequence[str]] | None = None) -> list[StageFacts]:
    """Facts of a route given as ``engine.policy.StageDef`` objects (duck-typed), the first stage's
    built-in check ids (``engine.checks.builtin_checks(True)``) and the function that says which
    evidence a stage reads (``engine.reads.stage_evidence_reads``; ``"*"`` means all of it)."""
    facts = []
    for i, s in enumerate(stages):
        ids = tuple(builtin_first if i == 0 else ()) + tuple(c.id for c in s.checks)
        names = tuple(reads(s)) if reads is not None else ()
        facts.append(StageFacts(name=s.name, checks=ids, action=s.action, reads=None if "*" in names else names,
                                approvals=tuple((str(getattr(a.role, "value", a.role)), a.count) for a in s.approvals)))
    return facts


def _reads(route: Sequence[StageFacts], stage: StageFacts, names: Sequence[str]) -> bool:
    """Whether ``stage`` reads any of ``names`` (``engine.lifecycle.reads_of``): evidence that no stage
    of the route reads is read by every stage with an approval gate."""
    if stage.reads is None:
        return bool(names)
    if any(other.reads is None for other in route):
        return any(n in stage.reads for n in names) or bool(stage.approvals and names)
    assigned = {n for other in route for n in (other.reads or ())}
    return any(n in stage.reads or (bool(stage.approvals) and n not in assigned) for n in names)


def expected_events(route: Sequence[StageFacts], steps: Sequence[Step], *,
                    blocked_until_evidence: str | None = None) -> Counter[EventKey]:
    """The multiset of audit event keys a progression on ``route`` leaves after ``steps``.

    ``blocked_until_evidence``: the stage whose checks fail (``stage.blocked``) until the first
    evidence upload made while it is blocked.
    """
    out: Counter[EventKey] = Counter()
    stages = [_Stage(f) for f in route]
    by_name = {s.facts.name: s for s in stages}
    closed = False
    unblocked = blocked_until_evidence is None

    def emit(event_type: str, stage: str | None = None, attempt: int | None = None, detail: str | None = None) -> None:
        out[(event_type, stage, attempt, detail)] += 1

    def current() -> _Stage | None:
        return next((s for s in stages if s.status not in ("passed",)), None)

    def run_checks(s: _Stage) -> None:
        """Checks of the current attempt, then blocked, gate or ready (ready passes and moves on)."""
        name, a = s.facts.name, s.attempt
        for check in s.facts.checks:
            emit("check.evaluated", name, a, check)
        if name == blocked_until_evidence and not unblocked:
            s.status = "blocked"
            emit("stage.blocked", name, a)
        elif s.facts.approvals:
            s.status = "gate"
            s.approved = Counter()
            emit("gate.opened", name, a)
            emit("notification.sent", name, a, "gate_opened")
        else:
            complete(s)

    def complete(s: _Stage) -> None:
        """The stage's gate (if any) is satisfied: the action, passed, and on to the next stage."""
        if s.facts.action == "deploy":
            emit("deployment.recorded", s.facts.name, s.attempt)
        s.status = "passed"
        emit("stage.passed", s.facts.name, s.attempt)
        advance()

    def advance() -> None:
        s = current()
        if s is None:
            emit("progression.in_production")
            emit("notification.sent", None, None, "finished")
            return
        s.attempt += 1  # a stage entered again after evidence re-opened an earlier one: a new attempt
        emit("stage.entered", s.facts.name, s.attempt)
        run_checks(s)

    def reopen_target(items: Sequence[str]) -> _Stage | None:
        """The earliest stage passed or current that reads an uploaded item; else the current stage
        when it waits for evidence (blocked, changes requested); else none (nothing re-runs)."""
        for st in stages:
            if st.status == "pending":
                break
            if _reads(route, st.facts, items):
                return st
        cur = current()
        return cur if cur is not None and cur.status in ("blocked", "changes_requested") else None

    emit("progression.started")
    advance()
    for step in steps:
        if step.kind == "refused":
            target = by_name.get(step.stage or "")
            emit("decision.refused", step.stage, (target.attempt or None) if target else None, step.code)
            continue
        if closed:
            raise ValueError(f"step {step} after the progression closed")
        s = current()
        assert s is not None, "a step after production"
        name = s.facts.name
        if step.kind == "decide":
            if step.stage != name or s.status != "gate":
                raise ValueError(f"decision {step} but the open stage is {name} ({s.status})")
            emit("decision.received", name, s.attempt, step.decision)
            emit("notification.sent", name, s.attempt, "decided")
            if step.decision == "approve":
                s.approved[step.role or ""] += 1
                if all(s.approved[role] >= count for role, count in s.facts.approvals):
                    complete(s)
            elif step.decision == "reject":
                s.status, closed = "rejected", True
                emit("progression.rejected", name, s.attempt)
                emit("notification.sent", name, s.attempt, "finished")
            else:
                s.status = "changes_requested"
                emit("changes.requested", name, s.attempt)
        elif step.kind == "evidence":
            emit("evidence.submitted", name, s.attempt)
            target = reopen_target(step.items)
            if target is not None:
                # Approvals bind to their basis: the earliest stage reading the change re-opens, every
                # later stage starts over (entered again, with a new attempt, when the route gets there).
                for later in stages[stages.index(target) + 1:]:
                    if later.status != "pending":
                        later.status = "pending"
                if target.status == "blocked" and target.facts.name == blocked_until_evidence:
                    unblocked = True
                target.status = "running"
                target.attempt += 1
                emit("stage.reopened", target.facts.name, target.attempt)
                emit("notification.sent", target.facts.name, target.attempt, "reopened")
                run_checks(target)
        elif step.kind == "withdraw":
            closed = True
            emit("progression.withdrawn", name, s.attempt)
            emit("notification.sent", None, None, "finished")
        else:
            raise ValueError(f"unknown step {step}")
    return out


def trail_keys(events: Iterable[tuple[str, str | None, Mapping[str, Any] | None]]) -> Counter[EventKey]:
    """Keys of a real trail given as ``(event_type, stage, payload)`` in append (``seq``) order."""
    attempts: dict[str, int] = {}
    out: Counter[EventKey] = Counter()
    for event_type, stage, payload in events:
        payload = payload or {}
        attempt = payload.get("attempt")
        if event_type in ("stage.entered", "stage.reopened") and stage is not None and isinstance(attempt, int):
            attempts[stage] = attempt
        if not isinstance(attempt, int):
            attempt = attempts.get(stage) if stage is not None else None
        detail_field = DETAIL_FIELD.get(event_type)
        detail = payload.get(detail_field) if detail_field else None
        out[(event_type, stage, attempt, None if detail is None else str(detail))] += 1
    return out


@dataclass
class Difference:
    lost: list[tuple[EventKey, int]] = field(default_factory=list)  # (key, how many missing)
    duplicated: list[tuple[EventKey, int]] = field(default_factory=list)  # (key, how many extra)
    unexpected: list[tuple[EventKey, int]] = field(default_factory=list)  # (key, count) never expected

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)


def compare(expected: Counter[EventKey], actual: Counter[EventKey]) -> Difference:
    diff = Difference()
    for key in sorted(set(expected) | set(actual), key=repr):
        want, got = expected.get(key, 0), actual.get(key, 0)
        if want and got < want:
            diff.lost.append((key, want - got))
        elif want and got > want:
            diff.duplicated.append((key, got - want))
        elif not want and got:
            diff.unexpected.append((key, got))
    return diff


def show(key: EventKey) -> str:
    event_type, stage, attempt, detail = key
    return event_type + (f" {stage}" if stage else "") + (f" #{attempt}" if attempt else "") + (
        f" [{detail}]" if detail else "")
