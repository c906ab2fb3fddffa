"""What one job costs Redis: round trips counted at the client, against a real Redis
(database 15 of this xdist worker, flushed per test)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import flushed_redis, redis_url
from redis_parts import CountingRedis

from worker import errors, fleet_counters, gate
from worker.config import Settings
from worker.ratelimit import RateGovernor

REDIS_URL = redis_url(15)
LIMITS = {"light": 1000, "medium": 1000, "heavy": 1000}
SETTINGS = Settings(ZOOM_DAILY_CREATE_LIMIT=2, ZOOM_RATE_LIMITS="light=1000,medium=1000,heavy=1000")
HOST = "host@example.com"


@pytest.fixture
def client() -> Iterator[CountingRedis]:
    flushed_redis(REDIS_URL).close()
    client = CountingRedis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def fleet_gate(client: CountingRedis) -> gate.FleetGate:
    return gate.FleetGate(RateGovernor(client, LIMITS), SETTINGS)


def _trips(client: CountingRedis, call: Any) -> int:
    before = client.round_trips
    call()
    return client.round_trips - before


def test_gate__create_permitted__one_round_trip_for_block_slot_and_daily_count(
    client: CountingRedis, fleet_gate: gate.FleetGate
) -> None:
    client.script_load("return 1")  # the scripts get loaded on their first use: warm them
    fleet_gate.before_call("create", "warm-up@example.com")

    assert _trips(client, lambda: fleet_gate.before_call("create", HOST)) == 1
    assert _trips(client, lambda: fleet_gate.admit("create")) == 1
    assert fleet_gate._governor.host_calls_today(HOST) == 1


def test_gate__daily_cap__counted_in_the_same_trip_then_blocked_without_a_slot(
    fleet_gate: gate.FleetGate,
) -> None:
    governor = fleet_gate._governor
    fleet_gate.before_call("create", HOST)
    fleet_gate.before_call("create", HOST)
    with pytest.raises(errors.DailyLimitReached) as over:
        fleet_gate.before_call("create", HOST)
    tat = governor.client.get("zw:rl:tat:medium")  # the schedule's next slot
    with pytest.raises(errors.DailyLimitReached) as blocked:
        fleet_gate.before_call("create", HOST)

    assert over.value.retry_at is not None and over.value.retry_at > datetime.now(UTC)
    assert blocked.value.retry_at == over.value.retry_at
    assert governor.client.get("zw:rl:tat:medium") == tat  # a blocked host reserves no slot
    assert governor.host_calls_today(HOST) == 3  # the refused third call, nothing after


def test_gate__slot_too_far__host_not_counted(client: CountingRedis) -> None:
    slow = RateGovernor(client, {"light": 1, "medium": 1, "heavy": 1})
    fleet_gate = gate.FleetGate(slow, SETTINGS)
    fleet_gate.before_call("create", HOST)
    with pytest.raises(errors.Deferred):
        fleet_gate.before_call("create", HOST)

    assert slow.host_calls_today(HOST) == 1


def test_governor_permit__blocked_host__says_until_when_reserves_nothing(
    client: CountingRedis,
) -> None:
    governor = RateGovernor(client, LIMITS)
    until = datetime.now(UTC) + timedelta(hours=1)
    governor.block_host(HOST, until)

    answer = governor.permit("medium", host=HOST, count_within_s=0.05)

    assert answer.blocked_until is not None
    assert abs((answer.blocked_until - until).total_seconds()) < 1e-3
    assert answer.host_calls is None and not answer.permit.granted
    assert governor.client.get("zw:rl:tat:medium") is None  # no slot was reserved


def test_fleet_counters__batched__the_call_and_the_job_duration_in_one_round_trip(
    client: CountingRedis,
) -> None:
    counters = fleet_counters.FleetCounters(client)
    request = httpx.Request("POST", "https://api.zoom.us/v2/users/me/meetings")
    answer = httpx.Response(201, request=request)

    def job() -> None:
        with counters.batched():
            counters.on_request(request)
            counters.on_response(answer)
            counters.observe(fleet_counters.JOB_DURATION, 0.2)

    trips = _trips(client, job)

    assert trips == 1
    assert counters.snapshot() == {"api_calls": 1, "401": 0, "429": 0, "429_daily": 0, "5xx": 0}
    histogram = counters.histogram(fleet_counters.JOB_DURATION)
    assert histogram is not None and histogram[0][-1] == ("+Inf", 1.0)
    # Buckets and sum only: the count is the +Inf bucket's cumulative total, never read apart.
    stored = client.hgetall(f"{counters.prefix}hist:{fleet_counters.JOB_DURATION}")
    assert set(stored) == {b"b2", b"sum"}  # 0.2 s: the bucket up to 0.25 s
    assert counters.answers()[("medium", "2xx")] == 1


def test_fleet_counters__batch_raises__what_was_counted_is_still_written(
    client: CountingRedis,
) -> None:
    counters = fleet_counters.FleetCounters(client)

    with pytest.raises(RuntimeError), counters.batched():
        counters.count(fleet_counters.CALLS)
        raise RuntimeError("the task retries")

    assert counters.snapshot()["api_calls"] == 1
