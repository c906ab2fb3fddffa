"""What a failure means (meetings.decide, a pure function tested as a table), and the two
side effects that follow it in meetings.run: the 429 told to the gate, and the fence."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import update

from worker import celery_app, db, errors, jobs, ledger, meetings, outage
from worker.config import Settings, get_settings
from worker.models import Job as JobRow
from worker.outcomes import Failed, Hold, HoldReason, Outcome, Retry
from worker.simulator import SimulatorClient

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
SETTINGS = Settings(
    RETRY_BACKOFF_BASE=2.0, RETRY_BACKOFF_MAX=300.0, JOB_MAX_ATTEMPTS=6, JOB_GIVE_UP_AFTER=86400
)
CLAIM = ledger.Claim(
    job_id=uuid.UUID(int=1),
    kind="create",
    token="token",
    user_id="host@example.com",
    body={"topic": "Standup"},
    marker="[zw:0000000000000001]",
    meeting_id=None,
    occurrence_id=None,
    after_job_id=None,
    attempts=0,
    deferrals=0,
    deliveries=1,
    maybe_sent=False,
)
LATER = NOW + timedelta(seconds=3)
MIDNIGHT = datetime(2026, 12, 3, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def _decide(exc: Exception, *, sent: bool = False, **claim: Any) -> Outcome:
    """decide() with the highest jitter, so the backoff's ceiling shows."""
    job = dataclasses.replace(CLAIM, **claim)
    return meetings.decide(exc, job, SETTINGS, sent=sent, now=NOW, jitter=lambda low, high: high)


def _server_error() -> errors.ZoomServerError:
    return errors.ZoomServerError("Zoom failed", status=502)


DB_DOWN = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
DAY = timedelta(days=1)

