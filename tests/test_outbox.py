"""Jobs written in the caller's transaction (``session=``), the relay that sends them after
the commit, and ``on_done`` notifications (worker.outbox, worker.relay, worker.enqueue)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import receivers
import redis
from conftest import JOB_QUEUE, RECEIVER_URL, ROOT, WorkerProcess, flushed_redis, wait_for
from sqlalchemy import func, select, text

from worker import celery_app, db, errors, jobs, ledger, outbox, relay, tasks
from worker.config import get_settings
from worker.models import Job as JobRow
from worker.models import OutboxMessage
from worker.outcomes import Failed, Succeeded
from worker.simulator import SimulatorClient

pytestmark = pytest.mark.usefixtures("env")

BODY = {"topic": "Standup", "type": 2, "start_time": "2026-12-01T10:00:00Z", "duration": 30}
ON_DONE = receivers.TASK


def _body(n: int) -> dict[str, Any]:
    return {**BODY, "topic": f"Standup {n}"}


def _queued(broker: redis.Redis, queue: str = JOB_QUEUE) -> list[tuple[str, dict[str, Any]]]:
    """(task, kwargs) of the messages waiting on ``queue`` (the normal priority's jobs, or
    Celery's default queue for the on_done notifications), oldest first."""
    found = []
    for raw in reversed(broker.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        found.append((envelope["headers"]["task"], kwargs))
    return found


def _count(model: Any) -> int:
    with db.sessions(get_settings())() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _notifications() -> list[OutboxMessage]:
    with db.sessions(get_settings())() as session:
        query = select(OutboxMessage).where(OutboxMessage.task == ON_DONE)
        return list(session.scalars(query.order_by(OutboxMessage.created_at)))


def _ledger() -> ledger.Ledger:
    return ledger.Ledger.from_settings(get_settings(), celery_app.send)


@pytest.fixture
def running_relay() -> Iterator[relay.Relay]:
    """A relay in this process, scanning only once a minute: only a NOTIFY wakes it in time."""
    settings = get_settings().model_copy(update={"OUTBOX_SCAN_SECONDS": 60.0})
    started = relay.Relay(settings, celery_app.send_many).start()
    wait_for(started.holding.is_set, timeout=10, what="the relay holding the outbox lock")
    yield started
    started.stop(timeout_s=0)


# -- point 1: the caller's transaction ---------------------------------------------------------


def test_create_meeting__session_rolled_back__no_job_no_message(broker: redis.Redis) -> None:
    with db.sessions(get_settings())() as session:
        job_id = jobs.create_meeting("host@example.com", BODY, session=session)
        assert session.get(JobRow, job_id) is not None  # visible inside the transaction
        session.rollback()

    assert jobs.get_job(job_id) is None
    assert _count(JobRow) == 0 and _count(OutboxMessage) == 0 and _queued(broker) == []


def test_create_meeting__session_uncommitted__nothing_sent_until_commit(
    broker: redis.Redis, running_relay: relay.Relay
) -> None:
    with db.sessions(get_settings())() as session:
        job_id = jobs.create_meeting("host@example.com", BODY, session=session)
        session.execute(text("SELECT pg_sleep(0.3)"))
        assert _queued(broker) == []  # the caller has not committed: nothing on the broker
        session.commit()

    # Woken by the commit's NOTIFY: its periodic scan is a minute away.
    wait_for(lambda: _queued(broker), timeout=10, what="the relay sending the job")
    [(task, kwargs)] = _queued(broker)
    assert task == "meetings.create" and kwargs["job_id"] == str(job_id)
    with db.sessions(get_settings())() as session:
        assert outbox.pending(session) == 0


def test_bulk__connection_committed__relay_sends_every_job(
    broker: redis.Redis, running_relay: relay.Relay
) -> None:
    engine = db.get_engine(get_settings())
    with engine.begin() as connection:
        ids = jobs.create_meetings(
            [{"user_id": "host@example.com", "meeting": _body(n)} for n in range(5)],
            session=connection,
        )

    wait_for(lambda: len(_queued(broker)) == 5, timeout=10, what="five jobs sent")
    assert [kwargs["job_id"] for _, kwargs in _queued(broker)] == [str(i) for i in ids]


def test_bulk__conflict_in_session__caller_transaction_untouched(broker: redis.Redis) -> None:
    jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-1")
    with db.sessions(get_settings())() as session:
        mine = jobs.create_meeting("host@example.com", _body(1), session=session)
        with pytest.raises(errors.IdempotencyConflict):
            jobs.create_meetings(
                [
                    {"user_id": "host@example.com", "meeting": _body(2), "idempotency_key": "k2"},
                    {
                        "user_id": "host@example.com",
                        "meeting": _body(3),
                        "idempotency_key": "booking-1",
                    },
                ],
                session=session,
            )
        session.commit()

    assert jobs.get_job(mine) is not None  # the caller's own earlier write stands
    assert _count(JobRow) == 2  # booking-1 and mine; nothing of the refused batch


def test_delete_meeting__session__checks_and_writes_in_the_callers_transaction(
    broker: redis.Redis,
) -> None:
    create = jobs.create_meeting("host@example.com", BODY)
    with db.sessions(get_settings())() as session:
        with pytest.raises(errors.InvalidMeeting) as caught:
            jobs.delete_meeting(85746065432, session=session)
        assert caught.value.field == "meeting_id"
        delete = jobs.delete_meeting(create_job_id=create, session=session)
        session.commit()

    job = jobs.get_job(delete)
    assert job is not None and job.kind == "delete" and job.status == "queued"
    with db.sessions(get_settings())() as session:
        assert outbox.pending(session) == 1


PRODUCER = """
import os, signal, sys
from worker import db, jobs
from worker.config import get_settings
with db.sessions(get_settings())() as session:
    job_id = jobs.create_meeting("host@example.com", {body!r}, session=session)
    session.commit()
print(job_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # dies right after its commit
"""


@pytest.mark.fleet
def test_create_meeting__producer_killed_after_commit__job_still_runs(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], sim_client: SimulatorClient
) -> None:
    start_worker(concurrency=1, OUTBOX_SCAN_SECONDS="60")
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER.format(body=BODY)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    job_id = uuid.UUID(done.stdout.strip())

    job = jobs.wait_for_job(job_id, timeout=30)

    assert job.status == "succeeded" and job.meeting_id is not None
    assert [m["id"] for m in sim_client.meetings()] == [job.meeting_id]


# -- point 2: on_done ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["nodots", "billing..tasks", "billing.tasks.1st", 42, "billing." + "a" * 250]
)
def test_create_meeting__invalid_on_done__refused_naming_it(bad: object) -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        jobs.create_meeting("host@example.com", BODY, on_done=bad)  # type: ignore[arg-type]

    assert caught.value.field == "on_done"
    assert _count(JobRow) == 0


