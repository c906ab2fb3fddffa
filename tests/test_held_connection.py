"""The ledger's hot path on one held connection (worker.held_connection), on real PostgreSQL."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import event

from worker import celery_app, db, jobs, ledger, models
from worker.config import get_settings
from worker.outcomes import Succeeded

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
