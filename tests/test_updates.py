"""Update jobs (issue 14): validation, order per meeting, the caps, the ledger's schedule."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import WorkerProcess, wait_for
from job_parts import run_job
from sqlalchemy import func, select

from worker import celery_app, db, errors, jobs, meetings, models, webhook_events
from worker.cli import cli, parse_assignments
from worker.config import get_settings
from worker.models import FINAL_STATUSES
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow
from worker.simulator import SimulatorClient

HOST = "host@example.com"
FUTURE = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
BODY = {
    "topic": "Planning",
    "type": 2,
    "start_time": f"{FUTURE:%Y-%m-%dT%H:%M:%SZ}",
    "duration": 30,
}


def _stamp(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


@pytest.fixture
def runtime(env: dict[str, str]) -> Iterator[meetings.Runtime]:
    """A worker's runtime in this process (the simulator as Zoom)."""
    built = meetings.Runtime.from_settings(get_settings(), send=celery_app.send)
    yield built
    built.client.close()
    built.store.close()


def _created(runtime: meetings.Runtime, body: dict[str, Any] | None = None) -> int:
    job = run_job(runtime, jobs.create_meeting(HOST, body or BODY))
    assert job.status == "succeeded" and job.meeting_id is not None, job.error
    return job.meeting_id


def _meeting_row(meeting_id: int) -> MeetingRow:
    with db.sessions(get_settings())() as session:
        row = session.get(MeetingRow, meeting_id)
        assert row is not None
        session.expunge(row)
        return row


def _update_jobs() -> int:
    with db.sessions(get_settings())() as session:
        count = session.scalar(
            select(func.count()).select_from(JobRow).where(JobRow.kind == jobs.UPDATE)
        )
        return int(count or 0)


def _sim_meeting(sim_client: SimulatorClient, meeting_id: int) -> dict[str, Any]:
    return next(m for m in sim_client.meetings() if m["id"] == meeting_id)


# -- refusals: nothing stored -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"topik": "typo"}, "topik"),
        ({"start_time": "2020-01-01T10:00:00Z"}, "start_time"),
        ({"duration": 0}, "duration"),
        ({"topic": "x" * 201}, "topic"),
        ({}, "changes"),
    ],
)
def test_update_meeting__invalid_changes__refused_naming_the_field_nothing_stored(
    runtime: meetings.Runtime, changes: dict[str, Any], field: str
) -> None:
    meeting_id = _created(runtime)

    with pytest.raises(errors.InvalidMeeting) as refused:
        jobs.update_meeting(meeting_id, changes)

    assert field in refused.value.field
    assert _update_jobs() == 0


def test_update_meeting__meeting_not_ours__refused_nothing_stored(env: dict[str, str]) -> None:
    with pytest.raises(errors.InvalidMeeting) as refused:
        jobs.update_meeting(85746065432, {"topic": "Not ours"})

    assert refused.value.field == "meeting_id"
    assert _update_jobs() == 0


# -- the work of one update -------------------------------------------------------------------


