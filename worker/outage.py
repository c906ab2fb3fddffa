"""The outage breaker: when Zoom is unwell for everyone, the fleet waits together.

One job's 5xx says little; many jobs' 5xx within seconds say Zoom (or the road to it) is
down, and every job that keeps calling only spends its attempts and Zoom's patience. Like
the credential circuit (:mod:`worker.circuit`), the breaker stops the calls and lets one
probe find out when Zoom is back.

Protocol
--------
Keys in the governor's Redis (``REDIS_URL``), under a namespace (default ``zw:outage``)::

    {ns}:faults   sorted set: the attempts that met a Zoom fault (a 5xx or no answer) in the
                  last ``ZOOM_OUTAGE_WINDOW`` seconds, scored by Redis time in us
    {ns}:oks      sorted set: the attempts Zoom answered well in the same window
    {ns}:open     hash {until, pause}: present while the breaker is open, epoch us and us
    {ns}:probe    the probe lease: the ticket of the one attempt allowed through, SET NX PX

- **closed** (no ``open`` key): calls flow. Each attempt reports how Zoom answered. When the
  window holds ``ZOOM_OUTAGE_THRESHOLD`` faults *and* more faults than good answers, the
  breaker opens for a pause of one second. The ratio keeps scattered faults (a few per cent
  of calls, as in the durability tests' 10 % of 5xx) from ever tripping it: only a fault
  rate above one half opens it, and only with enough faults to mean something.
- **open** (before ``until``): no job calls Zoom. :meth:`Breaker.check` raises
  :class:`~worker.errors.ZoomOutage` with the end of the pause, and the job is held
  (``HoldReason.ZOOM_OUTAGE``) without spending an attempt. Faults reported by attempts that
  were already in flight are ignored.
- **half-open** (``until`` passed): the first attempt to take the ``probe`` lease calls Zoom;
  the others are held for another pause. The probe's fault doubles the pause (up to
  ``RETRY_BACKOFF_MAX``); any good answer closes the breaker. A probe that ends without
  asking Zoom anything conclusive (a 4xx, a rate-limit wait, a lost claim) gives its lease
  back; a probe whose process died loses it when the lease expires (``attempt_bound_s``).

Job-specific answers (4xx), rate limits and the token endpoint's error answers (paced by
:mod:`worker.token_budget`) never count; no answer at all counts, whoever did not answer.
Every operation is one Lua script on Redis's own clock, so hosts whose clocks disagree
agree on the pause.

An attempt asks the breaker once, with its first rate permit (:class:`Check`): when the
governor's Redis is the breaker's, the check is the first step of the permit's script
(:data:`CHECK_FN`), so it costs no round trip of its own, and while the breaker holds the
attempt the permit is not spent (no slot, no daily count); otherwise it is a script of its
own, just before the permit.

A good answer while the breaker is closed changes nothing but the window's count, so when
the attempt batches its counters (:meth:`worker.fleet_counters.FleetCounters.batched`) its
report joins that round trip at the attempt's end instead of taking one of its own; a
fault, and a probe's answer, are reported at once.

The breaker fails open: when its Redis cannot be reached, every attempt may call Zoom and
falls back on its own backoff, and the breaker stops asking Redis for :data:`REDIS_PAUSE_S`
so a Redis outage costs one connect timeout per pause, not one per call. (A check that rides
on the permit fails with it: without the governor's Redis no call goes anyway, the job is
held for the governor.)
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from worker import errors, redis_client
from worker.config import Settings

if TYPE_CHECKING:
    from worker.fleet_counters import FleetCounters

log = logging.getLogger(__name__)

PAUSE_MIN_S = 1.0
REDIS_PAUSE_S = 10.0
# The breaker's Redis calls run before and after Zoom calls: they must never hold one up.
REDIS_TIMEOUT_S = 0.5

_US = 1_000_000
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# The check as a Lua function, so that another script on the breaker's Redis can ask it in its
# own round trip (the governor's permit, :mod:`worker.ratelimit_scripts`). Returns {0} closed,
# {1, until_us, pause_us} held, {2} this ticket probes.
CHECK_FN = """
local function outage_check(open_key, probe_key, ticket, lease_ms, now)
  local state = redis.call('HMGET', open_key, 'until', 'pause')
  local ends = tonumber(state[1])
  if not ends then return {0} end
  local pause = tonumber(state[2])
  if now < ends then return {1, string.format('%.0f', ends), string.format('%.0f', pause)} end
  if redis.call('SET', probe_key, ticket, 'NX', 'PX', lease_ms) then return {2} end
  return {1, string.format('%.0f', now + pause), string.format('%.0f', pause)}
