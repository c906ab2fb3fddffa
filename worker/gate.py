"""The gate every Zoom call passes: Zoom's rate-limit categories and the fleet's governor.

One table maps each operation to Zoom's rate-limit category ("Rate Limit Label" in Zoom's
specs). The specs disagree on create (Light in the 2026 spec, Medium in the 2023 specs and
on the forum), so its category is the setting ``ZOOM_CREATE_CATEGORY``, Medium by default.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from worker import errors, outage, priorities, zoom
from worker.config import Settings
from worker.ratelimit import RateGovernor

log = logging.getLogger(__name__)

OPERATION_CATEGORIES = {
    "create": "medium",  # overridden by ZOOM_CREATE_CATEGORY
    "update": "light",
    "delete": "light",
    "get": "light",
    "list": "medium",
}
# Zoom caps these per host per UTC day.
HOST_CAPPED = frozenset({"create", "update"})
# A slot this close is waited for in-process: re-queueing would take longer than the wait.
PRECISION_WAIT_S = 0.05
# How far ahead a slot may be reserved; beyond it the task re-queues without a slot.
MAX_AHEAD_S = 60.0
# Waited in-process for admit() (the sliding log of calls made) before re-queueing instead.
ADMIT_WAIT_S = 1.0
# After a per-second 429 with no Retry-After, the whole category pauses this long.
QPS_PENALTY_S = 1.0


class Gate(Protocol):
    """Asked before every Zoom call: the fleet's rate governor, or an open gate."""

    def before_call(
        self,
        operation: str,
        user_id: str | None = None,
        slot_at: float | None = None,
        priority: str = priorities.DEFAULT,
        meeting_id: int | None = None,
    ) -> None:
        """Return when the call may go now; raise Deferred, DailyLimitReached or (an update
        of ``meeting_id``) MeetingUpdateLimitReached otherwise.

        ``slot_at`` is a slot reserved by an earlier run of the same task; ``priority`` the
        job's (:mod:`worker.priorities`), higher served first."""
        ...

    def checked_call(
        self,
        check: outage.Check,
        operation: str,
        user_id: str | None = None,
        slot_at: float | None = None,
        priority: str = priorities.DEFAULT,
        meeting_id: int | None = None,
    ) -> None:
        """:meth:`before_call`, with the outage breaker's ``check`` asked first unless it was
        asked already (an attempt asks it once, before its first call); a ZoomOutage from it
        spends no permit."""
        ...

    def admit(self, operation: str, priority: str = priorities.DEFAULT) -> None:
        """Right before the request leaves, after before_call: return when the calls made
        across the fleet leave room for it (see worker.ratelimit, Pacing); raise Deferred
        when that is too far off (at once for ``bulk``: see FleetGate.admit)."""
        ...

    def rate_limited(self, operation: str, exc: errors.RateLimited, user_id: str | None) -> None:
        """Zoom answered 429 anyway: tell the whole fleet."""
        ...


class OpenGate:
    """No governor: every call may go (``RATE_GOVERNOR=false``)."""

    def before_call(
        self,
        operation: str,
        user_id: str | None = None,
        slot_at: float | None = None,
        priority: str = priorities.DEFAULT,
        meeting_id: int | None = None,
    ) -> None:
        """Always let the call go."""

    def checked_call(
        self,
        check: outage.Check,
        operation: str,
        user_id: str | None = None,
        slot_at: float | None = None,
        priority: str = priorities.DEFAULT,
        meeting_id: int | None = None,
    ) -> None:
        """The breaker's check in a round trip of its own, then :meth:`before_call` (given
        ``meeting_id`` only for an update's, so a subclass may leave it out)."""
        check.ask()
        if meeting_id is None:
            self.before_call(operation, user_id, slot_at, priority)
        else:
            self.before_call(operation, user_id, slot_at, priority, meeting_id=meeting_id)

    def admit(self, operation: str, priority: str = priorities.DEFAULT) -> None:
        """Always room."""

    def rate_limited(self, operation: str, exc: errors.RateLimited, user_id: str | None) -> None:
        """Nothing to tell."""


