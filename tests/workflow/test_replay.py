"""Replay every committed workflow history against the current ProgressionWorkflow.

A code change that alters the commands an existing history produced (a non-deterministic
change) fails here, before it can break running progressions. Histories live in one directory
per generation of the workflow's commands (``v1-record-activity``: before the
``record-as-local-activity`` patch; ``v2-record-local-activity``: after it; ``v3-record-failure``:
a failed workflow records its failure, ``record-failure`` patch; ``v3-approval-basis``: approvals
bound to their basis, ``approval-binds-to-basis`` patch, with evidence that re-opens an earlier stage;
``v4-basis-and-failure``: both patches; ``v5-read-side-guidance``: guidance computed by engine.guidance outside the
workflow and payloads normalised by engine.payload, ``guidance-outside-the-workflow`` and
``one-json-payload-normaliser`` patches; ``v5-findings``: conditions of approvals start finding workflows,
findings block stages and exceptions waive checks, ``findings`` patch; ``v6-findings-and-guidance``: all of
them; ``v7-monitoring``: life after production — monitoring breaches open revalidation now or raise findings,
retirement is a gate then an undeploy, ``monitoring-and-retirement`` patch, the credit monitoring journey made with
``--only credit_monitoring``; ``v8-lean``: check runs carry a ``CheckSubject`` instead of the state and get back no
texts of the stage definition, ``lean-payloads`` patch; ``v8-timers`` (made beside it): the monitoring journey with a
retried monitoring result, answered at once unless this run is still applying it,
``monitoring-retry-waits-only-for-its-own-run`` patch; ``v9-lean-and-timers``: both, the monitoring journey;
``v10-lean-results``: Updates answer with seq, status and stage instead of the state, ``lean-update-results`` patch,
with every earlier one, all journeys; ``v11-consolidated-patches``: a new run asks one patch,
``every-patch-of-2026``, that stands for every earlier one, all journeys); every
generation must keep replaying. A deliberate change goes behind ``workflow.patched`` and adds a generation
with ``python -m tests.make_histories --out tests/histories/<generation>``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.progression import (
    CONSOLIDATED_PATCHES,
    PATCH_BASIS,
    PATCH_CONSOLIDATED,
    PATCH_FINDINGS,
    PATCH_GUIDANCE,
    PATCH_JSON_PAYLOAD,
    PATCH_LEAN,
    PATCH_LEAN_RESULTS,
    PATCH_MONITORING,
    PATCH_MONITORING_RETRY,
    PATCH_RECORD_FAILURE,
    PATCH_RECORD_LOCAL,
    ProgressionWorkflow,
)

HISTORIES = Path(__file__).parent.parent / "histories"
FILES = sorted(HISTORIES.glob("*/*.json"))
TEXTS = {p: p.read_text() for p in FILES}  # read at collection time, not inside the event loop
NEWEST = "v11-consolidated-patches"  # tests/make_histories.py CURRENT
V10 = "v10-lean-results"  # lean-update-results, the last generation that asked each patch on its own
V6 = "v6-findings-and-guidance"
V7 = "v7-monitoring"
V8_LEAN = "v8-lean"  # lean-payloads
V8_TIMERS = "v8-timers"  # monitoring-retry-waits-only-for-its-own-run (made beside v8-lean, without it)
V9 = "v9-lean-and-timers"  # both v8 patches
SINCE_V7 = {V7, V8_LEAN, V8_TIMERS, V9, V10}  # of the generations that asked each patch on its own


def test_histories_are_committed() -> None:
    assert FILES, f"no workflow histories in {HISTORIES}"
    assert {p.parent.name for p in FILES} >= {"v1-record-activity", "v2-record-local-activity", "v3-record-failure",
                                              "v3-approval-basis", "v4-basis-and-failure", "v5-read-side-guidance",
                                              "v5-findings", V6, V8_LEAN, V8_TIMERS, NEWEST} | SINCE_V7


def _patches_and_record_kinds(text: str) -> tuple[set[str], set[str]]:
    """Patch ids recorded in a history, and how ``record`` ran: as an activity task or a local one."""
    patches: set[str] = set()
    kinds: set[str] = set()
    for event in json.loads(text)["events"]:
        if event["eventType"] == "EVENT_TYPE_MARKER_RECORDED":
            attrs = event["markerRecordedEventAttributes"]
            if attrs["markerName"] == "core_patch":
                patches.add(json.loads(_b64(attrs["details"]["patch-data"]["payloads"][0]["data"]))["id"])
            elif attrs["markerName"] == "core_local_activity":
                kinds.add("local")
        elif event["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED":
            if event["activityTaskScheduledEventAttributes"]["activityType"]["name"] == "record":
                kinds.add("task")
    return patches, kinds


def _b64(data: str) -> str:
    return base64.b64decode(data).decode()


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_each_generation_exercises_its_branch_of_the_patch(path: Path) -> None:
    # Without this, regenerating every directory with the new code would leave the old branch untested.
    patches, kinds = _patches_and_record_kinds(TEXTS[path])
    if path.parent.name == NEWEST:
        _assert_every_patch_applied_under_one(path, patches, kinds)
        return
    assert PATCH_CONSOLIDATED not in patches
    if path.parent.name == "v1-record-activity":
        assert PATCH_RECORD_LOCAL not in patches and kinds == {"task"}
    elif path.stem == "retail-credit-scorecard@3.3.0" and path.parent.name == "v2-record-local-activity":
        # Before the record-failure patch: registration failed and the workflow failed with no record.
        assert PATCH_RECORD_FAILURE not in patches and _activities(TEXTS[path]) == ["register_progression"]
    elif path.stem == "retail-credit-scorecard@3.3.0":  # v3: registration failed, the failure was recorded
        assert PATCH_RECORD_FAILURE in patches and _activities(TEXTS[path]) == ["register_progression",
                                                                               "record_failure"]
    else:
        assert PATCH_RECORD_LOCAL in patches and kinds == {"local"} and PATCH_RECORD_FAILURE not in patches
    assert (PATCH_BASIS in patches) == (path.parent.name in {"v3-approval-basis", "v4-basis-and-failure",
                                                             "v5-read-side-guidance", "v5-findings", V6} | SINCE_V7)
    # Asked at the first check run: the registration that fails (3.3.0, only in v1-v4 and v10) runs none.
    checked = path.stem != "retail-credit-scorecard@3.3.0"
    assert (PATCH_LEAN in patches) == (path.parent.name in {V8_LEAN, V9, V10} and checked)
    # How check runs travelled: the whole state before the patch, a CheckSubject since (the branch each takes).
    runs = _check_inputs(TEXTS[path])
    if path.parent.name in {V8_LEAN, V9, V10} and checked:
        assert runs and all(r["state"] is None and r["subject"]["evidence"] for r in runs)
    else:
        assert all(r["state"] is not None and r.get("subject") is None for r in runs)
    # Asked only when a monitoring result is retried: the monitoring journey (the only one in v8-timers and v9).
    assert (PATCH_MONITORING_RETRY in patches) == (path.parent.name in {V8_TIMERS, V9, V10}
                                                   and path.stem == "retail-credit-scorecard@3.5.0")
    assert (PATCH_LEAN_RESULTS in patches) == (path.parent.name == V10)
    # How Updates answered: the whole state before lean-update-results, seq/status/stage since (the branch each takes).
    answers = _update_results(TEXTS[path])
    if path.parent.name == V10:
        assert all(a.get("state") is None and a["seq"] >= 0 for _, a, _ in answers)
        assert all(size < 1024 for _, _, size in answers), [(n, s) for n, _, s in answers]
    else:
        assert all("state" in a if n in ("decide", "record_monitoring") else "stages" in a for n, a, _ in answers)
        assert all(a["state"] is not None for n, a, _ in answers if n == "decide")
    # Guidance in words left the workflow (engine.guidance): only the generations since took that branch.
    assert (PATCH_GUIDANCE in patches) == (path.parent.name in {"v5-read-side-guidance", V6} | SINCE_V7)
    assert (PATCH_JSON_PAYLOAD in patches) == (path.parent.name in {"v5-read-side-guidance", V6} | SINCE_V7)
    assert (PATCH_FINDINGS in patches) == (path.parent.name in {"v5-findings", V6} | SINCE_V7)
    assert (PATCH_MONITORING in patches) == (path.parent.name in SINCE_V7)


def _assert_every_patch_applied_under_one(path: Path, patches: set[str], kinds: set[str]) -> None:
    """A run started with ``every-patch-of-2026`` records that patch alone (one marker and one
    ``TemporalChangeVersion`` upsert per run) and takes the branch of every patch it stands for."""
    text = TEXTS[path]
    assert patches == {PATCH_CONSOLIDATED}
    assert _change_versions(text) == [[PATCH_CONSOLIDATED]]
    failed = path.stem == "retail-credit-scorecard@3.3.0"
    assert kinds == (set() if failed else {"local"})  # record-as-local-activity (registration failed: no record)
    if failed:  # record-failure: the failure recorded before the workflow failed
        assert _activities(text) == ["register_progression", "record_failure"]
    else:  # lean-payloads: every check run carries a subject, not the state
        runs = _check_inputs(text)
        assert runs and all(r["state"] is None and r["subject"]["evidence"] for r in runs)
    answers = _update_results(text)  # lean-update-results
    assert all(a.get("state") is None and int(str(a["seq"])) >= 0 and size < 1024 for _, a, size in answers), path
    assert CONSOLIDATED_PATCHES >= {PATCH_BASIS, PATCH_GUIDANCE, PATCH_JSON_PAYLOAD, PATCH_FINDINGS, PATCH_MONITORING,
                                    PATCH_MONITORING_RETRY, PATCH_LEAN, PATCH_LEAN_RESULTS, PATCH_RECORD_LOCAL,
                                    PATCH_RECORD_FAILURE}


def _change_versions(text: str) -> list[list[str]]:
    """The ``TemporalChangeVersion`` values a history upserted (the SDK's core adds one per patch asked)."""
    out: list[list[str]] = []
    for e in json.loads(text)["events"]:
        if e["eventType"] != "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES":
            continue
        fields = e["upsertWorkflowSearchAttributesEventAttributes"]["searchAttributes"]["indexedFields"]
        if "TemporalChangeVersion" in fields:
            out.append(json.loads(_b64(fields["TemporalChangeVersion"]["data"])))
    return out


def _update_results(text: str) -> list[tuple[str, dict[str, object], int]]:
    """(Update name, decoded result, payload bytes) of every Update a history completed with a result."""
    names = {e["workflowExecutionUpdateAcceptedEventAttributes"]["protocolInstanceId"]:
             e["workflowExecutionUpdateAcceptedEventAttributes"]["acceptedRequest"]["input"]["name"]
             for e in json.loads(text)["events"] if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED"}
    out: list[tuple[str, dict[str, object], int]] = []
    for e in json.loads(text)["events"]:
        if e["eventType"] != "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED":
            continue
        attrs = e["workflowExecutionUpdateCompletedEventAttributes"]
        if "success" not in attrs["outcome"]:
            continue
        data = base64.b64decode(attrs["outcome"]["success"]["payloads"][0]["data"])
        out.append((names[attrs["meta"]["updateId"]], json.loads(data), len(data)))
    return out


@pytest.mark.parametrize("generation", [V10, NEWEST])
def test_the_lean_generations_answer_every_kind_of_update_without_the_state(generation: str) -> None:
    kinds = {name for path in FILES if path.parent.name == generation for name, _, _ in _update_results(TEXTS[path])}
    assert kinds == {"decide", "submit_evidence", "withdraw", "request_retirement", "record_monitoring"}


def _check_inputs(text: str) -> list[dict[str, object]]:
    """The decoded input of every evaluate_checks activity a history scheduled."""
    return [json.loads(_b64(e["activityTaskScheduledEventAttributes"]["input"]["payloads"][0]["data"]))
            for e in json.loads(text)["events"] if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
            and e["activityTaskScheduledEventAttributes"]["activityType"]["name"] == "evaluate_checks"]


@pytest.mark.parametrize("generation", ["v5-findings", V6, V8_LEAN, V10, NEWEST])
def test_the_findings_generation_raises_conditions_and_waives_a_check(generation: str) -> None:
    text = TEXTS[HISTORIES / generation / "retail-credit-scorecard@3.4.0.json"]
    events = json.loads(text)["events"]
    children = [e for e in events if e["eventType"] == "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED"]
    assert len(children) == 2  # the two conditions of the validation approval, one finding workflow each
    signals = [e for e in events if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"]
    assert signals and all(e["workflowExecutionSignaledEventAttributes"]["signalName"] == "governance_changed"
                           for e in signals)
    # activity inputs carry the state: the staging check waived by the exception, then the model flagged
    decoded = [_b64(data) for data in _payload_data(json.loads(text))]
    assert any('"exception_id":"X-' in d and '"kind":"check"' in d for d in decoded)
    assert any('"flags":["exception X-' in d for d in decoded)


def _activities(text: str) -> list[str]:
    return [e["activityTaskScheduledEventAttributes"]["activityType"]["name"] for e in json.loads(text)["events"]
            if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"]


@pytest.mark.parametrize(("generation", "deliveries"), [(V7, 3), (V8_LEAN, 3), (V8_TIMERS, 4), (V9, 4),
                                                               (V10, 4), (NEWEST, 4)])
def test_the_monitoring_generation_triggers_revalidation_and_undeploys(generation: str, deliveries: int) -> None:
    text = TEXTS[HISTORIES / generation / "retail-credit-scorecard@3.5.0.json"]
    events = json.loads(text)["events"]
    updates = [e["workflowExecutionUpdateAcceptedEventAttributes"]["acceptedRequest"]["input"]["name"]
               for e in events if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED"]
    assert updates.count("record_monitoring") == deliveries and updates.count("request_retirement") == 2
    assert "evaluate_monitoring" in _activities(text)
    decoded = [_b64(data) for data in _payload_data(json.loads(text))]
    assert any('"action":"undeploy"' in d for d in decoded)


def test_the_new_generation_goes_back_to_an_earlier_stage() -> None:
    # The fraud history re-opens validation from the risk-review gate: the loop-by-index branch.
    text = TEXTS[HISTORIES / "v3-approval-basis" / "card-fraud-detector@7.1.0.json"]
    decoded = [_b64(data) for data in _payload_data(json.loads(text))]
    # activity inputs carry the state: the validator's approval superseded because the metrics changed
    assert any('"superseded":true' in d and '"basis_changed":["metrics"]' in d for d in decoded)


def _payload_data(node: object) -> list[str]:
    """Every payload's base64 ``data`` in a history (activity inputs among them)."""
    if isinstance(node, dict):
        found = [node["data"]] if isinstance(node.get("data"), str) and "metadata" in node else []
        return found + [d for v in node.values() for d in _payload_data(v)]
    if isinstance(node, list):
        return [d for v in node for d in _payload_data(v)]
    return []


def test_histories_were_recorded_without_heartbeat_timeouts() -> None:
    """Every history up to v10 scheduled its activities with no heartbeat timeout; the workflow now sets 30 s
    (``activities.contract.HEARTBEAT_TIMEOUT``) without a patch, as v11's show. That the older ones still replay
    (test_replay) is the proof that replay compares a scheduled activity's type and id, not its options."""
    def scheduled(newest: bool) -> list[dict[str, Any]]:
        return [e["activityTaskScheduledEventAttributes"] for p, text in TEXTS.items()
                if (p.parent.name == NEWEST) == newest
                for e in json.loads(text)["events"] if "activityTaskScheduledEventAttributes" in e]

    before = scheduled(newest=False)
    assert {a["activityType"]["name"] for a in before} >= {"deploy", "evaluate_checks", "register_progression"}
    assert {a.get("heartbeatTimeout", "0s") for a in before} == {"0s"}
    newest = scheduled(newest=True)
    assert {a["heartbeatTimeout"] for a in newest if a["activityType"]["name"] != "evaluate_monitoring"} == {"30s"}


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
async def test_replay(path: Path) -> None:
    # File name == workflow id (the progression id, "<model>@<version>").
    history = WorkflowHistory.from_json(path.stem, TEXTS[path])
    assert history.events, path
    replayer = Replayer(workflows=[ProgressionWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
