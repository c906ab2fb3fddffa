"""What every benchmark shares: its own database and Redis databases, the simulator, the fleet.

A benchmark never touches a deployment or the tests: it uses the PostgreSQL database
``zoom_worker_bench`` (dropped, created and migrated to head for every side it measures) and
Redis databases 10 (broker) and 13 (rate governor), flushed at the start of every side. With
``--broker rabbitmq`` the broker is a RabbitMQ virtual host made for the side and deleted
after it (the governor stays in Redis). The
simulator is served from this process; the workers and beat are real ``celery`` processes
started and stopped with :mod:`worker.demo`'s helpers, always stopped in a ``finally``.

Times of a job come from the ledger (``created_at`` and ``finished_at`` are both PostgreSQL's
``now()``), so they share one clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery
from rich.console import Console

from bench import workload
from worker import celery_app, db, jobs, models, priorities, schema, simulator
from worker.config import get_settings
from worker.demo import (
    DemoFailed,
    DemoOptions,
    ManagedProcess,
    check_alive,
    environment,
    start_processes,
    stop_processes,
)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Two benchmark runs on one machine keep apart with BENCH_DB_SUFFIX (appended to every
# benchmark database's name) and BENCH_REDIS_URL (another Redis server).
DB_SUFFIX = os.environ.get("BENCH_DB_SUFFIX", "")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")


def database_url(name: str) -> str:
    """The SQLAlchemy URL of the benchmark database ``name`` on the local PostgreSQL."""
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


BENCH_DB = "zoom_worker_bench" + DB_SUFFIX
DATABASE_URL = database_url(BENCH_DB)
BROKER_URL = f"{REDIS_BASE}/10"
# --broker rabbitmq: a vhost of its own per side on this server (guest: loopback only).
AMQP_BASE = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
AMQP_USER = "guest"
BROKERS = ("redis", "rabbitmq")
GOVERNOR_URL = f"{REDIS_BASE}/13"
RESULTS = Path(__file__).resolve().parent / "results"
# Caps far above anything the simulator will see: the governor runs, but never holds a call.
UNCAPPED = "light=1000,medium=1000,heavy=1000"
DAILY_LIMIT = 100_000
POLL_S = 0.05
FINAL = list(models.FINAL_STATUSES)
QUEUE = "celery"  # Celery's default queue: the bare task's
JOB_QUEUES = priorities.QUEUES  # the pipeline's jobs, one queue per priority
CONTROL_TIMEOUT_S = 10.0

__all__ = ["DemoFailed", "Fleet", "Service", "machine", "service"]


@dataclass
class Service:
    """A running side: simulator, settings in this process, workers and beat.

    Jobs are enqueued in named batches (their idempotency keys carry the batch), so a
    warm-up batch never counts in the measured one; ``stats()`` are the simulator's
    counters since the last :meth:`warm_up`.
    """

    sim: simulator.RunningSimulator
    processes: list[ManagedProcess]
    out: Console
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # Statements this process ran on the benchmark's database (one transaction each).
    own_statements: int = 0
    _conn: psycopg.Connection[Any] | None = field(default=None, repr=False)
    _base: dict[str, Any] = field(default_factory=dict, repr=False)

    def enqueue(self, number: int, batch: str = "bench") -> uuid.UUID:
        """Create job ``number`` of ``batch`` through the public producer API."""
        key = f"{batch}-{self.run_id}-{number}"
        return jobs.create_meeting(workload.host(number), workload.new_body(number), key)

    def enqueue_many(self, count: int, producers: int = 1) -> float:
        """Enqueue jobs 0..count-1 from ``producers`` threads; returns the seconds it took."""
        started = time.monotonic()
        if producers <= 1:
            for number in range(count):
                self.enqueue(number)
        else:
            with ThreadPoolExecutor(producers, thread_name_prefix="producer") as pool:
                list(pool.map(self.enqueue, range(count)))
        return time.monotonic() - started

    def warm_up(self, count: int, timeout_s: float = 60.0) -> None:
        """Run ``count`` jobs first, so every pool process has built its Zoom client and read
        the token (about a second each, once per process): a deployed fleet is warm."""
        if count > 0:
            for number in range(count):
                self.enqueue(number, batch="warm")
            self.wait_final(count, timeout_s, batch="warm")
        self._base = self.sim.simulator.stats()

    def wait_final(
        self, expected: int, timeout_s: float, batch: str = "bench"
    ) -> tuple[int, float]:
        """Poll the ledger until ``expected`` jobs of ``batch`` are final or time is up.

        Returns (jobs final, seconds waited); on a timeout, says what is stuck.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            done = int(self._query(_COUNT_FINAL, (FINAL, self._like(batch)))[0][0])
            if done >= expected:
                return done, time.monotonic() - started
            if time.monotonic() > deadline:
                self._explain_timeout(expected, done, batch)
                return done, time.monotonic() - started
            check_alive(self.processes)
            time.sleep(POLL_S)

    def ledger(self, batch: str = "bench") -> list[dict[str, Any]]:
        """Every job of ``batch``: status, times and counters, oldest first."""
        rows = self._query(_LEDGER, (self._like(batch),))
        names = ("status", "created_at", "started_at", "finished_at", "attempts", "deferrals")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def stats(self) -> dict[str, Any]:
        """The simulator's counters since the warm-up (peaks: since the start)."""
        now = self.sim.simulator.stats()
        return {
            name: value - self._base.get(name, 0) if isinstance(value, int) else value
            for name, value in now.items()
        }

    def db_now(self) -> datetime:
        """The database's clock (the ledger's times are on it)."""
        return self._query("SELECT now()", ())[0][0]  # type: ignore[no-any-return]

    def workers(self) -> list[ManagedProcess]:
        """The celery worker main processes (beat excluded)."""
        return [item for item in self.processes if item.name != "beat"]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _like(self, batch: str) -> str:
        return f"{batch}-{self.run_id}-%"

    def _query(self, statement: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        # Autocommit: each statement is exactly one transaction, counted in own_statements.
        if self._conn is None:
            self._conn = psycopg.connect(plain_url(DATABASE_URL), autocommit=True)
        self.own_statements += 1
        return self._conn.execute(statement, parameters).fetchall()

    def _explain_timeout(self, expected: int, done: int, batch: str) -> None:
        statuses = self._query(_BY_STATUS, (self._like(batch),))
        queued = "?"
        if get_settings().broker_kind == "redis":
            with redis.Redis.from_url(BROKER_URL) as broker:
                queued = str(sum(broker.llen(queue) for queue in priorities.QUEUES))
        self.out.print(
            f"[yellow]timed out[/]: {done} of {expected} jobs final; by status "
            f"{dict(statuses)}; {queued} messages waiting on the broker",
            highlight=False,
        )
        for item in self.processes:
            self.out.print(f"--- {item.name} log ends:\n{item.log_tail(8)}", markup=False)


_COUNT_FINAL = "SELECT count(*) FROM jobs WHERE status = ANY(%s) AND idempotency_key LIKE %s"
_BY_STATUS = "SELECT status, count(*) FROM jobs WHERE idempotency_key LIKE %s GROUP BY status"
_LEDGER = (
    "SELECT status, created_at, started_at, finished_at, attempts, deferrals FROM jobs "
    "WHERE idempotency_key LIKE %s ORDER BY created_at"
)


@dataclass(frozen=True)
class Fleet:
    """How many celery workers, and prefork processes in each."""

    workers: int
    concurrency: int

    @property
    def processes(self) -> int:
        return self.workers * self.concurrency

    def __str__(self) -> str:
        return f"{self.workers} workers x {self.concurrency} processes"


def add_broker_argument(parser: argparse.ArgumentParser) -> None:
    """``--broker redis|rabbitmq``: the Celery broker the fleet runs on."""
    parser.add_argument(
        "--broker", choices=BROKERS, default="redis", help="the Celery broker (redis)"
    )


@contextmanager
def broker(kind: str) -> Iterator[str]:
    """The broker URL of one side: Redis database 10, or a new RabbitMQ vhost, deleted after."""
    if kind == "redis":
        yield BROKER_URL
        return
    vhost = f"zw_bench{DB_SUFFIX}_{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, AMQP_USER, ".*", ".*", ".*")
        yield f"{AMQP_BASE}/{vhost}"
    finally:
        celery_app.drop_broker_connections()
        _rabbitmqctl("delete_vhost", vhost)


def _rabbitmqctl(*arguments: str) -> None:
    done = subprocess.run(
        ["rabbitmqctl", *arguments], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise DemoFailed(f"rabbitmqctl {arguments[0]} failed: {done.stderr.strip()[-300:]}")


@contextmanager
def service(
    config: simulator.SimulatorConfig,
    fleet: Fleet,
    out: Console,
    broker_kind: str = "redis",
    **settings: str,
) -> Iterator[Service]:
    """Serve the simulator, reset the database and Redis, start the fleet on ``broker_kind``;
    stop all after."""
    reset_redis()
    config = dataclasses.replace(config, daily_create_limit=DAILY_LIMIT)
    with (
        broker(broker_kind) as broker_url,
        simulator.start_simulator(config) as sim,
        tempfile.TemporaryDirectory(prefix="zoom-worker-bench-") as tmp,
        environment({**_settings_env(sim, settings), "CELERY_BROKER_URL": broker_url}),
    ):
        celery_app.point_at_broker(get_settings())
        reset_database()
        processes: list[ManagedProcess] = []
        running = Service(sim, processes, out)
        options = DemoOptions(
            jobs=0,
            workers=fleet.workers,
            concurrency=fleet.concurrency,
            faults=False,
            database_url=DATABASE_URL,
            broker_url=broker_url,
        )
        try:
            start_processes(options, Path(tmp), processes, out)
            yield running
        finally:
            running.close()
            stop_processes(processes)
            db.dispose_all()


def _settings_env(sim: simulator.RunningSimulator, overrides: dict[str, str]) -> dict[str, str]:
    return {
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "REDIS_URL": GOVERNOR_URL,
        **sim.worker_env(),
        "ZOOM_DAILY_CREATE_LIMIT": str(DAILY_LIMIT),
        # Celery's own retry_backoff starts at 1 s too.
        "RETRY_BACKOFF_BASE": "1",
        # No sweep during a benchmark: it would only add idle transactions.
        "SWEEP_INTERVAL_SECONDS": "600",
        "METRICS_PORT": "0",
        **overrides,
    }


def pause(app: Celery, workers: int, queues: tuple[str, ...] = (QUEUE,)) -> None:
    """Make ``workers`` celery workers stop taking jobs from ``queues`` (Celery's remote
    control), so a benchmark can fill them first and time only the draining. The pipeline's
    jobs are on their priorities' queues (:data:`JOB_QUEUES`), not Celery's default one."""
    for queue in queues:
        _control(app.control.cancel_consumer, queue, workers)


def resume(app: Celery, workers: int, queues: tuple[str, ...] = (QUEUE,)) -> None:
    """Undo :func:`pause`: the workers take jobs from ``queues`` again."""
    for queue in queues:
        _control(app.control.add_consumer, queue, workers)


def _control(command: Any, queue: str, workers: int) -> None:
    replies = command(queue, reply=True, timeout=CONTROL_TIMEOUT_S, limit=workers)
    if len(replies or []) < workers:
        raise DemoFailed(f"{len(replies or [])} of {workers} workers answered {command.__name__}")


def reset_redis() -> None:
    """Flush the benchmark's broker and governor databases."""
    for url in (BROKER_URL, GOVERNOR_URL):
        with redis.Redis.from_url(url, socket_connect_timeout=5) as client:
            client.flushdb()


def reset_database() -> None:
    """Drop ``zoom_worker_bench`` and create it again at the migrations' head."""
    db.dispose_all()
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    schema.upgrade_database(DATABASE_URL)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def percentile(values: list[float], share: float) -> float:
    """The ``share`` percentile (0-100) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * share / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def plain_url(url: str) -> str:
    """``url`` as libpq takes it (no SQLAlchemy driver name)."""
    return url.replace("postgresql+psycopg://", "postgresql://")