def planned_limits(settings: Settings) -> dict[str, float]:
    """Calls per second the governor plans for: ``RATE_HEADROOM`` of each limit."""
    return {name: rate * settings.RATE_HEADROOM for name, rate in settings.rate_limits.items()}


def category_of(operation: str, settings: Settings) -> str:
    """Zoom's rate-limit category for an operation."""
    if operation == "create":
        return settings.ZOOM_CREATE_CATEGORY
    return OPERATION_CATEGORIES[operation]


class FleetGate:
    """Takes a fleet-wide permit from the Redis governor before each call.

    Raises :class:`~worker.errors.Deferred` with the reserved slot when the call must wait
    (the task re-queues itself with that countdown), and
    :class:`~worker.errors.DailyLimitReached` while the host's daily cap is reached.
    """

    def __init__(self, governor: RateGovernor, settings: Settings) -> None:
        self._governor = governor
        self._settings = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> FleetGate:
        """The gate over the fleet's governor in ``REDIS_URL``, planning for
        ``RATE_HEADROOM`` of each per-second limit, paced over ``RATE_ARRIVAL_SPREAD_S``."""
        governor = RateGovernor.from_url(
            settings.redis_url, planned_limits(settings), spread_s=settings.RATE_ARRIVAL_SPREAD_S
        )
        return cls(governor, settings)

    @property
    def governor(self) -> RateGovernor:
        """The governor this gate asks (its Redis client serves other accounts' gates too)."""
        return self._governor

    def before_call(
        self,
        operation: str,
        user_id: str | None = None,
        slot_at: float | None = None,
        priority: str = priorities.DEFAULT,
        meeting_id: int | None = None,
    ) -> None:
        """Return when the call may go now; raise Deferred, DailyLimitReached or
        MeetingUpdateLimitReached otherwise (see :meth:`checked_call`)."""
        self._pass(operation, user_id, slot_at, priority, meeting_id, None)

    def checked_call(
        self,
        check: outage.Check,
        operation: str,
        user_id: str | None = None,
        slot_at: float | None = None,
        priority: str = priorities.DEFAULT,
        meeting_id: int | None = None,
    ) -> None:
        """:meth:`before_call` with the outage breaker's check in the permit's round trip when
        the breaker's Redis is the governor's (else in one of its own, first)."""
        self._pass(operation, user_id, slot_at, priority, meeting_id, check)

    def _pass(
        self,
        operation: str,
        user_id: str | None,
        slot_at: float | None,
        priority: str,
        meeting_id: int | None,
        check: outage.Check | None,
    ) -> None:
        """Return when the call may go now; raise ZoomOutage (from the breaker's ``check``),
        Deferred, DailyLimitReached or MeetingUpdateLimitReached otherwise.

        The caps are counted once the per-second permit is granted: the meeting's updates in
        24 hours (``ZOOM_MEETING_UPDATE_LIMIT``) first, then the host's creates and updates
        today (``ZOOM_DAILY_CREATE_LIMIT``), so a call refused by one cap spends no other. A
        create is one round trip to Redis here (:meth:`RateGovernor.permit`), the breaker's
        check included when it is due and its Redis is the governor's."""
        question = None if check is None else check.question(self._governor.client)
        if check is not None and question is None:
            check.ask()  # the breaker is elsewhere, or asked already (then this does nothing)
        host = user_id if operation in HOST_CAPPED else None
        category = category_of(operation, self._settings)
        meeting_capped = operation == "update" and meeting_id is not None
        # One round trip: the host's block, the slot and (unless a meeting's cap comes first)
        # the host's count, taken only with a slot the call may use at once.
        answer = self._governor.permit(
            category,
            host=host,
            count_within_s=None if meeting_capped else PRECISION_WAIT_S,
            max_ahead_s=MAX_AHEAD_S,
            slot_at=slot_at,
            priority=priority,
            outage=question,
        )
        if check is not None and question is not None:
            check.answered(question, answer.outage)  # while Zoom fails, the attempt is held
        if answer.blocked_until is not None:
            raise errors.DailyLimitReached(
                "the host's daily meeting create/update limit is reached",
                retry_at=answer.blocked_until,
            )
        permit = answer.permit
        if not permit.granted or permit.delay_s > PRECISION_WAIT_S:
            # Without a slot, the delay is a return time from the priority's line: callers
            # refused together come back one slot interval apart.
            delay_s = permit.delay_s
            raise errors.Deferred(
                f"no {category} permit for {delay_s:.2f}s ({priority} priority)",
                retry_at=datetime.now(UTC) + timedelta(seconds=delay_s),
                slot_at=permit.slot_at if permit.granted else None,
            )
        if permit.delay_s > 0:
            time.sleep(permit.delay_s)
        calls = answer.host_calls
        if meeting_capped:
            assert meeting_id is not None
            limit = self._settings.ZOOM_MEETING_UPDATE_LIMIT
            until = self._governor.count_meeting_update(meeting_id, limit)
            if until is not None:
                raise errors.MeetingUpdateLimitReached(
                    f"meeting {meeting_id} was updated {limit} times in 24 hours "
                    f"(ZOOM_MEETING_UPDATE_LIMIT={limit})",
                    retry_at=until,
                )
            if host is not None:
                calls = self._governor.count_host_call(host)
        if (
            host is not None
            and calls is not None
            and calls > self._settings.ZOOM_DAILY_CREATE_LIMIT
        ):
            midnight = zoom.next_utc_midnight()
            self._governor.block_host(host, midnight)
            raise errors.DailyLimitReached(
                f"the host made {calls - 1} meeting creates/updates today "
                f"(ZOOM_DAILY_CREATE_LIMIT={self._settings.ZOOM_DAILY_CREATE_LIMIT})",
                retry_at=midnight,
            )

    def admit(self, operation: str, priority: str = priorities.DEFAULT) -> None:
        """Wait for the sliding log of calls made to admit this one (a caller late for its
        slot waits for the next opening); past ADMIT_WAIT_S, re-queue for a new slot. Called
        last before the request (after the ledger's fence), so that the time from admission
        to Zoom varies as little as it can.

        A ``bulk`` caller does not wait: when the log is full it re-queues at once. Callers
        waiting here race for each opening whatever their priority, so a backlog of bulk
        jobs bunched at the log (late for their slots) would otherwise take the openings a
        high job waits for, until it lost its slot too and went to the back."""
        category = category_of(operation, self._settings)
        wait_s = 0.0 if priority == priorities.BULK else ADMIT_WAIT_S
        deadline = time.monotonic() + wait_s
        while True:
            admitted = self._governor.admit(category)
            if admitted.granted:
                return
            if time.monotonic() + admitted.delay_s > deadline:
                raise errors.Deferred(
                    f"no {category} opening for {admitted.delay_s:.2f}s",
                    retry_at=datetime.now(UTC) + timedelta(seconds=admitted.delay_s),
                    slot_at=None,
                )
            time.sleep(admitted.delay_s)

    def rate_limited(self, operation: str, exc: errors.RateLimited, user_id: str | None) -> None:
        """Zoom answered 429 anyway: block the host for the day, or pause the category (a
        meeting's update cap holds only that meeting's job: nothing to tell the fleet)."""
        if isinstance(exc, errors.MeetingUpdateLimitReached):
            return
        if isinstance(exc, errors.DailyLimitReached):
            if user_id is not None:
                self._governor.block_host(user_id, exc.retry_at or zoom.next_utc_midnight())
            return
        category = exc.category if exc.category in self._settings.rate_limits else None
        category = category or category_of(operation, self._settings)
        if exc.limit is not None or exc.remaining is not None:
            self._governor.observe(category, limit=exc.limit, remaining=exc.remaining)
        wait_s = QPS_PENALTY_S
        if exc.retry_at is not None:
            wait_s = max(wait_s, (exc.retry_at - datetime.now(UTC)).total_seconds())
        # A per-second 429 (not a long Retry-After) means the pacing was too tight: widen it.
        self._governor.penalize(category, wait_s, widen=exc.retry_at is None or wait_s <= 2)
        log.warning("gate.penalized category=%s for %.1fs after a 429", category, wait_s)
