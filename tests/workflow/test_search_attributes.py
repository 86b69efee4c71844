"""The search attributes say where a progression waits (Temporal's CLI and web UI find progressions by them).

Since ``every-patch-of-2026`` a run upserts the stage and status once the workflow waits, not at every change: the
values are the same whenever anyone can look (between two waits nobody sees the workflow), with fewer visibility
writes on the server (issue 21).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from temporalio.client import Client

from testing.polling import eventually
from testing.workflow import (
    CREDIT,
    DEV2,
    RISK1,
    RISK2,
    VALIDATOR,
    Env,
    at_gate,
    decide,
    put_evidence,
    running,
    submit,
    wait_state,
)
from workflows.contract import SA_INTENT, SA_MODEL_ID, SA_RISK_TIER, SA_STAGE, SA_STATUS

HISTORIES = Path(__file__).parent.parent / "histories"


async def _where(client: Client, workflow_id: str) -> tuple[str | None, str | None]:
    attrs = (await client.get_workflow_handle(workflow_id).describe()).typed_search_attributes
    return attrs.get(SA_STAGE), attrs.get(SA_STATUS)


async def test_the_search_attributes_say_where_a_progression_waits(temporal_client: Client, task_queue: str,
                                                                    env: Env) -> None:
    async with running(temporal_client, task_queue, env) as handle:
        await wait_state(handle, at_gate("validation"))

        async def at(expected: tuple[str, str]) -> bool:
            return await _where(temporal_client, handle.id) == expected

        await eventually(lambda: at(("validation", "awaiting_approval")), "search attributes at the validation gate")
        attrs = (await handle.describe()).typed_search_attributes
        assert attrs.get(SA_MODEL_ID) == "retail-credit-scorecard"
        assert attrs.get(SA_INTENT) == "credit-underwriting" and attrs.get(SA_RISK_TIER) == 1
        await decide(handle, VALIDATOR, "validation", "approve")
        await wait_state(handle, at_gate("risk_review"))
        await eventually(lambda: at(("risk_review", "awaiting_approval")), "search attributes at the risk review")
        await decide(handle, RISK1, "risk_review", "approve")
        await decide(handle, RISK2, "risk_review", "request_changes", "add the out-of-time note")
        await wait_state(handle, lambda s: s.status == "changes_requested")
        await eventually(lambda: at(("risk_review", "changes_requested")), "search attributes after a change request")
        plan = ((CREDIT / "docs/monitoring_plan.md").read_text() + "\nOut-of-time sample documented.\n").encode()
        await submit(handle, DEV2, {"monitoring_plan": await put_evidence(env, "monitoring_plan", plan,
                                                                          "docs/monitoring_plan.md")})
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review", "approve", "still fine")
        await decide(handle, RISK2, "risk_review", "approve", "thanks")
        await wait_state(handle, lambda s: s.status == "in_production")
        await eventually(lambda: at(("", "in_production")), "search attributes in production")


def _stage_status_upserts(path: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for event in json.loads(path.read_text())["events"]:
        if event["eventType"] != "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES":
            continue
        fields = event["upsertWorkflowSearchAttributesEventAttributes"]["searchAttributes"]["indexedFields"]
        if "ProgressionStatus" in fields:
            out.append((json.loads(base64.b64decode(fields["ProgressionStage"]["data"])),
                        json.loads(base64.b64decode(fields["ProgressionStatus"]["data"]))))
    return out


def test_a_run_upserts_only_where_it_waits_not_every_passing_value() -> None:
    """The committed credit journey (a change request, production, two revalidations): v10 upserted every value the
    state passed through within one activation; v11 only the values it waited in, the same ones in the same order."""
    name = "retail-credit-scorecard@3.2.0.json"
    before = _stage_status_upserts(HISTORIES / "v10-lean-results" / name)
    after = _stage_status_upserts(HISTORIES / "v11-consolidated-patches" / name)
    to_production = after[:after.index(("", "in_production")) + 1]
    assert to_production == [
        ("registration", "running"), ("validation", "running"), ("validation", "awaiting_approval"),
        ("risk_review", "awaiting_approval"), ("risk_review", "changes_requested"),
        ("risk_review", "awaiting_approval"), ("staging", "running"), ("production", "running"),
        ("", "in_production")]
    # v10 upserted the risk review "running" in passing (between a decision and the gate or the next stage) and
    # validation "running" again after its approval; v11 neither.
    assert before.count(("risk_review", "running")) == 3 and ("risk_review", "running") not in after
    assert before.count(("validation", "running")) == 2 and after.count(("validation", "running")) == 1
    assert len(after) < len(before) and set(after) <= set(before)
    assert after[-1] == ("", "retired") == before[-1]
