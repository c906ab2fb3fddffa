"""The correlation marker and the one search for a lost create (worker.marker), driven
through a real create job (jobs -> ledger -> meetings.run) against PostgreSQL and the simulator.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from worker import celery_app, errors, jobs, marker, meetings, zoom
from worker.config import get_settings
from worker.simulator import SimulatorClient

pytestmark = pytest.mark.usefixtures("env")

EMOJI_AGENDA = "\N{GRINNING FACE}" * 240  # 240 code points, 480 UTF-16 units


@pytest.fixture
def runtime() -> Iterator[meetings.Runtime]:
    built = meetings.Runtime.from_settings(get_settings(), send=celery_app.send)
    built = dataclasses.replace(built, gate=meetings.OpenGate())
    try:
        yield built
    finally:
        built.client.close()
        built.store.close()


def _run_once(job_id: uuid.UUID, runtime: meetings.Runtime) -> None:
    claim = runtime.ledger.claim(job_id)
    assert claim is not None, "the job is claimable"
    meetings.run(claim, runtime)


def _create_with_lost_reply(
    runtime: meetings.Runtime, sim_client: SimulatorClient, user: str, body: dict[str, Any]
) -> uuid.UUID:
    """A create job whose first reply is lost, then run again with Zoom answering."""
    job_id = jobs.create_meeting(user, body)
    sim_client.configure(reply_lost_rate=1.0)
    _run_once(job_id, runtime)
    sim_client.configure(reply_lost_rate=0.0)
    assert sim_client.stats()["replies_lost"] == 1
    _run_once(job_id, runtime)
    return job_id


def _made(sim_client: SimulatorClient) -> list[dict[str, Any]]:
    return [m for m in sim_client.meetings() if not m["foreign"]]


def test_marker__lost_reply_on_schedule_for_create__one_meeting_adopted(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    body = {"topic": "For the boss", "schedule_for": "boss@example.com", "duration": 30}

    job_id = _create_with_lost_reply(runtime, sim_client, "assistant@example.com", body)

    [made] = _made(sim_client)
    job = jobs.get_job(job_id)
    assert job is not None and job.status == "succeeded"
    assert job.meeting_id == made["id"] and made["host_email"] == "boss@example.com"


def test_marker__lost_reply_on_instant_create__no_second_post_outcome_unknown(
    runtime: meetings.Runtime, sim_client: SimulatorClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"topic": "Right now", "type": 1, "duration": 15}

    job_id = _create_with_lost_reply(runtime, sim_client, "ines@example.com", body)

    assert len(_made(sim_client)) == 1 and sim_client.stats()["meetings_created"] == 1
    job = jobs.get_job(job_id)
    assert job is not None and job.meeting_id is None and job.status == "failed"
    assert job.error and "outcome unknown" in job.error and "ines@example.com" in job.error


def test_marker__instant_body__search_refused_with_what_to_check() -> None:
    with pytest.raises(errors.OutcomeUnknown) as caught:
        marker.check_searchable({"type": 1}, "[zw:0123456789abcdef]", "ines@example.com")

    assert caught.value.reason.startswith("outcome unknown")
    assert "[zw:0123456789abcdef]" in caught.value.reason and "check host" in caught.value.reason
    marker.check_searchable({"type": 2}, "[zw:0123456789abcdef]", "ines@example.com")


@pytest.mark.parametrize("rule", ["utf16", "code_points"])
def test_marker__lost_reply_240_emoji_agenda__one_meeting(
    runtime: meetings.Runtime, sim_client: SimulatorClient, rule: str
) -> None:
    sim_client.configure(list_agenda_cut=rule)
    body = {"topic": "Emoji", "agenda": EMOJI_AGENDA}

    job_id = _create_with_lost_reply(runtime, sim_client, "emil@example.com", body)

    [made] = _made(sim_client)
    job = jobs.get_job(job_id)
    assert job is not None and job.status == "succeeded" and job.meeting_id == made["id"]
    assert sim_client.stats()["meetings_created"] == 1


def test_marker__lost_reply_marker_on_second_page__found(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    for n in range(300):  # a full first page of another app's meetings
        sim_client.seed_meeting("paula@example.com", {"topic": f"Other {n}"})

    job_id = _create_with_lost_reply(runtime, sim_client, "paula@example.com", {"topic": "Mine"})

    job = jobs.get_job(job_id)
    assert job is not None and job.status == "succeeded"
    assert sim_client.stats()["meetings_created"] == 1


def test_marker__host_profile_uses_pmi__job_meeting_is_not_the_pmi(
    runtime: meetings.Runtime, sim_client: SimulatorClient
) -> None:
    pmi = sim_client.set_use_pmi("pmi@example.com")
    first = jobs.create_meeting("pmi@example.com", {"topic": "One"})
    second = jobs.create_meeting("pmi@example.com", {"topic": "Two"})

    _run_once(first, runtime)
    _run_once(second, runtime)

    ids = {job.meeting_id for job in (jobs.get_job(first), jobs.get_job(second)) if job}
    assert len(ids) == 2 and pmi not in ids
    assert all(m["settings"]["use_pmi"] is False for m in _made(sim_client))


def test_marker__use_pmi_true__refused_at_enqueue() -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        jobs.create_meeting("pmi@example.com", {"settings": {"use_pmi": True}})

    assert caught.value.field == "settings.use_pmi"
    assert "Personal Meeting ID" in str(caught.value)


def test_marker__create_body__marker_appended_use_pmi_false_unless_set() -> None:
    sent = marker.create_body({"agenda": "Plan", "settings": {"waiting_room": True}}, "[zw:ab]")
    kept = marker.create_body({"settings": {"use_pmi": False}}, "[zw:ab]")

    assert sent == {
        "agenda": "Plan\n\n[zw:ab]",
        "settings": {"use_pmi": False, "waiting_room": True},
    }
    assert kept["settings"] == {"use_pmi": False} and kept["agenda"] == "[zw:ab]"


def test_marker__host_of__schedule_for_else_user() -> None:
    assert marker.host_of("a@example.com", {"schedule_for": "b@example.com"}) == "b@example.com"
    assert marker.host_of("a@example.com", {"topic": "x"}) == "a@example.com"
    assert marker.host_of("a@example.com", None) == "a@example.com"


# -- which listed meetings are fetched whole ------------------------------------------------

MARK = "[zw:00112233aabbccdd]"


class _Listing:
    """A ZoomClient stand-in: lists the given agendas, answers GET with the whole one."""

    def __init__(self, listed: dict[int, str], whole: dict[int, str]) -> None:
        self.listed, self.whole = listed, whole
        self.fetched: list[int] = []

    def list_meetings(self, user_id: str) -> Iterator[zoom.Meeting]:
        return (self._meeting(i, agenda) for i, agenda in self.listed.items())

    def get_meeting(self, meeting_id: int) -> zoom.Meeting:
        self.fetched.append(meeting_id)
        return self._meeting(meeting_id, self.whole[meeting_id])

    @staticmethod
    def _meeting(meeting_id: int, agenda: str) -> zoom.Meeting:
        return zoom.Meeting.from_zoom({"id": meeting_id, "agenda": agenda})


def _search(agenda: str, listed: str, whole: str | None = None) -> tuple[bool, bool]:
    """(found, fetched) for one listed meeting and one wanted create with ``agenda``."""
    client = _Listing({1: listed}, {1: whole if whole is not None else listed})
    permits: list[str] = []
    found = marker.find(client, permits.append, "h", [marker.Wanted.of({"agenda": agenda}, MARK)])  # type: ignore[arg-type]
    assert permits == ["list"] + ["get"] * len(client.fetched)
    return MARK in found, bool(client.fetched)


@pytest.mark.parametrize(
    ("agenda", "listed", "found", "fetched"),
    [
        ("Plan", f"Plan\n\n{MARK}", True, False),
        ("a" * 300, "a" * 250, True, True),  # cut by code points at 250
        ("a" * 100, "a" * 50, True, True),  # cut shorter than 250: still fetched
        (EMOJI_AGENDA, "\N{GRINNING FACE}" * 124 + "\ud83d", True, True),  # UTF-16, half a pair
        ("line\r\nend " * 40, "line\nend " * 25, True, True),  # line ends normalised
        ("Plan", "Other agenda", False, False),
        ("Plan", "", False, False),
        ("Plan", "Plan\n\n[zw:ffffffffffffffff]", False, False),  # another job's marker
    ],
    ids=["shown", "cut_250", "cut_short", "utf16_half_pair", "crlf", "other", "empty", "other_job"],
)
def test_marker__find__fetches_whenever_the_list_could_have_cut(
    agenda: str, listed: str, found: bool, fetched: bool
) -> None:
    whole = marker.agenda_with_marker(agenda, MARK) if found else listed
    assert _search(agenda, listed, whole) == (found, fetched)
