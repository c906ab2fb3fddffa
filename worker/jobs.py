"""The producers' API: create and delete meetings, read jobs.

A job is written to PostgreSQL (:mod:`worker.ledger`) before it is put on the broker, so it is
durable once :func:`create_meeting` or :func:`delete_meeting` returns. Bodies are validated
first (:mod:`worker.meeting_body`): an invalid one raises InvalidMeeting and nothing is stored.
When PostgreSQL is down or unreachable these functions raise InfrastructureError, within
``DATABASE_CONNECT_TIMEOUT``.

Idempotency keys work like a payment API's: each job stores a digest of the request it was
made for (kind, host, body; or the meeting to delete). The same key with the same request
returns the same job, whatever its state; the same key with another request raises
IdempotencyConflict. A failed job keeps its key, and :func:`retry_job` runs it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker import admission, celery_app, db, errors, ledger, marker, meeting_body, models
from worker.config import get_settings
from worker.ledger import CREATE, DELETE
from worker.marker import RESERVED_AGENDA_CHARS
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow

__all__ = [
    "CREATE",
    "DELETE",
    "Job",
    "create_meeting",
    "delete_meeting",
    "get_job",
    "list_jobs",
    "retry_job",
]

log = logging.getLogger(__name__)

# The width of jobs.occurrence_id (Zoom's occurrence ids are 13-digit epoch milliseconds).
OCCURRENCE_ID_MAX = 64


@dataclass(frozen=True)
class Job:
    """A job as application code sees it (a snapshot, not a live ORM object)."""

    id: uuid.UUID
    kind: str
    status: str
    user_id: str | None
    topic: str | None
    meeting_id: int | None
    join_url: str | None
    error: str | None
    attempts: int
    deferrals: int
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    next_attempt_at: datetime | None

    @classmethod
    def from_row(cls, row: JobRow) -> Job:
        return cls(
            id=row.id,
            kind=row.kind,
            status=row.status,
            user_id=row.user_id,
            topic=row.topic,
            meeting_id=row.meeting_id,
            join_url=row.join_url,
            error=row.error,
            attempts=row.attempts,
            deferrals=row.deferrals,
            idempotency_key=row.idempotency_key,
            created_at=row.created_at,
            updated_at=row.updated_at,
            finished_at=row.finished_at,
            next_attempt_at=row.next_attempt_at,
        )


def create_meeting(
    user_id: str, meeting: Mapping[str, Any], idempotency_key: str | None = None
) -> uuid.UUID:
    """Record a create job, then queue it; returns the job id.

    The body is Zoom's create-meeting body as Zoom names it. A body Zoom would reject raises
    InvalidMeeting naming the field, and nothing is stored or queued. The same
    idempotency key with the same host and body returns the same job, so it never makes a
    second meeting; with another host or body it raises IdempotencyConflict.
    """
    row = _new_create(user_id, meeting, idempotency_key)
    with db.unavailable_as_infrastructure():
        return _record_and_dispatch(row)


def delete_meeting(
    meeting_id: int | None = None,
    occurrence_id: str | None = None,
    idempotency_key: str | None = None,
    *,
    create_job_id: uuid.UUID | str | None = None,
) -> uuid.UUID:
    """Record a delete job, then queue it; returns the job id.

    Only a meeting this service created can be deleted (InvalidMeeting otherwise). Deleting a
    meeting that is already gone succeeds. Instead of ``meeting_id``, ``create_job_id`` names
    the create job whose meeting to delete: a create that has not run yet is cancelled, one
    that is running is waited for, so a delete and its create never race into an orphan.
    """
    if (meeting_id is None) == (create_job_id is None):
        raise errors.InvalidMeeting("meeting_id", "give either meeting_id or create_job_id")
    with db.unavailable_as_infrastructure():
        if create_job_id is None:
            row = _new_delete(meeting_id, occurrence_id, idempotency_key)
            with db.sessions(get_settings())() as session, session.begin():
                _check_created_here(session, row.meeting_id)
            return _record_and_dispatch(row)
        with db.sessions(get_settings())() as session:
            create = _create_job(session, create_job_id)
            meeting_id, after = create.meeting_id, create.id
        # The caller's request names the create job, whatever that job has come to since.
        request = {"create_job_id": str(after), "occurrence_id": occurrence_id}
        if meeting_id is None:
            row = _new_delete(None, occurrence_id, idempotency_key, after_job_id=after)
        else:
            row = _new_delete(meeting_id, occurrence_id, idempotency_key)
        row.request_digest = request_digest(DELETE, request)
        return _record_and_dispatch(row)


def get_job(job_id: uuid.UUID | str) -> Job | None:
    """The job's current state, or None when there is no such job."""
    try:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        return None
    with db.unavailable_as_infrastructure(), db.sessions(get_settings())() as session:
        row = session.get(JobRow, key)
        return Job.from_row(row) if row is not None else None


