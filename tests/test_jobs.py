"""The ledger and the producer API, without worker processes."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from conftest import JOB_QUEUE
from sqlalchemy import func, select

from worker import celery_app, db, errors, jobs, ledger, meetings
from worker.config import get_settings
from worker.models import Job as JobRow
from worker.outcomes import Failed, Succeeded
from worker.simulator import SimulatorClient

pytestmark = pytest.mark.usefixtures("env")

BODY = {
    "topic": "Standup",
    "type": 2,
    "start_time": "2026-12-01T10:00:00Z",
    "duration": 30,
    "timezone": "UTC",
    "password": "pa55",
}


def _messages(broker: redis.Redis) -> list[dict[str, Any]]:
    """The task messages waiting on the default queue, decoded."""
    messages = []
    for raw in broker.lrange(JOB_QUEUE, 0, -1):
        envelope = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "kwargs": kwargs, "raw": raw})
    return messages


def _ledger() -> ledger.Ledger:
    """The ledger as a worker builds it, with the current settings."""
    return ledger.Ledger.from_settings(get_settings(), celery_app.send)


def _job_count() -> int:
    with db.sessions(get_settings())() as session:
        return session.scalar(select(func.count()).select_from(JobRow)) or 0


def test_create_meeting__stored_then_queued__message_carries_no_body(broker: redis.Redis) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-42")

    job = jobs.get_job(job_id)
    assert job is not None and job.status == "queued" and job.kind == "create"
    assert job.user_id == "host@example.com" and job.topic == "Standup"
    assert job.attempts == 0 and job.meeting_id is None
    [message] = _messages(broker)
    assert message["task"] == "meetings.create"
    assert message["kwargs"] == {
        "job_id": str(job_id),
        "user_id": "host@example.com",
        "topic": "Standup",
        "priority": "normal",
    }
    assert b"pa55" not in message["raw"]


def test_create_meeting__same_idempotency_key__same_job_one_message(broker: redis.Redis) -> None:
    first = jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-42")
    second = jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-42")

    assert first == second
    assert _job_count() == 1
    assert len(_messages(broker)) == 1


def test_create_meeting__invalid_body__names_field_stores_nothing(broker: redis.Redis) -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        jobs.create_meeting("host@example.com", {**BODY, "topic": "x" * 201})

    assert caught.value.field == "topic"
    assert isinstance(caught.value, ValueError)
    assert _job_count() == 0
    assert _messages(broker) == []


def test_create_meeting__agenda_budget_leaves_room_for_marker() -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        jobs.create_meeting("host@example.com", {"agenda": "a" * 2000})
    assert caught.value.field == "agenda"
    job_id = jobs.create_meeting(
        "host@example.com", {"agenda": "a" * (2000 - jobs.RESERVED_AGENDA_CHARS)}
    )
    assert jobs.get_job(job_id) is not None


def test_delete_meeting__not_created_here__refused(
    broker: redis.Redis, sim_client: SimulatorClient
) -> None:
    foreign = sim_client.seed_meeting("someone@example.com", {"topic": "Not ours"})

    with pytest.raises(errors.InvalidMeeting) as caught:
        jobs.delete_meeting(foreign["id"])

    assert caught.value.field == "meeting_id"
    assert "did not create" in str(caught.value)
    assert _job_count() == 0 and _messages(broker) == []


def test_get_job__unknown_or_malformed__none() -> None:
    assert jobs.get_job(uuid.uuid4()) is None
    assert jobs.get_job("not-a-uuid") is None


def test_create_meeting__broker_down__job_kept_for_sweeper(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(celery_app.app, "send_task", refuse)
    job_id = jobs.create_meeting("host@example.com", BODY)

    job = jobs.get_job(job_id)
    assert job is not None and job.status == "queued"


def test_sweep__lease_expired__dispatched_again_once(broker: redis.Redis) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)
    broker.delete(JOB_QUEUE)  # the message is lost, as when Redis restarts empty
    with db.sessions(get_settings())() as session, session.begin():
        row = session.get(JobRow, job_id)
        assert row is not None and row.lease_expires_at is not None
        row.lease_expires_at = row.lease_expires_at.replace(year=2000)

    assert _ledger().sweep() == 1
    assert _ledger().sweep() == 0, "the lease was pushed forward: no second dispatch"
    assert [m["kwargs"]["job_id"] for m in _messages(broker)] == [str(job_id)]


def test_claim__only_one_holder() -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)

    first = _ledger().claim(job_id)
    second = _ledger().claim(job_id)

    assert first is not None and second is None
    assert _ledger().record(first, Failed("test")) is True
    assert _ledger().claim(job_id) is None, "a finished job is never claimed again"


def test_delete_by_create_job__create_not_started__cancelled() -> None:
    create = jobs.create_meeting("host@example.com", BODY)
    delete = jobs.delete_meeting(create_job_id=create)
    claim = _ledger().claim(delete)
    assert claim is not None and claim.meeting_id is None and claim.after_job_id == create

    assert _ledger().resolve_create(claim) == ("cancelled", None)

    cancelled = jobs.get_job(create)
    assert cancelled is not None and cancelled.status == "failed"
    assert cancelled.error == f"cancelled by delete job {delete} before it ran"
    assert _ledger().claim(create) is None, "a cancelled create never runs"


def test_delete_by_create_job__create_running__waits() -> None:
    create = jobs.create_meeting("host@example.com", BODY)
    running = _ledger().claim(create)
    assert running is not None
    delete = _ledger().claim(jobs.delete_meeting(create_job_id=create))
    assert delete is not None

    assert _ledger().resolve_create(delete) == ("pending", None)

    _ledger().record(running, Succeeded(85746065432, "https://zoom.us/j/85746065432"))
    assert _ledger().resolve_create(delete) == ("meeting", 85746065432)


def test_delete_by_create_job__already_made__deletes_that_meeting(broker: redis.Redis) -> None:
    create = jobs.create_meeting("host@example.com", BODY)
    running = _ledger().claim(create)
    assert running is not None
    _ledger().record(running, Succeeded(85746065432))

    delete = jobs.delete_meeting(create_job_id=create)

    claim = _ledger().claim(delete)
    assert claim is not None and claim.meeting_id == 85746065432


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "meeting_id"),
        ({"meeting_id": 1, "create_job_id": uuid.uuid4()}, "meeting_id"),
        ({"create_job_id": uuid.uuid4()}, "create_job_id"),
        ({"create_job_id": "nope"}, "create_job_id"),
    ],
)
def test_delete_meeting__bad_target__names_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        jobs.delete_meeting(**kwargs)
    assert caught.value.field == field


def test_claim__worker_dies_every_time__failed_as_poison_keeping_the_mark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOB_MAX_DELIVERIES", "2")
    get_settings.cache_clear()
    job_id = jobs.create_meeting("host@example.com", BODY)

    def expire_lease() -> None:
        with db.sessions(get_settings())() as session, session.begin():
            row = session.get(JobRow, job_id)
            assert row is not None and row.lease_expires_at is not None
            row.lease_expires_at = row.lease_expires_at.replace(year=2000)

    for _ in range(2):
        assert _ledger().claim(job_id) is not None  # ... and the worker dies mid-call
        expire_lease()
    assert _ledger().claim(job_id) is None

    job = jobs.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.error and job.error.startswith("gave up: delivered 3 times")
    with db.sessions(get_settings())() as session:
        row = session.get(JobRow, job_id)
        assert row is not None and row.maybe_sent is True


class _RefusingClient:
    """Stands in for ZoomClient: every create is answered with one chosen error."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def create_meeting(self, user_id: str, body: dict[str, Any]) -> Any:
        raise self.error


