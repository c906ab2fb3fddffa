"""The ledger: every write to the ``jobs`` and ``meetings`` tables, and the broker dispatch.

Protocol
--------
A job is written to PostgreSQL before it is put on the broker. The broker message only says
"work on job X":

1. **Claim.** A worker claims the job: one compare-and-swap on status, due time and lease that
   sets a fresh ``claim_token`` and ``lease_expires_at = now() + JOB_LEASE_SECONDS``. A
   retrying or waiting job is not claimable before its ``next_attempt_at`` (a stray message
   finds nothing to do), nor an update job while an older update of its meeting is
   unfinished; when an update ends the next one is dispatched (see :mod:`worker.updates`).
2. **Fence.** Right before every call that changes Zoom (create, delete) the holder proves it
   still holds the claim in one statement that also extends the lease (:meth:`Ledger.fence`);
   a holder that lost it gets :class:`~worker.errors.ClaimLost` and stops without calling.
   Settings under which the call can outlive that extension are refused at start
   (``Settings.attempt_bound_s``).
3. **Record.** Only the holder of the current claim records an outcome
   (:meth:`Ledger.record`, one place for every :mod:`worker.outcomes` value). One exception:
   a meeting made by a holder that lost its claim *after* its fence is still written to
   ``meetings``, adopted by the job if the job has no meeting yet, else kept as an orphan
   whose ``scheduled_end`` is :data:`worker.recording.ORPHAN_END`, so the next cleanup deletes it.
   A job that names an ``on_done`` task gets its notification written in the transaction
   that records its final status (:func:`worker.outbox.job_finished`), cancellations included.
4. **Sweep.** Anything unfinished past its lease is dispatched again by the sweeper, which
   revokes a running job's claim in the same statement, so a lost message, a dead or frozen
   worker or an emptied Redis delays a job but never loses it, and one job never runs in two
   places at once.

Every lease is computed on the database's clock (``now()``), never a host's. Apart from the
cleanup's stale-meeting states (:mod:`worker.cleanup`) and the state and schedule Zoom's
events set (:mod:`worker.webhook_events`), and the ``awaited`` mark a waiter sets
(:mod:`worker.waiting`), this module is the only writer of ``jobs`` and ``meetings``;
:mod:`worker.jobs` is the producers' API on top. The module-level
functions (:func:`insert`, :func:`dispatch`, :func:`topic_of`, the marker) are what
:mod:`worker.jobs` and :mod:`worker.cleanup` use without a :class:`Ledger`.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, cast

from sqlalchemy import Interval, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker import (
    db,
    errors,
    held_connection,
    models,
    outbox,
    priorities,
    recording,
    webhook_events,
)
from worker.config import Settings
from worker.models import Job as JobRow
from worker.outcomes import Failed, Hold, HoldReason, Outcome, Reschedule, Retry, Succeeded
from worker.recording import Claim, CreateResult, CreateState

# Claim, CreateResult and CreateState live in worker.recording (size) and are the ledger's.
__all__ = [
    "CREATE",
    "DELETE",
    "UPDATE",
    "Claim",
    "CreateResult",
    "CreateState",
    "Ledger",
    "Send",
    "dispatch",
    "message",
    "message_of",
    "topic_of",
]

log = logging.getLogger(__name__)

CREATE, DELETE, UPDATE = "create", "delete", "update"
TASK_NAMES = {CREATE: "meetings.create", DELETE: "meetings.delete", UPDATE: "meetings.update"}
# A message may arrive this much before next_attempt_at (hosts' clocks differ from the
# database's by a little); earlier than that it is a stray and claims nothing.
CLAIM_EARLY = timedelta(seconds=1)

Send: TypeAlias = Callable[[str, dict[str, Any]], None]
"""Puts a task on the broker by name with these kwargs (``worker.celery_app.send``)."""


_JOBS = cast(Table, models.Job.__table__)
_NOW = func.now()
_LEASE = bindparam("b_lease", type_=Interval())
# What the work needs of a claimed job (recording.claim_of), and the database's clock.
_CLAIMED = (
    _JOBS.c.id,
    _JOBS.c.kind,
    _JOBS.c.user_id,
    _JOBS.c.body,
    _JOBS.c.marker,
    _JOBS.c.meeting_id,
    _JOBS.c.occurrence_id,
    _JOBS.c.after_job_id,
    _JOBS.c.attempts,
    _JOBS.c.deferrals,
    _JOBS.c.deliveries,
    _JOBS.c.on_done,
    _JOBS.c.priority,
    # The credential the job runs under: its token store, client and gate (worker.accounts).
    _JOBS.c.account,
)


def _claim_statement() -> Any:
    """The claim, built once (SQLAlchemy Core, bound parameters ``b_job_id``, ``b_token``,
    ``b_lease``): see :meth:`Ledger.claim`."""
    jobs = _JOBS.c
    old = (
        select(jobs.id, jobs.maybe_sent.label("was_maybe_sent"))
        .where(jobs.id == bindparam("b_job_id"))
        .with_for_update()
        .subquery()
    )
    claimable = or_(
        and_(
            jobs.status.in_([models.QUEUED, models.RETRYING, models.WAITING]),
            or_(jobs.next_attempt_at.is_(None), jobs.next_attempt_at <= _NOW + CLAIM_EARLY),
        ),
        # A holder whose lease ran out, or whose claim the sweeper revoked.
        and_(
            jobs.status == models.RUNNING,
            or_(jobs.lease_expires_at < _NOW, jobs.claim_token.is_(None)),
        ),
    )
    # An update runs once every older update of its meeting has ended (worker.updates).
    claimable = and_(claimable, or_(jobs.seq.is_(None), ~recording.older_update_unfinished()))
    return (
        update(_JOBS)
        .where(jobs.id == old.c.id, claimable)
        .values(
            status=models.RUNNING,
            claim_token=bindparam("b_token"),
            deliveries=jobs.deliveries + 1,
            maybe_sent=jobs.kind == CREATE,
            lease_expires_at=_NOW + _LEASE,
            started_at=func.coalesce(jobs.started_at, _NOW),
            updated_at=_NOW,
        )
        .returning(
            *_CLAIMED,
            old.c.was_maybe_sent,
            (_NOW - jobs.first_failed_at).label("failing_for"),
            (_NOW - jobs.created_at).label("age"),
        )
    )


_CLAIM = _claim_statement()
_FENCE = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("b_job_id"),
        _JOBS.c.claim_token == bindparam("b_token"),
        _JOBS.c.status == models.RUNNING,
    )
    .values(lease_expires_at=_NOW + _LEASE)
    .returning(_JOBS.c.id)
)


class Ledger:
    """The worker's side of the ledger, built once per process from Settings.

    ``lease`` is ``JOB_LEASE_SECONDS``; ``max_deliveries`` is ``JOB_MAX_DELIVERIES``; a wait
    longer than half of ``max_hold`` (``Settings.broker_hold_limit_s``) is parked in
    PostgreSQL instead of being a broker countdown (Redis would redeliver it early, RabbitMQ
    would close the worker's channel); ``send`` puts a task on the broker.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        lease: timedelta,
        max_deliveries: int,
        max_hold: timedelta,
        send: Send,
    ) -> None:
        self._sessions = sessions
        self._engine = sessions.kw["bind"]
        # Claim, fence and outcome run on one connection the process keeps, each as a single
        # autocommit statement compiled once: worker.held_connection.
        self._held = held_connection.HeldConnection(self._engine)
        self._claim = held_connection.RawStatement(_CLAIM, self._engine)
        self._fence = held_connection.RawStatement(_FENCE, self._engine)
        # The outcomes' statements (recording.Write), compiled at their first run.
        self._statements: dict[tuple[Any, ...], held_connection.RawStatement] = {}
        self.lease = lease
        self.max_deliveries = max_deliveries
        self.max_hold = max_hold
        self._send = send

    @classmethod
    def from_settings(cls, settings: Settings, send: Send) -> Ledger:
        """The ledger for these settings, sending tasks with ``send``."""
        return cls(
            db.sessions(settings),
            lease=timedelta(seconds=settings.JOB_LEASE_SECONDS),
            max_deliveries=settings.JOB_MAX_DELIVERIES,
            max_hold=timedelta(seconds=settings.broker_hold_limit_s),
            send=send,
        )

    # -- claim and fence -----------------------------------------------------------------

    def claim(self, job_id: uuid.UUID) -> Claim | None:
        """Take the job for this worker, or None when it is finished, held, or not yet due.

        A job is claimable when queued, retrying or waiting and due, or running with an
        expired lease or a claim the sweeper revoked (its worker died or froze). Each claim
        counts a delivery; past ``max_deliveries`` consecutive claims without an outcome the
        job is failed as poison (``gave_up``).
        """
        token = secrets.token_hex(16)
        parameters = {"b_job_id": job_id, "b_token": token, "b_lease": self.lease}
        # One statement in autocommit: a single round trip, no BEGIN or COMMIT of its own.
        result = self._held.run(self._claim, parameters)
        if result is None:
            return None
        job = recording.claim_of(result, token)
        if job.deliveries > self.max_deliveries:
            reason = (
                f"gave up: delivered {job.deliveries} times in a row without finishing "
                "(the worker died each time)"
            )
            # A create that died mid-call each time may have made a meeting: keep the mark.
            failed = Failed(reason, gave_up=True, maybe_sent=job.kind == CREATE)
            self._write(job, recording.failed(job, failed))
            log.error("job.poison job_id=%s %s", job.job_id, reason)
            self._wake_next_update(job)
            return None
        if job.deliveries > 1:
            log.warning("job.redelivered job_id=%s deliveries=%d", job.job_id, job.deliveries)
        return job

    def fence(self, job: Claim) -> None:
        """Prove this worker still holds the claim and extend its lease, in one statement;
        raise ClaimLost otherwise. Called right before every call that changes Zoom."""
        parameters = {"b_job_id": job.job_id, "b_token": job.token, "b_lease": self.lease}
        held = self._held.run(self._fence, parameters)
        if held is None:
            log.warning("job.claim_lost job_id=%s stopping before the call", job.job_id)
            raise errors.ClaimLost(f"job {job.job_id} is no longer held by this worker")

    # -- outcomes ------------------------------------------------------------------------

    def record(self, job: Claim, outcome: Outcome) -> bool:
        """Record what the attempt came to; False when this worker no longer holds the claim
        (then nothing is recorded, except a meeting it made: see the module's protocol)."""
        recorded = self._record(job, outcome)
        if recorded and isinstance(outcome, Succeeded | Failed):
            self._wake_next_update(job)
        return recorded

    def _record(self, job: Claim, outcome: Outcome) -> bool:
        match outcome:
            case Succeeded() if job.kind == UPDATE:
                # The meeting row's new schedule is read under its row lock: a transaction.
                with self._held.begin() as conn:
                    return recording.record_updated(conn, job, outcome)
            case Succeeded() if job.kind == CREATE:
                if self._write(job, recording.created(job, outcome)):
                    return True
                with self._held.begin() as conn:
                    recording.record_lost_create(conn, job, outcome)
                return False
            case Succeeded():
                return self._write(job, recording.deleted(job, outcome))
            case Failed():
                return self._write(job, recording.failed(job, outcome))
            case Retry() | Hold():
                # With a countdown on the broker the lease runs past the retry so the
                # sweeper stays away; a parked job's lease ends at the retry.
                lease = self.lease if self.countdown(outcome) is not None else timedelta()
                return self._write(job, recording.later(job, outcome, lease=lease))

    def _write(self, job: Claim, write: recording.Write) -> bool:
        """Run an outcome's statement; False when the claim was lost (nothing written).

        Alone in autocommit on the held connection, compiled once per shape: one round trip
        where a transaction took three (BEGIN, the statement, COMMIT). A job that names an
        ``on_done`` task gets its notification in the same transaction instead (the outbox
        row is built from the finished row, in Python)."""
        if job.on_done is not None:
            with self._held.begin() as conn:
                return recording.run(conn, job, write)
        statement = self._statements.get(write.shape)
        if statement is None:
            statement = held_connection.RawStatement(write.statement, self._engine)
            self._statements[write.shape] = statement
        held = self._held.run(statement, write.parameters) is not None
        return recording.claimed(held, job, write.what)

    def countdown(self, outcome: Retry | Hold) -> float | None:
        """Seconds until ``outcome.at`` when a broker countdown may carry the retry; None
        when the wait is parked in PostgreSQL for the sweeper (beyond half ``max_hold``,
        Redis would redeliver the countdown message early and run it twice, RabbitMQ would
        close the channel of the worker holding it)."""
        delay_s = max(0.0, (outcome.at - datetime.now(UTC)).total_seconds())
        return delay_s if delay_s <= self.max_hold.total_seconds() / 2 else None

    def reschedule(self, job: Claim, outcome: Outcome) -> Reschedule | None:
        """Record ``outcome``; for a retry or hold a broker countdown carries, the Reschedule
        the task raises (None otherwise, and when the claim was lost)."""
        recorded = self.record(job, outcome)
        if not recorded or not isinstance(outcome, Retry | Hold):
            return None
        countdown = self.countdown(outcome)
        return None if countdown is None else Reschedule(countdown, outcome.slot_at)

    def _wake_next_update(self, job: Claim) -> None:
        """An update of a meeting ended: dispatch the next one now, rather than leave it to
        the sweeper (its own message may have come, and found this one unfinished)."""
        if job.kind == UPDATE and job.meeting_id is not None:
            wake_next_update(self._sessions, job.meeting_id, self._send)

    # -- a delete that names its create job ------------------------------------------------

    def resolve_create(self, job: Claim) -> CreateResult:
        """For a delete that names its create job: what that create came to.

        A create that had not started is cancelled here (failed with the reason). The create
        row is locked meanwhile, so a worker cannot claim it halfway.
        """
        with self._sessions() as session, session.begin():
            create = session.get(JobRow, job.after_job_id, with_for_update=True)
            if create is None or create.status in (models.FAILED, models.CANCELLED):
                return CreateResult(CreateState.FAILED, None)
            if create.status == models.SUCCEEDED:
                return CreateResult(CreateState.MEETING, create.meeting_id)
            startable = [models.QUEUED, models.RETRYING, models.WAITING]
            if create.status in startable and create.claim_token is None and not create.maybe_sent:
                create.status = models.FAILED
                create.error = f"cancelled by delete job {job.job_id} before it ran"
                create.finished_at = create.updated_at = datetime.now(UTC)
                create.lease_expires_at = create.next_attempt_at = None
                session.flush()
                outbox.job_finished(session, create.id)
                log.info("job.cancelled job_id=%s by delete job %s", create.id, job.job_id)
                return CreateResult(CreateState.CANCELLED, None)
            return CreateResult(CreateState.PENDING, None)

    # -- the sweeper -----------------------------------------------------------------------

    def gone(self, meeting_id: int, occurrence_id: str | None) -> bool:
        """Whether the ledger knows the meeting (or the occurrence) is gone from Zoom already:
        deleted by a job, the cleanup, or Zoom's webhook (worker.webhook_events.is_gone)."""
        with self._sessions() as session:
            return webhook_events.is_gone(session, meeting_id, occurrence_id)

    def sweep(self, limit: int = 500) -> int:
        """Dispatch again every unfinished job whose lease has run out; returns how many.

        Rows are taken with ``FOR UPDATE SKIP LOCKED`` and their lease is pushed forward in
        the same statement, so two sweepers never dispatch the same job twice in one round.
        A running job's claim is revoked in that statement too, so the holder that outlived
        its lease fails its next fence and can no longer record an outcome, and the message
        dispatched here can claim the job.
        """
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
            # Revoking the claim changes nothing for queued, retrying and waiting jobs.
            .values(lease_expires_at=func.now() + self.lease, claim_token=None)
            .returning(
                JobRow.id,
                JobRow.kind,
                JobRow.status,
                JobRow.user_id,
                JobRow.topic,
                JobRow.meeting_id,
                JobRow.priority,
                JobRow.account,
            )
        )
        with self._sessions() as session, session.begin():
            rows = session.execute(statement).all()
        for job_id, kind, status, user_id, topic, meeting_id, priority, account in rows:
            log.info("job.sweep_dispatch job_id=%s status=%s", job_id, status)
            dispatch(
                job_id,
                kind,
                user_id=user_id,
                topic=topic,
                meeting_id=meeting_id,
                send=self._send,
                priority=priority,
                account=account,
            )
        return len(rows)

    def held_accounts(self, why: HoldReason) -> set[str]:
        """The credentials that have jobs held for ``why``."""
        with self._sessions() as session:
            return set(
                session.scalars(
                    select(JobRow.account)
                    .where(JobRow.status == models.WAITING, JobRow.held_for == why.value)
                    .distinct()
                )
            )

    def release_held(self, why: HoldReason, accounts: Collection[str] | None = None) -> int:
        """Make every job held for ``why`` due now (the sweeper then dispatches it); with
        ``accounts``, only the jobs of those credentials (another's stay held)."""
        where = [JobRow.status == models.WAITING, JobRow.held_for == why.value]
        if accounts is not None:
            if not accounts:
                return 0
            where.append(JobRow.account.in_(sorted(accounts)))
        with self._sessions() as session, session.begin():
            result = session.execute(
                update(JobRow)
                .where(*where)
                .values(next_attempt_at=func.now(), lease_expires_at=func.now())
            )
        released = int(result.rowcount)  # type: ignore[attr-defined]
        if released:
            log.info("job.released count=%d held_for=%s", released, why.value)
        return released


