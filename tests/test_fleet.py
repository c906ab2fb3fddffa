"""End to end through real `celery worker` processes, the ledger and the simulator."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import WorkerProcess, both_brokers, wait_for
from sqlalchemy import select, update

from worker import db, jobs
from worker.celery_app import app
from worker.config import get_settings
from worker.models import FINAL_STATUSES, Meeting, TokenRequest
from worker.simulator import SimulatorClient

pytestmark = [pytest.mark.fleet, pytest.mark.usefixtures("env")]

MARKER = re.compile(r"\[zw:[0-9a-f]{16}\]")


def _body(n: int) -> dict[str, Any]:
    return {
        "topic": f"Fleet meeting {n}",
        "type": 2,
        "start_time": "2026-12-01T10:00:00Z",
        "duration": 30,
        "agenda": f"Agenda {n}",
    }


def _all_final(ids: list[Any], timeout: float = 60) -> list[jobs.Job]:
    def final() -> list[jobs.Job] | None:
        found = jobs.jobs_for(ids)
        done = len(found) == len(ids) and all(j.status in FINAL_STATUSES for j in found)
        return found if done else None

    result: list[jobs.Job] = wait_for(final, timeout=timeout, interval=0.1)
    return result


def _duplicates(sim_client: SimulatorClient) -> int:
    markers = Counter(
        m.group(0)
        for meeting in sim_client.meetings()
        if (m := MARKER.search(meeting.get("agenda") or ""))
    )
    return sum(count - 1 for count in markers.values())


@both_brokers
def test_fleet__create_then_delete__end_to_end_one_token(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    workers = [start_worker(concurrency=4), start_worker(concurrency=4)]
    created = [jobs.create_meeting(f"host{n % 3}@example.com", _body(n)) for n in range(40)]

    done = _all_final(created)

    assert {j.status for j in done} == {"succeeded"}
    assert all(j.meeting_id and j.join_url and j.attempts == 1 for j in done)
    stats = sim_client.stats()
    assert stats["meetings_created"] == 40 and _duplicates(sim_client) == 0

    deleted = [jobs.delete_meeting(j.meeting_id) for j in done[:20] if j.meeting_id]
    assert {j.status for j in _all_final(deleted)} == {"succeeded"}

    stats = sim_client.stats()
    assert stats["live_meetings"] == 20 and stats["meetings_deleted"] == 20
    assert stats["tokens_issued"] == 1, "8 processes on 2 workers share one token"
    with db.sessions(get_settings())() as session:
        assert len(session.scalars(select(TokenRequest)).all()) == 1
    logs = "".join(w.log() for w in workers)
    assert "sim-secret" not in logs and "zak=" not in logs and "Bearer" not in logs


@both_brokers
def test_fleet__sent_by_name__recorded_when_received(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    start_worker(concurrency=2)
    kwargs = {"user_id": "host@example.com", "meeting": _body(1), "idempotency_key": "by-name-1"}
    app.send_task("meetings.create", kwargs=kwargs)
    app.send_task("meetings.create", kwargs=kwargs)  # the same key twice: one job

    def job() -> jobs.Job | None:
        found = [j for j in jobs.list_jobs() if j.idempotency_key == "by-name-1"]
        return found[0] if found and found[0].status == "succeeded" else None

    assert wait_for(job, timeout=60).meeting_id
    assert sim_client.stats()["meetings_created"] == 1
    assert len(jobs.list_jobs()) == 1


def test_fleet__sent_by_name_invalid__failed_job_names_field(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    start_worker(concurrency=1)
    app.send_task(
        "meetings.create", kwargs={"user_id": "h@example.com", "meeting": {"duration": 0}}
    )

    failed = wait_for(lambda: [j for j in jobs.list_jobs() if j.status == "failed"], timeout=60)

    assert "duration" in (failed[0].error or "")
    assert sim_client.stats()["api_calls"] == 0


def test_fleet__client_error__fails_at_once_with_zoom_code(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    sim_client.configure(missing_users=["ghost@example.com"])
    start_worker(concurrency=1)

    [job] = _all_final([jobs.create_meeting("ghost@example.com", _body(1))])

    assert job.status == "failed" and job.attempts == 1
    assert job.error and "1001" in job.error and "User does not exist" in job.error


@both_brokers
def test_fleet__server_errors__retried_without_duplicates(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    sim_client.configure(error_rate=0.2, reply_lost_rate=0.1, seed=7)
    # About 4 in 10 attempts meet a fault here: enough attempts that none gives up by chance.
    start_worker(concurrency=4, JOB_MAX_ATTEMPTS="15")

    done = _all_final([jobs.create_meeting("host@example.com", _body(n)) for n in range(20)])

    assert {j.status for j in done} == {"succeeded"}
    assert max(j.attempts for j in done) > 1, "some jobs must have been retried"
    stats = sim_client.stats()
    assert stats["api_5xx"] > 0 and stats["replies_lost"] > 0
    assert stats["live_meetings"] == 20 and _duplicates(sim_client) == 0


def test_fleet__delete_of_gone_meeting__succeeds(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    start_worker(concurrency=2)
    [made] = _all_final([jobs.create_meeting("host@example.com", _body(1))])
    assert made.meeting_id is not None

    first = jobs.delete_meeting(made.meeting_id)
    [gone] = _all_final([first])
    second = jobs.delete_meeting(made.meeting_id, idempotency_key="again")
    [again] = _all_final([second])

    assert gone.status == again.status == "succeeded"
    assert again.error == "the meeting was already gone"
    assert sim_client.stats()["meetings_deleted"] == 1


def test_fleet__delete_of_running_create__waits_then_deletes(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    sim_client.configure(latency_s=1.0)
    start_worker(concurrency=2)
    create = jobs.create_meeting("host@example.com", _body(1))
    wait_for(lambda: (job := jobs.get_job(create)) is not None and job.status == "running")

    delete = jobs.delete_meeting(create_job_id=create)
    made, removed = _all_final([create, delete])

    assert made.status == removed.status == "succeeded"
    assert removed.meeting_id == made.meeting_id and removed.deferrals >= 1
    stats = sim_client.stats()
    assert stats["meetings_created"] == 1 and stats["live_meetings"] == 0


def test_fleet__cleanup_task__deletes_stale_meeting_through_celery(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    start_worker(concurrency=2)
    # Zoom is asked before a delete, so the meeting must have ended in Zoom too: it is made
    # with the simulator's clock a day back, and no start_time (a past one means "now").
    body = {k: v for k, v in _body(1).items() if k != "start_time"}
    sim_client.advance_clock(-86400)
    try:
        [made] = _all_final([jobs.create_meeting("host@example.com", body)])
    finally:
        sim_client.advance_clock(86400)
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            update(Meeting)
            .where(Meeting.meeting_id == made.meeting_id)
            .values(scheduled_end=datetime.now(UTC) - timedelta(days=1))
        )

    app.send_task("meetings.cleanup_stale")

    def state() -> str | None:
        with db.sessions(get_settings())() as session:
            meeting = session.get(Meeting, made.meeting_id)
            return meeting.state if meeting is not None else None

    wait_for(lambda: state() == "deleted", timeout=60)
    assert sim_client.stats()["meetings_deleted"] == 1


def test_fleet__missing_scopes__configuration_error_without_token_churn(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    sim_client.configure(missing_scopes=True)
    start_worker(concurrency=2)

    done = _all_final([jobs.create_meeting("host@example.com", _body(n)) for n in range(3)])

    assert {j.status for j in done} == {"failed"}
    assert all(
        j.error and j.error.startswith("configuration error") and "4711" in j.error for j in done
    )
    assert sim_client.stats()["tokens_issued"] == 1, "a new token cannot add scopes"
