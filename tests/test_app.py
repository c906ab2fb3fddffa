"""What application code uses beyond one call per job: bulk, cancel, wait_for_job, retention."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import redis
from click.testing import CliRunner
from conftest import JOB_QUEUE, WorkerProcess, wait_for
from sqlalchemy import func, select, text, update

from worker import celery_app, db, errors, jobs, ledger, models, retention, tasks, waiting
from worker.cli import cli
from worker.config import get_settings
from worker.models import IdempotencyKey, JobStatusCount, TokenRequest
from worker.models import Job as JobRow
from worker.outcomes import Failed, Succeeded
from worker.simulator import SimulatorClient

pytestmark = pytest.mark.usefixtures("env")

BODY = {"topic": "Standup", "type": 2, "start_time": "2026-12-01T10:00:00Z", "duration": 30}


def _body(n: int) -> dict[str, Any]:
    return {**BODY, "topic": f"Standup {n}"}


def _queued_job_ids(broker: redis.Redis) -> list[str]:
    """The job ids of the task messages waiting on the default queue, oldest first."""
    ids = []
    for raw in reversed(broker.lrange(JOB_QUEUE, 0, -1)):
        _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(kwargs["job_id"])
    return ids


def _ledger() -> ledger.Ledger:
    return ledger.Ledger.from_settings(get_settings(), celery_app.send)


def _count(model: Any) -> int:
    with db.sessions(get_settings())() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _made(job_id: uuid.UUID, meeting_id: int = 85746065432) -> None:
    """The job's create succeeded (as a worker would record it)."""
    claim = _ledger().claim(job_id)
    assert claim is not None
    assert _ledger().record(claim, Succeeded(meeting_id, f"https://zoom.us/j/{meeting_id}"))


def _age(days: float, *job_ids: uuid.UUID) -> None:
    """Move the jobs' (and their keys') times ``days`` into the past."""
    with db.sessions(get_settings())() as session, session.begin():
        back = text(f"now() - interval '{days} days'")
        session.execute(update(JobRow).where(JobRow.id.in_(job_ids)).values(created_at=back))
        session.execute(
            update(JobRow)
            .where(JobRow.id.in_(job_ids), JobRow.finished_at.is_not(None))
            .values(finished_at=back)
        )
        session.execute(
            update(IdempotencyKey).where(IdempotencyKey.job_id.in_(job_ids)).values(created_at=back)
        )


# -- bulk ------------------------------------------------------------------------------------


def test_create_meetings__1000_requests__recorded_and_queued_in_order(broker: redis.Redis) -> None:
    requests = [{"user_id": f"host{n}@example.com", "meeting": _body(n)} for n in range(1000)]

    job_ids = jobs.create_meetings(requests)

    assert len(job_ids) == 1000 and len(set(job_ids)) == 1000
    assert _queued_job_ids(broker) == [str(job_id) for job_id in job_ids]
    found = jobs.jobs_for(job_ids)
    assert [job.user_id for job in found] == [f"host{n}@example.com" for n in range(1000)]
    assert {job.status for job in found} == {"queued"}
    assert found[999].topic == "Standup 999"


def test_create_meetings__one_bad_body__refuses_all_naming_its_index(broker: redis.Redis) -> None:
    requests = [{"user_id": "host@example.com", "meeting": _body(n)} for n in range(1000)]
    requests[617] = {"user_id": "host@example.com", "meeting": {**BODY, "topic": "x" * 201}}

    with pytest.raises(errors.InvalidMeeting) as caught:
        jobs.create_meetings(requests)

    assert caught.value.field == "[617].topic"
    assert _count(JobRow) == 0 and broker.llen(JOB_QUEUE) == 0


def test_create_meetings__unknown_field__refused_naming_index_and_field() -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        jobs.create_meetings([{"user_id": "a@example.com", "meting": BODY}])
    assert caught.value.field == "[0].meting"
    assert _count(JobRow) == 0


