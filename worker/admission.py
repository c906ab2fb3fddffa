"""How a job enters the ledger, and how a failed one goes back in: the producers' writes.

:func:`insert` writes a new job under its idempotency key, or returns the job that key
already names when it was made for the same request (a digest of kind, host and body);
another request under the same key is an :class:`~worker.errors.IdempotencyConflict`.
:func:`requeue_failed` puts a failed job back to queued for :func:`worker.jobs.retry_job`, and
:func:`cancel` ends a job that never reached Zoom as ``cancelled``. Idempotency keys are
written to their own table (``idempotency_keys``) with the job, and read there first, so a key
still names its job after :mod:`worker.retention` pruned the job's row.
Leases are set on the database's clock, like every other lease (see :mod:`worker.ledger`).
Apart from these, :mod:`worker.ledger` writes every row of ``jobs``. The one column of
``meetings`` written here is ``update_seq``, the order of a meeting's update jobs
(:func:`_take_update_turns`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from worker import db, errors, job_requests, models, outbox
from worker.config import Settings
from worker.ledger import CREATE, DELETE, UPDATE
from worker.models import DEFAULT_CREDENTIAL, IdempotencyKey
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow

log = logging.getLogger("worker.ledger")


def insert(row: JobRow, settings: Settings) -> tuple[uuid.UUID, bool]:
    """Insert the job; with an idempotency key already used, return that job instead.

    The key's job must have been made for the same request (``request_digest``, kind):
    otherwise IdempotencyConflict names the key and that job. The key is honoured for
    ``IDEMPOTENCY_KEY_DAYS`` even after its job was pruned (then its id is returned, though
    :func:`worker.jobs.get_job` no longer finds it)."""
    with db.sessions(settings)() as session, session.begin():
        [(job_id, created)] = insert_rows(session, [row], settings)
    if created:
        log.info("job.recorded job_id=%s kind=%s", job_id, row.kind)
    return job_id, created


def insert_many(rows: Sequence[JobRow], settings: Settings) -> list[tuple[uuid.UUID, bool]]:
    """:func:`insert` for several jobs in one transaction: all are recorded, or none (an
    IdempotencyConflict for any of them stores nothing)."""
    with db.sessions(settings)() as session, session.begin():
        admitted = insert_rows(session, rows, settings)
    if len(admitted) == 1 and admitted[0][1]:
        log.info("job.recorded job_id=%s kind=%s", admitted[0][0], rows[0].kind)
    else:
        log.info("job.recorded_many count=%d", sum(created for _, created in admitted))
    return admitted


def insert_rows(
    session: Session | Connection, rows: Sequence[JobRow], settings: Settings
) -> list[tuple[uuid.UUID, bool]]:
    """Write the jobs in the session's transaction, a few statements for all of them: the
    keys first (``idempotency_keys``, so a key named twice, here or before, resolves to its
    first job), then the new jobs. Returns (job id, newly recorded) per row, in order."""
    now = session.scalar(select(func.now()))
    assert now is not None
    lease = timedelta(seconds=settings.JOB_LEASE_SECONDS)
    for row in rows:
        row.account = row.account or DEFAULT_CREDENTIAL
    # An unknown or disabled credential is refused before anything is written.
    job_requests.check_accounts(
        session, {row.account for row in rows if row.status != models.FAILED}
    )
    # A rejected message's failed row waits for nothing and holds up nothing.
    _take_update_turns(
        session, [row for row in rows if row.kind == UPDATE and row.status != models.FAILED]
    )
    # Keys are per credential: (account, key) names one job.
    first: dict[tuple[str, str], JobRow] = {}
    for row in rows:
        if row.idempotency_key is not None:
            first.setdefault((row.account, row.idempotency_key), row)
    taken: set[tuple[str, str]] = set()
    if first:
        claimed = session.execute(
            pg_insert(IdempotencyKey)
            .values(
                [
                    {
                        "account": account,
                        "key": key,
                        "kind": row.kind,
                        "request_digest": row.request_digest,
                        "job_id": row.id,
                        "created_at": now,
                    }
                    for (account, key), row in first.items()
                ]
            )
            .on_conflict_do_nothing(index_elements=[IdempotencyKey.account, IdempotencyKey.key])
            .returning(IdempotencyKey.account, IdempotencyKey.key)
        )
        taken = set(first) - {(account, key) for account, key in claimed}
    known: dict[tuple[str, str], IdempotencyKey] = {}
    if taken:
        known = {
            (found.account, found.key): found
            for found in session.scalars(
                select(IdempotencyKey).where(
                    tuple_(IdempotencyKey.account, IdempotencyKey.key).in_(taken)
                )
            )
        }
    admitted: list[tuple[uuid.UUID, bool]] = []
    new: list[dict[str, Any]] = []
    for row in rows:
        scoped = None if row.idempotency_key is None else (row.account, row.idempotency_key)
        if scoped is None or (scoped not in taken and first[scoped] is row):
            new.append(_values(row, now + lease))
            admitted.append((row.id, True))
            continue
        if scoped in taken:
            owner, kind = known[scoped].job_id, known[scoped].kind
            digest = known[scoped].request_digest
        else:  # named twice in this batch
            owner, kind, digest = first[scoped].id, first[scoped].kind, first[scoped].request_digest
        _check_same_request(scoped[1], owner, kind, digest, row)
        admitted.append((owner, False))
    if new:
        session.execute(pg_insert(JobRow), new)
    return admitted


def _take_update_turns(session: Session | Connection, rows: Sequence[JobRow]) -> None:
    """Give each update job its host and its place among its meeting's updates (see
    :mod:`worker.updates`): the meetings' rows are locked, so ``seq`` follows the order the
    producers' transactions commit in. A meeting this service did not create, or that is
    gone, is refused (InvalidMeeting, field ``meeting_id``). A row that turns out to reuse an
    idempotency key leaves a gap in the sequence, which orders nothing differently."""
    if not rows:
        return
    found = session.execute(
        select(
            MeetingRow.meeting_id,
            MeetingRow.user_id,
            MeetingRow.state,
            MeetingRow.update_seq,
            MeetingRow.account,
        )
        .where(MeetingRow.meeting_id.in_({row.meeting_id for row in rows}))
        .order_by(MeetingRow.meeting_id)
        .with_for_update()
    ).all()
    meetings = {meeting.meeting_id: meeting for meeting in found}
    last_seq: dict[int, int] = {}
    for row in rows:
        assert row.meeting_id is not None
        meeting = meetings.get(row.meeting_id)
        if meeting is None:
            raise errors.InvalidMeeting(
                "meeting_id",
                f"meeting {row.meeting_id} was not created by zoom-worker, which only updates "
                "meetings it created",
            )
        if meeting.state == models.DELETED:
            raise errors.InvalidMeeting(
                "meeting_id", f"meeting {row.meeting_id} is gone from Zoom (deleted)"
            )
        job_requests.check_same_account(row.meeting_id, meeting.account, row.account)
        row.user_id = meeting.user_id
        row.seq = last_seq[row.meeting_id] = last_seq.get(row.meeting_id, meeting.update_seq) + 1
    for meeting_id, seq in last_seq.items():
        session.execute(
            update(MeetingRow).where(MeetingRow.meeting_id == meeting_id).values(update_seq=seq)
        )


def _values(row: JobRow, lease_expires_at: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        column.key: getattr(row, column.key)
        for column in JobRow.__table__.columns
        if getattr(row, column.key, None) is not None
    }
    values.setdefault("status", models.QUEUED)
    if values["status"] == models.QUEUED:
        values["lease_expires_at"] = lease_expires_at
    return values


def _check_same_request(
    key: str, job_id: uuid.UUID, kind: str, digest: str | None, row: JobRow
) -> None:
    if kind != row.kind:
        raise errors.IdempotencyConflict(key, job_id, f"was used for a {kind} job")
    # A job recorded before digests were kept (NULL) is matched on its kind alone.
    if digest not in (None, row.request_digest):
        raise errors.IdempotencyConflict(
            key, job_id, f"was used for a {kind} job with another request"
        )


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
    with db.sessions(settings)() as session, session.begin():
        return requeue_failed_in(session, job_id, check, settings)


def requeue_failed_in(
    session: Session,
    job_id: uuid.UUID,
    check: Callable[[JobRow | None, uuid.UUID | None], None],
    settings: Settings,
) -> JobRow:
    """:func:`requeue_failed` in the session's transaction."""
    lease = timedelta(seconds=settings.JOB_LEASE_SECONDS)
    row = session.get(JobRow, job_id, with_for_update=True)
    named_by = session.scalar(
        select(JobRow.id).where(JobRow.after_job_id == job_id, JobRow.kind == DELETE).limit(1)
    )
    check(row, named_by)
    assert row is not None
    if row.kind == UPDATE:
        # Retried now, it goes after every update of its meeting enqueued so far.
        meeting = session.get(MeetingRow, row.meeting_id, with_for_update=True)
        if meeting is None or meeting.state == models.DELETED:
            raise errors.InvalidMeeting("job_id", f"meeting {row.meeting_id} is gone")
        meeting.update_seq = row.seq = meeting.update_seq + 1
    row.status = models.QUEUED
    row.attempts = row.deferrals = row.deliveries = 0
    row.claim_token = row.held_for = row.next_attempt_at = row.finished_at = None
    row.error = row.first_failed_at = None
    row.gave_up = False
    now = session.scalar(select(func.now()))
    assert now is not None
    row.lease_expires_at = now + lease
    row.updated_at = now
    session.flush()
    return row


