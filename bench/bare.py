"""The bare side of ``bench overhead``: the same creates through :mod:`bench.bare_app`.

The same fleet shape as the pipeline (``celery worker`` processes, prefork), the same broker
database, the same simulator config and the same producers' threads; the workers import
only Celery and httpx. A create is done when the simulator has counted it, so the side's
throughput is jobs / (the last create at the simulator - the moment the workers resumed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg
from celery import Celery
from rich.console import Console

from bench import bare_app, harness, probes, workload
from worker import simulator
from worker.demo import DemoFailed, ManagedProcess, check_alive, stop_processes

ROOT = Path(__file__).resolve().parent.parent
READY_DEADLINE_S = 120.0
POLL_S = 0.01


@contextmanager
def fleet(
    fleet: harness.Fleet, sim: simulator.RunningSimulator, out: Console, *, floor: bool = False
) -> Iterator[list[ManagedProcess]]:
    """Start ``fleet`` bare workers against ``sim`` (with the ledger's floor: ``floor``);
    stop them all after."""
    config = sim.simulator.config
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        "BARE_BROKER_URL": harness.BROKER_URL,
        "BARE_API_URL": sim.api_url,
        "BARE_OAUTH_URL": sim.oauth_url,
        "BARE_ACCOUNT_ID": config.account_id,
        "BARE_CLIENT_ID": config.client_id,
        "BARE_CLIENT_SECRET": config.client_secret,
    }
    if floor:
        env["BARE_FLOOR_DATABASE_URL"] = make_floor_table()
        env["BARE_FLOOR_REDIS_URL"] = harness.GOVERNOR_URL
    processes: list[ManagedProcess] = []
    with tempfile.TemporaryDirectory(prefix="zoom-worker-bare-") as tmp:
        try:
            for k in range(1, fleet.workers + 1):
                log_path = Path(tmp) / f"bare{k}.log"
                with log_path.open("wb") as log_file:
                    process = subprocess.Popen(
                        [
                            *(sys.executable, "-m", "celery", "-A", "bench.bare_app", "worker"),
                            *("--concurrency", str(fleet.concurrency), "--pool", "prefork"),
                            *("--hostname", f"bare{k}@%h", "--without-gossip", "--without-mingle"),
                            *("--loglevel", "INFO"),
                        ],
                        cwd=tmp,
                        env=env,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                processes.append(ManagedProcess(f"bare{k}", process, log_path))
            _wait_ready(processes)
            out.print(f"bare Celery: {fleet} up")
            yield processes
        finally:
            stop_processes(processes)


def make_floor_table() -> str:
    """Make the floor's table, empty, in the benchmark's database; its psycopg URL."""
    url = harness.plain_url(harness.DATABASE_URL)
    with psycopg.connect(harness.PG_ADMIN, autocommit=True, connect_timeout=10) as admin:
        exists = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (harness.BENCH_DB,)
        ).fetchone()
        if exists is None:
            admin.execute(f'CREATE DATABASE "{harness.BENCH_DB}"')
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {bare_app.FLOOR_TABLE}")
        conn.execute(
            f"CREATE TABLE {bare_app.FLOOR_TABLE} (id uuid PRIMARY KEY, status text NOT NULL, "
            "lease_expires_at timestamptz, maybe_sent boolean NOT NULL DEFAULT false, "
            "meeting_id bigint, finished_at timestamptz)"
        )
    return url


def _wait_ready(processes: list[ManagedProcess]) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    for item in processes:
        while "ready." not in item.log_path.read_text(encoding="utf-8", errors="replace"):
            check_alive(processes)
            if time.monotonic() > deadline:
                raise DemoFailed(f"{item.name} not ready after {READY_DEADLINE_S:.0f}s")
            time.sleep(0.1)


class Producer:
    """Sends the bare task by name from this process, counting at the simulator."""

    def __init__(self, sim: simulator.RunningSimulator, processes: list[ManagedProcess]) -> None:
        self._app = Celery("bare-producer", broker=harness.BROKER_URL, set_as_current=False)
        self._app.conf.update(task_serializer="json", task_send_sent_event=False)
        self._sim = sim
        self._processes = processes
        self._sent = 0

    def send(self, number: int) -> None:
        self._app.send_task(bare_app.TASK, args=(workload.host(number), workload.new_body(number)))

    def enqueue(self, count: int, producers: int) -> float:
        """Send ``count`` creates from ``producers`` threads; the seconds it took."""
        started = time.monotonic()
        with ThreadPoolExecutor(producers, thread_name_prefix="producer") as pool:
            list(pool.map(self.send, range(self._sent, self._sent + count)))
        self._sent += count
        return time.monotonic() - started

    def wait_created(self, total: int, timeout_s: float) -> float:
        """Wait until the simulator has made ``total`` meetings; the monotonic time then."""
        deadline = time.monotonic() + timeout_s
        while (created := self.created()) < total:
            check_alive(self._processes)
            if time.monotonic() > deadline:
                raise DemoFailed(f"bare side: {created} of {total} creates after {timeout_s}s")
            time.sleep(POLL_S)
        return time.monotonic()

    @property
    def app(self) -> Celery:
        return self._app

    def created(self) -> int:
        """Meetings the simulator has made so far."""
        return int(self._sim.simulator.stats().get("meetings_created", 0))

    def close(self) -> None:
        self._app.close()


def pool_pids(processes: list[ManagedProcess]) -> tuple[list[int], list[int]]:
    """The workers' main pids and their pool processes' pids."""
    mains = [item.process.pid for item in processes]
    return mains, [pid for main in mains for pid in probes.pool_children(main)]
