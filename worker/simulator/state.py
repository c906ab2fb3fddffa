"""The state of one simulated Zoom account, shared by every part of :class:`Simulator`."""

from __future__ import annotations

import copy
import random
import threading
from collections import deque
from dataclasses import dataclass
from datetime import date
from typing import Any

from worker.simulator.config import RATE_CATEGORIES, SimulatorConfig

COUNTERS = (
    *("token_requests", "tokens_issued", "token_errors", "api_calls", "api_401", "api_429"),
    *("api_429_daily", "api_5xx", "replies_lost", "connections_dropped", "meetings_created"),
    *("meetings_seeded", "meetings_deleted"),
)


@dataclass
class Meeting:
    body: dict[str, Any]
    user_id: str
    foreign: bool
    deleted: bool = False


@dataclass(frozen=True)
class Page:
    host_id: str
    ids: tuple[int, ...]  # shared by every page of one listing
    offset: int


class SimulatorState:
    """Tokens, meetings, rate windows and counters; the parts of :class:`Simulator` build on it.

    Every attribute is guarded by ``_lock``; :meth:`_reset_state` makes them all anew.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = copy.deepcopy(config) if config else SimulatorConfig()
        self._rng = random.Random(self._config.seed)
        self._reset_state()

    def _reset_state(self) -> None:
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry, oldest first
        self._meetings: dict[int, Meeting] = {}
        self._by_host: dict[str, list[Meeting]] = {}  # in creation order
        self._host_ids: dict[str, str] = {}  # email -> host_id
        self._host_emails: dict[str, str] = {}  # host_id -> email
        self._pages: dict[str, Page] = {}
        self._windows: dict[str, deque[float]] = {c: deque() for c in RATE_CATEGORIES}
        self._max_qps: dict[str, int] = dict.fromkeys(RATE_CATEGORIES, 0)
        self._daily: dict[str, int] = {}
        self._daily_date: date | None = None
        self._counters = dict.fromkeys(COUNTERS, 0)
