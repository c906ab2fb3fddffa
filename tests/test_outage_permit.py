"""The outage breaker's check rides on the governor's permit (worker.outage.Check with
worker.gate and worker.ratelimit): one round trip answers both, and a held attempt spends
no permit. Against a real Redis, round trips counted at the clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import GOVERNOR_URL, flushed_redis, redis_url
from redis_parts import CountingRedis

from worker import errors, fleet_counters, gate, jobs, ledger, meetings, outage, zoom
from worker.config import Settings, get_settings
from worker.ratelimit import RateGovernor

THRESHOLD = 3
LIMITS = {"light": 1000, "medium": 1000, "heavy": 1000}
SETTINGS = Settings(ZOOM_RATE_LIMITS="light=1000,medium=1000,heavy=1000")
HOST = "host@example.com"
BODY = {"topic": "Standup", "type": 2, "start_time": "2026-12-01T10:00:00Z", "duration": 30}


@pytest.fixture
def clients() -> Iterator[tuple[CountingRedis, CountingRedis]]:
    """Two clients of one Redis database, as a worker has them: the governor's and the
    breaker's (short timeouts)."""
    flushed_redis(GOVERNOR_URL).close()
    governor = CountingRedis.from_url(GOVERNOR_URL)
    breaker = CountingRedis.from_url(GOVERNOR_URL, socket_timeout=0.5)
    yield governor, breaker
    governor.close()
    breaker.close()


def _breaker(client: redis.Redis, batch: Any = None) -> outage.OutageBreaker:
    return outage.OutageBreaker(
        client, threshold=THRESHOLD, window_s=10.0, pause_max_s=300.0, probe_lease_s=5.0,
        batch=batch,
    )  # fmt: skip


def _open(breaker: outage.OutageBreaker) -> None:
    for _ in range(THRESHOLD):
        breaker.report(breaker.check(), healthy=False)
    assert breaker.state() is not None


def _opened(
    clients: tuple[CountingRedis, CountingRedis], limits: dict[str, int] = LIMITS
) -> tuple[gate.FleetGate, outage.OutageBreaker]:
    """A fleet gate on the first client and a breaker on the second, opened by faults."""
    governor_client, breaker_client = clients
    breaker = _breaker(breaker_client)
    _open(breaker)
    return gate.FleetGate(RateGovernor(governor_client, limits), SETTINGS), breaker


def _trips(*clients: CountingRedis) -> int:
    return sum(client.round_trips for client in clients)


def test_outage_permit__closed__check_and_permit_in_one_round_trip(
    clients: tuple[CountingRedis, CountingRedis],
) -> None:
    governor_client, breaker_client = clients
    fleet_gate = gate.FleetGate(RateGovernor(governor_client, LIMITS), SETTINGS)
    breaker = _breaker(breaker_client)
    fleet_gate.checked_call(outage.Check(breaker), "create", "warm-up@example.com")
    before = _trips(governor_client, breaker_client)

    check = outage.Check(breaker)
    fleet_gate.checked_call(check, "create", HOST)
    fleet_gate.checked_call(check, "create", HOST)  # asked once per attempt

    assert _trips(governor_client, breaker_client) - before == 2, "one round trip per permit"
    assert breaker_client.round_trips == 0, "the breaker asked nothing on its own"
    assert check.ticket.id and not check.ticket.probe
    assert fleet_gate.governor.host_calls_today(HOST) == 2


def test_outage_permit__open__held_no_slot_no_daily_count(
    clients: tuple[CountingRedis, CountingRedis],
) -> None:
    fleet_gate, breaker = _opened(clients)
    check = outage.Check(breaker)

    with pytest.raises(errors.ZoomOutage) as held:
        fleet_gate.checked_call(check, "create", HOST)

    assert held.value.pause_s == outage.PAUSE_MIN_S
    assert clients[0].get("zw:rl:tat:medium") is None, "no slot was reserved"
    assert fleet_gate.governor.host_calls_today(HOST) == 0, "nothing counted for the host"
    assert check.ticket == outage.Ticket(""), "a held attempt has nothing to report"