def cancel(job_id: uuid.UUID, settings: Settings) -> JobRow:
    """Mark a queued or waiting job that never sent anything to Zoom ``cancelled``.

    The row is locked meanwhile, so no worker claims it halfway; a worker that later gets
    its message claims nothing (:meth:`worker.ledger.Ledger.claim` takes no final job). A
    job already cancelled is returned as it is. Anything else raises InvalidMeeting (field
    ``job_id``) with the reason and, for a create, the way out.
    """
    with db.sessions(settings)() as session, session.begin():
        return cancel_in(session, job_id)


def cancel_in(session: Session, job_id: uuid.UUID) -> JobRow:
    """:func:`cancel` in the session's transaction (with the notification to ``on_done``)."""
    row = session.get(JobRow, job_id, with_for_update=True)
    if row is None:
        raise errors.InvalidMeeting("job_id", "no such job")
    if row.status == models.CANCELLED:
        return row
    refusal = _why_not_cancellable(row)
    if refusal is not None:
        raise errors.InvalidMeeting("job_id", refusal)
    now = session.scalar(select(func.now()))
    assert now is not None
    row.status = models.CANCELLED
    row.error = "cancelled before anything was sent to Zoom"
    row.finished_at = row.updated_at = now
    row.lease_expires_at = row.next_attempt_at = row.held_for = None
    session.flush()
    outbox.job_finished(session, row.id)
    log.info("job.cancelled job_id=%s kind=%s", row.id, row.kind)
    return row


def _why_not_cancellable(row: JobRow) -> str | None:
    way_out = (
        f"; to undo it, delete its meeting with delete_meeting(create_job_id='{row.id}')"
        if row.kind == CREATE
        else ""
    )
    if row.status == models.SUCCEEDED:
        return f"job {row.id} has already succeeded{way_out}"
    if row.status == models.FAILED:
        return f"job {row.id} has already failed"
    # A create's maybe_sent says whether a call may have made a meeting; a delete that was
    # attempted may have deleted it.
    untouched = not row.maybe_sent and (row.kind == CREATE or row.attempts == 0)
    if row.status in (models.QUEUED, models.WAITING) and row.claim_token is None and untouched:
        return None
    if row.status == models.RUNNING:
        reason = "is running"
    elif row.maybe_sent:
        reason = "may already have reached Zoom"
    else:
        reason = f"is {row.status} after an attempt that may have reached Zoom"
    return f"job {row.id} {reason}, so it cannot be cancelled{way_out}"
