"""The meeting book: body validation, and creating, reading, updating, deleting and listing.

What it copies from Zoom, beyond the plain calls:

- "List meetings" leaves out instant meetings (type 1), and lists a meeting under its host:
  ``schedule_for`` makes that user the host, so the meeting is listed under them.
- The list shows the agenda cut to 250, counted in code points or in UTF-16 units
  (``list_agenda_cut``); a UTF-16 cut may split a surrogate pair, as a Java service would.
- ``GET /meetings/{id}`` answers ``occurrences`` for a series (type 8): upcoming ones only
  unless ``show_previous_occurrences=true``; a deleted occurrence has ``status: deleted``.
  ``DELETE`` and ``PATCH`` with ``occurrence_id`` act on one occurrence.
- A host whose settings say "use PMI for scheduled meetings" gets the Personal Meeting ID as
  the id of a type 2 or 3 meeting, unless the body says ``settings.use_pmi: false``.
- A missing or past ``start_time`` means now (the book's :class:`Clock`); an empty
  ``password`` is no passcode given (the spec has no minimum length).
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import datetime, timedelta
from random import Random
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.simulator.recurrence import occurrences
from worker.simulator.state import Clock, Counters, Meeting, Page
from worker.simulator.wire import Reply, error_reply, json_reply, utc_stamp

MEETING_TYPES = frozenset({1, 2, 3, 8, 10})
MEETING_STATUSES = ("waiting", "started", "ended")
# Which statuses each ``type`` of the list call shows; deleted meetings are never listed.
LIST_TYPES: dict[str, tuple[str, ...]] = {
    "scheduled": ("waiting", "started"),
    "upcoming": ("waiting",),
    "upcoming_meetings": ("waiting",),
    "live": ("started",),
    "previous_meetings": ("ended",),
}
# The list call shows these, and only the first 250 characters of the agenda.
LIST_FIELDS: tuple[str, ...] = (
    "uuid",
    "id",
    "host_id",
    "topic",
    "type",
    "start_time",
    "duration",
    "timezone",
)
LIST_FIELDS += ("created_at", "join_url")
LIST_AGENDA_CHARS = 250
MAX_PAGE_SIZE = 300
# Meeting ids are int64 and have had 11 digits for years: never assume a 32-bit int.
MEETING_ID_RANGE = (80_000_000_000, 99_999_999_999)
PMI_RANGE = (2_000_000_000, 9_999_999_999)  # a PMI has 10 digits
PMI_TYPES = frozenset({2, 3})  # the spec: use_pmi "is only used for" types 2 and 3
# The 2026 spec: up to 10 characters, "alphanumeric characters as well as special characters
# such as !, @, #, etc."; read as printable ASCII without spaces. Empty: no passcode given.
PASSWORD_PATTERN = re.compile(r"[!-~]{0,10}")
DEFAULT_SETTINGS: dict[str, Any] = {
    "host_video": False,
    "participant_video": False,
    "join_before_host": False,
    "mute_upon_entry": False,
    "waiting_room": False,
    "approval_type": 2,
    "auto_recording": "none",
    "email_notification": True,
}
# Fields a PATCH may change; ``settings`` is merged key by key.
UPDATABLE_FIELDS = frozenset(
    {"topic", "type", "start_time", "duration", "timezone", "agenda", "password", "settings"}
    | {"recurrence", "tracking_fields"}
)
_SCHEDULE = frozenset({"start_time", "duration", "timezone", "recurrence", "type"})
_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(body: dict[str, Any]) -> list[dict[str, str]]:
    """The field errors Zoom would report for a create or update body."""
    problems: list[tuple[str, str]] = []
    for name, limit in (("topic", 200), ("agenda", 2000)):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems.append((name, f"{name} must be a string of at most {limit} characters."))
    if "duration" in body and not _is_int(body["duration"]):
        problems.append(("duration", "Invalid field."))
    if "type" in body and not (_is_int(body["type"]) and body["type"] in MEETING_TYPES):
        problems.append(("type", "Invalid field."))
    password = body.get("password")
    if password is not None and not (
        isinstance(password, str) and PASSWORD_PATTERN.fullmatch(password)
    ):
        problems.append(("password", "Password must be at most 10 characters."))
    for name in ("start_time", "timezone", "schedule_for"):
        if body.get(name) is not None and not isinstance(body[name], str):
            problems.append((name, "Invalid field."))
    if "settings" in body and not isinstance(body["settings"], dict):
        problems.append(("settings", "Invalid field."))
    if "recurrence" in body and not isinstance(body["recurrence"], dict):
        problems.append(("recurrence", "Invalid field."))
    return [{"field": name, "message": message} for name, message in problems]


def validation_failed(problems: list[dict[str, str]]) -> Reply:
    return json_reply(400, {"code": 300, "message": "Validation Failed.", "errors": problems})


def cut_agenda(agenda: str, rule: Literal["code_points", "utf16"]) -> str:
    """The agenda as the list call shows it: its first 250 code points or UTF-16 units."""
    if rule == "code_points":
        return agenda[:LIST_AGENDA_CHARS]
    units = agenda.encode("utf-16-le", "surrogatepass")[: 2 * LIST_AGENDA_CHARS]
    return units.decode("utf-16-le", "surrogatepass")  # may end in half a surrogate pair


class MeetingBook:
    """The account's meetings, hosts, PMIs and list pages; a part of :class:`Simulator`.

    Not thread-safe on its own: the Simulator calls it under its lock.
    """

    def __init__(self, rng: Random, clock: Clock, counters: Counters) -> None:
        self._rng, self._clock, self._counters = rng, clock, counters
        self.meetings: dict[int, Meeting] = {}
        self._by_host: dict[str, list[Meeting]] = {}  # in creation order
        self._host_ids: dict[str, str] = {}  # email -> host_id
        self._host_emails: dict[str, str] = {}  # host_id -> email
        self._pmis: dict[str, int] = {}  # host_id -> Personal Meeting ID
        self._pmi_hosts: set[str] = set()  # host ids whose profile uses the PMI
        self._pages: dict[str, Page] = {}

    def host(self, user_id: str) -> tuple[str, str]:
        """The (host_id, host_email) that a path's userId (an id or an email) names."""
        if user_id in self._host_emails:
            return user_id, self._host_emails[user_id]
        email = user_id if "@" in user_id else f"{user_id}@sim.zoom.us"
        if email not in self._host_ids:
            host_id = base64.urlsafe_b64encode(self._rng.randbytes(16)).decode().rstrip("=")
            self._host_ids[email], self._host_emails[host_id] = host_id, email
        return self._host_ids[email], email

    def use_pmi(self, user_id: str, enabled: bool) -> int:
        """Set the host's "use PMI for scheduled meetings" setting; returns their PMI."""
        host_id = self.host(user_id)[0]
        (self._pmi_hosts.add if enabled else self._pmi_hosts.discard)(host_id)
        return self._pmi(host_id)

    def _pmi(self, host_id: str) -> int:
        if host_id not in self._pmis:
            self._pmis[host_id] = self._rng.randint(*PMI_RANGE)
        return self._pmis[host_id]

    def live(self, argument: str) -> Meeting | None:
        """The meeting a path's meetingId names, unless it does not exist or was deleted."""
        meeting = self.meetings.get(int(argument)) if argument.isdigit() else None
        return meeting if meeting is not None and not meeting.deleted else None

    def create(self, user_id: str, body: dict[str, Any], *, foreign: bool) -> Meeting:
        """Make a meeting for ``user_id`` (or for ``body["schedule_for"]``, its host then)."""
        host_id, host_email = self.host(body.get("schedule_for") or user_id)
        kind = body.get("type", 2)
        wants_pmi = body.get("settings", {}).get("use_pmi", host_id in self._pmi_hosts)
        if kind in PMI_TYPES and wants_pmi is True:
            meeting_id = self._pmi(host_id)
            if (old := self.meetings.get(meeting_id)) is not None:
                self._by_host[old.body["host_id"]].remove(old)
        else:
            meeting_id = self._rng.randint(*MEETING_ID_RANGE)
            while meeting_id in self.meetings:
                meeting_id = self._rng.randint(*MEETING_ID_RANGE)
        now = self._clock.now()
        encrypted = "".join(self._rng.choices(_ALPHABET, k=32))
        record: dict[str, Any] = {
            "uuid": base64.b64encode(self._rng.randbytes(16)).decode(),
            "id": meeting_id,
            "host_id": host_id,
            "host_email": host_email,
            "topic": body.get("topic") or "Zoom Meeting",
            "type": kind,
            "status": "waiting",
            "start_time": utc_stamp(self._start(body, now)),
            "duration": body.get("duration", 60),
            "timezone": body.get("timezone") or "UTC",
            "agenda": body.get("agenda") or "",
            "created_at": utc_stamp(now),
            # A host credential, as in Zoom: whoever holds it starts the meeting as host.
            "start_url": f"https://sim.zoom.us/s/{meeting_id}?zak={secrets.token_urlsafe(32)}",
            "join_url": f"https://sim.zoom.us/j/{meeting_id}?pwd={encrypted}",
            "password": body.get("password") or "".join(self._rng.choices(_ALPHABET, k=6)),
            "encrypted_password": encrypted,
            "settings": DEFAULT_SETTINGS | body.get("settings", {}),
            "pre_schedule": False,
        }
        record |= {k: body[k] for k in ("recurrence", "tracking_fields") if k in body}
        meeting = Meeting(record, user_id, foreign)
        self._lay_out(meeting, {})
        self.meetings[meeting_id] = meeting
        self._by_host.setdefault(host_id, []).append(meeting)
        return meeting

    def _future_start(self, body: dict[str, Any]) -> str | None:
        """An update's start_time as Zoom spells it, or None when it is past (ignored)."""
        now = self._clock.now()
        start = self._start(body, now)
        return utc_stamp(start) if start > now else None

    def _start(self, body: dict[str, Any], now: datetime) -> datetime:
        """When the meeting starts: its start_time (read in its timezone), or now if past."""
        text = body.get("start_time")
        if not isinstance(text, str) or body.get("type") in (1, 3):
            return now
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=ZoneInfo(body.get("timezone") or "UTC"))
        except (ValueError, ZoneInfoNotFoundError):
            return now
        return max(now, moment.replace(microsecond=0))

    def _lay_out(self, meeting: Meeting, deleted: dict[str, bool]) -> None:
        """(Re)compute a series' occurrences, keeping the ones deleted before."""
        body = meeting.body
        if body["type"] != 8 or not isinstance(body.get("recurrence"), dict):
            meeting.occurrences = []
            return
        start = datetime.fromisoformat(body["start_time"].replace("Z", "+00:00"))
        meeting.occurrences = occurrences(start, body["duration"], body["recurrence"])
        for occurrence in meeting.occurrences:
            if deleted.get(occurrence["occurrence_id"]):
                occurrence["status"] = "deleted"

    def answer(self, meeting: Meeting, query: dict[str, list[str]]) -> Reply:
        """``GET /meetings/{id}``: the meeting, with a series' occurrences."""
        body = dict(meeting.body)
        if meeting.occurrences:
            show_previous = query.get("show_previous_occurrences", [""])[0] == "true"
            now = self._clock.now()
            body["occurrences"] = [o for o in meeting.occurrences if show_previous or _end(o) > now]
        return json_reply(200, body)

    def update(self, meeting: Meeting, body: dict[str, Any], query: dict[str, list[str]]) -> Reply:
        """``PATCH /meetings/{id}``: the whole meeting, or one occurrence of a series."""
        if occurrence_id := query.get("occurrence_id", [""])[0]:
            occurrence = self._occurrence(meeting, occurrence_id)
            if occurrence is None:
                return _no_occurrence(occurrence_id)
            if (start := self._future_start(body)) is not None:
                occurrence["start_time"] = start
            occurrence["duration"] = body.get("duration", occurrence["duration"])
            return Reply(204)
        for key in UPDATABLE_FIELDS & body.keys():
            if key == "settings":
                meeting.body["settings"] = meeting.body["settings"] | body["settings"]
            elif key == "start_time":
                # Zoom: "If the value is omitted or a date is in the past, the API ignores
                # this value": the meeting keeps its start, and the answer is still 204.
                if (start := self._future_start(body)) is not None:
                    meeting.body["start_time"] = start
            else:
                meeting.body[key] = body[key]
        if _SCHEDULE & body.keys():
            deleted = {o["occurrence_id"]: o["status"] == "deleted" for o in meeting.occurrences}
            self._lay_out(meeting, deleted)
        return Reply(204)

    def delete(self, meeting: Meeting, query: dict[str, list[str]]) -> Reply:
        """``DELETE /meetings/{id}``: the meeting, or one occurrence of a series."""
        status = meeting.body["status"]
        if status == "started":
            message = "Sorry, you cannot delete this meeting since it is in progress."
            return error_reply(400, 3002, message)
        if status == "ended":
            return error_reply(
                400, 3007, "Sorry, you cannot delete this meeting since it has ended."
            )
        occurrence_id = query.get("occurrence_id", [""])[0]
        if occurrence_id and meeting.occurrences:
            occurrence = self._occurrence(meeting, occurrence_id)
            if occurrence is None or occurrence["status"] == "deleted":
                return _no_occurrence(occurrence_id)
            occurrence["status"] = "deleted"
            self._counters.add("occurrences_deleted")
            return Reply(204)
        meeting.deleted = True
        self._counters.add("meetings_deleted")
        return Reply(204)

    @staticmethod
    def _occurrence(meeting: Meeting, occurrence_id: str) -> dict[str, Any] | None:
        return next((o for o in meeting.occurrences if o["occurrence_id"] == occurrence_id), None)

    def list(
        self, user_id: str, query: dict[str, list[str]], rule: Literal["code_points", "utf16"]
    ) -> Reply:
        """``GET /users/{userId}/meetings``: the host's meetings, a page at a time."""
        host_id = self.host(user_id)[0]
        raw_size = query.get("page_size", ["30"])[0]
        if not raw_size.isdigit() or int(raw_size) < 1:
            return validation_failed([{"field": "page_size", "message": "Invalid field."}])
        page_size = min(int(raw_size), MAX_PAGE_SIZE)
        page_token = query.get("next_page_token", [""])[0]
        if page_token:
            page = self._pages.get(page_token)
            if page is None or page.host_id != host_id:
                return error_reply(400, 300, "The next page token is invalid or expired.")
        else:
            list_type = query.get("type", ["scheduled"])[0]
            if list_type not in LIST_TYPES:
                return validation_failed([{"field": "type", "message": "Invalid field."}])
            statuses = LIST_TYPES[list_type]
            ids = tuple(
                m.body["id"]
                for m in self._by_host.get(host_id, ())
                # "This API does not return information about instant meetings."
                if not m.deleted and m.body["status"] in statuses and m.body["type"] != 1
            )
            page = Page(host_id, ids, 0)
        end = page.offset + page_size
        listed = (self.meetings[i] for i in page.ids[page.offset : end])
        next_token = ""
        if end < len(page.ids):
            next_token = secrets.token_urlsafe(16)
            self._pages[next_token] = Page(host_id, page.ids, end)
        meetings = [
            {k: m.body[k] for k in LIST_FIELDS} | {"agenda": cut_agenda(m.body["agenda"], rule)}
            for m in listed
            if not m.deleted
        ]
        return json_reply(
            200,
            {
                "page_size": page_size,
                "total_records": len(page.ids),
                "next_page_token": next_token,
                "meetings": meetings,
            },
        )


def _end(occurrence: dict[str, Any]) -> datetime:
    start = datetime.fromisoformat(occurrence["start_time"].replace("Z", "+00:00"))
    return start + timedelta(minutes=occurrence["duration"])


def _no_occurrence(occurrence_id: str) -> Reply:
    return error_reply(404, 3001, f"Meeting occurrence does not exist: {occurrence_id}.")
