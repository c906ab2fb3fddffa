"""The ledger's hot path on one held connection (worker.held_connection), on real PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import event, select, update

from worker import celery_app, db, jobs, ledger, models
from worker.config import get_settings
from worker.outcomes import Failed, Hold, HoldReason, Outcome, Retry, Succeeded

pytestmark = pytest.mark.usefixtures("env")

BODY = {"topic": "Standup", "type": 2, "start_time": "2026-12-01T10:00:00Z", "duration": 30}


@pytest.fixture
def work() -> ledger.Ledger:
    return ledger.Ledger.from_settings(get_settings(), celery_app.send)


def _create(work: ledger.Ledger, meeting_id: int) -> uuid.UUID:
    job_id = jobs.create_meeting("host@example.com", BODY)
    claim = work.claim(job_id)
    assert claim is not None
    work.fence(claim)
    assert work.record(claim, Succeeded(meeting_id, f"https://zoom.us/j/{meeting_id}"))
    return job_id


class _Sent:
    """What the engine's events saw: each statement, with whether it ran in autocommit (no
    BEGIN or COMMIT of its own sent), and the transactions SQLAlchemy began."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, bool]] = []
        self.transactions = 0

    def statement(
        self, _conn: object, cursor: psycopg.Cursor[object], sql: str, *_: object
    ) -> None:
        self.statements.append((sql.split(None, 1)[0], cursor.connection.autocommit))

    def begin(self, _conn: object) -> None:
        self.transactions += 1


@contextlib.contextmanager
def _sent() -> Iterator[_Sent]:
    sent = _Sent()
    engine = db.get_engine(get_settings())
    event.listen(engine, "before_cursor_execute", sent.statement)
    event.listen(engine, "begin", sent.begin)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", sent.statement)
        event.remove(engine, "begin", sent.begin)


def _recorded(work: ledger.Ledger, job_id: uuid.UUID, outcome: Outcome) -> _Sent:
    """Claim the job, then record ``outcome``: what recording it sent."""
    claim = work.claim(job_id)
    assert claim is not None
    with _sent() as sent:
        assert work.record(claim, outcome)
    return sent


def _status(job_id: uuid.UUID) -> str:
    with db.sessions(get_settings())() as session:
        row = session.get(models.Job, job_id)
        assert row is not None
        return row.status


def _terminate_backends() -> int:
    """Kill every other backend of the test's database (PostgreSQL restarting, as seen by
    the connections a process holds)."""
    engine = db.get_engine(get_settings())
    name = engine.url.database
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_held__creates__claim_fence_outcome_check_out_one_connection(work: ledger.Ledger) -> None:
    checkouts: list[object] = []

    def checked_out(*_: object) -> None:
        checkouts.append(None)

    engine = db.get_engine(get_settings())
    event.listen(engine, "checkout", checked_out)
    try:
        done = [_create(work, 85746065400 + n) for n in range(3)]
    finally:
        event.remove(engine, "checkout", checked_out)

    # The producers' create_meeting checks out its own connection (a session) each time.
    assert len(checkouts) == 3 + 1, "three creates' claims, fences and outcomes: one checkout"
    assert all(_status(job_id) == models.SUCCEEDED for job_id in done)


def test_held__backend_killed__one_statement_fails_then_a_new_connection(
    work: ledger.Ledger,
) -> None:
    _create(work, 85746065410)
    job_id = jobs.create_meeting("host@example.com", BODY)
    assert _terminate_backends() >= 1

    with pytest.raises(sqlalchemy.exc.OperationalError):
        work.claim(job_id)
    claim = work.claim(job_id)

    assert claim is not None, "the next claim runs on a fresh connection"
    work.fence(claim)
    assert work.record(claim, Succeeded(85746065411, "https://zoom.us/j/85746065411"))
    assert _status(job_id) == models.SUCCEEDED