# -- what the producers' API and the cleanup use -------------------------------------------


def dispatch(
    job_id: uuid.UUID,
    kind: str,
    *,
    user_id: str | None,
    topic: str | None,
    meeting_id: int | None,
    send: Send,
    priority: str = priorities.DEFAULT,
    account: str = models.DEFAULT_CREDENTIAL,
) -> None:
    """Put the job on the broker, in its priority's queue (the router reads ``priority``,
    :func:`worker.priorities.route`); a broker failure leaves it to the sweeper, nothing lost."""
    try:
        send(
            *message(
                job_id,
                kind,
                user_id=user_id,
                topic=topic,
                meeting_id=meeting_id,
                priority=priority,
                account=account,
            )
        )
    except Exception as exc:  # kombu raises many types; the ledger row is what counts
        log.warning(
            "job.dispatch_failed job_id=%s the sweeper will dispatch it again: %s",
            job_id,
            type(exc).__name__,
        )


def message(
    job_id: uuid.UUID,
    kind: str,
    *,
    user_id: str | None,
    topic: str | None,
    meeting_id: int | None,
    priority: str = priorities.DEFAULT,
    account: str = models.DEFAULT_CREDENTIAL,
) -> tuple[str, dict[str, Any]]:
    """The task name and kwargs that put a job on the broker: the job id and what an operator
    needs in Flower, never the body or a secret; ``priority`` routes it to its queue. The
    credential's name is shown when it is not the default (the worker reads the job's own
    from the ledger at the claim, never from the message)."""
    kwargs: dict[str, Any] = {"job_id": str(job_id), "priority": priority}
    if account != models.DEFAULT_CREDENTIAL:
        kwargs["account"] = account
    if kind == CREATE:
        kwargs.update(user_id=user_id, topic=topic)
    else:
        kwargs.update(meeting_id=meeting_id)
    return TASK_NAMES[kind], kwargs


