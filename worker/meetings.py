"""The work for one claimed job: create or delete a meeting, and decide what a failure means.

Finding a meeting whose create reply was lost
---------------------------------------------
Zoom has no idempotency key, so each create carries a correlation marker in its agenda.
Before a create is retried after an unknown outcome (a timeout or dropped connection after
sending, a 5xx, a worker killed mid-call) the meeting is looked for with the one search of
:mod:`worker.marker`, and adopted instead of creating a second one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from worker import errors, ledger, marker, models, zoom
from worker.config import Settings
from worker.token_store import TokenStore

log = logging.getLogger(__name__)

# How often a delete looks again at a create job that is still running.
CREATE_WAIT = timedelta(seconds=2)


class Gate(Protocol):
    """Asked before every Zoom call: the fleet's rate governor, or an open gate."""

    def before_call(
        self, operation: str, user_id: str | None = None, slot_at: float | None = None
    ) -> None:
        """Return when the call may go now; raise Deferred or DailyLimitReached otherwise.

        ``slot_at`` is a slot reserved by an earlier run of the same task."""
        ...

    def rate_limited(self, operation: str, exc: errors.RateLimited, user_id: str | None) -> None:
        """Zoom answered 429 anyway: tell the whole fleet."""
        ...


class OpenGate:
    """No governor: every call may go (``RATE_GOVERNOR=false``)."""

    def before_call(
        self, operation: str, user_id: str | None = None, slot_at: float | None = None
    ) -> None:
        """Always let the call go."""

    def rate_limited(self, operation: str, exc: errors.RateLimited, user_id: str | None) -> None:
        """Nothing to tell."""


@dataclass(frozen=True)
class Runtime:
    """What the work needs in a worker process."""

    settings: Settings
    client: zoom.ZoomClient
    gate: Gate
    store: TokenStore


@dataclass(frozen=True)
class Reschedule:
    """Run the task again after ``countdown_s`` (a broker countdown, never past the
    visibility timeout); ``slot_at`` is a rate permit reserved for that run."""

    countdown_s: float
    slot_at: float | None = None


def run(job: ledger.Claim, runtime: Runtime, *, slot_at: float | None = None) -> Reschedule | None:
    """Carry out the claimed job and record its outcome; a Reschedule asks for a retry.

    ``slot_at`` is a rate permit a previous run reserved; the first call uses it."""
    attempt = _Attempt(job, runtime, slot_at)
    try:
        if job.kind == ledger.CREATE:
            attempt.create()
        else:
            attempt.delete()
    except Exception as exc:  # every failure is decided in one place, below
        return _on_failure(attempt, exc)
    return None


class _Attempt:
    def __init__(self, job: ledger.Claim, runtime: Runtime, slot_at: float | None) -> None:
        self.job = job
        self.slot_at = slot_at
        self.client = runtime.client
        self.gate = runtime.gate
        self.settings = runtime.settings
        self.create_sent = False
        self.reconciled = False

    def create(self) -> None:
        job = self.job
        assert job.user_id is not None and job.marker is not None
        if job.maybe_sent:
            found = self._find_lost_meeting()
            self.reconciled = True
            if found is not None:
                log.warning(
                    "meeting.adopted job_id=%s meeting_id=%s a lost reply had made it",
                    job.job_id,
                    found.id,
                )
                ledger.record_created(job, found.id, found.join_url, adopted=True)
                return
            log.info("meeting.reconciled job_id=%s no meeting made before; creating", job.job_id)
        body = marker.create_body(job.body, job.marker)
        self._permit("create", job.user_id)
        self.create_sent = True
        meeting = self.client.create_meeting(job.user_id, body)
        log.info("meeting.created job_id=%s meeting_id=%s", job.job_id, meeting.id)
        ledger.record_created(job, meeting.id, meeting.join_url, adopted=False)

    def delete(self) -> None:
        job = self.job
        meeting_id = job.meeting_id
        if meeting_id is None:
            outcome, meeting_id = ledger.resolve_create(job)
            if outcome == "pending":
                raise errors.Deferred(
                    f"the create job {job.after_job_id} has not finished",
                    retry_at=datetime.now(UTC) + CREATE_WAIT,
                    slot_at=None,
                )
            if meeting_id is None:
                note = f"nothing to delete: the create job {outcome}"
                log.info("meeting.nothing_to_delete job_id=%s create %s", job.job_id, outcome)
                ledger.record_deleted(job, already_gone=True, note=note)
                return
        self._permit("delete")
        try:
            self.client.delete_meeting(meeting_id, occurrence_id=job.occurrence_id)
        except errors.MeetingNotFound:
            log.info("meeting.already_gone job_id=%s meeting_id=%s", job.job_id, meeting_id)
            ledger.record_deleted(job, already_gone=True, meeting_id=meeting_id)
            return
        log.info("meeting.deleted job_id=%s meeting_id=%s", job.job_id, meeting_id)
        ledger.record_deleted(job, already_gone=False, meeting_id=meeting_id)

    def _permit(self, operation: str, user_id: str | None = None) -> None:
        slot_at, self.slot_at = self.slot_at, None  # a reserved slot serves one call
        self.gate.before_call(operation, user_id, slot_at)

    def _find_lost_meeting(self) -> zoom.Meeting | None:
        job = self.job
        assert job.user_id is not None and job.marker is not None
        host = marker.host_of(job.user_id, job.body)
        marker.check_searchable(job.body, job.marker, host)
        found = marker.find(
            self.client, self._permit, host, [marker.Wanted.of(job.body, job.marker)]
        )
        return found.get(job.marker)