TABLE: list[tuple[str, Exception, dict[str, Any], Outcome]] = [
    # The job is wrong: fail at once.
    (
        "invalid body",
        errors.InvalidMeeting("duration", "too long"),
        {},
        Failed("invalid job: duration: too long"),
    ),
    (
        "4xx",
        errors.ZoomClientError("bad", status=400, code=300),
        {},
        Failed("Zoom refused the request: bad; HTTP 400; Zoom code 300"),
    ),
    (
        "missing scopes",
        errors.MissingScopes("no scope", status=401, code=4711),
        {},
        Failed(f"{meetings.CONFIG_ADVICE}; Zoom said: no scope; HTTP 401; Zoom code 4711"),
    ),
    (
        "outcome unknown",
        errors.OutcomeUnknown("an instant meeting may exist"),
        {"sent": True},
        Failed("an instant meeting may exist", maybe_sent=True),
    ),
    # Held, not failing: nothing counts against a budget.
    (
        "no permit",
        errors.Deferred("no medium permit", retry_at=LATER, slot_at=12.5),
        {},
        Hold(LATER, HoldReason.RATE_LIMIT, "waiting: no medium permit", slot_at=12.5),
    ),
    (
        "429 with Retry-After",
        errors.RateLimited("429", retry_at=LATER),
        {},
        Hold(LATER, HoldReason.RATE_LIMIT, "rate limited by Zoom (429); waiting it out"),
    ),
    (
        "429 without a hint",
        errors.RateLimited("429", retry_at=None),
        {"deferrals": 2},
        Hold(_at(8), HoldReason.RATE_LIMIT, "rate limited by Zoom (429); waiting it out"),
    ),
    (
        "daily cap",
        errors.DailyLimitReached("daily", retry_at=MIDNIGHT),
        {},
        Hold(
            MIDNIGHT,
            HoldReason.HOST_DAILY,
            "waiting: host host@example.com reached Zoom's daily limit of meeting "
            "creates/updates; resumes at 2026-12-03 00:00 UTC",
        ),
    ),
    (
        "credential circuit open",
        errors.CircuitOpen("Zoom refuses the client secret", retry_at=None),
        {},
        Hold(_at(60), HoldReason.CREDENTIALS, "waiting: Zoom refuses the client secret"),
    ),
    (
        "token budget",
        errors.TokenBudgetExhausted("budget spent", retry_at=LATER),
        {},
        Hold(LATER, HoldReason.TOKEN_BUDGET, "waiting: budget spent"),
    ),
    (
        "configuration",
        errors.ConfigurationError("ZOOM_CLIENT_ID", "is not set"),
        {},
        Hold(
            _at(60),
            HoldReason.CONFIGURATION,
            "waiting: configuration error: ZOOM_CLIENT_ID: is not set",
        ),
    ),
    # Zoom or our infrastructure unwell: full-jitter backoff, bounded by time only.
    (
        "5xx after sending",
        _server_error(),
        {"sent": True, "attempts": 2},
        Retry(_at(8), "Zoom failed; HTTP 502", transient=True, maybe_sent=True),
    ),
    (
        "no answer, never sent",
        errors.ZoomUnreachable("connection refused", maybe_sent=False),
        {"sent": True},
        Retry(_at(2), "connection refused", transient=True),
    ),
    (
        "governor down: the job waits and says why",
        errors.GovernorUnavailable("Redis (rate governor) failed: Connection refused"),
        {"attempts": 3, "failing_for": DAY},  # past JOB_GIVE_UP_AFTER: still waits
        Hold(
            _at(10),
            HoldReason.GOVERNOR,
            "waiting: the rate governor's Redis (REDIS_URL) is unreachable: "
            "Redis (rate governor) failed: Connection refused",
        ),
    ),
    (
        "another Redis or store failure",
        errors.InfrastructureError("the token store failed"),
        {},
        Retry(_at(2), "the token store failed", transient=True),
    ),
    (
        "token row busy",
        errors.TokenStoreBusy("lock not granted"),
        {},
        Retry(_at(2), "lock not granted", transient=True),
    ),
    (
        "database down",
        DB_DOWN,
        {},
        Retry(_at(2), str(DB_DOWN), transient=True),
    ),
    (
        "5xx, many attempts, within the budget",
        _server_error(),
        {"attempts": 40, "failing_for": DAY - timedelta(seconds=1)},
        Retry(_at(300), "Zoom failed; HTTP 502", transient=True),
    ),
    (
        "5xx past the budget",
        _server_error(),
        {"attempts": 40, "failing_for": DAY, "maybe_sent": True},
        Failed(
            "gave up after 86400s of transient failures (JOB_GIVE_UP_AFTER); "
            "last error: Zoom failed; HTTP 502",
            gave_up=True,
            maybe_sent=True,
        ),
    ),
    # Unexpected: bounded by JOB_MAX_ATTEMPTS.
    (
        "unexpected",
        RuntimeError("bug"),
        {"attempts": 1},
        Retry(_at(4), "unexpected error: RuntimeError: bug", transient=False),
    ),
    (
        "unexpected, last attempt",
        RuntimeError("bug"),
        {"attempts": 5},
        Failed(
            "gave up after 6 attempts; last error: unexpected error: RuntimeError: bug",
            gave_up=True,
        ),
    ),
    # A create that may have made a meeting keeps saying so, whatever happens next.
    (
        "held, unreconciled",
        errors.Deferred("no list permit", retry_at=LATER, slot_at=None),
        {"maybe_sent": True},
        Hold(LATER, HoldReason.RATE_LIMIT, "waiting: no list permit", maybe_sent=True),
    ),
]