end
"""

# KEYS: open, probe. ARGV: ticket, probe_lease_ms.
_CHECK = _NOW + CHECK_FN + "return outage_check(KEYS[1], KEYS[2], ARGV[1], ARGV[2], now)\n"

# KEYS: faults, oks, open, probe. ARGV: ticket, '1' healthy / '0' fault / '' neither,
# window_us, threshold, pause_min_us, pause_max_us.
# Returns 'opened', 'reopened', 'closed' or ''.
_REPORT = (
    _NOW
    + """
local window = tonumber(ARGV[3])
local is_open = redis.call('EXISTS', KEYS[3]) == 1
-- read only where it matters: a good answer while closed (nearly every report) never asks
local function probing() return redis.call('GET', KEYS[4]) == ARGV[1] end
if ARGV[2] == '' then
  if probing() then redis.call('DEL', KEYS[4]) end
  return ''
end
if ARGV[2] == '1' then
  if is_open then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
    return 'closed'
  end
  redis.call('ZADD', KEYS[2], now, string.format('%.0f', now) .. ':' .. ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[2], math.floor(window / 1000) + 1000)
  return ''
end
if is_open then
  if not probing() then return '' end
  local pause = tonumber(redis.call('HGET', KEYS[3], 'pause'))
  pause = math.min(pause * 2, tonumber(ARGV[6]))
  redis.call('HSET', KEYS[3], 'until', string.format('%.0f', now + pause),
             'pause', string.format('%.0f', pause))
  redis.call('DEL', KEYS[4])
  return 'reopened'
end
redis.call('ZADD', KEYS[1], now, string.format('%.0f', now) .. ':' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1000)
local faults = redis.call('ZCARD', KEYS[1])
if faults >= tonumber(ARGV[4]) and faults > redis.call('ZCARD', KEYS[2]) then
  local pause = tonumber(ARGV[5])
  redis.call('HSET', KEYS[3], 'until', string.format('%.0f', now + pause),
             'pause', string.format('%.0f', pause))
  redis.call('DEL', KEYS[1], KEYS[2])
  return 'opened'
end
return ''
"""
)


def client_for(url: str) -> redis.Redis:
    """A Redis client for the breaker: short timeouts and no retries, so an unreachable
    Redis costs a call one short wait, once per :data:`REDIS_PAUSE_S`."""
    return redis_client.connect(
        url,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass(frozen=True)
class Ticket:
    """One attempt's pass through the breaker; ``probe`` when it is the half-open probe."""

    id: str
    probe: bool = False


@dataclass(frozen=True)
class Question:
    """The breaker's check for another script on its Redis to ask (:data:`CHECK_FN`'s
    ``outage_check``: KEYS ``keys``, ARGV ``ticket`` and ``lease_ms``); the reply goes back to
    :meth:`Breaker.answered`."""

    keys: tuple[str, str]
    ticket: str
    lease_ms: int


class Breaker(Protocol):
    """Asked before an attempt calls Zoom, told afterwards how Zoom answered."""

    def check(self) -> Ticket:
        """Return a ticket when the attempt may call Zoom; raise ZoomOutage while open."""
        ...

    def question(self, client: redis.Redis) -> Question | None:
        """:meth:`check` as a script on ``client`` can ask it, or None when it cannot (not
        the breaker's Redis, or nothing to ask): then :meth:`check` is the way."""
        ...

    def answered(self, question: Question, reply: Any) -> Ticket:
        """The ticket that ``reply`` (the script's answer to ``question``) gives, as
        :meth:`check` returns it; raises ZoomOutage as it does."""
        ...

    def report(self, ticket: Ticket, healthy: bool | None) -> None:
        """Zoom answered well (True), was unwell (False), or neither was learnt (None)."""
        ...

    def describe(self) -> str:
        """The breaker's state in one line, for ``zoom-worker token``."""
        ...


