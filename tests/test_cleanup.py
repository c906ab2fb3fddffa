"""The scheduled cleanup of stale meetings, in-process against real PostgreSQL and the simulator."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import PG_BASE
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert

from worker import celery_app, cleanup, db, errors, gate, marker, meetings, ratelimit
from worker.config import get_settings
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow
from worker.simulator import SimulatorClient

pytestmark = pytest.mark.usefixtures("env")

STALE = -timedelta(hours=3)  # ended three hours ago: past STALE_AFTER_MINUTES (60)
BODY = {"topic": "Cleanup", "type": 2, "duration": 30, "agenda": "Weekly planning"}


@contextlib.contextmanager
def _runtime(gate_: meetings.Gate | None = None) -> Iterator[meetings.Runtime]:
    """A Runtime built as worker.tasks.runtime() builds it, with an open gate by default."""
    built = meetings.Runtime.from_settings(get_settings(), send=celery_app.send)
    try:
        yield dataclasses.replace(built, gate=gate_ or meetings.OpenGate())
    finally:
        built.client.close()
        built.store.close()


@pytest.fixture
def runtime() -> Iterator[meetings.Runtime]:
    with _runtime() as work:
        yield work


def _ours(runtime: meetings.Runtime, ends_in: timedelta, n: int = 1) -> list[int]:
    """Meetings made in the simulator through the API and recorded in the ledger, ending at
    now + ``ends_in`` in both (the simulator's clock is moved for the creates, since Zoom
    starts a meeting with a past start time now; hosts rotate: the simulator caps creates at
    100 per host and day)."""
    shift = (ends_in - timedelta(minutes=BODY["duration"])).total_seconds()
    with SimulatorClient(runtime.settings.ZOOM_API_URL.removesuffix("/v2")) as control:
        control.advance_clock(shift)
        try:
            ids = [
                runtime.client.create_meeting(f"host{i % 5}@example.com", BODY).id for i in range(n)
            ]
        finally:
            control.advance_clock(-shift)
    end = datetime.now(UTC) + ends_in
    rows = [{"meeting_id": i, "user_id": "host@example.com", "scheduled_end": end} for i in ids]
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(insert(MeetingRow), rows)
    return ids


def _ledger(meeting_id: int) -> MeetingRow:
    with db.sessions(get_settings())() as session:
        row = session.get(MeetingRow, meeting_id)
        assert row is not None
        return row


def _deleted_in_sim(sim_client: SimulatorClient) -> dict[int, bool]:
    return {m["id"]: m["deleted"] for m in sim_client.meetings()}


def _expire_claims() -> None:
    """Let time pass for the held meetings (a 3002 is held for an hour)."""
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(text("UPDATE meetings SET cleanup_claimed_until = now() - interval '1s'"))


def _failed_job(host: str, agenda: str, **values: Any) -> str:
    """A failed create job of ours whose outcome is unknown; returns its marker."""
    job_id = uuid.uuid4()
    mark = marker.for_job(job_id)
    row = {
        "id": job_id,
        "kind": "create",
        "status": "failed",
        "user_id": host,
        "topic": BODY["topic"],
        "body": {**BODY, "agenda": agenda},
        "marker": mark,
        "finished_at": datetime.now(UTC),
        **values,
    }
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(insert(JobRow).values(**row))
    return mark


def test_cleanup__stale_meeting_of_ours__deleted_others_untouched(
    runtime: meetings.Runtime, sim_client: SimulatorClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.cleanup")
    [stale] = _ours(runtime, STALE)
    [future] = _ours(runtime, timedelta(days=1))
    [recent] = _ours(runtime, -timedelta(minutes=10))  # ended, but not STALE_AFTER_MINUTES ago
    foreign = sim_client.seed_meeting(
        "host0@example.com", {"topic": "Not ours", "start_time": "2020-01-01T10:00:00Z"}
    )["id"]

    report = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(deleted=1)
    assert _deleted_in_sim(sim_client) == {
        stale: True,
        future: False,
        recent: False,
        foreign: False,
    }
    assert sim_client.stats()["meetings_deleted"] == 1
    assert _ledger(stale).state == "deleted" and _ledger(stale).deleted_at is not None
    assert _ledger(future).state == _ledger(recent).state == "live"
    with db.sessions(get_settings())() as session:
        assert session.get(MeetingRow, foreign) is None, "a foreign meeting never joins the ledger"
    assert f"cleanup.deleted meeting_id={stale}" in caplog.text
    assert "sim-secret" not in caplog.text and "zak=" not in caplog.text
    assert "host0@example.com" not in caplog.text


def test_cleanup__has_ended_3007__marked_ended_not_retried(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    [ended] = _ours(runtime, STALE)
    sim_client.set_meeting_status(ended, "ended")

    first = cleanup.cleanup_stale(runtime)
    calls = sim_client.stats()["api_calls"]
    _expire_claims()
    second = cleanup.cleanup_stale(runtime)

    assert first == cleanup.CleanupReport(ended=1) and second == cleanup.CleanupReport()
    assert sim_client.stats()["api_calls"] == calls, "an ended meeting is never asked again"
    row = _ledger(ended)
    assert row.state == "ended" and row.last_error and "3007" in row.last_error
    assert _deleted_in_sim(sim_client) == {ended: False}


def test_cleanup__in_progress_3002__retried_later_then_given_up(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    [started] = _ours(runtime, STALE)
    sim_client.set_meeting_status(started, "started")

    first = cleanup.cleanup_stale(runtime)
    calls = sim_client.stats()["api_calls"]
    held = cleanup.cleanup_stale(runtime)  # at once: held for IN_PROGRESS_RETRY

    assert first == cleanup.CleanupReport(in_progress=1) and held == cleanup.CleanupReport()
    assert sim_client.stats()["api_calls"] == calls
    row = _ledger(started)
    assert row.state == "live" and row.cleanup_attempts == 1 and row.cleanup_claimed_until
    assert row.cleanup_claimed_until > datetime.now(UTC) + timedelta(minutes=50)
    reports = []
    for _ in range(cleanup.MAX_ATTEMPTS):
        _expire_claims()
        reports.append(cleanup.cleanup_stale(runtime))
    calls = sim_client.stats()["api_calls"]

    assert [r.given_up for r in reports] == [0] * (cleanup.MAX_ATTEMPTS - 2) + [1, 0]
    assert sim_client.stats()["api_calls"] == calls, "given up: never asked again"
    row = _ledger(started)
    assert row.state == "ended" and row.cleanup_attempts == cleanup.MAX_ATTEMPTS
    assert row.last_error and row.last_error.startswith("gave up after 5 attempts")
    assert "3002" in row.last_error


def test_cleanup__already_gone__marked_deleted(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    [gone] = _ours(runtime, STALE)
    runtime.client.delete_meeting(gone)

    report = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(already_gone=1)
    assert _ledger(gone).state == "deleted" and sim_client.stats()["meetings_deleted"] == 1


def test_cleanup__server_errors__recorded_and_retried_next_run(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    ids = _ours(runtime, STALE, n=2)
    sim_client.configure(error_rate=1.0)

    failing = cleanup.cleanup_stale(runtime)
    sim_client.configure(error_rate=0.0)
    healthy = cleanup.cleanup_stale(runtime)

    assert failing == cleanup.CleanupReport(failed=2)
    assert healthy == cleanup.CleanupReport(deleted=2)
    assert all(_ledger(i).cleanup_attempts == 2 for i in ids)
    assert all(_ledger(i).last_error and "HTTP 5" in str(_ledger(i).last_error) for i in ids)


def test_cleanup__450_stale_in_pages_of_200__all_deleted_in_one_run(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    ids = _ours(runtime, STALE, n=450)
    calls = sim_client.stats()["api_calls"]

    report = cleanup.cleanup_stale(runtime, page_size=200)

    assert report == cleanup.CleanupReport(deleted=450)
    assert sim_client.stats()["meetings_deleted"] == 450
    # Zoom is asked before each delete (GET), so two calls a meeting: read once, deleted once.
    assert sim_client.stats()["api_calls"] - calls == 2 * 450, "each meeting asked once"
    with db.sessions(get_settings())() as session:
        states = session.scalars(select(MeetingRow.state).where(MeetingRow.meeting_id.in_(ids)))
        assert set(states) == {"deleted"}


@contextlib.contextmanager
def _no_lock(_engine: Any) -> Iterator[bool]:
    """As if every run got the advisory lock (say, its connection dropped mid-run)."""
    yield True


@pytest.mark.parametrize("guarded", [True, False], ids=["advisory_lock", "claims_only"])
def test_cleanup__two_concurrent_runs__each_meeting_deleted_once(
    sim_client: SimulatorClient,
    runtime: meetings.Runtime,
    monkeypatch: pytest.MonkeyPatch,
    guarded: bool,
) -> None:
    if not guarded:
        monkeypatch.setattr(cleanup, "_advisory_lock", _no_lock)
    count = 150
    _ours(runtime, STALE, n=count)
    calls = sim_client.stats()["api_calls"]
    start = threading.Barrier(2)
    reports: list[cleanup.CleanupReport] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with _runtime() as work:
                start.wait(timeout=10)
                reports.append(cleanup.cleanup_stale(work, page_size=40))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not failures and len(reports) == 2
    assert sum(r.deleted for r in reports) == count
    assert sum(r.already_gone for r in reports) == 0, "no meeting deleted twice (no 404)"
    assert sim_client.stats()["meetings_deleted"] == count
    assert sim_client.stats()["api_calls"] - calls == 2 * count, "each meeting asked once"
    if guarded:
        assert any(r.skipped_locked or r == cleanup.CleanupReport() for r in reports)


def test_cleanup__lock_held_by_another_run__skipped_without_calls(
    runtime: meetings.Runtime, sim_client: SimulatorClient, env: dict[str, str]
) -> None:
    [stale] = _ours(runtime, STALE)
    calls = sim_client.stats()["api_calls"]
    database = env["DATABASE_URL"].rsplit("/", 1)[1]

    with psycopg.connect(f"{PG_BASE}/{database}", autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (cleanup.LOCK_KEY,))
        report = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(skipped_locked=True)
    assert sim_client.stats()["api_calls"] == calls
    assert _ledger(stale).state == "live" and _ledger(stale).cleanup_claimed_until is None


class _StingyGate(meetings.OpenGate):
    """Grants ``allowed`` delete permits (reads always), then defers every delete by a
    minute with no slot."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed

    def before_call(
        self,
        operation: str,
        user_id: str | None = None,
        slot_at: float | None = None,
        priority: str = "normal",
    ) -> None:
        if operation != "delete":
            return
        if self.allowed <= 0:
            later = datetime.now(UTC) + timedelta(minutes=1)
            raise errors.Deferred("no permit", retry_at=later, slot_at=None)
        self.allowed -= 1


