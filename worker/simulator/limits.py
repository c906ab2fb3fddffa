"""Zoom's rate limits: per category per second (a sliding 1 s window, or fixed wall-clock
seconds: ``SimulatorConfig.rate_window``), creates and updates per user per UTC day, and
updates per meeting in a sliding 24 hours."""

from __future__ import annotations

import time
from collections import deque
from datetime import date, datetime, timedelta

from worker.simulator.config import RATE_CATEGORIES, SimulatorConfig
from worker.simulator.wire import Reply, error_reply, utc_stamp

PER_SECOND_MESSAGE = (
    "You have reached the maximum per-second rate limit for this API. Try again later."
)
# Zoom: "You can update a meeting for a maximum of 100 times within a 24-hour period"; the
# answer is worded like Zoom's other per-resource daily limits.
MEETING_UPDATES_MESSAGE = (
    "You have exceeded the daily rate limit of ({limit}) for Update a meeting API requests "
    "for the meeting ({meeting_id}). You can resume these API requests at GMT 00:00:00."
)
DAILY_MESSAGE = (
    "You have exceeded the daily rate limit ({limit}) of Meeting Create/Update API requests "
    "permitted for this particular user. You may resume these requests at GMT 00:00:00."
)


class RateWindows:
    """The per-second windows, their peaks and the daily counts; a part of :class:`Simulator`.

    Not thread-safe on its own: the Simulator calls it under its lock.
    """

    def __init__(self) -> None:
        self._windows: dict[str, deque[float]] = {c: deque() for c in RATE_CATEGORIES}
        # Calls accepted in the current wall-clock second, per category: (second, count).
        self._fixed: dict[str, tuple[int, int]] = dict.fromkeys(RATE_CATEGORIES, (0, 0))
        # The peak of calls in any sliding second, whatever the window model.
        self.max_qps: dict[str, int] = dict.fromkeys(RATE_CATEGORIES, 0)
        # When each accepted call arrived (epoch seconds), per category: what Zoom saw.
        self.accepted: dict[str, list[float]] = {c: [] for c in RATE_CATEGORIES}
        self._daily: dict[str, int] = {}
        self._daily_date: date | None = None
        self._updates: dict[str, deque[datetime]] = {}

    def take_slot(
        self, category: str, cfg: SimulatorConfig, limits: dict[str, int] | None
    ) -> Reply | None:
        """Accept a call into the category's 1 s window (sliding or fixed) under the
        account's ``limits``, or answer 429."""
        window = self._windows[category]
        now, wall = time.monotonic(), time.time()
        while window and window[0] <= now - 1.0:
            window.popleft()
        second, in_second = self._fixed[category]
        if second != int(wall):
            second, in_second = int(wall), 0
        used = len(window) if cfg.rate_window == "sliding" else in_second
        limit = (limits or {}).get(category)
        if limit is not None and used >= limit:
            headers = {}
            if cfg.rate_limit_headers:
                headers = {
                    "X-RateLimit-Category": category.capitalize(),
                    "X-RateLimit-Type": "QPS",
                    "X-RateLimit-Limit": str(limit),
                    "X-RateLimit-Remaining": "0",
                }
            return error_reply(429, 429, PER_SECOND_MESSAGE, headers)
        window.append(now)
        self._fixed[category] = (second, in_second + 1)
        self.max_qps[category] = max(self.max_qps[category], len(window))
        self.accepted[category].append(wall)
        return None

    def take_meeting_update(
        self, meeting_id: str, cfg: SimulatorConfig, now: datetime
    ) -> Reply | None:
        """Count one update of the meeting in its sliding 24 hours, or answer 429."""
        window = self._updates.setdefault(meeting_id, deque())
        while window and window[0] <= now - timedelta(hours=24):
            window.popleft()
        if len(window) < cfg.meeting_update_limit:
            window.append(now)
            return None
        message = MEETING_UPDATES_MESSAGE.format(
            limit=cfg.meeting_update_limit, meeting_id=meeting_id
        )
        headers = {"X-RateLimit-Type": "Daily-limit"} if cfg.rate_limit_headers else {}
        return error_reply(429, 429, message, headers)

    def take_daily(self, host_id: str, cfg: SimulatorConfig, now: datetime) -> Reply | None:
        """Count one create or update against the host's cap for ``now``'s UTC day, or refuse."""
        if now.date() != self._daily_date:
            self._daily, self._daily_date = {}, now.date()
        used = self._daily.get(host_id, 0)
        if used < cfg.daily_create_limit:
            self._daily[host_id] = used + 1
            return None
        headers = {}
        if cfg.rate_limit_headers:
            midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
            headers = {
                "X-RateLimit-Category": cfg.category_for("create").capitalize(),
                "X-RateLimit-Type": "Daily-limit",
                "X-RateLimit-Limit": str(cfg.daily_create_limit),
                "X-RateLimit-Remaining": "0",
                "Retry-After": utc_stamp(midnight),  # ISO-8601, not seconds, as Zoom sends it
            }
        message = DAILY_MESSAGE.format(limit=cfg.daily_create_limit)
        if cfg.daily_limit_style == "400":
            return error_reply(400, 300, message, headers)
        return error_reply(429, 429, message, headers)
