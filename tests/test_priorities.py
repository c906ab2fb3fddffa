"""Job priorities (worker.priorities): validated and stored, routed to one queue each on both
brokers, and served first by the rate governor."""

from __future__ import annotations

from collections.abc import Callable

import kombu
import pytest
from conftest import WorkerProcess, both_brokers
from sqlalchemy import update

from worker import db, errors, jobs, priorities
from worker.celery_app import app
from worker.config import get_settings
from worker.models import Job as JobRow

MEETING = {"topic": "Standup", "type": 2, "start_time": "2030-01-07T10:00:00Z", "duration": 30}


def _queued(broker_url: str) -> dict[str, int]:
    """Messages waiting in each job queue, by the broker's own count (both brokers)."""
    counts = {}
    with kombu.Connection(broker_url, connect_timeout=10) as conn:
        for name in priorities.QUEUES:
            channel = conn.channel()
            try:
                counts[name] = channel.queue_declare(queue=name, passive=True).message_count
            except conn.channel_errors:  # never declared: nothing was sent there
                counts[name] = 0
            finally:
                channel.close()
    return counts


@pytest.mark.usefixtures("env")
def test_create_meeting__unknown_priority__refused_naming_it_nothing_stored() -> None:
    with pytest.raises(errors.InvalidMeeting) as raised:
        jobs.create_meeting("host@example.com", MEETING, priority="urgent")
    with pytest.raises(errors.InvalidMeeting) as in_batch:
        jobs.create_meetings([{"user_id": "a@example.com", "meeting": MEETING, "priority": 1}])

    assert raised.value.field == "priority" and "high, normal, bulk" in str(raised.value)
    assert in_batch.value.field == "[0].priority"
    assert jobs.count_by_status() == {}


@both_brokers
def test_producers__each_priority__stored_and_sent_to_its_own_queue(
    env: dict[str, str], broker_url: str
) -> None:
    high = jobs.create_meeting("host@example.com", MEETING, priority="high")
    normal = jobs.create_meeting("host@example.com", MEETING)
    bulk = jobs.create_meetings(
        [{"user_id": "a@example.com", "meeting": MEETING}] * 2
        + [{"user_id": "b@example.com", "meeting": MEETING, "priority": "high"}],
        priority="bulk",
    )
    app.send_task(
        "meetings.delete", kwargs={"meeting_id": 85746065432, "priority": "bulk"}, retry=False
    )

    assert [job.priority for job in jobs.jobs_for([high, normal, *bulk])] == [
        "high",
        "normal",
        "bulk",
        "bulk",
        "high",
    ]
    assert _queued(broker_url) == {"meetings.high": 2, "meetings.normal": 1, "meetings.bulk": 3}


@both_brokers
def test_worker__dedicated_to_high__runs_high_jobs_leaves_bulk_queued(
    start_worker: Callable[..., WorkerProcess], broker_url: str
) -> None:
    bulk = jobs.create_meeting("host@example.com", MEETING, priority="bulk")
    high = jobs.create_meeting("host@example.com", MEETING, priority="high")
    start_worker(concurrency=1, name="high", queues="meetings.high")

    job = jobs.wait_for_job(high, timeout=30)

    assert job.status == "succeeded" and job.priority == "high"
    assert jobs.get_job(bulk).status == "queued"  # type: ignore[union-attr]
    assert _queued(broker_url)["meetings.bulk"] == 1


@pytest.mark.usefixtures("env")
def test_retry_job__bulk_job__sent_again_to_the_bulk_queue(broker_url: str) -> None:
    job_id = jobs.create_meeting("host@example.com", MEETING, priority="bulk")
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(update(JobRow).where(JobRow.id == job_id).values(status="failed"))

    jobs.retry_job(job_id)

    assert _queued(broker_url) == {"meetings.high": 0, "meetings.normal": 0, "meetings.bulk": 2}
