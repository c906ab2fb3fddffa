"""``zoom-worker demo``: the whole pipeline end to end on the simulator.

It serves the simulator in this process, points this process's settings at it (its own
database and Redis database, so a real deployment is never touched), migrates, starts real
``celery worker`` processes and ``celery beat``, creates meetings through
:func:`worker.jobs.create_meeting`, deletes half of them, and compares the ledger with what
the simulator saw. A duplicate is two meetings in the simulator carrying the same job's
``[zw:...]`` agenda marker: the one thing a lost reply must never cause.

Every process it starts is stopped at the end (SIGTERM, then SIGKILL after a deadline),
whatever happened.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import delete

from worker import db, errors, jobs, marker, models, schema, simulator, token_store
from worker.config import Settings, get_settings

POLL_INTERVAL_S = 0.2
STOP_DEADLINE_S = 20.0
READY_DEADLINE_S = 60.0
HOSTS = ("alice@demo.example", "bob@demo.example", "carol@demo.example")
# With --faults: 5% of API calls answered 5xx, 3% of creates made but their reply lost.
ERROR_RATE, REPLY_LOST_RATE = 0.05, 0.03
RATE_LIMITS = {"light": 30, "medium": 20, "heavy": 10}


class DemoFailed(Exception):
    """Raised when the demo cannot go on: a process died or a phase missed its deadline."""


@dataclass(frozen=True)
class DemoOptions:
    """What ``zoom-worker demo`` was asked to do."""

    jobs: int
    workers: int
    concurrency: int
    faults: bool
    database_url: str
    broker_url: str
    phase_timeout_s: float = 300.0


@dataclass(frozen=True)
class DemoResult:
    """What happened, from the ledger and from the simulator's own counters."""

    succeeded: int
    failed: int
    made: int
    duplicates: int
    deleted: int
    tokens: int
    api_401: int
    api_429: int
    api_5xx: int
    replies_lost: int
    wall_s: float
    creates_per_s: float
    # The most common reasons jobs failed, with how many jobs gave each.
    failures: tuple[tuple[str, int], ...] = ()
    error: str | None = None

    @property
    def passed(self) -> bool:
        """Every job succeeded and no meeting was made twice."""
        return self.error is None and self.failed == 0 and self.duplicates == 0


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def run(options: DemoOptions, out: Console) -> DemoResult:
    """Run the demo and print its summary; never leaves a process behind."""
    run_id = secrets.token_hex(4)
    started = time.monotonic()
    try:
        with redis.Redis.from_url(options.broker_url, socket_connect_timeout=5) as broker:
            broker.flushdb()
    except redis.RedisError as exc:
        raise errors.InfrastructureError(f"the demo's broker is not reachable: {exc}") from exc
    config = simulator.SimulatorConfig()
    if options.faults:
        config = simulator.SimulatorConfig(
            rate_limits=RATE_LIMITS, error_rate=ERROR_RATE, reply_lost_rate=REPLY_LOST_RATE
        )
    # The simulator's control API answers only this run (it can rotate the secret).
    control_token = secrets.token_urlsafe(16)
    with (
        simulator.start_simulator(config, control_token=control_token) as sim,
        tempfile.TemporaryDirectory(prefix="zoom-worker-demo-") as tmp,
        environment(_settings_env(options, sim)),
    ):
        revision = schema.upgrade_database(options.database_url)
        _forget_stored_token()
        out.print(f"simulator at {sim.url}; database migrated to {revision}")
        processes: list[ManagedProcess] = []
        error: str | None = None
        create_ids: list[uuid.UUID] = []
        delete_ids: list[uuid.UUID] = []
        create_s = 0.0
        try:
            start_processes(options, Path(tmp), processes, out)
            create_started = time.monotonic()
            create_ids = [_create(run_id, n) for n in range(1, options.jobs + 1)]
            created = _wait(create_ids, "creating", options, processes, out)
            create_s = time.monotonic() - create_started
            made = [job for job in created if job.status == models.SUCCEEDED and job.meeting_id]
            delete_ids = [
                jobs.delete_meeting(job.meeting_id, idempotency_key=f"demo-{run_id}-del-{n}")
                for n, job in enumerate(made[: len(made) // 2], start=1)
                if job.meeting_id is not None
            ]
            _wait(delete_ids, "deleting", options, processes, out)
        except DemoFailed as exc:
            error = str(exc)
        finally:
            stop_processes(processes)
        result = _result(
            sim.url,
            create_ids + delete_ids,
            time.monotonic() - started,
            create_s,
            control_token=control_token,
        )
    result = dataclasses.replace(result, error=error)
    _print_summary(result, len(create_ids), out)
    return result


def _settings_env(options: DemoOptions, sim: simulator.RunningSimulator) -> dict[str, str]:
    return {
        "DATABASE_URL": options.database_url,
        "CELERY_BROKER_URL": options.broker_url,
        "REDIS_URL": options.broker_url,
        **sim.worker_env(),
        "RETRY_BACKOFF_BASE": "0.5",
        "RETRY_BACKOFF_MAX": "5",
        "JOB_LEASE_SECONDS": "30",
        # The lease outlasts a call made after the claim check: 2 x 5 + 5 + 5 + 1 <= 30.
        "ZOOM_HTTP_TIMEOUT": "5",
        "ZOOM_TOKEN_LOCK_TIMEOUT": "5",
        "ZOOM_TOKEN_REQUEST_TIMEOUT": "5",
        "SWEEP_INTERVAL_SECONDS": "5",
        **(
            {"ZOOM_RATE_LIMITS": ",".join(f"{k}={v}" for k, v in RATE_LIMITS.items())}
            if options.faults
            else {}
        ),
    }


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set the demo's settings in this process (inherited by the workers), then restore.

    Every other setting is unset for the run, so nothing of a real deployment (a secret
    file, an encryption key, a plan) leaks into the demo.
    """
    saved = {name: os.environ.get(name) for name in Settings.model_fields}
    for name in Settings.model_fields:
        os.environ.pop(name, None)
    os.environ.update(values)
    _forget_settings()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _forget_settings()


def _forget_stored_token() -> None:
    """Drop a token a previous demo stored: each run has a new simulator that never issued it
    (the worker would survive it with one 401 and one renewal, but the demo's count is clearer)."""
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(delete(models.Credential))


def _forget_settings() -> None:
    get_settings.cache_clear()
    db.dispose_all()
    token_store.forget_process_tokens()


def start_processes(
    options: DemoOptions, tmp: Path, processes: list[ManagedProcess], out: Console
) -> None:
    """Start the workers and beat into ``processes`` (so a failure still stops them all);
    return once every worker logged that it is ready."""
    celery = [sys.executable, "-m", "celery", "-A", "worker"]
    # INFO, because celery logs "<hostname> ready." at INFO; the log is a temporary file.
    commands = {
        f"demo{k}": [
            *("worker", "--concurrency", str(options.concurrency), "--pool", "prefork"),
            *("--hostname", f"demo{k}@%h", "--without-gossip", "--without-mingle"),
            *("--loglevel", "INFO"),
        ]
        for k in range(1, options.workers + 1)
    }
    commands["beat"] = ["beat", "--schedule", str(tmp / "beat-schedule"), "--loglevel", "WARNING"]
    for name, arguments in commands.items():
        log_path = tmp / f"{name}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
                [*celery, *arguments],
                cwd=tmp,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append(ManagedProcess(name, process, log_path))
    deadline = time.monotonic() + READY_DEADLINE_S
    for worker in processes[:-1]:
        while "ready." not in worker.log_path.read_text(encoding="utf-8", errors="replace"):
            check_alive(processes)
            if time.monotonic() > deadline:
                raise DemoFailed(f"worker {worker.name} not ready after {READY_DEADLINE_S:.0f}s")
            time.sleep(POLL_INTERVAL_S)
    out.print(f"{options.workers} worker(s) x {options.concurrency} processes and beat are up")


def check_alive(processes: list[ManagedProcess]) -> None:
    for item in processes:
        if item.process.poll() is not None:
            raise DemoFailed(
                f"{item.name} exited with code {item.process.returncode}; its log ends:\n"
                f"{item.log_tail()}"
            )


def _create(run_id: str, number: int) -> uuid.UUID:
    tomorrow = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    start = tomorrow + timedelta(minutes=30 * (number % 16))
    body = {
        "topic": f"Demo meeting {number}",
        "type": 2,
        "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration": 30,
        "timezone": "UTC",
        "agenda": "Made by zoom-worker demo.",
    }
    host = HOSTS[number % len(HOSTS)]
    return jobs.create_meeting(host, body, idempotency_key=f"demo-{run_id}-{number}")


def _wait(
    ids: list[uuid.UUID],
    phase: str,
    options: DemoOptions,
    processes: list[ManagedProcess],
    out: Console,
) -> list[jobs.Job]:
    """Poll the ledger until every job is final, with a progress bar and a deadline."""
    deadline = time.monotonic() + options.phase_timeout_s
    columns = (TextColumn(f"{phase:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as progress:
        bar = progress.add_task(phase, total=len(ids))
        while True:
            found = jobs.jobs_for(ids)
            done = sum(job.status in models.FINAL_STATUSES for job in found)
            progress.update(bar, completed=done)
            if done == len(ids):
                return found
            check_alive(processes)
            if time.monotonic() > deadline:
                counts = collections.Counter(job.status for job in found)
                raise DemoFailed(
                    f"{phase}: {done} of {len(ids)} jobs final after "
                    f"{options.phase_timeout_s:.0f}s ({dict(counts)})"
                )
            time.sleep(POLL_INTERVAL_S)


def stop_processes(processes: list[ManagedProcess]) -> None:
    """SIGTERM every process group, then SIGKILL what is left after the deadline."""
    _signal_all(processes, signal.SIGTERM)
    deadline = time.monotonic() + STOP_DEADLINE_S
    for item in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            item.process.wait(timeout=max(0.1, deadline - time.monotonic()))
    _signal_all([item for item in processes if item.process.poll() is None], signal.SIGKILL)
    for item in processes:
        item.process.wait()


def _signal_all(processes: list[ManagedProcess], signum: signal.Signals) -> None:
    for item in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(item.process.pid, signum)


def _result(
    sim_url: str, ids: list[uuid.UUID], wall_s: float, create_s: float, *, control_token: str
) -> DemoResult:
    found = jobs.jobs_for(ids) if ids else []
    with simulator.SimulatorClient(sim_url, control_token=control_token) as client:
        stats = client.stats()
        meetings = client.meetings()
    markers = collections.Counter(
        found for meeting in meetings for found in marker.markers_in(meeting.get("agenda"))
    )
    created = sum(job.kind == jobs.CREATE and job.status == models.SUCCEEDED for job in found)
    return DemoResult(
        succeeded=sum(job.status == models.SUCCEEDED for job in found),
        failed=sum(job.status != models.SUCCEEDED for job in found),
        made=int(stats["meetings_created"]),
        duplicates=sum(count - 1 for count in markers.values()),
        deleted=int(stats["meetings_deleted"]),
        tokens=int(stats["tokens_issued"]),
        api_401=int(stats["api_401"]),
        api_429=int(stats["api_429"]),
        api_5xx=int(stats["api_5xx"]),
        replies_lost=int(stats["replies_lost"]),
        wall_s=wall_s,
        creates_per_s=created / create_s if create_s > 0 else 0.0,
        failures=tuple(
            collections.Counter(
                job.error or job.status for job in found if job.status != models.SUCCEEDED
            ).most_common(3)
        ),
    )


def _print_summary(result: DemoResult, creates: int, out: Console) -> None:
    table = Table(title="zoom-worker demo", show_header=False)
    rows: list[tuple[str, Callable[[DemoResult], object]]] = [
        ("jobs succeeded", lambda r: r.succeeded),
        ("jobs failed or unfinished", lambda r: r.failed),
        ("meetings made in the simulator", lambda r: r.made),
        ("duplicates", lambda r: r.duplicates),
        ("meetings deleted", lambda r: r.deleted),
        ("tokens fetched", lambda r: r.tokens),
        ("401s", lambda r: r.api_401),
        ("429s", lambda r: r.api_429),
        ("5xx injected", lambda r: r.api_5xx),
        ("replies lost", lambda r: r.replies_lost),
        ("wall time", lambda r: f"{r.wall_s:.1f}s"),
        ("creates per second", lambda r: f"{r.creates_per_s:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value(result)))
    out.print(table)
    for reason, count in result.failures:
        out.print(f"{count} job(s): {reason}", markup=False, highlight=False)
    if result.error:
        out.print(f"demo failed: {result.error}", markup=False, highlight=False)
    verdict = "passed" if result.passed else "FAILED"
    out.print(
        f"demo {verdict}: {creates} creates, {result.made} made, {result.duplicates} duplicates",
        markup=False,
        highlight=False,
    )
