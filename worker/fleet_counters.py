"""What the fleet counts in Redis as its calls happen, for :mod:`worker.metrics` to read.

Keys, under a prefix (default ``zw:stats:``)::

    {p}api_calls, {p}401, {p}429, {p}429_daily, {p}5xx   every answer, and those by kind
    {p}answers:{category}:{class}                         answers by Zoom rate category and
                                                          class (2xx, 401, 429, 5xx, other)
    {p}hist:{name}                                        a histogram: hash of bucket counts
                                                          ``b0``..``bN`` (``bN`` = +Inf),
                                                          and ``sum`` (the count is ``bN``'s
                                                          cumulative total)

Histograms are ``zoom_latency`` (request sent to Zoom's answer's headers, each call) and
``job_duration`` (one attempt of a job, claim to recorded outcome). Each observation adds
one to the bucket it falls in, so any process on any host adds to the same figures; the
reader makes the counts cumulative, as Prometheus has them.

A Redis failure is logged and the count is lost: counting never breaks a call. Within
:meth:`FleetCounters.batched` (a job's attempt, :mod:`worker.tasks`) the writes wait and go
in one round trip at its end: one per job, not one per answer and one per attempt. Another
writer to the same Redis can join that trip (:meth:`FleetCounters.join_batch`: the outage
breaker's report of a good answer, :mod:`worker.outage`).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import httpx
import redis

from worker import gate, redis_client, zoom

log = logging.getLogger(__name__)

CALLS = "api_calls"
RESPONSE_KINDS = ("401", "429", "429_daily", "5xx")
NAMES = (CALLS, *RESPONSE_KINDS)
ANSWER_CLASSES = ("2xx", "401", "429", "5xx", "other")
CATEGORIES = ("light", "medium", "heavy")
# After a Redis failure the counters stop trying for a while, so an outage costs API calls
# one connect timeout per pause, not one per call.
REDIS_PAUSE_S = 10.0

ZOOM_LATENCY = "zoom_latency"
JOB_DURATION = "job_duration"
# Upper bounds in seconds: Zoom answers in tens to hundreds of ms; an attempt adds the token,
# the governor and the ledger, or waits out a permit inside it (up to a second).
BUCKETS: dict[str, tuple[float, ...]] = {
    ZOOM_LATENCY: (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    JOB_DURATION: (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
}
Joined = tuple[Callable[[Any], None], Callable[[Any], None]]
"""A command that joins a batch's round trip: how to queue it, and what gets its answer."""
_STARTED = "zoom_worker.started"  # the request's extension holding when it was sent

# The Meetings API paths the worker calls, and their operation (worker.gate's names).
_OPERATIONS = (
    ("POST", re.compile(r"/users/[^/]+/meetings$"), "create"),
    ("GET", re.compile(r"/users/[^/]+/meetings$"), "list"),
    ("PATCH", re.compile(r"/meetings/[^/]+$"), "update"),
    ("DELETE", re.compile(r"/meetings/[^/]+$"), "delete"),
    ("GET", re.compile(r"/meetings/[^/]+$"), "get"),
)


