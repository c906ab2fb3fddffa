"""Shared fixtures: a fresh PostgreSQL database per test (copied from a migrated template),
a flushed Redis database, the simulator on 127.0.0.1, and real `celery worker` processes.

The broker is Redis unless a test asks for ``broker_kind`` "rabbitmq" (``both_brokers``):
then a RabbitMQ virtual host of the test's own, made for it and deleted after it.

A service that is not running fails the test and names the service.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import psycopg
import pytest
import redis
from alembic import command
from alembic.config import Config

from worker import celery_app, db, priorities, token_store
from worker.config import get_settings
from worker.simulator import RunningSimulator, SimulatorClient, start_simulator

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN.rsplit("/", 1)[0]
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
# pytest-xdist (`scripts/test` runs `-n 2`) starts one process per worker, gw0 and gw1; tests
# flush their Redis databases, so each xdist worker has its own: gw0 databases 8..15, gw1 the
# same numbers less 8. Everything else is private already (a PostgreSQL database per test,
# the template and the RabbitMQ vhost per process, ports chosen free).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
XDIST_INDEX = int(XDIST_WORKER.removeprefix("gw") or "0")
REDIS_DATABASES = 16  # Redis's default `databases`
XDIST_REDIS_SHIFT = 8
if XDIST_INDEX * XDIST_REDIS_SHIFT >= REDIS_DATABASES:
    raise pytest.UsageError(
        f"pytest-xdist worker {XDIST_WORKER}: the tests share one Redis of "
        f"{REDIS_DATABASES} databases between at most 2 xdist workers (use -n 2 or fewer)"
    )


def redis_db(number: int) -> int:
    """This xdist worker's Redis database for ``number`` (name one of 8..15; gw1 gets
    ``number`` - 8, so the two workers never flush each other's)."""
    return (number - XDIST_INDEX * XDIST_REDIS_SHIFT) % REDIS_DATABASES


def redis_url(number: int, base: str = REDIS_BASE) -> str:
    """The URL of ``redis_db(number)`` on the test Redis."""
    return f"{base}/{redis_db(number)}"


def _own_database(url: str) -> str:
    """``url`` (ending in a database number) moved to this xdist worker's database."""
    base, _, number = url.rpartition("/")
    return redis_url(int(number), base) if number.isdigit() else url


# Broker and governor databases of the test run (receivers 13, test_ratelimit 14, the demo test 8).
BROKER_URL = _own_database(os.environ.get("TEST_BROKER_URL", f"{REDIS_BASE}/11"))
GOVERNOR_URL = _own_database(os.environ.get("TEST_GOVERNOR_URL", f"{REDIS_BASE}/12"))
# Where tests/receivers.py records the on_done notifications a worker ran.
RECEIVER_URL = _own_database(os.environ.get("TEST_RECEIVER_URL", f"{REDIS_BASE}/13"))
TEMPLATE = f"zw_test_template_{os.getpid()}"
# The local RabbitMQ (guest may connect from loopback only); one vhost per run, emptied per test.
AMQP_BASE = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
BROKER_KINDS = ("redis", "rabbitmq")
# Where a normal-priority job's task message waits (worker.priorities).
JOB_QUEUE = priorities.queue_of(priorities.NORMAL)
both_brokers = pytest.mark.parametrize("broker_kind", BROKER_KINDS, indirect=True)


def _admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}: {exc}")


