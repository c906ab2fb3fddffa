"""worker.aio: the asyncio producers, end to end through a real worker and the relay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from conftest import JOB_QUEUE, WorkerProcess
from job_parts import run_async as run
from sqlalchemy import func, select

from worker import aio, db, errors, jobs, outbox
from worker.config import get_settings
from worker.models import Job as JobRow
from worker.models import OutboxMessage
from worker.simulator import SimulatorClient

pytestmark = pytest.mark.usefixtures("env")

BODY = {"topic": "Standup", "type": 2, "start_time": "2026-12-01T10:00:00Z", "duration": 30}


def _count(model: Any) -> int:
    with db.sessions(get_settings())() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.mark.fleet
def test_aio_create_meeting__runs_through_a_worker(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    start_worker(concurrency=1)

    async def work() -> jobs.Job:
        job_id = await aio.create_meeting("host@example.com", BODY, idempotency_key="a-1")
        assert await aio.create_meeting("host@example.com", BODY, idempotency_key="a-1") == job_id
        return await aio.wait_for_job(job_id, timeout=30)

    job = run(work)

    assert job.status == "succeeded" and job.meeting_id is not None
    assert [m["id"] for m in sim_client.meetings()] == [job.meeting_id]


def test_aio_create_meeting__same_key_other_body__conflict_nothing_stored(
    broker: redis.Redis,
) -> None:
    async def work() -> None:
        await aio.create_meeting("host@example.com", BODY, idempotency_key="a-1")
        with pytest.raises(errors.IdempotencyConflict):
            await aio.create_meeting(
                "host@example.com", {**BODY, "topic": "Other"}, idempotency_key="a-1"
            )

    run(work)

    assert _count(JobRow) == 1 and _count(OutboxMessage) == 1
    assert broker.llen(JOB_QUEUE) == 0  # an async producer never publishes: the relay does


def test_aio_create_meeting__invalid_body__refused_naming_the_field() -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        run(lambda: aio.create_meeting("host@example.com", {**BODY, "topic": "x" * 201}))

    assert caught.value.field == "topic" and _count(JobRow) == 0


def test_aio_session__rolled_back__no_job() -> None:
    async def work() -> None:
        async with aio.sessions(get_settings())() as session:
            await aio.create_meetings(
                [{"user_id": "host@example.com", "meeting": BODY}], session=session
            )
            assert await session.scalar(select(func.count()).select_from(JobRow)) == 1
            await session.rollback()

    run(work)

    assert _count(JobRow) == 0 and _count(OutboxMessage) == 0


def test_aio_connection__committed__job_and_its_dispatch_stored() -> None:
    async def work() -> Any:
        engine = aio.sessions(get_settings()).kw["bind"]
        async with engine.begin() as connection:
            job_id = await aio.create_meeting("host@example.com", BODY, session=connection)
        return job_id

    job_id = run(work)

    assert jobs.get_job(job_id) is not None
    with db.sessions(get_settings())() as session:
        assert outbox.pending(session) == 1


def test_aio_cancel_then_retry__refused_as_sync_is(broker: redis.Redis) -> None:
    async def work() -> None:
        job_id = await aio.create_meeting("host@example.com", BODY, on_done="app.tasks.done")
        cancelled = await aio.cancel_job(job_id)
        assert cancelled.status == "cancelled"
        with pytest.raises(errors.InvalidMeeting) as caught:
            await aio.retry_job(job_id)
        assert caught.value.field == "job_id"
        assert (await aio.get_job(job_id)) == cancelled
        assert await aio.get_job("not-a-uuid") is None

    run(work)

    with db.sessions(get_settings())() as session:
        tasks = session.scalars(select(OutboxMessage.task).order_by(OutboxMessage.created_at))
        assert list(tasks) == ["meetings.create", "app.tasks.done"]
