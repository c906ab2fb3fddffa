"""The fleet-wide rate governor: Zoom's account limits, shared by every worker process in Redis.

Zoom counts calls per second per category (light, medium, heavy) for the whole account, and
meeting creates/updates per host per UTC day. Every process on every host asks this governor
before a call, so the fleet as a whole stays under the limits.

Protocol
--------
Keys, under a namespace (default ``zw:rl``)::

    {ns}:tat:{category}      next free slot (GCRA "theoretical arrival time"), integer epoch us
    {ns}:hold:{category}     no call before this time (set by penalize/observe), epoch us
    {ns}:learned:{category}  a lower calls-per-second learned from Zoom's headers, expires in 1 h
    {ns}:slack:{category}    extra spread after per-second 429s, us; expires (see Pacing)
    {ns}:sent:{category}     sorted set of the calls admitted in the last window, scored by
                             epoch us (see Pacing); trimmed to the window at every admit,
                             so it needs no expiry
    {ns}:line:{category}:{priority}  the next return time handed to a refused caller of that
                             priority, epoch us (see Priorities)
    {ns}:host:block:{host}   the host's daily cap is reached until this time, epoch us;
                             the key expires at that time
    {ns}:host:count:{host}   hash {day, n}: calls counted for the host on ``day`` (days since
                             the epoch, UTC); expires a margin after that day's end (set
                             when the day's count starts)
    {ns}:meeting:{id}        sorted set of the meeting's updates in the last 24 hours
                             (member and score: epoch us); expires 24 h after the newest

``{host}`` is a BLAKE2b digest of the user id (lower-cased when it is an email, as Zoom
matches emails without case), so an email never appears in a key.

Slots are reserved with GCRA (generic cell rate algorithm): the interval is ``T = 1/rate``
(rounded up to a whole microsecond, so never faster than the rate) and the tolerance is
``(burst - 1) * T``. A reservation takes the slot ``max(now, tat - tolerance)`` and sets
``tat`` to ``max(tat, now) + T``, so callers arriving together get slots ``now``,
``now + T``, ``now + 2T`` and so on, and never wait in-process: a caller with
``delay_s > 0`` re-queues its task with that countdown and presents ``slot_at`` again when
it runs. A slot farther ahead than ``max_ahead_s`` is not reserved, so a refused caller
holds no capacity. A reserved slot that is never used is simply lost capacity; there is no
cancel.

A reservation should be used within :data:`USE_WITHIN_S` of its slot: a late call bunches up
with the slots after it. Presented later than that, the old slot is dropped and a new one
taken. A slot before a ``hold`` (a 429 came in after it was reserved) is dropped too.

Pacing
------
Zoom does not say whether its one-second window is fixed (each wall-clock second) or sliding
(any one-second span), and a call reaches Zoom some milliseconds after its permit, a few more
or less each time. Two things keep every one-second span at Zoom within the cap, under both
models, while using nearly all of it:

- the schedule's interval is stretched by ``spread_s`` (``RATE_ARRIVAL_SPREAD_S``, how much the
  latency between permit and arrival varies): ``T = (1 + spread_s) / rate``, so ``rate`` calls
  span ``1 + spread_s`` seconds and arrive within any one second only ``rate`` at a time;
- just before each call, :meth:`RateGovernor.admit` checks a sliding log of the calls actually
  made: at most ``rate`` in any ``1 + spread_s`` seconds. A caller that ran late for its slot
  (a busy worker, a slow countdown) cannot then bunch up with the slots after it; it waits the
  few milliseconds to the next opening in-process instead of losing its slot.

A fixed window is a special case of the sliding one, so holding the sliding one holds both.
When a per-second 429 comes anyway, the arrivals are less even than ``spread_s`` allows (a
loaded host): :meth:`RateGovernor.penalize` with ``widen`` adds :data:`SLACK_STEP_S` to the
spread for the whole fleet, up to :data:`SLACK_MAX_S`, until :data:`SLACK_TTL_S` pass
without another.

Priorities
----------
A caller may name its job's priority (``high``, ``normal``, ``bulk``; :mod:`worker.priorities`).
Slots come from the one schedule above, but a lower priority may reserve only a short way
ahead (:data:`AHEAD_S`: high as far as ``max_ahead_s``, normal 2 s, bulk 0.5 s). A backlog
of bulk jobs therefore holds at most half a second of the schedule, and a high job arriving
behind it takes the next slot after that, ahead of every bulk job still waiting; normal
likewise goes ahead of bulk. A refused caller of a priority is handed a return time from
its priority's line (``{ns}:line:...``): one per slot interval, starting when the schedule
will have room for it, so a backlog of thousands comes back one at a time at the pace slots
free up, in order, instead of all together. Bulk progresses whenever no higher priority
fills the schedule; while one does, bulk callers come back and are refused again.

Every operation that writes, or that reads the state against the clock, is one Lua script
(:mod:`worker.ratelimit_scripts`), so it is atomic across the fleet; pure reads are one
command. A call's permit (:meth:`RateGovernor.permit`) is one script for the host's block,
the slot and the host's count, and can carry the outage breaker's check
(:mod:`worker.outage`) on the same Redis: the check comes first, and while the breaker holds
the attempt the permit is not spent (no slot, no count). Inside a script each category's keys
are read in one ``MGET``, the clock once per script, and a key whose expiry is absolute (the
host's count) is given it once, not at every call. All time is Redis's own (``TIME`` inside
the script, or :meth:`RateGovernor.now`): hosts whose clocks disagree still agree on the
slots. Delays are returned relative to that clock, so a Celery countdown built from
``delay_s`` needs no agreement between clocks either.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.commands.core import Script

from worker import errors, ratelimit_scripts, redis_client
from worker.outage import Question

# A reservation is honoured this long after its slot; later, a new one is taken. A late call
# cannot crowd the slots after it (admit() counts the calls actually made), so a worker that
# runs a re-queued task seconds late (a busy machine) still gets the slot it waited for.
USE_WITHIN_S = 10.0
# How far ahead a priority may reserve (None: as far as the caller's ``max_ahead_s``).
AHEAD_S: dict[str, float | None] = {"high": None, "normal": 2.0, "bulk": 0.5}
# A per-second 429 despite the pacing means calls reach Zoom less evenly than the spread
# allows (a loaded host, a slow network): widen it by this much, up to SLACK_MAX_S, until
# SLACK_TTL_S pass without another.
SLACK_STEP_S = 0.03
SLACK_MAX_S = 0.3
SLACK_TTL_S = 120
# How long a rate learned from X-RateLimit-Limit is believed.
LEARNED_RATE_TTL_S = 3600
# The daily counter outlives 00:00 UTC by this much: the day is decided by its ``day`` field,
# the expiry only clears the key away.
DAY_KEY_MARGIN_S = 3600

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = 1_000_000
_USE_WITHIN_US = round(USE_WITHIN_S * _US)

# Zoom counts a meeting's updates "within a 24-hour period".
MEETING_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Permit:
    """The governor's answer to one :meth:`RateGovernor.reserve`.

    ``granted`` means ``slot_at`` (Redis epoch seconds) is held for this caller: call now when
    ``delay_s`` is 0, else re-queue with a countdown of ``delay_s`` and present ``slot_at``
    again. Not granted means nothing is held and ``delay_s`` is the estimated wait; with a
    priority, it is the caller's return time from its priority's line (``slot_at``).
    """

    granted: bool
    delay_s: float
    slot_at: float
    category: str

    def is_stale(self, now: float, *, use_within_s: float = USE_WITHIN_S) -> bool:
        """True when ``now`` (Redis time, see :meth:`RateGovernor.now`) is too late for the slot."""
        return now > self.slot_at + use_within_s


@dataclass(frozen=True)
class CallPermit:
    """The governor's answer to one :meth:`RateGovernor.permit`: the outage breaker's answer
    when asked, the host's block, else the slot (``permit``) and, when it was counted, the
    host's count of calls today."""

    permit: Permit
    blocked_until: datetime | None = None
    host_calls: int | None = None
    outage: Any = None
    """The script's reply to the outage breaker's question, for :meth:`outage.Breaker.answered`
    (None when not asked). While it holds the attempt, nothing else was done."""


