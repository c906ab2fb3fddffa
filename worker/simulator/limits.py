"""Zoom's rate limits: per category in a sliding 1 s window, and creates per user per UTC day."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from worker.simulator.config import SimulatorConfig
from worker.simulator.state import SimulatorState
from worker.simulator.wire import Reply, error_reply, utc_stamp

PER_SECOND_MESSAGE = (
    "You have reached the maximum per-second rate limit for this API. Try again later."
)
DAILY_MESSAGE = (
    "You have exceeded the daily rate limit ({limit}) of Meeting Create/Update API requests "
    "permitted for this particular user. You may resume these requests at GMT 00:00:00."
)


class RateLimits(SimulatorState):
    """The per-second and daily limits; a part of :class:`Simulator`."""

    def _take_rate_slot(self, category: str, cfg: SimulatorConfig) -> Reply | None:
        """Accept a call into the category's sliding 1 s window, or answer 429."""
        window = self._windows[category]
        now = time.monotonic()
        while window and window[0] <= now - 1.0:
            window.popleft()
        limit = (cfg.rate_limits or {}).get(category)
        if limit is not None and len(window) >= limit:
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
        self._max_qps[category] = max(self._max_qps[category], len(window))
        return None

    def _take_daily(self, host_id: str, cfg: SimulatorConfig) -> Reply | None:
        """Count one create or update against the host's cap for this UTC day, or refuse."""
        now = datetime.now(UTC)
        if now.date() != self._daily_date:
            self._daily, self._daily_date = {}, now.date()
        used = self._daily.get(host_id, 0)
        if used < cfg.daily_create_limit:
            self._daily[host_id] = used + 1
            return None
        self._counters["api_429_daily"] += 1
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
