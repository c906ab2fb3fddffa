"""When a meeting ends: bounded from its create body, and read from Zoom's answer.

The ledger's ``scheduled_end`` is when the cleanup looks at a meeting; before it deletes one
it asks Zoom (:func:`zoom_end`), because hosts move meetings in Zoom's web page and a series
lives until its last occurrence. Times are timezone-aware UTC.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from worker import zoom

DAILY, WEEKLY, MONTHLY = 1, 2, 3
NO_FIXED_TIME, SERIES = 3, 8
STARTED = "started"


def series_end(
    start: datetime, duration: timedelta, recurrence: Mapping[str, Any]
) -> datetime | None:
    """A bound no earlier than the end of a series' last occurrence; None if it has no end.

    A bound, not the exact day (that needs the series laid out in its time zone): the cleanup
    reads the exact end from Zoom before it deletes anything, and corrects the ledger.
    """
    until = recurrence.get("end_date_time")
    if isinstance(until, str):
        last_day = datetime.fromisoformat(until.replace("Z", "+00:00"))
        return (last_day + timedelta(days=1) + duration).astimezone(UTC)
    times = recurrence.get("end_times", 1)  # Zoom's default: one occurrence
    if times == 0:
        return None  # "If end_times is set to 0, it means there is no end time"
    interval = recurrence.get("repeat_interval", 1)
    kind = recurrence.get("type", DAILY)
    if kind == DAILY:
        span = timedelta(days=interval * (times - 1))
    elif kind == WEEKLY:
        per_week = len(str(recurrence.get("weekly_days", "1")).split(","))
        span = timedelta(weeks=interval * (math.ceil(times / per_week) + 1))
    else:  # monthly: at most 31 days a month, one month more for a first day not in this one
        span = timedelta(days=31 * interval * (times + 1))
    return (start + span + duration).astimezone(UTC)


def moved_end(
    old_start: datetime | None,
    old_minutes: int,
    old_end: datetime | None,
    new_start: datetime | None,
    new_minutes: int,
) -> datetime | None:
    """The ledger's ``scheduled_end`` once a meeting moved to ``new_start`` for ``new_minutes``.

    An endless meeting (``old_end`` None) stays endless. A series' end is a bound past its
    last occurrence, so it moves by as much as the first occurrence's end moved; a meeting
    whose start was "now" at its create gets ``new_start`` plus its duration.
    """
    if old_end is None or new_start is None:
        return old_end
    end = new_start + timedelta(minutes=new_minutes)
    if old_start is not None:
        end = old_end + (end - (old_start + timedelta(minutes=old_minutes)))
    return end.astimezone(UTC)


@dataclass(frozen=True)
class ZoomEnd:
    """What Zoom's answer says about a meeting's end.

    ``at`` None: it never ends (type 3, a series with no end). ``in_progress``: it is running
    now, whatever its schedule said.
    """

    at: datetime | None
    in_progress: bool = False


def zoom_end(meeting: zoom.Meeting) -> ZoomEnd:
    """When ``meeting`` (from ``GET /meetings/{id}``) ends now; ValueError if Zoom's answer
    has no readable start time or duration where one is needed.

    A series ends with its last occurrence not deleted: Zoom lists the ones to come (without
    ``show_previous_occurrences``), so none left means the series is over, and its own start
    time plus duration is then the end.
    """
    if meeting.status == STARTED:
        return ZoomEnd(None, in_progress=True)
    if meeting.type == NO_FIXED_TIME or (meeting.type == SERIES and meeting.endless):
        return ZoomEnd(None)
    ends = [_end(meeting.start_time, meeting.duration)]
    ends += [
        _end(o.start_time, o.duration or meeting.duration)
        for o in meeting.occurrences
        if o.status != "deleted"
    ]
    return ZoomEnd(max(ends))


def _end(start_time: str | None, duration: int | None) -> datetime:
    if not start_time or duration is None:
        raise ValueError(f"Zoom's answer has no start time or duration ({start_time}, {duration})")
    start = datetime.fromisoformat(start_time.replace("Z", "+00:00"))
    if start.tzinfo is None:
        raise ValueError(f"Zoom's start_time {start_time} has no time zone")
    return (start + timedelta(minutes=duration)).astimezone(UTC)
