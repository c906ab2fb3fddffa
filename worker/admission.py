"""How a job enters the ledger, and how a failed one goes back in: the producers' writes.

:func:`insert` writes a new job under its idempotency key, or returns the job that key
already names when it was made for the same request (a digest of kind, host and body);
another request under the same key is an :class:`~worker.errors.IdempotencyConflict`.
:func:`requeue_failed` puts a failed job back to queued for :func:`worker.jobs.retry_job`.
Leases are set on the database's clock, like every other lease (see :mod:`worker.ledger`).
Apart from these two, :mod:`worker.ledger` writes every row of ``jobs``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from worker import db, errors, models
from worker.config import Settings
from worker.ledger import DELETE
from worker.models import Job as JobRow

log = logging.getLogger("worker.ledger")


def insert(row: JobRow, settings: Settings) -> tuple[uuid.UUID, bool]:
    """Insert the job; with an idempotency key already used, return that job instead.

    The key's job must have been made for the same request (``request_digest``, kind):
    otherwise IdempotencyConflict names the key and that job."""
    lease = timedelta(seconds=settings.JOB_LEASE_SECONDS)
    values: dict[str, Any] = {
        column.key: getattr(row, column.key)
        for column in JobRow.__table__.columns
        if getattr(row, column.key, None) is not None
    }
    values.setdefault("status", models.QUEUED)
    if values["status"] == models.QUEUED:
        values["lease_expires_at"] = func.now() + lease
    statement = (
        pg_insert(JobRow)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[JobRow.idempotency_key])
        .returning(JobRow.id)
    )
    with db.sessions(settings)() as session, session.begin():
        inserted = session.execute(statement).scalar_one_or_none()
        if inserted is not None:
            log.info("job.recorded job_id=%s kind=%s", inserted, row.kind)
            return inserted, True
        existing = session.execute(
            select(JobRow.id, JobRow.kind, JobRow.request_digest).where(
                JobRow.idempotency_key == row.idempotency_key
            )
        ).one()
    key = row.idempotency_key or ""
    if existing.kind != row.kind:
        raise errors.IdempotencyConflict(key, existing.id, f"was used for a {existing.kind} job")
    # A job recorded before digests were kept (NULL) is matched on its kind alone.
    if existing.request_digest not in (None, row.request_digest):
        raise errors.IdempotencyConflict(
            key, existing.id, f"was used for a {existing.kind} job with another request"
        )
    return existing.id, False


def requeue_failed(
    job_id: uuid.UUID,
    check: Callable[[JobRow | None, uuid.UUID | None], None],
    settings: Settings,
) -> JobRow:
    """Put a failed job back to queued under the same key (see :func:`worker.jobs.retry_job`).

    ``check`` sees the locked row (None when there is none) and the delete job that names
    it, if any, and raises to refuse. Attempts, deferrals and deliveries start again from
    zero, the error, the give-up mark and the give-up clock are cleared and the lease is
    fresh; a create's ``maybe_sent`` mark stays, so its worker searches by marker first.
    """
    lease = timedelta(seconds=settings.JOB_LEASE_SECONDS)
    with db.sessions(settings)() as session, session.begin():
        row = session.get(JobRow, job_id, with_for_update=True)
        named_by = session.scalar(
            select(JobRow.id).where(JobRow.after_job_id == job_id, JobRow.kind == DELETE).limit(1)
        )
        check(row, named_by)
        assert row is not None
        row.status = models.QUEUED
        row.attempts = row.deferrals = row.deliveries = 0
        row.claim_token = row.held_for = row.next_attempt_at = row.finished_at = None
        row.error = row.first_failed_at = None
        row.gave_up = False
        now = session.scalar(select(func.now()))
        assert now is not None
        row.lease_expires_at = now + lease
        row.updated_at = now
    return row
