"""Scrape: what one uncached metrics scrape costs PostgreSQL over 100,000 and 1,000,000 jobs.

The database ``zoom_worker_bench_scrape`` is dropped, created and migrated to head (and
dropped again at the end), then filled with ``generate_series``: a backlog of 1,000
unfinished jobs (queued, retrying, running, waiting) that stays the same, and finished jobs
(99 % succeeded, 1 % failed) up to 100,000 rows, then up to 1,000,000, counted by migration
0005's triggers as they are inserted; the table is then vacuumed and analyzed, as autovacuum
would have done.

At each size, each of the collector's reads of the jobs (``UNFINISHED_COUNTS``,
``FINISHED_COUNTS`` and ``OLDEST_PENDING_AGE`` of :mod:`worker.metrics`) runs under
``EXPLAIN (ANALYZE, FORMAT JSON)``: PostgreSQL's time for one scrape is the sum of their
planning and execution times (median of ``--repeat`` scrapes, each one uncached). The wall
time of ``FleetCollector.collect()`` with its cache off (the round trips included; Redis left
out) is measured the same way. The baseline is the collector's former read, one ``GROUP BY
status`` over the whole table. The goal is under 20 ms of PostgreSQL time at both sizes;
nothing here asserts it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from rich.console import Console
from sqlalchemy import Select
from sqlalchemy.dialects import postgresql

from bench import harness, report
from worker import db, fleet_counters, metrics, schema
from worker.config import Settings

NAME = "scrape"
TITLE = "Scrape: one uncached metrics scrape"
DATABASE = "zoom_worker_bench_scrape" + harness.DB_SUFFIX
DATABASE_URL = harness.database_url(DATABASE)
SIZES = (100_000, 1_000_000)
BACKLOG = 1_000
TARGET_MS = 20.0
# What the collector used to run at every scrape.
BASELINE = (
    "SELECT status, count(*), extract(epoch FROM now() - min(created_at)) FROM jobs GROUP BY status"
)
UNFINISHED_ROWS = f"""
INSERT INTO jobs (id, kind, status, idempotency_key, user_id, topic, attempts, created_at)
SELECT gen_random_uuid(), 'create', (ARRAY['queued', 'retrying', 'running', 'waiting'])[1 + n % 4],
       'backlog-' || n, 'host' || n % 50 || '@example.com', 'Backlog ' || n, n % 3,
       now() - n * interval '1 second'
FROM generate_series(1, {BACKLOG}) AS n
"""
FINISHED_ROWS = """
INSERT INTO jobs (id, kind, status, idempotency_key, user_id, topic, meeting_id, attempts,
                  created_at, updated_at, finished_at)
SELECT gen_random_uuid(), 'create', CASE WHEN n %% 100 = 0 THEN 'failed' ELSE 'succeeded' END,
       'done-' || n, 'host' || n %% 50 || '@example.com', 'Standup ' || n, 80000000000 + n, 1,
       now() - n * interval '1 minute', now() - n * interval '1 minute',
       now() - n * interval '1 minute' + interval '2 seconds'
FROM generate_series(%(first)s::integer, %(last)s::integer) AS n
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=5, help="scrapes per size (median)")
    # `bench all` scales every benchmark's --jobs; here it scales the larger table.
    parser.add_argument("--jobs", type=int, default=SIZES[-1], help="rows of the larger table")


class _NoCounters(fleet_counters.FleetCounters):
    """The Redis part of a scrape, left out: one MGET whatever the size."""

    def __init__(self) -> None:
        pass

    def snapshot(self, names: Iterable[str] = fleet_counters.NAMES) -> dict[str, int]:
        return {}

    def histogram(self, name: str) -> None:
        return None


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    sizes = sorted({min(SIZES[0], args.jobs), args.jobs})
    _reset_database()
    measured: list[dict[str, Any]] = []
    with psycopg.connect(harness.plain_url(DATABASE_URL), autocommit=True) as conn:
        conn.execute(UNFINISHED_ROWS)
        loaded = BACKLOG
        for size in sizes:
            started = time.monotonic()
            _load_finished(conn, loaded + 1, size)
            loaded = size
            out.print(f"[bold]scrape[/]: {size:,} jobs loaded in {time.monotonic() - started:.0f}s")
            measured.append(_measure(conn, size, args.repeat))
    db.dispose_all()
    _drop_database()  # a million rows of nothing: not left on the machine's server
    return _result(measured, args.repeat)