class FleetCounters:
    """Fleet-wide counters and histograms of Zoom's answers and of job attempts, in Redis.

    ``create_category`` is the rate category creates are counted in (``ZOOM_CREATE_CATEGORY``).
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "zw:stats:", create_category: str = "medium"
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._categories = {**gate.OPERATION_CATEGORIES, "create": create_category}
        self._paused_until = 0.0
        self._held = threading.local()  # a batch's writes and joiners, per thread (batched)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "zw:stats:", create_category: str = "medium"
    ) -> FleetCounters:
        """Counters on a new client for ``url``, with short timeouts: they run inside calls."""
        client = redis_client.connect(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        return cls(client, prefix=prefix, create_category=create_category)

    def on_request(self, request: httpx.Request) -> None:
        """An httpx ``request`` event hook: note when the request leaves."""
        request.extensions[_STARTED] = time.monotonic()

    def on_response(self, response: httpx.Response) -> None:
        """An httpx ``response`` event hook: count the call, a 401, 429 or 5xx answer, the
        answer by category and class, and its latency (when ``on_request`` saw it leave)."""
        names = [CALLS]
        status = response.status_code
        if status == httpx.codes.UNAUTHORIZED:
            names.append("401")
        elif status == httpx.codes.TOO_MANY_REQUESTS:
            names.append("429")
            if _is_daily_limit(response):
                names.append("429_daily")
        elif status >= httpx.codes.INTERNAL_SERVER_ERROR:
            names.append("5xx")
        request = response.request
        names.append(f"answers:{self.category_of(request)}:{answer_class(status)}")
        started = request.extensions.get(_STARTED)
        latency = {ZOOM_LATENCY: time.monotonic() - started} if started is not None else {}
        self._write(names, latency)

    def category_of(self, request: httpx.Request) -> str:
        """Zoom's rate category of a Meetings API request, ``other`` for any other path."""
        for method, pattern, operation in _OPERATIONS:
            if request.method == method and pattern.search(request.url.path):
                return self._categories[operation]
        return "other"

    def observe(self, name: str, seconds: float) -> None:
        """Add one observation to the histogram ``name``; never raises."""
        self._write([], {name: seconds})

    def count(self, *names: str) -> None:
        """Add one to each named counter, in one round trip; never raises."""
        self._write(names, {})

    def snapshot(self, names: Iterable[str] = NAMES) -> dict[str, int]:
        """The named counters (0 when never counted), or ``{}`` when Redis cannot be read."""
        keys = list(names)
        try:
            values = self.client.mget([self.prefix + k for k in keys])
        except redis.RedisError as exc:
            log.warning("metrics.snapshot_failed %s", type(exc).__name__)
            return {}
        return {key: int(value or 0) for key, value in zip(keys, values, strict=True)}

    def answers(self) -> dict[tuple[str, str], int]:
        """Answers by (category, class), every pair present; ``{}`` when Redis cannot be read."""
        pairs = [(c, k) for c in (*CATEGORIES, "other") for k in ANSWER_CLASSES]
        found = self.snapshot(f"answers:{c}:{k}" for c, k in pairs)
        return {pair: found[f"answers:{pair[0]}:{pair[1]}"] for pair in pairs} if found else {}

    def histogram(self, name: str) -> tuple[list[tuple[str, float]], float] | None:
        """The histogram ``name`` as Prometheus wants it: cumulative ``(le, count)`` buckets
        ending with ``+Inf``, and the sum; None when Redis cannot be read."""
        try:
            stored: dict[Any, Any] = self.client.hgetall(f"{self.prefix}hist:{name}")
        except redis.RedisError as exc:
            log.warning("metrics.snapshot_failed %s", type(exc).__name__)
            return None
        bounds = BUCKETS[name]
        running, buckets = 0.0, []
        for index, bound in enumerate((*bounds, float("inf"))):
            running += float(stored.get(f"b{index}".encode(), 0))
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
        return buckets, float(stored.get(b"sum", 0))

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Hold this thread's writes meanwhile and send them in one round trip at the end,
        also when the block raises (a task's retry); nested batches join the outer one."""
        if getattr(self._held, "writes", None) is not None:
            yield
            return
        writes: list[tuple[Sequence[str], dict[str, float]]] = []
        joined: list[Joined] = []
        self._held.writes, self._held.joined = writes, joined
        try:
            yield
        finally:
            self._held.writes = self._held.joined = None
            if writes or joined:
                self._send(writes, joined)

    def join_batch(self, add: Callable[[Any], None], done: Callable[[Any], None]) -> bool:
        """Within this thread's batch: ``add(pipeline)`` queues one command on the batch's
        round trip, and ``done`` gets its answer (an exception when it failed or Redis could
        not be reached). False outside a batch, or while Redis is paused: the caller sends
        its command itself."""
        joined: list[Joined] | None = getattr(self._held, "joined", None)
        if joined is None or time.monotonic() < self._paused_until:
            return False
        joined.append((add, done))
        return True

    def _write(self, names: Sequence[str], observations: dict[str, float]) -> None:
        held: list[tuple[Sequence[str], dict[str, float]]] | None = getattr(
            self._held, "writes", None
        )
        if held is not None:
            held.append((names, observations))
            return
        self._send([(names, observations)])

    def _send(
        self,
        writes: Sequence[tuple[Sequence[str], dict[str, float]]],
        joined: Sequence[Joined] = (),
    ) -> None:
        if time.monotonic() < self._paused_until and not joined:
            return
        counted = 0
        try:
            with self.client.pipeline(transaction=False) as pipe:
                if time.monotonic() >= self._paused_until:
                    for names, observations in writes:
                        for name in names:
                            pipe.incr(self.prefix + name)
                        for name, seconds in observations.items():
                            key = f"{self.prefix}hist:{name}"
                            bucket = f"b{bisect.bisect_left(BUCKETS[name], seconds)}"
                            pipe.hincrby(key, bucket, 1)
                            pipe.hincrbyfloat(key, "sum", seconds)
                    counted = len(pipe)
                for add, _ in joined:
                    add(pipe)
                answers = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            for _, done in joined:
                done(exc)
            self._failed(exc)
            return
        for (_, done), answer in zip(joined, answers[counted:], strict=True):
            done(answer)
        failed = next((a for a in answers[:counted] if isinstance(a, Exception)), None)
        if isinstance(failed, redis.RedisError):
            self._failed(failed)

    def _failed(self, exc: redis.RedisError) -> None:
        self._paused_until = time.monotonic() + REDIS_PAUSE_S
        log.warning("metrics.count_failed paused %.0fs: %s", REDIS_PAUSE_S, type(exc).__name__)


def answer_class(status: int) -> str:
    """The class an answer is counted in: ``2xx``, ``401``, ``429``, ``5xx`` or ``other``."""
    if httpx.codes.is_success(status):
        return "2xx"
    if status in (httpx.codes.UNAUTHORIZED, httpx.codes.TOO_MANY_REQUESTS):
        return str(status)
    return "5xx" if status >= httpx.codes.INTERNAL_SERVER_ERROR else "other"


def _is_daily_limit(response: httpx.Response) -> bool:
    # Zoom marks the per-host daily cap in X-RateLimit-Type ("Daily-limit") and its message.
    if (response.headers.get("X-RateLimit-Type") or "").lower().startswith("daily"):
        return True
    try:
        response.read()  # a hook sees the response before its body is read; 429s are small
        body: Any = response.json()
    except (httpx.HTTPError, ValueError):
        return False
    message = body.get("message") if isinstance(body, dict) else None
    return isinstance(message, str) and bool(zoom.DAILY_LIMIT_PATTERN.search(message))
