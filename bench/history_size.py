"""History size: events and bytes of one credit journey's Temporal history, against the bare workflow.

    python -m bench.history_size [--journeys 3] [--db sqlite|postgresql] [--breakdown]

Runs ``--journeys`` credit journeys (the throughput benchmark's: start, checks, the validator's and two risk
officers' approvals, staging checks, deployment, ``in_production``) and as many bare ones (``bench/bare.py``),
driven identically, then fetches each history as it stands at ``in_production`` (the revalidation timer
running) and counts its events and the bytes of its serialised form (``WorkflowHistory`` protobuf, what the
server stores and a replay reads). ``--breakdown`` prints where the engine's bytes are: payload bytes per kind
of event (activity inputs and results, local-activity markers, Update arguments and results, ...).
"""

from __future__ import annotations

import argparse
import uuid
from collections import defaultdict
from typing import Any

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.worker import Worker

from bench.bare import BARE_ACTIVITIES, BareGovernedWorkflow
from bench.common import Report, base_parser, run, temporal_server
from bench.throughput import bare_journey, engine_env, engine_journey_factory

# Issue 21: what travels in activity inputs and results and in Update payloads is what the step needs, "in
# hundreds of bytes, not the 15 KB state": the largest such payload of a journey, in KiB.
GOAL_PAYLOAD_KIB = 1.0
ACTIVITY_KINDS = ("activity_task_scheduled", "activity_task_completed", "marker_recorded:core_local_activity")
UPDATE_KINDS = ("workflow_execution_update_accepted", "workflow_execution_update_completed")


def _payload_bytes(message: Any) -> int:
    """Bytes of every ``Payload.data`` inside a protobuf message (recursively)."""
    if isinstance(message, Payload):
        return len(message.data)
    total = 0
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Message):
            total += _payload_bytes(value)
        elif hasattr(value, "values") and callable(value.values):  # a map
            total += sum(_payload_bytes(v) for v in value.values() if isinstance(v, Message))
        else:  # a repeated field
            total += sum(_payload_bytes(v) for v in value if isinstance(v, Message))
    return total


def _kind(event: Any) -> str:
    """The event's type, with the activity or marker it is about (where the bytes are)."""
    name = event.WhichOneof("attributes") or "?"
    attrs = getattr(event, name)
    kind = name.removesuffix("_event_attributes")
    if kind == "activity_task_scheduled":
        return f"{kind}:{attrs.activity_type.name}"
    if kind == "marker_recorded":
        return f"{kind}:{attrs.marker_name}"
    return kind


def breakdown(history: History) -> dict[str, tuple[int, int, int, int]]:
    """Per kind of event: (events, payload bytes, largest payload of one event, serialised bytes)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for event in history.events:
        row, payload = out[_kind(event)], _payload_bytes(event)
        row[0] += 1
        row[1] += payload
        row[2] = max(row[2], payload)
        row[3] += event.ByteSize()
    return {k: (v[0], v[1], v[2], v[3]) for k, v in sorted(out.items(), key=lambda kv: -kv[1][3])}


def _largest(histories: list[History], kinds: tuple[str, ...]) -> int:
    """The largest payload bytes of one event of these kinds, over the histories."""
    return max((_payload_bytes(e) for h in histories for e in h.events if _kind(e).startswith(kinds)), default=0)


async def _history(client: Client, workflow_id: str) -> History:
    return History(events=[e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()])


async def main(args: argparse.Namespace) -> Report:
    report = Report("history_size", "python -m bench.history_size", params={"journeys": args.journeys,
                                                                            "db": args.db})
    async with temporal_server() as (client, _):
        bare_queue = f"bench-bare-{uuid.uuid4().hex[:8]}"
        async with engine_env(client, args.db) as (queue, base, _), Worker(
                client, task_queue=bare_queue, workflows=[BareGovernedWorkflow], activities=BARE_ACTIVITIES):
            journey = engine_journey_factory(base)
            engine_ids: list[str] = []
            bare_ids: list[str] = []
            for i in range(args.journeys):
                engine_ids.append(await journey(client, queue, i))
                bare_ids.append(await bare_journey(client, bare_queue, i))
            engine = [await _history(client, w) for w in engine_ids]
            bare = [await _history(client, w) for w in bare_ids]
    n = args.journeys
    e_events, b_events = sum(len(h.events) for h in engine) / n, sum(len(h.events) for h in bare) / n
    e_bytes, b_bytes = sum(h.ByteSize() for h in engine) / n, sum(h.ByteSize() for h in bare) / n
    report.add("history events per journey", e_events, "events", baseline=b_events,
               note="credit journey to in_production vs the bare workflow of the same shape")
    report.add("history bytes per journey", e_bytes / 1024, "KiB", baseline=b_bytes / 1024,
               note="serialised History protobuf (what the server stores and every replay reads)")
    for label, kinds in (("activity input or result", ACTIVITY_KINDS), ("Update argument or result", UPDATE_KINDS)):
        largest = _largest(engine, kinds) / 1024
        report.add(f"largest {label} per journey", largest, "KiB", baseline=_largest(bare, kinds) / 1024,
                   goal=f"<= {GOAL_PAYLOAD_KIB:g} KiB", met=largest <= GOAL_PAYLOAD_KIB)
    if args.breakdown:
        print(f"\nwhere one engine journey's bytes are ({engine_ids[0]}):")
        print(f"  {'event kind':<52} {'events':>6} {'payload B':>10} {'largest B':>10} {'event B':>10}")
        for kind, (count, payload, largest, size) in breakdown(engine[0]).items():
            print(f"  {kind:<52} {count:>6} {payload:>10,} {largest:>10,} {size:>10,}")
    return report


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], db=True)
    p.add_argument("--journeys", type=int, default=3, help="journeys of each kind")
    p.add_argument("--breakdown", action="store_true", help="print the engine's bytes per kind of event")
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
