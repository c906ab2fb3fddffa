"""The outage breaker's good answers join the attempt's counters' round trip
(worker.outage with worker.fleet_counters), against a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from conftest import GOVERNOR_URL, flushed_redis
from redis_parts import CountingRedis

from worker import fleet_counters, outage

THRESHOLD = 5


@pytest.fixture
def client() -> Iterator[CountingRedis]:
    flushed_redis(GOVERNOR_URL).close()
    found = CountingRedis.from_url(GOVERNOR_URL)
    yield found
    found.close()


@pytest.fixture
def counters(client: CountingRedis) -> fleet_counters.FleetCounters:
    return fleet_counters.FleetCounters(client)


def _breaker(
    client: redis.Redis, counters: fleet_counters.FleetCounters | None
) -> outage.OutageBreaker:
    return outage.OutageBreaker(
        client,
        threshold=THRESHOLD,
        window_s=10.0,
        pause_max_s=300.0,
        probe_lease_s=5.0,
        batch=counters,
    )


def _attempt(
    breaker: outage.OutageBreaker, counters: fleet_counters.FleetCounters, healthy: bool
) -> None:
    """One job's attempt as worker.tasks runs it: checked, counted, reported, in a batch."""
    with counters.batched():
        ticket = breaker.check()
        counters.count(fleet_counters.CALLS)
        breaker.report(ticket, healthy=healthy)


def test_outage_batch__good_answer_while_closed__no_round_trip_of_its_own(
    client: CountingRedis, counters: fleet_counters.FleetCounters
) -> None:
    breaker = _breaker(client, counters)
    _attempt(breaker, counters, healthy=True)  # the scripts are loaded
    before = client.round_trips

    _attempt(breaker, counters, healthy=True)

    assert client.round_trips - before == 2, "the check, then the counters with the report"
    assert client.zcard("zw:outage:oks") == 2, "both good answers are in the window"
    assert counters.snapshot()[fleet_counters.CALLS] == 2


def test_outage_batch__scattered_faults_among_batched_good_answers__stays_closed(
    client: CountingRedis, counters: fleet_counters.FleetCounters
) -> None:
    breaker = _breaker(client, counters)

    for n in range(5 * THRESHOLD):
        _attempt(breaker, counters, healthy=n % 5 != 0)

    assert breaker.state() is None
    for n in range(THRESHOLD * 5):
        breaker.report(outage.Ticket(f"fault{n}"), healthy=False)
    assert breaker.state() is not None, "faults outnumbering the good answers still open it"


def test_outage_batch__good_answer_in_flight_while_open__closes_at_the_batch_end(
    client: CountingRedis, counters: fleet_counters.FleetCounters
) -> None:
    breaker = _breaker(client, counters)
    with counters.batched():
        ticket = breaker.check()
        for _ in range(THRESHOLD):
            breaker.report(breaker.check(), healthy=False)  # faults are reported at once
        assert breaker.state() is not None
        breaker.report(ticket, healthy=True)

    assert breaker.state() is None


def test_outage_batch__redis_lost_its_scripts__the_report_still_lands(
    client: CountingRedis, counters: fleet_counters.FleetCounters
) -> None:
    breaker = _breaker(client, counters)
    _attempt(breaker, counters, healthy=True)
    # As after a SCRIPT FLUSH or a Redis restart (without flushing other tests' scripts):
    # the script's hash is unknown to the server.
    breaker._report.sha = "0" * 40

    _attempt(breaker, counters, healthy=True)

    assert client.zcard("zw:outage:oks") == 2
