"""A claimed job, and how :meth:`worker.ledger.Ledger.record` writes each outcome.

Kept apart from :mod:`worker.ledger` only for size (the ledger re-exports :class:`Claim`);
it opens no transaction of its own. A create's, a delete's, a failure's and a retry's or
hold's outcome is one statement (a :class:`Write`) that returns a row only when this worker
still holds the claim: the ledger runs it alone in autocommit (one round trip), or, for a job
whose ``on_done`` task must hear of it, in a transaction with its notification (:func:`run`).
The rest runs in the caller's transaction on a Core Connection: an update's meeting row
(:func:`record_updated`) and a create whose claim was lost (:func:`record_lost_create`).
Every statement here is guarded by the claim token (compare-and-swap), except the meeting row
a holder that lost its claim still writes (adopted by its job, or an orphan: see the ledger's
protocol). Nothing here reads Settings.
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import ColumnElement, Interval, Table, bindparam, func, select, update
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
# What a job's finishing statement writes besides the job: nothing, the meeting a create
# made (only while the job is held: a lost claim's meeting is recorded apart), or a deleted
# meeting's state (whoever holds the claim: Zoom's meeting is gone either way).
NO_MEETING, NEW_MEETING, MEETING_DELETED = "", "new_meeting", "meeting_deleted"
# Statements built once per shape (SQLAlchemy Core): finishing() per set of columns it writes
# and what it writes besides; later() per way it counts the wait.
_FINISHES: dict[tuple[tuple[str, ...], str], Any] = {}
_LATERS: dict[str, Any] = {}
_RETRY, _HOLD, _HOLD_FAILING = "retry", "hold", "hold_failing"

# A delete's meeting row, marked deleted by the statement that finishes its job.
_MEETING_DELETED = (
    update(_MEETINGS)
    .where(
        _MEETINGS.c.meeting_id == bindparam("d_meeting_id"),
        _MEETINGS.c.state != models.DELETED,
    )
    .values(state=models.DELETED, deleted_at=func.now())
    .cte("meeting_deleted")
)


class Write(NamedTuple):
    """One outcome as one statement, which returns a row only when this worker held the
    claim. ``shape`` names its SQL (the same for every run of this kind of outcome: what is
    compiled once), ``parameters`` are this run's, ``what`` names it in the log."""

    shape: tuple[Any, ...]
    statement: Any
    parameters: dict[str, Any]
    what: str


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


def later(job: Claim, outcome: Retry | Hold, *, lease: timedelta) -> Write:
    """Hold the job until ``outcome.at``: retrying (a failure) or held (not failing).

    ``lease`` is how far past ``at`` the lease runs: a whole lease when a broker countdown
    carries the retry (the sweeper stays away), none when the job is parked for the sweeper.
    """
    delay = timedelta(seconds=max(0.0, (outcome.at - datetime.now(UTC)).total_seconds()))
    if isinstance(outcome, Retry):
        how, status, held_for = _RETRY, models.RETRYING, None
    else:
        how = _HOLD_FAILING if outcome.why.counts_as_failing else _HOLD
        status, held_for = outcome.why.status, outcome.why.value
    parameters = {
        "b_job_id": job.job_id,
        "b_token": job.token,
        "v_status": status,
        "v_held_for": held_for,
        "v_error": outcome.reason,
        "v_maybe_sent": outcome.maybe_sent,
        "v_next_attempt_at": outcome.at,
        "v_delay": delay,
        "v_lease": lease,
    }
    return Write(("later", how), _later_statement(how), parameters, type(outcome).__name__)


def _later_statement(how: str) -> Any:
    statement = _LATERS.get(how)
    if statement is None:
        delay = bindparam("v_delay", type_=Interval())
        if how == _RETRY:
            counted: dict[str, Any] = {"attempts": _JOBS.c.attempts + 1}
        else:
            counted = {"deferrals": _JOBS.c.deferrals + 1}
        # Held time does not count against the give-up budget: move its start along
        # (a Zoom outage's does: the job is failing, only waiting with the fleet).
        failing_since: ColumnElement[Any] = func.coalesce(_JOBS.c.first_failed_at, func.now())
        if how == _HOLD:
            failing_since = _JOBS.c.first_failed_at + delay
        statement = _LATERS[how] = (
            update(_JOBS)
            .where(_JOBS.c.id == bindparam("b_job_id"), _JOBS.c.claim_token == bindparam("b_token"))
            .values(
                status=bindparam("v_status"),
                held_for=bindparam("v_held_for"),
                error=bindparam("v_error"),
                maybe_sent=bindparam("v_maybe_sent"),
                next_attempt_at=bindparam("v_next_attempt_at"),
                lease_expires_at=func.now() + delay + bindparam("v_lease", type_=Interval()),
                first_failed_at=failing_since,
                deliveries=0,
                claim_token=None,
                updated_at=func.now(),
                **counted,
            )
            .returning(_JOBS.c.id)
        )
    return statement


def failed(job: Claim, outcome: Failed) -> Write:
    """End the job as failed (``gave_up`` when a budget ran out)."""
    return finishing(
        job,
        status=models.FAILED,
        error=outcome.reason,
        gave_up=outcome.gave_up,
        maybe_sent=outcome.maybe_sent,
    )


