"""The rules of Zoom's event notifications, without I/O: what an event is (:class:`Event`, read
from its JSON body, and the digest that makes two deliveries one event) and what it does to the
ledger's meeting (:func:`decide`, a pure function returning a :class:`Change`), so the rules
can be tested as a table. Storing and applying them, and the protocol they keep (stored once,
applied once, never backwards): :mod:`worker.webhook_events`.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker import meeting_body, models, schedule

URL_VALIDATION = "endpoint.url_validation"
DELETED, PERMANENTLY_DELETED = "meeting.deleted", "meeting.permanently_deleted"
UPDATED, STARTED, ENDED = "meeting.updated", "meeting.started", "meeting.ended"
# A deleted meeting restored from Zoom's trash (within 7 days): it exists again.
RECOVERED = "meeting.recovered"
# Types whose meeting.ended ends one instance, not the meeting: a recurring meeting with no
# fixed time (3) and a series (8) are started again.
RECURRING_TYPES = frozenset({3, 8})


class Effect(enum.StrEnum):
    """What applying one event did to the ledger (``webhook_events.effect``)."""

    DELETED = "deleted"
    OCCURRENCES_DELETED = "occurrences_deleted"
    UPDATED = "updated"
    STARTED = "started"
    ENDED = "ended"
    RECOVERED = "recovered"
    UNCHANGED = "unchanged"  # applies, but the ledger already says so (or the meeting is gone)
    STALE = "stale"  # older than the newest event applied to its meeting
    FOREIGN = "foreign"  # a meeting this service did not create
    IGNORED = "ignored"  # an event this service does not act on


# The events decide() compares with the newest state event applied (the others never are stale).
STATE_EVENTS = frozenset({DELETED, PERMANENTLY_DELETED, STARTED, ENDED, RECOVERED})
# Effects that say where a meeting stands; a later state event older than these is stale.
ORDERED = frozenset({Effect.DELETED, Effect.STARTED, Effect.ENDED, Effect.RECOVERED})
# The fields of meeting.updated's object that the ledger keeps.
SCHEDULE_FIELDS = ("topic", "start_time", "duration")


@dataclass(frozen=True)
class Event:
    """One event notification as Zoom sends it, read from its JSON body."""

    event: str
    event_ts: int  # milliseconds since the epoch
    account_id: str | None
    meeting_id: int | None
    occurrence_ids: tuple[str, ...]
    object: Mapping[str, Any] = field(repr=False)
    body: Mapping[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Event:
        """Read an event body; ValueError names what is missing or malformed."""
        name, event_ts = body.get("event"), body.get("event_ts")
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ValueError("event: a string of 1 to 64 characters is required")
        if not isinstance(event_ts, int) or isinstance(event_ts, bool) or event_ts < 0:
            raise ValueError("event_ts: milliseconds since the epoch are required")
        payload = body.get("payload")
        if not isinstance(payload, dict):
            raise ValueError("payload: an object is required")
        account_id = payload.get("account_id")
        obj = payload.get("object")
        obj = obj if isinstance(obj, dict) else {}
        meeting_id = obj.get("id")
        if not (isinstance(meeting_id, int) and not isinstance(meeting_id, bool)):
            meeting_id = None
        occurrences = obj.get("occurrences")
        ids = tuple(
            sorted(
                str(o["occurrence_id"])
                for o in (occurrences if isinstance(occurrences, list) else [])
                if isinstance(o, dict) and o.get("occurrence_id") is not None
            )
        )
        return cls(
            event=name,
            event_ts=event_ts,
            account_id=account_id if isinstance(account_id, str) else None,
            meeting_id=meeting_id,
            occurrence_ids=ids,
            object=obj,
            body=body,
        )

    @property
    def digest(self) -> str:
        """SHA-256 of what makes two deliveries one event (Zoom's body carries no event id):
        its name, ``event_ts``, the meeting id and the occurrence ids."""
        parts = [self.event, self.event_ts, self.meeting_id, list(self.occurrence_ids)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@dataclass(frozen=True)
class MeetingState:
    """What :func:`decide` reads from the ledger's meeting row."""

    state: str
    start_time: datetime | None
    duration_min: int | None
    scheduled_end: datetime | None


@dataclass(frozen=True)
class Change:
    """A decision: the effect, and the meeting row's new values (empty: no write)."""

    effect: Effect
    values: Mapping[str, Any] = field(default_factory=dict)


def decide(
    event: Event,
    meeting: MeetingState | None,
    newest_ts: int | None,
    newer_fields: frozenset[str] = frozenset(),
) -> Change:
    """What ``event`` does to the ledger's ``meeting`` (None: not ours), given the
    ``event_ts`` of the newest state event already applied to it and, for an update, the
    fields that newer applied updates set. Pure: a table of cases."""
    if meeting is None:
        return Change(Effect.FOREIGN)
    if event.event in (DELETED, PERMANENTLY_DELETED) and event.occurrence_ids:
        return Change(Effect.OCCURRENCES_DELETED)  # the series stays
    if event.event not in (DELETED, PERMANENTLY_DELETED, UPDATED, STARTED, ENDED, RECOVERED):
        return Change(Effect.IGNORED)
    if event.event == RECOVERED:
        if newest_ts is not None and event.event_ts < newest_ts:
            return Change(Effect.STALE)
        if meeting.state != models.DELETED:
            return Change(Effect.UNCHANGED)
        return Change(Effect.RECOVERED, {"state": models.LIVE, "deleted_at": None})
    if meeting.state == models.DELETED:
        return Change(Effect.UNCHANGED)  # gone is final, whoever said so first
    if event.event == UPDATED:
        if event.occurrence_ids:
            return Change(Effect.UNCHANGED)  # one occurrence moved: the cleanup asks Zoom
        return _rescheduled(event.object, meeting, newer_fields)
    if newest_ts is not None and event.event_ts < newest_ts:
        return Change(Effect.STALE)
    if event.event in (DELETED, PERMANENTLY_DELETED):
        return Change(Effect.DELETED, {"state": models.DELETED})
    if event.event == STARTED:
        return Change(Effect.STARTED, {"state": models.LIVE})
    if event.object.get("type") in RECURRING_TYPES:
        return Change(Effect.UNCHANGED)  # one instance ended; the meeting goes on
    return Change(Effect.ENDED, {"state": models.ENDED})


def _rescheduled(
    event_object: Mapping[str, Any], meeting: MeetingState, newer_fields: frozenset[str]
) -> Change:
    """``meeting.updated``: the new topic, start and duration, and the end moved with them;
    fields a newer applied update set are left as that one set them."""
    obj = {k: v for k, v in event_object.items() if k not in newer_fields}
    if not obj.keys() & set(SCHEDULE_FIELDS) and event_object.keys() & newer_fields:
        return Change(Effect.STALE)
    values: dict[str, Any] = {}
    if isinstance(obj.get("topic"), str):
        values["topic"] = obj["topic"][:200]
    # The ledger leaves duration_min empty when the create body used Zoom's default.
    start, duration = meeting.start_time, meeting.duration_min or meeting_body.DEFAULT_DURATION
    if isinstance(obj.get("start_time"), str):
        start = _utc(obj["start_time"])
        values["start_time"] = start
    if isinstance(obj.get("duration"), int) and not isinstance(obj["duration"], bool):
        duration = obj["duration"]
        values["duration_min"] = duration
    # An endless meeting (no scheduled_end) stays endless.
    moved = {"start_time", "duration_min"} & values.keys()
    if moved and meeting.scheduled_end is not None and start is not None:
        was_minutes = meeting.duration_min or meeting_body.DEFAULT_DURATION
        values["scheduled_end"] = schedule.moved_end(
            meeting.start_time, was_minutes, meeting.scheduled_end, start, duration
        )
    return Change(Effect.UPDATED, values) if values else Change(Effect.UNCHANGED)


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Zoom's webhooks send start_time in UTC ("Z")
    return moment.astimezone(UTC)
