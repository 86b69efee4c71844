"""The durable progression workflow: one model version's journey through its policy's route.

Shape of a stage (see ``run``): enter -> checks (activity) -> blocked? wait for evidence ->
gate? wait for decisions, racing the SLA timer (escalate once per gate opening, keep waiting)
-> action (deploy) -> passed. Messages:

- Update ``decide``: the validator applies the segregation-of-duties rule
  (``engine.lifecycle.decision_refusal``) so a refused decision never enters history; the
  handler applies it and awaits the audit append before answering.
- Update ``submit_evidence``: merges evidence; on a blocked, changes-requested or open gate
  it re-runs the stage's checks and resets that gate's approvals.
- Update ``withdraw``: the submitting team ends the progression.
- Query ``state``: the whole ``ProgressionState``.

After production a revalidation timer (policy ``revalidation``) opens a ``revalidation`` gate
and flags the model overdue until decided. The revalidation gate reuses the approval rules of
the policy's ``validation`` stage (independent re-validation, with its SLA and escalation);
a policy without such a stage gets one ``model_risk_officer``. Approve starts the next cycle,
reject retires the model.

Concurrency rules inside the workflow: check runs (main loop or evidence handler) hold
``self._lock``; handlers never wait on the main loop, and the main loop waits for running
handlers before it moves on, so audit events keep the order in which things happened.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.contract import (
        DEPLOY,
        EVALUATE_CHECKS,
        EVALUATE_MONITORING,
        HEARTBEAT_TIMEOUT,
        RECORD,
        RECORD_FAILURE,
        REGISTER_PROGRESSION,
        START_FINDINGS,
        AuditEventIn,
        CheckSubject,
        DeployInput,
        Deployment,
        DeployResult,
        EvaluateChecksInput,
        EvaluateChecksResult,
        EvaluateMonitoringInput,
        EvaluateMonitoringResult,
        Notification,
        NotificationKind,
        RecordFailureInput,
        RecordInput,
        RecordResult,
        RegisterInput,
        RegisterResult,
        StartFindingsInput,
        StartFindingsResult,
        full_results,
    )
    from engine.findings import (
        FINDING_WORKFLOW,
        MONITORING_STAGE,
        OPEN_STATUSES,
        SIGNAL_GOVERNANCE,
        FindingInput,
        FindingRecord,
        active_exceptions,
        blocking_findings,
        blocking_refusal,
        conditions_refusal,
        default_due,
        finding_workflow_id,
        waived_checks,
    )
    from engine.guidance import FAILED_ACTION, guidance, guided
    from engine.lifecycle import (
        FINAL_STATUSES,
        POST_PRODUCTION_STAGES,
        RETIREMENT_STAGE,
        REVALIDATION_STAGE,
        ApprovalProgress,
        Breach,
        DecisionKind,
        DecisionRecord,
        EventType,
        EvidenceRef,
        GovernanceSnapshot,
        MonitoringState,
        ProgressionState,
        Refusal,
        RetirementRequest,
        StageState,
        StageStatus,
        Status,
        acknowledgement_refusal,
        basis_hash,
        basis_parts,
        basis_refusal,
        comment_refusal,
        counted_approvals,
        counting_role,
        decision_refusal,
        evidence_change_refusal,
        evidence_refusal,
        open_gate_roles,
        reads_of,
        refresh_bases,
        withdraw_refusal,
    )
    from engine.monitoring import (
        KEEP,
        metrics_refusal,
        poster_refusal,
        production_refusal,
        retirement_refusal,
    )
    from engine.payload import json_payload
    from engine.policy import ApprovalRule, MonitoringAction, Role, StageDef
    from engine.reads import stage_evidence_reads
    from engine.spec import spec_digest
    from workflows.contract import (
        QUERY_STATE,
        SA_INTENT,
        SA_MODEL_ID,
        SA_RISK_TIER,
        SA_STAGE,
        SA_STATUS,
        UPDATE_DECIDE,
        UPDATE_MONITORING,
        UPDATE_RETIRE,
        UPDATE_SUBMIT_EVIDENCE,
        UPDATE_WITHDRAW,
        WORKFLOW_NAME,
        DecideInput,
        DecideResult,
        EvidenceAnswer,
        EvidenceInput,
        EvidenceResult,
        MonitoringInput,
        MonitoringOutcome,
        ProgressionInput,
        RetireAnswer,
        RetireInput,
        RetireResult,
        WithdrawAnswer,
        WithdrawInput,
        WithdrawResult,
        WorkflowMemory,
    )


# Business errors raised by activities: retrying cannot help.
NON_RETRYABLE = ["evidence_missing", "model_mismatch", "invalid_input"]
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                       maximum_interval=timedelta(seconds=30), non_retryable_error_types=NON_RETRYABLE)
# A deployment target may be down for a while; keep trying (durably) rather than fail the journey.
DEPLOY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0,
                           maximum_interval=timedelta(minutes=5), non_retryable_error_types=NON_RETRYABLE)
DB_TIMEOUT = timedelta(seconds=60)
# ``record`` (audit append + read model, a short local transaction) runs as a local activity: no
# activity task round trip through the server, and the 15 KB state it carries stays out of the
# history (only the small result is recorded). Histories from before the change replay unpatched.
PATCH_RECORD_LOCAL = "record-as-local-activity"
# A failed workflow records why (status failed in the read model, a progression.failed audit event)
# before it fails, so the failure is visible and the owner may start the version again.
PATCH_RECORD_FAILURE = "record-failure"
# Approvals bind to their basis: decisions record it, changed evidence re-opens the earliest stage that
# reads it (superseding that stage's and every later stage's approvals), frozen evidence and evidence
# of an approved model are refused. Progressions started before the patch keep the old behaviour.
PATCH_BASIS = "approval-binds-to-basis"
# Guidance (who acts next, what is missing, in words) is computed by engine.guidance where a state leaves the
# workflow, not kept in it. Progressions started before the patch keep filling it in on every change.
PATCH_GUIDANCE = "guidance-outside-the-workflow"
# Event payloads are normalised by engine.payload.json_payload, as the audit append does (one spelling of a JSON
# payload); progressions started before the patch keep their own conversion (datetimes as isoformat()).
PATCH_JSON_PAYLOAD = "one-json-payload-normaliser"
# Continue-as-new carries the workflow's memory (WorkflowMemory) beside its state, so deduplication survives it.
PATCH_MEMORY = "carry-memory-across-continue-as-new"
# Findings, conditions and exceptions: a gate is blocked by the policy's open findings, an approval may raise
# conditions (findings, as child workflows), an active exception waives a failing check; its lapse flags the
# model. Progressions started before the patch ignore the model's governance snapshots.
PATCH_FINDINGS = "findings"
# Life after production: monitoring results (Update ``record_monitoring``) whose breaches open the revalidation
# gate now or raise findings, missing results raising a finding, the revalidation period and depth scaled by the
# materiality tier (an input), and retirement (Update ``request_retirement``, a gate, undeploy, timers stop).
# Progressions started before the patch keep the calendar-only revalidation loop.
PATCH_MONITORING = "monitoring-and-retirement"
# A retried monitoring result waits only while a handler of this run is still applying it. Before, it waited until
# this run had its outcome or had no outcomes at all: a result applied by an earlier run (carried across
# continue-as-new), retried after this run applied another one, waited forever (the Update never completed).
PATCH_MONITORING_RETRY = "monitoring-retry-waits-only-for-its-own-run"
MONITORING_TIMEOUT = timedelta(seconds=60)
# Lean payloads: a check run is sent whose evidence it reads (``CheckSubject``), not the whole state, and its
# results come back without the check texts the stage definition holds (``full_results`` puts them back), so the
# history keeps hundreds of bytes per check run instead of the state; the read-model snapshot is written by the
# next ``record`` (as complete as before). Progressions started before the patch keep sending the state.
PATCH_LEAN = "lean-payloads"
# Lean Update results: decide, submit_evidence, withdraw, request_retirement and record_monitoring answer with what
# the caller needs (seq, status, current stage, the decision's or request's id), not the ~16 KB state, which every
# answer put into the history (3 decides: 48 of a credit journey's 107 KiB). Each handler awaited its own record,
# so the read-model snapshot holds the answer's seq; the API reads it there, as GET does. Progressions started
# before the patch keep answering with the state (the API takes either).
PATCH_LEAN_RESULTS = "lean-update-results"
# One patch for all of the above (issue 21: history and server work per journey). Each patch asked in a new run
# records a marker and, added by the SDK's core, a ``TemporalChangeVersion`` search-attribute upsert (a visibility
# write on the server): eight of them per credit journey. A run started with this patch asks only it and takes every
# patch above as applied; a run started before it (no marker) asks each patch where it always did, so every
# committed history replays unchanged (tests/workflow/test_replay.py). A new patch is asked on its own
# (``workflow.patched``), not through ``_patched``, until it is consolidated in turn.
# Such a run also upserts the stage and status search attributes once the workflow waits (every coroutine blocked:
# ``_sync_search_attributes``), with the values it then has, instead of at every change: no one outside sees a
# workflow between two of its waits, so the transient values (checks running, then the gate open, in one
# activation, or across the ``record`` local activities of one workflow task) were visibility writes nobody could
# read.
PATCH_CONSOLIDATED = "every-patch-of-2026"
CONSOLIDATED_PATCHES = frozenset({
    PATCH_RECORD_LOCAL, PATCH_RECORD_FAILURE, PATCH_BASIS, PATCH_GUIDANCE, PATCH_JSON_PAYLOAD, PATCH_MEMORY,
    PATCH_FINDINGS, PATCH_MONITORING, PATCH_MONITORING_RETRY, PATCH_LEAN, PATCH_LEAN_RESULTS})

CHECKS_TIMEOUT = timedelta(minutes=5)
DEPLOY_TIMEOUT = timedelta(minutes=5)
# Every scheduled activity but evaluate_monitoring (pure, sub-second) also has a heartbeat timeout
# (activities.contract.HEARTBEAT_TIMEOUT, 30 s) and heartbeats while it runs: an attempt lost with its worker is
# retried after 30 s, not after its start-to-close. No patch: activity options are not compared on replay (sdk-core
# matches a ScheduleActivityTask command to its recorded event by activity id and type only), which every committed
# history replaying unpatched proves (tests/workflow/test_replay.py); running progressions get the timeout on the
# next activity they schedule.

# Stage statuses during which new evidence re-runs the stage's checks.
RERUN_ON_EVIDENCE = {StageStatus.blocked, StageStatus.changes_requested, StageStatus.awaiting_approval}


def _refuse(refusal: Refusal) -> ApplicationError:
    return ApplicationError(refusal.message, refusal.model_dump(), type=refusal.code, non_retryable=True)


@workflow.defn(name=WORKFLOW_NAME)
class ProgressionWorkflow:
    @workflow.init
    def __init__(self, inp: ProgressionInput) -> None:
        self._input = inp
        self._stage_defs: dict[str, StageDef] = {s.name: s for s in inp.policy.route_for(inp.spec.target)}
        self._stage_defs[REVALIDATION_STAGE] = self._revalidation_stage_def()
        self._state = inp.resume_state or self._initial_state(inp)
        self._lock = asyncio.Lock()
        self._events: list[AuditEventIn] = []  # built, not yet written
        self._notifications: list[Notification] = []
        self._synced_seq = -1
        self._registered = inp.resume_state is not None
        self._decision_results: dict[str, DecideResult] = {}
        self._decisions_recorded: set[str] = set()
        # Ids of applied evidence submissions: a retry is answered, not applied again (carried across continue-as-new).
        self._evidence_requests: set[str] = set(inp.resume_memory.evidence_requests if inp.resume_memory else [])
        self._gate_epoch = 0  # bumps when a gate (re)opens, so the SLA wait recomputes its deadline
        self._sa_last: tuple[str | None, str] | None = None
        self._consolidated: bool | None = None  # PATCH_CONSOLIDATED, asked by whatever asks a patch first
        self._records_in_flight = 0  # record local activities running (the workflow task goes on meanwhile)
        self._binding = False  # set in run: PATCH_BASIS
        self._guidance_in_state = False  # set in run: PATCH_GUIDANCE
        self._one_normaliser = False  # set in run: PATCH_JSON_PAYLOAD
        self._governed = False  # set in run: PATCH_FINDINGS
        self._restart: int | None = None  # route index the main loop goes back to (evidence re-opened it)
        self._deploying = False
        # Patch ``monitoring``: known from a resumed state at once (an Update may arrive before ``run`` starts).
        self._monitored = inp.resume_state is not None and inp.resume_state.monitoring is not None
        self._monitoring_outcomes: dict[str, MonitoringOutcome] = {}
        self._monitoring_applying: set[str] = set()  # result ids a handler of this run is applying now
        self._stage_defs[RETIREMENT_STAGE] = StageDef(
            name=RETIREMENT_STAGE, description="retirement of the model in production",
            approvals=inp.policy.retirement_approvals())
        self._pin_basis_facts(inp)

    def _pin_basis_facts(self, inp: ProgressionInput) -> None:
        """Facts of the pinned spec and policy the basis and the evidence rules read (pure)."""
        state = self._state
        state.spec_digest = state.spec_digest or spec_digest(inp.spec)
        state.artifact = inp.spec.version.artifact
        state.artifact_digest = inp.spec.version.artifact_digest
        state.frozen_after = {n: r.frozen_after for n, r in inp.policy.evidence.items() if r.frozen_after}
        for stage in state.stages:
            stage_def = self._stage_defs.get(stage.name)
            if stage.reads is None and stage_def is not None:
                stage.reads = stage_evidence_reads(stage_def)

    # ---- construction -------------------------------------------------------------------

    def _revalidation_stage_def(self) -> StageDef:
        validation = self._input.policy.stage("validation")
        rules = list(validation.approvals) if validation and validation.approvals else [
            ApprovalRule(role=Role.model_risk_officer, count=1)]
        return StageDef(name=REVALIDATION_STAGE, description="periodic revalidation of the model in production",
                        approvals=rules)

    @staticmethod
    def _progress(stage: StageDef) -> list[ApprovalProgress]:
        return [ApprovalProgress(role=a.role, count=a.count, sla=a.sla, escalate_to=a.escalate_to)
                for a in stage.approvals]

    def _initial_state(self, inp: ProgressionInput) -> ProgressionState:
        now = workflow.now()
        spec = inp.spec
        stages = [StageState(name=s.name, action=s.action, approvals=self._progress(s))
                  for s in inp.policy.route_for(spec.target)]
        return ProgressionState(
            progression_id=workflow.info().workflow_id, model_id=spec.model.id, model_name=spec.model.name,
            team=spec.model.team, business_intent=spec.model.business_intent, risk_tier=inp.policy.risk_tier,
            version_id=spec.version.id, target=spec.target, policy_hash=inp.policy_hash, stages=stages,
            submitted_by=inp.submitted_by.user_id, submitted_by_username=inp.submitted_by.username,
            started_at=now, updated_at=now, evidence=dict(inp.evidence),
            current_stage=stages[0].name if stages else None,
            independent_stages=[list(g) for g in inp.policy.independent_stages])

    # ---- query ----------------------------------------------------------------------------

    @workflow.query(name=QUERY_STATE)
    def state(self) -> ProgressionState:
        return guided(self._state)

    # ---- main loop ------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: ProgressionInput) -> ProgressionState:
        try:
            return await self._run(inp)
        except ActivityError as err:
            # Histories from before the patch failed here without a record; they replay unchanged.
            if not self._patched(PATCH_RECORD_FAILURE):
                raise
            await self._record_failure(err)
            raise ApplicationError(self._state.failure or "the progression failed", type="progression_failed",
                                   non_retryable=True) from err

    async def _record_failure(self, err: ActivityError) -> None:
        cause = err.cause
        code = cause.type if isinstance(cause, ApplicationError) and cause.type else "activity_failed"
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        state = self._state
        state.status = Status.failed
        state.failure = f"{code}: {message}"
        if self._guidance_in_state:
            state.waiting_on, state.missing, state.next_action = [], [], FAILED_ACTION
        state.seq += 1
        state.updated_at = workflow.now()
        self._upsert_search_attributes()
        self._emit(EventType.progression_failed, stage=state.current_stage, payload={
            "code": code, "reason": message, "registered": self._registered})
        events, self._events = self._events, []
        await workflow.execute_activity(
            RECORD_FAILURE,
            RecordFailureInput(state=state, spec=self._input.spec, events=events), result_type=RecordResult,
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
            heartbeat_timeout=HEARTBEAT_TIMEOUT)

    async def _run(self, inp: ProgressionInput) -> ProgressionState:
        self._binding = self._patched(PATCH_BASIS)
        self._guidance_in_state = not self._patched(PATCH_GUIDANCE)
        self._one_normaliser = self._patched(PATCH_JSON_PAYLOAD)
        self._governed = self._patched(PATCH_FINDINGS)
        self._monitored = self._patched(PATCH_MONITORING)
        self._lean_answers()
        self._upsert_search_attributes(everything=True)
        if self._consolidated:
            asyncio.create_task(self._sync_search_attributes())  # noqa: RUF006 (lives as long as the run)
        if not self._registered:
            await self._register()
        route = self._route_defs()
        index = 0
        while index < len(route):  # by index: evidence that changes may send it back (``_restart``)
            stage_def = route[index]
            stage = self._stage(stage_def.name)
            if stage.status == StageStatus.passed:
                index += 1
                continue  # resumed after continue-as-new
            if stage.status == StageStatus.pending:
                async with self._lock:
                    if self._restart is None:  # re-opened while this waited for the lock: go back first
                        self._enter_stage(stage)
                        await self._run_checks(stage_def, stage, first=index == 0)
            ready = await self._wait_stage_ready(stage)
            if self._closed():
                return await self._finish()
            if self._restart is not None:
                index, self._restart = self._restart, None
                continue
            if not ready:
                return await self._finish()
            if stage_def.action == "deploy":
                self._deploying = True  # no evidence change while the target works (refused)
                await self._deploy(stage_def, stage)
                self._deploying = False
                if self._closed():
                    return await self._finish()
            self._pass_stage(stage)
            index += 1

        if self._state.status not in FINAL_STATUSES and self._state.status != Status.in_production:
            in_production = self._state.deployed_at is not None and self._state.target == "production"
            self._state.status = Status.in_production if in_production else Status.approved
            self._state.current_stage = None
            kind = EventType.progression_in_production if in_production else EventType.progression_approved
            self._emit(kind, payload={"deployed_at": self._state.deployed_at})
            self._notify("finished", [], f"{self._state.model_id} {self._state.version_id} is "
                                         f"{self._state.status.value.replace('_', ' ')}")
            self._touch()
        if self._state.status == Status.in_production and self._monitored:
            await self._production()
        elif self._state.status == Status.in_production and self._input.policy.revalidation_delta:
            await self._revalidation_cycles(self._input.policy.revalidation_delta)
        return await self._finish()

    def _route_defs(self) -> list[StageDef]:
        return [self._stage_defs[s.name] for s in self._state.stages if s.name not in POST_PRODUCTION_STAGES]

    async def _register(self) -> None:
        inp = self._input
        self._emit(EventType.progression_started, actor_id=inp.submitted_by.user_id, payload={
            "spec": inp.spec.model_dump(mode="json", by_alias=True),
            "policy_intent": inp.policy.intent,
            "policy_hash": inp.policy_hash,
            "evidence": {name: ref.sha256 for name, ref in inp.evidence.items()},
            "submitted_by": inp.submitted_by.username,
            "route": [s.name for s in self._state.stages],
        })
        self._touch()
        events, self._events = self._events, []
        registered = await workflow.execute_activity(
            REGISTER_PROGRESSION,
            RegisterInput(state=self._state, spec=inp.spec, spec_yaml=inp.spec_yaml, events=events),
            result_type=RegisterResult,
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
            heartbeat_timeout=HEARTBEAT_TIMEOUT)
        # Earlier rejections of the same artifact or commit (found by the activity, so recorded in
        # history): every decider sees them and an approval must acknowledge them.
        self._state.prior_rejections = list(registered.prior_rejections)
        self._synced_seq = self._state.seq
        self._registered = True
        if self._governed and registered.governance is not None:
            self._apply_governance(registered.governance)

    async def _wait_stage_ready(self, stage: StageState) -> bool:
        """Wait until the stage may complete (True) or the progression closed (False).

        Races the gate's SLA: when it expires, the escalation is recorded and notified once per
        gate opening, and the wait goes on. Continue-as-new happens here, at a quiet point.
        """
        while True:
            if self._restart is not None:
                return True  # the caller goes back to the re-opened stage
            await self._flush()
            epoch = self._gate_epoch
            timeout = self._sla_remaining(stage)
            if timeout is not None and timeout <= timedelta(0):
                await self._escalate(stage)
                continue
            overdue = self._overdue_deadline() if self._monitored and stage.name in POST_PRODUCTION_STAGES \
                else None
            if overdue is not None:  # a gate open in production: missing results still raise their finding
                if overdue <= workflow.now():
                    await self._raise_overdue()
                    continue
                timeout = min(timeout, overdue - workflow.now()) if timeout is not None else overdue - workflow.now()
            try:
                await workflow.wait_condition(
                    lambda e=epoch: self._closed() or self._stage_ready(stage) or self._gate_epoch != e  # type: ignore[misc]
                    or self._restart is not None or workflow.info().is_continue_as_new_suggested(),
                    timeout=timeout)
            except TimeoutError:
                continue  # the loop recomputes: escalates what is overdue now
            # Let running handlers finish (their audit appends) before acting on what they changed.
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._closed() or (stage.name == RETIREMENT_STAGE and stage.status == StageStatus.rejected):
                return False
            if self._restart is not None or self._stage_ready(stage):
                return True
            if workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new()

    async def _revalidation_cycles(self, period: timedelta) -> None:
        while not self._closed():
            state = self._state
            if state.revalidation_due_at is None:
                state.revalidation_due_at = (state.deployed_at or workflow.now()) + period
                self._touch()
            stage = self._state.stage(REVALIDATION_STAGE)
            if stage is None or stage.status in (StageStatus.pending, StageStatus.passed):
                await self._flush()
                due = state.revalidation_due_at
                try:
                    await workflow.wait_condition(
                        lambda: self._closed() or workflow.info().is_continue_as_new_suggested(),
                        timeout=max(due - workflow.now(), timedelta(0)))
                except TimeoutError:
                    pass
                if self._closed():
                    return
                if workflow.now() < due:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    await self._continue_as_new()
                stage = self._open_revalidation()
            if not await self._wait_stage_ready(stage):
                return
            self._pass_stage(stage)
            state.revalidations += 1
            state.revalidation_overdue = False
            state.revalidation_due_at = workflow.now() + period
            state.current_stage = None
            self._emit(EventType.revalidation_completed, stage=REVALIDATION_STAGE,
                       payload={"revalidations": state.revalidations, "next_due_at": state.revalidation_due_at})
            self._touch()

    def _open_revalidation(self, trigger: Breach | None = None) -> StageState:
        state = self._state
        stage = state.stage(REVALIDATION_STAGE)
        if stage is None:
            stage = StageState(name=REVALIDATION_STAGE)
            state.stages.append(stage)
        stage_def = self._stage_defs[REVALIDATION_STAGE]
        stage.status = StageStatus.pending
        stage.checks = []
        stage.decisions = []  # previous cycles' decisions live in the audit trail and decisions table
        stage.approvals = self._progress(stage_def)
        stage.completed_at = None
        state.revalidation_overdue = trigger is None
        self._enter_stage(stage)
        if trigger is None:
            self._emit(EventType.revalidation_due, stage=REVALIDATION_STAGE,
                       payload={"due_at": state.revalidation_due_at, "cycle": state.revalidations + 1})
        else:  # a monitoring breach opened it before the calendar date: the breach is its evidence
            self._emit(EventType.revalidation_triggered, stage=REVALIDATION_STAGE, payload={
                "cycle": state.revalidations + 1, "calendar_due_at": state.revalidation_due_at,
                "breach": trigger.model_dump(mode="json")})
            self._notify("monitoring", [Role.model_developer, *open_gate_roles(stage)], stage=REVALIDATION_STAGE,
                         message=f"{state.model_id} {state.version_id}: monitoring breach {trigger.rule_id} "
                                 f"({trigger.severity}, period {trigger.period.isoformat()}) opened its "
                                 "revalidation now")
        self._open_gate(stage_def, stage)
        self._touch()
        return stage

    # ---- life after production (patch ``monitoring``) ---------------------------------------

    def _tier(self) -> int:
        return self._input.materiality_tier or self._input.policy.risk_tier

    def _mon(self) -> MonitoringState:
        if self._state.monitoring is None:
            self._state.monitoring = MonitoringState(tier=self._tier())
        return self._state.monitoring

    def _post_production_gate(self) -> StageState | None:
        state = self._state
        stage = state.stage(state.current_stage) if state.current_stage else None
        if stage is not None and stage.name in POST_PRODUCTION_STAGES and stage.status not in (
                StageStatus.passed, StageStatus.rejected):
            return stage
        return None

    async def _production(self) -> None:
        """In production: race the revalidation date (by the materiality tier), the monitoring overdue deadline, a
        breach that triggers revalidation now, and the owner's retirement request; stop when retired."""
        state, policy = self._state, self._input.policy
        tier = self._tier()
        period = policy.revalidation_for(tier)
        self._stage_defs[REVALIDATION_STAGE] = StageDef(
            name=REVALIDATION_STAGE, description=f"revalidation of the model in production (tier {tier})",
            approvals=policy.revalidation_approvals(tier))
        mon = self._mon()
        mon.tier = tier
        while not self._closed():
            gate = self._post_production_gate()
            if gate is not None:
                await self._settle_gate(gate, period)
                continue
            if period is not None and state.revalidation_due_at is None:
                state.revalidation_due_at = (state.deployed_at or workflow.now()) + period
                self._touch()
            await self._flush()
            deadlines = [d for d in (state.revalidation_due_at if period else None, self._overdue_deadline()) if d]
            timeout = max(min(deadlines) - workflow.now(), timedelta(0)) if deadlines else None
            try:
                await workflow.wait_condition(
                    lambda: self._closed() or mon.trigger is not None or self._post_production_gate() is not None
                    or workflow.info().is_continue_as_new_suggested(), timeout=timeout)
            except TimeoutError:
                pass
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._closed() or self._post_production_gate() is not None:
                continue
            now = workflow.now()
            overdue = self._overdue_deadline()
            if overdue is not None and now >= overdue:
                await self._raise_overdue()
            elif mon.trigger is not None:
                mon.triggered_by, mon.trigger = mon.trigger, None
                self._open_revalidation(trigger=mon.triggered_by)
            elif period is not None and state.revalidation_due_at is not None and now >= state.revalidation_due_at:
                self._open_revalidation()
            elif workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new()

    async def _settle_gate(self, stage: StageState, period: timedelta | None) -> None:
        """Wait for an open revalidation or retirement gate; a decided revalidation restarts the calendar."""
        if not await self._wait_stage_ready(stage):
            if stage.name == REVALIDATION_STAGE and self._state.status == Status.retired:
                await self._undeploy(stage, reason="revalidation rejected")  # retired means undeployed
            return  # closed, or the retirement was declined
        state = self._state
        if stage.name == RETIREMENT_STAGE:
            await self._retire(stage)
            return
        self._pass_stage(stage)
        mon = self._mon()
        state.revalidations += 1
        state.revalidation_overdue = False
        state.revalidation_due_at = workflow.now() + period if period is not None else None
        state.current_stage = None
        self._emit(EventType.revalidation_completed, stage=REVALIDATION_STAGE, payload={
            "revalidations": state.revalidations, "next_due_at": state.revalidation_due_at,
            "triggered_by": mon.triggered_by.rule_id if mon.triggered_by else None})
        mon.triggered_by = None
        self._touch()

    def _overdue_deadline(self) -> datetime | None:
        """No results for ``overdue_after`` periods since the last result (or the deployment): a finding, once per
        gap (the next one only after results arrived again)."""
        rules, mon = self._input.policy.monitoring, self._mon()
        if rules is None or not rules.overdue_after:
            return None
        last_result, last_overdue = mon.last_result_at, mon.last_overdue_at
        if last_overdue is not None and (last_result is None or last_result <= last_overdue):
            return None
        since = [d for d in (mon.last_result_at, self._state.deployed_at) if d is not None]
        return max(since) + rules.period_delta * rules.overdue_after if since else None

    async def _raise_overdue(self) -> None:
        state, rules, mon = self._state, self._input.policy.monitoring, self._mon()
        assert rules is not None
        now = workflow.now()
        mon.last_overdue_at = now
        text = (f"no monitoring results for {rules.overdue_after} periods of {rules.period} (last: "
                f"{mon.last_result_at.date().isoformat() if mon.last_result_at else 'never'})")
        findings = []
        if self._input.policy.findings is not None:
            findings.append(self._monitoring_finding(
                severity=rules.overdue_severity, title="Monitoring results overdue", description=text,
                refs=[], raised_by="system:monitoring", username="monitoring overdue"))
        self._emit(EventType.monitoring_overdue, payload={
            "last_result_at": mon.last_result_at, "periods": rules.overdue_after, "period": rules.period,
            "finding_id": findings[0].finding_id if findings else None})
        self._notify("monitoring", [Role.model_developer, Role.model_risk_officer],
                     f"{state.model_id} {state.version_id}: {text}")
        self._touch()
        await self._start_findings(findings)
        await self._flush()

    async def _start_findings(self, findings: list[FindingRecord]) -> None:
        """Monitoring findings get their own deadline workflows, started by an activity: unlike conditions they
        are no children of this run, which continue-as-new or retirement may end while they stay open."""
        rules = self._input.policy.findings
        if not findings or rules is None:
            return
        await workflow.execute_activity(
            START_FINDINGS, StartFindingsInput(findings=findings, rules=rules), result_type=StartFindingsResult,
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
            heartbeat_timeout=HEARTBEAT_TIMEOUT)

    def _monitoring_finding(self, *, severity: str, title: str, description: str, refs: list[str],
                            raised_by: str, username: str) -> FindingRecord:
        rules = self._input.policy.findings
        assert rules is not None
        state, now = self._state, workflow.now()
        finding = FindingRecord(
            finding_id="F-" + workflow.uuid4().hex[:12], model_id=state.model_id, team=state.team,
            business_intent=state.business_intent, version_id=state.version_id,
            progression_id=state.progression_id, stage=MONITORING_STAGE, severity=severity, title=title[:300],
            description=description[:10_000], evidence_refs=refs, due_at=default_due(rules, severity, now),
            raised_by=raised_by, raised_by_username=username, raised_at=now)
        state.findings.append(finding.summary())
        state.unseen_conditions.append(finding.finding_id)
        return finding

    async def _retire(self, stage: StageState) -> None:
        """The retirement gate passed: tell the promotion target to undeploy, then the model is retired (the
        workflow ends, so every timer stops)."""
        self._pass_stage(stage)
        await self._flush()
        await self._undeploy(stage, reason=None)

    async def _undeploy(self, stage: StageState, *, reason: str | None) -> None:
        """Tell the promotion target to undeploy; the model is retired, stays in the inventory and the audit."""
        state, spec = self._state, self._input.spec
        request = state.retirement if stage.name == RETIREMENT_STAGE else None
        key = f"{state.progression_id}/{RETIREMENT_STAGE}/{stage.attempt}" if request is not None else \
            f"{state.progression_id}/{stage.name}/{state.revalidations + 1}/undeploy"
        deployment = Deployment(
            deployment_key=key, progression_id=state.progression_id, model_id=state.model_id,
            version_id=state.version_id, artifact=spec.version.artifact, stage=stage.name,
            business_intent=state.business_intent, policy_hash=state.policy_hash,
            artifact_digest=spec.version.artifact_digest, action="undeploy")
        result = await workflow.execute_activity(
            DEPLOY, DeployInput(deployment=deployment), result_type=DeployResult,
            start_to_close_timeout=DEPLOY_TIMEOUT, retry_policy=DEPLOY_RETRY,
            heartbeat_timeout=HEARTBEAT_TIMEOUT)
        state.status = Status.retired
        state.retired_at = workflow.now()
        state.current_stage = None
        state.revalidation_due_at = None
        state.revalidation_overdue = False
        self._emit(EventType.model_retired, stage=stage.name, payload={
            "undeployment_id": result.receipt.deployment_id, "target": result.receipt.target,
            "reason": request.reason if request else reason, "replacement": request.replacement if request else None,
            "requested_by": request.requested_by_username if request else None,
            "approved_by": {a.role.value: a.approved_by for a in stage.approvals} if request else {},
            "dependents": request.dependents if request else [],
            "override_id": request.override_id if request else None,
            "timers_stopped": ["revalidation", "monitoring"]})
        self._notify("finished", [Role.model_developer], stage=stage.name,
                     message=f"{state.model_id} {state.version_id} is retired"
                             + (f"; replaced by {request.replacement}" if request and request.replacement else ""))
        self._touch()

    # ---- Update: record_monitoring ------------------------------------------------------------

    def _monitoring_refusal(self, inp: MonitoringInput) -> Refusal | None:
        mon = self._state.monitoring
        if mon is not None and inp.result_id in mon.results:
            return None  # a retry of a delivered result gets its answer
        if not self._monitored:
            return Refusal(code="monitoring_unsupported", http_status=409,
                           message=f"{self._state.progression_id} started before monitoring results were accepted")
        rules = self._input.policy.monitoring
        refusal = (production_refusal(self._state) or poster_refusal(rules, inp.actor)
                   or metrics_refusal(rules, inp.metrics))
        if refusal is None and mon is not None and inp.period in mon.periods:
            refusal = Refusal(code="duplicate_period", http_status=409,
                              message=f"results for period {inp.period.isoformat()} of {self._state.model_id} were "
                                      "already received")
        return refusal

    @workflow.update(name=UPDATE_MONITORING)
    async def record_monitoring(self, inp: MonitoringInput) -> MonitoringOutcome:
        mon = self._mon()
        if inp.result_id in mon.results:
            if self._patched(PATCH_MONITORING_RETRY):
                await workflow.wait_condition(lambda: inp.result_id not in self._monitoring_applying)
            else:
                await workflow.wait_condition(lambda: inp.result_id in self._monitoring_outcomes
                                              or not self._monitoring_outcomes)
            breached = [b for b in mon.breaches if b.result_id == inp.result_id]
            if self._lean_answers():
                return self._monitoring_outcomes.get(inp.result_id) or MonitoringOutcome(
                    result_id=inp.result_id, period=inp.period, breaches=breached, **self._answer())
            return self._monitoring_outcomes.get(inp.result_id) or MonitoringOutcome(
                result_id=inp.result_id, period=inp.period, state=guided(self._snapshot()), breaches=breached)
        if refusal := self._monitoring_refusal(inp):
            raise _refuse(refusal)
        self._monitoring_applying.add(inp.result_id)
        try:
            return await self._apply_monitoring(inp, mon)
        finally:
            self._monitoring_applying.discard(inp.result_id)

    async def _apply_monitoring(self, inp: MonitoringInput, mon: MonitoringState) -> MonitoringOutcome:
        rules = self._input.policy.monitoring
        assert rules is not None
        state = self._state
        mon.results[inp.result_id] = inp.period
        mon.periods = sorted({*mon.periods, inp.period})[-KEEP:]
        mon.results = dict(sorted(mon.results.items(), key=lambda kv: kv[1])[-KEEP:])
        mon.last_result_at = workflow.now()
        evaluated = await workflow.execute_activity(
            EVALUATE_MONITORING, EvaluateMonitoringInput(rules=rules, metrics=inp.metrics),
            result_type=EvaluateMonitoringResult, start_to_close_timeout=MONITORING_TIMEOUT, retry_policy=DB_RETRY)
        by_id = {r.id: r for r in rules.rules}
        breaches = [Breach(rule_id=o.rule_id, description=by_id[o.rule_id].description, expr=by_id[o.rule_id].expr,
                           severity=by_id[o.rule_id].severity, action=by_id[o.rule_id].action, period=inp.period,
                           result_id=inp.result_id, reason=o.reason, inputs=o.inputs)
                    for o in evaluated.outcomes if o.breached and o.rule_id in by_id]
        self._emit(EventType.monitoring_received, actor_id=inp.actor.user_id, payload={
            "result_id": inp.result_id, "period": inp.period.isoformat(), "posted_by": inp.actor.username,
            "outcomes": [{"rule_id": o.rule_id, "breached": o.breached, "reason": o.reason}
                         for o in evaluated.outcomes]})
        actions: list[str] = []
        findings: list[FindingRecord] = []
        for breach in breaches:
            outcome: dict[str, Any] = {}
            if self._closed():
                break
            if breach.action == MonitoringAction.revalidate:
                revalidating = self._post_production_gate()
                if mon.trigger is not None or (revalidating is not None and revalidating.name == REVALIDATION_STAGE):
                    outcome = {"revalidation": "already_open"}
                    actions.append(f"{breach.rule_id}: the revalidation is already open; no second gate")
                else:
                    mon.trigger = breach
                    outcome = {"revalidation": "opens_now" if revalidating is None else "after_retirement_gate"}
                    actions.append(f"{breach.rule_id}: opens the revalidation gate now")
            else:
                key = f"{breach.rule_id}@{breach.period.isoformat()}"
                if key in mon.raised:
                    outcome = {"finding": "already_raised"}
                    actions.append(f"{breach.rule_id}: a finding was already raised for this period")
                else:
                    mon.raised = [*mon.raised, key][-KEEP:]
                    finding = self._monitoring_finding(
                        severity=breach.severity, title=f"Monitoring breach {breach.rule_id}: {breach.description}",
                        description=f"period {breach.period.isoformat()}: {breach.reason}",
                        refs=[f"monitoring:{inp.result_id}"], raised_by=inp.actor.user_id,
                        username=inp.actor.username)
                    findings.append(finding)
                    outcome = {"finding_id": finding.finding_id}
                    actions.append(f"{breach.rule_id}: raised finding {finding.finding_id} ({breach.severity})")
            self._emit(EventType.monitoring_breach, actor_id=inp.actor.user_id, payload={
                "result_id": inp.result_id, "period": inp.period.isoformat(), "rule_id": breach.rule_id,
                "severity": breach.severity, "action": breach.action.value, "reason": breach.reason,
                "inputs": breach.inputs, **outcome})
        mon.breaches = [*mon.breaches, *breaches][-KEEP:]
        if breaches:
            self._notify("monitoring", [Role.model_developer, Role.model_risk_officer],
                         f"{state.model_id} {state.version_id}, period {inp.period.isoformat()}: "
                         + "; ".join(actions))
        self._touch()
        await self._start_findings(findings)
        await self._flush()
        if self._lean_answers():
            result = MonitoringOutcome(result_id=inp.result_id, period=inp.period, breaches=breaches,
                                       actions=actions, **self._answer())
        else:
            result = MonitoringOutcome(result_id=inp.result_id, period=inp.period, breaches=breaches,
                                       actions=actions, state=guided(self._snapshot()))
        self._monitoring_outcomes[inp.result_id] = result
        return result

    @record_monitoring.validator
    def _validate_monitoring(self, inp: MonitoringInput) -> None:
        if refusal := self._monitoring_refusal(inp):
            raise _refuse(refusal)

    # ---- Update: request_retirement -----------------------------------------------------------

    def _retire_refusal(self, inp: RetireInput) -> Refusal | None:
        request = self._state.retirement
        if request is not None and request.request_id == inp.request_id:
            return None  # a retry
        if not self._monitored:
            return Refusal(code="retirement_unsupported", http_status=409,
                           message=f"{self._state.progression_id} started before retirement was a governed step")
        return retirement_refusal(self._state, inp.actor, dependents=inp.dependents, override_id=inp.override_id)

    @workflow.update(name=UPDATE_RETIRE)
    async def request_retirement(self, inp: RetireInput) -> RetireAnswer:
        state = self._state
        if state.retirement is not None and state.retirement.request_id == inp.request_id:
            if self._lean_answers():
                return RetireResult(request_id=inp.request_id, **self._answer())
            return guided(self._snapshot())
        if refusal := self._retire_refusal(inp):
            raise _refuse(refusal)
        state.retirement = RetirementRequest(
            request_id=inp.request_id, requested_by=inp.actor.user_id, requested_by_username=inp.actor.username,
            reason=inp.reason, replacement=inp.replacement, requested_at=workflow.now(), dependents=inp.dependents,
            override_id=inp.override_id, override_by=inp.override_by)
        stage = state.stage(RETIREMENT_STAGE)
        if stage is None:
            stage = StageState(name=RETIREMENT_STAGE)
            state.stages.append(stage)
        stage_def = self._stage_defs[RETIREMENT_STAGE]
        stage.status = StageStatus.pending
        stage.checks, stage.decisions = [], []
        stage.approvals = self._progress(stage_def)
        stage.completed_at = None
        self._enter_stage(stage)
        self._emit(EventType.retirement_requested, stage=RETIREMENT_STAGE, actor_id=inp.actor.user_id, payload={
            "request_id": inp.request_id, "actor": inp.actor.username, "reason": inp.reason,
            "replacement": inp.replacement, "dependents": inp.dependents, "override_id": inp.override_id,
            "override_by": inp.override_by, "credential_id": inp.actor.credential_id})
        self._open_gate(stage_def, stage)
        self._touch()
        await self._flush()
        if self._lean_answers():
            return RetireResult(request_id=inp.request_id, **self._answer())
        return guided(self._state)

    @request_retirement.validator
    def _validate_retirement(self, inp: RetireInput) -> None:
        if refusal := self._retire_refusal(inp):
            raise _refuse(refusal)

    def _decline_retirement(self, stage: StageState, inp: DecideInput) -> None:
        """A reject (or request for changes) at the retirement gate: the model stays in production."""
        state = self._state
        stage.status = StageStatus.rejected
        stage.completed_at = workflow.now()
        state.current_stage = None
        request, state.retirement = state.retirement, None
        self._gate_epoch += 1
        self._emit(EventType.retirement_declined, stage=RETIREMENT_STAGE, actor_id=inp.actor.user_id, payload={
            "decision": inp.decision.value, "comment": inp.comment,
            "request_id": request.request_id if request else None})
        self._notify("retirement", [Role.model_developer], stage=RETIREMENT_STAGE,
                     message=f"the retirement of {state.model_id} {state.version_id} was declined by "
                             f"{inp.actor.username}; it stays in production")

    async def _finish(self) -> ProgressionState:
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._flush()
        self._upsert_search_attributes()  # the final values, before the run completes
        return guided(self._state)

    async def _continue_as_new(self) -> None:
        await self._flush()
        carried: dict[str, Any] = {"resume_state": self._snapshot()}
        if self._patched(PATCH_MEMORY):  # runs continued before the patch forgot their evidence request ids
            carried["resume_memory"] = WorkflowMemory(evidence_requests=sorted(self._evidence_requests))
        self._upsert_search_attributes()  # the values this run ends with (a no-op for runs that upsert every change)
        workflow.continue_as_new(self._input.model_copy(update=carried))

    # ---- stage steps ----------------------------------------------------------------------

    def _stage(self, name: str) -> StageState:
        stage = self._state.stage(name)
        assert stage is not None, name
        return stage

    def _enter_stage(self, stage: StageState) -> None:
        stage.status = StageStatus.running
        stage.entered_at = workflow.now()
        # Re-entered after evidence re-opened an earlier stage: a new attempt (deployment keys use it).
        stage.attempt = stage.attempt + 1 if self._binding and stage.name != REVALIDATION_STAGE else 1
        self._state.current_stage = stage.name
        self._emit(EventType.stage_entered, stage=stage.name, payload={"attempt": stage.attempt})
        self._touch()

    async def _run_checks(self, stage_def: StageDef, stage: StageState, *, first: bool) -> None:
        """Evaluate the stage's checks and settle it: blocked, gate open, or ready. Caller holds the lock."""
        stage.status = StageStatus.running
        self._touch()
        if stage_def.checks or first:
            events, self._events = self._events, []
            lean = self._patched(PATCH_LEAN)
            state = self._state
            subject = CheckSubject(progression_id=state.progression_id, model_id=state.model_id,
                                   evidence=state.evidence) if lean else None
            result = await workflow.execute_activity(
                EVALUATE_CHECKS,
                EvaluateChecksInput(state=None if lean else state, subject=subject, spec=self._input.spec,
                                    stage=stage_def, is_first_stage=first, now=workflow.now(),
                                    event_id_prefix=str(workflow.uuid4()), events_before=events),
                result_type=EvaluateChecksResult, start_to_close_timeout=CHECKS_TIMEOUT, retry_policy=DB_RETRY,
                heartbeat_timeout=HEARTBEAT_TIMEOUT)
            if lean:  # the snapshot was not written by the check run: the next record writes it
                stage.checks = full_results(stage_def, result.results)
            else:
                self._synced_seq = max(self._synced_seq, self._state.seq)
                stage.checks = result.results
        if self._closed():
            return
        failing = [c for c in stage.checks if not c.passed]
        if self._governed and failing:
            waived = waived_checks(self._state, workflow.now())
            if all(c.check_id in waived for c in failing):
                self._emit(EventType.stage_unblocked, stage=stage.name, payload={
                    "attempt": stage.attempt, "waived": {c.check_id: waived[c.check_id] for c in failing}})
                failing = []
        if failing:
            stage.status = StageStatus.blocked
            self._emit(EventType.stage_blocked, stage=stage.name, payload={
                "attempt": stage.attempt, "failing": [{"check_id": c.check_id, "reason": c.reason} for c in failing]})
        elif stage_def.approvals:
            self._open_gate(stage_def, stage)
        self._touch()

    def _open_gate(self, stage_def: StageDef, stage: StageState) -> None:
        now = workflow.now()
        stage.status = StageStatus.awaiting_approval
        stage.gate_opened_at = now
        for progress, rule in zip(stage.approvals, stage_def.approvals, strict=True):
            progress.due_at = now + rule.sla_delta if rule.sla_delta else None
            progress.escalated = False
        self._gate_epoch += 1
        roles = open_gate_roles(stage)
        self._emit(EventType.gate_opened, stage=stage.name, payload={
            "attempt": stage.attempt,
            "approvals": [{"role": a.role.value, "count": a.count, "sla": a.sla, "due_at": a.due_at,
                           "escalate_to": a.escalate_to.value if a.escalate_to else None} for a in stage.approvals]})
        self._notify("gate_opened", roles, f"stage {stage.name} of {self._state.progression_id} awaits "
                                           f"{' and '.join(r.value for r in roles)}", stage=stage.name)

    def _stage_ready(self, stage: StageState) -> bool:
        if self._governed:
            waived = waived_checks(self._state, workflow.now())
            return (stage.status == StageStatus.running and not self._lock.locked()
                    and all(c.passed or c.check_id in waived for c in stage.checks)
                    and all(a.satisfied for a in stage.approvals) and not self._blocking(stage.name))
        return (stage.status == StageStatus.running and not self._lock.locked()
                and all(c.passed for c in stage.checks) and all(a.satisfied for a in stage.approvals))

    def _blocking(self, stage_name: str) -> list[Any]:
        return blocking_findings(self._state, self._input.policy.findings, stage_name) if self._governed else []

    def _closed(self) -> bool:
        return self._state.status in FINAL_STATUSES

    def _sla_remaining(self, stage: StageState) -> timedelta | None:
        if stage.status != StageStatus.awaiting_approval:
            return None
        dues = [a.due_at for a in stage.approvals if a.due_at and not a.satisfied and not a.escalated]
        return min(dues) - workflow.now() if dues else None

    async def _escalate(self, stage: StageState) -> None:
        now = workflow.now()
        for progress in stage.approvals:
            if progress.satisfied or progress.escalated or progress.due_at is None or progress.due_at > now:
                continue
            progress.escalated = True
            target = progress.escalate_to or progress.role
            self._emit(EventType.gate_escalated, stage=stage.name, payload={
                "role": progress.role.value, "sla": progress.sla, "due_at": progress.due_at,
                "escalate_to": target.value, "approved": len(progress.approved_by), "needed": progress.count})
            self._notify("escalated", [target], stage=stage.name,
                         message=f"stage {stage.name} of {self._state.progression_id} is past its {progress.sla} "
                                 f"SLA waiting on {progress.role.value}")
        self._touch()
        await self._flush()

    async def _deploy(self, stage_def: StageDef, stage: StageState) -> None:
        await self._flush()
        state, spec = self._state, self._input.spec
        approvals = [{"stage": s.name, "decision_id": d.decision_id, "actor": d.actor_username, "basis": d.basis}
                     for s in state.stages if s.name != REVALIDATION_STAGE for d in counted_approvals(s)]
        deployment = Deployment(
            deployment_key=f"{state.progression_id}/{stage.name}/{stage.attempt}", progression_id=state.progression_id,
            model_id=state.model_id, version_id=state.version_id, artifact=spec.version.artifact, stage=stage.name,
            business_intent=state.business_intent, policy_hash=state.policy_hash,
            artifact_digest=spec.version.artifact_digest,
            approval_bases=[a["basis"] for a in approvals if a["basis"]] if self._binding else [])
        result = await workflow.execute_activity(
            DEPLOY, DeployInput(deployment=deployment), result_type=DeployResult,
            start_to_close_timeout=DEPLOY_TIMEOUT, retry_policy=DEPLOY_RETRY,
            heartbeat_timeout=HEARTBEAT_TIMEOUT)
        if self._closed():
            return  # withdrawn while the target was working: the withdrawal stands
        state.deployed_at = workflow.now()
        self._emit(EventType.deployment, stage=stage.name, payload={
            "deployment_id": result.receipt.deployment_id, "target": result.receipt.target,
            "artifact": spec.version.artifact, "details": result.receipt.details,
            **({"artifact_digest": spec.version.artifact_digest, "approvals": approvals,
                "bases": {s.name: s.basis for s in state.stages if s.basis}} if self._binding else {})})
        self._touch()

    def _pass_stage(self, stage: StageState) -> None:
        stage.status = StageStatus.passed
        stage.completed_at = workflow.now()
        self._emit(EventType.stage_passed, stage=stage.name, payload={
            "attempt": stage.attempt,
            "approved_by": {a.role.value: a.approved_by for a in stage.approvals},
            **({"basis": stage.basis} if self._binding and stage.basis else {})})
        self._touch()

    # ---- Update: decide -------------------------------------------------------------------

    def _decide_refusal(self, inp: DecideInput) -> Refusal | None:
        if inp.decision_id in self._decision_results or self._known_decision(inp.decision_id):
            return None  # a retry of an applied decision gets its first answer back
        refusal = decision_refusal(self._state, inp.actor, inp.stage, inp.decision)
        if refusal is None:
            refusal = acknowledgement_refusal(self._state, inp.decision, inp.comment)
        if refusal is None:
            refusal = comment_refusal(inp.decision, inp.comment)
        if refusal is None:
            refusal = basis_refusal(self._state, inp.stage, inp.basis)
        if refusal is None:
            refusal = self._findings_refusal(inp)
        return refusal

    def _findings_refusal(self, inp: DecideInput) -> Refusal | None:
        """Conditions only with an approval, under a policy with a findings section; no approval while the
        policy's open findings block the stage."""
        if not self._governed:
            if inp.conditions:
                return Refusal(code="conditions_unsupported", http_status=409,
                               message=f"{self._state.progression_id} started before approvals could carry "
                                       "conditions; raise the findings on the model instead")
            return None
        rules = self._input.policy.findings
        if inp.conditions and inp.decision != DecisionKind.approve:
            return Refusal(code="conditions_need_approval", http_status=422,
                           message="conditions come with an approval (approve_with_conditions)")
        if refusal := conditions_refusal(inp.conditions, rules, workflow.now()):
            return refusal
        if inp.decision == DecisionKind.approve:
            return blocking_refusal(self._state, rules, inp.stage)
        return None

    def _known_decision(self, decision_id: str) -> bool:
        return any(d.decision_id == decision_id for s in self._state.stages for d in s.decisions)

    @workflow.update(name=UPDATE_DECIDE)
    async def decide(self, inp: DecideInput) -> DecideResult:
        if inp.decision_id in self._decision_results or self._known_decision(inp.decision_id):
            await workflow.wait_condition(lambda: inp.decision_id in self._decisions_recorded
                                          or inp.decision_id not in self._decision_results)
            return self._decision_results.get(inp.decision_id) or self._decide_result(inp.decision_id, retry=True)
        refusal = self._decide_refusal(inp)
        if refusal is not None:  # the state moved between validator and handler
            raise _refuse(refusal)
        state, stage, actor = self._state, self._stage(inp.stage), inp.actor
        role = counting_role(stage, actor) if inp.decision == DecisionKind.approve else next(
            (a.role for a in stage.approvals if a.role in actor.roles), None)
        parts = basis_parts(state, stage.name) if self._binding else None
        basis = basis_hash(parts) if parts is not None else None
        conditions = self._condition_findings(inp)
        record = DecisionRecord(decision_id=inp.decision_id, stage=stage.name, decision=inp.decision,
                                actor_id=actor.user_id, actor_username=actor.username, role=role,
                                comment=inp.comment, at=workflow.now(), credential_id=actor.credential_id,
                                credential_issued_by=actor.credential_issued_by, basis=basis,
                                basis_matches=True if basis else None,
                                conditions=[c.finding_id for c in conditions])
        stage.decisions.append(record)
        self._emit(EventType.decision_received, stage=stage.name, actor_id=actor.user_id, payload={
            "decision_id": inp.decision_id,
            "decision": "approve_with_conditions" if conditions else inp.decision.value, "actor": actor.username,
            **({"conditions": [{"finding_id": c.finding_id, "severity": c.severity, "title": c.title,
                                "due_at": c.due_at} for c in conditions]} if conditions else {}),
            "role": role.value if role else None, "comment": inp.comment, "attempt": stage.attempt,
            "credential_id": actor.credential_id, "credential_issued_by": actor.credential_issued_by,
            **({"basis": basis, "basis_parts": parts, "basis_seen": inp.basis} if parts is not None else {})})
        if inp.decision == DecisionKind.approve:
            progress = next(a for a in stage.approvals if a.role == role)
            progress.approved_by.append(actor.user_id)
            if all(a.satisfied for a in stage.approvals):
                stage.status = StageStatus.running  # gate complete; the main loop finishes the stage
        elif stage.name == RETIREMENT_STAGE:
            self._decline_retirement(stage, inp)
        elif inp.decision == DecisionKind.reject:
            stage.status = StageStatus.rejected
            stage.completed_at = workflow.now()
            final = Status.retired if stage.name == REVALIDATION_STAGE else Status.rejected
            state.status = final
            self._emit(EventType.progression_rejected, stage=stage.name, actor_id=actor.user_id,
                       payload={"status": final.value, "comment": inp.comment})
            self._notify("finished", [], f"{state.progression_id} is {final.value} at stage {stage.name}",
                         stage=stage.name)
        else:
            stage.status = StageStatus.changes_requested
            self._emit(EventType.changes_requested, stage=stage.name, actor_id=actor.user_id,
                       payload={"comment": inp.comment})
        self._notify("decided", [Role.model_developer],
                     f"{actor.username} decided {inp.decision.value} on stage {stage.name}", stage=stage.name)
        self._touch()
        result = self._decide_result(inp.decision_id)  # the flush below records this seq
        self._decision_results[inp.decision_id] = result
        if conditions:
            await self._raise_conditions(conditions)
        await self._flush(decision=record)
        self._decisions_recorded.add(inp.decision_id)
        return result

    def _condition_findings(self, inp: DecideInput) -> list[FindingRecord]:
        """The approval's conditions as findings of the model (synchronously, with the decision: nothing else
        can slip in between); ``_raise_conditions`` then starts their deadline workflows."""
        rules = self._input.policy.findings
        if not inp.conditions or rules is None:  # the validator refused conditions without a findings section
            return []
        state, now = self._state, workflow.now()
        raised: list[FindingRecord] = []
        for condition in inp.conditions:
            finding = FindingRecord(
                finding_id="F-" + workflow.uuid4().hex[:12], model_id=state.model_id, team=state.team,
                business_intent=state.business_intent, version_id=state.version_id,
                progression_id=state.progression_id, stage=inp.stage, severity=condition.severity,
                title=condition.title, description=condition.description, evidence_refs=condition.evidence_refs,
                due_at=condition.due_at or default_due(rules, condition.severity, now), condition=True,
                decision_id=inp.decision_id, raised_by=inp.actor.user_id, raised_by_username=inp.actor.username,
                raised_at=now)
            state.findings.append(finding.summary())
            state.unseen_conditions.append(finding.finding_id)
            raised.append(finding)
        return raised

    async def _raise_conditions(self, findings: list[FindingRecord]) -> None:
        """Each condition's deadline workflow: a child that outlives this progression (findings follow the
        model); its first activity writes the finding and tells the model's progressions."""
        rules = self._input.policy.findings
        for finding in findings:
            assert rules is not None
            await workflow.start_child_workflow(
                FINDING_WORKFLOW, FindingInput(finding=finding, rules=rules),
                id=finding_workflow_id(finding.finding_id), parent_close_policy=ParentClosePolicy.ABANDON)

    # ---- Signal: governance_changed (findings and exceptions of the model) ---------------------

    @workflow.signal(name=SIGNAL_GOVERNANCE)
    async def governance_changed(self, snapshot: GovernanceSnapshot) -> None:
        await workflow.wait_condition(lambda: self._registered)
        if not self._governed or snapshot.as_of <= self._state.governance_as_of or self._closed():
            return
        async with self._lock:
            self._apply_governance(snapshot)
            self._gate_epoch += 1  # the main loop re-evaluates what blocks the current stage
            await self._flush()

    def _apply_governance(self, snapshot: GovernanceSnapshot) -> None:
        """Adopt the model's findings and exceptions: a blocked stage whose failing checks are all waived now
        goes on; a waiver that lapsed puts its check back in force (the stage blocks again, or, once the stage
        has passed, the model is flagged); an overdue condition flags a model in production where the policy
        says so."""
        state = self._state
        # By status: the exception workflow lapses an exception at its expiry and says so in a snapshot.
        before = waived_checks(state, None)
        was_active = {e.exception_id: e for e in active_exceptions(state.exceptions, state.version_id, None)}
        shown = {f.finding_id for f in snapshot.findings}
        unseen = [f for f in state.findings if f.finding_id in state.unseen_conditions and f.finding_id not in shown]
        state.unseen_conditions = [i for i in state.unseen_conditions if i not in shown]
        state.findings, state.exceptions = list(snapshot.findings) + unseen, list(snapshot.exceptions)
        state.governance_as_of = snapshot.as_of
        after = waived_checks(state, None)
        still_active = {e.exception_id for e in active_exceptions(state.exceptions, state.version_id, None)}
        for lapsed in (e for i, e in sorted(was_active.items()) if i not in still_active and e.kind != "check"):
            what = f"finding {lapsed.finding_id} is open again" if lapsed.finding_id else "the adjustment ended"
            self._flag(f"exception {lapsed.exception_id} ({lapsed.kind}) lapsed: {what}",
                       {"exception_id": lapsed.exception_id, "finding_id": lapsed.finding_id})
        current = state.stage(state.current_stage) if state.current_stage else None
        for check_id, exception_id in sorted(before.items()):
            if check_id in after:
                continue
            stage = next((s for s in state.stages if any(c.check_id == check_id and not c.passed for c in s.checks)),
                         None)
            if stage is None:
                continue
            if stage is current and stage.status in (StageStatus.awaiting_approval, StageStatus.running):
                stage.status = StageStatus.blocked
                self._emit(EventType.stage_blocked, stage=stage.name, payload={
                    "attempt": stage.attempt, "failing": [{"check_id": check_id, "reason": f"exception "
                                                           f"{exception_id} lapsed: the check is back in force"}]})
            elif stage.status == StageStatus.passed:
                self._flag(f"exception {exception_id} lapsed: check {check_id} (stage {stage.name}) is back in "
                           "force and failed", {"exception_id": exception_id, "check_id": check_id,
                                                "stage": stage.name})
        if current is not None and current.status == StageStatus.blocked and current.checks:
            failing = [c for c in current.checks if not c.passed]
            if failing and all(c.check_id in after for c in failing):
                self._emit(EventType.stage_unblocked, stage=current.name, payload={
                    "attempt": current.attempt, "waived": {c.check_id: after[c.check_id] for c in failing}})
                stage_def = self._stage_defs[current.name]
                if stage_def.approvals:
                    self._open_gate(stage_def, current)
                else:
                    current.status = StageStatus.running
        rules = self._input.policy.findings
        if rules is not None and rules.overdue_condition_flags_model and state.status == Status.in_production:
            for f in state.findings:
                if f.condition and f.overdue and f.status in OPEN_STATUSES:
                    self._flag(f"condition {f.finding_id} ({f.severity}: {f.title}) is overdue: the model needs "
                               "revalidation", {"finding_id": f.finding_id, "reason": "condition_overdue"})
        self._touch()

    def _flag(self, text: str, payload: dict[str, Any]) -> None:
        if text in self._state.flags:
            return
        self._state.flags.append(text)
        self._emit(EventType.model_flagged, payload={"flag": text, **payload})
        self._notify("flagged", [Role.model_developer, Role.model_risk_officer], f"{self._state.model_id} "
                     f"{self._state.version_id} flagged: {text}")

    @decide.validator
    def _validate_decide(self, inp: DecideInput) -> None:
        refusal = self._decide_refusal(inp)
        if refusal is not None:
            raise _refuse(refusal)

    # ---- Update: submit_evidence ----------------------------------------------------------

    @workflow.update(name=UPDATE_SUBMIT_EVIDENCE)
    async def submit_evidence(self, inp: EvidenceInput) -> EvidenceAnswer:
        if inp.request_id in self._evidence_requests:
            return self._evidence_result(inp.request_id, snapshot=True)
        self._evidence_requests.add(inp.request_id)
        await workflow.wait_condition(lambda: self._registered)
        async with self._lock:
            if self._closed():
                raise _refuse(Refusal(code="progression_closed", http_status=409,
                                      message=f"progression {self._state.progression_id} is "
                                              f"{self._state.status.value}"))
            if self._binding:  # the state may have moved since the validator ran
                refusal = self._evidence_change_refusal(inp)
                if refusal is not None:
                    self._evidence_requests.discard(inp.request_id)  # a retry is judged again, not "done"
                    raise _refuse(refusal)
            now, actor = workflow.now(), inp.actor
            refs = [ref.model_copy(update={"name": name, "added_by": actor.user_id, "added_at": now})
                    for name, ref in sorted(inp.evidence.items())]
            previous = {n: r.sha256 for n, r in self._state.evidence.items()}
            changed = sorted(r.name for r in refs if previous.get(r.name) != r.sha256)
            for ref in refs:
                self._state.evidence[ref.name] = ref
            if self._binding:
                await self._evidence_changed(inp, refs, previous, changed)
                return self._evidence_result(inp.request_id)
            stage = self._state.stage(self._state.current_stage) if self._state.current_stage else None
            rerun = stage is not None and stage.status in RERUN_ON_EVIDENCE
            self._emit(EventType.evidence_submitted, stage=stage.name if stage else None, actor_id=actor.user_id,
                       payload={"request_id": inp.request_id, "actor": actor.username,
                                "evidence": {r.name: r.sha256 for r in refs},
                                "replaced": {r.name: previous[r.name] for r in refs if r.name in previous},
                                "reruns_checks": rerun, "approvals_reset": bool(rerun and stage and any(
                                    a.approved_by for a in stage.approvals))})
            self._touch()
            await self._flush(evidence=refs)
            if stage is not None and rerun:
                self._reset_stage(stage)
                stage_def = self._stage_defs[stage.name]
                await self._run_checks(stage_def, stage, first=stage is self._state.stages[0])
                await self._flush()
        return self._evidence_result(inp.request_id)

    def _reopen_target(self, changed: list[str]) -> int | None:
        """The earliest stage that has passed or is current and reads a changed item; else the current
        stage when it waits for evidence (blocked, changes requested); else ``None``."""
        route = [s for s in self._state.stages if s.name != REVALIDATION_STAGE]
        for index, stage in enumerate(route):
            if stage.status == StageStatus.pending:
                break
            if reads_of(self._state, stage, changed):
                return index
        current = self._state.current_stage
        names = [s.name for s in route]
        waiting = self._state.stage(current) if current else None
        if waiting is not None and current in names and waiting.status in (StageStatus.blocked,
                                                                            StageStatus.changes_requested):
            return names.index(waiting.name)
        return None

    async def _evidence_changed(self, inp: EvidenceInput, refs: list[EvidenceRef], previous: dict[str, str],
                                changed: list[str]) -> None:
        """Apply new evidence (caller holds the lock): go back to the earliest stage it affects."""
        state, actor = self._state, inp.actor
        target = self._reopen_target(changed)
        route = [s for s in state.stages if s.name != REVALIDATION_STAGE]
        reopened = route[target] if target is not None else None
        superseded = [d.decision_id for s in route[target:] for d in s.decisions if not d.superseded] \
            if target is not None else []
        self._emit(EventType.evidence_submitted, stage=state.current_stage, actor_id=actor.user_id,
                   payload={"request_id": inp.request_id, "actor": actor.username,
                            "evidence": {r.name: r.sha256 for r in refs},
                            "replaced": {r.name: previous[r.name] for r in refs if r.name in previous},
                            "changed": changed, "reruns_checks": reopened is not None,
                            "reopens": reopened.name if reopened else None,
                            "approvals_reset": bool(superseded)})
        if target is None or reopened is None:
            self._touch()
            await self._flush(evidence=refs)
            return
        # Synchronously (no await before the gate is closed): a decision cannot slip in on the old gate.
        from_stage = state.current_stage
        for later in route[target + 1:]:
            if later.status != StageStatus.pending:
                self._supersede(later, changed)
                later.status = StageStatus.pending
                later.checks = []
                later.completed_at = None
                later.gate_opened_at = None
        self._supersede(reopened, changed)
        reopened.attempt += 1
        reopened.completed_at = None
        reopened.status = StageStatus.running
        state.current_stage = reopened.name
        self._emit(EventType.stage_reopened, stage=reopened.name, actor_id=actor.user_id, payload={
            "attempt": reopened.attempt, "from_stage": from_stage, "changed": {n: state.evidence[n].sha256
                                                                               for n in changed},
            "reason": "evidence changed" if changed else "evidence resubmitted",
            "superseded_decisions": superseded})
        roles = sorted({a.role for s in route[target:] for a in s.approvals}, key=lambda r: r.value)
        self._notify("reopened", [Role.model_developer, *roles], stage=reopened.name,
                     message=f"stage {reopened.name} of {state.progression_id} re-opened: "
                             f"{', '.join(changed) or 'evidence'} changed"
                             + (f"; {len(superseded)} decision(s) superseded" if superseded else ""))
        self._restart = target
        self._gate_epoch += 1
        self._touch()
        await self._flush(evidence=refs)
        await self._run_checks(self._stage_defs[reopened.name], reopened, first=target == 0)
        await self._flush()

    def _supersede(self, stage: StageState, changed: list[str]) -> None:
        """The stage's decisions stay in the record as superseded; its gate starts over."""
        for progress in stage.approvals:
            progress.approved_by = []
            progress.escalated = False
            progress.due_at = None
        stage.decisions = [d.model_copy(update={"superseded": True, "basis_matches": False if d.basis else None})
                           for d in stage.decisions]
        stage.basis_changed = list(changed)

    def _evidence_change_refusal(self, inp: EvidenceInput) -> Refusal | None:
        if self._deploying:
            return Refusal(code="deployment_in_progress", http_status=409,
                           message=f"{self._state.progression_id} is being deployed; its evidence cannot change "
                                   "now (and not after: start a new version)")
        return evidence_change_refusal(self._state, {n: r.sha256 for n, r in inp.evidence.items()})

    def _reset_stage(self, stage: StageState) -> None:
        """New evidence: a new attempt of the stage, the gate's approvals start over."""
        stage.attempt += 1
        for progress in stage.approvals:
            progress.approved_by = []
            progress.escalated = False
            progress.due_at = None
        stage.decisions = [d.model_copy(update={"superseded": True}) for d in stage.decisions]
        self._emit(EventType.stage_entered, stage=stage.name, payload={"attempt": stage.attempt,
                                                                       "reason": "new evidence"})

    @submit_evidence.validator
    def _validate_submit_evidence(self, inp: EvidenceInput) -> None:
        if inp.request_id in self._evidence_requests:
            return
        # Same rule as the API's fast check: the owning team, the submitter, an admin, or a validator
        # attaching a validation report.
        refusal = evidence_refusal(self._state, inp.actor)
        if refusal is None and not inp.evidence:
            refusal = Refusal(code="no_evidence", http_status=409, message="no evidence was submitted")
        if refusal is None and self._binding:
            refusal = self._evidence_change_refusal(inp)
        if refusal is not None:
            raise _refuse(refusal)

    # ---- Update: withdraw -----------------------------------------------------------------

    @workflow.update(name=UPDATE_WITHDRAW)
    async def withdraw(self, inp: WithdrawInput) -> WithdrawAnswer:
        if self._closed():  # withdrawn between validator and handler
            if self._lean_answers():
                return WithdrawResult(request_id=inp.request_id, **self._answer())
            return guided(self._snapshot())
        await workflow.wait_condition(lambda: self._registered)
        state = self._state
        stage = state.stage(state.current_stage) if state.current_stage else None
        if stage is not None and stage.status not in (StageStatus.passed, StageStatus.rejected):
            stage.status = StageStatus.withdrawn
            stage.completed_at = workflow.now()
        state.status = Status.withdrawn
        self._emit(EventType.progression_withdrawn, stage=stage.name if stage else None, actor_id=inp.actor.user_id,
                   payload={"reason": inp.reason, "actor": inp.actor.username, "request_id": inp.request_id})
        self._notify("finished", [], f"{state.progression_id} was withdrawn by {inp.actor.username}")
        self._touch()
        await self._flush()
        if self._lean_answers():
            return WithdrawResult(request_id=inp.request_id, **self._answer())
        return guided(self._state)

    @withdraw.validator
    def _validate_withdraw(self, inp: WithdrawInput) -> None:
        refusal = withdraw_refusal(self._state, inp.actor)
        if refusal is not None:
            raise _refuse(refusal)

    # ---- bookkeeping ----------------------------------------------------------------------

    def _emit(self, event_type: EventType, *, stage: str | None = None, actor_id: str | None = None,
              payload: dict[str, Any] | None = None) -> None:
        self._events.append(AuditEventIn(
            event_id=str(workflow.uuid4()), event_type=event_type, occurred_at=workflow.now(), actor_id=actor_id,
            stage=stage, payload=json_payload(payload or {}) if self._one_normaliser else _jsonable(payload or {})))

    def _notify(self, kind: NotificationKind, roles: list[Role], message: str = "", *,
                stage: str | None = None) -> None:
        self._notifications.append(Notification(
            event_id=str(workflow.uuid4()), kind=kind, progression_id=self._state.progression_id,
            model_id=self._state.model_id, stage=stage, roles=roles, message=message))

    def _patched(self, patch_id: str) -> bool:
        """``workflow.patched`` for a patch of ``CONSOLIDATED_PATCHES``: true at once in a run started with
        ``PATCH_CONSOLIDATED``; asked on its own, where it always was, in a run started before it."""
        assert patch_id in CONSOLIDATED_PATCHES, patch_id
        return self._is_consolidated() or workflow.patched(patch_id)

    def _is_consolidated(self) -> bool:
        if self._consolidated is None:
            self._consolidated = workflow.patched(PATCH_CONSOLIDATED)
        return self._consolidated

    def _lean_answers(self) -> bool:
        """Patch ``lean-update-results``, asked by ``run`` and by any handler that answers first (an Update may run
        before ``run`` starts in a continued run's first task); the SDK keeps the first answer for the run."""
        return self._patched(PATCH_LEAN_RESULTS)

    def _answer(self, seq: int | None = None) -> dict[str, Any]:
        """A lean answer's fields. ``seq`` defaults to the highest one recorded: a handler answers after its own
        record (or, a retry, after the first attempt's), so the snapshot the caller reads holds its change."""
        state = self._state
        return {"seq": max(self._synced_seq, 0) if seq is None else seq, "status": state.status,
                "current_stage": state.current_stage}

    def _decide_result(self, decision_id: str, *, retry: bool = False) -> DecideResult:
        if not self._lean_answers():
            return DecideResult(accepted=True, decision_id=decision_id, state=guided(self._snapshot()))
        # A new decision answers with its own seq (its record is awaited before the Update completes); a retry of
        # a decision recorded earlier (maybe by an earlier run) with what is recorded now.
        return DecideResult(accepted=True, decision_id=decision_id,
                            **self._answer(None if retry else self._state.seq))

    def _evidence_result(self, request_id: str, *, snapshot: bool = False) -> EvidenceAnswer:
        if self._lean_answers():
            return EvidenceResult(request_id=request_id, **self._answer())
        return guided(self._snapshot() if snapshot else self._state)

    def _snapshot(self) -> ProgressionState:
        """A copy, for results kept or answered after the state may change again (decide).

        Activity inputs and handler return values take ``self._state`` itself: the SDK serialises
        an activity's input when it is scheduled and a handler's result when it returns, both
        before the workflow runs on, and a deep copy of a 15 KB state costs ~2 ms.
        """
        return self._state.model_copy(deep=True)

    async def _flush(self, *, decision: DecisionRecord | None = None, evidence: list[EvidenceRef] | None = None
                     ) -> None:
        """Write pending events, decision, evidence links and the state snapshot in one activity."""
        if not self._registered:
            return
        if not (self._events or self._notifications or decision or evidence) and self._synced_seq >= self._state.seq:
            return
        events, self._events = self._events, []
        notes, self._notifications = self._notifications, []
        seq = self._state.seq
        record = RecordInput(state=self._state, events=events, decision=decision, evidence=evidence or [],
                             notifications=notes)
        if self._patched(PATCH_RECORD_LOCAL):
            self._records_in_flight += 1
            try:
                await workflow.execute_local_activity(
                    RECORD, record, result_type=RecordResult, start_to_close_timeout=DB_TIMEOUT,
                    retry_policy=DB_RETRY)
            finally:
                self._records_in_flight -= 1
        else:  # progressions started before the patch keep their recorded commands
            await workflow.execute_activity(
                RECORD, record, result_type=RecordResult, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
                heartbeat_timeout=HEARTBEAT_TIMEOUT)
        self._synced_seq = max(self._synced_seq, seq)

    def _touch(self) -> None:
        """After every change: bump seq, recompute status (and bases), keep search attributes current."""
        state = self._state
        state.seq += 1
        state.updated_at = workflow.now()
        stage = state.stage(state.current_stage) if state.current_stage else None
        if state.status not in FINAL_STATUSES and state.status not in (Status.approved, Status.in_production):
            state.status = {
                StageStatus.blocked: Status.blocked,
                StageStatus.awaiting_approval: Status.awaiting_approval,
                StageStatus.changes_requested: Status.changes_requested,
            }.get(stage.status if stage else StageStatus.running, Status.running)
            if stage is not None and stage.status == StageStatus.running and self._blocking(stage.name):
                state.status = Status.blocked
        if self._governed:  # what guidance says of findings is read from the state (engine.guidance)
            blocking = self._blocking(stage.name) if stage is not None and state.status not in FINAL_STATUSES else []
            state.blocked_by = [f.finding_id for f in blocking]
        if self._binding:
            refresh_bases(state)
        if self._guidance_in_state:  # progressions started before PATCH_GUIDANCE keep it in their state
            for name, value in guidance(state).items():
                setattr(state, name, value)
        if not self._is_consolidated():  # runs started before PATCH_CONSOLIDATED upsert at every change
            self._upsert_search_attributes()

    def _search_attributes_due(self) -> bool:
        return self._records_in_flight == 0 and (self._state.current_stage, self._state.status.value) != self._sa_last

    async def _sync_search_attributes(self) -> None:
        """Runs started with ``PATCH_CONSOLIDATED``: upsert the stage and status the workflow waits in, once per
        change of them. A wait condition is checked only when no coroutine of the workflow can run on; the ones
        woken in the same pass run after it, so this waits passes until one leaves the state as it was, then
        upserts what the workflow now waits in. Not while a ``record`` runs: a local activity resolves within the
        same workflow task, so what the workflow waits in is known only after it. Before the run ends
        (``_finish``, continue-as-new) the last values are upserted directly."""
        while True:
            await workflow.wait_condition(self._search_attributes_due)
            seq = -1
            while seq != self._state.seq:
                seq = self._state.seq
                await workflow.wait_condition(lambda: True)
            if self._search_attributes_due():
                self._upsert_search_attributes()

    def _upsert_search_attributes(self, *, everything: bool = False) -> None:
        state = self._state
        current = (state.current_stage, state.status.value)
        if not everything and current == self._sa_last:
            return
        self._sa_last = current
        updates: list[SearchAttributeUpdate[Any]] = [
            SA_STAGE.value_set(state.current_stage or ""), SA_STATUS.value_set(state.status.value)]
        if everything:
            updates += [SA_MODEL_ID.value_set(state.model_id), SA_INTENT.value_set(state.business_intent),
                        SA_RISK_TIER.value_set(state.risk_tier)]
        workflow.upsert_search_attributes(updates)


def _jsonable(value: Any) -> Any:
    """Before PATCH_JSON_PAYLOAD: datetimes as ``isoformat()`` strings (engine.payload spells them ``...Z``)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
