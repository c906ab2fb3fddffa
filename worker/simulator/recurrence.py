"""The occurrences of a recurring meeting with a fixed time (type 8), as Zoom lays them out.

Days are counted in UTC (the simulator does not move occurrences across daylight-saving
changes). A series with ``end_times: 0`` has no end: Zoom shows a bounded window of it, here
:data:`ENDLESS_WINDOW` occurrences.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

from worker.simulator.wire import utc_stamp

MAX_OCCURRENCES = 60  # Zoom's "maximum number of recurring"
ENDLESS_WINDOW = 50
DAILY, WEEKLY, MONTHLY = 1, 2, 3


def occurrences(start: datetime, duration: int, recurrence: dict[str, Any]) -> list[dict[str, Any]]:
    """The series' occurrences from ``start`` (UTC, aware): id, start_time, duration, status.

    The id is the occurrence's start in epoch milliseconds, as Zoom spells it.
    """
    end_times = recurrence.get("end_times", 1)
    until = recurrence.get("end_date_time")
    last_day = datetime.fromisoformat(until.replace("Z", "+00:00")) if until else None
    limit = ENDLESS_WINDOW if end_times == 0 and last_day is None else MAX_OCCURRENCES
    if last_day is None and end_times:
        limit = min(end_times, MAX_OCCURRENCES)
    found: list[dict[str, Any]] = []
    for day in _days(start.date(), recurrence):
        moment = datetime.combine(day, start.timetz())
        if len(found) >= limit or (last_day is not None and moment > last_day):
            break
        found.append(
            {
                "occurrence_id": str(int(moment.timestamp() * 1000)),
                "start_time": utc_stamp(moment),
                "duration": duration,
                "status": "available",
            }
        )
    return found


def _days(first: date, recurrence: dict[str, Any]) -> Iterator[date]:
    kind, interval = recurrence.get("type", DAILY), recurrence.get("repeat_interval", 1)
    for step in range(0, 400 * 31):  # far beyond 60 occurrences of any pattern
        if kind == DAILY:
            yield first + timedelta(days=step * interval)
        elif kind == WEEKLY:
            week_start = first - timedelta(days=(first.isoweekday() % 7))  # the Sunday before
            week = week_start + timedelta(weeks=step * interval)
            weekdays = sorted(int(d) for d in str(recurrence.get("weekly_days", "1")).split(","))
            for zoom_day in weekdays:  # 1 = Sunday ... 7 = Saturday
                day = week + timedelta(days=zoom_day - 1)
                if day >= first:
                    yield day
        else:
            month = first.month - 1 + step * interval
            year, month = first.year + month // 12, month % 12 + 1
            day_of_month = _monthly_day(year, month, recurrence)
            if day_of_month is not None:
                day = date(year, month, day_of_month)
                if day >= first:
                    yield day


def _monthly_day(year: int, month: int, recurrence: dict[str, Any]) -> int | None:
    days = calendar.monthrange(year, month)[1]
    if "monthly_week" not in recurrence:
        wanted = recurrence.get("monthly_day", 1)
        return wanted if wanted <= days else None
    zoom_day = recurrence.get("monthly_week_day", 1)  # 1 = Sunday
    matching = [
        d for d in range(1, days + 1) if date(year, month, d).isoweekday() % 7 + 1 == zoom_day
    ]
    week = recurrence["monthly_week"]
    return matching[-1] if week == -1 else matching[week - 1] if week <= len(matching) else None
