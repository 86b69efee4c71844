"""Years of life: the history a model in production writes, per year and per run of its continue-as-new chain.

    python -m bench.years [--years 10] [--json FILE]

On the time-skipping test server (with a fresh SQLite database): ``testing.years.live_years`` deploys the credit
model, delivers 12 monitoring results a year (a few breaches) and has every revalidation decided; then every run of
the chain is measured. The goals are Temporal's warning thresholds per run (10,240 events, 10 MB; the hard limits
are 51,200 and 50 MB). The time-skipping server never suggests continue-as-new, so the chain there is one run: the
figures say how much one run holds, and how many years a run takes to reach a real server's suggestion (4 MB).
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

from bench.common import Report, base_parser, run
from testing.temporal import time_skipping_server
from testing.workflow import app_env
from testing.years import WARN_BYTES, WARN_EVENTS, by_year, live_years, run_chain, table

SUGGEST_BYTES = 4 * 1024 * 1024  # a real server's limit.historySize.suggestContinueAsNew default


async def main(args: argparse.Namespace) -> Report:
    report = Report("years", "python -m bench.years", params={"years": args.years})
    with tempfile.TemporaryDirectory() as tmp:
        async with app_env(f"sqlite+aiosqlite:///{Path(tmp) / 'years.db'}", Path(tmp)) as env, \
                time_skipping_server() as ts:
            sent = await live_years(ts, f"bench-years-{uuid.uuid4()}", env, years=args.years)
            runs = await run_chain(ts.client, sent.progression_id, sent.first_run_id)
    print(f"\n{sent.progression_id}: {len(runs)} run(s), {sent.results} results, "
          f"{len(sent.revalidations)} revalidations, {len(sent.findings)} findings\n{table(runs, sent.deployed_at)}")
    years = by_year(runs, sent.deployed_at)
    steady = [b for y, (_, b) in years.items() if y > 1] or [b for _, b in years.values()]
    per_year_bytes = sum(steady) / len(steady)
    max_events, max_bytes = max(r.events for r in runs), max(r.bytes for r in runs)
    report.add("runs in the chain", len(runs), "runs")
    report.add("max events per run", max_events, "events", goal=f"< {WARN_EVENTS:,} (warn)",
               met=max_events < WARN_EVENTS)
    report.add("max bytes per run", max_bytes / 1024 / 1024, "MB", goal=f"< {WARN_BYTES / 1024 / 1024:.0f} (warn)",
               met=max_bytes < WARN_BYTES)
    report.add("events per year in production", sum(n for y, (n, _) in years.items() if y > 1)
               / max(len(years) - 1, 1), "events")
    report.add("bytes per year in production", per_year_bytes / 1024, "KB")
    report.add("years to a real server's continue-as-new suggestion (4 MB)", SUGGEST_BYTES / per_year_bytes, "years")
    return report


if __name__ == "__main__":
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=10)
    run(main, parser.parse_args())
