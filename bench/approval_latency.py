"""Approval latency: an HTTP decision against a raw ``execute_update`` on the same server.

    python -m bench.approval_latency [--samples 300] [--db sqlite|postgresql]

The product runs as two processes (``launch.serve api`` and ``launch.serve worker``) on a fresh
database and a Temporal dev server on loopback. ``2 x samples`` marketing progressions are parked
at their validation gate; then decisions alternate, one at a time: ``POST /decisions`` over HTTP
(token check, idempotency record, workflow query, segregation-of-duties check, Update, audit
append, answer) and the same Update sent straight to Temporal by the benchmark's client. Both
end in the same workflow work (the Update's validator, the audit append, the read model).
"""

from __future__ import annotations

import argparse
import time
import uuid

from bench.common import (
    Report,
    at_gate,
    base_parser,
    bounded_gather,
    fresh_database,
    http_client,
    percentile,
    product_stack,
    run,
    start_via_api,
    temporal_server,
    wait_status,
)


async def main(args: argparse.Namespace) -> Report:
    from engine.lifecycle import Actor, DecisionKind
    from engine.policy import Role
    from workflows.contract import UPDATE_DECIDE, DecideInput, DecideResult

    report = Report("approval_latency", "python -m bench.approval_latency",
                    params={"samples": args.samples, "db": args.db})
    http_ms: list[float] = []
    raw_ms: list[float] = []
    async with temporal_server() as (client, address):
        with fresh_database(args.db) as url:
            async with product_stack(address, url) as stack, http_client(stack) as http:
                n = 2 * args.samples + 2  # two for warm-up
                run_id = uuid.uuid4().hex[:8]
                pids = await bounded_gather(n, 8, lambda i: start_via_api(
                    http, stack, "mia", "marketing-propensity", f"7.{i}.0-{run_id}"))
                await bounded_gather(n, 8, lambda i: wait_status(http, stack, pids[i], at_gate("validation")))
                vera = Actor(user_id=stack.user_ids["vera"], username="vera", roles=[Role.model_validator],
                             team="validation")

                async def by_http(pid: str) -> float:
                    t0 = time.perf_counter()
                    resp = await http.post(f"/api/v1/progressions/{pid}/decisions", headers=stack.auth("vera"),
                                           json={"stage": "validation", "decision": "approve", "comment": "ok"})
                    elapsed = time.perf_counter() - t0
                    if resp.status_code != 200:
                        raise RuntimeError(f"HTTP decision on {pid}: {resp.status_code} {resp.text[:300]}")
                    return elapsed * 1000

                async def by_update(pid: str) -> float:
                    handle = client.get_workflow_handle(pid)
                    t0 = time.perf_counter()
                    result = await handle.execute_update(UPDATE_DECIDE, DecideInput(
                        stage="validation", decision=DecisionKind.approve, comment="ok", actor=vera,
                        decision_id=uuid.uuid4().hex), result_type=DecideResult)
                    elapsed = time.perf_counter() - t0
                    if not result.accepted:
                        raise RuntimeError(f"Update on {pid} not accepted")
                    return elapsed * 1000

                await by_http(pids[0])
                await by_update(pids[1])
                for i in range(args.samples):
                    # Alternate which goes first so neither always follows the other's background work.
                    a, b = pids[2 + 2 * i], pids[3 + 2 * i]
                    if i % 2:
                        http_ms.append(await by_http(a))
                        raw_ms.append(await by_update(b))
                    else:
                        raw_ms.append(await by_update(b))
                        http_ms.append(await by_http(a))
    for p in (50, 99):
        value, base = percentile(http_ms, p), percentile(raw_ms, p)
        goal = "ratio <= 1.5" if p == 99 else ""
        report.add(f"decision latency p{p}", value, "ms", baseline=base, goal=goal,
                   met=(value / base <= 1.5) if p == 99 else None,
                   note="baseline: raw execute_update of the same Update on the same server" if p == 50 else "")
    report.add("HTTP overhead at p50", percentile(http_ms, 50) - percentile(raw_ms, 50), "ms")
    return report


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], db=True)
    p.add_argument("--samples", type=int, default=300,
                   help="decisions of each kind (p99 of 100 is the second-worst sample: too noisy)")
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