def test_outage_permit__pause_over__one_probe_through_the_permit_others_held(
    clients: tuple[CountingRedis, CountingRedis],
) -> None:
    fleet_gate, breaker = _opened(clients)
    clients[1].hset("zw:outage:open", "until", 0)  # the pause is over
    probe, other = outage.Check(breaker), outage.Check(breaker)

    fleet_gate.checked_call(probe, "create", HOST)
    with pytest.raises(errors.ZoomOutage):
        fleet_gate.checked_call(other, "create", HOST)
    breaker.report(probe.ticket, healthy=True)

    assert probe.ticket.probe
    assert fleet_gate.governor.host_calls_today(HOST) == 1, "only the probe's call counted"
    assert breaker.state() is None, "the probe's good answer closed the breaker"


def test_outage_permit__probe_deferred__lease_given_back_by_its_report(
    clients: tuple[CountingRedis, CountingRedis],
) -> None:
    slow, breaker = _opened(clients, {"medium": 1, "light": 1})
    clients[1].hset("zw:outage:open", "until", 0)  # the pause is over
    slow.before_call("create", "first@example.com")  # the next slot is a second away
    probe = outage.Check(breaker)

    with pytest.raises(errors.Deferred):
        slow.checked_call(probe, "create", HOST)
    breaker.report(probe.ticket, healthy=None)  # the attempt learnt nothing of Zoom

    assert probe.ticket.probe, "it had taken the lease before its permit was deferred"
    assert breaker.check().probe, "the next attempt probes"


def test_outage_permit__breaker_in_another_redis__asked_in_its_own_round_trip(
    clients: tuple[CountingRedis, CountingRedis],
) -> None:
    governor_client, _ = clients
    elsewhere_url = redis_url(14)
    flushed_redis(elsewhere_url).close()
    elsewhere = CountingRedis.from_url(elsewhere_url)
    fleet_gate = gate.FleetGate(RateGovernor(governor_client, LIMITS), SETTINGS)
    breaker = _breaker(elsewhere)
    _open(breaker)
    before = elsewhere.round_trips

    with pytest.raises(errors.ZoomOutage):
        fleet_gate.checked_call(outage.Check(breaker), "create", HOST)

    assert elsewhere.round_trips - before == 1
    assert fleet_gate.governor.host_calls_today(HOST) == 0
    elsewhere.close()


class _Zoom:
    """Stands in for ZoomClient: every create makes a meeting."""

    def create_meeting(self, user_id: str, body: dict[str, Any]) -> zoom.Meeting:
        return zoom.Meeting.from_zoom({"id": 42, "join_url": "https://zoom.example/j/42"})


class _Store:
    def get(self) -> object:
        return object()


@pytest.mark.usefixtures("env")
def test_outage_permit__one_create__three_redis_round_trips(
    clients: tuple[CountingRedis, CountingRedis],
) -> None:
    # A create's Redis round trips, as a pool process makes them: the permit (the breaker's
    # check inside), the pacing's admit, and the counters' batch (the good answer's report
    # inside). A fourth one here means a round trip came back.
    governor_client, breaker_client = clients
    settings = get_settings()
    counters_client = CountingRedis.from_url(GOVERNOR_URL)
    counters = fleet_counters.FleetCounters(counters_client)
    runtime = meetings.Runtime(
        settings=settings,
        client=_Zoom(),  # type: ignore[arg-type]
        gate=gate.FleetGate(RateGovernor(governor_client, LIMITS), settings),
        store=_Store(),  # type: ignore[arg-type]
        ledger=ledger.Ledger.from_settings(settings, lambda name, kwargs: None),
        outage=_breaker(breaker_client, batch=counters),
        counters=counters,
    )
    counting = (governor_client, breaker_client, counters_client)

    def create() -> None:
        claim = runtime.ledger.claim(jobs.create_meeting(HOST, BODY))
        assert claim is not None
        with counters.batched():
            meetings.run(claim, runtime)
            counters.observe(fleet_counters.JOB_DURATION, 0.01)

    create()  # the scripts are loaded
    before = _trips(*counting)
    create()

    assert _trips(*counting) - before == 3
    counters_client.close()
    assert breaker_client.round_trips == 0
    assert governor_client.zcard("zw:outage:oks") == 2, "both good answers were counted"
