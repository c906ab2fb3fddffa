"""Priority: how long interactive (high-priority) creates wait behind a bulk backfill.

``--jobs`` (2,000) bulk-priority creates are enqueued in one :func:`worker.jobs.create_meetings`
call against Zoom capped at ``--cap`` (10) calls/s, the workers told the same cap; after
``--settle`` seconds, when the backlog is in flight, ``--high`` (20) high-priority creates
follow, one every ``--high-every`` seconds (an interactive stream). The wait of a high job is
its ledger ``finished_at`` minus its ``created_at``; its p95 is reported against the goal of
2 s (at 10/s, one slot is 0.1 s). The bulk jobs finished meanwhile show the backfill kept
going. The run ends when the high jobs are final (the backlog is left unfinished).
2 workers x 8 processes.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console

from bench import harness, report, workload
from worker import jobs, simulator

NAME = "priority"
TITLE = "Priority: high-priority creates behind a 2,000-job bulk backfill at a 10/s cap"
TARGET_P95_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=2000, help="bulk creates enqueued first")
    parser.add_argument("--high", type=int, default=20, help="high-priority creates after")
    parser.add_argument("--high-every", type=float, default=0.5, help="seconds between them")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the first")
    parser.add_argument("--cap", type=int, default=10, help="calls/s in every category")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="processes per worker")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the high jobs")


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    fleet = harness.Fleet(args.workers, args.concurrency)
    caps = {category: args.cap for category in simulator.RATE_CATEGORIES}
    config = simulator.SimulatorConfig(rate_limits=caps)
    settings = {"ZOOM_RATE_LIMITS": ",".join(f"{name}={cap}" for name, cap in caps.items())}
    out.print(f"[bold]priority[/]: {args.jobs} bulk then {args.high} high at {args.cap}/s, {fleet}")
    with harness.service(config, fleet, out, **settings) as svc:
        svc.warm_up(fleet.processes)
        backlog = [
            {
                "user_id": workload.host(n),
                "meeting": workload.new_body(n),
                "idempotency_key": f"bulk-{svc.run_id}-{n}",
            }
            for n in range(args.jobs)
        ]
        jobs.create_meetings(backlog, priority="bulk")
        time.sleep(args.settle)  # the backlog reaches its steady state meanwhile
        for n in range(args.high):
            key = f"high-{svc.run_id}-{n}"
            jobs.create_meeting(workload.host(n), workload.new_body(n), key, priority="high")
            time.sleep(args.high_every)
        done, _ = svc.wait_final(args.high, args.timeout, batch="high")
        high = svc.ledger(batch="high")
        bulk_done = sum(job["finished_at"] is not None for job in svc.ledger(batch="bulk"))
        stats = svc.stats()
    waits = [
        (job["finished_at"] - job["created_at"]).total_seconds()
        for job in high
        if job["finished_at"] is not None
    ]
    p50, p95 = harness.percentile(waits, 50), harness.percentile(waits, 95)
    calls = int(stats["api_calls"])
    share_429 = stats["api_429"] / calls if calls else 0.0
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "machine": harness.machine(),
        "params": vars(args),
        "high_waits_s": waits,
        "high_done": done,
        "bulk_done_meanwhile": bulk_done,
        "share_429": share_429,
        "targets": {"high_p95_s": TARGET_P95_S},
        "rows": [
            [
                "high-priority wait p50 / p95 / max",
                f"{p50:.2f}s / {p95:.2f}s / {max(waits, default=0):.2f}s",
                "-",
                f"p95 < {TARGET_P95_S:.0f}s",
            ],
            ["high jobs finished", f"{done} of {args.high}", "-", str(args.high)],
            ["bulk jobs finished by then", str(bulk_done), "-", "> 0 (the backfill goes on)"],
            ["429 share of API calls", f"{share_429:.1%}", "-", "< 1%"],
        ],
    }
    result["panels"] = [
        report.panel(
            f"wait of {args.high} high-priority creates behind {args.jobs} bulk ones",
            "seconds",
            {"p50": p50, "p95": p95},
            {f"goal p95 < {TARGET_P95_S:.0f}s": TARGET_P95_S},
            fmt="{:.2f}s",
        )
    ]
    return result