def created(job: Claim, outcome: Succeeded) -> Write:
    """Finish the create and add its meeting to the ledger, in one statement; when the claim
    was lost it writes nothing, and :func:`record_lost_create` records the meeting."""
    write = finishing(
        job,
        status=models.SUCCEEDED,
        also=NEW_MEETING,
        meeting_id=outcome.meeting_id,
        join_url=outcome.join_url,
        error=outcome.note,
    )
    write.parameters.update((f"m_{name}", value) for name, value in _meeting(job, outcome).items())
    return write


def _meeting(job: Claim, outcome: Succeeded) -> dict[str, Any]:
    """The ledger's row for the meeting a create made."""
    assert outcome.meeting_id is not None, "a create succeeds with a meeting"
    body = job.body or {}
    end = meeting_body.scheduled_end(body, created_at=datetime.now(UTC))
    duration = body.get("duration")
    minutes = duration if isinstance(duration, int) else meeting_body.DEFAULT_DURATION
    has_start = isinstance(body.get("start_time"), str)
    start = end - timedelta(minutes=minutes) if end is not None and has_start else None
    return {
        "meeting_id": outcome.meeting_id,
        "job_id": job.job_id,
        "account": job.account,
        "user_id": job.user_id or "",
        "topic": body.get("topic") if isinstance(body.get("topic"), str) else None,
        "start_time": start,
        "duration_min": duration if isinstance(duration, int) else None,
        "scheduled_end": end,
    }


def record_lost_create(conn: Connection, job: Claim, outcome: Succeeded) -> None:
    """The meeting a create made after its claim was lost: adopted by the job if it has none
    yet, else kept as an orphan the next cleanup deletes (in the caller's transaction)."""
    conn.execute(pg_insert(_MEETINGS).values(_meeting(job, outcome)).on_conflict_do_nothing())
    finished = {"meeting_id": outcome.meeting_id, "join_url": outcome.join_url}
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
        return
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


def deleted(job: Claim, outcome: Succeeded) -> Write:
    """Finish the delete; the ledger's meeting row (not for one occurrence) is marked deleted
    by the same statement, held claim or not."""
    gone = not job.occurrence_id and outcome.meeting_id is not None
    write = finishing(
        job,
        status=models.SUCCEEDED,
        also=MEETING_DELETED if gone else NO_MEETING,
        meeting_id=outcome.meeting_id,
        error=outcome.note,
    )
    if gone:
        write.parameters["d_meeting_id"] = outcome.meeting_id
    return write


def record_updated(conn: Connection, job: Claim, outcome: Succeeded) -> bool:
    """Finish the update and carry its changes into the ledger's meeting row: the topic, the
    schedule and ``scheduled_end`` (so the cleanup's date moves with a reschedule), and when
    each field was set (``field_updated_ts``, so Zoom's notice of an older change never
    undoes this one). An update of one occurrence leaves the row alone: the cleanup asks Zoom
    for a series' real end before it deletes anything."""
    finished = finishing(
        job, status=models.SUCCEEDED, meeting_id=job.meeting_id, error=outcome.note
    )
    if not run(conn, job, finished):
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


def finishing(job: Claim, *, status: str, also: str = NO_MEETING, **values: Any) -> Write:
    """End the job with ``status`` and ``values`` if this worker holds its claim; ``also``
    says what the same statement writes besides (its parameters are the caller's to add:
    ``m_<column>`` for a new meeting, ``d_meeting_id`` for a deleted one)."""
    values.setdefault("maybe_sent", False)
    values["status"] = status
    names = tuple(sorted(values))
    parameters = {f"v_{name}": values[name] for name in names}
    parameters.update(b_job_id=job.job_id, b_token=job.token)
    return Write(("finish", names, also), _finish_statement(names, also), parameters, status)


def _finish_statement(names: tuple[str, ...], also: str) -> Any:
    statement = _FINISHES.get((names, also))
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
            .returning(_JOBS.c.id)
        )
        if also == NEW_MEETING:
            statement = _with_new_meeting(statement.cte("finished"))
        elif also == MEETING_DELETED:
            statement = statement.add_cte(_MEETING_DELETED)
        _FINISHES[(names, also)] = statement
    return statement


def _with_new_meeting(finished: Any) -> Any:
    """The finishing statement ``finished`` (a CTE) that also inserts the create's meeting,
    only for the row it finished: when the claim was lost it inserts nothing."""
    columns = [bindparam(f"m_{name}", type_=_MEETINGS.c[name].type) for name in _MEETING_COLUMNS]
    new_meeting = (
        pg_insert(_MEETINGS)
        .from_select(_MEETING_COLUMNS, select(*columns).select_from(finished))
        .on_conflict_do_nothing()
        .cte("new_meeting")
    )
    return select(finished.c.id).add_cte(new_meeting)


def run(conn: Connection, job: Claim, write: Write) -> bool:
    """Run ``write`` in the caller's transaction, with the job's notification to its
    ``on_done`` task when it names one; False when this worker no longer holds the claim."""
    held = conn.execute(write.statement, write.parameters).first() is not None
    if held and job.on_done is not None:
        outbox.job_finished(conn, job.job_id)
    return claimed(held, job, write.what)


def claimed(held: bool, job: Claim, what: str) -> bool:
    """``held``, logging an outcome not recorded because the claim was lost."""
    if not held:
        log.warning("job.claim_lost job_id=%s outcome %s not recorded", job.job_id, what)
    return held


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
