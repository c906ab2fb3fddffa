"""The ledger's promise (worker.ledger): claim, fence, record, sweep, on real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, update

from worker import celery_app, db, errors, jobs, ledger, models, recording
from worker.config import Settings, get_settings
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow
from worker.outcomes import Failed, Hold, HoldReason, Retry, Succeeded

pytestmark = pytest.mark.usefixtures("env")

BODY = {"topic": "Standup", "type": 2, "start_time": "2026-12-01T10:00:00Z", "duration": 30}
LONG_AGO = datetime(2001, 1, 1, tzinfo=UTC)


@pytest.fixture
def work() -> ledger.Ledger:
    return ledger.Ledger.from_settings(get_settings(), celery_app.send)


def _row(job_id: uuid.UUID) -> JobRow:
    with db.sessions(get_settings())() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        return row


def _set(job_id: uuid.UUID, **values: object) -> None:
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))


def _claimed(work: ledger.Ledger) -> ledger.Claim:
    claim = work.claim(jobs.create_meeting("host@example.com", BODY))
    assert claim is not None
    return claim


def _swept(work: ledger.Ledger, claim: ledger.Claim) -> None:
    """The holder outlived its lease and the sweeper dispatched the job again."""
    _set(claim.job_id, lease_expires_at=LONG_AGO)
    assert work.sweep() == 1


def test_ledger__fence_while_held__extends_the_lease(work: ledger.Ledger) -> None:
    claim = _claimed(work)
    _set(claim.job_id, lease_expires_at=datetime.now(UTC) + timedelta(seconds=1))

    work.fence(claim)

    lease = _row(claim.job_id).lease_expires_at
    assert lease is not None and lease > datetime.now(UTC) + timedelta(seconds=60)


def test_ledger__fence_after_sweep__claim_lost(work: ledger.Ledger) -> None:
    claim = _claimed(work)
    _swept(work, claim)

    with pytest.raises(errors.ClaimLost):
        work.fence(claim)
    second = work.claim(claim.job_id)
    assert second is not None, "the dispatched message claims the job"
    with pytest.raises(errors.ClaimLost):
        work.fence(claim)
    work.fence(second)


def test_ledger__retrying_not_yet_due__stray_message_claims_nothing(work: ledger.Ledger) -> None:
    claim = _claimed(work)
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert work.record(claim, Retry(later, "Zoom failed", transient=True))

    assert work.claim(claim.job_id) is None, "a retry is not claimed before next_attempt_at"
    _set(claim.job_id, next_attempt_at=datetime.now(UTC))
    assert work.claim(claim.job_id) is not None


def test_ledger__hold_after_failures__held_time_not_counted(work: ledger.Ledger) -> None:
    claim = _claimed(work)
    assert work.record(claim, Retry(datetime.now(UTC), "Zoom failed", transient=True))
    _set(claim.job_id, first_failed_at=datetime.now(UTC) - timedelta(seconds=100))
    again = work.claim(claim.job_id)
    assert again is not None and again.failing_for is not None
    assert timedelta(seconds=99) < again.failing_for < timedelta(seconds=110)
    before = _row(claim.job_id).first_failed_at
    hour = timedelta(hours=1)

    assert work.record(again, Hold(datetime.now(UTC) + hour, HoldReason.CREDENTIALS, "circuit"))

    row = _row(claim.job_id)
    assert row.status == models.WAITING and row.held_for == "credentials"
    assert before is not None and row.first_failed_at is not None
    assert abs((row.first_failed_at - before) - hour) < timedelta(seconds=5)
    assert row.attempts == 1 and row.deferrals == 1


def test_ledger__failed_giving_up__gave_up_column_not_text(work: ledger.Ledger) -> None:
    claim = _claimed(work)

    assert work.record(claim, Failed("budget spent", gave_up=True, maybe_sent=True))

    row = _row(claim.job_id)
    assert row.status == models.FAILED and row.gave_up and row.maybe_sent
    assert row.error == "budget spent"


def test_ledger__created_after_claim_lost__adopted_when_job_has_no_meeting(
    work: ledger.Ledger,
) -> None:
    claim = _claimed(work)
    _swept(work, claim)

    assert work.record(claim, Succeeded(85746065432, "https://zoom.us/j/85746065432")) is False

    row = _row(claim.job_id)
    assert row.status == models.SUCCEEDED and row.meeting_id == 85746065432
    assert row.claim_token is None, "a holder working on it now fails its fence"
    with db.sessions(get_settings())() as session:
        meeting = session.get(MeetingRow, 85746065432)
        assert meeting is not None and meeting.job_id == claim.job_id


def test_ledger__created_after_claim_lost__orphan_when_job_has_a_meeting(
    work: ledger.Ledger,
) -> None:
    claim = _claimed(work)
    _swept(work, claim)
    second = work.claim(claim.job_id)
    assert second is not None
    assert work.record(second, Succeeded(85746065432)) is True

    assert work.record(claim, Succeeded(85746065999)) is False

    assert _row(claim.job_id).meeting_id == 85746065432
    with db.sessions(get_settings())() as session:
        kept = session.get(MeetingRow, 85746065432)
        orphan = session.get(MeetingRow, 85746065999)
        assert kept is not None and kept.scheduled_end != recording.ORPHAN_END
        assert orphan is not None and orphan.state == models.LIVE
        assert orphan.scheduled_end == recording.ORPHAN_END, "the next cleanup deletes it"


def test_ledger__outcome_of_a_lost_claim__not_recorded(work: ledger.Ledger) -> None:
    claim = _claimed(work)
    _swept(work, claim)

    assert work.record(claim, Failed("late")) is False
    assert work.record(claim, Retry(datetime.now(UTC), "late", transient=True)) is False

    row = _row(claim.job_id)
    assert row.status == models.RUNNING and row.error is None and row.attempts == 0


def test_ledger__release_held__only_that_reason_made_due(work: ledger.Ledger) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    credentials, daily = _claimed(work), _claimed(work)
    work.record(credentials, Hold(later, HoldReason.CREDENTIALS, "circuit open"))
    work.record(daily, Hold(later, HoldReason.HOST_DAILY, "daily cap"))

    assert work.release_held(HoldReason.CREDENTIALS) == 1

    assert work.claim(credentials.job_id) is not None
    assert work.claim(daily.job_id) is None


def test_ledger__lease_shorter_than_one_call__refused_at_start() -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        Settings(JOB_LEASE_SECONDS=30, ZOOM_HTTP_TIMEOUT=10, ZOOM_TOKEN_LOCK_TIMEOUT=5)
    assert caught.value.setting == "JOB_LEASE_SECONDS"
    assert "at least 36" in str(caught.value)
    assert Settings(JOB_LEASE_SECONDS=36, ZOOM_HTTP_TIMEOUT=10, ZOOM_TOKEN_LOCK_TIMEOUT=5)


def test_ledger__task_time_limits__jobs_below_their_lease_cleanup_its_own() -> None:
    settings = Settings(JOB_LEASE_SECONDS=120, CLEANUP_INTERVAL_MINUTES=15)

    limits = celery_app.time_limits(settings)

    for name in ("meetings.create", "meetings.delete"):
        assert limits[name]["soft_time_limit"] < limits[name]["time_limit"] <= 120
    cleanup = limits["meetings.cleanup_stale"]
    assert cleanup["soft_time_limit"] >= celery_app.cleanup_budget_s(settings) > 120
    assert cleanup["time_limit"] > cleanup["soft_time_limit"]


def test_ledger__create_claimed_fenced_recorded__one_statement_each(work: ledger.Ledger) -> None:
    job_id = jobs.create_meeting("host@example.com", BODY)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement.split(None, 1)[0])

    engine = db.get_engine(get_settings())
    event.listen(engine, "before_cursor_execute", seen)
    try:
        claim = work.claim(job_id)
        assert claim is not None
        work.fence(claim)
        assert work.record(claim, Succeeded(85746065432, "https://zoom.us/j/85746065432"))
    finally:
        event.remove(engine, "before_cursor_execute", seen)

    # The claim, the fence, and the outcome with its meeting row (a data-modifying CTE).
    assert statements == ["UPDATE", "UPDATE", "WITH"]
    assert _row(job_id).status == models.SUCCEEDED
    with db.sessions(get_settings())() as session:
        meeting = session.get(MeetingRow, 85746065432)
        assert meeting is not None and meeting.job_id == job_id