def test_on_done__failed_then_retried__a_new_notification_each_outcome(
    broker: redis.Redis,
) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, on_done=ON_DONE)
    claim = _ledger().claim(job_id)
    assert claim is not None and _ledger().record(claim, Failed("Zoom refused it"))
    jobs.retry_job(job_id)
    claim = _ledger().claim(job_id)
    assert claim is not None
    assert _ledger().record(claim, Succeeded(85746065432, "https://zoom.us/j/85746065432"))

    first, second = _notifications()
    assert first.id != second.id
    assert [n.kwargs["job"]["status"] for n in (first, second)] == ["failed", "succeeded"]
    assert second.kwargs["notification_id"] == str(second.id)
    assert second.kwargs["job"]["id"] == str(job_id)
    assert second.kwargs["job"]["join_url"] == "https://zoom.us/j/85746065432"
    assert "start_url" not in json.dumps(second.kwargs) and "body" not in second.kwargs["job"]


def test_on_done__cancelled__notified(broker: redis.Redis) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, on_done=ON_DONE)
    jobs.cancel_job(job_id)

    [notification] = _notifications()
    assert notification.kwargs["job"]["status"] == "cancelled"


def test_on_done__none_named__no_notification(broker: redis.Redis) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)
    claim = _ledger().claim(job_id)
    assert claim is not None and _ledger().record(claim, Failed("Zoom refused it"))

    assert _count(OutboxMessage) == 0


def test_send_pending__broker_refuses__kept_then_sent_with_the_same_id(
    broker: redis.Redis,
) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, on_done=ON_DONE)
    jobs.cancel_job(job_id)
    sessions = db.sessions(get_settings())

    def refuse(messages: Any) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        outbox.send_pending(sessions, refuse)
    assert _queued(broker, "celery") == []
    assert outbox.send_pending(sessions, celery_app.send_many) == 1

    [(task, kwargs)] = _queued(broker, "celery")
    [notification] = _notifications()
    assert task == ON_DONE and kwargs["notification_id"] == str(notification.id)
    assert notification.sent_at is not None


@pytest.mark.fleet
@pytest.mark.timeout(300)  # 100 creates and 100 notifications on a loaded 2-core machine
def test_on_done__hundred_jobs_through_a_worker_restart__each_notified_same_id(
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[..., WorkerProcess],
    env: dict[str, str],
) -> None:
    received = flushed_redis(RECEIVER_URL)
    overrides = {
        "TEST_RECEIVER_URL": RECEIVER_URL,
        "OUTBOX_SCAN_SECONDS": "1",
        # The job a stopped worker's pool process was running is swept within seconds.
        "JOB_LEASE_SECONDS": "6",
        "ZOOM_HTTP_TIMEOUT": "1.5",
        "ZOOM_TOKEN_LOCK_TIMEOUT": "1",
        "ZOOM_TOKEN_REQUEST_TIMEOUT": "1",
        "SWEEP_INTERVAL_SECONDS": "1",
    }
    start_beat(**overrides)
    first = start_worker(concurrency=2, include="tests.receivers", **overrides)
    # Its relay stands by while the first worker's holds the lock.
    second = start_worker(concurrency=2, include="tests.receivers", **overrides)
    ids = jobs.create_meetings(
        [{"user_id": f"host{n % 5}@example.com", "meeting": _body(n)} for n in range(100)],
        on_done=ON_DONE,
    )
    wait_for(lambda: len(receivers.received(received)) >= 20, timeout=60, what="20 notified")
    first.stop()  # the second worker's relay takes over the notifications still to come

    def everyone() -> bool:
        return {n["job"]["id"] for n in receivers.received(received)} == {str(i) for i in ids}

    wait_for(everyone, timeout=120, what="every job notified")
    assert "relay.started" in first.log() and "relay.started" in second.log()
    by_job: dict[str, set[str]] = {}
    for note in receivers.received(received):
        by_job.setdefault(note["job"]["id"], set()).add(note["notification_id"])
        assert note["job"]["status"] == "succeeded" and note["job"]["join_url"]
    assert all(len(ids_) == 1 for ids_ in by_job.values())  # a repeat carries the same id
    received.close()


def test_sweep__no_relay_running__sends_what_the_outbox_holds(broker: redis.Redis) -> None:
    with db.sessions(get_settings())() as session:
        job_id = jobs.create_meeting("host@example.com", BODY, session=session)
        session.commit()
    assert _queued(broker) == []  # no relay runs in this test

    tasks.sweep()

    [(task, kwargs)] = _queued(broker)
    assert task == "meetings.create" and kwargs["job_id"] == str(job_id)
    with db.sessions(get_settings())() as session:
        assert outbox.pending(session) == 0
