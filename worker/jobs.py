"""The ledger of jobs and meetings, and the public producer API.

A job is written to PostgreSQL before it is put on the broker, so it is durable once
:func:`create_meeting` or :func:`delete_meeting` returns. The broker message only says "work
on job X": a worker *claims* the job (a compare-and-swap on status and lease that also sets
a fresh ``claim_token``), and only the holder of the current claim may record an outcome.
Anything not finished by its ``lease_expires_at`` is dispatched again by the sweeper, so a
lost message, a dead worker or an emptied Redis delays a job but never loses it, and one job
never runs in two places at once. This module is the only writer of ``jobs`` and
``meetings``.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from worker import db, errors, meeting_body, models
from worker.celery_app import app
from worker.config import get_settings
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow

log = logging.getLogger(__name__)

CREATE, DELETE = "create", "delete"
TASK_NAMES = {CREATE: "meetings.create", DELETE: "meetings.delete"}
# The correlation marker appended to a created meeting's agenda (see worker.meetings).
MARKER_SEPARATOR = "\n\n"
MARKER_LENGTH = len("[zw:0123456789abcdef]")
RESERVED_AGENDA_CHARS = len(MARKER_SEPARATOR) + MARKER_LENGTH


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


@dataclass(frozen=True)
class Claim:
    """A job claimed by this worker: what the work needs, and the token to record with."""

    job_id: uuid.UUID
    kind: str
    token: str
    user_id: str | None
    body: dict[str, Any] | None
    marker: str | None
    meeting_id: int | None
    occurrence_id: str | None
    # A delete that names its create job instead of a meeting id.
    after_job_id: uuid.UUID | None
    attempts: int
    deferrals: int
    deliveries: int
    # A previous attempt of this create may have reached Zoom: look for the meeting first.
    maybe_sent: bool


# -- the public producer API ----------------------------------------------------------


def create_meeting(
    user_id: str, meeting: Mapping[str, Any], idempotency_key: str | None = None
) -> uuid.UUID:
    """Record a create job, then queue it; returns the job id.

    The body is Zoom's create-meeting body as Zoom names it. A body Zoom would reject raises
    InvalidMeeting naming the field, and nothing is stored or queued. The same
    idempotency key always returns the same job, so it never makes a second meeting.
    """
    row = _new_create(user_id, meeting, idempotency_key)
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
    if create_job_id is not None:
        with db.sessions()() as session:
            create = _create_job(session, create_job_id)
            meeting_id, after = create.meeting_id, create.id
        if meeting_id is None:
            row = _new_delete(None, occurrence_id, idempotency_key, after_job_id=after)
            return _record_and_dispatch(row)
    row = _new_delete(meeting_id, occurrence_id, idempotency_key)
    with db.sessions()() as session, session.begin():
        _check_created_here(session, row.meeting_id)
    return _record_and_dispatch(row)


def get_job(job_id: uuid.UUID | str) -> Job | None:
    """The job's current state, or None when there is no such job."""
    try:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        return None
    with db.sessions()() as session:
        row = session.get(JobRow, key)
        return Job.from_row(row) if row is not None else None


def list_jobs(status: str | None = None, *, limit: int = 50) -> list[Job]:
    """The most recently updated jobs, optionally of one status."""
    query = select(JobRow).order_by(JobRow.updated_at.desc()).limit(limit)
    if status:
        query = query.where(JobRow.status == status)
    with db.sessions()() as session:
        return [Job.from_row(row) for row in session.scalars(query)]


def count_by_status() -> dict[str, int]:
    """How many jobs are in each status."""
    with db.sessions()() as session:
        rows = session.execute(select(JobRow.status, func.count()).group_by(JobRow.status))
        return {status: count for status, count in rows.all()}


# -- producers without the package: tasks sent by name --------------------------------