def test_held__idle_connection_killed__pinged_and_replaced(
    work: ledger.Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _create(work, 85746065420)
    job_id = jobs.create_meeting("host@example.com", BODY)
    assert _terminate_backends() >= 1
    # Every use counts as idle long enough to be pinged first, as the pool's checkout does.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)

    claim = work.claim(job_id)

    assert claim is not None, "the dead connection was found by the ping, not by the claim"
    work.fence(claim)


def test_held__another_thread_meanwhile__checks_out_its_own(work: ledger.Ledger) -> None:
    first = jobs.create_meeting("host@example.com", BODY)
    second = jobs.create_meeting("host@example.com", BODY)
    claims: dict[str, ledger.Claim | None] = {}

    def other_thread() -> None:
        claims["second"] = work.claim(second)

    # This thread holds the held connection in an outcome transaction while the other claims.
    with work._held.begin():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=30)

    assert not thread.is_alive() and claims["second"] is not None
    assert work.claim(first) is not None


def test_held__idle_ping__keeps_the_prepared_statements(
    work: ledger.Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # psycopg prepares a statement on its fifth run on a connection; a ping that rolled back
    # made it send DEALLOCATE ALL (a second transaction), so after every idle spell the hot
    # path ran unprepared again.
    for n in range(6):
        _create(work, 85746065430 + n)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every use is pinged first

    _create(work, 85746065440)

    with work._held.connection() as (conn, held):
        driver = conn.connection.driver_connection
        assert held and isinstance(driver, psycopg.Connection)
        row = driver.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        driver.commit()
    assert row is not None and row[0] >= 3, "claim, fence and outcome stay prepared"


def test_held__outcomes__each_one_autocommit_statement_no_transaction(
    work: ledger.Ledger,
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=30)

    def create() -> uuid.UUID:
        return jobs.create_meeting("host@example.com", BODY)

    def delete() -> uuid.UUID:
        return jobs.delete_meeting(85746065440)  # after its create: a meeting made here

    outcomes: list[tuple[Callable[[], uuid.UUID], Outcome]] = [
        (create, Succeeded(85746065440, "https://zoom.us/j/85746065440")),
        (delete, Succeeded(85746065440)),
        (create, Failed("refused")),
        (create, Retry(soon, "5xx", transient=True)),
        (create, Hold(soon, HoldReason.RATE_LIMIT, "429")),
        (create, Hold(soon, HoldReason.ZOOM_OUTAGE, "Zoom is failing")),
    ]

    for new_job, outcome in outcomes:
        sent = _recorded(work, new_job(), outcome)

        # One round trip: a transaction would add a BEGIN and a COMMIT to the statement.
        assert len(sent.statements) == 1 and sent.statements[0][1], (outcome, sent.statements)
        assert sent.transactions == 0, outcome
    with db.sessions(get_settings())() as session:
        meeting = session.get(models.Meeting, 85746065440)
        assert meeting is not None and meeting.state == models.DELETED, "the delete marked it"
        assert _status(meeting.job_id) == models.SUCCEEDED


def test_held__outcome_with_on_done__notification_in_the_outcomes_transaction(
    work: ledger.Ledger,
) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY, on_done="app.tasks.done")

    sent = _recorded(work, job_id, Succeeded(85746065450, "https://zoom.us/j/85746065450"))

    assert sent.transactions == 1
    with db.sessions(get_settings())() as session:
        notified = session.scalars(
            select(models.OutboxMessage.task).where(models.OutboxMessage.job_id == job_id)
        ).all()
    assert notified == ["app.tasks.done"]
    assert _status(job_id) == models.SUCCEEDED


def test_held__delete_after_claim_lost__meeting_still_marked_deleted(
    work: ledger.Ledger,
) -> None:
    _create(work, 85746065460)
    claim = work.claim(jobs.delete_meeting(85746065460))
    assert claim is not None
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            update(models.Job).where(models.Job.id == claim.job_id).values(claim_token=None)
        )

    assert work.record(claim, Succeeded(85746065460)) is False

    assert _status(claim.job_id) == models.RUNNING, "nothing recorded for the job"
    with db.sessions(get_settings())() as session:
        meeting = session.get(models.Meeting, 85746065460)
        assert meeting is not None and meeting.state == models.DELETED, "Zoom's is gone"
