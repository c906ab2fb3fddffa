"""The fleet-wide rate governor, against a real Redis (database 14 of this xdist worker,
flushed per test)."""

from __future__ import annotations

import itertools
import math
import multiprocessing
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from conftest import flushed_redis, redis_url, wait_for

from worker import errors, gate, priorities
from worker.config import Settings
from worker.ratelimit import USE_WITHIN_S, Permit, RateGovernor

REDIS_URL = redis_url(14)
LIMITS = {"light": 10, "medium": 2, "heavy": 1}
EPSILON = 1e-6


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """Redis database 14, flushed for this test."""
    client = flushed_redis(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def governor(client: redis.Redis) -> RateGovernor:
    return RateGovernor(client, LIMITS)


def assert_spaced(slots: list[float], interval: float) -> None:
    ordered = sorted(slots)
    gaps = [later - earlier for earlier, later in itertools.pairwise(ordered)]
    assert min(gaps) >= interval - EPSILON, f"slots closer than {interval}s: {min(gaps)}"


def _reserve_in_process(url: str, count: int, barrier: Any, results: Any) -> None:
    # Runs in a spawned process: a fresh interpreter with its own connection, like a worker.
    governor = RateGovernor.from_url(url, LIMITS)
    barrier.wait(timeout=30)
    results.put([governor.reserve("light") for _ in range(count)])


def test_rate_governor__burst_of_reservations__slots_spaced_by_interval(
    governor: RateGovernor,
) -> None:
    before = governor.now()
    permits = [governor.reserve("light") for _ in range(50)]

    assert all(p.granted and p.category == "light" for p in permits)
    assert permits[0].delay_s == 0
    assert before <= permits[0].slot_at <= governor.now()
    assert len({p.slot_at for p in permits}) == 50
    assert_spaced([p.slot_at for p in permits], 0.1)
    # The last slot is 49 intervals after the first: packed, not spread out further (its
    # delay_s is that less the time the 50 round trips took, which a loaded host stretches).
    assert permits[-1].slot_at - permits[0].slot_at == pytest.approx(4.9, abs=1e-3)
    assert 0 < permits[-1].delay_s < 4.95


def test_rate_governor__burst_three__three_at_once_then_spaced(client: redis.Redis) -> None:
    governor = RateGovernor(client, LIMITS, burst=3)
    permits = [governor.reserve("light") for _ in range(5)]

    assert [p.delay_s == 0 for p in permits] == [True, True, True, False, False]
    # After the burst the rate holds from the first call: slots at first + T, first + 2T.
    assert permits[3].slot_at == pytest.approx(permits[0].slot_at + 0.1, abs=EPSILON)
    assert permits[4].slot_at == pytest.approx(permits[0].slot_at + 0.2, abs=EPSILON)


def test_rate_governor__concurrent_threads__slots_never_overlap(governor: RateGovernor) -> None:
    barrier = threading.Barrier(5)
    permits: list[Permit] = []
    lock = threading.Lock()

    def reserve_many() -> None:
        barrier.wait(timeout=30)
        mine = [governor.reserve("light") for _ in range(20)]
        with lock:
            permits.extend(mine)

    threads = [threading.Thread(target=reserve_many) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(permits) == 100
    assert all(p.granted for p in permits)
    assert_spaced([p.slot_at for p in permits], 0.1)


def test_rate_governor__concurrent_processes__slots_never_overlap(client: redis.Redis) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    results = context.Queue()
    processes = [
        context.Process(target=_reserve_in_process, args=(REDIS_URL, 20, barrier, results))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    try:
        permits = [permit for _ in processes for permit in results.get(timeout=60)]
    finally:
        for process in processes:
            process.join(timeout=30)

    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert len(permits) == 60
    assert all(p.granted for p in permits)
    assert_spaced([p.slot_at for p in permits], 0.1)


def test_rate_governor__beyond_max_ahead__not_granted_and_no_slot_taken(
    governor: RateGovernor,
) -> None:
    # medium is 2/s: slots 0, 0.5, 1.0 s from now.
    first = governor.reserve("medium", max_ahead_s=0.75)
    second = governor.reserve("medium", max_ahead_s=0.75)
    refused = governor.reserve("medium", max_ahead_s=0.75)
    again = governor.reserve("medium")

    assert first.granted and second.granted
    assert not refused.granted
    assert refused.delay_s > 0.75
    assert refused.slot_at == pytest.approx(second.slot_at + 0.5, abs=EPSILON)
    assert again.granted
    assert again.slot_at == refused.slot_at


def test_rate_governor__held_slot__honoured_until_stale(governor: RateGovernor) -> None:
    governor.reserve("heavy")
    later = governor.reserve("heavy")
    presented = governor.reserve("heavy", slot_at=later.slot_at)
    stale = governor.reserve("heavy", slot_at=governor.now() - USE_WITHIN_S - 0.1)

    assert later.delay_s > 0.9
    assert presented.granted and presented.slot_at == later.slot_at
    assert 0 < presented.delay_s <= later.delay_s
    # A stale slot is replaced by the next free one, after ``later``.
    assert stale.slot_at == pytest.approx(later.slot_at + 1, abs=EPSILON)
    assert Permit(True, 0, 100.0, "heavy").is_stale(100.0 + USE_WITHIN_S + 0.01)
    assert not Permit(True, 0, 100.0, "heavy").is_stale(100.0 + USE_WITHIN_S)


def test_rate_governor__penalize__pushes_category_not_others(governor: RateGovernor) -> None:
    held = governor.reserve("light")
    governor.penalize("light", 3)

    light = governor.reserve("light")
    presented = governor.reserve("light", slot_at=held.slot_at)
    medium = governor.reserve("medium")

    assert 2.9 < light.delay_s <= 3.0
    # A slot reserved before the 429 is not honoured: it waits with everyone else.
    assert presented.slot_at >= light.slot_at + 0.1 - EPSILON
    assert medium.granted and medium.delay_s == 0


def test_rate_governor__observe_lower_limit__lowers_effective_rate(
    governor: RateGovernor, client: redis.Redis
) -> None:
    governor.observe("light", limit=4, remaining=None)
    governor.observe("medium", limit=50, remaining=None)
    permits = [governor.reserve("light") for _ in range(3)]

    assert governor.effective_rate("light") == 4.0
    assert governor.effective_rate("medium") == 2.0
    assert_spaced([p.slot_at for p in permits], 0.25)
    assert 3590_000 < client.pttl("zw:rl:learned:light") <= 3600_000


def test_rate_governor__observe_remaining_zero__next_slot_at_next_second(
    governor: RateGovernor,
) -> None:
    before = governor.now()
    governor.observe("light", limit=None, remaining=0)
    permit = governor.reserve("light")

    # The next whole second after the observation, by Redis's clock.
    assert permit.slot_at == math.floor(permit.slot_at)
    assert math.floor(before) + 1 <= permit.slot_at <= math.floor(before) + 2
    assert permit.delay_s > 0
    assert governor.effective_rate("light") == 10.0


def test_rate_governor__block_host__until_given_time_for_that_host_only(
    governor: RateGovernor, client: redis.Redis
) -> None:
    until = datetime.fromtimestamp(governor.now(), UTC) + timedelta(seconds=2)
    governor.block_host("Host@Example.com", until)
    governor.block_host("host@example.com", until - timedelta(seconds=1))  # never shortens

    assert governor.host_blocked_until("host@example.com") == until
    assert governor.host_blocked_until("other@example.com") is None
    [key] = client.keys("zw:rl:host:block:*")
    assert b"example" not in key.lower()
    assert 1000 < client.pttl(key) <= 2001  # PEXPIREAT rounds to the millisecond


def test_rate_governor__block_host__lifts_at_until(governor: RateGovernor) -> None:
    until = datetime.fromtimestamp(governor.now(), UTC) + timedelta(seconds=0.3)
    governor.block_host("u1", until)
    governor.block_host("u2", until - timedelta(hours=1))  # already over: no block

    assert governor.host_blocked_until("u1") == until
    assert governor.host_blocked_until("u2") is None
    wait_for(lambda: governor.host_blocked_until("u1") is None, timeout=5, interval=0.02)
    assert governor.now() >= until.timestamp() - 0.001


def test_rate_governor__count_host_call__per_host_per_utc_day(
    governor: RateGovernor, client: redis.Redis
) -> None:
    counts = [governor.count_host_call("alice@example.com") for _ in range(3)]
    bob = governor.count_host_call("bob@example.com")

    assert counts == [1, 2, 3]
    assert bob == 1
    assert governor.host_calls_today("ALICE@example.com") == 3
    assert governor.host_calls_today("carol@example.com") == 0
    seconds_to_midnight = 86400 - governor.now() % 86400
    for key in client.keys("zw:rl:host:count:*"):
        assert seconds_to_midnight < client.ttl(key) <= seconds_to_midnight + 3601


def test_rate_governor__naive_datetime__refused(governor: RateGovernor) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        governor.block_host("u1", datetime(2030, 1, 1))


def test_rate_governor__unknown_category__value_error_names_it(governor: RateGovernor) -> None:
    for call in (
        lambda: governor.reserve("bogus"),
        lambda: governor.penalize("bogus", 1),
        lambda: governor.observe("bogus", limit=1, remaining=0),
        lambda: governor.effective_rate("bogus"),
    ):
        with pytest.raises(ValueError, match="bogus"):
            call()


def test_rate_governor__unreachable_redis__infrastructure_error() -> None:
    governor = RateGovernor.from_url("redis://127.0.0.1:1/0", LIMITS)

    with pytest.raises(errors.InfrastructureError, match="Redis") as caught:
        governor.reserve("light")

    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    governor.client.close()


def test_rate_governor__bulk_backlog__high_served_within_bulk_reach(
    governor: RateGovernor,
) -> None:
    # light is 10/s: bulk may hold at most 0.5 s of the schedule, whatever its backlog.
    bulk = [governor.reserve("light", priority="bulk") for _ in range(40)]
    high = [governor.reserve("light", priority="high") for _ in range(3)]

    held = [p for p in bulk if p.granted]
    refused = [p for p in bulk if not p.granted]
    assert len(held) >= 5 and len(refused) >= 20
    assert max(p.delay_s for p in held) <= 0.5
    assert all(p.granted for p in high)
    # The high slots follow the bulk half second, ahead of every refused bulk caller.
    assert_spaced([p.slot_at for p in held + high], 0.1)
    assert max(p.slot_at for p in high) <= max(p.slot_at for p in held) + 0.3 + EPSILON
    # Refused bulk callers come back one interval apart, from when the schedule has room.
    returns = [p.slot_at for p in refused]
    assert returns == sorted(returns)
    assert_spaced(returns, 0.1)
    assert max(returns) - min(returns) == pytest.approx(0.1 * (len(refused) - 1), abs=1e-3)


def test_rate_governor__normal_backlog__high_first_then_normal_before_bulk(
    governor: RateGovernor,
) -> None:
    normal = [governor.reserve("light", priority="normal") for _ in range(60)]
    high = governor.reserve("light", priority="high")
    bulk = governor.reserve("light", priority="bulk")
    normal_after = governor.reserve("light", priority="normal")

    granted = [p for p in normal if p.granted]
    assert len(granted) >= 20 and max(p.delay_s for p in granted) <= 2.0  # 2 s at 10/s
    assert high.granted and high.delay_s <= 2.1 + EPSILON
    assert not bulk.granted, "bulk may not reserve behind 2 s of normal work"
    assert not normal_after.granted
    assert normal_after.slot_at > max(p.slot_at for p in normal if not p.granted)


def test_rate_governor__unknown_priority__refused(governor: RateGovernor) -> None:
    with pytest.raises(ValueError, match="unknown priority 'urgent'"):
        governor.reserve("light", priority="urgent")


def test_rate_governor__late_callers_from_threads__never_above_cap_in_any_second(
    client: redis.Redis,
) -> None:
    # Four callers share light (10/s); a third of the slots are presented 0.3 s late, as a
    # busy worker would. admit() still lets no more than 10 calls through in any second.
    governor = RateGovernor(client, LIMITS, spread_s=0.02)
    admitted: list[float] = []
    lock = threading.Lock()

    def caller(seed: int) -> None:
        for n in range(12):
            permit = governor.reserve("light", priority="normal")
            if permit.granted:
                late = 0.3 if (n + seed) % 3 == 0 else 0.0
                time.sleep(max(permit.delay_s, 0) + late)
            while not (entry := governor.admit("light")).granted:
                time.sleep(entry.delay_s)
            with lock:
                admitted.append(entry.slot_at)

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(admitted) == 48
    ordered = sorted(admitted)
    busiest = max(sum(start <= t < start + 1.0 for t in ordered) for start in ordered)
    assert busiest <= 10, f"{busiest} calls admitted within one second"
    # Paced, not starved: 48 calls at 10 per 1.02 s take under 6 s.
    assert ordered[-1] - ordered[0] < 6.0


def test_rate_governor__per_second_429__widens_spread_for_a_while(
    governor: RateGovernor, client: redis.Redis
) -> None:
    governor.penalize("light", 0, widen=True)
    governor.penalize("light", 0, widen=True)
    governor.penalize("medium", 0)
    permits = [governor.reserve("light") for _ in range(3)]

    assert client.get("zw:rl:slack:light") == b"60000"
    assert client.get("zw:rl:slack:medium") is None
    assert_spaced([p.slot_at for p in permits], 0.1 * 1.06)
    assert 0 < client.pttl("zw:rl:slack:light") <= 120_000


def test_gate__admit_log_full__bulk_requeues_at_once_high_waits_for_the_opening(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Callers waiting at the sliding log race for each opening whatever their priority: a
    # bulk backlog bunched there took the openings high jobs waited for, until they lost
    # their slots too (bench priority: high p95 5.2 s behind 2,000 bulk jobs; now 0.7 s).
    fleet_gate = gate.FleetGate(RateGovernor(client, LIMITS), Settings(ZOOM_RATE_LIMITS="medium=2"))
    sent = "zw:rl:sent:medium"  # a create's category; 2 calls per window
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the window passes: the calls in it leave
        slept.append(seconds)
        client.delete(sent)

    def two_calls_half_a_second_ago() -> None:
        at = round((fleet_gate.governor.now() - 0.5) * 1_000_000)
        client.zadd(sent, {"earlier-1": at, "earlier-2": at})

    monkeypatch.setattr(gate.time, "sleep", sleep)
    two_calls_half_a_second_ago()
    with pytest.raises(errors.Deferred):
        fleet_gate.admit("create", priorities.BULK)
    assert slept == [], "a bulk caller re-queues at once"

    two_calls_half_a_second_ago()
    fleet_gate.admit("create", priorities.HIGH)
    assert len(slept) == 1 and 0.4 < slept[0] < 0.7, f"waited {slept} for the opening"
