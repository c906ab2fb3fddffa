"""The body of Zoom's "Create a meeting" call (``POST /users/{userId}/meetings``), checked early.

A body that Zoom would refuse, or would quietly read differently from what the caller meant,
fails before its job is stored or queued, with ``errors.InvalidMeeting`` naming the field's
dotted path (``settings.approval_type``, ``tracking_fields[0].field``). The checks are built
with :mod:`worker.checks`. The limits are those of
Zoom's Meetings OpenAPI file (2026), written out here because the worker does not ship it.

- JSON must be able to carry every value: a ``datetime``, ``set`` or ``bytes`` is refused (pass
  an ISO string or a list). The result is a deep, JSON-ready copy; only mappings, tuples and
  int/str subclasses (enums) become dict, list, int and str. Time zones are never converted.
- Unknown top-level fields are refused, because Zoom ignores them without a word: a typo such
  as ``start_tme`` would create a meeting at the wrong time. ``recurrence`` and
  ``tracking_fields`` items are closed too. ``settings`` is open, because Zoom adds settings
  often: unknown keys pass through, but a known key of the wrong type or value is refused.
- Types, enums, lengths and ranges follow the spec: ``topic`` <= 200 characters, ``agenda``
  <= 2000 less what the worker keeps for its correlation marker, ``type`` 1/2/3/8/10,
  ``duration`` 1..1440 minutes, ``timezone`` an IANA name, booleans real JSON booleans.
  ``password`` is <= 10 printable ASCII characters without spaces: the 2026 spec allows
  "alphanumeric characters as well as special characters such as !, @, #", and sets no minimum,
  so ``""`` passes (no passcode given; the simulator reads it so too).
- ``settings.use_pmi: true`` is refused: the meeting would be the host's Personal Meeting ID,
  their personal room, shared by every job that used it and deleted by none safely.
- ``start_time`` is ``yyyy-MM-ddTHH:mm:ssZ`` (UTC) or ``yyyy-MM-ddTHH:mm:ss`` in ``timezone``;
  the spec names no fractions and no offsets. Zoom reads a time without ``Z`` or ``timezone``
  in the *account's* time zone, which the worker cannot see, so that is refused. A past start
  is allowed (Zoom starts the meeting now). Zoom ignores ``start_time`` for types 1 (instant)
  and 3 (no fixed time), so it is refused there.
- ``recurrence`` is "only for a meeting with type 8". ``repeat_interval`` is at most 99 days,
  50 weeks or 10 months; ``weekly_days`` is required when weekly and refused otherwise, the
  monthly fields are refused unless monthly; ``end_times`` (0..60, 0 = no end) and
  ``end_date_time`` (UTC) exclude each other. ``pre_schedule`` is only for types 2 and 3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker import checks, schedule

AGENDA_MAX = 2000
TOPIC_MAX = 200
DURATION_MAX = 1440
DEFAULT_DURATION = 60
PASSWORD_MAX = 10
USER_ID_MAX = 256
INT64_MAX = 2**63 - 1

_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(Z?)")
_TYPE_NAMES = {1: "instant", 3: "recurring with no fixed time"}
# Files in the tz database that name no place, so Zoom would not know them.
_NOT_ZONES = frozenset({"Factory", "localtime", "posixrules"})


def _timezone(path: str, value: Any) -> None:
    _STR(path, value)
    try:
        known = value not in _NOT_ZONES and ZoneInfo(value) is not None
    except (ZoneInfoNotFoundError, ValueError, OSError):
        known = False
    if not known:
        checks.fail(
            path,
            f'must be an IANA time zone name such as "Europe/Berlin"; got {checks.show(value)}',
        )


def _utc_time(path: str, value: Any) -> None:
    _STR(path, value)
    _parse_time(path, value, None, utc_only=True)


def _no_pmi(path: str, value: Any) -> None:
    _BOOL(path, value)
    if value:
        checks.fail(
            path,
            "true is refused: the meeting would be the host's Personal Meeting ID, their "
            "personal room shared by every meeting that uses it, which this service could "
            "neither own nor delete safely; leave it out (the worker sends false)",
        )


_STR = checks.string()
_BOOL = checks.choice(True, False)
_EMAIL = checks.string(pattern=r"[^@\s]+@[^@\s]+", shape="an email address")
# Settings are many and mostly flags: the names, as the spec lists them, read best as words.
_BOOL_SETTINGS = """
    allow_multiple_devices alternative_hosts_email_notification close_registration cn_meeting
    email_notification focus_mode host_video in_meeting join_before_host meeting_authentication
    mute_upon_entry participant_video private_meeting registrants_confirmation_email
    registrants_email_notification show_share_button show_join_info waiting_room
    watermark host_save_video_order alternative_host_update_polls
    alternative_host_manage_meeting_summary alternative_host_manage_cloud_recording
    internal_meeting participant_focused_meeting push_change_to_calendar
    auto_start_meeting_summary auto_start_ai_companion_questions device_testing
    request_permission_to_unmute_participants allow_host_control_participant_mute_state
    disable_participant_video email_in_attendee_report
