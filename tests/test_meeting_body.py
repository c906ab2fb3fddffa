"""Unit tests for worker.meeting_body: what Zoom's create-meeting body may hold."""

from __future__ import annotations

import copy
import enum
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from worker import errors, marker, meeting_body
from worker.simulator import start_simulator

EXAMPLE = {
    "topic": "Standup",
    "type": 2,
    "start_time": "2026-12-01T10:00:00Z",
    "duration": 30,
    "timezone": "UTC",
}
WEEKLY = {
    "topic": "Weekly sync",
    "type": 8,
    "start_time": "2026-12-01T09:00:00",
    "timezone": "America/New_York",
    "duration": 45,
    "recurrence": {"type": 2, "repeat_interval": 1, "weekly_days": "2,4", "end_times": 10},
    "settings": {"waiting_room": True, "approval_type": 2, "auto_recording": "cloud"},
}
CREATED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _weekly(**recurrence: Any) -> dict[str, Any]:
    return {"type": 8, "recurrence": {"type": 2, "weekly_days": "1"} | recurrence}


INVALID: list[tuple[str, Any, str]] = [
    ("not_a_mapping", ["topic"], "body"),
    ("unknown_top_level_field", {"start_tme": "2026-12-01T10:00:00Z"}, "start_tme"),
    ("topic_too_long", {"topic": "x" * 201}, "topic"),
    ("topic_not_a_string", {"topic": 5}, "topic"),
    ("topic_null", {"topic": None}, "topic"),
    ("agenda_too_long", {"agenda": "x" * 2001}, "agenda"),
    ("type_unknown", {"type": 4}, "type"),
    ("type_bool", {"type": True}, "type"),
    ("type_string", {"type": "2"}, "type"),
    ("duration_zero", {"duration": 0}, "duration"),
    ("duration_over_a_day", {"duration": 1441}, "duration"),
    ("duration_float", {"duration": 30.0}, "duration"),
    ("duration_string", {"duration": "30"}, "duration"),
    ("duration_bool", {"duration": True}, "duration"),
    ("duration_nan", {"duration": float("nan")}, "duration"),
    ("start_time_date_only", {"start_time": "2026-12-01"}, "start_time"),
    ("start_time_offset", {"start_time": "2026-12-01T10:00:00+01:00"}, "start_time"),
    ("start_time_fraction", {"start_time": "2026-12-01T10:00:00.000Z"}, "start_time"),
    ("start_time_space", {"start_time": "2026-12-01 10:00:00Z"}, "start_time"),
    ("start_time_impossible_date", {"start_time": "2026-02-30T10:00:00Z"}, "start_time"),
    ("start_time_hour_24", {"start_time": "2026-12-01T24:00:00Z"}, "start_time"),
    ("start_time_datetime_object", {"start_time": datetime(2026, 12, 1, tzinfo=UTC)}, "start_time"),
    ("start_time_local_without_timezone", {"start_time": "2026-12-01T10:00:00"}, "timezone"),
    ("start_time_on_instant", {"type": 1, "start_time": "2026-12-01T10:00:00Z"}, "start_time"),
    (
        "start_time_on_no_fixed_time",
        {"type": 3, "start_time": "2026-12-01T10:00:00Z"},
        "start_time",
    ),
    ("timezone_unknown", {"timezone": "Mars/Olympus"}, "timezone"),
    ("timezone_lowercase", {"timezone": "europe/berlin"}, "timezone"),
    ("timezone_path", {"timezone": "../etc/passwd"}, "timezone"),
    ("timezone_not_a_place", {"timezone": "Factory"}, "timezone"),
    ("password_too_long", {"password": "abcdefghijk"}, "password"),
    ("password_with_space", {"password": "abc 123"}, "password"),
    ("password_not_ascii", {"password": "pässwort"}, "password"),
    ("use_pmi_true", {"settings": {"use_pmi": True}}, "settings.use_pmi"),
    ("default_password_string", {"default_password": "true"}, "default_password"),
    ("pre_schedule_int", {"pre_schedule": 1}, "pre_schedule"),
    ("pre_schedule_on_recurring", _weekly() | {"pre_schedule": True}, "pre_schedule"),
    ("schedule_for_int", {"schedule_for": 7}, "schedule_for"),
    ("template_id_list", {"template_id": ["a"]}, "template_id"),
    ("tracking_fields_object", {"tracking_fields": {"field": "a"}}, "tracking_fields"),
    (
        "tracking_field_missing_field",
        {"tracking_fields": [{"value": "v"}]},
        "tracking_fields[0].field",
    ),
    (
        "tracking_field_unknown_key",
        {"tracking_fields": [{"field": "a"}, {"field": "b", "valu": "v"}]},
        "tracking_fields[1].valu",
    ),
    (
        "tracking_field_value_int",
        {"tracking_fields": [{"field": "a", "value": 1}]},
        "tracking_fields[0].value",
    ),
    ("settings_not_object", {"settings": []}, "settings"),
    (
        "settings_approval_type_unknown",
        {"settings": {"approval_type": 3}},
        "settings.approval_type",
    ),
    (
        "settings_approval_type_string",
        {"settings": {"approval_type": "0"}},
        "settings.approval_type",
    ),
    (
        "settings_registration_type",
        {"settings": {"registration_type": 0}},
        "settings.registration_type",
    ),
    ("settings_audio", {"settings": {"audio": "phone"}}, "settings.audio"),
    (
        "settings_auto_recording",
        {"settings": {"auto_recording": "Cloud"}},
        "settings.auto_recording",
    ),
    ("settings_jbh_time", {"settings": {"jbh_time": 7}}, "settings.jbh_time"),
    ("settings_host_video_int", {"settings": {"host_video": 1}}, "settings.host_video"),
    (
        "settings_waiting_room_string",
        {"settings": {"waiting_room": "yes"}},
        "settings.waiting_room",
    ),
    (
        "settings_alternative_hosts_list",
        {"settings": {"alternative_hosts": ["a@b.c"]}},
        "settings.alternative_hosts",
    ),
    (
        "settings_invitees_not_list",
        {"settings": {"meeting_invitees": "a@b.c"}},
        "settings.meeting_invitees",
    ),
    (
        "settings_invitee_bad_email",
        {"settings": {"meeting_invitees": [{"email": "a@b.c"}, {"email": "nobody"}]}},
        "settings.meeting_invitees[1].email",
    ),
    (
        "settings_nested_enum",
        {"settings": {"approved_or_denied_countries_or_regions": {"method": "block"}}},
        "settings.approved_or_denied_countries_or_regions.method",
    ),
    (
        "settings_waiting_room_options_without_mode",
        {"settings": {"waiting_room_options": {}}},
        "settings.waiting_room_options.mode",
    ),
    ("settings_unknown_key_not_json", {"settings": {"new_flag": {1, 2}}}, "settings.new_flag"),
    ("recurrence_on_scheduled", {"type": 2, "recurrence": {"type": 1}}, "recurrence"),
    ("recurrence_on_no_fixed_time", {"type": 3, "recurrence": {"type": 1}}, "recurrence"),
    (
        "recurrence_without_type",
        {"type": 8, "recurrence": {"repeat_interval": 1}},
        "recurrence.type",
    ),
    ("recurrence_type_unknown", {"type": 8, "recurrence": {"type": 4}}, "recurrence.type"),
    ("recurrence_unknown_key", _weekly(weekly_day="1"), "recurrence.weekly_day"),
    (
        "recurrence_weekly_without_days",
        {"type": 8, "recurrence": {"type": 2}},
        "recurrence.weekly_days",
    ),
    ("recurrence_weekly_days_zero", _weekly(weekly_days="0"), "recurrence.weekly_days"),
    ("recurrence_weekly_days_spaces", _weekly(weekly_days="1, 3"), "recurrence.weekly_days"),
    ("recurrence_weekly_days_int", _weekly(weekly_days=1), "recurrence.weekly_days"),
    (
        "recurrence_weekly_days_on_daily",
        {"type": 8, "recurrence": {"type": 1, "weekly_days": "1"}},
        "recurrence.weekly_days",
    ),
    (
        "recurrence_daily_interval_100",
        {"type": 8, "recurrence": {"type": 1, "repeat_interval": 100}},
        "recurrence.repeat_interval",
    ),
    ("recurrence_weekly_interval_51", _weekly(repeat_interval=51), "recurrence.repeat_interval"),
    (
        "recurrence_monthly_interval_11",
        {"type": 8, "recurrence": {"type": 3, "repeat_interval": 11}},
        "recurrence.repeat_interval",
    ),
    ("recurrence_interval_zero", _weekly(repeat_interval=0), "recurrence.repeat_interval"),
    (
        "recurrence_monthly_day_32",
        {"type": 8, "recurrence": {"type": 3, "monthly_day": 32}},
        "recurrence.monthly_day",
    ),
    ("recurrence_monthly_day_on_weekly", _weekly(monthly_day=1), "recurrence.monthly_day"),
    (
        "recurrence_monthly_week_5",
        {"type": 8, "recurrence": {"type": 3, "monthly_week": 5, "monthly_week_day": 1}},
        "recurrence.monthly_week",
    ),
    (
        "recurrence_monthly_week_day_8",
        {"type": 8, "recurrence": {"type": 3, "monthly_week": 1, "monthly_week_day": 8}},
        "recurrence.monthly_week_day",
    ),
    (
        "recurrence_monthly_week_alone",
        {"type": 8, "recurrence": {"type": 3, "monthly_week": -1}},
        "recurrence.monthly_week_day",
    ),
    (
        "recurrence_monthly_week_day_alone",
        {"type": 8, "recurrence": {"type": 3, "monthly_week_day": 2}},
        "recurrence.monthly_week",
    ),
    (
        "recurrence_monthly_day_and_week",
        {
            "type": 8,
            "recurrence": {"type": 3, "monthly_day": 1, "monthly_week": 1, "monthly_week_day": 2},
        },
        "recurrence.monthly_week",
    ),
    ("recurrence_end_times_61", _weekly(end_times=61), "recurrence.end_times"),
    (
        "recurrence_end_date_time_local",
        _weekly(end_date_time="2027-01-01T00:00:00"),
        "recurrence.end_date_time",
    ),
    (
        "recurrence_end_date_time_impossible",
        _weekly(end_date_time="2027-13-01T00:00:00Z"),
        "recurrence.end_date_time",
    ),
    (
        "recurrence_end_times_and_end_date_time",
        _weekly(end_times=3, end_date_time="2027-01-01T00:00:00Z"),
        "recurrence.end_date_time",
    ),
    ("non_string_key", {"settings": {1: True}}, "settings"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in INVALID], ids=[n for n, _, _ in INVALID]
)
def test_validate_create_body__invalid__names_field(body: Any, field: str) -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        meeting_body.validate_create_body(body)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_validate_create_body__topic_too_long__names_topic() -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        meeting_body.validate_create_body({"topic": "x" * (meeting_body.TOPIC_MAX + 1)})
    assert caught.value.field == "topic"
    assert "200" in caught.value.message
    meeting_body.validate_create_body({"topic": "x" * meeting_body.TOPIC_MAX})


