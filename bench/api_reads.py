"""API reads: GET /api/v1/progressions/{id} against /healthz of the same server.

    python -m bench.api_reads [--requests 2000] [--clients 16] [--progressions 20] [--db sqlite|postgresql]

The product runs as two processes (API, worker) on loopback. A bounded load generator (httpx
async, ``--clients`` concurrent clients sharing ``--requests`` requests) reads the state of
progressions parked at a gate (a token check, a workflow query, the visibility rule, the JSON
answer) and, in alternating rounds, the trivial ``/healthz`` of the same server.
"""

from __future__ import annotations

import argparse
import time
import uuid

import httpx

from bench.common import (
    Report,
    Stack,
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


async def load(http: httpx.AsyncClient, stack: Stack, paths: list[str], n: int, clients: int,
               auth: bool) -> tuple[float, list[float]]:
    """(requests/s, latencies in ms) of ``n`` GETs over ``paths`` with ``clients`` in flight."""
    headers = stack.auth("ann") if auth else {}

    async def one(i: int) -> float:
        t0 = time.perf_counter()
        resp = await http.get(paths[i % len(paths)], headers=headers)
        elapsed = (time.perf_counter() - t0) * 1000
        if resp.status_code != 200:
            raise RuntimeError(f"GET {paths[i % len(paths)]}: {resp.status_code} {resp.text[:200]}")
        return elapsed

    t0 = time.perf_counter()
    latencies = await bounded_gather(n, clients, one)
    return n / (time.perf_counter() - t0), latencies


async def main(args: argparse.Namespace) -> Report:
    report = Report("api_reads", "python -m bench.api_reads", params={
        "requests": args.requests, "clients": args.clients, "rounds": args.rounds, "db": args.db})
    async with temporal_server() as (_, address):
        with fresh_database(args.db) as url:
            async with product_stack(address, url) as stack, http_client(stack, args.clients) as http:
                run_id = uuid.uuid4().hex[:8]
                pids = await bounded_gather(args.progressions, 8, lambda i: start_via_api(
                    http, stack, "mia", "marketing-propensity", f"5.{i}.0-{run_id}"))
                await bounded_gather(len(pids), 8, lambda i: wait_status(http, stack, pids[i], at_gate("validation")))
                state_paths = [f"/api/v1/progressions/{p}" for p in pids]
                await load(http, stack, state_paths, 100, args.clients, True)  # warm-up
                await load(http, stack, ["/healthz"], 100, args.clients, False)
                rates: dict[str, list[float]] = {"state": [], "health": []}
                lat: dict[str, list[float]] = {"state": [], "health": []}
                for _ in range(args.rounds):
                    for kind, paths, auth in (("health", ["/healthz"], False), ("state", state_paths, True)):
                        rate, latencies = await load(http, stack, paths, args.requests, args.clients, auth)
                        rates[kind].append(rate)
                        lat[kind].extend(latencies)
    state_rate = sum(rates["state"]) / len(rates["state"])
    health_rate = sum(rates["health"]) / len(rates["health"])
    report.add("GET /progressions/{id} requests/s", state_rate, "/s", baseline=health_rate,
               note="baseline: GET /healthz of the same server, same clients")
    report.add("GET /progressions/{id} p99", percentile(lat["state"], 99), "ms",
               baseline=percentile(lat["health"], 99))
    report.add("GET /progressions/{id} p50", percentile(lat["state"], 50), "ms",
               baseline=percentile(lat["health"], 50))
    return report


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], db=True)
    p.add_argument("--requests", type=int, default=2000, help="requests per round and endpoint")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--progressions", type=int, default=20, help="progressions whose state is read")
    p.add_argument("--rounds", type=int, default=2)
    return p


if __name__ == "__main__":
    run(main, parser().parse_args())