class Check:
    """One attempt's pass through the breaker, asked once, before its first call to Zoom:
    alone (:meth:`ask`) or inside the governor's permit script (:meth:`question`, then
    :meth:`answered`), so that the usual attempt spends no round trip on the breaker.

    ``ticket`` is what the attempt reports afterwards: empty until asked, and when held."""

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker
        self.ticket = Ticket("")
        self._asked = False

    def ask(self) -> None:
        """Ask the breaker in a round trip of its own, unless it was asked already."""
        if not self._asked:
            self._asked = True
            self.ticket = self._breaker.check()

    def question(self, client: redis.Redis) -> Question | None:
        """The breaker's question for a script on ``client``; None when it was asked already
        or cannot be asked there (the caller then calls :meth:`ask`)."""
        if self._asked:
            return None
        question = self._breaker.question(client)
        if question is not None:
            # Known before the answer, so an attempt whose permit then fails still hands a
            # probe lease it took back.
            self._asked, self.ticket = True, Ticket(question.ticket)
        return question

    def answered(self, question: Question, reply: Any) -> None:
        """Take the breaker's answer to :meth:`question`; raises ZoomOutage while it is open
        (a held attempt has no ticket: it has nothing to report)."""
        try:
            self.ticket = self._breaker.answered(question, reply)
        except errors.ZoomOutage:
            self.ticket = Ticket("")
            raise


class NoBreaker:
    """No breaker (``ZOOM_OUTAGE_THRESHOLD=0``): every attempt calls Zoom."""

    def check(self) -> Ticket:
        """Always let the attempt go."""
        return Ticket("")

    def question(self, client: redis.Redis) -> Question | None:
        """Nothing to ask."""
        return None

    def answered(self, question: Question, reply: Any) -> Ticket:
        """Never asked: let the attempt go."""
        return Ticket("")

    def report(self, ticket: Ticket, healthy: bool | None) -> None:
        """Nothing to count."""

    def describe(self) -> str:
        """Off."""
        return "off (ZOOM_OUTAGE_THRESHOLD=0)"