def test_update__reschedule__zoom_changed_and_cleanup_date_moves(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    meeting_id = _created(runtime)
    before = _meeting_row(meeting_id).scheduled_end
    later = FUTURE + timedelta(days=2)

    job = run_job(
        runtime, jobs.update_meeting(meeting_id, {"start_time": _stamp(later), "duration": 45})
    )

    assert job.status == "succeeded" and job.kind == "update", job.error
    zoom = _sim_meeting(sim_client, meeting_id)
    assert (zoom["start_time"], zoom["duration"]) == (_stamp(later), 45)
    row = _meeting_row(meeting_id)
    assert before == FUTURE + timedelta(minutes=30)
    assert row.scheduled_end == later + timedelta(minutes=45)
    assert row.start_time == later and row.duration_min == 45


def test_update__newer_update_waits_for_older__claims_nothing_spends_no_attempt(
    runtime: meetings.Runtime,
) -> None:
    meeting_id = _created(runtime)
    first = jobs.update_meeting(meeting_id, {"topic": "First"})
    second = jobs.update_meeting(meeting_id, {"topic": "Second"})

    assert runtime.ledger.claim(second) is None, "the older update has not ended"
    run_job(runtime, first)
    job = run_job(runtime, second)

    assert job.status == "succeeded" and job.attempts == 1
    assert _meeting_row(meeting_id).topic == "Second"


def _two_updates_first_failed(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> tuple[int, uuid.UUID, uuid.UUID]:
    """A meeting with two updates enqueued, the first failed for good (Zoom refused it)."""
    meeting_id = _created(runtime)
    first = jobs.update_meeting(meeting_id, {"topic": "First"})
    second = jobs.update_meeting(meeting_id, {"topic": "Second"})
    sim_client.configure(missing_scopes=True)
    assert run_job(runtime, first).status == "failed"
    sim_client.configure(missing_scopes=False)
    return meeting_id, first, second


def test_update__older_update_failed__next_one_goes(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    _, _, second = _two_updates_first_failed(runtime, sim_client)

    assert run_job(runtime, second).status == "succeeded"


def test_update__meeting_cap__held_not_failed(
    runtime: meetings.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = dataclasses.replace(
        runtime,
        gate=type(runtime.gate).from_settings(  # type: ignore[attr-defined]
            get_settings().model_copy(update={"ZOOM_MEETING_UPDATE_LIMIT": 2})
        ),
    )
    meeting_id = _created(limited)
    ids = [jobs.update_meeting(meeting_id, {"topic": f"Topic {n}"}) for n in range(3)]

    done = [run_job(limited, job_id) for job_id in ids]

    assert [j.status for j in done] == ["succeeded", "succeeded", "waiting"]
    assert done[2].attempts == 0 and "24 hours" in (done[2].error or "")
    with db.sessions(get_settings())() as session:
        assert session.get(JobRow, ids[2]).held_for == "meeting_updates"  # type: ignore[union-attr]


def test_update__zoom_meeting_cap_429__held_and_the_host_not_blocked(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    sim_client.configure(meeting_update_limit=1)
    meeting_id = _created(runtime)
    other = _created(runtime)
    runtime = dataclasses.replace(runtime, gate=meetings.OpenGate())  # Zoom's answer decides
    assert run_job(runtime, jobs.update_meeting(meeting_id, {"topic": "One"})).status == "succeeded"

    held = run_job(runtime, jobs.update_meeting(meeting_id, {"topic": "Two"}))
    elsewhere = run_job(runtime, jobs.update_meeting(other, {"topic": "Other"}))

    assert held.status == "waiting" and held.attempts == 0, held.error
    assert elsewhere.status == "succeeded", "one meeting's cap holds only that meeting"


def test_webhook__our_own_older_update_notice__does_not_undo_a_newer_update(
    runtime: meetings.Runtime,
) -> None:
    meeting_id = _created(runtime)
    sent_at = int(datetime.now(UTC).timestamp() * 1000) - 1
    later = FUTURE + timedelta(days=3)
    run_job(runtime, jobs.update_meeting(meeting_id, {"start_time": _stamp(later)}))
    # Zoom's notice of an earlier PATCH (event_ts before our update) arrives only now.
    old = {
        "event": "meeting.updated",
        "event_ts": sent_at,
        "payload": {
            "object": {
                "id": meeting_id,
                "start_time": _stamp(FUTURE + timedelta(days=1)),
                "topic": "Renamed",
            }
        },
    }
    sessions = db.sessions(get_settings())
    with sessions() as session, session.begin():
        event_id = webhook_events.store(session, webhook_events.Event.parse(old))
    assert event_id is not None

    webhook_events.apply(sessions, event_id)

    row = _meeting_row(meeting_id)
    assert row.start_time == later, "our newer start_time stays"
    assert row.topic == "Renamed", "a field our update did not set is still taken"


def test_webhook__recovered_after_deleted__meeting_live_again() -> None:
    state = webhook_events.MeetingState(models.DELETED, None, None, None)
    recovered = webhook_events.Event.parse(
        {"event": "meeting.recovered", "event_ts": 2000, "payload": {"object": {"id": 1}}}
    )

    assert webhook_events.decide(recovered, state, 1000).values == {
        "state": models.LIVE,
        "deleted_at": None,
    }
    assert webhook_events.decide(recovered, state, 3000).effect == webhook_events.Effect.STALE


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_update__set_values__json_or_string_and_nested_settings() -> None:
    changes = parse_assignments(
        ("topic=Weekly", "duration=45", "settings.waiting_room=true", "agenda=[not json")
    )

    assert changes == {
        "topic": "Weekly",
        "duration": 45,
        "settings": {"waiting_room": True},
        "agenda": "[not json",
    }


def test_cli_update__queues_a_job(runtime: meetings.Runtime) -> None:
    meeting_id = _created(runtime)

    result = CliRunner().invoke(cli, ["update", str(meeting_id), "--set", "topic=From CLI"])

    assert result.exit_code == 0, result.output
    job = jobs.get_job(result.output.strip())
    assert job is not None and job.kind == "update" and job.topic == "From CLI"


# -- real worker processes --------------------------------------------------------------------


@pytest.mark.fleet
def test_fleet__three_updates_first_fails_twice__applied_in_order(
    env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    sim_client: SimulatorClient,
) -> None:
    start_worker(concurrency=2)
    start_worker(concurrency=2)
    created = jobs.wait_for_job(jobs.create_meeting(HOST, BODY), timeout=60)
    meeting_id = created.meeting_id
    assert meeting_id is not None
    sim_client.fail_next("update", count=2, status=503)

    ids = [
        jobs.update_meeting(meeting_id, {"topic": "Topic A"}),
        jobs.update_meeting(meeting_id, {"duration": 50}),
        jobs.update_meeting(meeting_id, {"topic": "Topic C"}),
    ]

    def finished() -> list[jobs.Job] | None:
        found = jobs.jobs_for(ids)
        return found if all(j.status in FINAL_STATUSES for j in found) else None

    done: list[jobs.Job] = wait_for(finished, timeout=90, what="the three updates")
    assert [j.status for j in done] == ["succeeded"] * 3, [j.error for j in done]
    assert done[0].attempts == 3 and done[1].attempts == 1 and done[2].attempts == 1
    zoom = _sim_meeting(sim_client, meeting_id)
    assert (zoom["topic"], zoom["duration"]) == ("Topic C", 50)
    finished_at = [j.finished_at for j in done]
    assert finished_at == sorted(finished_at), "applied in the order enqueued"  # type: ignore[type-var]
    row = _meeting_row(meeting_id)
    assert (row.topic, row.duration_min) == ("Topic C", 50)


# -- the simulator does what Zoom does ----------------------------------------------------------


def test_simulator_patch__past_start_time__ignored_silently(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    meeting_id = _created(runtime)

    runtime.client.update_meeting(meeting_id, {"start_time": "2020-01-01T10:00:00Z", "topic": "T"})

    zoom = _sim_meeting(sim_client, meeting_id)
    assert (zoom["start_time"], zoom["topic"]) == (BODY["start_time"], "T")


def test_simulator_patch__over_the_meeting_cap__429_naming_the_meeting(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    sim_client.configure(meeting_update_limit=2)
    meeting_id = _created(runtime)
    for n in range(2):
        runtime.client.update_meeting(meeting_id, {"topic": f"T{n}"})

    with pytest.raises(errors.MeetingUpdateLimitReached) as refused:
        runtime.client.update_meeting(meeting_id, {"topic": "One too many"})

    assert refused.value.status == 429 and refused.value.retry_at is not None


def test_simulator_fail_next__scripted_5xx_then_normal(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    meeting_id = _created(runtime)
    sim_client.fail_next("update", count=1, status=502)

    with pytest.raises(errors.ZoomServerError):
        runtime.client.update_meeting(meeting_id, {"topic": "Fails"})
    runtime.client.update_meeting(meeting_id, {"topic": "Goes"})

    assert _sim_meeting(sim_client, meeting_id)["topic"] == "Goes"


def test_update_sent_by_name__recorded_in_turn_or_failed_naming_the_field(
    runtime: meetings.Runtime,
) -> None:
    meeting_id = _created(runtime)
    good = {"meeting_id": meeting_id, "changes": {"topic": "By name"}}
    bad = {"meeting_id": meeting_id, "changes": {"topik": "typo"}}

    recorded = jobs.record_received(jobs.UPDATE, good, "task-1")
    again = jobs.record_received(jobs.UPDATE, good, "task-1")  # a redelivered message
    rejected = jobs.get_job(jobs.record_received(jobs.UPDATE, bad, "task-2"))

    assert again == recorded
    assert run_job(runtime, recorded).status == "succeeded"
    assert (
        rejected is not None and rejected.status == "failed" and "topik" in (rejected.error or "")
    )


def test_update_retried__goes_after_the_updates_enqueued_since(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    meeting_id, first, second = _two_updates_first_failed(runtime, sim_client)

    assert jobs.retry_job(first).status == "queued"

    assert runtime.ledger.claim(first) is None, "the second update was enqueued before the retry"
    assert run_job(runtime, second).status == "succeeded"
    assert run_job(runtime, first).status == "succeeded"
    assert _meeting_row(meeting_id).topic == "First"


def test_update_cancelled__the_next_one_goes(runtime: meetings.Runtime) -> None:
    meeting_id = _created(runtime)
    first = jobs.update_meeting(meeting_id, {"topic": "First"})
    second = jobs.update_meeting(meeting_id, {"topic": "Second"})
    assert runtime.ledger.claim(second) is None

    assert jobs.cancel_job(first).status == "cancelled"

    assert run_job(runtime, second).status == "succeeded"