def record_received(kind: str, kwargs: Mapping[str, Any], task_id: str) -> uuid.UUID:
    """Record a job sent with ``send_task`` when a worker first receives it.

    The task id stands in for a missing idempotency key, so a redelivered message never
    becomes a second job. An invalid body is recorded as a failed job naming the field.
    """
    key = kwargs.get("idempotency_key") or f"celery-task:{task_id}"
    try:
        if kind == CREATE:
            row = _new_create(kwargs.get("user_id"), kwargs.get("meeting"), key)
        else:
            row = _new_delete(kwargs.get("meeting_id"), kwargs.get("occurrence_id"), key)
            with db.sessions()() as session:
                _check_created_here(session, row.meeting_id)
    except errors.InvalidMeeting as exc:
        log.warning("job.rejected task_id=%s %s", task_id, exc)
        user = kwargs.get("user_id")
        row = JobRow(
            id=uuid.uuid4(),
            kind=kind,
            status=models.FAILED,
            idempotency_key=key,
            user_id=user if isinstance(user, str) else None,
            error=f"invalid job: {exc}",
            finished_at=datetime.now(UTC),
        )
    job_id, _created = _insert(row)
    return job_id


# -- the work's side: claim, record outcomes ------------------------------------------


def claim(job_id: uuid.UUID) -> Claim | None:
    """Take the job for this worker, or None when it is finished, held, or not yet due.

    A job is claimable when queued or retrying, waiting and due, or running with an expired
    lease or a claim the sweeper revoked (its worker died). Each claim counts a delivery;
    past ``JOB_MAX_DELIVERIES`` consecutive claims without an outcome the job is failed as
    poison.
    """
    settings = get_settings()
    now = func.now()
    old = (
        select(JobRow.id, JobRow.maybe_sent.label("was_maybe_sent"))
        .where(JobRow.id == job_id)
        .with_for_update()
        .subquery()
    )
    claimable: ColumnElement[bool] = or_(
        JobRow.status.in_([models.QUEUED, models.RETRYING]),
        and_(
            JobRow.status == models.WAITING,
            or_(JobRow.next_attempt_at.is_(None), JobRow.next_attempt_at <= now),
        ),
        # A holder whose lease ran out, or whose claim the sweeper revoked: it died.
        and_(
            JobRow.status == models.RUNNING,
            or_(JobRow.lease_expires_at < now, JobRow.claim_token.is_(None)),
        ),
    )
    token = secrets.token_hex(16)
    statement = (
        update(JobRow)
        .where(JobRow.id == old.c.id, claimable)
        .values(
            status=models.RUNNING,
            claim_token=token,
            deliveries=JobRow.deliveries + 1,
            maybe_sent=JobRow.kind == CREATE,
            lease_expires_at=now + timedelta(seconds=settings.JOB_LEASE_SECONDS),
            started_at=func.coalesce(JobRow.started_at, now),
            updated_at=now,
        )
        .returning(JobRow, old.c.was_maybe_sent)
    )
    with db.sessions()() as session, session.begin():
        result = session.execute(statement).one_or_none()
        if result is None:
            return None
        row, was_maybe_sent = result
        job = Claim(
            job_id=row.id,
            kind=row.kind,
            token=token,
            user_id=row.user_id,
            body=row.body,
            marker=row.marker,
            meeting_id=row.meeting_id,
            occurrence_id=row.occurrence_id,
            after_job_id=row.after_job_id,
            attempts=row.attempts,
            deferrals=row.deferrals,
            deliveries=row.deliveries,
            maybe_sent=bool(was_maybe_sent),
        )
        if job.deliveries > settings.JOB_MAX_DELIVERIES:
            reason = (
                f"gave up: delivered {job.deliveries} times in a row without finishing "
                "(the worker died each time)"
            )
            _finish(session, job, status=models.FAILED, error=reason)
            log.error("job.poison job_id=%s %s", job.job_id, reason)
            return None
    if job.deliveries > 1:
        log.warning("job.redelivered job_id=%s deliveries=%d", job.job_id, job.deliveries)
    return job


