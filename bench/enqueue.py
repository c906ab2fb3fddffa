"""Enqueue: what a producer's call costs, and how soon ``wait_for_job`` hears an outcome.

(a) ``--jobs`` (1,000) creates enqueued one call at a time with
:func:`worker.jobs.create_meeting`, each call timed (p50 / p99 in microseconds), against
(b) the same number in one :func:`worker.jobs.create_meetings` call (one transaction, one
broker connection), ``--repeat`` times each on an emptied ledger and broker; the median run of
each is reported. Each create carries an idempotency key, as an application's would.
(c) ``wait_for_job`` latency: ``--waits`` jobs, each claimed here, a thread blocked in
:func:`worker.jobs.wait_for_job`, then the outcome recorded; the latency is from the return of
the outcome's commit to the return of ``wait_for_job`` (LISTEN/NOTIFY, then one read of the
job).
(d) relay latency: ``--relays`` jobs, each written with ``create_meeting(..., session=...)``
and committed by the caller; a relay (:mod:`worker.relay`, in this process, its periodic scan
a minute away so only the commit's NOTIFY wakes it) sends it. The latency is from the return
of the caller's commit to the message's arrival on the broker (a blocking pop on the queue).

No worker runs: this measures the producers' side only. The database is
``zoom_worker_bench_enqueue`` (dropped and migrated at the start); the broker is
``--broker-url`` (its database is flushed), never a deployment's.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from typing import Any

import psycopg
import redis
from rich.console import Console

from bench import harness, report, workload
from worker import celery_app, db, jobs, ledger, relay, schema
from worker.config import get_settings
from worker.demo import environment
from worker.outcomes import Succeeded

NAME = "enqueue"
TITLE = "Enqueue: 1,000 single calls against one bulk call; wait_for_job latency"
DATABASE = "zoom_worker_bench_enqueue" + harness.DB_SUFFIX
DATABASE_URL = harness.database_url(DATABASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=1000, help="creates per side (1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side (median kept)")
    parser.add_argument("--waits", type=int, default=50, help="wait_for_job samples (50)")
    parser.add_argument("--relays", type=int, default=50, help="relay latency samples (50)")
    parser.add_argument("--broker-url", default=harness.BROKER_URL)


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    env = {"DATABASE_URL": DATABASE_URL, "CELERY_BROKER_URL": args.broker_url, "METRICS_PORT": "0"}
    with environment(env):
        _reset_database()
        try:
            singles = [_singles(args.jobs, args.broker_url, run) for run in range(args.repeat)]
            bulks = [_bulk(args.jobs, args.broker_url, run) for run in range(args.repeat)]
            waits_ms = _wait_latencies(args.waits)
            relays_ms = _relay_latencies(args.relays, args.broker_url)
        finally:
            db.dispose_all()
    single = sorted(singles, key=lambda side: side["total_s"])[len(singles) // 2]
    bulk_s = statistics.median(bulks)
    share = bulk_s / single["total_s"] if single["total_s"] else 0.0
    wait_p50, wait_p99 = harness.percentile(waits_ms, 50), harness.percentile(waits_ms, 99)
    relay_p50, relay_p99 = harness.percentile(relays_ms, 50), harness.percentile(relays_ms, 99)
    out.print(f"[bold]enqueue[/]: {args.jobs} jobs; bulk is {share:.1%} of single calls")
    return {
        "name": NAME,
        "title": TITLE,
        "machine": harness.machine(),
        "params": vars(args),
        "single": {**single, "runs_s": [side["total_s"] for side in singles]},
        "bulk": {"total_s": bulk_s, "runs_s": bulks},
        "bulk_share_of_single": share,
        "wait_for_job_ms": {"p50": wait_p50, "p99": wait_p99, "samples": len(waits_ms)},
        "relay_after_commit_ms": {"p50": relay_p50, "p99": relay_p99, "samples": len(relays_ms)},
        "rows": [
            [f"{args.jobs} creates, single calls", f"{single['total_s']:.2f} s", "-", "-"],
            [f"{args.jobs} creates, one bulk call", f"{bulk_s:.3f} s", "-", "a small fraction"],
            ["bulk / single", f"{share:.1%}", "-", "-"],
            [
                "create_meeting p50 / p99",
                f"{single['p50_us']:.0f} / {single['p99_us']:.0f} µs",
                "-",
                "-",
            ],
            [
                "wait_for_job after the outcome p50 / p99",
                f"{wait_p50:.1f} / {wait_p99:.1f} ms",
                "-",
                "-",
            ],
            [
                "relay: on the broker after the caller's commit p50 / p99",
                f"{relay_p50:.1f} / {relay_p99:.1f} ms",
                "-",
                "within 2 s",
            ],
        ],
        "panels": [
            report.panel(
                f"enqueue {args.jobs} creates",
                "seconds",
                {"single calls": single["total_s"], "one bulk call": bulk_s},
                fmt="{:.2f}",
            ),
            report.panel(
                "wait_for_job after the outcome",
                "ms",
                {"p50": wait_p50, "p99": wait_p99},
                fmt="{:.1f}",
            ),
            report.panel(
                "relay: on the broker after the commit",
                "ms",
                {"p50": relay_p50, "p99": relay_p99},
                fmt="{:.1f}",
            ),
        ],
    }


def producer_costs(count: int, out: Console) -> dict[str, float]:
    """One run of each producer side, ``count`` creates: what ``bench overhead`` reports
    (single-call p50 / p99 in microseconds, and the seconds of each side)."""
    env = {
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": harness.BROKER_URL,
        "METRICS_PORT": "0",
    }
    with environment(env):
        _reset_database()
        try:
            single = _singles(count, harness.BROKER_URL, 0)
            bulk_s = _bulk(count, harness.BROKER_URL, 0)
        finally:
            db.dispose_all()
    out.print(f"[bold]enqueue[/]: create_meeting p50 {single['p50_us']:.0f} µs")
    return {**single, "single_s": single["total_s"], "bulk_s": bulk_s}


def _reset_database() -> None:
    db.dispose_all()
    with psycopg.connect(harness.PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    schema.upgrade_database(DATABASE_URL)


def _empty(broker_url: str) -> None:
    with redis.Redis.from_url(broker_url, socket_connect_timeout=5) as client:
        client.flushdb()
    with psycopg.connect(harness.plain_url(DATABASE_URL), autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, idempotency_keys CASCADE")


def _singles(count: int, broker_url: str, run: int) -> dict[str, float]:
    _empty(broker_url)
    jobs.create_meeting(workload.host(0), workload.new_body(0))  # connections warm
    calls_us = []
    started = time.perf_counter()
    for number in range(count):
        before = time.perf_counter()
        jobs.create_meeting(
            workload.host(number), workload.new_body(number), f"single-{run}-{number}"
        )
        calls_us.append((time.perf_counter() - before) * 1e6)
    total = time.perf_counter() - started
    return {
        "total_s": total,
        "p50_us": harness.percentile(calls_us, 50),
        "p99_us": harness.percentile(calls_us, 99),
    }


def _bulk(count: int, broker_url: str, run: int) -> float:
    _empty(broker_url)
    jobs.create_meeting(workload.host(0), workload.new_body(0))  # connections warm
    requests = [
        {
            "user_id": workload.host(number),
            "meeting": workload.new_body(number),
            "idempotency_key": f"bulk-{run}-{number}",
        }
        for number in range(count)
    ]
    started = time.perf_counter()
    job_ids = jobs.create_meetings(requests)
    elapsed = time.perf_counter() - started
    assert len(job_ids) == count
    return elapsed


def _wait_latencies(samples: int) -> list[float]:
    work = ledger.Ledger.from_settings(get_settings(), celery_app.send)
    latencies_ms = []
    for number in range(samples):
        job_id = jobs.create_meeting(workload.host(number), workload.new_body(number))
        claim = work.claim(job_id)
        assert claim is not None
        returned: list[float] = []
        listening = threading.Event()
        waiter = threading.Thread(target=_wait, args=(job_id, listening, returned))
        waiter.start()
        listening.wait(10)
        time.sleep(0.05)  # the waiter is past its first read, blocked on the notification
        work.record(claim, Succeeded(80000000000 + number, "https://zoom.us/j/1"))
        committed = time.perf_counter()
        waiter.join(30)
        latencies_ms.append((returned[0] - committed) * 1000)
    return latencies_ms


def _wait(job_id: uuid.UUID, listening: threading.Event, returned: list[float]) -> None:
    listening.set()
    job = jobs.wait_for_job(job_id, timeout=30)
    returned.append(time.perf_counter())
    assert job.status == "succeeded"


def _relay_latencies(samples: int, broker_url: str) -> list[float]:
    _empty(broker_url)
    settings = get_settings().model_copy(update={"OUTBOX_SCAN_SECONDS": 60.0})
    sender = relay.Relay(settings, celery_app.send_many).start()
    if not sender.holding.wait(30):
        raise RuntimeError("the relay did not take the outbox lock (another relay holds it?)")
    latencies_ms = []
    sessions = db.sessions(settings)
    try:
        with redis.Redis.from_url(broker_url, socket_connect_timeout=5) as client:
            for number in range(samples):
                with sessions() as session:
                    jobs.create_meeting(
                        workload.host(number), workload.new_body(number), session=session
                    )
                    session.commit()
                committed = time.perf_counter()
                if client.brpop(["celery"], timeout=10) is None:
                    raise RuntimeError("the relay sent nothing within 10 s")
                latencies_ms.append((time.perf_counter() - committed) * 1000)
    finally:
        sender.stop(timeout_s=0)
    return latencies_ms