def test_validate_create_body__typo__suggests_the_field() -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        meeting_body.validate_create_body({"start_tme": "2026-12-01T10:00:00Z"})
    assert '"start_time"' in caught.value.message


def test_validate_create_body__datetime__asks_for_an_iso_string() -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        meeting_body.validate_create_body({"start_time": date(2026, 12, 1)})
    assert "ISO" in caught.value.message


VALID: list[tuple[str, dict[str, Any]]] = [
    ("empty", {}),
    ("interface_example", EXAMPLE),
    ("weekly_recurring", WEEKLY),
    (
        "settings_unknown_key",
        {"settings": {"host_video": True, "brand_new_setting": {"a": [1, 2.5]}}},
    ),
    ("instant", {"type": 1, "topic": "Now", "duration": 15}),
    ("no_fixed_time", {"type": 3, "settings": {"use_pmi": False}}),
    ("screen_share_only", {"type": 10, "start_time": "2026-12-01T10:00:00Z"}),
    ("past_start_time", {"start_time": "2001-01-01T00:00:00Z"}),
    (
        "z_start_time_with_timezone",
        {"start_time": "2026-12-01T10:00:00Z", "timezone": "Asia/Tokyo"},
    ),
    ("password_all_allowed_characters", {"password": "aZ09@_*-", "default_password": False}),
    ("password_2026_special_characters", {"password": "abc#123!"}),
    ("password_empty", {"password": ""}),
    (
        "tracking_fields",
        {"tracking_fields": [{"field": "team", "value": "ops"}, {"field": "cost"}]},
    ),
    (
        "monthly_by_week",
        {
            "type": 8,
            "start_time": "2026-12-01T10:00:00Z",
            "recurrence": {
                "type": 3,
                "repeat_interval": 10,
                "monthly_week": -1,
                "monthly_week_day": 6,
            },
        },
    ),
    (
        "daily_until",
        {
            "type": 8,
            "recurrence": {
                "type": 1,
                "repeat_interval": 99,
                "end_date_time": "2027-06-30T23:59:00Z",
            },
        },
    ),
    ("end_times_zero_means_no_end", _weekly(end_times=0)),
    ("pre_schedule_scheduled", {"type": 2, "pre_schedule": True}),
    (
        "rich_settings",
        {
            "settings": {
                "approval_type": 0,
                "registration_type": 3,
                "audio": "thirdParty",
                "jbh_time": 15,
                "join_before_host": True,
                "alternative_hosts": "a@example.com;b@example.com",
                "meeting_invitees": [{"email": "a@example.com"}],
                "approved_or_denied_countries_or_regions": {
                    "enable": True,
                    "method": "deny",
                    "denied_list": ["CA"],
                },
                "waiting_room_options": {"mode": "custom", "who_goes_to_waiting_room": "everyone"},
                "breakout_room": {
                    "enable": True,
                    "rooms": [{"name": "r1", "participants": ["a@example.com"]}],
                },
            }
        },
    ),
]