def record_created(job: Claim, meeting_id: int, join_url: str | None, *, adopted: bool) -> bool:
    """The create succeeded (or a lost reply's meeting was adopted): finish the job and add
    the meeting to the service's ledger. False when this worker no longer holds the claim."""
    body = job.body or {}
    start = _parse_start(body)
    end = meeting_body.scheduled_end(body, created_at=datetime.now(UTC))
    with db.sessions()() as session, session.begin():
        session.execute(
            insert(MeetingRow)
            .values(
                meeting_id=meeting_id,
                job_id=job.job_id,
                user_id=job.user_id or "",
                topic=_topic(body),
                start_time=start,
                duration_min=body.get("duration")
                if isinstance(body.get("duration"), int)
                else None,
                scheduled_end=end,
            )
            .on_conflict_do_nothing()
        )
        done = _finish(
            session,
            job,
            status=models.SUCCEEDED,
            meeting_id=meeting_id,
            join_url=join_url,
            error="adopted the meeting a lost reply had made" if adopted else None,
        )
    return done


def record_deleted(
    job: Claim, *, already_gone: bool, meeting_id: int | None = None, note: str | None = None
) -> bool:
    """The delete succeeded (or the meeting was already gone): finish and mark the meeting.

    ``meeting_id`` is the meeting found through the job's create job, when it had none."""
    meeting_id = meeting_id or job.meeting_id
    with db.sessions()() as session, session.begin():
        if not job.occurrence_id and meeting_id is not None:
            session.execute(
                update(MeetingRow)
                .where(MeetingRow.meeting_id == meeting_id, MeetingRow.state != models.DELETED)
                .values(state=models.DELETED, deleted_at=func.now())
            )
        return _finish(
            session,
            job,
            status=models.SUCCEEDED,
            meeting_id=meeting_id,
            error=note or ("the meeting was already gone" if already_gone else None),
        )


def resolve_create(job: Claim) -> tuple[str, int | None]:
    """For a delete that names its create job: what that create came to.

    Returns ("meeting", id) once it succeeded, ("failed", None) when it failed, and
    ("cancelled", None) when it had not started and is now cancelled (failed with the
    reason). ("pending", None) while it runs or may have reached Zoom: the delete waits.
    The create row is locked meanwhile, so a worker cannot claim it halfway.
    """
    with db.sessions()() as session, session.begin():
        create = session.get(JobRow, job.after_job_id, with_for_update=True)
        if create is None or create.status == models.FAILED:
            return "failed", None
        if create.status == models.SUCCEEDED:
            return "meeting", create.meeting_id
        startable = [models.QUEUED, models.RETRYING, models.WAITING]
        if create.status in startable and create.claim_token is None and not create.maybe_sent:
            create.status = models.FAILED
            create.error = f"cancelled by delete job {job.job_id} before it ran"
            create.finished_at = create.updated_at = datetime.now(UTC)
            create.lease_expires_at = create.next_attempt_at = None
            log.info("job.cancelled job_id=%s by delete job %s", create.id, job.job_id)
            return "cancelled", None
        return "pending", None


def record_failed(job: Claim, reason: str, *, maybe_sent: bool = False) -> bool:
    """The job failed for good; ``reason`` is in words an operator understands.

    ``maybe_sent`` keeps the mark of a create whose last request may have made a meeting,
    so the cleanup can find and remove that orphan."""
    with db.sessions()() as session, session.begin():
        return _finish(session, job, status=models.FAILED, error=reason, maybe_sent=maybe_sent)