# -- what a failure means ------------------------------------------------------------------

CONFIG_ADVICE = (
    "configuration error: the Zoom app's token lacks a scope this call needs; add the "
    "meeting:write/read/delete scopes to the app in the Zoom App Marketplace"
)


@dataclass(frozen=True)
class _Decision:
    reason: str
    retry_at: datetime | None = None  # None: fail for good
    status: str = models.RETRYING
    counts_as_attempt: bool = True
    slot_at: float | None = None
    held_for: str | None = None


def _on_failure(attempt: _Attempt, exc: Exception) -> Reschedule | None:
    job, settings = attempt.job, attempt.settings
    decision = _decide(attempt, exc)
    exhausted = job.attempts + 1 >= settings.JOB_MAX_ATTEMPTS
    if decision.retry_at is not None and decision.counts_as_attempt and exhausted:
        decision = _Decision(
            f"gave up after {job.attempts + 1} attempts; last error: {decision.reason}"
        )
    maybe_sent = (job.maybe_sent and not attempt.reconciled) or (
        attempt.create_sent and _outcome_unknown(exc)
    )
    if decision.retry_at is None:
        log.warning("job.failed job_id=%s %s", job.job_id, decision.reason)
        ledger.record_failed(job, decision.reason, maybe_sent=maybe_sent)
        return None
    delay_s = max(0.0, (decision.retry_at - datetime.now(UTC)).total_seconds())
    # A countdown longer than the broker's visibility timeout would be redelivered early
    # and run twice; such waits are parked in PostgreSQL for the sweeper instead.
    on_broker = delay_s <= settings.CELERY_VISIBILITY_TIMEOUT / 2
    recorded = ledger.record_retry(
        job,
        decision.reason,
        retry_at=decision.retry_at,
        status=decision.status,
        counts_as_attempt=decision.counts_as_attempt,
        maybe_sent=maybe_sent,
        on_broker=on_broker,
        held_for=decision.held_for,
    )
    log.info(
        "job.%s job_id=%s in=%.2fs attempt=%s reason=%s",
        decision.status,
        job.job_id,
        delay_s,
        decision.counts_as_attempt,
        decision.reason,
    )
    if not recorded or not on_broker:
        return None
    return Reschedule(countdown_s=delay_s, slot_at=decision.slot_at)


def _outcome_unknown(exc: Exception) -> bool:
    """True when a create that raised this may nevertheless have made the meeting."""
    if isinstance(exc, errors.ZoomUnreachable):
        return exc.maybe_sent
    if isinstance(exc, errors.ZoomServerError):
        return True
    return not isinstance(exc, errors.ZoomWorkerError)


