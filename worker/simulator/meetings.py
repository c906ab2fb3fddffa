"""The Meetings API: body validation, and creating, updating, deleting and listing meetings."""

from __future__ import annotations

import base64
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from worker.simulator.config import SimulatorConfig
from worker.simulator.limits import RateLimits
from worker.simulator.state import Meeting, Page
from worker.simulator.wire import DROPPED, Reply, error_reply, json_reply, utc_stamp

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
PASSWORD_PATTERN = re.compile(r"[A-Za-z0-9@_*-]{1,10}")
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
        problems.append(("password", "Password must be at most 10 characters of [a-zA-Z0-9@-_*]."))
    for name in ("start_time", "timezone"):
        if body.get(name) is not None and not isinstance(body[name], str):
            problems.append((name, "Invalid field."))
    if "settings" in body and not isinstance(body["settings"], dict):
        problems.append(("settings", "Invalid field."))
    return [{"field": name, "message": message} for name, message in problems]


def _validation_failed(problems: list[dict[str, str]]) -> Reply:
    return json_reply(400, {"code": 300, "message": "Validation Failed.", "errors": problems})


class MeetingsAPI(RateLimits):
    """The meetings of the account and the answers about them; a part of :class:`Simulator`.

    Creates and updates count against the daily limit of :class:`RateLimits`.
    """

    def _user(self, user_id: str) -> tuple[str, str]:
        """The (host_id, host_email) that a path's userId (an id or an email) names."""
        if user_id in self._host_emails:
            return user_id, self._host_emails[user_id]
        email = user_id if "@" in user_id else f"{user_id}@sim.zoom.us"
        if email not in self._host_ids:
            host_id = base64.urlsafe_b64encode(self._rng.randbytes(16)).decode().rstrip("=")
            self._host_ids[email], self._host_emails[host_id] = host_id, email
        return self._host_ids[email], email

    def _new_meeting(self, user_id: str, body: dict[str, Any], *, foreign: bool) -> Meeting:
        host_id, host_email = self._user(user_id)
        meeting_id = self._rng.randint(*MEETING_ID_RANGE)
        while meeting_id in self._meetings:
            meeting_id = self._rng.randint(*MEETING_ID_RANGE)
        now = utc_stamp(datetime.now(UTC))
        alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        encrypted = "".join(self._rng.choices(alphabet, k=32))
        record: dict[str, Any] = {
            "uuid": base64.b64encode(self._rng.randbytes(16)).decode(),
            "id": meeting_id,
            "host_id": host_id,
            "host_email": host_email,
            "topic": body.get("topic") or "Zoom Meeting",
            "type": body.get("type", 2),
            "status": "waiting",
            "start_time": body.get("start_time") or now,
            "duration": body.get("duration", 60),
            "timezone": body.get("timezone") or "UTC",
            "agenda": body.get("agenda") or "",
            "created_at": now,
            # A host credential, as in Zoom: whoever holds it starts the meeting as host.
            "start_url": f"https://sim.zoom.us/s/{meeting_id}?zak={secrets.token_urlsafe(32)}",
            "join_url": f"https://sim.zoom.us/j/{meeting_id}?pwd={encrypted}",
            "password": body.get("password") or "".join(self._rng.choices(alphabet, k=6)),
            "encrypted_password": encrypted,
            "settings": DEFAULT_SETTINGS | body.get("settings", {}),
            "pre_schedule": False,
        }
        record |= {k: body[k] for k in ("recurrence", "tracking_fields") if k in body}
        meeting = Meeting(record, user_id, foreign)
        self._meetings[meeting_id] = meeting
        self._by_host.setdefault(host_id, []).append(meeting)
        return meeting

    def _create(self, user_id: str, body: dict[str, Any], cfg: SimulatorConfig) -> Reply:
        problems = validate(body)
        if problems:
            return _validation_failed(problems)
        limited = self._take_daily(self._user(user_id)[0], cfg)
        if limited is not None:
            return limited
        meeting = self._new_meeting(user_id, body, foreign=False)
        self._counters["meetings_created"] += 1
        if cfg.reply_lost_rate and self._rng.random() < cfg.reply_lost_rate:
            # The meeting exists but the caller never hears: Zoom has no idempotency key.
            self._counters["replies_lost"] += 1
            return DROPPED
        return json_reply(201, meeting.body)

    def _update(self, meeting: Meeting, body: dict[str, Any], cfg: SimulatorConfig) -> Reply:
        problems = validate(body)
        if problems:
            return _validation_failed(problems)
        limited = self._take_daily(meeting.body["host_id"], cfg)
        if limited is not None:
            return limited
        for key in UPDATABLE_FIELDS & body.keys():
            if key == "settings":
                meeting.body["settings"] = meeting.body["settings"] | body["settings"]
            else:
                meeting.body[key] = body[key]
        return Reply(204)

    def _delete(self, meeting: Meeting) -> Reply:
        status = meeting.body["status"]
        if status == "started":
            message = "Sorry, you cannot delete this meeting since it is in progress."
            return error_reply(400, 3002, message)
        if status == "ended":
            return error_reply(
                400, 3007, "Sorry, you cannot delete this meeting since it has ended."
            )
        meeting.deleted = True
        self._counters["meetings_deleted"] += 1
        return Reply(204)

    def _list(self, user_id: str, query: dict[str, list[str]]) -> Reply:
        host_id = self._user(user_id)[0]
        raw_size = query.get("page_size", ["30"])[0]
        if not raw_size.isdigit() or int(raw_size) < 1:
            return _validation_failed([{"field": "page_size", "message": "Invalid field."}])
        page_size = min(int(raw_size), MAX_PAGE_SIZE)
        page_token = query.get("next_page_token", [""])[0]
        if page_token:
            page = self._pages.get(page_token)
            if page is None or page.host_id != host_id:
                return error_reply(400, 300, "The next page token is invalid or expired.")
        else:
            list_type = query.get("type", ["scheduled"])[0]
            if list_type not in LIST_TYPES:
                return _validation_failed([{"field": "type", "message": "Invalid field."}])
            statuses = LIST_TYPES[list_type]
            ids = tuple(
                m.body["id"]
                for m in self._by_host.get(host_id, ())
                if not m.deleted and m.body["status"] in statuses
            )
            page = Page(host_id, ids, 0)
        end = page.offset + page_size
        listed = (self._meetings[i] for i in page.ids[page.offset : end])
        next_token = ""
        if end < len(page.ids):
            next_token = secrets.token_urlsafe(16)
            self._pages[next_token] = Page(host_id, page.ids, end)
        meetings = [
            {k: m.body[k] for k in LIST_FIELDS} | {"agenda": m.body["agenda"][:LIST_AGENDA_CHARS]}
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