""".split()  # noqa: SIM905
_STR_SETTINGS = """
    alternative_hosts authentication_domains authentication_option contact_email contact_name
    summary_template_id
""".split()  # noqa: SIM905
# Nested settings objects that each carry an "enable" flag; their other keys pass unchecked.
_ENABLE_SETTINGS = """
    breakout_room continuous_meeting_chat language_interpretation sign_language_interpretation
    question_and_answer
""".split()  # noqa: SIM905

_SETTINGS = checks.obj(
    {
        **dict.fromkeys(_BOOL_SETTINGS, _BOOL),
        **dict.fromkeys(_STR_SETTINGS, _STR),
        **dict.fromkeys(_ENABLE_SETTINGS, checks.obj({"enable": _BOOL})),
        "auto_add_recording_to_video_management": checks.obj(
            {"enable": _BOOL}, required=("enable",)
        ),
        "additional_data_center_regions": checks.array(_STR),
        "global_dial_in_countries": checks.array(_STR),
        "approval_type": checks.choice(0, 1, 2),
        "registration_type": checks.choice(1, 2, 3),
        "audio": checks.choice("both", "telephony", "voip", "thirdParty"),
        "audio_conference_info": checks.string(2048),
        "auto_recording": checks.choice("local", "cloud", "none"),
        "calendar_type": checks.choice(1, 2),
        "encryption_type": checks.choice("enhanced_encryption", "e2ee"),
        "jbh_time": checks.choice(0, 5, 10, 15),
        "who_will_receive_summary": checks.choice(1, 2, 3, 4),
        "who_can_ask_questions": checks.choice(1, 2, 3, 4, 5),
        "meeting_invitees": checks.array(checks.obj({"email": _EMAIL})),
        "authentication_exception": checks.array(checks.obj({"email": _EMAIL, "name": _STR})),
        "approved_or_denied_countries_or_regions": checks.obj(
            {"enable": _BOOL, "method": checks.choice("approve", "deny")}
            | dict.fromkeys(("approved_list", "denied_list"), checks.array(_STR))
        ),
        "waiting_room_options": checks.obj(
            {"mode": checks.choice("follow_setting", "custom"), "who_goes_to_waiting_room": _STR},
            required=("mode",),
        ),
        "resources": checks.array(checks.obj({})),
        "use_pmi": _no_pmi,
    }
)

_RECURRENCE = checks.obj(
    {
        "type": checks.choice(1, 2, 3),
        "repeat_interval": checks.integer(1, 99),  # the per-kind maximum is checked below
        "weekly_days": checks.string(
            pattern=r"[1-7](,[1-7])*",
            shape='comma-separated days from 1 (Sunday) to 7 (Saturday), such as "2,4"',
        ),
        "monthly_day": checks.integer(1, 31),
        "monthly_week": checks.choice(-1, 1, 2, 3, 4),
        "monthly_week_day": checks.choice(1, 2, 3, 4, 5, 6, 7),
        "end_times": checks.integer(0, 60),
        "end_date_time": _utc_time,
    },
    required=("type",),
    closed=True,
)

_BODY = checks.obj(
    {
        "agenda": _STR,  # its length is checked against the caller's budget
        "default_password": _BOOL,
        "duration": checks.integer(1, DURATION_MAX),
        "password": checks.string(PASSWORD_MAX, r"[!-~]*", "printable ASCII without spaces"),
        "pre_schedule": _BOOL,
        "recurrence": _RECURRENCE,
        "schedule_for": _STR,
        "settings": _SETTINGS,
        "start_time": _STR,  # its format is checked together with timezone
        "template_id": _STR,
        "timezone": _timezone,
        "topic": checks.string(TOPIC_MAX),
        "tracking_fields": checks.array(
            checks.obj({"field": _STR, "value": _STR}, required=("field",), closed=True)
        ),
        "type": checks.choice(1, 2, 3, 8, 10),
    },
    closed=True,
)

_MONTHLY = ("monthly_day", "monthly_week", "monthly_week_day")
_MONTHLY_PAIR = frozenset(_MONTHLY[1:])
# recurrence field -> the recurrence type it belongs to (Zoom ignores it for the others)
_RECURRENCE_ONLY_FOR = {"weekly_days": 2} | dict.fromkeys(_MONTHLY, 3)
_RECURRENCE_KINDS = {1: ("daily", 99), 2: ("weekly", 50), 3: ("monthly", 10)}


def _parse_time(path: str, text: str, zone: str | None, *, utc_only: bool = False) -> datetime:
    """``text`` as an aware datetime; a time without ``Z`` is read in the time zone ``zone``."""
    match = _TIME.fullmatch(text)
    if match is None or (utc_only and not match[7]):
        shape = (
            'a UTC time like "2027-06-30T23:59:00Z"'
            if utc_only
            else 'like "2026-12-01T10:00:00Z" (UTC) or "2026-12-01T10:00:00" (in timezone)'
        )
        checks.fail(path, f"must be {shape}, without fractions or offsets; got {checks.show(text)}")
    if not match[7] and zone is None:
        checks.fail(
            "timezone",
            f"is required when {path} has no Z: Zoom would read the time in the Zoom account's "
            "time zone, which the worker cannot know; add Z for UTC or give a timezone",
        )
    tzinfo = UTC if match[7] or zone is None else ZoneInfo(zone)
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
        return datetime(year, month, day, hour, minute, second, tzinfo=tzinfo)
    except ValueError:
        checks.fail(path, f"is not a real date and time: {checks.show(text)}")


def _check_recurrence(recurrence: dict[str, Any]) -> None:
    kind = recurrence["type"]
    name, most = _RECURRENCE_KINDS[kind]
    if (interval := recurrence.get("repeat_interval", 1)) > most:
        checks.fail(
            "recurrence.repeat_interval", f"must be at most {most} when {name}; got {interval}"
        )
    if kind == 2 and "weekly_days" not in recurrence:
        checks.fail("recurrence.weekly_days", "is required for a weekly recurrence (type 2)")
    for field, wanted in _RECURRENCE_ONLY_FOR.items():
        if field in recurrence and kind != wanted:
            only = f"{_RECURRENCE_KINDS[wanted][0]} (type {wanted})"
            checks.fail(
                f"recurrence.{field}", f"is only used when {only}; Zoom ignores it when {name}"
            )
    if "monthly_day" in recurrence and "monthly_week" in recurrence:
        checks.fail("recurrence.monthly_week", "cannot be used with monthly_day; give one of them")
    if len(pair := _MONTHLY_PAIR & recurrence.keys()) == 1:
        missing = next(iter(_MONTHLY_PAIR - pair))
        checks.fail(
            f"recurrence.{missing}", "is required: monthly_week and monthly_week_day go together"
        )
    if "end_times" in recurrence and "end_date_time" in recurrence:
        checks.fail("recurrence.end_date_time", "cannot be used with end_times; give one of them")


def validate_create_body(
    body: Mapping[str, Any], *, reserved_agenda_chars: int = 0
) -> dict[str, Any]:
    """Return a normalised copy of the body, or raise InvalidMeeting naming the first bad field.

    The copy is JSON-serialisable, uses Zoom's field names, shares nothing with ``body`` and
    equals it except for the type changes the module docstring lists. ``reserved_agenda_chars``
    is how much of Zoom's 2000-character agenda the caller keeps for itself (the worker appends
    a correlation marker), so the body may use only the rest.
    """
    if not 0 <= reserved_agenda_chars < AGENDA_MAX:
        raise ValueError(f"reserved_agenda_chars must be 0..{AGENDA_MAX - 1}")
    if not isinstance(body, Mapping):
        checks.fail("body", f"must be a mapping (a JSON object), not {type(body).__name__}")
    copy: dict[str, Any] = checks.json_copy("", body)
    _BODY("", copy)

    allowed = AGENDA_MAX - reserved_agenda_chars
    if len(copy.get("agenda", "")) > allowed:
        why = (
            f" (Zoom allows {AGENDA_MAX}; {reserved_agenda_chars} are kept for the job marker)"
            if reserved_agenda_chars
            else ""
        )
        checks.fail(
            "agenda", f"must be at most {allowed} characters{why}; got {len(copy['agenda'])}"
        )

    kind = copy.get("type", 2)
    if "start_time" in copy:
        if kind in (1, 3):
            checks.fail(
                "start_time",
                f"is ignored by Zoom for type {kind} ({_TYPE_NAMES[kind]}) meetings; use type 2 "
                "or 8 for a meeting at a set time, or leave start_time out",
            )
        _parse_time("start_time", copy["start_time"], copy.get("timezone"))
    if "recurrence" in copy:
        if kind != 8:
            checks.fail(
                "recurrence", f"is only used for type 8 meetings (fixed time), not type {kind}"
            )
        _check_recurrence(copy["recurrence"])
    if copy.get("pre_schedule") and kind not in (2, 3):
        checks.fail("pre_schedule", f"is only supported for type 2 and 3 meetings, not type {kind}")
    return copy


def validate_update_body(changes: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """Return a normalised copy of an update's ``changes`` (``PATCH /meetings/{id}``), or raise
    InvalidMeeting naming the first bad field.

    The create body's rules, every field optional, unknown fields refused; and a
    ``start_time`` before ``now`` is refused, because Zoom silently ignores a past start time
    on update (the spec: "If the value is omitted or a date is in the past, the API ignores
    this value"). The agenda may use all of Zoom's 2000 characters: the create's marker has
    done its work once the meeting exists. Nothing is checked against the meeting's type,
    which only Zoom knows for sure once hosts can change meetings.
    """
    if not isinstance(changes, Mapping) or not changes:
        checks.fail("changes", "must be a non-empty mapping of the fields to change")
    copy: dict[str, Any] = checks.json_copy("", changes)
    _BODY("", copy)
    if len(copy.get("agenda", "")) > AGENDA_MAX:
        checks.fail("agenda", f"must be at most {AGENDA_MAX} characters; got {len(copy['agenda'])}")
    kind = copy.get("type")
    if "start_time" in copy:
        if kind in (1, 3):
            checks.fail("start_time", f"is ignored by Zoom for type {kind} meetings")
        start = _parse_time("start_time", copy["start_time"], copy.get("timezone"))
        if start <= now:
            checks.fail(
                "start_time",
                f"is in the past ({copy['start_time']}): Zoom silently ignores a past start "
                "time on update; give a future time",
            )
    if "recurrence" in copy:
        if kind not in (None, 8):
            checks.fail("recurrence", f"is only used for type 8 meetings, not type {kind}")
        _check_recurrence(copy["recurrence"])
    return copy


def start_of(body: Mapping[str, Any]) -> datetime | None:
    """A validated body's ``start_time`` as an aware datetime, or None when it has none."""
    if not isinstance(body.get("start_time"), str):
        return None
    return _parse_time("start_time", body["start_time"], body.get("timezone"))


def validate_user_id(user_id: object) -> str:
    """Return ``user_id`` if it can name a meeting host in a Zoom URL path, or raise InvalidMeeting.

    It must be a non-empty string of at most 256 characters with no "/", whitespace or control
    character. "me" is refused: it names the app's own user, and a Server-to-Server OAuth app
    has none, so the host must be named by user id or email address.
    """
    if not isinstance(user_id, str) or not user_id:
        checks.fail(
            "user_id", "must be a non-empty string: the host's Zoom user id or email address"
        )
    if len(user_id) > USER_ID_MAX:
        checks.fail("user_id", f"must be at most {USER_ID_MAX} characters; got {len(user_id)}")
    if any(char == "/" or char.isspace() or not char.isprintable() for char in user_id):
        checks.fail("user_id", "must not contain '/', whitespace or control characters (URL path)")
    if user_id.lower() == "me":
        checks.fail(
            "user_id",
            '"me" is refused: a Server-to-Server OAuth app has no user of its own; '
            "name the host by Zoom user id or email address",
        )
    return user_id


def validate_meeting_id(meeting_id: object) -> int:
    """Return the meeting id as an int, or raise InvalidMeeting.

    Zoom's meeting ids are positive 64-bit integers, often more than 10 digits long, so they
    never fit a 32-bit int. An int or a string of ASCII digits is accepted. A bool or a float
    is refused, even 5.0, because a float cannot hold every int64 exactly.
    """
    if isinstance(meeting_id, str) and meeting_id.isascii() and meeting_id.isdigit():
        if len(meeting_id) > 19:
            checks.fail(
                "meeting_id", f"has {len(meeting_id)} digits; a Zoom meeting id has at most 19"
            )
        value = int(meeting_id)
    elif isinstance(meeting_id, int) and not isinstance(meeting_id, bool):
        value = int(meeting_id)
    else:
        checks.fail(
            "meeting_id", f"must be an int or a string of digits, not {type(meeting_id).__name__}"
        )
    if not 1 <= value <= INT64_MAX:
        checks.fail("meeting_id", f"must be between 1 and {INT64_MAX}; got {value}")
    return value


def scheduled_end(body: Mapping[str, Any], *, created_at: datetime) -> datetime | None:
    """When a validated body's meeting ends: start_time + duration, in UTC.

    None when the meeting has no fixed time (type 3) or is a series with no end. A start_time
    without Z is read in the body's ``timezone`` (zoneinfo). A missing or past ``start_time``
    counts as ``created_at``, because Zoom starts such a meeting at once; a missing
    ``duration`` counts as Zoom's default of 60 minutes. For a series (type 8) it is a bound
    no earlier than its last occurrence's end (:func:`worker.schedule.series_end`), never the
    first occurrence's. ``created_at`` must be timezone-aware.
    """
    if created_at.utcoffset() is None:
        raise ValueError("created_at must be a timezone-aware datetime")
    kind = body.get("type", 2)
    if kind == 3:
        return None
    start = created_at
    if kind != 1 and "start_time" in body:
        start = max(start, _parse_time("start_time", body["start_time"], body.get("timezone")))
    duration = timedelta(minutes=body.get("duration", DEFAULT_DURATION))
    if kind == 8:
        recurrence = body.get("recurrence")
        return schedule.series_end(start, duration, recurrence) if recurrence else None
    return (start + duration).astimezone(UTC)
