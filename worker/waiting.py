"""Waiting for a job to finish, woken by PostgreSQL's LISTEN/NOTIFY rather than by polling.

Protocol
--------
A trigger on ``jobs`` (migrations 0007 and 0013) sends ``pg_notify`` on :data:`CHANNEL` with
the job's id each time an *awaited* job reaches a final status (succeeded, failed,
cancelled); PostgreSQL delivers it when that transaction commits. Only awaited jobs: every
``NOTIFY`` wakes every listening backend of the database in a transaction of its own (the
outbox relay listens all the time), which would cost the fleet a transaction per job. A waiter:

1. opens its own connection in autocommit mode and runs ``LISTEN`` first,
2. then marks the job ``awaited`` and reads its status in the same statement
   (:data:`STATUS`). The mark and the outcome are writes to the same row, so they are
   serialized: an outcome committed before the mark is returned by it (an outcome in flight
   is waited for by the row lock), and one committed after it sees the mark and notifies:
   none falls in between,
3. sleeps in ``notifies()`` until a notification names its job or the time is up, and reads
   the status again (a notification only wakes it; the row is the truth).

Notifications for other jobs wake the waiter for nothing but a comparison of ids.
"""

from __future__ import annotations

import time
import uuid

import psycopg
from sqlalchemy.engine import make_url

from worker import db, errors, models
from worker.config import Settings

CHANNEL = "zoom_worker_job_finished"
# Step 2: mark the job awaited and read its status, one statement (see the protocol).
STATUS = "UPDATE jobs SET awaited = true WHERE id = %s RETURNING status"


def wait_until_final(job_id: uuid.UUID, timeout_s: float, settings: Settings) -> str:
    """Block until the job has a final status and return it; TimeoutError after ``timeout_s``
    seconds; InvalidMeeting (field ``job_id``) when there is no such job."""
    deadline = time.monotonic() + timeout_s
    try:
        with psycopg.connect(
            conninfo(settings), autocommit=True, **db.connect_args(settings)
        ) as connection:
            return _wait(connection, job_id, deadline, timeout_s)
    except psycopg.OperationalError as exc:
        raise errors.InfrastructureError(f"the database failed: {db.first_line(exc)}") from exc


def _wait(
    connection: psycopg.Connection[tuple[object, ...]],
    job_id: uuid.UUID,
    deadline: float,
    timeout_s: float,
) -> str:
    wanted = str(job_id)
    connection.execute(f"LISTEN {CHANNEL}")
    while True:
        found = connection.execute(STATUS, (job_id,)).fetchone()
        final, remaining = settled(found, job_id, deadline, timeout_s)
        if final is not None:
            return final
        for note in connection.notifies(timeout=remaining):
            if note.payload == wanted:
                break


def settled(
    found: tuple[object, ...] | None, job_id: uuid.UUID, deadline: float, timeout_s: float
) -> tuple[str | None, float]:
    """Step 3 of the protocol, for the sync and the asyncio waiter (:mod:`worker.aio`): the
    final status read, or None and the seconds left to wait. Raises InvalidMeeting when there
    is no such job, TimeoutError when the time is up."""
    if found is None:
        raise errors.InvalidMeeting("job_id", f"no job {job_id}")
    if found[0] in models.FINAL_STATUSES:
        return str(found[0]), 0.0
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"job {job_id} is still {found[0]} after {timeout_s:g}s")
    return None, remaining


def conninfo(settings: Settings) -> str:
    """libpq's form of ``DATABASE_URL`` (SQLAlchemy's names the driver in the scheme)."""
    url = make_url(settings.DATABASE_URL).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)
