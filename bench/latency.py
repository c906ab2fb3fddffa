"""Latency: enqueue-to-done times at half the rate cap.

Zoom (the simulator) is capped at 10 calls/s in every category and the workers know it; this
process enqueues 5 creates a second, evenly spaced, for 30 s (150 jobs), through
:func:`worker.jobs.create_meeting`, with the governor on and 2 workers x 4 processes. A job's
latency is its ledger ``finished_at - created_at`` (both PostgreSQL's clock). There is no
second side: the reference line is the governor's slot interval, the shortest spacing it
gives two calls ((1 + RATE_ARRIVAL_SPREAD_S) / (cap x RATE_HEADROOM)).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console

from bench import harness, report
from worker import simulator
from worker.config import Settings

NAME = "latency"
TITLE = "Latency: enqueue to done at half the rate cap"
TIMEOUT_S = 120.0
PERCENTILES = (50, 95, 99)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=150, help="creates (150 = 30 s at 5/s)")
    parser.add_argument("--cap", type=int, default=10, help="calls/s in every category")
    parser.add_argument("--load", type=float, default=0.5, help="enqueue rate as share of cap")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="processes per worker")
    parser.add_argument(
        "--warmup", type=int, default=None, help="jobs run first, unmeasured (one per process)"
    )


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    fleet = harness.Fleet(args.workers, args.concurrency)
    rate = args.cap * args.load
    caps = {category: args.cap for category in simulator.RATE_CATEGORIES}
    settings = {"ZOOM_RATE_LIMITS": ",".join(f"{k}={v}" for k, v in caps.items())}
    out.print(f"[bold]latency[/]: {args.jobs} creates at {rate:g}/s, cap {args.cap}/s, {fleet}")
    with harness.service(
        simulator.SimulatorConfig(rate_limits=caps), fleet, out, **settings
    ) as svc:
        svc.warm_up(fleet.processes if args.warmup is None else args.warmup)
        started = time.monotonic()
        for number in range(args.jobs):
            # Evenly spaced arrivals; a late enqueue does not bunch the next ones up.
            time.sleep(max(0.0, started + number / rate - time.monotonic()))
            svc.enqueue(number)
        enqueue_s = time.monotonic() - started
        done, _waited = svc.wait_final(args.jobs, TIMEOUT_S)
        stats, ledger = svc.stats(), svc.ledger()
    latencies = [
        (job["finished_at"] - job["created_at"]).total_seconds()
        for job in ledger
        if job["status"] == "succeeded"
    ]
    marks = {f"p{p}": harness.percentile(latencies, p) for p in PERCENTILES}
    marks["max"] = max(latencies, default=0.0)
    fields = Settings.model_fields
    spread_s = fields["RATE_ARRIVAL_SPREAD_S"].default
    slot_s = (1 + spread_s) / (args.cap * fields["RATE_HEADROOM"].default)
    calls = int(stats["api_calls"])
    ours = {
        **marks,
        "mean": sum(latencies) / len(latencies) if latencies else 0.0,
        "enqueue_rate": (args.jobs - 1) / enqueue_s if enqueue_s else 0.0,
        "final": done,
        "succeeded": len(latencies),
        "failed": len(ledger) - len(latencies),
        "api_calls": calls,
        "api_429": stats["api_429"],
        "deferrals": sum(job["deferrals"] for job in ledger),
    }
    rows = [[name, f"{ours[name] * 1000:.0f} ms", "-", "-"] for name in (*marks, "mean")]
    rows += [
        ["arrival rate", f"{ours['enqueue_rate']:.2f}/s", "-", f"{rate:g}/s"],
        ["429s", str(ours["api_429"]), "-", "0"],
        ["re-queues (deferrals)", str(ours["deferrals"]), "-", "-"],
        ["creates succeeded / failed", f"{len(latencies)} / {ours['failed']}", "-", "-"],
    ]
    return {
        "name": NAME,
        "title": TITLE,
        "machine": harness.machine(),
        "params": {**vars(args), "rate": rate},
        "ours": ours,
        "rows": rows,
        "panels": [
            report.panel(
                f"enqueue to done at {rate:g}/s (cap {args.cap}/s)",
                "milliseconds",
                {name: 1000 * marks[name] for name in (*(f"p{p}" for p in PERCENTILES), "max")},
                {f"governor slot interval {slot_s * 1000:.0f} ms": slot_s * 1000},
            )
        ],
    }