@pytest.mark.parametrize(
    ("exc", "given", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_decide__failure__outcome(exc: Exception, given: dict[str, Any], expected: Outcome) -> None:
    assert _decide(exc, **given) == expected


def test_decide__backoff__full_jitter_from_zero() -> None:
    job = dataclasses.replace(CLAIM, attempts=3)
    lowest = meetings.decide(
        _server_error(), job, SETTINGS, sent=False, now=NOW, jitter=lambda low, high: low
    )
    assert isinstance(lowest, Retry) and lowest.at == NOW


def test_decide__reconciled_create__no_longer_maybe_sent() -> None:
    job = dataclasses.replace(CLAIM, maybe_sent=True)
    deferred = errors.Deferred("no create permit", retry_at=LATER, slot_at=None)
    outcome = meetings.decide(deferred, job, SETTINGS, sent=False, reconciled=True, now=NOW)
    assert isinstance(outcome, Hold) and outcome.maybe_sent is False


def test_decide__every_error_of_the_tree__has_a_rule() -> None:
    def tree(cls: type[Exception]) -> list[type[Exception]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in tree(child))]

    # ClaimLost stops the attempt before decide; IdempotencyConflict is raised to producers,
    # InvalidCredential to the credentials registry's callers.
    elsewhere = {
        errors.ZoomWorkerError,
        errors.ClaimLost,
        errors.IdempotencyConflict,
        errors.InvalidCredential,
    }
    ruled = [kind for kind, _rule in meetings._RULES]
    missing = [
        cls.__name__
        for cls in tree(errors.ZoomWorkerError)
        if cls not in elsewhere and not any(issubclass(cls, kind) for kind in ruled)
    ]
    assert missing == []


def test_wait_for_create__within_budget__held_a_little_longer_each_time() -> None:
    delete = dataclasses.replace(CLAIM, kind="delete", after_job_id=uuid.UUID(int=2))
    first = meetings.wait_for_create(delete, SETTINGS, NOW)
    later = meetings.wait_for_create(dataclasses.replace(delete, deferrals=3), SETTINGS, NOW)
    assert isinstance(first, Hold) and first.why is HoldReason.CREATE_PENDING
    assert isinstance(later, Hold) and later.at - NOW == 8 * (first.at - NOW)


def test_wait_for_create__older_than_the_budget__gives_up() -> None:
    delete = dataclasses.replace(CLAIM, kind="delete", after_job_id=uuid.UUID(int=2), age=2 * DAY)
    outcome = meetings.wait_for_create(delete, SETTINGS, NOW)
    assert isinstance(outcome, Failed) and outcome.gave_up
    assert "did not finish within JOB_GIVE_UP_AFTER" in outcome.reason


# -- run(): what follows the decision -------------------------------------------------------

BODY = {"topic": "Standup", "type": 2, "start_time": "2026-12-01T10:00:00Z", "duration": 30}


class _Client:
    """Stands in for ZoomClient: counts creates and answers each with ``error`` if set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.creates = 0

    def create_meeting(self, user_id: str, body: dict[str, Any]) -> Any:
        self.creates += 1
        if self.error is not None:
            raise self.error
        raise AssertionError("no create expected to succeed here")


class _Gate(meetings.OpenGate):
    def __init__(self) -> None:
        self.told: list[tuple[str, errors.RateLimited, str | None]] = []

    def rate_limited(self, operation: str, exc: errors.RateLimited, user_id: str | None) -> None:
        self.told.append((operation, exc, user_id))


class _Store:
    """Stands in for TokenStore: a token is always at hand."""

    def get(self) -> object:
        return object()


def _runtime(client: _Client, gate: meetings.Gate) -> meetings.Runtime:
    settings = get_settings()
    return meetings.Runtime(
        settings=settings,
        client=client,  # type: ignore[arg-type]
        gate=gate,
        store=_Store(),  # type: ignore[arg-type]
        ledger=ledger.Ledger.from_settings(settings, celery_app.send),
    )


@pytest.mark.usefixtures("env")
def test_run__429__gate_told_once_after_the_decision() -> None:
    limited = errors.RateLimited("429", retry_at=datetime.now(UTC) + timedelta(seconds=5))
    gate, client = _Gate(), _Client(limited)
    runtime = _runtime(client, gate)
    claim = runtime.ledger.claim(jobs.create_meeting("host@example.com", BODY))
    assert claim is not None

    meetings.run(claim, runtime)

    assert gate.told == [("create", limited, "host@example.com")]
    job = jobs.get_job(claim.job_id)
    assert job is not None and job.status == "retrying" and job.deferrals == 1


@pytest.mark.usefixtures("env")
def test_run__claim_swept_before_the_create__no_call_nothing_recorded() -> None:
    client = _Client()
    runtime = _runtime(client, _Gate())
    claim = runtime.ledger.claim(jobs.create_meeting("host@example.com", BODY))
    assert claim is not None
    second = runtime.ledger.claim(claim.job_id)
    assert second is None, "still held"
    _expire_and_sweep(runtime.ledger, claim.job_id)

    assert meetings.run(claim, runtime) is None

    assert client.creates == 0, "a holder that lost its claim never calls Zoom"
    job = jobs.get_job(claim.job_id)
    assert job is not None and job.status == "running" and job.attempts == 0


def _expire_and_sweep(work: ledger.Ledger, job_id: uuid.UUID) -> None:
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            update(JobRow).where(JobRow.id == job_id).values(lease_expires_at=NOW - 365 * DAY)
        )
    assert work.sweep() == 1


class _CountingGate(meetings.OpenGate):
    """An open gate that remembers which permits were asked for."""

    def __init__(self) -> None:
        self.permits: list[str] = []

    def before_call(
        self,
        operation: str,
        user_id: str | None = None,
        slot_at: float | None = None,
        priority: str = "normal",
    ) -> None:
        self.permits.append(operation)


@pytest.mark.usefixtures("env")
def test_run__token_endpoint_down__no_create_permit_spent(sim_client: SimulatorClient) -> None:
    # A create permit counts against the host's daily cap: a create that cannot even get a
    # token must not spend one (with 100 creates a day, an outage would hold the host).
    sim_client.configure(token_endpoint_down=True)
    gate = _CountingGate()
    built = meetings.Runtime.from_settings(get_settings(), send=celery_app.send)
    runtime = dataclasses.replace(built, gate=gate)
    try:
        claim = runtime.ledger.claim(jobs.create_meeting("host@example.com", BODY))
        assert claim is not None

        meetings.run(claim, runtime)
    finally:
        built.client.close()
        built.store.close()

    assert "create" not in gate.permits
    job = jobs.get_job(claim.job_id)
    assert job is not None and job.status == "retrying" and job.meeting_id is None


# -- the outage breaker (issue 10: jobs that see the same fault wait together) ------------


def test_decide__zoom_outage__held_within_one_pause_after_it_ends() -> None:
    exc = errors.ZoomOutage("Zoom is failing for the fleet", retry_at=LATER, pause_s=4.0)
    outcome = _decide(exc, attempts=2)
    assert outcome == Hold(LATER + timedelta(seconds=4), HoldReason.ZOOM_OUTAGE, f"waiting: {exc}")


def test_decide__zoom_outage_past_the_budget__gives_up() -> None:
    exc = errors.ZoomOutage("Zoom is failing for the fleet", retry_at=LATER, pause_s=4.0)
    outcome = _decide(exc, failing_for=2 * DAY)
    assert isinstance(outcome, Failed) and outcome.gave_up
    assert "JOB_GIVE_UP_AFTER" in outcome.reason


def test_decide__token_request_failed_with_retry_at__retries_then() -> None:
    paced = errors.TokenRequestFailed("the token endpoint failed 3 times", retry_at=_at(20))
    outcome = _decide(paced, attempts=0)
    assert isinstance(outcome, Retry) and outcome.transient and outcome.at == _at(20)


def test_decide__token_request_failed_without_retry_at__plain_backoff() -> None:
    outcome = _decide(errors.TokenRequestFailed("token endpoint 503", status=503), attempts=1)
    assert isinstance(outcome, Retry) and outcome.at == _at(4)


def _breaker_runtime(client: _Client) -> meetings.Runtime:
    settings = get_settings()
    breaker = outage.OutageBreaker.from_settings(settings)
    return dataclasses.replace(_runtime(client, _Gate()), outage=breaker)


@pytest.mark.usefixtures("env")
def test_run__zoom_5xx_for_the_threshold__breaker_opens() -> None:
    runtime = _breaker_runtime(_Client(_server_error()))
    assert isinstance(runtime.outage, outage.OutageBreaker)
    for _ in range(get_settings().ZOOM_OUTAGE_THRESHOLD):
        claim = runtime.ledger.claim(jobs.create_meeting("host@example.com", BODY))
        assert claim is not None
        meetings.run(claim, runtime)
    assert runtime.outage.state() is not None


@pytest.mark.usefixtures("env")
def test_run__breaker_open__no_call_job_held_no_attempt_spent() -> None:
    client = _Client(_server_error())
    runtime = _breaker_runtime(client)
    for _ in range(get_settings().ZOOM_OUTAGE_THRESHOLD):
        runtime.outage.report(runtime.outage.check(), healthy=False)
    claim = runtime.ledger.claim(jobs.create_meeting("host@example.com", BODY))
    assert claim is not None

    meetings.run(claim, runtime)

    assert client.creates == 0, "while the breaker is open no job calls Zoom"
    job = jobs.get_job(claim.job_id)
    assert job is not None and job.status == "waiting" and job.attempts == 0
    assert "Zoom is failing for the whole fleet" in (job.error or "")
    with db.sessions(get_settings())() as session:
        row = session.get(JobRow, claim.job_id)
        assert row is not None and row.held_for == HoldReason.ZOOM_OUTAGE
        assert row.first_failed_at is not None, "the outage's time counts toward the budget"