def list_jobs(status: str | None = None, *, limit: int = 50) -> list[Job]:
    """The most recently updated jobs, optionally of one status."""
    query = select(JobRow).order_by(JobRow.updated_at.desc()).limit(limit)
    if status:
        query = query.where(JobRow.status == status)
    with db.unavailable_as_infrastructure(), db.sessions(get_settings())() as session:
        return [Job.from_row(row) for row in session.scalars(query)]


def count_by_status() -> dict[str, int]:
    """How many jobs are in each status."""
    with db.sessions(get_settings())() as session:
        rows = session.execute(select(JobRow.status, func.count()).group_by(JobRow.status))
        return {status: count for status, count in rows.all()}


def retry_job(job_id: uuid.UUID | str) -> Job:
    """Run a failed job again under the same idempotency key; returns the job, queued again.

    The same job row goes back to queued with its attempts reset, and is dispatched. A create
    that may have reached Zoom keeps that mark, so the worker first searches for the meeting
    by its marker instead of creating a second one. Refused with InvalidMeeting (field
    ``job_id``) when there is no such job, it has not failed, it was invalid, or it is a create
    that a delete job names (cancelled, or meant to be deleted); refused with OutcomeUnknown
    for an instant meeting that may exist (Zoom never lists those, so no search can tell).
    """
    try:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        raise errors.InvalidMeeting("job_id", f"{job_id!r} is not a job id") from None
    with db.unavailable_as_infrastructure():
        row = admission.requeue_failed(key, _check_retryable, get_settings())
        ledger.dispatch(
            row.id,
            row.kind,
            user_id=row.user_id,
            topic=row.topic,
            meeting_id=row.meeting_id,
            send=celery_app.send,
        )
    log.info("job.retried job_id=%s kind=%s maybe_sent=%s", row.id, row.kind, row.maybe_sent)
    return Job.from_row(row)


def _check_retryable(row: JobRow | None, named_by_delete: uuid.UUID | None) -> None:
    if row is None:
        raise errors.InvalidMeeting("job_id", "no such job")
    if row.status != models.FAILED:
        raise errors.InvalidMeeting(
            "job_id", f"job {row.id} is {row.status}; only a failed job can be retried"
        )
    if (row.kind == CREATE and row.body is None) or (
        row.kind == DELETE and row.meeting_id is None and row.after_job_id is None
    ):
        raise errors.InvalidMeeting(
            "job_id", f"job {row.id} was invalid ({row.error}); send a corrected job"
        )
    if row.kind == CREATE and named_by_delete is not None:
        raise errors.InvalidMeeting(
            "job_id", f"create job {row.id} is named by delete job {named_by_delete}"
        )
    if row.kind == CREATE and row.maybe_sent and (row.body or {}).get("type") == 1:
        raise errors.OutcomeUnknown(
            f"job {row.id} is an instant meeting whose create may have reached Zoom, and Zoom "
            "never lists instant meetings: check the host's meetings in Zoom, then send a new "
            "job if none was made"
        )


