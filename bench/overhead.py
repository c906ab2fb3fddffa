"""Overhead: what the pipeline costs when Zoom answers at once.

(a) 300 creates through the whole pipeline: :func:`worker.jobs.create_meeting` from 4
producer threads of this process (ledger row, then broker message), then 2 celery workers x
4 processes (claim, governor permit, token, call, outcome), after a warm-up of two jobs per
process. Jobs per second is jobs / (last ``finished_at`` - first ``created_at``). (b) the
same creates as raw httpx calls with one shared token from as many threads (8) in one plain
process (:func:`bench.baselines.raw_calls`), against a simulator with the same (empty)
config: no latency, no limits.

PostgreSQL transactions per job come from ``pg_stat_database`` (``xact_commit +
xact_rollback`` of the benchmark's database): read before the jobs are enqueued (after the
warm-up, and the 10 s PostgreSQL may take to report it) and again after the workers have
stopped (a backend flushes its counters when it exits), minus this process's own ledger
polls and minus what the idle fleet did over a measured idle window, scaled to the run's
length. The producers' transactions are the pipeline's, so they count. Peak memory is each
prefork pool process's ``VmHWM``, read just before the fleet stops.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from rich.console import Console

from bench import baselines, harness, probes, report
from worker import simulator

NAME = "overhead"
TITLE = "Overhead: the whole pipeline against raw httpx calls, Zoom answering at once"
TARGET_SHARE_OF_RAW = 0.5
TARGET_XACTS_PER_JOB = 3.0
TIMEOUT_S = 180.0
STATS_FLUSH_S = 10.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=300, help="creates per side (300)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="processes per worker")
    parser.add_argument("--producers", type=int, default=4, help="threads enqueueing jobs")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle baseline")
    parser.add_argument(
        "--warmup", type=int, default=None, help="jobs run first, unmeasured (two per process)"
    )
    harness.add_broker_argument(parser)


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    fleet = harness.Fleet(args.workers, args.concurrency)
    out.print(f"[bold]overhead[/]: (a) the pipeline, {fleet}")
    ours = _pipeline(args, fleet, out)
    out.print(f"[bold]overhead[/]: (b) raw httpx calls from {fleet.processes} threads")
    with simulator.start_simulator(simulator.SimulatorConfig()) as sim:
        raw = baselines.raw_calls(args.jobs, fleet.processes, sim.api_url, sim.oauth_url)
    raw["jobs_per_s"] = raw["created"] / raw["elapsed_s"] if raw["elapsed_s"] else 0.0
    raw["call_ms"] = 1000 * fleet.processes / raw["jobs_per_s"] if raw["jobs_per_s"] else 0.0
    raw["cpu_ms_per_call"] = 1000 * raw["cpu_s"] / raw["calls"] if raw["calls"] else 0.0
    share = ours["jobs_per_s"] / raw["jobs_per_s"] if raw["jobs_per_s"] else 0.0
    rss = ours["pool_peak_rss_mb"]
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "machine": harness.machine(),
        "params": {**vars(args), "threads": fleet.processes},
        "ours": {**ours, "share_of_raw": share},
        "baseline": raw,
        "targets": {
            "share_of_raw": TARGET_SHARE_OF_RAW,
            "xacts_per_job": TARGET_XACTS_PER_JOB,
        },
        "rows": [
            [
                "jobs per second",
                f"{ours['jobs_per_s']:.1f}",
                f"{raw['jobs_per_s']:.1f} (raw httpx)",
                f">= {TARGET_SHARE_OF_RAW * raw['jobs_per_s']:.1f} (half of raw)",
            ],
            ["share of raw throughput", f"{share:.0%}", "100%", f">= {TARGET_SHARE_OF_RAW:.0%}"],
            [
                "PostgreSQL transactions per job",
                f"{ours['xacts_per_job']:.2f}",
                "0",
                f"<= {TARGET_XACTS_PER_JOB:.0f}",
            ],
            [
                "peak RSS per pool process (max / mean)",
                f"{max(rss, default=0):.0f} / {statistics.fmean(rss or [0]):.0f} MB",
                "-",
                "-",
            ],
            [
                "worker CPU per job (mains + pool)",
                f"{ours['worker_cpu_ms_per_job']:.1f} ms",
                f"{raw['cpu_ms_per_call']:.1f} ms (client, per call)",
                "-",
            ],
            ["enqueue rate (4 producers)", f"{ours['enqueue_per_s']:.0f}/s", "-", "-"],
            ["median wait on the broker", f"{ours['queue_ms_p50']:.0f} ms", "-", "-"],
            [
                "median claim to outcome",
                f"{ours['work_ms_p50']:.0f} ms",
                f"{raw['call_ms']:.0f} ms (one call)",
                "-",
            ],
            [
                "creates succeeded / failed",
                f"{ours['succeeded']} / {ours['failed']}",
                f"{raw['created']} / {raw['calls'] - raw['created']}",
                f"{args.jobs} / 0",
            ],
        ],
    }
    result["panels"] = [
        report.panel(
            "throughput",
            "creates per second",
            {"pipeline": ours["jobs_per_s"], "raw httpx": raw["jobs_per_s"]},
            {"target: half of raw": TARGET_SHARE_OF_RAW * raw["jobs_per_s"]},
            fmt="{:.1f}",
        ),
        report.panel(
            "PostgreSQL transactions per job",
            "transactions",
            {"pipeline": ours["xacts_per_job"], "raw httpx": 0.0},
            {f"target <= {TARGET_XACTS_PER_JOB:.0f}": TARGET_XACTS_PER_JOB},
            fmt="{:.2f}",
        ),
        report.panel(
            "peak RSS per pool process",
            "MB (VmHWM)",
            {f"p{n + 1}": mb for n, mb in enumerate(rss)},
            fmt="{:.0f}",
        ),
    ]
    return result


def _pipeline(args: argparse.Namespace, fleet: harness.Fleet, out: Console) -> dict[str, Any]:
    with harness.service(
        simulator.SimulatorConfig(), fleet, out, args.broker, ZOOM_RATE_LIMITS=harness.UNCAPPED
    ) as svc:
        svc.warm_up(2 * fleet.processes if args.warmup is None else args.warmup)
        # A backend that flushed its counters less than a second ago reports the rest only
        # after 10 s idle (PGSTAT_IDLE_INTERVAL): let the warm-up's transactions land first.
        time.sleep(STATS_FLUSH_S)
        idle_from, idle_start = probes.xact_count(), time.monotonic()
        time.sleep(args.idle)
        before, idle_end = probes.xact_count(), time.monotonic()
        idle_rate = (before - idle_from) / (idle_end - idle_start)
        own_before = svc.own_statements
        mains = [item.process.pid for item in svc.workers()]
        pools = [pid for pid in mains for pid in probes.pool_children(pid)]
        cpu_before = probes.cpu_seconds(mains + pools)
        started = time.monotonic()
        enqueue_s = svc.enqueue_many(args.jobs, args.producers)
        done, _waited = svc.wait_final(args.jobs, TIMEOUT_S)
        cpu_s = probes.cpu_seconds(mains + pools) - cpu_before
        pool_kb = sorted((probes.peak_rss_kb(pid) for pid in pools), reverse=True)
        main_kb = [probes.peak_rss_kb(pid) for pid in mains]
        ledger = svc.ledger()
        stats = svc.stats()
        own = svc.own_statements - own_before
    after, ended = probes.settled_xact_count(), time.monotonic()
    idle_xacts = idle_rate * (ended - started)
    pipeline_xacts = after - before - own - idle_xacts
    first = min(job["created_at"] for job in ledger)
    last = max((job["finished_at"] for job in ledger if job["finished_at"]), default=first)
    span_s = (last - first).total_seconds()
    succeeded = sum(job["status"] == "succeeded" for job in ledger)
    return {
        "jobs_per_s": succeeded / span_s if span_s > 0 else 0.0,
        "span_s": span_s,
        "enqueue_per_s": args.jobs / enqueue_s if enqueue_s else 0.0,
        "final": done,
        "succeeded": succeeded,
        "failed": len(ledger) - succeeded,
        "queue_ms_p50": 1000 * harness.percentile(_seconds(ledger, "created_at", "started_at"), 50),
        "work_ms_p50": 1000 * harness.percentile(_seconds(ledger, "started_at", "finished_at"), 50),
        "worker_cpu_ms_per_job": 1000 * cpu_s / args.jobs,
        "xacts_total": after - before,
        "xacts_own_statements": own,
        "xacts_idle_estimate": idle_xacts,
        "xacts_per_job": pipeline_xacts / args.jobs,
        "pool_peak_rss_mb": [kb / 1024 for kb in pool_kb],
        "worker_main_peak_rss_mb": [kb / 1024 for kb in main_kb],
        "api_calls": stats["api_calls"],
        "tokens": stats["tokens_issued"],
    }


def _seconds(ledger: list[dict[str, Any]], start: str, end: str) -> list[float]:
    return [(job[end] - job[start]).total_seconds() for job in ledger if job[start] and job[end]]