def test_create_meetings__keys__honoured_as_single_calls_and_conflict_stores_nothing(
    broker: redis.Redis,
) -> None:
    single = jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-1")

    again = jobs.create_meetings(
        [
            {"user_id": "host@example.com", "meeting": BODY, "idempotency_key": "booking-1"},
            {"user_id": "host@example.com", "meeting": _body(2), "idempotency_key": "booking-2"},
            {"user_id": "host@example.com", "meeting": _body(2), "idempotency_key": "booking-2"},
        ]
    )
    assert again[0] == single and again[1] == again[2] != single
    assert _count(JobRow) == 2 and broker.llen(JOB_QUEUE) == 2

    with pytest.raises(errors.IdempotencyConflict):
        jobs.create_meetings(
            [
                {"user_id": "host@example.com", "meeting": _body(3), "idempotency_key": "new"},
                {
                    "user_id": "host@example.com",
                    "meeting": _body(9),
                    "idempotency_key": "booking-1",
                },
            ]
        )
    assert _count(JobRow) == 2 and broker.llen(JOB_QUEUE) == 2, "nothing of the batch is stored"


def test_delete_meetings__by_meeting_and_by_create_job__jobs_in_order(broker: redis.Redis) -> None:
    made = jobs.create_meeting("host@example.com", BODY)
    _made(made, 85746065432)
    pending = jobs.create_meeting("host@example.com", _body(2))

    job_ids = jobs.delete_meetings([{"meeting_id": 85746065432}, {"create_job_id": pending}])

    first, second = jobs.jobs_for(job_ids)
    assert first.kind == second.kind == "delete"
    assert first.meeting_id == 85746065432 and second.meeting_id is None
    assert _queued_job_ids(broker)[-2:] == [str(job_id) for job_id in job_ids]
    with pytest.raises(errors.InvalidMeeting) as caught:
        jobs.delete_meetings([{"meeting_id": 85746065432}, {"meeting_id": 999}])
    assert caught.value.field == "[1].meeting_id"


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_job__queued__cancelled_and_never_claimed() -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)

    cancelled = jobs.cancel_job(job_id)

    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert jobs.cancel_job(job_id).status == "cancelled", "cancelling again changes nothing"
    assert _ledger().claim(job_id) is None
    with pytest.raises(errors.InvalidMeeting):
        jobs.retry_job(job_id)


def test_cancel_job__running_or_finished__refused_with_the_way_out() -> None:
    running = jobs.create_meeting("host@example.com", BODY)
    assert _ledger().claim(running) is not None
    made = jobs.create_meeting("host@example.com", _body(2))
    _made(made)

    with pytest.raises(errors.InvalidMeeting) as refused:
        jobs.cancel_job(running)
    assert "is running" in refused.value.message
    assert f"delete_meeting(create_job_id='{running}')" in refused.value.message
    with pytest.raises(errors.InvalidMeeting) as refused:
        jobs.cancel_job(made)
    assert "already succeeded" in refused.value.message
    assert jobs.get_job(running).status == "running"  # type: ignore[union-attr]


def test_cancel_job__create_that_may_have_reached_zoom__refused() -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)
    claim = _ledger().claim(job_id)
    assert claim is not None
    _ledger().record(claim, Failed("no answer", maybe_sent=True))
    with db.sessions(get_settings())() as session, session.begin():
        # As retry_job leaves it: queued again, still marked.
        session.execute(update(JobRow).where(JobRow.id == job_id).values(status="queued"))

    with pytest.raises(errors.InvalidMeeting) as refused:
        jobs.cancel_job(job_id)

    assert "may already have reached Zoom" in refused.value.message
    assert "delete_meeting(create_job_id=" in refused.value.message


def test_delete_by_create_job__create_cancelled__nothing_to_delete() -> None:
    create = jobs.create_meeting("host@example.com", BODY)
    jobs.cancel_job(create)
    delete = _ledger().claim(jobs.delete_meeting(create_job_id=create))
    assert delete is not None

    assert _ledger().resolve_create(delete) == ("failed", None)