def request_digest(kind: str, request: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request: what an idempotency key promises."""
    canonical = json.dumps(
        {"kind": kind, **request}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_received(
    kind: str, kwargs: Mapping[str, Any], task_id: str, *, unknown: Sequence[str] = ()
) -> uuid.UUID:
    """Record a job sent with ``send_task`` when a worker first receives it.

    The task id stands in for a missing idempotency key, so a redelivered or retried message
    never becomes a second job. A message that can never be recorded as sent (an invalid
    body, an idempotency key reused for another request) is recorded as a failed job with
    the reason, and so is one with ``unknown`` arguments (a typo such as ``meting``).
    Raises InfrastructureError while PostgreSQL cannot record anything: the
    caller must then keep the message (retry it), never acknowledge it as done.
    """
    key = kwargs.get("idempotency_key") or f"celery-task:{task_id}"
    with db.unavailable_as_infrastructure():
        try:
            if unknown:
                raise errors.InvalidMeeting(
                    "kwargs", f"unknown arguments for this task: {', '.join(unknown)}"
                )
            if kind == CREATE:
                row = _new_create(kwargs.get("user_id"), kwargs.get("meeting"), key)
            else:
                row = _new_delete(kwargs.get("meeting_id"), kwargs.get("occurrence_id"), key)
                with db.sessions(get_settings())() as session:
                    _check_created_here(session, row.meeting_id)
            return admission.insert(row, get_settings())[0]
        except (errors.InvalidMeeting, errors.IdempotencyConflict, sa_exc.DataError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) else db.first_line(exc)
            log.warning("job.rejected task_id=%s %s", task_id, reason)
            return _record_rejected(kind, kwargs, task_id, key, reason)


def _record_rejected(
    kind: str, kwargs: Mapping[str, Any], task_id: str, key: str, reason: str
) -> uuid.UUID:
    """A failed job for a message that cannot run, under its key or, when that key names
    another request, under its task id."""
    user = kwargs.get("user_id")
    digest = request_digest(kind, {"rejected": dict(kwargs)})
    for candidate in dict.fromkeys([_key_or_none(key), f"celery-task:{task_id}"]):
        if candidate is None:
            continue
        row = JobRow(
            id=uuid.uuid4(),
            kind=kind,
            status=models.FAILED,
            idempotency_key=candidate,
            request_digest=digest,
            user_id=user if isinstance(user, str) and len(user) <= 256 else None,
            error=f"invalid job: {reason}",
            finished_at=datetime.now(UTC),
        )
        try:
            return admission.insert(row, get_settings())[0]
        except errors.IdempotencyConflict:
            continue
    raise AssertionError("a task id names one message")  # pragma: no cover


def _key_or_none(value: str) -> str | None:
    try:
        return _key(value)
    except errors.InvalidMeeting:
        return None


def _new_create(user_id: object, meeting: object, idempotency_key: object) -> JobRow:
    user = meeting_body.validate_user_id(user_id)
    if not isinstance(meeting, Mapping):
        raise errors.InvalidMeeting("meeting", "must be an object (Zoom's create-meeting body)")
    body = meeting_body.validate_create_body(meeting, reserved_agenda_chars=RESERVED_AGENDA_CHARS)
    job_id = uuid.uuid4()
    return JobRow(
        id=job_id,
        kind=CREATE,
        idempotency_key=_key(idempotency_key),
        request_digest=request_digest(CREATE, {"user_id": user, "body": body}),
        user_id=user,
        topic=ledger.topic_of(body),
        body=body,
        marker=marker.for_job(job_id),
    )


def _new_delete(
    meeting_id: object,
    occurrence_id: object,
    idempotency_key: object,
    *,
    after_job_id: uuid.UUID | None = None,
) -> JobRow:
    number = None if after_job_id else meeting_body.validate_meeting_id(meeting_id)
    if occurrence_id is not None and (
        not isinstance(occurrence_id, str) or not 1 <= len(occurrence_id) <= OCCURRENCE_ID_MAX
    ):
        raise errors.InvalidMeeting(
            "occurrence_id", f"must be a string of 1 to {OCCURRENCE_ID_MAX} characters, or None"
        )
    request = {"meeting_id": number, "occurrence_id": occurrence_id}
    return JobRow(
        id=uuid.uuid4(),
        kind=DELETE,
        idempotency_key=_key(idempotency_key),
        request_digest=request_digest(DELETE, request),
        meeting_id=number,
        occurrence_id=occurrence_id,
        after_job_id=after_job_id,
    )


def _create_job(session: Session, job_id: uuid.UUID | str) -> JobRow:
    try:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        raise errors.InvalidMeeting("create_job_id", "is not a job id") from None
    row = session.get(JobRow, key)
    if row is None or row.kind != CREATE:
        raise errors.InvalidMeeting("create_job_id", f"no create job {job_id}")
    return row


def _key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 255:
        raise errors.InvalidMeeting("idempotency_key", "must be a string of 1 to 255 characters")
    return value


def _check_created_here(session: Session, meeting_id: int | None) -> None:
    if session.get(MeetingRow, meeting_id) is None:
        raise errors.InvalidMeeting(
            "meeting_id",
            f"meeting {meeting_id} was not created by zoom-worker, which never deletes "
            "meetings it did not create",
        )


def _record_and_dispatch(row: JobRow) -> uuid.UUID:
    job_id, created = admission.insert(row, get_settings())
    if created:
        ledger.dispatch(
            job_id,
            row.kind,
            user_id=row.user_id,
            topic=row.topic,
            meeting_id=row.meeting_id,
            send=celery_app.send,
        )
    return job_id


def jobs_for(ids: Sequence[uuid.UUID]) -> list[Job]:
    """Several jobs at once, in the order of ``ids`` (the demo and the tests)."""
    with db.sessions(get_settings())() as session:
        rows = {row.id: row for row in session.scalars(select(JobRow).where(JobRow.id.in_(ids)))}
        return [Job.from_row(rows[job_id]) for job_id in ids if job_id in rows]
