"""Small values the simulator's parts share: its clock, its counters and a meeting's record."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

COUNTERS = (
    *("token_requests", "tokens_issued", "token_errors", "api_calls", "api_401", "api_429"),
    *("api_429_daily", "api_5xx", "replies_lost", "connections_dropped", "meetings_created"),
    *("meetings_seeded", "meetings_deleted", "occurrences_deleted"),
)


class Clock:
    """The simulator's "now": the real time plus an offset the tests move.

    Moving it back lets a test make a meeting that started (or ended) in the past, since a
    create treats a missing or past ``start_time`` as now, as Zoom does; moving it forward
    makes a series' occurrences pass. Not thread-safe: the :class:`Simulator`'s lock guards it.
    """

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        """The simulated time, timezone-aware UTC, whole seconds (Zoom's stamps have none)."""
        return (datetime.now(UTC) + self.offset).replace(microsecond=0)

    def advance(self, seconds: float) -> datetime:
        """Move the clock by ``seconds`` (negative: back); returns the new now."""
        self.offset += timedelta(seconds=seconds)
        return self.now()


class Counters:
    """What happened since start or reset, by name (see :data:`COUNTERS`)."""

    def __init__(self) -> None:
        self.values = dict.fromkeys(COUNTERS, 0)
        self.by_operation: dict[str, int] = {}  # API calls by operation ("create", "get", ...)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] += n


@dataclass
class Meeting:
    """One meeting of the book: Zoom's answer body, who made it, and its occurrences."""

    body: dict[str, Any]
    user_id: str
    foreign: bool
    deleted: bool = False
    # A series' (type 8) occurrences: {"occurrence_id", "start_time", "duration", "status"}.
    occurrences: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Page:
    host_id: str
    ids: tuple[int, ...]  # shared by every page of one listing
    offset: int
