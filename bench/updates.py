"""Updates: update jobs through the whole pipeline at a lifted rate limit (issue 14).

``--meetings`` meetings are created first (unmeasured), then ``--per-meeting`` topic/duration
updates of each are enqueued at once, interleaved across meetings, through the public API
(``worker.jobs.update_meeting``). Each meeting's updates run one at a time, in order
(:mod:`worker.updates`), so the pipeline's parallelism is the number of meetings. Rate
limits are lifted (the governor runs, but never holds a call); the per-meeting and per-host
caps are raised out of the way. Throughput is updates / (last ``finished_at`` minus first
``created_at``).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.console import Console

from bench import harness, report
from worker import jobs, simulator

NAME = "updates"
TITLE = "Updates: update jobs per second, in order per meeting, rate limit lifted"
CAP = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--meetings", type=int, default=50, help="meetings updated (50)")
    parser.add_argument("--per-meeting", type=int, default=4, help="updates per meeting (4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="processes per worker")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait")


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    fleet = harness.Fleet(args.workers, args.concurrency)
    config = dataclasses.replace(simulator.SimulatorConfig(), meeting_update_limit=CAP)
    settings = {"ZOOM_RATE_LIMITS": harness.UNCAPPED, "ZOOM_MEETING_UPDATE_LIMIT": str(CAP)}
    total = args.meetings * args.per_meeting
    out.print(f"[bold]updates[/]: {total} updates of {args.meetings} meetings, {fleet}")
    with harness.service(config, fleet, out, **settings) as svc:
        created = [svc.enqueue(n) for n in range(args.meetings)]
        svc.wait_final(args.meetings, args.timeout)
        meeting_ids = [job.meeting_id for job in jobs.jobs_for(created)]
        svc.warm_up(0)  # the simulator's counters from here
        run_id = svc.run_id
        for round_ in range(args.per_meeting):
            for n, meeting_id in enumerate(meeting_ids):
                assert meeting_id is not None
                changes = {"topic": f"Update {round_} of {n}", "duration": 30 + round_}
                jobs.update_meeting(
                    meeting_id, changes, idempotency_key=f"upd-{run_id}-{n}-{round_}"
                )
        done, waited_s = svc.wait_final(total, args.timeout, batch="upd")
        ledger, stats = svc.ledger("upd"), svc.stats()
    first = min(job["created_at"] for job in ledger)
    last = max(job["finished_at"] for job in ledger if job["finished_at"])
    span_s = (last - first).total_seconds() if done >= total else waited_s
    succeeded = sum(job["status"] == "succeeded" for job in ledger)
    per_s = succeeded / span_s if span_s else 0.0
    return {
        "name": NAME,
        "title": TITLE,
        "machine": harness.machine(),
        "params": vars(args),
        "updates_per_s": per_s,
        "rows": [
            ["updates succeeded / enqueued", f"{succeeded} / {total}", "-", "-"],
            ["first enqueued -> last finished", f"{span_s:.1f}s", "-", "-"],
            ["updates per second", f"{per_s:.1f}/s", "-", "-"],
            [
                "PATCH calls (simulator)",
                str(stats["calls_by_operation"].get("update", 0)),
                "-",
                "-",
            ],
            ["attempts (all jobs)", str(sum(job["attempts"] for job in ledger)), "-", "-"],
        ],
        "panels": [
            report.panel("update jobs per second", "updates/s", {"updates": per_s}, fmt="{:.1f}")
        ],
    }