class OutageBreaker:
    """The fleet's outage breaker in Redis; see the module's protocol."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        threshold: int,
        window_s: float,
        pause_max_s: float,
        probe_lease_s: float,
        namespace: str = "zw:outage",
        batch: FleetCounters | None = None,
    ) -> None:
        self._client = client
        # Counters in the same Redis whose batch a closed breaker's good answers join.
        self._batch = batch
        self._keys = [f"{namespace}:{name}" for name in ("faults", "oks", "open", "probe")]
        self._threshold = threshold
        self._window_us = round(window_s * _US)
        self._pause_min_us = round(PAUSE_MIN_S * _US)
        self._pause_max_us = round(max(pause_max_s, PAUSE_MIN_S) * _US)
        self._probe_lease_ms = max(1, round(probe_lease_s * 1000))
        self._check: Script = client.register_script(_CHECK)
        self._report: Script = client.register_script(_REPORT)
        self._paused_until = 0.0
        # Whether a client reaches this breaker's Redis, by id (the client kept with its
        # answer so the id is not reused): asked at every attempt, the same answer each time.
        self._reaches: dict[int, tuple[redis.Redis, bool]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, batch: FleetCounters | None = None) -> Breaker:
        """The breaker in ``REDIS_URL`` for these settings, or a NoBreaker when it is off;
        ``batch``: the process's counters (in the same Redis), whose batches good answers'
        reports join."""
        if settings.ZOOM_OUTAGE_THRESHOLD == 0:
            return NoBreaker()
        return cls(
            client_for(settings.redis_url),
            threshold=settings.ZOOM_OUTAGE_THRESHOLD,
            window_s=settings.ZOOM_OUTAGE_WINDOW,
            pause_max_s=settings.RETRY_BACKOFF_MAX,
            # A probe whose process died frees the way once its attempt could have ended.
            probe_lease_s=settings.attempt_bound_s + 1,
            batch=batch,
        )

    def check(self) -> Ticket:
        """A ticket to call Zoom (``probe`` when this attempt is the half-open probe); raises
        ZoomOutage while the breaker is open or another attempt probes. Never fails because
        Redis does: then the ticket lets the attempt go."""
        ticket = uuid.uuid4().hex[:16]
        if time.monotonic() < self._paused_until:
            return Ticket(ticket)
        try:
            reply = self._check(keys=self._keys[2:], args=[ticket, self._probe_lease_ms])
        except redis.RedisError as exc:
            self._unreachable("check", exc)
            return Ticket(ticket)
        return self._ticket(ticket, reply)

    def question(self, client: redis.Redis) -> Question | None:
        """:meth:`check` for a script on ``client`` when it reaches this breaker's Redis (a
        Redis failure then fails that script, and the caller's own handling applies); None
        while the breaker does not ask Redis (:data:`REDIS_PAUSE_S`) or for another Redis."""
        if time.monotonic() < self._paused_until:
            return None
        if not self._reaches_this(client):
            return None
        keys = (self._keys[2], self._keys[3])
        return Question(keys, uuid.uuid4().hex[:16], self._probe_lease_ms)

    def _reaches_this(self, client: redis.Redis) -> bool:
        known = self._reaches.get(id(client))
        if known is None:
            same = redis_client.same_server(client, self._client)
            known = self._reaches[id(client)] = client, same
        return known[1]

    def answered(self, question: Question, reply: Any) -> Ticket:
        """The ticket :meth:`check` would have returned for the script's ``reply``."""
        return self._ticket(question.ticket, reply)

    def _ticket(self, ticket: str, reply: Any) -> Ticket:
        state = int(reply[0])
        if state == 0:
            return Ticket(ticket)
        if state == 2:
            log.warning("outage.probe ticket=%s calling Zoom to see if it is back", ticket)
            return Ticket(ticket, probe=True)
        until_us, pause_us = int(reply[1]), int(reply[2])
        raise errors.ZoomOutage(
            "Zoom is failing for the whole fleet; waiting for the breaker's probe",
            retry_at=datetime.fromtimestamp(until_us / _US, UTC),
            pause_s=pause_us / _US,
        )

    def report(self, ticket: Ticket, healthy: bool | None) -> None:
        """Count how Zoom answered this attempt; never raises."""
        if not ticket.id or time.monotonic() < self._paused_until:
            return
        flag = "" if healthy is None else "1" if healthy else "0"
        args: list[str | int] = [ticket.id, flag, self._window_us, self._threshold]
        args += [self._pause_min_us, self._pause_max_us]
        if healthy and not ticket.probe and self._batch is not None:

            def add(pipe: Any) -> None:
                pipe.evalsha(self._report.sha, len(self._keys), *self._keys, *args)

            def done(answer: Any) -> None:
                if isinstance(answer, redis.exceptions.NoScriptError):
                    self._report_now(ticket, args)  # this Redis lost its scripts: load it
                elif isinstance(answer, redis.RedisError):
                    self._unreachable("report", answer)
                else:
                    self._reported(ticket, answer)

            if self._batch.join_batch(add, done):
                return
        self._report_now(ticket, args)

    def _report_now(self, ticket: Ticket, args: list[str | int]) -> None:
        try:
            change = self._report(keys=self._keys, args=args)
        except redis.RedisError as exc:
            self._unreachable("report", exc)
            return
        self._reported(ticket, change)

    def _reported(self, ticket: Ticket, change: Any) -> None:
        if change:
            log.warning("outage.%s ticket=%s", change.decode(), ticket.id)

    def state(self) -> dict[str, float] | None:
        """The open breaker's ``until`` (epoch seconds) and ``pause_s``; None when closed."""
        found = self._client.hgetall(self._keys[2])
        if not found:
            return None
        return {"until": int(found[b"until"]) / _US, "pause_s": int(found[b"pause"]) / _US}

    def describe(self) -> str:
        """Closed, open with its pause and next probe, or unknown when Redis cannot be read."""
        try:
            state = self.state()
        except redis.RedisError:
            return "unknown: its Redis is unreachable (jobs call Zoom on their own)"
        if state is None:
            return "closed: Zoom answers"
        probe_at = datetime.fromtimestamp(state["until"], UTC)
        return (
            f"open: Zoom fails for the whole fleet; pause {state['pause_s']:g}s, "
            f"next probe from {probe_at:%H:%M:%S} UTC"
        )

    def _unreachable(self, what: str, exc: redis.RedisError) -> None:
        self._paused_until = time.monotonic() + REDIS_PAUSE_S
        log.warning(
            "outage.unreachable %s failed open, paused %.0fs: %s",
            what,
            REDIS_PAUSE_S,
            type(exc).__name__,
        )
