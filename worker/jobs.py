"""The producers' API: create and delete meetings (one or many at a time, :mod:`worker.bulk`),
update them (:mod:`worker.updates`), read jobs, wait for one to finish, cancel or retry one.

A job is written to PostgreSQL (:mod:`worker.ledger`) before it is put on the broker, so it is
durable once :func:`create_meeting` or :func:`delete_meeting` returns. Bodies are validated
first (:mod:`worker.meeting_body`): an invalid one raises InvalidMeeting and nothing is stored.
When PostgreSQL is down or unreachable these functions raise InfrastructureError, within
``DATABASE_CONNECT_TIMEOUT``.

Idempotency keys work like a payment API's: each job stores a digest of the request it was
made for (kind, host, body; or the meeting to delete). The same key with the same request
returns the same job, whatever its state; the same key with another request raises
IdempotencyConflict. A failed job keeps its key, and :func:`retry_job` runs it again. Keys
are honoured for ``IDEMPOTENCY_KEY_DAYS``, even after the job itself was pruned
(:mod:`worker.retention`): then the key returns the pruned job's id, never a second job.

Every producer call takes ``account=``: the credential the job runs under (a name of the
registry, :mod:`worker.credentials`; None: ``default``, the environment's). An unknown or
disabled one raises AccountRefused and nothing is stored; idempotency keys are per account,
and a meeting is only updated or deleted through the account that created it.

Every producer call takes ``session=`` (write the job in the caller's transaction; the relay
queues it after the commit, :mod:`worker.enqueue`) and ``on_done=`` (a Celery task told of
each outcome, :mod:`worker.outbox`). :mod:`worker.aio` has the asyncio twins.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from worker import (
    admission,
    celery_app,
    db,
    enqueue,
    errors,
    job_requests,
    ledger,
    models,
    priorities,
    waiting,
)
from worker.bulk import create_meetings, delete_meetings
from worker.config import get_settings
from worker.enqueue import Transaction
from worker.job_requests import OCCURRENCE_ID_MAX, request_digest
from worker.job_view import Job
from worker.ledger import CREATE, DELETE, UPDATE
from worker.marker import RESERVED_AGENDA_CHARS
from worker.models import Job as JobRow

__all__ = [
    "CREATE",
    "DELETE",
    "OCCURRENCE_ID_MAX",
    "RESERVED_AGENDA_CHARS",
    "UPDATE",
    "Job",
    "cancel_job",
    "create_meeting",
    "create_meetings",
    "delete_meeting",
    "delete_meetings",
    "get_job",
    "list_jobs",
    "request_digest",
    "retry_job",
    "update_meeting",
    "wait_for_job",
]

log = logging.getLogger(__name__)


def create_meeting(
    user_id: str,
    meeting: Mapping[str, Any],
    idempotency_key: str | None = None,
    *,
    on_done: str | None = None,
    session: Transaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> uuid.UUID:
    """Record a create job, then queue it; returns the job id.

    ``account`` names the credential the job runs under (``worker.credentials``; None or
    ``"default"``: the environment's). An unknown or disabled one raises AccountRefused
    naming it, and nothing is stored or queued. Idempotency keys are per account: the same
    key in two accounts names two jobs.

    ``priority`` is ``"high"``, ``"normal"`` or ``"bulk"`` (:mod:`worker.priorities`): the
    job's queue and its turn at the rate governor, high first.

    The body is Zoom's create-meeting body as Zoom names it. A body Zoom would reject raises
    InvalidMeeting naming the field, and nothing is stored or queued. The same
    idempotency key with the same host and body returns the same job, so it never makes a
    second meeting; with another host or body it raises IdempotencyConflict.

    ``on_done`` names a Celery task (``"billing.tasks.meeting_ready"``) sent the job's public
    fields and a ``notification_id`` each time the job reaches a final status (see
    :mod:`worker.outbox`). With ``session`` (a SQLAlchemy ``Session`` or ``Connection`` on the
    same database) the job is written in the caller's transaction and nothing is committed
    or queued here: once the caller commits, the relay queues it within moments; a rollback
    leaves no job (:mod:`worker.enqueue`).
    """
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)
    row = job_requests.new_create(user_id, meeting, idempotency_key, opts)
    return enqueue.enqueue([row], session)[0]


def delete_meeting(
    meeting_id: int | None = None,
    occurrence_id: str | None = None,
    idempotency_key: str | None = None,
    *,
    create_job_id: uuid.UUID | str | None = None,
    on_done: str | None = None,
    session: Transaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> uuid.UUID:
    """Record a delete job, then queue it; returns the job id (``priority`` and ``account``
    as for :func:`create_meeting`).

    Only a meeting this service created can be deleted (InvalidMeeting otherwise), and only
    through the credential that created it (InvalidMeeting, field ``account``). Deleting a
    meeting that is already gone succeeds. Instead of ``meeting_id``, ``create_job_id`` names
    the create job whose meeting to delete: a create that has not run yet is cancelled, one
    that is running is waited for, so a delete and its create never race into an orphan.
    ``on_done`` and ``session`` work as for :func:`create_meeting`.
    """
    request = job_requests.delete_request(meeting_id, occurrence_id, idempotency_key, create_job_id)
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)
    if session is not None:
        return enqueue.enqueue([job_requests.delete_row(session, request, opts)], session)[0]
    with db.unavailable_as_infrastructure(), db.sessions(get_settings())() as reader:
        row = job_requests.delete_row(reader, request, opts)
    return enqueue.enqueue([row], None)[0]


def update_meeting(
    meeting_id: int,
    changes: Mapping[str, Any],
    occurrence_id: str | None = None,
    idempotency_key: str | None = None,
    *,
    on_done: str | None = None,
    session: Transaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> uuid.UUID:
    """Record an update job (``PATCH /meetings/{meetingId}``), then queue it; returns its id.
    ``account`` as for :func:`create_meeting`: the meeting's own credential (InvalidMeeting,
    field ``account``, for another).

    ``changes`` is any part of Zoom's create-meeting body, checked by the same rules:
    unknown fields and a past ``start_time`` (Zoom would silently ignore it) raise
    InvalidMeeting naming the field, and so does a meeting this service did not create, or
    one that is gone; then nothing is stored or queued. Updates of one meeting are applied
    one at a time, in the order they were enqueued (:mod:`worker.updates`); with
    ``occurrence_id`` the update changes one occurrence of a series. ``on_done`` and
    ``session`` work as for :func:`create_meeting`.
    """
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)
    row = job_requests.new_update(
        meeting_id, changes, occurrence_id, idempotency_key, opts, now=datetime.now(UTC)
    )
    return enqueue.enqueue([row], session)[0]


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
    key = job_key(job_id)
    with db.unavailable_as_infrastructure():
        row = admission.requeue_failed(key, check_retryable, get_settings())
        ledger.dispatch_row(row, celery_app.send)
    log.info("job.retried job_id=%s kind=%s maybe_sent=%s", row.id, row.kind, row.maybe_sent)
    return Job.from_row(row)


def cancel_job(job_id: uuid.UUID | str) -> Job:
    """Cancel a queued or waiting job that has never sent anything to Zoom; returns it,
    ``cancelled``. A worker that later receives its message does nothing.

    Refused with InvalidMeeting (field ``job_id``) saying why for a running or finished job,
    or a create that may already have reached Zoom: then delete its meeting with
    ``delete_meeting(create_job_id=...)``, which waits for the create. Cancelling a cancelled
    job returns it unchanged.
    """
    with db.unavailable_as_infrastructure():
        row = admission.cancel(job_key(job_id), get_settings())
        if row.kind == UPDATE and row.meeting_id is not None:
            # The next update of the meeting may have been waiting for this one.
            ledger.wake_next_update(db.sessions(get_settings()), row.meeting_id, celery_app.send)
    return Job.from_row(row)


def wait_for_job(job_id: uuid.UUID | str, timeout: float = 60.0) -> Job:
    """Block until the job has succeeded, failed or been cancelled, and return it.

    Woken by PostgreSQL's LISTEN/NOTIFY when the outcome commits (:mod:`worker.waiting`), not
    by polling. Raises TimeoutError when the job has not finished within ``timeout`` seconds,
    and InvalidMeeting (field ``job_id``) when there is no such job.
    """
    key = job_key(job_id)
    with db.unavailable_as_infrastructure():
        waiting.wait_until_final(key, timeout, get_settings())
    job = get_job(key)
    if job is None:
        raise errors.InvalidMeeting("job_id", f"no job {key}")
    return job


def job_key(job_id: uuid.UUID | str) -> uuid.UUID:
    """The job id as a UUID (InvalidMeeting, field ``job_id``, when it is not one)."""
    try:
        return job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        raise errors.InvalidMeeting("job_id", f"{job_id!r} is not a job id") from None


def check_retryable(row: JobRow | None, named_by_delete: uuid.UUID | None) -> None:
    """Refuse (see :func:`retry_job`) a job that cannot run again."""
    if row is None:
        raise errors.InvalidMeeting("job_id", "no such job")
    if row.status != models.FAILED:
        raise errors.InvalidMeeting(
            "job_id", f"job {row.id} is {row.status}; only a failed job can be retried"
        )
    if (row.kind in (CREATE, UPDATE) and row.body is None) or (
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


def record_received(
    kind: str, kwargs: Mapping[str, Any], task_id: str, *, unknown: Sequence[str] = ()
) -> uuid.UUID:
    """Record a job sent with ``send_task`` when a worker first receives it.

    The task id stands in for a missing idempotency key, so a redelivered or retried message
    never becomes a second job. A message that can never be recorded as sent (an invalid
    body, an idempotency key reused for another request) is recorded as a failed job with
    the reason, and so is one with ``unknown`` arguments (a typo such as ``meting``) or an
    ``account`` that names no usable credential.
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
            opts = job_requests.options(
                priority=kwargs.get("priority"),
                on_done=kwargs.get("on_done"),
                account=kwargs.get("account"),
            )
            if kind == CREATE:
                row = job_requests.new_create(
                    kwargs.get("user_id"), kwargs.get("meeting"), key, opts
                )
            elif kind == UPDATE:
                row = job_requests.new_update(
                    kwargs.get("meeting_id"),
                    kwargs.get("changes"),
                    kwargs.get("occurrence_id"),
                    key,
                    opts,
                    now=datetime.now(UTC),
                )
                # Its turn may wait: this message was its first, so it is dispatched by id.
                return enqueue.record_and_publish([row])[0]
            else:
                row = job_requests.new_delete(
                    kwargs.get("meeting_id"),
                    kwargs.get("occurrence_id"),
                    key,
                    opts,
                )
                with db.sessions(get_settings())() as session:
                    job_requests.check_created_here(session, row.meeting_id, row.account)
            return admission.insert(row, get_settings())[0]
        except (
            errors.InvalidMeeting,
            errors.InvalidCredential,
            errors.IdempotencyConflict,
            sa_exc.DataError,
        ) as exc:
            reason = str(exc) if isinstance(exc, ValueError) else db.first_line(exc)
            log.warning("job.rejected task_id=%s %s", task_id, reason)
            return _record_rejected(kind, kwargs, task_id, key, reason)


def _record_rejected(
    kind: str, kwargs: Mapping[str, Any], task_id: str, key: str, reason: str
) -> uuid.UUID:
    """A failed job for a message that cannot run, under its key or, when that key names
    another request, under its task id."""
    user = kwargs.get("user_id")
    digest = job_requests.request_digest(kind, {"rejected": dict(kwargs)})
    try:
        account = job_requests.checked_account(kwargs.get("account"))
    except errors.InvalidCredential:
        account = models.DEFAULT_CREDENTIAL
    for candidate in dict.fromkeys([_key_or_none(key), f"celery-task:{task_id}"]):
        if candidate is None:
            continue
        row = JobRow(
            id=uuid.uuid4(),
            kind=kind,
            status=models.FAILED,
            account=account,
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
        return job_requests.checked_key(value)
    except errors.InvalidMeeting:
        return None


def jobs_for(ids: Sequence[uuid.UUID]) -> list[Job]:
    """Several jobs at once, in the order of ``ids`` (the demo and the tests)."""
    with db.sessions(get_settings())() as session:
        rows = {row.id: row for row in session.scalars(select(JobRow).where(JobRow.id.in_(ids)))}
        return [Job.from_row(rows[job_id]) for job_id in ids if job_id in rows]
