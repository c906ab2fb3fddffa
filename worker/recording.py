"""A claimed job, and how :meth:`worker.ledger.Ledger.record` writes each outcome.

Kept apart from :mod:`worker.ledger` only for size (the ledger re-exports :class:`Claim`);
it opens no session of its own, and every
statement here is guarded by the claim token (compare-and-swap), except the meeting row a
holder that lost its claim still writes (adopted by its job, or an orphan: see the ledger's
protocol). Nothing here reads Settings.
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from worker import meeting_body, models
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow
from worker.outcomes import Failed, Hold, Retry, Succeeded

log = logging.getLogger("worker.ledger")

# The scheduled end given to an orphan (a meeting made by a holder that had lost its claim
# while the job has another meeting): long past, so the next cleanup run deletes it.
ORPHAN_END = datetime(2000, 1, 1, tzinfo=UTC)


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
    # Since the first failed attempt, held time excluded (None: no failure yet), and since
    # the job was recorded; both on the database's clock at the claim.
    failing_for: timedelta | None = None
    age: timedelta = timedelta()
    # high, normal or bulk (worker.priorities): the job's place at the rate governor.
    priority: str = "normal"


class CreateState(enum.StrEnum):
    """What the create job a delete names has come to."""

    MEETING = "meeting"  # it succeeded: delete its meeting
    FAILED = "failed"  # it failed: nothing to delete
    CANCELLED = "cancelled"  # it had not started: now cancelled, nothing to delete
    PENDING = "pending"  # it runs, or may have reached Zoom: the delete waits


class CreateResult(NamedTuple):
    """:meth:`Ledger.resolve_create`'s answer; ``meeting_id`` is set for MEETING only."""

    state: CreateState
    meeting_id: int | None


def claim_of(
    row: JobRow, token: str, was_maybe_sent: bool, failing_for: timedelta | None, age: timedelta
) -> Claim:
    return Claim(
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
        maybe_sent=was_maybe_sent,
        failing_for=failing_for,
        age=age,
        priority=row.priority,
    )


def record_later(session: Session, job: Claim, outcome: Retry | Hold, *, lease: timedelta) -> bool:
    """Hold the job until ``outcome.at``: retrying (a failure) or held (not failing).

    ``lease`` is how far past ``at`` the lease runs: a whole lease when a broker countdown
    carries the retry (the sweeper stays away), none when the job is parked for the sweeper.
    """
    delay = timedelta(seconds=max(0.0, (outcome.at - datetime.now(UTC)).total_seconds()))
    lease_end = func.now() + delay + lease
    common: dict[str, Any] = {
        "error": outcome.reason,
        "deliveries": 0,
        "maybe_sent": outcome.maybe_sent,
        "next_attempt_at": outcome.at,
        "lease_expires_at": lease_end,
        "claim_token": None,
        "updated_at": func.now(),
    }
    if isinstance(outcome, Retry):
        values: dict[str, Any] = {
            "status": models.RETRYING,
            "attempts": JobRow.attempts + 1,
            "held_for": None,
            "first_failed_at": func.coalesce(JobRow.first_failed_at, func.now()),
        }
    else:
        # Held time does not count against the give-up budget: move its start along
        # (a Zoom outage's does: the job is failing, only waiting with the fleet).
        failing_since = JobRow.first_failed_at + delay
        if outcome.why.counts_as_failing:
            failing_since = func.coalesce(JobRow.first_failed_at, func.now())
        values = {
            "status": outcome.why.status,
            "deferrals": JobRow.deferrals + 1,
            "held_for": outcome.why.value,
            "first_failed_at": failing_since,
        }
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job.job_id, JobRow.claim_token == job.token)
        .values(**common, **values)
    )
    return claimed(result, job, type(outcome).__name__)


def failed_values(outcome: Failed) -> dict[str, Any]:
    return {"error": outcome.reason, "gave_up": outcome.gave_up, "maybe_sent": outcome.maybe_sent}


def record_created(session: Session, job: Claim, outcome: Succeeded) -> bool:
    """Finish the create and add its meeting to the ledger; a meeting made by a holder that
    lost its claim is adopted by the job if it has none yet, else kept as an orphan."""
    assert outcome.meeting_id is not None, "a create succeeds with a meeting"
    body = job.body or {}
    end = meeting_body.scheduled_end(body, created_at=datetime.now(UTC))
    duration = body.get("duration")
    minutes = duration if isinstance(duration, int) else meeting_body.DEFAULT_DURATION
    has_start = isinstance(body.get("start_time"), str)
    start = end - timedelta(minutes=minutes) if end is not None and has_start else None
    meeting = {
        "meeting_id": outcome.meeting_id,
        "job_id": job.job_id,
        "user_id": job.user_id or "",
        "topic": body.get("topic") if isinstance(body.get("topic"), str) else None,
        "start_time": start,
        "duration_min": duration if isinstance(duration, int) else None,
        "scheduled_end": end,
    }
    session.execute(pg_insert(MeetingRow).values(**meeting).on_conflict_do_nothing())
    finished = {"meeting_id": outcome.meeting_id, "join_url": outcome.join_url}
    if finish(session, job, status=models.SUCCEEDED, error=outcome.note, **finished):
        return True
    adopted = session.execute(
        update(JobRow)
        .where(JobRow.id == job.job_id, JobRow.meeting_id.is_(None))
        .values(
            status=models.SUCCEEDED,
            error="adopted the meeting of a worker that had lost its claim",
            claim_token=None,
            lease_expires_at=None,
            next_attempt_at=None,
            held_for=None,
            maybe_sent=False,
            gave_up=False,
            finished_at=func.now(),
            updated_at=func.now(),
            **finished,
        )
    )
    if adopted.rowcount:  # type: ignore[attr-defined]
        log.warning(
            "meeting.adopted_after_claim_lost job_id=%s meeting_id=%s",
            job.job_id,
            outcome.meeting_id,
        )
        return False
    orphan = session.execute(
        update(MeetingRow)
        .where(
            MeetingRow.meeting_id == outcome.meeting_id,
            MeetingRow.state == models.LIVE,
            ~select(JobRow.id)
            .where(JobRow.id == job.job_id, JobRow.meeting_id == outcome.meeting_id)
            .exists(),
        )
        .values(scheduled_end=ORPHAN_END)
    )
    if orphan.rowcount:  # type: ignore[attr-defined]
        log.warning(
            "meeting.orphan_recorded job_id=%s meeting_id=%s the next cleanup deletes it",
            job.job_id,
            outcome.meeting_id,
        )
    return False


def record_deleted(session: Session, job: Claim, outcome: Succeeded) -> bool:
    if not job.occurrence_id and outcome.meeting_id is not None:
        session.execute(
            update(MeetingRow)
            .where(MeetingRow.meeting_id == outcome.meeting_id, MeetingRow.state != models.DELETED)
            .values(state=models.DELETED, deleted_at=func.now())
        )
    return finish(
        session, job, status=models.SUCCEEDED, meeting_id=outcome.meeting_id, error=outcome.note
    )


def finish(session: Session, job: Claim, *, status: str, **values: Any) -> bool:
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
    return claimed(result, job, status)


def claimed(result: Any, job: Claim, what: str) -> bool:
    if not result.rowcount:
        log.warning("job.claim_lost job_id=%s outcome %s not recorded", job.job_id, what)
    return bool(result.rowcount)