@pytest.mark.parametrize("body", [b for _, b in VALID], ids=[n for n, _ in VALID])
def test_validate_create_body__valid__returns_equal_independent_copy(body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    result = meeting_body.validate_create_body(body)
    assert result == body
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    # A deep copy: changing the result leaves the caller's body alone.
    for value in result.values():
        if isinstance(value, dict):
            value["changed"] = True
    result["topic"] = "changed"
    assert body == before


def test_validate_create_body__tuples_and_enums__become_plain_json_types() -> None:
    class Kind(enum.IntEnum):
        SCHEDULED = 2

    class Recording(enum.StrEnum):
        CLOUD = "cloud"

    result = meeting_body.validate_create_body(
        {"type": Kind.SCHEDULED, "settings": {"auto_recording": Recording.CLOUD, "extra": (1, 2)}}
    )
    assert result == {"type": 2, "settings": {"auto_recording": "cloud", "extra": [1, 2]}}
    assert type(result["type"]) is int
    assert type(result["settings"]["auto_recording"]) is str
    assert (
        json.dumps(result)
        == '{"type": 2, "settings": {"auto_recording": "cloud", "extra": [1, 2]}}'
    )


def test_validate_create_body__reserved_agenda_chars__shrinks_the_agenda_budget() -> None:
    meeting_body.validate_create_body({"agenda": "x" * 1960}, reserved_agenda_chars=40)
    with pytest.raises(errors.InvalidMeeting) as caught:
        meeting_body.validate_create_body({"agenda": "x" * 1961}, reserved_agenda_chars=40)
    assert caught.value.field == "agenda"
    assert "1960" in caught.value.message
    assert meeting_body.AGENDA_MAX == 2000
    meeting_body.validate_create_body({"agenda": "x" * meeting_body.AGENDA_MAX})


@pytest.mark.parametrize("reserved", [-1, meeting_body.AGENDA_MAX])
def test_validate_create_body__impossible_reservation__is_a_caller_error(reserved: int) -> None:
    with pytest.raises(ValueError, match="reserved_agenda_chars") as caught:
        meeting_body.validate_create_body({}, reserved_agenda_chars=reserved)
    assert not isinstance(caught.value, errors.InvalidMeeting)


def test_scheduled_end__utc_start__adds_duration() -> None:
    end = meeting_body.scheduled_end(EXAMPLE, created_at=CREATED)
    assert end == datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
    assert end is not None and end.utcoffset() == timedelta(0)


def test_scheduled_end__local_start__uses_timezone() -> None:
    body = {"start_time": "2026-12-01T10:00:00", "timezone": "Europe/Berlin", "duration": 30}
    assert meeting_body.scheduled_end(
        meeting_body.validate_create_body(body), created_at=CREATED
    ) == (datetime(2026, 12, 1, 9, 30, tzinfo=UTC))


def test_scheduled_end__recurring_fixed_time__not_before_last_occurrence_ends() -> None:
    # Mondays and Wednesdays at 09:00 New York (14:00 UTC) from Tuesday 1 December, ten
    # times: the last is Monday 4 January, ending at 14:45 UTC. It was given the first
    # occurrence's end (1 December 14:45), so the cleanup deleted the whole series then.
    end = meeting_body.scheduled_end(WEEKLY, created_at=CREATED)
    assert end is not None
    assert (
        datetime(2027, 1, 4, 14, 45, tzinfo=UTC) <= end <= datetime(2027, 1, 12, 14, 45, tzinfo=UTC)
    )


@pytest.mark.parametrize(
    "body",
    [
        {"type": 1, "duration": 20},
        {"duration": 20},
        {"start_time": "2020-01-01T00:00:00Z", "duration": 20},
    ],
    ids=["instant", "no_start_time", "past_start_time"],
)
def test_scheduled_end__starts_now__counts_from_created_at(body: dict[str, Any]) -> None:
    assert meeting_body.scheduled_end(body, created_at=CREATED) == CREATED + timedelta(minutes=20)


def test_scheduled_end__no_duration__uses_zoom_default_of_60_minutes() -> None:
    end = meeting_body.scheduled_end({"start_time": "2026-12-01T10:00:00Z"}, created_at=CREATED)
    assert end == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)


