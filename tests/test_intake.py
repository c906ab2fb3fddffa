"""Issue 10, points 4 and 6: nothing sent is lost, and idempotency keys work like a payment API's.

- A job sent by task name while PostgreSQL is down is retried until it can be recorded
  (proven against a PRIVATE PostgreSQL cluster this module starts and stops, never the
  machine's shared server); a message that can never run is recorded as a failed job.
- The same key with another request raises IdempotencyConflict; the same request returns
  the same job whatever its state; a failed job runs again under its key with ``retry_job``.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from conftest import JOB_QUEUE, ROOT, WorkerProcess, wait_for

from worker import celery_app, db, errors, jobs, ledger, models
from worker.celery_app import app
from worker.cli import cli
from worker.config import get_settings
from worker.outcomes import Failed, Succeeded
from worker.simulator import SimulatorClient

BODY = {"topic": "Standup", "type": 2, "start_time": "2030-01-07T10:00:00Z", "duration": 30}
INSTANT = {"topic": "Call now", "type": 1}


def _body(n: int) -> dict[str, Any]:
    return {**BODY, "topic": f"Sent by name {n}"}


# -- idempotency --------------------------------------------------------------------------


def test_intake__key_reused_with_another_body__idempotency_conflict_naming_key(
    env: dict[str, str],
) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-7")

    with pytest.raises(errors.IdempotencyConflict) as raised:
        jobs.create_meeting("host@example.com", {**BODY, "topic": "Layoffs Q3"}, "booking-7")

    assert isinstance(raised.value, ValueError)
    assert raised.value.key == "booking-7" and raised.value.job_id == job_id
    assert "booking-7" in str(raised.value)
    assert "Layoffs" not in str(raised.value)  # the message names the key, never the body


def test_intake__key_reused_for_another_host_or_kind__idempotency_conflict(
    env: dict[str, str],
) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-8")

    with pytest.raises(errors.IdempotencyConflict):
        jobs.create_meeting("other@example.com", BODY, idempotency_key="booking-8")
    with pytest.raises(errors.IdempotencyConflict) as raised:
        jobs.delete_meeting(create_job_id=job_id, idempotency_key="booking-8")
    assert raised.value.job_id == job_id


def test_intake__same_key_and_body_after_failure__same_job(env: dict[str, str]) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-9")
    _fail(job_id, maybe_sent=False)

    again = jobs.create_meeting("host@example.com", dict(BODY), idempotency_key="booking-9")

    assert again == job_id
    assert _job(job_id).status == models.FAILED


def test_intake__delete_by_create_job_resent_after_create_finished__same_job(
    env: dict[str, str],
) -> None:
    create = jobs.create_meeting("host@example.com", BODY)
    delete = jobs.delete_meeting(create_job_id=create, idempotency_key="drop-1")
    claim = _ledger().claim(create)
    assert claim is not None
    _ledger().record(claim, Succeeded(81234567890, "https://zoom.us/j/81234567890"))

    # The create now has a meeting: the same request must still be recognised as such.
    assert jobs.delete_meeting(create_job_id=create, idempotency_key="drop-1") == delete


# -- retry_job ----------------------------------------------------------------------------


def test_intake__retry_failed_create_that_may_exist__queued_same_key_searches_first(
    env: dict[str, str], broker: redis.Redis
) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, idempotency_key="retry-1")
    _fail(job_id, maybe_sent=True)
    broker.flushdb()

    job = jobs.retry_job(str(job_id))

    assert job.id == job_id and job.status == models.QUEUED
    assert job.attempts == 0 and job.error is None and job.idempotency_key == "retry-1"
    assert broker.llen(JOB_QUEUE) == 1
    claim = _ledger().claim(job_id)
    assert claim is not None and claim.maybe_sent, "the worker must search by marker first"


def test_intake__retry_job_not_failed__refused_saying_why(env: dict[str, str]) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)

    with pytest.raises(errors.InvalidMeeting) as raised:
        jobs.retry_job(job_id)
    assert "only a failed job can be retried" in str(raised.value)
    with pytest.raises(errors.InvalidMeeting, match="no such job"):
        jobs.retry_job(uuid.uuid4())
    with pytest.raises(errors.InvalidMeeting, match="not a job id"):
        jobs.retry_job("nonsense")


def test_intake__retry_instant_meeting_outcome_unknown__refused_with_reason(
    env: dict[str, str],
) -> None:
    job_id = jobs.create_meeting("host@example.com", INSTANT)
    _fail(job_id, maybe_sent=True)

    with pytest.raises(errors.OutcomeUnknown, match="instant meeting"):
        jobs.retry_job(job_id)
    assert _job(job_id).status == models.FAILED


def test_intake__retry_create_named_by_a_delete__refused(env: dict[str, str]) -> None:
    create = jobs.create_meeting("host@example.com", BODY)
    jobs.delete_meeting(create_job_id=create)
    _fail(create, maybe_sent=False)

    with pytest.raises(errors.InvalidMeeting, match="named by delete job"):
        jobs.retry_job(create)


def test_intake__cli_retry_of_a_queued_job__exits_2_saying_why(env: dict[str, str]) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)

    result = CliRunner().invoke(cli, ["retry", str(job_id)], catch_exceptions=False)

    assert result.exit_code == 2
    assert "only a failed job can be retried" in result.output


def _ledger() -> ledger.Ledger:
    return ledger.Ledger.from_settings(get_settings(), celery_app.send)


def _fail(job_id: uuid.UUID, *, maybe_sent: bool) -> None:
    claim = _ledger().claim(job_id)
    assert claim is not None
    assert _ledger().record(claim, Failed("test: failed", maybe_sent=maybe_sent))


def _job(job_id: uuid.UUID) -> jobs.Job:
    job = jobs.get_job(job_id)
    assert job is not None
    return job


# -- by-name messages that can never run -----------------------------------------------------


def test_intake__by_name_occurrence_id_over_64__failed_job_with_reason(env: dict[str, str]) -> None:
    kwargs = {"meeting_id": 81234567890, "occurrence_id": "1" * 65}

    job_id = jobs.record_received(jobs.DELETE, kwargs, "task-long-occurrence")

    job = _job(job_id)
    assert job.status == models.FAILED and job.kind == "delete"
    assert "occurrence_id" in (job.error or "")
    assert jobs.record_received(jobs.DELETE, kwargs, "task-long-occurrence") == job_id


def test_intake__by_name_key_of_another_kind__failed_job_under_task_id(
    env: dict[str, str],
) -> None:
    create = jobs.create_meeting("host@example.com", BODY)
    delete = jobs.delete_meeting(create_job_id=create, idempotency_key="shared-key")
    kwargs = {"user_id": "host@example.com", "meeting": BODY, "idempotency_key": "shared-key"}

    job_id = jobs.record_received(jobs.CREATE, kwargs, "task-shared-key")

    job = _job(job_id)
    assert job_id not in (create, delete) and job.status == models.FAILED
    assert job.idempotency_key == "celery-task:task-shared-key"
    assert "shared-key" in (job.error or "") and "delete job" in (job.error or "")
    assert jobs.record_received(jobs.CREATE, kwargs, "task-shared-key") == job_id
    assert _job(delete).status == models.QUEUED


def test_intake__by_name_unknown_argument__failed_job_naming_it(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # Celery would refuse the call before our code ran and acknowledge the message: lost.
    start_worker(concurrency=1)
    kwargs = {"user_id": "host@example.com", "meting": BODY}

    task_id = app.send_task("meetings.create", kwargs=kwargs).id

    job = wait_for(
        lambda: next(
            (j for j in jobs.list_jobs(limit=10) if j.idempotency_key == f"celery-task:{task_id}"),
            None,
        ),
        timeout=60,
        what="the message recorded as a job",
    )
    assert job.status == models.FAILED
    assert "unknown arguments" in (job.error or "") and "meting" in (job.error or "")


def test_intake__by_name_with_on_done__the_job_names_its_receiver(env: dict[str, str]) -> None:
    kwargs = {"user_id": "host@example.com", "meeting": BODY, "on_done": "app.tasks.done"}

    job_id = jobs.record_received(jobs.CREATE, kwargs, "task-on-done")

    claim = ledger.Ledger.from_settings(get_settings(), celery_app.send).claim(job_id)
    assert claim is not None and claim.on_done == "app.tasks.done"


def test_intake__by_name_bad_on_done__failed_job_naming_it(env: dict[str, str]) -> None:
    kwargs = {"user_id": "host@example.com", "meeting": BODY, "on_done": "not a task name"}

    job = _job(jobs.record_received(jobs.CREATE, kwargs, "task-bad-on-done"))

    assert job.status == models.FAILED and "on_done" in (job.error or "")


def test_intake__by_name_redelivered__one_job(env: dict[str, str]) -> None:
    kwargs = {"user_id": "host@example.com", "meeting": BODY}

    first = jobs.record_received(jobs.CREATE, kwargs, "task-twice")
    second = jobs.record_received(jobs.CREATE, kwargs, "task-twice")

    assert first == second
    assert _job(first).idempotency_key == "celery-task:task-twice"


def test_intake__by_name_database_down__infrastructure_error_not_a_failed_job(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/zoom_worker")
    get_settings.cache_clear()

    with pytest.raises(errors.InfrastructureError):
        jobs.record_received(jobs.CREATE, {"user_id": "h@example.com", "meeting": BODY}, "t-1")
    with pytest.raises(errors.InfrastructureError):  # invalid, and nowhere to record it
        jobs.record_received(jobs.CREATE, {"user_id": "h@example.com", "meeting": {}}, "t-2")


# -- real worker processes --------------------------------------------------------------------


@pytest.mark.fleet
def test_intake__failed_create_retried__succeeds_one_meeting(
    env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    sim_client: SimulatorClient,
) -> None:
    sim_client.configure(missing_users=["ghost@example.com"])
    start_worker(concurrency=1)
    job_id = jobs.create_meeting("ghost@example.com", BODY, idempotency_key="retry-fleet")
    wait_for(lambda: _job(job_id).status == models.FAILED, timeout=60, what="the create failed")
    sim_client.configure(missing_users=[])

    result = CliRunner().invoke(cli, ["retry", str(job_id)], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(job_id)
    done = wait_for(
        lambda: (job := _job(job_id)).status == models.SUCCEEDED and job,
        timeout=60,
        what="the retried create succeeded",
    )
    made = [m for m in sim_client.meetings() if m["topic"] == "Standup"]
    assert [m["id"] for m in made] == [done.meeting_id]
    assert sim_client.stats()["meetings_created"] == 1


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of this test alone, which it may stop and start at will."""

    bindir: Path
    datadir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/zoom_worker"

    def ctl(self, *arguments: str) -> None:
        options = (
            f"-p {self.port} -k {self.datadir.parent} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=100"
        )
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"), "-D",
             str(self.datadir), "-o", options, "-l", str(self.datadir.parent / "server.log"),
             "-w", "-t", "60", *arguments],
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")

    def start(self) -> None:
        self.ctl("start")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """initdb a throw-away cluster as the ``postgres`` OS user on a free port, migrated."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.fail("PostgreSQL server binaries are missing under /usr/lib/postgresql/*/bin")
    root = Path(tempfile.mkdtemp(prefix="zw-private-pg-"))
    shutil.chown(root, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cluster = PrivatePostgres(bins[-1].parent, root / "data", port)
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(cluster.bindir / "initdb"), "-D",
         str(cluster.datadir), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    cluster.start()
    try:
        db.ensure_database(cluster.url)
        config = Config(str(ROOT / "alembic.ini"))
        config.attributes["database_url"] = cluster.url
        config.attributes["configure_logger"] = False
        command.upgrade(config, "head")
        yield cluster
    finally:
        db.dispose_all()
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(cluster.bindir / "pg_ctl"), "-D",
             str(cluster.datadir), "-m", "immediate", "stop"],
            check=False, capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _pg_accepts(url: str) -> bool:
    try:
        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.mark.fleet
def test_intake__postgresql_stopped_while_50_sent_by_name__all_recorded_and_done(
    env: dict[str, str],
    private_postgres: PrivatePostgres,
    start_worker: Callable[..., WorkerProcess],
    sim_client: SimulatorClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = private_postgres.url
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    db.dispose_all()
    worker = start_worker(concurrency=2, DATABASE_URL=url, RETRY_BACKOFF_MAX="2")

    private_postgres.stop()
    assert not _pg_accepts(url)
    sent = [
        app.send_task(
            "meetings.create", kwargs={"user_id": f"host{n % 10}@example.com", "meeting": _body(n)}
        ).id
        for n in range(50)
    ]
    received = re.compile(r"Task meetings\.create\[([0-9a-f-]+)\] received")
    wait_for(
        lambda: set(received.findall(worker.log())) >= set(sent),
        timeout=120,
        what="every message delivered to the worker while PostgreSQL is down",
    )
    outage_started = time.monotonic()
    private_postgres.start()
    outage_s = time.monotonic() - outage_started

    started = time.monotonic()

    def done() -> bool:
        return sum(j.status == models.SUCCEEDED for j in jobs.list_jobs(limit=100)) == 50

    wait_for(
        done,
        timeout=120,
        what="50 jobs recorded and succeeded",
        details=lambda: f"{jobs.count_by_status()} {worker.log()[-1500:]}",
    )
    recovered_s = time.monotonic() - started
    recorded = jobs.list_jobs(limit=100)
    unrecorded = len(re.findall(r"job\.unrecorded task_id=", worker.log()))
    print(
        f"\npg-down-by-name: sent=50 jobs={len(recorded)} succeeded=50 "
        f"meetings={sim_client.stats()['meetings_created']} retries_while_down={unrecorded} "
        f"restart_s={outage_s:.1f} recovered_s={recovered_s:.1f}"
    )
    assert len(recorded) == 50
    assert {j.idempotency_key for j in recorded} == {f"celery-task:{task}" for task in sent}
    assert sim_client.stats()["meetings_created"] == 50
    assert unrecorded >= 50