def _drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class DatabaseDropper:
    """Drops the tests' databases in a thread of its own: a DROP DATABASE waits for every
    server process to let go of the database (up to a second on a busy machine), and the
    next test need not wait for it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drop-database")
        self._dropped: list[Future[None]] = []

    def drop(self, name: str) -> None:
        self._dropped.append(self._pool.submit(_drop_database, name))

    def finish(self) -> None:
        """Wait for every drop; raise the first that failed."""
        self._pool.shutdown(wait=True)
        for dropped in self._dropped:
            dropped.result()


@pytest.fixture(scope="session")
def database_dropper() -> Iterator[DatabaseDropper]:
    dropper = DatabaseDropper()
    yield dropper
    dropper.finish()


@pytest.fixture(scope="session")
def pg_template(database_dropper: DatabaseDropper) -> Iterator[str]:
    """A database migrated to head once per run, copied for each test."""
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    url = f"{PG_BASE.replace('postgresql://', 'postgresql+psycopg://')}/{TEMPLATE}"
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    yield TEMPLATE
    database_dropper.finish()  # the copies first
    _drop_database(TEMPLATE)


@pytest.fixture
def database_url(pg_template: str, database_dropper: DatabaseDropper) -> Iterator[str]:
    """A fresh, migrated database for this test (dropped after it, in the background)."""
    name = f"zw_test_{secrets.token_hex(6)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield f"{PG_BASE.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    db.dispose_all()
    database_dropper.drop(name)


def flushed_redis(url: str) -> redis.Redis:
    """A client for ``url`` with its database emptied; fails the test naming Redis if down."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {url}: {exc}")
    return client


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    """The broker's Redis database, flushed."""
    client = flushed_redis(BROKER_URL)
    yield client
    client.close()


