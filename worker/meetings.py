"""The work for one claimed job: create, update (:mod:`worker.updates`) or delete a meeting,
and decide what a failure means.

Finding a meeting whose create reply was lost
---------------------------------------------
Zoom has no idempotency key, so each create carries a correlation marker in its agenda.
Before a create is retried after an unknown outcome (a timeout or dropped connection after
sending, a 5xx, a worker killed mid-call) the meeting is looked for with the one search of
:mod:`worker.marker`, and adopted instead of creating a second one.

What a failure means
--------------------
:func:`decide` turns the exception an attempt raised into an :mod:`worker.outcomes` value;
it has no side effects (the "a 429 tells the fleet's gate" step is one call after it, in
:func:`run`), so it is tested as a table. A 4xx that says the job is wrong fails at once;
Zoom or our infrastructure being unwell (5xx, no answer, Redis, the token store, the
database) is retried with full-jitter backoff until ``JOB_GIVE_UP_AFTER`` has passed since
the first failed attempt (a failed token request waits for the fleet's next one, its
``retry_at``); rate limits, the credential circuit, the token budget and a configuration
error hold the job without counting. An unexpected error is retried at most
``JOB_MAX_ATTEMPTS`` times. A claim lost before a call stops the attempt with nothing recorded.

When Zoom fails for the whole fleet, the jobs wait together: an attempt asks the outage
breaker (:mod:`worker.outage`) with its first rate permit (in the permit's round trip when
the breaker's Redis is the governor's) and :func:`run` tells it afterwards how Zoom answered;
while it is open no call is made, no permit spent, and the job is held
(``HoldReason.ZOOM_OUTAGE``, no attempt spent, but the time counts against
``JOB_GIVE_UP_AFTER``: Zoom is failing). An attempt that calls nothing (a delete waiting for
its create, or of a meeting already gone) does not ask.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy.exc

from worker import errors, gate, ledger, marker, outage, runtime, updates, zoom
from worker.accounts import Account
from worker.config import Settings
from worker.outcomes import Failed, Hold, HoldReason, Outcome, Reschedule, Retry, Succeeded
from worker.token_store import TokenStore, Unconfigured

log = logging.getLogger(__name__)

# How long a delete first waits for the create job it names; doubled at each wait.
CREATE_WAIT = timedelta(seconds=2)


# The gate's protocol and the open gate live in worker.gate, the Runtime in worker.runtime;
# these names stay for callers.
Gate = gate.Gate
OpenGate = gate.OpenGate
Runtime = runtime.Runtime


def run(job: ledger.Claim, runtime: Runtime, *, slot_at: float | None = None) -> Reschedule | None:
    """Carry out the claimed job and record its outcome; a Reschedule asks for a retry.

    ``slot_at`` is a rate permit a previous run reserved; the first call uses it."""
    attempt = _Attempt(job, runtime, slot_at)
    try:
        work = {ledger.CREATE: attempt.create, ledger.UPDATE: attempt.update}
        outcome = work.get(job.kind, attempt.delete)()
        # Zoom answered well, unless the attempt had nothing to ask it (a delete waiting).
        runtime.outage.report(attempt.check.ticket, healthy=True if attempt.called else None)
    except errors.ClaimLost:
        runtime.outage.report(attempt.check.ticket, healthy=None)
        return None  # another worker has the job now: nothing to call, nothing to record
    except Exception as exc:  # every failure is decided in one place: decide()
        if not isinstance(exc, errors.ZoomWorkerError | sqlalchemy.exc.OperationalError):
            log.exception("job.unexpected_error job_id=%s", job.job_id, exc_info=exc)
        healthy = False if zoom_unwell(exc) else None
        runtime.outage.report(attempt.check.ticket, healthy=healthy)
        outcome = decide(
            exc, job, runtime.settings, sent=attempt.create_sent, reconciled=attempt.reconciled
        )
        if isinstance(exc, errors.RateLimited):
            _tell_gate(attempt.gate, job, exc)
    _log_outcome(job, outcome)
    return runtime.ledger.reschedule(job, outcome)


class _Attempt:
    def __init__(self, job: ledger.Claim, runtime: Runtime, slot_at: float | None) -> None:
        self.job = job
        self.slot_at = slot_at
        self.runtime = runtime
        self._account: Account | None = None
        self.ledger = runtime.ledger
        self.settings = runtime.settings
        self.create_sent = False
        self.reconciled = False
        self.called = False  # a Zoom call was let through the gate
        # While Zoom fails for the fleet, wait together: asked with the first permit.
        self.check = outage.Check(runtime.outage)

    # The job's credential is looked up on first use, inside run()'s decisions: a credential
    # removed since the job was enqueued fails the job there, saying so.
    @property
    def account(self) -> Account:
        if self._account is None:
            self._account = self.runtime.account(self.job.account)
        return self._account

    @property
    def client(self) -> zoom.ZoomClient:
        return self.account.client

    @property
    def store(self) -> TokenStore | Unconfigured:
        return self.account.store

    @property
    def gate(self) -> Gate:
        return self.account.gate

    def create(self) -> Outcome:
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
                note = "adopted the meeting a lost reply had made"
                return Succeeded(found.id, found.join_url, note=note)
            log.info("meeting.reconciled job_id=%s no meeting made before; creating", job.job_id)
        body = marker.create_body(job.body, job.marker)
        # The token first: a create permit also counts against the host's daily cap, and a
        # token endpoint that is down must not spend a host's 100 creates a day.
        self.store.get()
        self._permit("create", job.user_id)
        self.ledger.fence(job)
        self.gate.admit("create", job.priority)  # last: the call leaves as the pacing admits it
        self.create_sent = True
        meeting = self.client.create_meeting(job.user_id, body)
        log.info("meeting.created job_id=%s meeting_id=%s", job.job_id, meeting.id)
        return Succeeded(meeting.id, meeting.join_url)

    def delete(self) -> Outcome:
        job = self.job
        meeting_id = job.meeting_id
        if meeting_id is None:
            state, meeting_id = self.ledger.resolve_create(job)
            if state is ledger.CreateState.PENDING:
                return wait_for_create(job, self.settings, datetime.now(UTC))
            if meeting_id is None:
                log.info("meeting.nothing_to_delete job_id=%s create %s", job.job_id, state)
                return Succeeded(None, note=f"nothing to delete: the create job {state}")
        if self.ledger.gone(meeting_id, job.occurrence_id):
            # Zoom's webhook (or an earlier delete) said so: no call, no rate permit spent.
            log.info("meeting.already_gone job_id=%s meeting_id=%s ledger", job.job_id, meeting_id)
            return Succeeded(meeting_id, note="the meeting was already gone")
        self._permit("delete")
        self.ledger.fence(job)
        self.gate.admit("delete", job.priority)
        try:
            self.client.delete_meeting(meeting_id, occurrence_id=job.occurrence_id)
        except errors.MeetingNotFound:
            log.info("meeting.already_gone job_id=%s meeting_id=%s", job.job_id, meeting_id)
            return Succeeded(meeting_id, note="the meeting was already gone")
        log.info("meeting.deleted job_id=%s meeting_id=%s", job.job_id, meeting_id)
        return Succeeded(meeting_id)

    def update(self) -> Outcome:
        return updates.patch(self.job, self.client, self.ledger, self._permit, self.gate.admit)

    def _permit(
        self, operation: str, user_id: str | None = None, meeting_id: int | None = None
    ) -> None:
        slot_at, self.slot_at = self.slot_at, None  # a reserved slot serves one call
        priority = self.job.priority
        self.gate.checked_call(self.check, operation, user_id, slot_at, priority, meeting_id)
        self.called = True

    def _find_lost_meeting(self) -> zoom.Meeting | None:
        job = self.job
        assert job.user_id is not None and job.marker is not None
        host = marker.host_of(job.user_id, job.body)
        marker.check_searchable(job.body, job.marker, host)
        found = marker.find(
            self.client, self._permit, host, [marker.Wanted.of(job.body, job.marker)]
        )
        return found.get(job.marker)


def wait_for_create(job: ledger.Claim, settings: Settings, now: datetime) -> Outcome:
    """A delete whose create job is still running waits for it, a little longer each time,
    and gives up once the delete is older than ``JOB_GIVE_UP_AFTER``."""
    budget_s = settings.JOB_GIVE_UP_AFTER
    if job.age.total_seconds() > budget_s:
        return Failed(
            f"gave up: the create job {job.after_job_id} did not finish within "
            f"JOB_GIVE_UP_AFTER ({budget_s:g}s)",
            gave_up=True,
        )
    wait_s = min(
        settings.RETRY_BACKOFF_MAX, CREATE_WAIT.total_seconds() * 2 ** min(job.deferrals, 16)
    )
    reason = f"waiting: the create job {job.after_job_id} has not finished"
    return Hold(now + timedelta(seconds=wait_s), HoldReason.CREATE_PENDING, reason)


def zoom_unwell(exc: Exception) -> bool:
    """True when ``exc`` says Zoom itself is unwell (a 5xx, or no answer at all): what the
    outage breaker counts. A 4xx is about the job; the token endpoint's error answers
    (TokenRequestFailed) have their own pacing in worker.token_budget."""
    return isinstance(exc, errors.ZoomServerError | errors.ZoomUnreachable)


def _tell_gate(gate: Gate, job: ledger.Claim, exc: errors.RateLimited) -> None:
    """Zoom answered 429 anyway: the whole fleet slows down (a governor outage is only logged:
    the job's own outcome is already decided)."""
    operation = job.kind  # "create", "update" or "delete": the gate's operation names
    try:
        gate.rate_limited(operation, exc, job.user_id)
    except errors.InfrastructureError as failure:
        log.warning("gate.unreachable job_id=%s %s", job.job_id, failure)


def _log_outcome(job: ledger.Claim, outcome: Outcome) -> None:
    match outcome:
        case Failed(reason=reason):
            log.warning("job.failed job_id=%s %s", job.job_id, reason)
        case Retry(at=at, reason=reason) | Hold(at=at, reason=reason):
            delay_s = (at - datetime.now(UTC)).total_seconds()
            kind = "retrying" if isinstance(outcome, Retry) else "held"
            log.info("job.%s job_id=%s in=%.2fs reason=%s", kind, job.job_id, delay_s, reason)


# -- what a failure means ------------------------------------------------------------------

CONFIG_ADVICE = (
    "configuration error: the Zoom app's token lacks a scope this call needs; add the "
    "meeting:write/read/delete scopes to the app in the Zoom App Marketplace"
)
# A transient failure: Zoom or our own infrastructure is unwell, not the job.
TRANSIENT: tuple[type[Exception], ...] = (
    errors.ZoomError,
    errors.InfrastructureError,
    sqlalchemy.exc.OperationalError,
)

Jitter = Callable[[float, float], float]


@dataclass(frozen=True)
class _Case:
    exc: Any
    job: ledger.Claim
    settings: Settings
    maybe_sent: bool
    now: datetime
    jitter: Jitter

    def backoff(self, exponent: int) -> datetime:
        """Full jitter: anywhere from now to the capped exponential step."""
        base, cap = self.settings.RETRY_BACKOFF_BASE, self.settings.RETRY_BACKOFF_MAX
        ceiling = min(cap, base * 2 ** min(max(0, exponent), 32))
        return self.now + timedelta(seconds=self.jitter(0, ceiling))

    def hold(
        self, at: datetime, why: HoldReason, reason: str, slot_at: float | None = None
    ) -> Hold:
        return Hold(at, why, reason, maybe_sent=self.maybe_sent, slot_at=slot_at)

    def fail(self, reason: str) -> Failed:
        return Failed(reason, maybe_sent=self.maybe_sent)


def decide(
    exc: Exception,
    job: ledger.Claim,
    settings: Settings,
    *,
    sent: bool,
    reconciled: bool = False,
    now: datetime | None = None,
    jitter: Jitter = random.uniform,
) -> Outcome:
    """What the failure ``exc`` of an attempt of ``job`` means; no side effects.

    ``sent``: this attempt sent a create; ``reconciled``: it looked for a lost meeting first
    (and found none). Together they say whether a meeting may exist (``maybe_sent``)."""
    maybe_sent = (job.maybe_sent and not reconciled) or (sent and _outcome_unknown(exc))
    case = _Case(exc, job, settings, maybe_sent, now or datetime.now(UTC), jitter)
    for kind, rule in _RULES:
        if isinstance(exc, kind):
            return _within_budget(case, rule(case))
    text = f"unexpected error: {type(exc).__name__}: {str(exc)[:300]}"
    return _within_budget(case, Retry(case.backoff(job.attempts), text, False, maybe_sent))


def _within_budget(case: _Case, outcome: Outcome) -> Outcome:
    """A retry past its budget gives up: time for transient failures, attempts otherwise.
    Held for a Zoom outage is failing time too (``HoldReason.counts_as_failing``)."""
    settings, job = case.settings, case.job
    if isinstance(outcome, Hold) and outcome.why.counts_as_failing:
        timed = True
    elif isinstance(outcome, Retry):
        timed = outcome.transient
    else:
        return outcome
    if timed:
        failing_s = job.failing_for.total_seconds() if job.failing_for is not None else 0.0
        if failing_s < settings.JOB_GIVE_UP_AFTER:
            return outcome
        spent = f"{failing_s:.0f}s of transient failures (JOB_GIVE_UP_AFTER)"
    else:
        if job.attempts + 1 < settings.JOB_MAX_ATTEMPTS:
            return outcome
        spent = f"{job.attempts + 1} attempts"
    reason = f"gave up after {spent}; last error: {outcome.reason}"
    return Failed(reason, gave_up=True, maybe_sent=outcome.maybe_sent)


def _outcome_unknown(exc: Exception) -> bool:
    """True when a create that raised this may nevertheless have made the meeting."""
    if isinstance(exc, errors.ZoomUnreachable):
        return exc.maybe_sent
    if isinstance(exc, errors.ZoomServerError | errors.OutcomeUnknown):
        return True
    return not isinstance(exc, errors.ZoomWorkerError)


def _text(exc: Exception) -> str:
    return exc.describe() if isinstance(exc, errors.ZoomError) else str(exc)


def _capped(case: _Case) -> Outcome:
    """A daily cap: the host's creates/updates, or one meeting's updates in 24 hours."""
    until = case.exc.retry_at or zoom.next_utc_midnight()
    if isinstance(case.exc, errors.MeetingUpdateLimitReached):
        why = HoldReason.MEETING_UPDATES
        what = f"meeting {case.job.meeting_id} reached Zoom's limit of updates in 24 hours"
    else:
        why = HoldReason.HOST_DAILY
        what = f"host {case.job.user_id} reached Zoom's daily limit of meeting creates/updates"
    return case.hold(until, why, f"waiting: {what}; resumes at {until:%Y-%m-%d %H:%M} UTC")


def _rate_limited(case: _Case) -> Outcome:
    retry_at = case.exc.retry_at or case.backoff(min(case.job.deferrals, 6))
    return case.hold(retry_at, HoldReason.RATE_LIMIT, "rate limited by Zoom (429); waiting it out")


def _transient(case: _Case) -> Outcome:
    at = case.backoff(case.job.attempts)
    if isinstance(case.exc, errors.TokenRequestFailed) and case.exc.retry_at is not None:
        at = max(case.exc.retry_at, case.now)  # the fleet asks the token endpoint again then
    return Retry(at, _text(case.exc), transient=True, maybe_sent=case.maybe_sent)


def _outage(case: _Case) -> Outcome:
    """Held while the breaker is open, back anywhere within one pause after it ends, so the
    held jobs do not all arrive at the probe together."""
    exc: errors.ZoomOutage = case.exc
    at = max(exc.retry_at, case.now) + timedelta(seconds=case.jitter(0, exc.pause_s))
    return case.hold(at, HoldReason.ZOOM_OUTAGE, f"waiting: {exc}")


_Rule = Callable[[_Case], Outcome]
MINUTE = timedelta(minutes=1)
# No permit while the governor's Redis is out of reach: the job waits (unmetered calls could
# break the account's limits for every app on it), back within this long, spread out.
GOVERNOR_WAIT_S = 10.0

# Order matters: subclasses before their bases.
_RULES: list[tuple[type[Exception] | tuple[type[Exception], ...], _Rule]] = [
    (errors.InvalidMeeting, lambda c: c.fail(f"invalid job: {c.exc}")),
    # The job's credential was removed from the registry after the job was enqueued.
    (errors.InvalidCredential, lambda c: c.fail(f"invalid job: {c.exc}")),
    (errors.OutcomeUnknown, lambda c: Failed(c.exc.reason, maybe_sent=True)),
    (
        errors.Deferred,
        lambda c: c.hold(c.exc.retry_at, HoldReason.RATE_LIMIT, f"waiting: {c.exc}", c.exc.slot_at),
    ),
    ((errors.MeetingUpdateLimitReached, errors.DailyLimitReached), _capped),
    (errors.RateLimited, _rate_limited),
    (
        errors.CredentialUnavailable,
        lambda c: c.hold(
            c.now + MINUTE,
            HoldReason.CREDENTIALS,
            f"waiting: credential {c.exc.name} is {c.exc.status}: {c.exc.reason}",
        ),
    ),
    (
        errors.CircuitOpen,
        lambda c: c.hold(
            c.exc.retry_at or c.now + MINUTE, HoldReason.CREDENTIALS, f"waiting: {c.exc.reason}"
        ),
    ),
    (errors.ZoomOutage, _outage),
    (
        errors.TokenBudgetExhausted,
        lambda c: c.hold(c.exc.retry_at, HoldReason.TOKEN_BUDGET, f"waiting: {c.exc}"),
    ),
    (
        errors.ConfigurationError,
        lambda c: c.hold(
            c.now + MINUTE, HoldReason.CONFIGURATION, f"waiting: configuration error: {c.exc}"
        ),
    ),
    (
        errors.GovernorUnavailable,
        lambda c: c.hold(
            c.now + timedelta(seconds=c.jitter(GOVERNOR_WAIT_S / 2, GOVERNOR_WAIT_S)),
            HoldReason.GOVERNOR,
            f"waiting: the rate governor's Redis (REDIS_URL) is unreachable: {c.exc}",
        ),
    ),
    (errors.MissingScopes, lambda c: c.fail(f"{CONFIG_ADVICE}; Zoom said: {_text(c.exc)}")),
    (errors.ZoomClientError, lambda c: c.fail(f"Zoom refused the request: {_text(c.exc)}")),
    (TRANSIENT, _transient),
]
