"""Overhead: what the pipeline costs per job against a bare Celery task, side by side.

The same ``--jobs`` creates (600) run four times, one side after the other, on the same
machine and the same fleet shape (``--workers`` x ``--concurrency``: 2 x 8), Zoom (the
simulator, served from this process) answering at once and every rate limit lifted:

- **bare**: :mod:`bench.bare_app`, a minimal Celery app (``acks_late``, prefetch 1, no task
  events, a token per pool process, one httpx POST per task): what a team would otherwise run.
- **bare + ledger floor**: the same bare task with the least the pipeline's promises need and
  nothing else (:mod:`bench.bare_app`): three durable PostgreSQL statements per create on a
  kept connection (claim, fence, outcome) and three single-command Redis round trips (permit,
  pacing, counters). The bare task against the floor is what durability and a fleet-wide
  governor cost on this machine at the least; the floor against the pipeline is the
  pipeline's own code.
- **pipeline, events off**: :func:`worker.jobs.create_meeting` (ledger row, then broker
  message), then claim, governor permit, token, fence, call, outcome; ``CELERY_TASK_EVENTS=false``.
- **pipeline, events on**: the same with Flower's task events (the default).

Each side starts with a warm-up of :data:`WARMUP_PER_PROCESS` jobs per process (a deployed
fleet is warm: psycopg prepares a statement on its 5th run on a connection, one more
transaction, once), then an
idle window that measures what the idle fleet does anyway, then the jobs from
``--producers`` threads of this process, with the fleet paused (Celery's remote control
cancels the consumers of the jobs' queues: the priorities' for the pipeline, Celery's default
for the bare task), so the time measured is the fleet draining a full queue. Per side: jobs
per second (see below), PostgreSQL transactions per job, Redis commands per job (``INFO
commandstats`` of the broker's and governor's server, minus the idle rate; commands a Lua
script runs count one each, so a script's round trip shows as several commands), worker CPU
per job (``/proc/<pid>/stat`` of the main and pool processes, apart), and each pool process's
peak RSS (``VmHWM``) and, at the end, its private memory (USS): RSS counts the shared
libraries and the pages inherited from the worker's main process in every process; USS is
what one more pool process costs.

Transactions are PostgreSQL's own count (``xact_commit + xact_rollback`` of the benchmark's
database in ``pg_stat_database``), read before the measured jobs and again after the workers
stopped (a backend reports its counts lazily, at the latest when it exits), less: this
process's own statements (the ledger polls, one autocommit transaction each), the idle
fleet's rate over the span, and the producers' commits (counted apart: SQLAlchemy ``commit``
events in this process, one per ``create_meeting``). What is left is what a create costs the
workers, whoever runs it: the claim and the fence (one autocommit statement each) and the
outcome (one transaction) in the pool process; a pool connection idle for over 5 s is pinged
once (``worker.db``); and any backend that ``LISTEN``s (the outbox relay) runs a transaction
for every ``NOTIFY`` in the database, which is why a job's outcome is announced only when
someone waits for it (``jobs.awaited``, :mod:`worker.waiting`).

The pipeline's span is its ledger's (first ``created_at`` to last ``finished_at``); the bare
side's is from its first send until the simulator has counted the last create. The producers'
own work counts on both sides (the pipeline's producers write the ledger). Last, the
producer's call alone: ``create_meeting`` p50 / p99 and the bulk call, as in ``bench enqueue``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from rich.console import Console

from bench import bare, enqueue, harness, probes, report
from worker import celery_app, simulator

NAME = "overhead"
TITLE = "Overhead: the pipeline against a bare Celery task, Zoom answering at once"
TARGET_SHARE = 0.8
TARGET_XACTS_PER_JOB = 3.0
TARGET_RSS_RATIO = 1.3
TIMEOUT_S = 300.0
STATS_FLUSH_S = 10.5
# Jobs per pool process before the measured ones: each process's statements prepared.
WARMUP_PER_PROCESS = 8
FLOOR = "bare + ledger floor"
SIDES = ("pipeline, events on", "pipeline, events off", FLOOR, "bare Celery")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=600, help="creates per side (600)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="processes per worker")
    parser.add_argument("--producers", type=int, default=4, help="threads enqueueing jobs")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle baseline")
    parser.add_argument(
        "--warmup", type=int, default=None, help="jobs run first, unmeasured (eight per process)"
    )
    harness.add_broker_argument(parser)
    parser.add_argument(
        "--enqueue-jobs", type=int, default=300, help="single and bulk creates timed (300)"
    )


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    fleet = harness.Fleet(args.workers, args.concurrency)
    warmup = WARMUP_PER_PROCESS * fleet.processes if args.warmup is None else args.warmup
    load = {}
    sides: dict[str, dict[str, Any]] = {}
    for side in reversed(SIDES):
        out.print(f"[bold]overhead[/]: {side}, {fleet}")
        load[side] = harness.machine()["load_avg_1m"]
        if side == "bare Celery":
            sides[side] = _bare(args, fleet, warmup, out)
        elif side == FLOOR:
            sides[side] = _bare(args, fleet, warmup, out, floor=True)
        else:
            sides[side] = _pipeline(args, fleet, warmup, out, events=side.endswith("on"))
    base = sides["bare Celery"]
    for measured in sides.values():
        measured["share_of_bare"] = _ratio(measured["jobs_per_s"], base["jobs_per_s"])
        measured["share_of_floor"] = _ratio(measured["jobs_per_s"], sides[FLOOR]["jobs_per_s"])
        measured["rss_ratio"] = _ratio(measured["pool_rss_max_mb"], base["pool_rss_max_mb"])
    costs = enqueue.producer_costs(args.enqueue_jobs, out)
    return {
        "name": NAME,
        "title": TITLE,
        "machine": harness.machine(),
        "load_avg_1m_at_start": load,
        "params": {**vars(args), "warmup": warmup},
        "sides": sides,
        "enqueue": costs,
        "targets": {
            "share_of_bare": TARGET_SHARE,
            "xacts_per_job": TARGET_XACTS_PER_JOB,
            "rss_ratio": TARGET_RSS_RATIO,
        },
        "columns": ["metric", *SIDES, "target"],
        "rows": _rows(sides, costs, args),
        "panels": _panels(sides),
    }


def _rows(
    sides: dict[str, dict[str, Any]], costs: dict[str, float], args: argparse.Namespace
) -> list[list[str]]:
    def row(metric: str, fmt: str, key: str, target: str = "-") -> list[str]:
        return [metric, *(fmt.format(sides[side][key]) for side in SIDES), target]

    bare_rate = sides["bare Celery"]["jobs_per_s"]
    return [
        row("jobs per second", "{:.1f}", "jobs_per_s", f">= {TARGET_SHARE * bare_rate:.1f}"),
        row("share of the bare task's", "{:.0%}", "share_of_bare", f">= {TARGET_SHARE:.0%}"),
        row("share of the ledger floor's", "{:.0%}", "share_of_floor"),
        row("PostgreSQL transactions per job", "{:.2f}", "xacts_per_job"),
        row("  of which the workers'", "{:.2f}", "worker_xacts_per_job", "<= 3"),
        row("  of which the producer's", "{:.2f}", "producer_xacts_per_job"),
        row("Redis commands per job", "{:.1f}", "redis_per_job"),
        row("worker CPU per job (mains + pool)", "{:.1f} ms", "worker_cpu_ms_per_job"),
        row("  of which the main processes'", "{:.1f} ms", "main_cpu_ms_per_job"),
        row("  of which the pool processes'", "{:.1f} ms", "pool_cpu_ms_per_job"),
        row("peak RSS per pool process (max)", "{:.0f} MB", "pool_rss_max_mb"),
        row("peak RSS per pool process (mean)", "{:.0f} MB", "pool_rss_mean_mb"),
        row("peak RSS / the bare task's", "{:.2f}x", "rss_ratio", f"<= {TARGET_RSS_RATIO}x"),
        row("private memory per pool process (USS, mean)", "{:.0f} MB", "pool_unique_mean_mb"),
        row(f"enqueue rate ({args.producers} producers)", "{:.0f}/s", "enqueue_per_s"),
        row("load average (1 min) after the side", "{:.2f}", "load_avg_1m"),
        row("creates succeeded", "{}", "succeeded", f"{args.jobs}"),
        [
            "create_meeting p50 / p99 (single)",
            f"{costs['p50_us']:.0f} / {costs['p99_us']:.0f} µs",
            "-",
            "-",
            "-",
            "-",
        ],
        [
            f"{args.enqueue_jobs} creates: single calls / one bulk call",
            f"{costs['single_s']:.2f} / {costs['bulk_s']:.3f} s",
            "-",
            "-",
            "-",
            "-",
        ],
    ]


def _panels(sides: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def bars(key: str) -> dict[str, float]:
        return {side.replace("pipeline, ", ""): sides[side][key] for side in SIDES}

    bare_rate = sides["bare Celery"]["jobs_per_s"]
    return [
        report.panel(
            "throughput",
            "creates per second",
            bars("jobs_per_s"),
            {"target: 0.8x bare": TARGET_SHARE * bare_rate},
            fmt="{:.1f}",
        ),
        report.panel(
            "PostgreSQL transactions per job (workers')",
            "transactions",
            bars("worker_xacts_per_job"),
            {f"target <= {TARGET_XACTS_PER_JOB:.0f}": TARGET_XACTS_PER_JOB},
            fmt="{:.2f}",
        ),
        report.panel("Redis commands per job", "commands", bars("redis_per_job"), fmt="{:.1f}"),
        report.panel(
            "worker CPU per job", "ms (mains + pool)", bars("worker_cpu_ms_per_job"), fmt="{:.1f}"
        ),
        report.panel(
            "peak RSS per pool process (max)",
            "MB (VmHWM)",
            bars("pool_rss_max_mb"),
            {"target: 1.3x bare": TARGET_RSS_RATIO * sides["bare Celery"]["pool_rss_max_mb"]},
        ),
    ]


class _Window:
    """Counters over a measured window, with what the idle fleet did removed."""

    def __init__(self, mains: list[int], pools: list[int], idle_s: float, pg: bool) -> None:
        self.mains, self.pools, self.pg = mains, pools, pg
        first = self._read()
        time.sleep(idle_s)
        self.before = self._read()
        elapsed = self.before["at"] - first["at"]
        self.idle = {key: (self.before[key] - first[key]) / elapsed for key in ("redis", "xacts")}
        self.cpu_before = probes.cpu_seconds(mains), probes.cpu_seconds(pools)

    def _read(self) -> dict[str, float]:
        return {
            "at": time.monotonic(),
            "redis": probes.redis_calls(harness.BROKER_URL),
            "xacts": probes.xact_count() if self.pg else 0,
        }

    def stop_work(self) -> None:
        """Call when the jobs are done, before the workers stop."""
        self.cpu_mains_s = probes.cpu_seconds(self.mains) - self.cpu_before[0]
        self.cpu_pools_s = probes.cpu_seconds(self.pools) - self.cpu_before[1]
        self.after = self._read()

    def per_job(self, jobs: int, *, xacts_after: int = 0, own_xacts: int = 0) -> dict[str, float]:
        span = self.after["at"] - self.before["at"]
        redis = self.after["redis"] - self.before["redis"] - self.idle["redis"] * span
        xacts = xacts_after - self.before["xacts"] - own_xacts - self.idle["xacts"] * span
        return {
            "redis_per_job": redis / jobs,
            "xacts_per_job": xacts / jobs if self.pg else 0.0,
            "xacts_idle_estimate": self.idle["xacts"] * span,
            "worker_cpu_ms_per_job": 1000 * (self.cpu_mains_s + self.cpu_pools_s) / jobs,
            "main_cpu_ms_per_job": 1000 * self.cpu_mains_s / jobs,
            "pool_cpu_ms_per_job": 1000 * self.cpu_pools_s / jobs,
        }


def _rss(pools: list[int]) -> dict[str, Any]:
    mb = sorted((probes.peak_rss_kb(pid) / 1024 for pid in pools), reverse=True)
    unique = [probes.unique_kb(pid) / 1024 for pid in pools]
    return {
        "pool_peak_rss_mb": mb,
        "pool_unique_mean_mb": statistics.fmean(unique or [0.0]),
        "pool_rss_max_mb": max(mb, default=0.0),
        "pool_rss_mean_mb": statistics.fmean(mb or [0.0]),
    }


def _bare(
    args: argparse.Namespace,
    fleet: harness.Fleet,
    warmup: int,
    out: Console,
    *,
    floor: bool = False,
) -> dict[str, Any]:
    """The bare task's side, or with ``floor`` the ledger floor's (bench.bare_app)."""
    harness.reset_redis()
    config = simulator.SimulatorConfig(daily_create_limit=harness.DAILY_LIMIT)
    with (
        simulator.start_simulator(config) as sim,
        bare.fleet(fleet, sim, out, floor=floor) as processes,
    ):
        producer = bare.Producer(sim, processes)
        try:
            producer.enqueue(warmup, args.producers)
            producer.wait_created(warmup, TIMEOUT_S)
            if floor:
                time.sleep(STATS_FLUSH_S)  # as the pipeline's: the warm-up's counts land first
            mains, pools = bare.pool_pids(processes)
            window = _Window(mains, pools, args.idle, pg=floor)
            harness.pause(producer.app, fleet.workers)
            enqueue_s = producer.enqueue(args.jobs, args.producers)
            resumed = time.monotonic()
            harness.resume(producer.app, fleet.workers)
            span_s = producer.wait_created(warmup + args.jobs, TIMEOUT_S) - resumed
            window.stop_work()
            rss = _rss(pools)
            created = producer.created() - warmup
        finally:
            producer.close()
    xacts_after = probes.settled_xact_count() if floor else 0
    costs = window.per_job(args.jobs, xacts_after=xacts_after)
    return {
        "jobs_per_s": created / span_s,
        "span_s": span_s,
        "enqueue_per_s": args.jobs / enqueue_s,
        "succeeded": created,
        "producer_xacts_per_job": 0.0,
        "worker_xacts_per_job": costs["xacts_per_job"],
        "load_avg_1m": harness.machine()["load_avg_1m"],
        **costs,
        **rss,
    }


def _pipeline(
    args: argparse.Namespace, fleet: harness.Fleet, warmup: int, out: Console, *, events: bool
) -> dict[str, Any]:
    setting = {"CELERY_TASK_EVENTS": "true" if events else "false"}
    with harness.service(
        simulator.SimulatorConfig(),
        fleet,
        out,
        args.broker,
        ZOOM_RATE_LIMITS=harness.UNCAPPED,
        **setting,
    ) as svc:
        # This process's Celery app read its configuration for an earlier side: the
        # producers' "task-sent" event follows this side's setting.
        celery_app.app.conf.task_send_sent_event = events
        svc.warm_up(warmup)
        # A backend that flushed its counters less than a second ago reports the rest only
        # after 10 s idle (PGSTAT_IDLE_INTERVAL): let the warm-up's transactions land first.
        time.sleep(STATS_FLUSH_S)
        mains = [item.process.pid for item in svc.workers()]
        pools = [pid for pid in mains for pid in probes.pool_children(pid)]
        own_before = svc.own_statements
        window = _Window(mains, pools, args.idle, pg=True)
        harness.pause(celery_app.app, fleet.workers, harness.JOB_QUEUES)
        with probes.counting_commits() as producer_xacts:
            enqueue_s = svc.enqueue_many(args.jobs, args.producers)
        resumed = svc.db_now()
        harness.resume(celery_app.app, fleet.workers, harness.JOB_QUEUES)
        svc.wait_final(args.jobs, TIMEOUT_S)
        window.stop_work()
        rss = _rss(pools)
        ledger = svc.ledger()
        stats = svc.stats()
        own = svc.own_statements - own_before
    xacts_after = probes.settled_xact_count()
    last = max((job["finished_at"] for job in ledger if job["finished_at"]), default=resumed)
    span_s = (last - resumed).total_seconds()
    succeeded = sum(job["status"] == "succeeded" for job in ledger)
    costs = window.per_job(args.jobs, xacts_after=xacts_after, own_xacts=own)
    return {
        "jobs_per_s": succeeded / span_s if span_s > 0 else 0.0,
        "span_s": span_s,
        "enqueue_per_s": args.jobs / enqueue_s if enqueue_s else 0.0,
        "succeeded": succeeded,
        "failed": len(ledger) - succeeded,
        "load_avg_1m": harness.machine()["load_avg_1m"],
        "work_ms_p50": 1000 * harness.percentile(_seconds(ledger, "started_at", "finished_at"), 50),
        "api_calls": stats["api_calls"],
        "tokens": stats["tokens_issued"],
        **costs,
        "producer_xacts_per_job": producer_xacts[0] / args.jobs,
        "worker_xacts_per_job": costs["xacts_per_job"] - producer_xacts[0] / args.jobs,
        **rss,
    }


def _ratio(value: float, base: float) -> float:
    return value / base if base else 0.0


def _seconds(ledger: list[dict[str, Any]], start: str, end: str) -> list[float]:
    return [(job[end] - job[start]).total_seconds() for job in ledger if job[start] and job[end]]