def _backoff(attempt: _Attempt, exponent: int) -> datetime:
    settings = attempt.settings
    ceiling = min(settings.RETRY_BACKOFF_MAX, settings.RETRY_BACKOFF_BASE * 2 ** max(0, exponent))
    return datetime.now(UTC) + timedelta(seconds=random.uniform(ceiling / 2, ceiling))


_DecideFn = Callable[[_Attempt, Any], _Decision]


def _decide(attempt: _Attempt, exc: Exception) -> _Decision:
    for kind, decide in _DECISIONS:
        if isinstance(exc, kind):
            return decide(attempt, exc)
    reason = f"unexpected error: {type(exc).__name__}: {str(exc)[:300]}"
    log.exception("job.unexpected_error job_id=%s", attempt.job.job_id, exc_info=exc)
    return _Decision(reason, _backoff(attempt, attempt.job.attempts))


def _deferred(attempt: _Attempt, exc: errors.Deferred) -> _Decision:
    return _Decision(f"waiting: {exc}", exc.retry_at, counts_as_attempt=False, slot_at=exc.slot_at)


def _daily(attempt: _Attempt, exc: errors.DailyLimitReached) -> _Decision:
    attempt.gate.rate_limited("create", exc, attempt.job.user_id)
    until = exc.retry_at or zoom.next_utc_midnight()
    reason = (
        f"waiting: host {attempt.job.user_id} reached Zoom's daily limit of meeting "
        f"creates/updates; resumes at {until:%Y-%m-%d %H:%M} UTC"
    )
    return _Decision(
        reason, until, status=models.WAITING, counts_as_attempt=False, held_for="host_daily"
    )


def _rate_limited(attempt: _Attempt, exc: errors.RateLimited) -> _Decision:
    operation = "create" if attempt.job.kind == ledger.CREATE else "delete"
    attempt.gate.rate_limited(operation, exc, attempt.job.user_id)
    retry_at = exc.retry_at or _backoff(attempt, min(attempt.job.deferrals, 6))
    return _Decision(
        "rate limited by Zoom (429); waiting it out", retry_at, counts_as_attempt=False
    )


def _circuit(attempt: _Attempt, exc: errors.CircuitOpen) -> _Decision:
    retry_at = exc.retry_at or datetime.now(UTC) + timedelta(minutes=1)
    return _Decision(
        f"waiting: {exc.reason}",
        retry_at,
        status=models.WAITING,
        counts_as_attempt=False,
        held_for="credentials",
    )


def _budget(attempt: _Attempt, exc: errors.TokenBudgetExhausted) -> _Decision:
    return _Decision(
        f"waiting: {exc}", exc.retry_at, status=models.WAITING, counts_as_attempt=False
    )


def _configuration(attempt: _Attempt, exc: errors.ConfigurationError) -> _Decision:
    retry_at = datetime.now(UTC) + timedelta(minutes=1)
    return _Decision(
        f"waiting: configuration error: {exc}",
        retry_at,
        status=models.WAITING,
        counts_as_attempt=False,
    )


def _transient(attempt: _Attempt, exc: errors.ZoomWorkerError) -> _Decision:
    text = exc.describe() if isinstance(exc, errors.ZoomError) else str(exc)
    return _Decision(text, _backoff(attempt, attempt.job.attempts))


def _final(prefix: str) -> _DecideFn:
    def decide(attempt: _Attempt, exc: errors.ZoomWorkerError) -> _Decision:
        text = exc.describe() if isinstance(exc, errors.ZoomError) else str(exc)
        return _Decision(f"{prefix}{text}")

    return decide


# Order matters: subclasses before their bases.
_DECISIONS: list[tuple[type[Exception], _DecideFn]] = [
    (errors.InvalidMeeting, _final("invalid job: ")),
    (errors.Deferred, _deferred),
    (errors.DailyLimitReached, _daily),
    (errors.RateLimited, _rate_limited),
    (errors.CircuitOpen, _circuit),
    (errors.TokenBudgetExhausted, _budget),
    (errors.ConfigurationError, _configuration),
    (errors.MissingScopes, _final(CONFIG_ADVICE + "; Zoom said: ")),
    (errors.ZoomClientError, _final("Zoom refused the request: ")),
    (errors.ZoomError, _transient),
    (errors.InfrastructureError, _transient),
]