def message_of(row: JobRow) -> tuple[str, dict[str, Any]]:
    """:func:`message` for a job row."""
    return message(
        row.id,
        row.kind,
        user_id=row.user_id,
        topic=row.topic,
        meeting_id=row.meeting_id,
        priority=row.priority or priorities.DEFAULT,
        account=row.account or models.DEFAULT_CREDENTIAL,
    )


def wake_next_update(sessions: sessionmaker[Session], meeting_id: int, send: Send) -> None:
    """Dispatch the meeting's oldest unfinished update job, if any: its turn may have come."""
    with sessions() as session:
        following = session.execute(
            select(JobRow.id, JobRow.priority, JobRow.account)
            .where(
                JobRow.meeting_id == meeting_id,
                JobRow.seq.is_not(None),
                JobRow.status.not_in(models.FINAL_STATUSES),
            )
            .order_by(JobRow.seq)
            .limit(1)
        ).one_or_none()
    if following is not None:
        log.info("job.update_turn job_id=%s meeting_id=%s", following.id, meeting_id)
        dispatch(
            following.id,
            UPDATE,
            user_id=None,
            topic=None,
            meeting_id=meeting_id,
            send=send,
            priority=following.priority,
            account=following.account,
        )


def dispatch_row(row: JobRow, send: Send) -> None:
    """:func:`dispatch` for a job row just recorded (or put back to queued)."""
    dispatch(
        row.id,
        row.kind,
        user_id=row.user_id,
        topic=row.topic,
        meeting_id=row.meeting_id,
        send=send,
        priority=row.priority or priorities.DEFAULT,
        account=row.account or models.DEFAULT_CREDENTIAL,
    )


def topic_of(body: Mapping[str, Any]) -> str | None:
    """The topic of a create body, when it has one."""
    topic = body.get("topic")
    return topic if isinstance(topic, str) else None
