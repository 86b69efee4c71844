"""What an approval on an evicted, parked progression costs the worker: its history, and one replay of it.

    python -m bench.replay_cost [--rounds 20]

A marketing progression (the one ``bench.scale`` parks) is walked to its validation gate by a real worker;
its history is fetched (events, bytes) and replayed ``--rounds`` times by ``temporalio.worker.Replayer``
(the worker's sandbox and data converter), half with the workflow modules re-imported per run (the default),
half with them loaded once (``PROGRESSION_WORKER_SHARED_WORKFLOW_MODULES``): the CPU a worker spends to rebuild
one evicted workflow before it can run an Update on it. With more parked progressions than the worker caches,
most approvals pay it; with fewer, none does (``bench.scale``'s drain ratio).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from bench.common import Report, base_parser, median, percentile, run, temporal_server
from launch.worker import workflow_runner
from testing import workflow as hw
from workflows.finding import ExceptionWorkflow, FindingWorkflow
from workflows.progression import ProgressionWorkflow


async def main(args: argparse.Namespace) -> Report:
    report = Report("replay_cost", "python -m bench.replay_cost", params={"rounds": args.rounds})
    with tempfile.TemporaryDirectory() as tmp:
        async with temporal_server() as (client, _address), \
                hw.app_env(f"sqlite+aiosqlite:///{Path(tmp) / 'replay.db'}", Path(tmp)) as env:
            task_queue = "replay-cost"
            inp = await hw.example_input(env, hw.MARKETING, submitted_by=hw.MKT_DEV, version={"id": "6.0.0-replay"})
            async with hw.worker(client, task_queue, env):
                handle = await hw.start(client, inp, task_queue)
                await hw.wait_state(handle, hw.at_gate("validation"))
            history = await handle.fetch_history()
            size = len(history.to_json().encode())
            times: dict[bool, list[float]] = {}
            for shared in (False, True, False, True):  # interleaved: the machine's load falls on both alike
                replayer = Replayer(workflows=[ProgressionWorkflow, FindingWorkflow, ExceptionWorkflow],
                                    data_converter=pydantic_data_converter,
                                    workflow_runner=workflow_runner(shared_workflow_modules=shared))
                await replayer.replay_workflow(history)  # warm: module imports, first sandbox
                for _ in range(args.rounds // 2):
                    t0 = time.perf_counter()
                    await replayer.replay_workflow(history)
                    times.setdefault(shared, []).append((time.perf_counter() - t0) * 1000)
    report.add("history of a parked marketing progression", float(len(history.events)), "events",
               note=f"{size / 1024:.0f} KiB as JSON")
    strict, shared = times[False], times[True]
    report.add("one replay, workflow modules shared vs re-imported (median)", median(shared), "ms",
               baseline=median(strict), note=f"{len(strict)} replays each; the worker's own sandbox, "
                                             "PROGRESSION_WORKER_SHARED_WORKFLOW_MODULES true vs false")
    report.add("one replay, shared vs re-imported (p95)", percentile(shared, 95), "ms",
               baseline=percentile(strict, 95))
    return report


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=40)
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