class RateGovernor:
    """Zoom's per-second limits per category and per-host daily caps, for the whole fleet.

    ``limits`` maps each category to its calls per second. Every method is one round trip to
    Redis; a Redis failure raises :class:`~worker.errors.GovernorUnavailable`.
    """

    def __init__(
        self,
        client: redis.Redis,
        limits: Mapping[str, float],
        *,
        namespace: str = "zw:rl",
        burst: int = 1,
        spread_s: float = 0.0,
    ) -> None:
        if not 0 <= spread_s < 1:
            raise ValueError("spread_s must be in [0, 1)")
        for category, rate in limits.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
                raise ValueError(f"the rate for {category!r} must be a number above 0")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.client = client
        self.limits = dict(limits)
        self.namespace = namespace
        self.burst = burst
        self.spread_s = spread_s
        self._admit = client.register_script(ratelimit_scripts.ADMIT)
        self._reserve = client.register_script(ratelimit_scripts.RESERVE)
        self._penalize = client.register_script(ratelimit_scripts.PENALIZE)
        self._observe = client.register_script(ratelimit_scripts.OBSERVE)
        self._block_host = client.register_script(ratelimit_scripts.BLOCK_HOST)
        self._host_count = client.register_script(ratelimit_scripts.HOST_COUNT)
        self._permit = client.register_script(ratelimit_scripts.PERMIT)
        self._meeting_update = client.register_script(ratelimit_scripts.MEETING_UPDATE)

    @classmethod
    def from_url(
        cls,
        url: str,
        limits: Mapping[str, float],
        *,
        namespace: str = "zw:rl",
        burst: int = 1,
        spread_s: float = 0.0,
    ) -> RateGovernor:
        """A governor on a new client for ``url``; timeouts stop a dead Redis hanging a task."""
        client = redis_client.connect(url, socket_connect_timeout=5.0, socket_timeout=5.0)
        return cls(client, limits, namespace=namespace, burst=burst, spread_s=spread_s)

    def reserve(
        self,
        category: str,
        *,
        max_ahead_s: float = 30.0,
        slot_at: float | None = None,
        priority: str | None = None,
    ) -> Permit:
        """Reserve the category's next free slot, unless it is more than ``max_ahead_s`` away.

        Pass ``slot_at`` from an earlier granted Permit to use that slot: it is honoured
        (``delay_s`` is what is left of the wait) while it is at most :data:`USE_WITHIN_S`
        late and no penalty came after it; otherwise a new slot is reserved. A ``priority``
        bounds how far ahead (:data:`AHEAD_S`) and, when refused, gives a return time from
        its line (see Priorities above).
        """
        keys, args = self._reserve_request(category, max_ahead_s, slot_at, priority)
        granted, delay_us, slot_us = self._run(self._reserve, keys, args)
        return Permit(bool(granted), delay_us / _US, slot_us / _US, category)

    def permit(
        self,
        category: str,
        *,
        host: str | None = None,
        count_within_s: float | None = None,
        max_ahead_s: float = 30.0,
        slot_at: float | None = None,
        priority: str | None = None,
        outage: Question | None = None,
    ) -> CallPermit:
        """:meth:`host_blocked_until`, :meth:`reserve` and :meth:`count_host_call` in one round
        trip (one script), for a call made for ``host`` (None: no host cap counts it).

        A blocked host reserves nothing. The host's call is counted only when a slot at most
        ``count_within_s`` away is granted (the caller then makes the call; None: never
        counted here, the caller counts it once it knows the call goes). The outage breaker's
        ``outage`` question (its Redis must be this governor's) is answered first, in the same
        script; while the breaker holds the attempt nothing is reserved or counted.
        """
        keys, args = self._reserve_request(category, max_ahead_s, slot_at, priority)
        if host is not None:
            keys += [self._host_key("block", host), self._host_key("count", host)]
        within = "" if count_within_s is None else str(round(count_within_s * _US))
        args += [within, DAY_KEY_MARGIN_S, "", ""]
        if outage is not None:
            keys += outage.keys
            args[-2:] = [outage.ticket, outage.lease_ms]
        granted, delay_us, slot_us, blocked_us, calls, *asked = self._run(self._permit, keys, args)
        permit = Permit(bool(granted), delay_us / _US, slot_us / _US, category)
        blocked = int(blocked_us)
        return CallPermit(
            permit,
            blocked_until=_EPOCH + timedelta(microseconds=blocked) if blocked else None,
            host_calls=None if int(calls) < 0 else int(calls),
            outage=asked[0] if asked else None,
        )

    def admit(self, category: str) -> Permit:
        """Just before a call: granted while fewer than the category's rate of calls were
        admitted in the last ``1 + spread_s`` seconds (and then counted); otherwise
        ``delay_s`` says when the oldest of them leaves that window; ``slot_at`` is when it
        was asked (Redis's clock). See Pacing above."""
        count = max(1, math.floor(self.limits[self._check(category)]))
        window_us = round((1 + self.spread_s) * _US)
        member = secrets.token_hex(8)
        granted, delay_us, now_us = self._run(
            self._admit,
            [self._key(part, category) for part in ("sent", "learned", "slack")],
            [count, window_us, member],
        )  # fmt: skip
        return Permit(bool(granted), delay_us / _US, now_us / _US, category)

    def penalize(self, category: str, seconds: float, *, widen: bool = False) -> None:
        """Zoom answered 429 anyway: no slot in the category before ``seconds`` from now.

        Slots already reserved before that time are dropped when presented, so the whole
        fleet waits. A shorter penalty never shortens a longer one. ``widen`` (a per-second
        429 the pacing should have prevented) adds :data:`SLACK_STEP_S` to the spread, up to
        :data:`SLACK_MAX_S`, for :data:`SLACK_TTL_S` after the last such 429 (see Pacing).
        """
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self._run(
            self._penalize,
            self._category_keys(category),
            [
                self._paced(category),
                self.burst,
                round(seconds * _US),
                round(SLACK_STEP_S * _US) if widen else 0,
                round(SLACK_MAX_S * _US),
                SLACK_TTL_S * 1000,
            ],
        )

    def observe(self, category: str, *, limit: int | None, remaining: int | None) -> None:
        """Learn from Zoom's QPS headers (pass them only when X-RateLimit-Type is ``QPS``).

        A ``limit`` below the configured rate becomes the category's rate for
        :data:`LEARNED_RATE_TTL_S` (a higher one is ignored: headers are not reliable, and
        the configuration is the ceiling). ``remaining == 0`` pushes the next slot to the next
        whole second, when Zoom's per-second window should roll over.
        """
        self._run(
            self._observe,
            self._category_keys(category),
            [
                self._paced(category),
                self.burst,
                "" if limit is None else limit,
                "" if remaining is None else remaining,
                LEARNED_RATE_TTL_S * 1000,
            ],
        )

    def effective_rate(self, category: str) -> float:
        """Calls per second now allowed in the category: the configured or a learned lower one."""
        configured = self.limits[self._check(category)]
        with _translated():
            learned = self.client.get(self._key("learned", category))
        if learned is not None and 0 < int(learned) < configured:
            return float(int(learned))
        return float(configured)

    def now(self) -> float:
        """Redis's clock in epoch seconds: the time every slot is measured in."""
        with _translated():
            seconds, micros = self.client.time()
        return float(seconds) + micros / _US

    def block_host(self, user_id: str, until: datetime) -> None:
        """No more creates/updates for the host before ``until`` (Zoom's daily cap, reset at
        00:00 UTC). The block vanishes at ``until``; an earlier ``until`` never shortens it."""
        self._run(self._block_host, [self._host_key("block", user_id)], [_to_us(until)])

    def host_blocked_until(self, user_id: str) -> datetime | None:
        """When the host's block ends (UTC), or None when it is not blocked."""
        with _translated():
            value = self.client.get(self._host_key("block", user_id))
        return None if value is None else _EPOCH + timedelta(microseconds=int(value))

    def count_host_call(self, user_id: str) -> int:
        """Count one create/update for the host today (UTC, Redis's clock); the new count.

        The count is returned atomically, so each caller sees a different number and the one
        that sees more than the daily limit knows to stop.
        """
        key = self._host_key("count", user_id)
        return int(self._run(self._host_count, [key], [1, DAY_KEY_MARGIN_S]))

    def host_calls_today(self, user_id: str) -> int:
        """Creates/updates counted for the host today (UTC, Redis's clock)."""
        key = self._host_key("count", user_id)
        return int(self._run(self._host_count, [key], [0, DAY_KEY_MARGIN_S]))

    def booked_ahead_s(self) -> dict[str, float]:
        """How far ahead of now each category's slots are reserved, in seconds (0 when idle;
        it grows while calls are asked for faster than the limit), by Redis's clock."""
        with _translated():
            seconds, micros = self.client.time()
            values = self.client.mget([self._key("tat", c) for c in self.limits])
        now = seconds * _US + micros
        return {
            category: max(0, int(value or 0) - now) / _US
            for category, value in zip(self.limits, values, strict=True)
        }

    def count_meeting_update(self, meeting_id: int, limit: int) -> datetime | None:
        """Count one update of the meeting in its sliding 24 hours; or, when ``limit`` are
        counted there already, count nothing and return when the oldest leaves the window."""
        window_us = MEETING_WINDOW // timedelta(microseconds=1)
        key = self._key("meeting", str(int(meeting_id)))
        until_us = int(self._run(self._meeting_update, [key], [limit, window_us]))
        return None if until_us == 0 else _EPOCH + timedelta(microseconds=until_us)

    def _run(self, script: Script, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        with _translated():
            return script(keys=keys, args=args, client=self.client)

    def _reserve_request(
        self, category: str, max_ahead_s: float, slot_at: float | None, priority: str | None
    ) -> tuple[list[str], list[str | int | float]]:
        # KEYS and ARGV of the reserve script (see ratelimit_scripts.RESERVE).
        held = "" if slot_at is None else str(round(slot_at * _US))
        if priority is not None and priority not in AHEAD_S:
            raise ValueError(f"unknown priority {priority!r}; known: {sorted(AHEAD_S)}")
        ahead = AHEAD_S.get(priority or "high")
        if ahead is not None:
            max_ahead_s = min(max_ahead_s, ahead)
        line = self._key("line", category, priority or "none")  # read only with a priority
        keys = [*self._category_keys(category), line]
        args: list[str | int | float] = [
            self._paced(category),
            self.burst,
            round(max_ahead_s * _US),
            held,
            _USE_WITHIN_US,
            "0" if priority is None else "1",
        ]
        return keys, args

    def _paced(self, category: str) -> float:
        # The schedule's rate: the category's, over 1 + spread_s seconds (see Pacing).
        return self.limits[self._check(category)] / (1 + self.spread_s)

    def _check(self, category: str) -> str:
        if category not in self.limits:
            raise ValueError(f"unknown rate category {category!r}; known: {sorted(self.limits)}")
        return category

    def _category_keys(self, category: str) -> list[str]:
        self._check(category)
        return [self._key(part, category) for part in ("tat", "learned", "hold", "slack")]

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def _host_key(self, kind: str, user_id: str) -> str:
        return self._key("host", kind, host_digest(user_id))


def host_digest(user_id: str) -> str:
    """The host's name in keys and metric labels: a BLAKE2b digest, never the email (Zoom
    matches emails without case; ids are case-sensitive)."""
    canonical = user_id.lower() if "@" in user_id else user_id
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    # The one place Redis's failures become ours.
    try:
        yield
    except redis.RedisError as exc:
        raise errors.GovernorUnavailable(f"Redis (rate governor) failed: {exc}") from exc


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required, got a naive one")
    return (moment - _EPOCH) // timedelta(microseconds=1)
