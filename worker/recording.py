"""A claimed job, and how :meth:`worker.ledger.Ledger.record` writes each outcome.

Kept apart from :mod:`worker.ledger` only for size (the ledger re-exports :class:`Claim`);
it opens no transaction of its own (each function runs in the caller's, on a Core
Connection), and every
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
from typing import Any, NamedTuple, cast

from sqlalchemy import ColumnElement, Table, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from worker import meeting_body, models, outbox, schedule, webhook_events
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow
from worker.outcomes import Failed, Hold, Retry, Succeeded

log = logging.getLogger("worker.ledger")

# The scheduled end given to an orphan (a meeting made by a holder that had lost its claim
# while the job has another meeting): long past, so the next cleanup run deletes it.
ORPHAN_END = datetime(2000, 1, 1, tzinfo=UTC)

_JOBS = cast(Table, JobRow.__table__)
_MEETINGS = cast(Table, MeetingRow.__table__)
_MEETING_COLUMNS = (
    "meeting_id",
    "job_id",
    "account",
    "user_id",
    "topic",
    "start_time",
    "duration_min",
    "scheduled_end",
)
# The meeting a create made, written by the statement that finishes its job (one round trip).
_NEW_MEETING = (
    pg_insert(_MEETINGS)
    .values({name: bindparam(f"m_{name}") for name in _MEETING_COLUMNS})
    .on_conflict_do_nothing()
    .cte("new_meeting")
)
# finish()'s statements, built once per set of columns it writes (SQLAlchemy Core).
_FINISHES: dict[tuple[tuple[str, ...], bool], Any] = {}


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
    # The task to tell of the job's final status (worker.outbox), if the producer named one.
    on_done: str | None = None
    # high, normal or bulk (worker.priorities): the job's place at the rate governor.
    priority: str = "normal"
    # The credential the job runs under (read in the claim's RETURNING, worker.ledger).
    account: str = models.DEFAULT_CREDENTIAL


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


def claim_of(row: Any, token: str) -> Claim:
    """The Claim for a row the claim statement returned (see ``worker.ledger``)."""
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
        on_done=row.on_done,
        maybe_sent=bool(row.was_maybe_sent),
        failing_for=row.failing_for,
        age=row.age,
        priority=row.priority,
        account=row.account,
    )


def record_later(conn: Connection, job: Claim, outcome: Retry | Hold, *, lease: timedelta) -> bool:
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
    result = conn.execute(
        update(JobRow)
        .where(JobRow.id == job.job_id, JobRow.claim_token == job.token)
        .values(**common, **values)
    )
    return claimed(result, job, type(outcome).__name__)


def failed_values(outcome: Failed) -> dict[str, Any]:
    return {"error": outcome.reason, "gave_up": outcome.gave_up, "maybe_sent": outcome.maybe_sent}


def record_created(conn: Connection, job: Claim, outcome: Succeeded) -> bool:
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
        "account": job.account,
        "user_id": job.user_id or "",
        "topic": body.get("topic") if isinstance(body.get("topic"), str) else None,
        "start_time": start,
        "duration_min": duration if isinstance(duration, int) else None,
        "scheduled_end": end,
    }
    finished = {"meeting_id": outcome.meeting_id, "join_url": outcome.join_url}
    meeting_values = {f"m_{name}": value for name, value in meeting.items()}
    if finish(conn, job, status=models.SUCCEEDED, error=outcome.note, **finished, **meeting_values):
        return True
    adopted = conn.execute(
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
    if adopted.rowcount:
        if job.on_done is not None:
            outbox.job_finished(conn, job.job_id)
        log.warning(
            "meeting.adopted_after_claim_lost job_id=%s meeting_id=%s",
            job.job_id,
            outcome.meeting_id,
        )
        return False
    orphan = conn.execute(
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
    if orphan.rowcount:
        log.warning(
            "meeting.orphan_recorded job_id=%s meeting_id=%s the next cleanup deletes it",
            job.job_id,
            outcome.meeting_id,
        )
    return False


def record_deleted(conn: Connection, job: Claim, outcome: Succeeded) -> bool:
    if not job.occurrence_id and outcome.meeting_id is not None:
        conn.execute(
            update(MeetingRow)
            .where(MeetingRow.meeting_id == outcome.meeting_id, MeetingRow.state != models.DELETED)
            .values(state=models.DELETED, deleted_at=func.now())
        )
    return finish(
        conn, job, status=models.SUCCEEDED, meeting_id=outcome.meeting_id, error=outcome.note
    )


def record_updated(conn: Connection, job: Claim, outcome: Succeeded) -> bool:
    """Finish the update and carry its changes into the ledger's meeting row: the topic, the
    schedule and ``scheduled_end`` (so the cleanup's date moves with a reschedule), and when
    each field was set (``field_updated_ts``, so Zoom's notice of an older change never
    undoes this one). An update of one occurrence leaves the row alone: the cleanup asks Zoom
    for a series' real end before it deletes anything."""
    finished = {"meeting_id": job.meeting_id, "error": outcome.note}
    if not finish(conn, job, status=models.SUCCEEDED, **finished):
        return False
    meeting = conn.execute(
        select(_MEETINGS).where(_MEETINGS.c.meeting_id == job.meeting_id).with_for_update()
    ).one_or_none()
    if meeting is not None and job.occurrence_id is None and job.body:
        values = rescheduled(meeting, job.body, now=datetime.now(UTC))
        conn.execute(
            update(MeetingRow).where(MeetingRow.meeting_id == job.meeting_id).values(values)
        )
    return True


def rescheduled(meeting: Any, changes: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """The meeting row's new values once ``changes`` (a validated update) reached Zoom;
    ``meeting`` is a row of ``meetings`` (a Core row or the ORM's)."""
    values: dict[str, Any] = {}
    if isinstance(changes.get("topic"), str):
        values["topic"] = changes["topic"]
    minutes = meeting.duration_min or meeting_body.DEFAULT_DURATION
    if isinstance(changes.get("duration"), int):
        minutes = values["duration_min"] = changes["duration"]
    start = meeting_body.start_of(changes) or meeting.start_time
    if "start_time" in changes:
        values["start_time"] = start
    end = meeting.scheduled_end
    if changes.get("type") == schedule.NO_FIXED_TIME:
        end = None  # it never ends: the cleanup leaves it
    elif isinstance(changes.get("recurrence"), dict) and start is not None:
        end = schedule.series_end(start, timedelta(minutes=minutes), changes["recurrence"])
    elif {"start_time", "duration"} & changes.keys():
        was = meeting.duration_min or meeting_body.DEFAULT_DURATION
        end = schedule.moved_end(meeting.start_time, was, meeting.scheduled_end, start, minutes)
    if end != meeting.scheduled_end:
        values["scheduled_end"] = end
    stamp = int(now.timestamp() * 1000)
    set_now = {name: stamp for name in webhook_events.SCHEDULE_FIELDS if name in changes}
    if set_now:
        values["field_updated_ts"] = {**(meeting.field_updated_ts or {}), **set_now}
    return values


def finish(conn: Connection, job: Claim, *, status: str, **values: Any) -> bool:
    """End the job with ``status`` and ``values`` if this worker holds its claim. Values
    named ``m_<column>`` are a meeting row written by the same statement (record_created)."""
    values.setdefault("maybe_sent", False)
    values["status"] = status
    meeting = any(name.startswith("m_") for name in values)
    names = tuple(sorted(name for name in values if not name.startswith("m_")))
    parameters = {f"v_{name}": values[name] for name in names}
    parameters.update((name, value) for name, value in values.items() if name.startswith("m_"))
    parameters.update(b_job_id=job.job_id, b_token=job.token)
    result = conn.execute(_finish_statement(names, meeting), parameters)
    if not claimed(result, job, status):
        return False
    if job.on_done is not None:
        outbox.job_finished(conn, job.job_id)
    return True


def _finish_statement(names: tuple[str, ...], meeting: bool) -> Any:
    statement = _FINISHES.get((names, meeting))
    if statement is None:
        statement = (
            update(_JOBS)
            .where(_JOBS.c.id == bindparam("b_job_id"), _JOBS.c.claim_token == bindparam("b_token"))
            .values(
                attempts=_JOBS.c.attempts + 1,
                claim_token=None,
                deliveries=0,
                lease_expires_at=None,
                next_attempt_at=None,
                held_for=None,
                finished_at=func.now(),
                updated_at=func.now(),
                **{name: bindparam(f"v_{name}") for name in names},
            )
        )
        if meeting:
            statement = statement.add_cte(_NEW_MEETING)
        _FINISHES[(names, meeting)] = statement
    return statement


def claimed(result: Any, job: Claim, what: str) -> bool:
    if not result.rowcount:
        log.warning("job.claim_lost job_id=%s outcome %s not recorded", job.job_id, what)
    return bool(result.rowcount)


def older_update_unfinished() -> ColumnElement[bool]:
    """An update of the same meeting with a lower seq that has not ended yet: the ordering
    promise of update jobs. Checked inside the claim's compare-and-swap, so with any number
    of workers and redeliveries an update runs only after every older one ended."""
    older = _JOBS.alias("older")
    return (
        select(older.c.id)
        .where(
            older.c.meeting_id == _JOBS.c.meeting_id,
            older.c.seq.is_not(None),
            older.c.seq < _JOBS.c.seq,
            older.c.status.not_in(models.FINAL_STATUSES),
        )
        .exists()
    )
