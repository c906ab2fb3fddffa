"""The work every side of every benchmark does: the same meetings for the same hosts, and
how its calls are read at Zoom's side (the peak in any second).

Kept apart from the harness so the baselines' spawned processes import nothing but this,
httpx and redis.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

# Twenty hosts, so no host nears Zoom's 100 creates a day in any benchmark.
HOSTS = tuple(f"host{n:02d}@bench.example" for n in range(20))


def host(number: int) -> str:
    """The host of meeting ``number``."""
    return HOSTS[number % len(HOSTS)]


def new_body(number: int) -> dict[str, Any]:
    """A valid create-meeting body for tomorrow."""
    tomorrow = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    start = tomorrow + timedelta(minutes=30 * (number % 16))
    return {
        "topic": f"Bench meeting {number}",
        "type": 2,
        "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration": 30,
        "timezone": "UTC",
        "agenda": "Made by zoom-worker bench.",
    }


def peak_any_second(arrivals: list[float]) -> int:
    """The most calls Zoom accepted within any one second (a sliding window over arrivals)."""
    peak, first = 0, 0
    for last, at in enumerate(arrivals):
        while at - arrivals[first] >= 1.0:
            first += 1
        peak = max(peak, last - first + 1)
    return peak