def test_scheduled_end__no_fixed_time__is_none() -> None:
    assert meeting_body.scheduled_end({"type": 3, "duration": 30}, created_at=CREATED) is None


def test_scheduled_end__naive_created_at__refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        meeting_body.scheduled_end(EXAMPLE, created_at=datetime(2026, 11, 1, 12, 0))


@pytest.mark.parametrize("user_id", ["KDcuGIm1QgePTO8WbOqwIQ", "jchill@example.com", "x" * 256])
def test_validate_user_id__id_or_email__returned(user_id: str) -> None:
    assert meeting_body.validate_user_id(user_id) == user_id


@pytest.mark.parametrize(
    "user_id",
    ["", "me", "ME", "a/b", "a b", "tab\tid", "new\nline", "x" * 257, None, 5, b"abc"],
    ids=[
        "empty",
        "me",
        "ME",
        "slash",
        "space",
        "tab",
        "newline",
        "too_long",
        "none",
        "int",
        "bytes",
    ],
)
def test_validate_user_id__invalid__names_user_id(user_id: object) -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        meeting_body.validate_user_id(user_id)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == "user_id"


@pytest.mark.parametrize(
    ("meeting_id", "expected"),
    [
        (1, 1),
        (85746065432, 85746065432),
        ("85746065432", 85746065432),
        (2**63 - 1, 2**63 - 1),
        (str(2**63 - 1), 2**63 - 1),
    ],
)
def test_validate_meeting_id__int64__returned_as_int(meeting_id: object, expected: int) -> None:
    result = meeting_body.validate_meeting_id(meeting_id)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "meeting_id",
    [
        0,
        -1,
        2**63,
        str(2**63),
        True,
        False,
        5.0,
        "5.0",
        "",
        " 5",
        "+5",
        "-5",
        "\u0665",
        "1" * 30,
        None,
        [5],
    ],
    ids=[
        "zero",
        "negative",
        "int64_overflow",
        "int64_overflow_string",
        "true",
        "false",
        "float",
        "float_string",
        "empty",
        "leading_space",
        "plus_sign",
        "minus_sign",
        "arabic_digit",
        "thirty_digits",
        "none",
        "list",
    ],
)
def test_validate_meeting_id__invalid__names_meeting_id(meeting_id: object) -> None:
    with pytest.raises(errors.InvalidMeeting) as caught:
        meeting_body.validate_meeting_id(meeting_id)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == "meeting_id"