def record_retry(
    job: Claim,
    reason: str,
    *,
    retry_at: datetime,
    status: str,
    counts_as_attempt: bool,
    maybe_sent: bool,
    on_broker: bool,
    held_for: str | None = None,
) -> bool:
    """Hold the job until ``retry_at``: retrying (a failure) or waiting (held, not failing).

    ``on_broker`` says a countdown message carries the retry; the lease then runs past
    ``retry_at`` so the sweeper stays away. Otherwise the job is parked in PostgreSQL and
    the sweeper dispatches it when due.
    """
    lease = timedelta(seconds=get_settings().JOB_LEASE_SECONDS) if on_broker else timedelta()
    with db.sessions()() as session, session.begin():
        result = session.execute(
            update(JobRow)
            .where(JobRow.id == job.job_id, JobRow.claim_token == job.token)
            .values(
                status=status,
                error=reason,
                attempts=JobRow.attempts + (1 if counts_as_attempt else 0),
                deferrals=JobRow.deferrals + (0 if counts_as_attempt else 1),
                deliveries=0,
                maybe_sent=maybe_sent,
                next_attempt_at=retry_at,
                lease_expires_at=retry_at + lease,
                held_for=held_for,
                claim_token=None,
                updated_at=func.now(),
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def _finish(session: Session, job: Claim, *, status: str, **values: Any) -> bool:
    values.setdefault("maybe_sent", False)
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job.job_id, JobRow.claim_token == job.token)
        .values(
            status=status,
            attempts=JobRow.attempts + 1,
            claim_token=None,
            deliveries=0,
            lease_expires_at=None,
            next_attempt_at=None,
            held_for=None,
            finished_at=func.now(),
            updated_at=func.now(),
            **values,
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        log.warning("job.claim_lost job_id=%s outcome %s not recorded", job.job_id, status)
    return bool(result.rowcount)  # type: ignore[attr-defined]


# -- the sweeper's side ----------------------------------------------------------------


def sweep(limit: int = 500) -> int:
    """Dispatch again every unfinished job whose lease has run out; returns how many.

    Rows are taken with ``FOR UPDATE SKIP LOCKED`` and their lease is pushed forward in the
    same statement, so two sweepers never dispatch the same job twice in one round. A
    running job's claim is revoked in that statement too, so the holder that outlived its
    lease can no longer record an outcome and the message dispatched here can claim the job.
    """
    settings = get_settings()
    due = (
        select(JobRow.id)
        .where(
            JobRow.status.in_([models.QUEUED, models.RUNNING, models.RETRYING, models.WAITING]),
            JobRow.lease_expires_at <= func.now(),
        )
        .order_by(JobRow.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(JobRow)
        .where(JobRow.id.in_(due))
        .values(
            lease_expires_at=func.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS),
            # Revoke a running job's expired claim: the message dispatched below may then
            # claim it although the lease was just pushed forward (only queued, retrying and
            # waiting jobs have no claim, so this changes nothing for them).
            claim_token=None,
        )
        .returning(
            JobRow.id, JobRow.kind, JobRow.status, JobRow.user_id, JobRow.topic, JobRow.meeting_id
        )
    )
    with db.sessions()() as session, session.begin():
        rows = session.execute(statement).all()
    for job_id, kind, status, user_id, topic, meeting_id in rows:
        log.info("job.sweep_dispatch job_id=%s status=%s", job_id, status)
        _dispatch(job_id, kind, user_id=user_id, topic=topic, meeting_id=meeting_id)
    return len(rows)


def release_held(held_for: str) -> int:
    """Make every job held for ``held_for`` due now (the sweeper then dispatches it)."""
    with db.sessions()() as session, session.begin():
        result = session.execute(
            update(JobRow)
            .where(JobRow.status == models.WAITING, JobRow.held_for == held_for)
            .values(next_attempt_at=func.now(), lease_expires_at=func.now())
        )
    released = int(result.rowcount)  # type: ignore[attr-defined]
    if released:
        log.info("job.released count=%d held_for=%s", released, held_for)
    return released


# -- internals -------------------------------------------------------------------------


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
        user_id=user,
        topic=_topic(body),
        body=body,
        marker=f"[zw:{job_id.hex[:16]}]",
    )


def _new_delete(
    meeting_id: object,
    occurrence_id: object,
    idempotency_key: object,
    *,
    after_job_id: uuid.UUID | None = None,
) -> JobRow:
    number = None if after_job_id else meeting_body.validate_meeting_id(meeting_id)
    if occurrence_id is not None and (not isinstance(occurrence_id, str) or not occurrence_id):
        raise errors.InvalidMeeting("occurrence_id", "must be a non-empty string or None")
    return JobRow(
        id=uuid.uuid4(),
        kind=DELETE,
        idempotency_key=_key(idempotency_key),
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
    job_id, created = _insert(row)
    if created:
        _dispatch(job_id, row.kind, user_id=row.user_id, topic=row.topic, meeting_id=row.meeting_id)
    return job_id


def _insert(row: JobRow) -> tuple[uuid.UUID, bool]:
    """Insert the job; with an idempotency key already used, return that job instead."""
    lease = timedelta(seconds=get_settings().JOB_LEASE_SECONDS)
    values = {
        column.key: getattr(row, column.key)
        for column in JobRow.__table__.columns
        if getattr(row, column.key, None) is not None
    }
    values.setdefault("status", models.QUEUED)
    if values["status"] == models.QUEUED:
        values["lease_expires_at"] = datetime.now(UTC) + lease
    statement = (
        insert(JobRow)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[JobRow.idempotency_key])
        .returning(JobRow.id)
    )
    with db.sessions()() as session, session.begin():
        inserted = session.execute(statement).scalar_one_or_none()
        if inserted is not None:
            log.info("job.recorded job_id=%s kind=%s", inserted, row.kind)
            return inserted, True
        existing = session.execute(
            select(JobRow.id, JobRow.kind).where(JobRow.idempotency_key == row.idempotency_key)
        ).one()
    if existing.kind != row.kind:
        raise errors.InvalidMeeting(
            "idempotency_key", f"was already used for a {existing.kind} job ({existing.id})"
        )
    return existing.id, False


def _dispatch(
    job_id: uuid.UUID,
    kind: str,
    *,
    user_id: str | None,
    topic: str | None,
    meeting_id: int | None,
) -> None:
    """Put the job on the broker; a broker failure leaves it to the sweeper, nothing lost."""
    # What Flower shows: the job id and what an operator needs, never the body or secrets.
    kwargs: dict[str, Any] = {"job_id": str(job_id)}
    if kind == CREATE:
        kwargs.update(user_id=user_id, topic=topic)
    else:
        kwargs.update(meeting_id=meeting_id)
    try:
        app.send_task(TASK_NAMES[kind], kwargs=kwargs, retry=False)
    except Exception as exc:  # kombu raises many types; the ledger row is what counts
        log.warning(
            "job.dispatch_failed job_id=%s the sweeper will dispatch it again: %s",
            job_id,
            type(exc).__name__,
        )


def _topic(body: Mapping[str, Any]) -> str | None:
    topic = body.get("topic")
    return topic if isinstance(topic, str) else None


def _parse_start(body: Mapping[str, Any]) -> datetime | None:
    start = body.get("start_time")
    if not isinstance(start, str):
        return None
    end = meeting_body.scheduled_end(body, created_at=datetime.now(UTC))
    duration = body.get("duration")
    if end is not None:
        return end - timedelta(minutes=duration if isinstance(duration, int) else 60)
    return None


def jobs_for(ids: Sequence[uuid.UUID]) -> list[Job]:
    """Several jobs at once, in the order of ``ids`` (the demo and the tests)."""
    with db.sessions()() as session:
        rows = {row.id: row for row in session.scalars(select(JobRow).where(JobRow.id.in_(ids)))}
        return [Job.from_row(rows[job_id]) for job_id in ids if job_id in rows]