def test_cancel_job__queued_then_a_real_worker_gets_it__no_call_to_zoom(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    cancelled = jobs.create_meeting("host@example.com", BODY)
    jobs.cancel_job(cancelled)
    after = jobs.create_meeting("host@example.com", _body(2))

    worker = start_worker(concurrency=1)

    done = wait_for(lambda: (job := jobs.get_job(after)) and job.status == "succeeded" and job)
    assert done.meeting_id is not None
    assert f"job.not_claimed job_id={cancelled}" in worker.log()
    assert jobs.get_job(cancelled).status == "cancelled"  # type: ignore[union-attr]
    assert sim_client.stats()["meetings_created"] == 1


def test_cancel__cli__prints_the_job_or_the_refusal() -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)
    runner = CliRunner()

    result = runner.invoke(cli, ["cancel", str(job_id)])
    refused = runner.invoke(cli, ["cancel", str(uuid.uuid4())])

    assert result.exit_code == 0 and result.output.strip() == str(job_id)
    assert refused.exit_code == 2 and "job_id: no such job" in refused.output


# -- wait_for_job ----------------------------------------------------------------------------


def test_wait_for_job__outcome_recorded_later__returns_the_finished_job() -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)
    claim = _ledger().claim(job_id)
    assert claim is not None
    waiting_started = threading.Event()

    def finish() -> None:
        waiting_started.wait(10)
        _ledger().record(claim, Succeeded(85746065432, "https://zoom.us/j/85746065432"))

    recorder = threading.Thread(target=finish)
    recorder.start()
    waiting_started.set()
    job = jobs.wait_for_job(job_id, timeout=30)
    recorder.join()

    assert job.status == "succeeded" and job.meeting_id == 85746065432


def test_wait_for_job__already_finished_or_cancelled__returns_at_once() -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)
    jobs.cancel_job(job_id)

    assert jobs.wait_for_job(job_id, timeout=0).status == "cancelled"


def test_wait_for_job__not_finished_in_time__timeout_error() -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)

    with pytest.raises(TimeoutError):
        jobs.wait_for_job(job_id, timeout=0.2)
    with pytest.raises(errors.InvalidMeeting):
        jobs.wait_for_job(uuid.uuid4(), timeout=0.2)


def test_wait_for_job__outcome_nobody_waits_for__notifies_no_listener() -> None:
    # Every NOTIFY costs each listening backend (the outbox relay) a transaction: only an
    # awaited job's outcome is announced. Notifications arrive in commit order, so the
    # unawaited job's would come before the awaited one's.
    unawaited, awaited = (jobs.create_meeting("host@example.com", _body(n)) for n in range(2))
    with psycopg.connect(waiting.conninfo(get_settings()), autocommit=True) as listener:
        listener.execute(f"LISTEN {waiting.CHANNEL}")
        _made(unawaited, 85746065431)
        waiter = threading.Thread(target=jobs.wait_for_job, args=(awaited,), kwargs={"timeout": 30})
        waiter.start()
        wait_for(lambda: _awaited(awaited), timeout=10)
        _made(awaited, 85746065432)
        heard = [note.payload for note in listener.notifies(timeout=10, stop_after=1)]
        waiter.join(10)

    assert heard == [str(awaited)]
    assert not waiter.is_alive()


def _awaited(job_id: uuid.UUID) -> bool:
    with db.sessions(get_settings())() as session:
        return bool(session.scalar(select(JobRow.awaited).where(JobRow.id == job_id)))


# -- metrics: cancelled is counted like the other final statuses -----------------------------


def test_job_status_counts__cancel_and_prune__cancelled_counted() -> None:
    job_ids = [jobs.create_meeting("host@example.com", _body(n)) for n in range(3)]
    for job_id in job_ids:
        jobs.cancel_job(job_id)

    def counted() -> int:
        with db.sessions(get_settings())() as session:
            return int(
                session.scalar(
                    select(func.coalesce(func.sum(JobStatusCount.jobs), 0)).where(
                        JobStatusCount.status == "cancelled"
                    )
                )
                or 0
            )

    assert counted() == 3
    _age(40, *job_ids)
    retention.prune(get_settings())
    assert counted() == 0


# -- retention -------------------------------------------------------------------------------