# -- every body the validator accepts, Zoom (the simulator) accepts --------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_PASSWORDS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10)
_ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
_STAMPS = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%S")
)
_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "use_pmi": st.just(False),
        "waiting_room": st.booleans(),
        "approval_type": st.sampled_from([0, 1, 2]),
        "auto_recording": st.sampled_from(["local", "cloud", "none"]),
        "jbh_time": st.sampled_from([0, 5, 10, 15]),
        "alternative_hosts": _TEXT,
    },
)
_WEEKLY = st.fixed_dictionaries(
    {
        "type": st.just(2),
        "weekly_days": st.sets(st.integers(1, 7), min_size=1).map(
            lambda days: ",".join(map(str, sorted(days)))
        ),
    },
    optional={"repeat_interval": st.integers(1, 50), "end_times": st.integers(0, 60)},
)
_DAILY = st.fixed_dictionaries(
    {"type": st.just(1)},
    optional={
        "repeat_interval": st.integers(1, 99),
        "end_date_time": _STAMPS.map(lambda t: t + "Z"),
    },
)


@st.composite
def _accepted_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Bodies drawn from the validator's own rules (fields, types, ranges, passcodes)."""
    kind = draw(st.sampled_from([1, 2, 3, 8, 10, None]))
    body: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "topic": st.text(max_size=200),
                "agenda": st.text(max_size=300),
                "duration": st.integers(1, meeting_body.DURATION_MAX),
                "password": _PASSWORDS,
                "default_password": st.booleans(),
                "schedule_for": st.sampled_from(["boss@example.com", "U2xvdHM"]),
                "settings": _SETTINGS,
                "tracking_fields": st.lists(
                    st.fixed_dictionaries({"field": _TEXT}, optional={"value": _TEXT}), max_size=2
                ),
            },
        )
    )
    if kind is not None:
        body["type"] = kind
    if kind not in (1, 3) and draw(st.booleans()):
        stamp = draw(_STAMPS)
        zone = draw(st.none() | _ZONES)
        body |= {"start_time": stamp + ("" if zone else "Z")} | ({"timezone": zone} if zone else {})
    if kind == 8:
        body["recurrence"] = draw(_WEEKLY | _DAILY)
    try:
        return meeting_body.validate_create_body(
            body, reserved_agenda_chars=marker.RESERVED_AGENDA_CHARS
        )
    except errors.InvalidMeeting:
        assume(False)
        raise


def test_validate_create_body__every_accepted_body__simulator_accepts_it() -> None:
    with start_simulator() as sim, httpx.Client(timeout=10) as http:
        form = {"grant_type": "account_credentials", "account_id": "sim-account"}
        answer = http.post(sim.oauth_url, auth=("sim-client", "sim-secret"), data=form)
        headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        sim.simulator.configure(daily_create_limit=100_000)
        refused: list[tuple[dict[str, Any], str]] = []

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(_accepted_bodies())
        def post(body: dict[str, Any]) -> None:
            sent = marker.create_body(body, "[zw:0123456789abcdef]")
            response = http.post(
                f"{sim.api_url}/users/h@example.com/meetings", json=sent, headers=headers
            )
            if response.status_code != 201:
                refused.append((body, response.text))

        post()
    assert refused == []
