"""The ledger: every write to the ``jobs`` and ``meetings`` tables, and the broker dispatch.

A job is written to PostgreSQL before it is put on the broker. The broker message only says
"work on job X": a worker *claims* the job (a compare-and-swap on status and lease that also
sets a fresh ``claim_token``), and only the holder of the current claim may record an
outcome. Anything not finished by its ``lease_expires_at`` is dispatched again by the
sweeper, which also revokes the dead holder's claim, so a lost message, a dead worker or an
emptied Redis delays a job but never loses it, and one job never runs in two places at once.
Apart from the cleanup's stale-meeting states (:mod:`worker.cleanup`), this module is the
only writer of ``jobs`` and ``meetings``; :mod:`worker.jobs` is the producers' API on top.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from worker import db, errors, marker, meeting_body, models
from worker.celery_app import app
from worker.config import get_settings
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow

log = logging.getLogger(__name__)

CREATE, DELETE = "create", "delete"
TASK_NAMES = {CREATE: "meetings.create", DELETE: "meetings.delete"}
# Moved to worker.marker; kept here while other branches still use these names.
MARKER_SEPARATOR, MARKER_LENGTH = marker.MARKER_SEPARATOR, marker.MARKER_LENGTH
RESERVED_AGENDA_CHARS, agenda_with_marker = marker.RESERVED_AGENDA_CHARS, marker.agenda_with_marker


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
    with db.sessions(get_settings())() as session, session.begin():
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
            # A create that died mid-call each time may have made a meeting: keep the mark.
            _finish(session, job, status=models.FAILED, error=reason, maybe_sent=job.kind == CREATE)
            log.error("job.poison job_id=%s %s", job.job_id, reason)
            return None
    if job.deliveries > 1:
        log.warning("job.redelivered job_id=%s deliveries=%d", job.job_id, job.deliveries)
    return job


def record_created(job: Claim, meeting_id: int, join_url: str | None, *, adopted: bool) -> bool:
    """The create succeeded (or a lost reply's meeting was adopted): finish the job and add
    the meeting to the service's ledger. False when this worker no longer holds the claim."""
    body = job.body or {}
    end = meeting_body.scheduled_end(body, created_at=datetime.now(UTC))
    duration = body.get("duration")
    minutes = duration if isinstance(duration, int) else meeting_body.DEFAULT_DURATION
    has_start = isinstance(body.get("start_time"), str)
    start = end - timedelta(minutes=minutes) if end is not None and has_start else None
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            pg_insert(MeetingRow)
            .values(
                meeting_id=meeting_id,
                job_id=job.job_id,
                user_id=job.user_id or "",
                topic=topic_of(body),
                start_time=start,
                duration_min=duration if isinstance(duration, int) else None,
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
    with db.sessions(get_settings())() as session, session.begin():
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
    with db.sessions(get_settings())() as session, session.begin():
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
    with db.sessions(get_settings())() as session, session.begin():
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
    with db.sessions(get_settings())() as session, session.begin():
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
    with db.sessions(get_settings())() as session, session.begin():
        rows = session.execute(statement).all()
    for job_id, kind, status, user_id, topic, meeting_id in rows:
        log.info("job.sweep_dispatch job_id=%s status=%s", job_id, status)
        dispatch(job_id, kind, user_id=user_id, topic=topic, meeting_id=meeting_id)
    return len(rows)


def release_held(held_for: str) -> int:
    """Make every job held for ``held_for`` due now (the sweeper then dispatches it)."""
    with db.sessions(get_settings())() as session, session.begin():
        result = session.execute(
            update(JobRow)
            .where(JobRow.status == models.WAITING, JobRow.held_for == held_for)
            .values(next_attempt_at=func.now(), lease_expires_at=func.now())
        )
    released = int(result.rowcount)  # type: ignore[attr-defined]
    if released:
        log.info("job.released count=%d held_for=%s", released, held_for)
    return released


def insert(row: JobRow) -> tuple[uuid.UUID, bool]:
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
        pg_insert(JobRow)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[JobRow.idempotency_key])
        .returning(JobRow.id)
    )
    with db.sessions(get_settings())() as session, session.begin():
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


def dispatch(
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


def topic_of(body: Mapping[str, Any]) -> str | None:
    """The topic of a create body, when it has one."""
    topic = body.get("topic")
    return topic if isinstance(topic, str) else None