def rabbitmqctl(*arguments: str) -> str:
    """Run ``rabbitmqctl``; fails the test naming RabbitMQ when it cannot."""
    try:
        done = subprocess.run(
            ["rabbitmqctl", *arguments], capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError:
        pytest.fail("RabbitMQ is not installed (rabbitmqctl not found)")
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(arguments)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """An AMQP URL to a RabbitMQ virtual host of this run, deleted at its end with its queues.

    One per run, not per test: each ``rabbitmqctl`` call costs seconds. Tests empty its
    queues between them instead (see ``broker_url``)."""
    name = f"zw_test_{secrets.token_hex(6)}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"{AMQP_BASE}/{name}"
    finally:
        subprocess.run(
            ["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60, check=False
        )


def _empty_rabbitmq_queues(url: str) -> None:
    """Delete the queues a test leaves in the run's vhost (Celery declares them again)."""
    with kombu.Connection(url, connect_timeout=10) as conn:
        channel = conn.default_channel
        for queue in (priorities.DEFAULT_QUEUE, *priorities.QUEUES):
            try:
                channel.queue_delete(queue)
            except Exception:
                channel = conn.channel()


@pytest.fixture
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The broker of this test: "redis", or what ``both_brokers`` parametrizes."""
    kind: str = getattr(request, "param", "redis")
    assert kind in BROKER_KINDS
    return kind


@pytest.fixture
def broker_url(broker_kind: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The broker URL of this test, empty: Redis database 11, or the run's RabbitMQ vhost
    with its queues deleted."""
    if broker_kind == "rabbitmq":
        url: str = request.getfixturevalue("rabbitmq_vhost")
        _empty_rabbitmq_queues(url)
        yield url
        _empty_rabbitmq_queues(url)
    else:
        flushed_redis(BROKER_URL).close()
        yield BROKER_URL


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    """The Zoom simulator, served on 127.0.0.1 for this test."""
    with start_simulator() as running:
        yield running


@pytest.fixture
def sim_client(sim: RunningSimulator) -> Iterator[SimulatorClient]:
    with SimulatorClient(sim.url) as client:
        yield client


@pytest.fixture
def env(
    database_url: str, broker_url: str, sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Settings for this test (also handed to worker processes), pointed at the simulator;
    this process's Celery app sends to the test's broker."""
    flushed_redis(GOVERNOR_URL).close()
    values = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "REDIS_URL": GOVERNOR_URL,
        **sim.worker_env(),
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "2",
        "ZOOM_HTTP_TIMEOUT": "5",
        "METRICS_PORT": "0",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    db.dispose_all()
    token_store.forget_process_tokens()
    _point_app_at_broker()
    yield values
    celery_app.drop_broker_connections()  # they may lead to a vhost about to be deleted


# What storing a secret in the credentials registry requires (TOKEN_ENCRYPTION_KEY).
ENCRYPTION_KEY = "test-encryption-key-0123456789abcdef"


@pytest.fixture
def keyed(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test's settings with an encryption key (what storing a secret requires), also
    for worker processes (``start_worker(**keyed)``)."""
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEY", ENCRYPTION_KEY)
    get_settings.cache_clear()
    return {**env, "TOKEN_ENCRYPTION_KEY": ENCRYPTION_KEY}


def _point_app_at_broker() -> None:
    """Celery reads its settings once per process: give it this test's broker."""
    celery_app.point_at_broker(get_settings())


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``serial`` test stops or restarts a service every test uses: never beside others."""
    if item.get_closest_marker("serial") and "PYTEST_XDIST_WORKER" in os.environ:
        pytest.fail(
            "a `serial` test must run alone, not under pytest-xdist: scripts/test runs "
            '`-m "not serial"` with -n 2, then `-m serial` without'
        )


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@dataclass
class WorkerProcess:
    """A real `celery worker` (prefork) started for a test."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    children: list[int] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker, main process and children, as a dying host would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        self.ask_to_stop()
        self.await_stop()

    def ask_to_stop(self) -> None:
        """SIGTERM: Celery's warm shutdown (running tasks finish)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def await_stop(self) -> None:
        """Wait for the exit ``ask_to_stop`` asked for; SIGKILL after 20 seconds."""
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


def stop_together(processes: list[WorkerProcess]) -> None:
    """Stop ``processes`` side by side: their warm shutdowns overlap, not add up."""
    for process in processes:
        process.ask_to_stop()
    for process in processes:
        process.await_stop()


def spawn_celery(
    name: str,
    arguments: list[str],
    env: dict[str, str],
    log_path: Path,
    ready: str,
    timeout: float = 60,
) -> WorkerProcess:
    """Start `celery -A worker ...` in its own process group and wait for its ready line;
    a process not ready in time (or interrupted: pytest-timeout, ^C) is killed, never left
    running to take the next test's messages from the same broker database."""
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", *arguments],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    spawned = WorkerProcess(name=name, process=process, log_path=log_path)
    try:
        wait_for(
            lambda: ready in spawned.log() or process.poll() is not None,
            timeout=timeout,
            what=f"celery {name} ready",
        )
    except BaseException:
        spawned.kill()
        raise
    if process.poll() is not None:
        pytest.fail(f"celery {name} exited at start:\n{spawned.log()[-3000:]}")
    return spawned


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `celery -A worker worker` processes with this test's settings."""
    started: list[WorkerProcess] = []

    def start(
        concurrency: int = 2,
        name: str | None = None,
        include: str | None = None,
        queues: str | None = None,
        **overrides: str,
    ) -> WorkerProcess:
        name = name or f"w{len(started) + 1}"
        arguments = [
            "worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
            "--pool", "prefork", "--hostname", f"{name}@%h", "--without-gossip",
            "--without-mingle",
        ]  # fmt: skip
        if include:  # a test module of tasks the worker also runs (tests/receivers.py)
            arguments += ["--include", include]
        if queues is not None:  # a dedicated worker (`-Q`); else every queue
            arguments += ["--queues", queues]
        worker = spawn_celery(
            name, arguments, {**env, **overrides}, tmp_path / f"{name}.log", "ready."
        )
        started.append(worker)
        return worker

    yield start
    stop_together(started)


@pytest.fixture
def start_beat(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `celery -A worker beat` (the sweeper's schedule) with this test's settings."""
    started: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        schedule = str(tmp_path / "celerybeat-schedule")
        arguments = ["beat", "--loglevel", "INFO", "--schedule", schedule]
        beat = spawn_celery(
            "beat", arguments, {**env, **overrides}, tmp_path / "beat.log", "beat: Starting"
        )
        started.append(beat)
        return beat

    yield start
    stop_together(started)


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str | None = None,
    details: Callable[[], object] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds,
    naming ``what`` was awaited and, from ``details``, where things stand."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            state = f"; {details()}" if details else ""
            raise AssertionError(f"{what or condition}: not within {timeout:.0f}s{state}")
        time.sleep(interval)