def _reset_database() -> None:
    _drop_database()
    schema.upgrade_database(DATABASE_URL)


def _drop_database() -> None:
    with psycopg.connect(harness.PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def _load_finished(conn: psycopg.Connection[Any], first: int, last: int) -> None:
    conn.execute(FINISHED_ROWS, {"first": first - BACKLOG, "last": last - BACKLOG})
    conn.execute("VACUUM (ANALYZE) jobs")
    conn.execute("VACUUM (ANALYZE) job_status_counts")


def _measure(conn: psycopg.Connection[Any], size: int, repeat: int) -> dict[str, Any]:
    queries = {
        "unfinished counts": metrics.UNFINISHED_COUNTS,
        "finished counts": metrics.FINISHED_COUNTS,
        "oldest waiting job": metrics.OLDEST_PENDING_AGE,
    }
    plans: dict[str, list[str]] = {}
    scrape_ms = []
    for _ in range(repeat):
        total = 0.0
        for name, query in queries.items():
            took, plans[name] = _explain(conn, _sql(query))
            total += took
        scrape_ms.append(total)
    baseline_ms = [_explain(conn, BASELINE)[0] for _ in range(max(1, repeat // 2))]
    settings = Settings(DATABASE_URL=DATABASE_URL)
    collector = metrics.FleetCollector(settings, _NoCounters(), cache_s=0)
    list(collector.collect())  # the pool's first connection is not the scrape's cost
    wall_ms = []
    for _ in range(repeat):
        started = time.perf_counter()
        list(collector.collect())
        wall_ms.append(1000 * (time.perf_counter() - started))
    kept = dict(conn.execute(_sql(metrics.FINISHED_COUNTS)).fetchall())
    counted = dict(
        conn.execute(
            "SELECT status, count(*) FROM jobs WHERE status IN ('succeeded', 'failed') "
            "GROUP BY status"
        ).fetchall()
    )
    return {
        "jobs": size,
        "trigger_counts_match": kept == counted,
        "postgres_ms": statistics.median(scrape_ms),
        "wall_ms": statistics.median(wall_ms),
        "baseline_postgres_ms": statistics.median(baseline_ms),
        "plans": plans,
    }


def _sql(query: Select[Any]) -> str:
    return str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def _explain(conn: psycopg.Connection[Any], sql: str) -> tuple[float, list[str]]:
    """PostgreSQL's planning + execution time in ms, and the plan's nodes."""
    row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchone()
    assert row is not None
    found = row[0][0] if isinstance(row[0], list) else json.loads(row[0])[0]
    return found["Planning Time"] + found["Execution Time"], _nodes(found["Plan"])


def _nodes(plan: dict[str, Any]) -> list[str]:
    node = plan["Node Type"]
    if "Index Name" in plan:
        node += f" using {plan['Index Name']}"
    elif "Relation Name" in plan:
        node += f" on {plan['Relation Name']}"
    return [node] + [n for child in plan.get("Plans", []) for n in _nodes(child)]


def _result(measured: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    rows = []
    for m in measured:
        label = f"{m['jobs']:,} jobs"
        rows.append(
            [
                f"PostgreSQL ms per uncached scrape, {label}",
                f"{m['postgres_ms']:.2f}",
                f"{m['baseline_postgres_ms']:.1f}",
                f"< {TARGET_MS:.0f}",
            ]
        )
        rows.append([f"wall ms of collect(), {label}", f"{m['wall_ms']:.1f}", "", ""])
    bars = {_short(m["jobs"]): m["postgres_ms"] for m in measured}
    baseline = {f"{_short(m['jobs'])} old": m["baseline_postgres_ms"] for m in measured}
    return {
        "name": NAME,
        "title": TITLE,
        "repeat": repeat,
        "machine": harness.machine(),
        "measured": measured,
        "rows": rows,
        "panels": [
            report.panel(
                "PostgreSQL time (old: GROUP BY over jobs)",
                "ms",
                {**bars, **baseline},
                {"target": TARGET_MS},
                fmt="{:.1f}",
            )
        ],
    }


def _short(jobs: int) -> str:
    return f"{jobs / 1_000_000:g}M" if jobs >= 1_000_000 else f"{jobs / 1000:g}k"
