"""The outage breaker (worker.outage) against a real Redis: it opens when Zoom fails for
the fleet, lets one probe through when its pause ends, closes on a good answer, doubles
its pause on a failed probe, and fails open when its Redis is unreachable."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from conftest import GOVERNOR_URL, flushed_redis, wait_for

from worker import errors, meetings, outage
from worker.cli import cli
from worker.config import Settings, get_settings

THRESHOLD = 5


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    found = flushed_redis(GOVERNOR_URL)
    yield found
    found.close()


def _breaker(client: redis.Redis, **given: Any) -> outage.OutageBreaker:
    options: dict[str, Any] = {
        "threshold": THRESHOLD,
        "window_s": 10.0,
        "pause_max_s": 300.0,
        "probe_lease_s": 5.0,
        **given,
    }
    return outage.OutageBreaker(client, **options)


def _fail(breaker: outage.OutageBreaker, times: int) -> None:
    for _ in range(times):
        breaker.report(breaker.check(), healthy=False)


def _end_pause(client: redis.Redis) -> None:
    """The pause is over (as if its time had passed): ``until`` moved to the epoch."""
    client.hset("zw:outage:open", "until", "0")


def _held(breaker: outage.OutageBreaker) -> errors.ZoomOutage:
    with pytest.raises(errors.ZoomOutage) as caught:
        breaker.check()
    return caught.value


def test_outage__faults_below_threshold__stays_closed(client: redis.Redis) -> None:
    breaker = _breaker(client)
    _fail(breaker, THRESHOLD - 1)
    assert breaker.state() is None
    assert breaker.check().probe is False


def test_outage__threshold_of_faults__opens_and_holds_for_a_second(client: redis.Redis) -> None:
    breaker = _breaker(client)
    _fail(breaker, THRESHOLD)

    held = _held(breaker)

    assert breaker.state() is not None
    assert held.pause_s == outage.PAUSE_MIN_S
    assert held.retry_at - datetime.now(UTC) <= timedelta(seconds=outage.PAUSE_MIN_S)
    assert held.retry_at > datetime.now(UTC) - timedelta(seconds=1)


def test_outage__scattered_faults_among_good_answers__stays_closed(client: redis.Redis) -> None:
    breaker = _breaker(client)
    for n in range(60):  # one fault in five, as a busy fleet sees with a flaky Zoom
        breaker.report(breaker.check(), healthy=n % 5 != 0)
    assert breaker.state() is None


def test_outage__faults_older_than_the_window__forgotten(client: redis.Redis) -> None:
    breaker = _breaker(client, window_s=0.2)
    _fail(breaker, THRESHOLD - 1)
    time.sleep(0.3)  # the window is the thing under test: it must pass
    _fail(breaker, 1)
    assert breaker.state() is None


def test_outage__pause_over__one_probe_others_held(client: redis.Redis) -> None:
    breaker = _breaker(client)
    _fail(breaker, THRESHOLD)
    _end_pause(client)

    probe = breaker.check()
    others = [_held(breaker) for _ in range(3)]

    assert probe.probe is True
    assert all(o.retry_at > datetime.now(UTC) for o in others)


def test_outage__probe_answered_well__closes(client: redis.Redis) -> None:
    breaker = _breaker(client)
    _fail(breaker, THRESHOLD)
    _end_pause(client)
    probe = breaker.check()

    breaker.report(probe, healthy=True)

    assert breaker.state() is None
    assert breaker.check().probe is False


def test_outage__probe_failed__pause_doubles(client: redis.Redis) -> None:
    breaker = _breaker(client)
    _fail(breaker, THRESHOLD)
    for expected_s in (2.0, 4.0, 8.0):
        _end_pause(client)
        breaker.report(breaker.check(), healthy=False)
        state = breaker.state()
        assert state is not None and state["pause_s"] == expected_s
        assert _held(breaker).pause_s == expected_s


def test_outage__pause__capped_at_the_maximum(client: redis.Redis) -> None:
    breaker = _breaker(client, pause_max_s=3.0)
    _fail(breaker, THRESHOLD)
    for _ in range(4):
        _end_pause(client)
        breaker.report(breaker.check(), healthy=False)
    state = breaker.state()
    assert state is not None and state["pause_s"] == 3.0


def test_outage__fault_of_a_call_in_flight_while_open__ignored(client: redis.Redis) -> None:
    breaker = _breaker(client)
    in_flight = breaker.check()
    _fail(breaker, THRESHOLD)

    breaker.report(in_flight, healthy=False)

    state = breaker.state()
    assert state is not None and state["pause_s"] == outage.PAUSE_MIN_S


def test_outage__probe_learns_nothing__lease_given_back(client: redis.Redis) -> None:
    breaker = _breaker(client)
    _fail(breaker, THRESHOLD)
    _end_pause(client)
    first = breaker.check()

    breaker.report(first, healthy=None)  # e.g. a 4xx, or a wait for a rate permit

    assert breaker.check().probe is True
    state = breaker.state()
    assert state is not None and state["pause_s"] == outage.PAUSE_MIN_S


def test_outage__probe_died__another_probes_after_its_lease(client: redis.Redis) -> None:
    breaker = _breaker(client, probe_lease_s=0.2)
    _fail(breaker, THRESHOLD)
    _end_pause(client)
    assert breaker.check().probe is True  # and never reports

    _held(breaker)

    def probes() -> bool:
        try:
            return breaker.check().probe
        except errors.ZoomOutage:
            return False

    assert wait_for(probes, timeout=5, interval=0.05, what="a second probe")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_outage__redis_unreachable__fails_open_quickly() -> None:
    down = outage.client_for(f"redis://127.0.0.1:{_closed_port()}/0")
    breaker = _breaker(down)
    started = time.monotonic()

    tickets = [breaker.check() for _ in range(20)]
    for ticket in tickets:
        breaker.report(ticket, healthy=False)

    assert all(not t.probe for t in tickets)
    assert time.monotonic() - started < 1, "after one failure the breaker stops asking Redis"


def test_outage__threshold_zero__no_breaker() -> None:
    settings = Settings(ZOOM_OUTAGE_THRESHOLD=0)
    assert isinstance(outage.OutageBreaker.from_settings(settings), outage.NoBreaker)


@pytest.mark.parametrize(
    ("exc", "counted"),
    [
        (errors.ZoomServerError("Zoom failed", status=503), True),
        (errors.ZoomUnreachable("no answer", maybe_sent=False), True),
        (errors.ZoomClientError("bad body", status=400, code=300), False),
        (errors.MeetingNotFound("gone", status=404, code=3001), False),
        (errors.RateLimited("429", retry_at=None), False),
        (errors.TokenRequestFailed("token endpoint 503", status=503), False),
        (errors.InfrastructureError("Redis down"), False),
    ],
    ids=["5xx", "no answer", "4xx", "404", "429", "token endpoint", "our infrastructure"],
)
def test_outage__which_failures__count_as_zoom_unwell(exc: Exception, counted: bool) -> None:
    assert meetings.zoom_unwell(exc) is counted


def test_outage__describe__closed_open_and_unreachable(client: redis.Redis) -> None:
    breaker = _breaker(client)
    closed = breaker.describe()
    _fail(breaker, THRESHOLD)
    opened = breaker.describe()
    down = _breaker(outage.client_for(f"redis://127.0.0.1:{_closed_port()}/0")).describe()

    assert closed.startswith("closed")
    assert opened.startswith("open") and "pause 1s" in opened
    assert down.startswith("unknown")


@pytest.mark.usefixtures("env")
def test_outage__zoom_worker_token__shows_the_open_breaker() -> None:
    breaker = outage.OutageBreaker.from_settings(get_settings())
    for _ in range(get_settings().ZOOM_OUTAGE_THRESHOLD):
        breaker.report(breaker.check(), healthy=False)

    result = CliRunner().invoke(cli, ["token"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert "zoom outage" in result.output and "open: Zoom fails" in result.output
