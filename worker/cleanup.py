"""Scheduled cleanup of stale meetings: delete what this service made and nobody needs.

Protocol
--------
1. A run holds the PostgreSQL advisory lock :data:`LOCK_KEY`, taken with
   ``pg_try_advisory_lock`` on a connection of its own in autocommit; without it (two beats
   by mistake, a run overlapping the next) the run returns at once, ``skipped_locked``.
2. Pages of live ledger rows whose ``scheduled_end`` is more than ``STALE_AFTER_MINUTES`` past
   are claimed in one short transaction (``FOR UPDATE SKIP LOCKED``, ``cleanup_claimed_until
   = now() + CLAIM_FOR``), keyset-ordered by ``(scheduled_end, meeting_id)``. The deletes run
   with no transaction open; each outcome is recorded in its own short transaction, only
   while the row still carries this run's claim (compare-and-swap on the claim's time).
3. Zoom is asked first (``GET /meetings/{id}``, a light call through the gate), because
   hosts move meetings and a series lives until its last occurrence
   (:func:`worker.schedule.zoom_end`): a meeting that now ends later, or never (type 3, a
   series with no end), is ``kept``: its ``scheduled_end`` becomes Zoom's (NULL: never stale)
   and it is looked at again then; one Zoom says has started is ``in_progress``; 404/3001 ->
   ``already_gone`` with no delete. Only then is it deleted: two calls per deleted meeting.
4. Delete: 204 or 404/3001 -> ``deleted``; 400/3007 "has ended" -> ``ended`` (final); in
   progress (3002, or started per the GET) -> stays ``live``, asked again after
   :data:`IN_PROGRESS_RETRY`; a 5xx or other 4xx (or an answer without a readable end) ->
   ``last_error``, tried next run. A meeting refused :data:`MAX_ATTEMPTS` times is given up:
   ``ended``, the reason in ``last_error``.
5. Every call is made through the credential that created the meeting (``meetings.account``:
   its client, token and gate, :mod:`worker.accounts`); a slot under :data:`MAX_WAIT_S` away
   is waited for in-process. A farther one, a 429, an open circuit or Zoom unreachable stops
   that credential: its meetings of the page are released while the others' are worked, then
   the run ends; the time budget stops the run at once. Unworked claims are released and the
   next scheduled run goes on.
6. Orphans: a create whose reply was lost and whose job then failed may have made a meeting
   the ledger never heard of. The recent (:data:`ORPHAN_WINDOW`) such jobs of at most
   :data:`ORPHAN_HOSTS_PER_RUN` hosts (:func:`worker.orphans.candidates`) are searched for
   with :func:`worker.marker.find`; a meeting carrying such a marker joins the ledger
   (linked to its job) and is deleted at once, whatever its schedule: nobody holds its
   join URL.

Only ledger meetings, and meetings on a job's host carrying one of our failed jobs' markers,
are ever deleted: foreign, future, recently ended, type 3 and endless series are never
touched. ``jobs`` stuck in a non-final state are the sweeper's (:func:`worker.ledger.sweep`).
``meetings`` is otherwise written by :mod:`worker.ledger` and, for what Zoom's webhooks report,
:mod:`worker.webhook_events`; cleanup owns the state transitions of stale meetings and the
orphan rows it adds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from worker import db, errors, marker, meetings, models, orphans, schedule, zoom
from worker.models import Meeting as MeetingRow

log = logging.getLogger(__name__)

# One key for the whole fleet: the first 8 bytes of a digest of the task's name.
LOCK_KEY = int.from_bytes(
    hashlib.blake2b(b"zoom-worker:meetings.cleanup_stale", digest_size=8).digest(), signed=True
)
# A claim outlives any sane run; if the run dies, the rows come back after this.
CLAIM_FOR = timedelta(minutes=30)
# A meeting in progress (3002) may go on for hours: ask again in an hour, not every run.
IN_PROGRESS_RETRY = timedelta(hours=1)
# Refusals (4xx) of one meeting before it is given up; 5xx never give a meeting up.
MAX_ATTEMPTS = 5
# A governor slot this close is waited for in-process; a farther one ends the run.
MAX_WAIT_S = 1.0
# Orphan search per run: one list call per host, only failed creates this recent.
ORPHAN_HOSTS_PER_RUN = 50
ORPHAN_WINDOW = timedelta(days=7)
IN_PROGRESS, HAS_ENDED = 3002, 3007


@dataclass(frozen=True)
class CleanupReport:
    """What one run did (counts of meetings). ``kept``: Zoom says it ends later (or never), so
    it stays, its ``scheduled_end`` corrected. ``deferred``: claimed but left for the next run
    because the run stopped (``stopped`` says why). Orphans are also counted by outcome;
    ``given_up`` ones also in ``in_progress`` or ``failed``. ``skipped_locked``: another run
    held the lock, nothing was done."""

    deleted: int = 0
    kept: int = 0
    already_gone: int = 0
    ended: int = 0
    in_progress: int = 0
    given_up: int = 0
    deferred: int = 0
    failed: int = 0
    orphans_found: int = 0
    orphans_deleted: int = 0
    skipped_locked: bool = False
    stopped: str | None = None


def cleanup_stale(
    runtime: meetings.Runtime, *, page_size: int = 200, time_budget_s: float | None = None
) -> CleanupReport:
    """Delete the stale meetings this service created, then the orphans of failed creates.

    Safe to run concurrently (all but one run return ``skipped_locked``), never holds a
    transaction across an API call, and returns early, releasing its claims, when the rate
    governor has no permit soon, Zoom cannot be called, or ``time_budget_s`` is spent.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    with _advisory_lock(db.get_engine(runtime.settings)) as held:
        if not held:
            log.info("cleanup.skipped_locked another run holds the cleanup lock")
            return CleanupReport(skipped_locked=True)
        run = _Run(runtime, time_budget_s)
        try:
            run.stale(page_size)
            run.orphan_pass()
        except _Stop as stop:
            run.stopped = str(stop)
            log.warning("cleanup.stopped reason=%s", stop)
    counts: dict[str, Any] = dict(run.counts)
    log.info("cleanup.finished %s", " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return dataclasses.replace(CleanupReport(stopped=run.stopped), **counts)


@contextlib.contextmanager
def _advisory_lock(engine: Engine) -> Iterator[bool]:
    # Autocommit: the session-level lock needs no transaction, so none stays open for the run.
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    held = False
    try:
        held = bool(conn.scalar(select(func.pg_try_advisory_lock(LOCK_KEY))))
        yield held
    finally:
        try:
            if held:
                conn.scalar(select(func.pg_advisory_unlock(LOCK_KEY)))
        except Exception:
            # It may still hold the lock: never hand it back to the pool (closing frees it).
            log.exception("cleanup.unlock_failed the connection is discarded")
            conn.invalidate()
        conn.close()


class _Stop(Exception):
    """Ends the run early; ``str(exc)`` says why."""


class _AccountStop(_Stop):
    """One credential cannot call Zoom now (no permit, refused, unreachable): the rest of the
    page goes on with the other credentials' meetings, then the run ends."""


@dataclass(frozen=True)
class _Claimed:
    meeting_id: int
    attempts: int
    until: datetime  # this run's claim: outcomes are recorded only while it is still there
    end: datetime | None = None  # scheduled_end, the keyset of the pages
    orphan: bool = False  # deleted whatever its schedule: nobody holds its join URL
    # The credential that created it: the only one Zoom is asked and told about it with.
    account: str = models.DEFAULT_CREDENTIAL


class _Run:
    def __init__(self, runtime: meetings.Runtime, time_budget_s: float | None) -> None:
        self.runtime = runtime
        self.client, self.gate, self.settings = runtime.client, runtime.gate, runtime.settings
        self.sessions = db.sessions(runtime.settings)
        self.deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
        self.counts: Counter[str] = Counter()
        self.stopped: str | None = None

    # -- stale meetings of the ledger ------------------------------------------------------

    def stale(self, page_size: int) -> None:
        page = self._claim_page(page_size, None)
        while page:
            self._work(page)
            if len(page) < page_size:
                return
            page = self._claim_page(page_size, (page[-1].end, page[-1].meeting_id))

    def _claim_page(self, page_size: int, cursor: tuple[Any, int] | None) -> list[_Claimed]:
        m, now = MeetingRow, func.now()
        stale_after = timedelta(minutes=self.settings.STALE_AFTER_MINUTES)
        due = select(m.meeting_id).where(
            m.state == models.LIVE,
            m.scheduled_end < now - stale_after,
            or_(m.cleanup_claimed_until.is_(None), m.cleanup_claimed_until < now),
        )
        if cursor is not None:
            due = due.where(tuple_(m.scheduled_end, m.meeting_id) > tuple_(*cursor))
        due = due.order_by(m.scheduled_end, m.meeting_id).limit(page_size)
        statement = (
            update(m)
            .where(m.meeting_id.in_(due.with_for_update(skip_locked=True).scalar_subquery()))
            .values(cleanup_claimed_until=now + CLAIM_FOR)
            .returning(
                m.scheduled_end,
                m.meeting_id,
                m.cleanup_attempts,
                m.cleanup_claimed_until,
                m.account,
            )
        )
        with self.sessions() as session, session.begin():
            rows = sorted(session.execute(statement).all())
        return [
            _Claimed(mid, n, until, end, account=account)
            for end, mid, n, until, account in rows
            if until
        ]

    def _work(self, page: list[_Claimed]) -> int:
        """Delete each claimed meeting in turn; on the way out release what is left. A
        credential that cannot call Zoom has its meetings of the page released while the
        others' are worked, then the run ends (one account's trouble holds only its own)."""
        gone = 0
        stopped: dict[str, _AccountStop] = {}
        for index, row in enumerate(page):
            try:
                self._check_budget()
                if row.account in stopped:
                    self.counts["deferred"] += self._release([row])
                    continue
                gone += self._settle(row)
            except _AccountStop as stop:
                stopped[row.account] = stop
                self.counts["deferred"] += self._release([row])
            except BaseException as exc:
                released = self._release(page[index:])
                if isinstance(exc, _Stop):
                    self.counts["deferred"] += released
                raise
        if stopped:
            raise next(iter(stopped.values()))
        return gone

    def _check_budget(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _Stop("the run's time budget is spent")

    def _release(self, rows: list[_Claimed]) -> int:
        m, claims = MeetingRow, [(row.meeting_id, row.until) for row in rows]
        mine = tuple_(m.meeting_id, m.cleanup_claimed_until).in_(claims)
        with self.sessions() as session, session.begin():
            result = session.execute(update(m).where(mine).values(cleanup_claimed_until=None))
        return int(result.rowcount)  # type: ignore[attr-defined]

    # -- one delete and what Zoom's answer means -------------------------------------------

    def _use(self, account: str) -> None:
        """Call Zoom with ``account``'s client and gate: a meeting is only ever asked about
        and deleted through the credential that created it."""
        found = self.runtime.account(account)
        self.client, self.gate = found.client, found.gate

    def _settle(self, row: _Claimed) -> bool:
        """Ask Zoom, then delete the meeting only if it has ended; True when it is gone."""
        try:
            self._use(row.account)
        except errors.InvalidCredential as exc:
            return self._refused(row, f"its credential is gone: {exc}", None)
        if not row.orphan:
            outcome = self._ask_zoom(row)
            if outcome is not None:
                return outcome
        return self._delete(row)

    def _ask_zoom(self, row: _Claimed) -> bool | None:
        """Read the meeting: None when it may be deleted, else the recorded outcome."""
        try:
            self._permit("get")
            end = schedule.zoom_end(self.client.get_meeting(row.meeting_id))
        except errors.MeetingNotFound:
            self._record(row, "already_gone", state=models.DELETED, deleted_at=func.now())
            return True
        except ValueError as exc:
            return self._refused(row, f"unreadable answer: {exc}", None)
        except (errors.ZoomClientError, errors.ZoomServerError) as exc:
            return self._refused(
                row, exc.describe(), exc.code, isinstance(exc, errors.ZoomClientError)
            )
        except errors.ZoomWorkerError as exc:
            raise self._call_failed("get", exc) from exc
        if end.in_progress:
            text = "in progress: Zoom says it has started (its delete would be refused, 3002)"
            return self._refused(row, text, IN_PROGRESS)
        stale_after = timedelta(minutes=self.settings.STALE_AFTER_MINUTES)
        if end.at is None or end.at > datetime.now(UTC) - stale_after:
            self._record(row, "kept", attempt=False, scheduled_end=end.at, last_error=None)
            return False
        return None

    def _delete(self, row: _Claimed) -> bool:
        """Delete one claimed meeting and record the outcome; True when it is gone."""
        now = func.now()
        try:
            self._permit("delete")
            self.client.delete_meeting(row.meeting_id)
        except errors.MeetingNotFound:
            self._record(row, "already_gone", state=models.DELETED, deleted_at=now)
            return True
        except (errors.ZoomClientError, errors.ZoomServerError) as exc:
            return self._refused(
                row, exc.describe(), exc.code, isinstance(exc, errors.ZoomClientError)
            )
        except errors.ZoomWorkerError as exc:
            raise self._call_failed("delete", exc) from exc
        self._record(row, "deleted", state=models.DELETED, deleted_at=now)
        return True

    def _refused(self, row: _Claimed, text: str, code: int | None, counts: bool = True) -> bool:
        """Record why the meeting stays; ``counts``: a refusal that may give it up (not 5xx)."""
        if code == HAS_ENDED:
            self._record(row, "ended", state=models.ENDED, last_error=text)
            return False
        event = "in_progress" if code == IN_PROGRESS else "failed"
        attempts = row.attempts + 1
        if counts and attempts >= MAX_ATTEMPTS:
            self.counts[event] += 1
            reason = f"gave up after {attempts} attempts: {text}"
            self._record(row, "given_up", state=models.ENDED, last_error=reason)
            return False
        retry = func.now() + IN_PROGRESS_RETRY if event == "in_progress" else None
        self._record(row, event, cleanup_claimed_until=retry, last_error=text)
        return False

    def _record(self, row: _Claimed, event: str, *, attempt: bool = True, **values: Any) -> None:
        m = MeetingRow
        values.setdefault("cleanup_claimed_until", None)
        if attempt:
            values["cleanup_attempts"] = m.cleanup_attempts + 1
        with self.sessions() as session, session.begin():
            result = session.execute(
                update(m)
                .where(m.meeting_id == row.meeting_id, m.cleanup_claimed_until == row.until)
                .values(**values)
            )
        if not result.rowcount:  # type: ignore[attr-defined]
            log.warning("cleanup.claim_lost meeting_id=%s %s not recorded", row.meeting_id, event)
        self.counts[event] += 1
        error = values.get("last_error")
        log.info("cleanup.%s meeting_id=%s%s", event, row.meeting_id, f" {error}" if error else "")

    def _permit(self, operation: str) -> None:
        try:
            try:
                self.gate.before_call(operation)
            except errors.Deferred as exc:
                wait_s = (exc.retry_at - datetime.now(UTC)).total_seconds()
                if exc.slot_at is None or wait_s > MAX_WAIT_S:
                    raise
                time.sleep(max(0.0, wait_s))  # a slot this close is ours: use it
                self.gate.before_call(operation, None, exc.slot_at)
            self.gate.admit(operation)
        except errors.ZoomWorkerError as exc:
            raise _AccountStop(f"no {operation} permit: {exc}") from exc

    def _call_failed(self, operation: str, exc: errors.ZoomWorkerError) -> _AccountStop:
        if isinstance(exc, errors.RateLimited):
            self.gate.rate_limited(operation, exc, None)
        text = exc.describe() if isinstance(exc, errors.ZoomError) else str(exc)
        return _AccountStop(f"Zoom could not be called ({operation}): {text}")

    # -- orphans of failed creates ---------------------------------------------------------

    def orphan_pass(self) -> None:
        candidates = orphans.candidates(self.sessions, ORPHAN_WINDOW, ORPHAN_HOSTS_PER_RUN)
        for (account, host), lost in candidates.items():
            self._check_budget()
            try:
                self._use(account)
            except errors.InvalidCredential:
                continue  # its credential was removed: nothing can list the host's meetings
            for meeting, job in self._find(host, lost):
                self.counts["orphans_found"] += 1
                log.warning("cleanup.orphan_found meeting_id=%s job_id=%s", meeting.id, job.job_id)
                row = self._adopt(host, meeting, job)
                if row is not None:
                    self.counts["orphans_deleted"] += self._work([row])

    def _find(self, host: str, lost: list[orphans.Lost]) -> list[tuple[zoom.Meeting, orphans.Lost]]:
        """Meetings of ``host`` carrying one of ``lost``'s markers (:func:`marker.find`)."""
        by_marker = {job.wanted.marker: job for job in lost}
        try:
            found = marker.find(self.client, self._permit, host, [j.wanted for j in lost])
        except (errors.ZoomClientError, errors.ZoomServerError) as exc:
            self.counts["failed"] += 1
            log.warning("cleanup.orphan_list_failed jobs=%d %s", len(lost), exc.describe())
            return []
        except errors.ZoomWorkerError as exc:
            raise self._call_failed("list", exc) from exc
        return [(meeting, by_marker[key]) for key, meeting in found.items()]

    def _adopt(self, host: str, meeting: zoom.Meeting, job: orphans.Lost) -> _Claimed | None:
        """Add the orphan to the ledger, linked to its job, and claim it; None when the ledger
        already knows the meeting under another job, or another claim holds it."""
        m, now = MeetingRow, func.now()
        add = insert(m).values(
            meeting_id=meeting.id,
            job_id=job.job_id,
            account=job.account,
            user_id=host,
            topic=(meeting.topic or "")[:200] or None,
            duration_min=meeting.duration,
            scheduled_end=job.scheduled_end,
        )
        claim = (
            update(m)
            .where(
                m.meeting_id == meeting.id,
                m.job_id == job.job_id,
                m.state == models.LIVE,
                or_(m.cleanup_claimed_until.is_(None), m.cleanup_claimed_until < now),
            )
            .values(cleanup_claimed_until=now + CLAIM_FOR)
            .returning(m.cleanup_attempts, m.cleanup_claimed_until)
        )
        with self.sessions() as session, session.begin():
            session.execute(add.on_conflict_do_nothing(index_elements=[m.meeting_id]))
            claimed = session.execute(claim).one_or_none()
        until = claimed[1] if claimed else None
        if not claimed or not until:
            return None
        return _Claimed(meeting.id, claimed[0], until, orphan=True, account=job.account)