class _Store:
    """Stands in for TokenStore: a token is always at hand."""

    def get(self) -> object:
        return object()


@pytest.mark.parametrize(
    ("wait", "on_broker"), [(timedelta(seconds=30), True), (timedelta(hours=2), False)]
)
def test_retry__wait_beyond_visibility_timeout__parked_in_postgres_not_on_broker(
    broker: redis.Redis, wait: timedelta, on_broker: bool
) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)
    broker.delete(JOB_QUEUE)
    claim = _ledger().claim(job_id)
    assert claim is not None
    retry_at = datetime.now(UTC) + wait
    limited = errors.RateLimited("429", retry_at=retry_at)
    runtime = meetings.Runtime(
        settings=get_settings(),
        client=_RefusingClient(limited),  # type: ignore[arg-type]
        gate=meetings.OpenGate(),
        store=_Store(),  # type: ignore[arg-type]
        ledger=_ledger(),
    )

    reschedule = meetings.run(claim, runtime)

    job = jobs.get_job(job_id)
    assert job is not None and job.status == "retrying" and job.attempts == 0
    assert job.next_attempt_at == retry_at and job.deferrals == 1
    assert (reschedule is not None) is on_broker, "a long wait must never be a broker countdown"
    if reschedule is not None:
        assert reschedule.countdown_s <= get_settings().CELERY_VISIBILITY_TIMEOUT / 2