def test_prune__old_rows__finished_pruned_unfinished_and_live_keys_kept() -> None:
    old_done = jobs.create_meeting("host@example.com", _body(1), idempotency_key="old-done")
    _made(old_done)
    old_queued = jobs.create_meeting("host@example.com", _body(2), idempotency_key="old-queued")
    recent_done = jobs.create_meeting("host@example.com", _body(3), idempotency_key="recent")
    _made(recent_done, 85746065433)
    _age(31, old_done, old_queued)
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            text("INSERT INTO credentials (id, account_id, client_id) VALUES (1, 'a', 'c')")
        )
        for days in (40, 1):
            session.add(
                TokenRequest(credential_id=1, hostname="h", pid=1, reason="expired",
                             outcome="ok", duration_ms=5,
                             requested_at=func.now() - text(f"interval '{days} days'"))
            )  # fmt: skip

    dry = retention.prune(get_settings(), dry_run=True)
    assert (dry.jobs, dry.token_requests, dry.idempotency_keys) == (1, 1, 0)
    assert _count(JobRow) == 3, "a dry run deletes nothing"
    report = retention.prune(get_settings(), batch=1)

    assert (report.jobs, report.token_requests, report.idempotency_keys) == (1, 1, 0)
    assert jobs.get_job(old_done) is None
    assert jobs.get_job(old_queued) is not None and jobs.get_job(recent_done) is not None
    assert _count(TokenRequest) == 1
    assert _count(IdempotencyKey) == 3, "every key is live for IDEMPOTENCY_KEY_DAYS"
    with db.sessions(get_settings())() as session:
        assert session.get(models.Meeting, 85746065432) is not None, "meetings are kept"


def test_prune__key_of_a_pruned_job__still_refuses_a_second_meeting(broker: redis.Redis) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-42")
    _made(job_id)
    _age(31, job_id)
    retention.prune(get_settings())
    assert jobs.get_job(job_id) is None
    queued = broker.llen(JOB_QUEUE)

    assert jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-42") == job_id
    assert jobs.create_meetings(
        [{"user_id": "host@example.com", "meeting": BODY, "idempotency_key": "booking-42"}]
    ) == [job_id]
    with pytest.raises(errors.IdempotencyConflict):
        jobs.create_meeting("host@example.com", _body(2), idempotency_key="booking-42")
    assert _count(JobRow) == 0 and broker.llen(JOB_QUEUE) == queued

    _age(91, job_id)
    assert retention.prune(get_settings()).idempotency_keys == 1
    assert jobs.create_meeting("host@example.com", BODY, idempotency_key="booking-42") != job_id


def test_prune__unfinished_delete_names_an_old_create__create_kept() -> None:
    create = jobs.create_meeting("host@example.com", BODY)
    jobs.cancel_job(create)
    delete = jobs.delete_meeting(create_job_id=create)
    _age(31, create)

    assert retention.prune(get_settings()).jobs == 0
    assert jobs.get_job(create) is not None and jobs.get_job(delete) is not None


def test_prune__cli_dry_run_then_beat_task__shows_counts_then_deletes() -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)
    jobs.cancel_job(job_id)
    _age(31, job_id)

    result = CliRunner().invoke(cli, ["prune", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "would delete 1 jobs, 0 token requests, 0 idempotency keys, 0 webhook events"
    )
    assert jobs.get_job(job_id) is not None
    entry = celery_app.celery_config(get_settings())["beat_schedule"]["prune-old-rows"]
    assert entry["task"] == "retention.prune" and entry["schedule"].total_seconds() == 3600
    assert tasks.prune() == {
        "jobs": 1,
        "token_requests": 0,
        "idempotency_keys": 0,
        "webhook_events": 0,
        "dry_run": False,
    }
    assert jobs.get_job(job_id) is None


def test_prune__webhook_events__applied_old_ones_go_pending_ones_stay() -> None:
    with db.sessions(get_settings())() as session, session.begin():
        for n, (days, applied) in enumerate([(40, True), (40, False), (1, True)]):
            session.execute(
                text(
                    "INSERT INTO webhook_events (digest, event, event_ts, payload, received_at, "
                    "applied_at) VALUES (:digest, 'meeting.ended', 1, '{}', "
                    f"now() - interval '{days} days', " + ("now()" if applied else "NULL") + ")"
                ),
                {"digest": f"{n:064d}"},
            )

    report = retention.prune(get_settings())

    assert report.webhook_events == 1
    with db.sessions(get_settings())() as session:
        left = session.execute(
            text("SELECT applied_at IS NULL, received_at > now() - interval '2 days' "
                 "FROM webhook_events ORDER BY id")
        ).all()  # fmt: skip
    assert [tuple(row) for row in left] == [(True, False), (False, True)]