def test_cleanup__gate_defers__claims_released_next_run_continues(
    sim_client: SimulatorClient,
) -> None:
    with _runtime(_StingyGate(allowed=3)) as stingy:
        ids = _ours(stingy, STALE, n=10)
        deferred = cleanup.cleanup_stale(stingy, page_size=4)
    left = [i for i in ids if _ledger(i).state == "live"]
    with _runtime() as open_gate:
        resumed = cleanup.cleanup_stale(open_gate)

    assert deferred.deleted == 3 and deferred.deferred == 1, "the rest of the page is released"
    assert deferred.stopped and "no delete permit" in deferred.stopped
    assert len(left) == 7 and all(_ledger(i).cleanup_claimed_until is None for i in left)
    assert resumed == cleanup.CleanupReport(deleted=7)
    assert sim_client.stats()["meetings_deleted"] == 10


def test_cleanup__time_budget_spent__stops_and_releases(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    [stale] = _ours(runtime, STALE)

    report = cleanup.cleanup_stale(runtime, time_budget_s=0)

    assert report.deleted == 0 and report.deferred == 1
    assert report.stopped and "time budget" in report.stopped
    assert _ledger(stale).cleanup_claimed_until is None
    assert sim_client.stats()["meetings_deleted"] == 0


def test_cleanup__real_governor__paced_and_all_deleted(
    sim_client: SimulatorClient, env: dict[str, str]
) -> None:
    # Creates count in another category, so only the deletes fill the light window.
    categories = {"create": "heavy", "delete": "light", "get": "light", "list": "medium"}
    sim_client.configure(rate_limits={"light": 10}, categories=categories)
    # 10% headroom, as a deployment sharing the account might keep (RATE_HEADROOM=0.9).
    governor = ratelimit.RateGovernor.from_url(env["REDIS_URL"], {"light": 9, "medium": 9})
    with _runtime(gate.FleetGate(governor, get_settings())) as governed:
        _ours(governed, STALE, n=12)

        report = cleanup.cleanup_stale(governed)
    governor.client.close()

    assert report == cleanup.CleanupReport(deleted=12)
    stats = sim_client.stats()
    assert stats["api_429"] == 0 and stats["max_calls_per_second"]["light"] <= 10


def test_cleanup__orphan_of_failed_create__found_and_deleted_lookalike_untouched(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    host = "orphans@example.com"
    marker = _failed_job(host, "Weekly planning", maybe_sent=True)
    orphan = runtime.client.create_meeting(host, {**BODY, "agenda": f"Weekly planning\n\n{marker}"})
    lookalike = sim_client.seed_meeting(
        host, {"topic": "Other app", "agenda": "Weekly planning\n\n[zw:0123456789abcdef]"}
    )["id"]

    report = cleanup.cleanup_stale(runtime)
    calls = sim_client.stats()["api_calls"]
    again = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(deleted=1, orphans_found=1, orphans_deleted=1)
    assert _deleted_in_sim(sim_client) == {orphan.id: True, lookalike: False}
    row = _ledger(orphan.id)
    assert row.state == "deleted" and row.job_id is not None and row.user_id == host
    assert again == cleanup.CleanupReport() and sim_client.stats()["api_calls"] == calls
    with db.sessions(get_settings())() as session:
        assert session.get(MeetingRow, lookalike) is None


def test_cleanup__orphan_with_agenda_cut_in_list__found_through_get(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    host = "long@example.com"
    agenda = "Long agenda. " * 30  # 390 characters: the list call shows 250, not the marker
    marker = _failed_job(
        host, agenda, error="gave up after 6 attempts; last error: HTTP 502", gave_up=True
    )
    orphan = runtime.client.create_meeting(host, {**BODY, "agenda": f"{agenda}\n\n{marker}"})
    other = runtime.client.create_meeting(host, {**BODY, "agenda": "Unrelated"})
    # A job that failed before calling Zoom is no orphan's (its outcome is known): not looked at.
    declined = _failed_job(host, "Weekly planning", error="invalid job: duration")
    unknown = runtime.client.create_meeting(
        host, {**BODY, "agenda": f"Weekly planning\n\n{declined}"}
    )

    report = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(deleted=1, orphans_found=1, orphans_deleted=1)
    assert _deleted_in_sim(sim_client) == {orphan.id: True, other.id: False, unknown.id: False}


# -- Zoom is the truth before a delete (issue 9) ---------------------------------------------

DAY = 86400


def _record(meeting_id: int, scheduled_end: datetime | None, **values: Any) -> None:
    row = {"meeting_id": meeting_id, "user_id": "host@example.com", "scheduled_end": scheduled_end}
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(insert(MeetingRow).values(**row, **values))


def _series(runtime: meetings.Runtime, sim_client: SimulatorClient, began_days_ago: int) -> int:
    """A weekly series of three made ``began_days_ago`` days ago (the simulator's clock moved
    back for the create), recorded in the ledger as stale."""
    began = datetime.now(UTC) - timedelta(days=began_days_ago)
    recurrence = {"type": 2, "weekly_days": str(began.isoweekday() % 7 + 1), "end_times": 3}
    sim_client.advance_clock(-began_days_ago * DAY)
    try:
        meeting = runtime.client.create_meeting(
            "series@example.com", {**BODY, "type": 8, "recurrence": recurrence}
        )
    finally:
        sim_client.advance_clock(began_days_ago * DAY)
    _record(meeting.id, datetime.now(UTC) + STALE)
    return meeting.id


def _occurrence_ends(sim_client: SimulatorClient, meeting_id: int) -> list[datetime]:
    [meeting] = [m for m in sim_client.meetings() if m["id"] == meeting_id]
    return [
        datetime.fromisoformat(o["start_time"].replace("Z", "+00:00"))
        + timedelta(minutes=o["duration"])
        for o in meeting["occurrences"]
    ]


def test_cleanup__weekly_series_first_occurrence_ended__kept_until_its_last(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    running = _series(runtime, sim_client, began_days_ago=8)  # 8 and 1 days ago, in 6 days
    over = _series(runtime, sim_client, began_days_ago=30)  # 30, 23 and 16 days ago

    report = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(deleted=1, kept=1)
    assert _deleted_in_sim(sim_client) == {running: False, over: True}
    last_end = max(_occurrence_ends(sim_client, running))
    assert last_end > datetime.now(UTC) + timedelta(days=5)
    assert _ledger(running).scheduled_end == last_end, "looked at again after its last"
    assert _ledger(running).state == "live" and _ledger(running).cleanup_attempts == 0
    assert _ledger(over).state == "deleted"


def test_cleanup__meeting_moved_later_in_zoom__kept_ledger_shows_new_end(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    [moved] = _ours(runtime, STALE)
    sim_client.update_meeting(moved, {"start_time": "2099-03-02T09:00:00Z", "duration": 45})

    report = cleanup.cleanup_stale(runtime)
    calls = sim_client.stats()["api_calls"]
    again = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(kept=1) and again == cleanup.CleanupReport()
    assert _deleted_in_sim(sim_client) == {moved: False}
    assert _ledger(moved).scheduled_end == datetime(2099, 3, 2, 9, 45, tzinfo=UTC)
    assert sim_client.stats()["api_calls"] == calls, "not asked again before its new end"


@pytest.mark.parametrize(
    "body",
    [
        {"type": 3},
        {"type": 8, "recurrence": {"type": 1, "end_times": 0}},
    ],
    ids=["no_fixed_time", "series_without_end"],
)
def test_cleanup__never_ending_meeting__kept_and_never_stale(
    runtime: meetings.Runtime, sim_client: SimulatorClient, body: dict[str, Any]
) -> None:
    meeting = runtime.client.create_meeting("forever@example.com", {**BODY, **body})
    _record(meeting.id, datetime.now(UTC) + STALE)

    report = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(kept=1)
    assert _ledger(meeting.id).scheduled_end is None and _ledger(meeting.id).state == "live"
    assert _deleted_in_sim(sim_client) == {meeting.id: False}


def test_cleanup__gone_in_zoom__recorded_gone_without_a_delete(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    [gone] = _ours(runtime, STALE)
    runtime.client.delete_meeting(gone)
    calls = sim_client.stats()["api_calls"]

    report = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(already_gone=1)
    assert sim_client.stats()["api_calls"] - calls == 1, "one GET, no DELETE"
    assert sim_client.stats()["calls_by_operation"]["delete"] == 1, "only the test's own"
    assert _ledger(gone).state == "deleted"


def test_cleanup__orphan_of_schedule_for_create__found_under_its_host(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    job_marker = _failed_job("assistant@example.com", "Board", maybe_sent=True)
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(
            text('UPDATE jobs SET body = body || \'{"schedule_for": "boss@example.com"}\'')
        )
    orphan = runtime.client.create_meeting(
        "assistant@example.com",
        {**BODY, "agenda": f"Board\n\n{job_marker}", "schedule_for": "boss@example.com"},
    )

    report = cleanup.cleanup_stale(runtime)

    assert report == cleanup.CleanupReport(deleted=1, orphans_found=1, orphans_deleted=1)
    assert _deleted_in_sim(sim_client) == {orphan.id: True}
