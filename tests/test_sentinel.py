"""Redis behind Sentinel: the settings that name it, `doctor`, the governor through a failover,
and a failover mid-run with jobs flowing through real worker processes (issue 16).

The servers (a master, its replica, two Sentinels) are the module's own, on free ports
(tests/sentinel_parts.py); a failover swaps master and replica, so each test takes whichever
is master when it starts.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import WorkerProcess, wait_for
from sentinel_parts import MASTER_NAME, SentinelSet, sentinel_set
from test_durability import (  # noqa: F401 - short_leases: a fixture
    _assert_exactly_once,
    _create,
    _drain,
    _outcome,
    _succeeded_at_least,
    short_leases,
)
from test_rabbitmq import _doctor

from worker import errors, ratelimit, redis_client
from worker.celery_app import transport_options
from worker.config import get_settings, load_settings
from worker.simulator import SimulatorClient

SENTINELS = "sentinel://127.0.0.1:26385/11;sentinel://127.0.0.1:26386/11"


# -- settings (no server needed) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "named"),
    [("CELERY_BROKER_URL", "REDIS_SENTINEL_MASTER"), ("REDIS_URL", "REDIS_URL")],
)
def test_settings__sentinel_list_without_master__refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, named: str
) -> None:
    monkeypatch.setenv(variable, SENTINELS)
    monkeypatch.delenv("REDIS_SENTINEL_MASTER", raising=False)

    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()

    assert caught.value.setting == named
    assert "REDIS_SENTINEL_MASTER" in str(caught.value) or named == "REDIS_SENTINEL_MASTER"


def test_settings__sentinel_broker__celery_gets_the_master_and_the_governor_follows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", SENTINELS.replace("//", "//:s3cret@", 1))
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    monkeypatch.delenv("REDIS_URL", raising=False)

    settings = load_settings()

    assert settings.broker_kind == "redis"
    assert transport_options(settings)["master_name"] == "mymaster"
    assert settings.redis_url == (
        "redis+sentinel://:s3cret@127.0.0.1:26385,127.0.0.1:26386/mymaster/11"
    )
    address = redis_client.parse_sentinel(settings.redis_url)
    assert address.sentinels == (("127.0.0.1", 26385), ("127.0.0.1", 26386))
    assert (address.service, address.db, address.password) == ("mymaster", 11, "s3cret")
    assert "s3cret" not in repr(address)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel:///mymaster/12",  # no Sentinel
        "redis+sentinel://127.0.0.1:26385",  # no master name
        "redis+sentinel://127.0.0.1:26385/mymaster/twelve",
        "redis+sentinel://127.0.0.1:port/mymaster",
        "amqp://guest:s3cret@127.0.0.1:5672/zw",
    ],
)
def test_settings__unusable_governor_url__refused_naming_redis_url(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)

    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()

    assert caught.value.setting == "REDIS_URL"
    assert "s3cret" not in str(caught.value)


# -- against real Sentinels -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    with sentinel_set(tmp_path_factory.mktemp("sentinel")) as found:
        yield found


@pytest.fixture
def broker_url(sentinels: SentinelSet, monkeypatch: pytest.MonkeyPatch) -> str:
    """Over conftest's: the broker is Celery's sentinel:// list, its databases emptied."""
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", MASTER_NAME)
    with redis.Redis(port=sentinels.current_master_port()) as master:
        master.flushall()
    return sentinels.broker_url(11)


@pytest.fixture
def sentinel_env(
    env: dict[str, str], sentinels: SentinelSet, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The test's settings with the broker and the governor both behind the Sentinels."""
    values = {"REDIS_SENTINEL_MASTER": MASTER_NAME, "REDIS_URL": sentinels.governor_url(12)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    env.update(values)
    get_settings.cache_clear()
    return env


def test_doctor__behind_sentinel__every_check_passes_naming_the_sentinels(
    sentinel_env: dict[str, str], sentinels: SentinelSet
) -> None:
    result = _doctor()

    assert result.exit_code == 0, result.output
    where = ",".join(f"127.0.0.1:{port}" for port in sentinels.sentinel_ports)
    named = f"Sentinel {where} (master {MASTER_NAME})"
    assert f"Redis at {named} (broker), Redis at {named} (rate governor)" in result.output


def _no_such_master(sentinels: SentinelSet) -> str:
    url = sentinels.governor_url(12).replace(MASTER_NAME, "nosuchmaster")
    return url.replace("//", "//:hunter2@", 1)


@pytest.mark.parametrize(
    ("variable", "value", "failure"),
    [
        (
            "REDIS_URL",
            _no_such_master,
            r"the rate governor's Redis at Sentinel \S+ \(master nosuchmaster\) \(REDIS_URL\) "
            r"is not reachable: No master found",
        ),
        (
            "REDIS_SENTINEL_MASTER",
            lambda _: "nosuchmaster",
            r"the broker \(Redis at Sentinel \S+ \(master nosuchmaster\), CELERY_BROKER_URL\) "
            r"is not reachable",
        ),
    ],
    ids=["governor", "broker"],
)
def test_doctor__sentinels_know_no_such_master__fails_naming_the_part(
    sentinel_env: dict[str, str],
    sentinels: SentinelSet,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: Callable[[SentinelSet], str],
    failure: str,
) -> None:
    monkeypatch.setenv(variable, value(sentinels))

    result = _doctor()

    assert result.exit_code == 1
    assert re.search(f"FAIL broker reachable: {failure}", result.output), result.output
    assert "hunter2" not in result.output


def _reserves_on(governor: ratelimit.RateGovernor, port: int) -> bool:
    """The governor took a permit, on the master at ``port`` (a former master may still
    accept writes for a moment during a failover: they are lost with it)."""
    try:
        granted = governor.reserve("medium").granted
    except errors.GovernorUnavailable:
        return False
    pool = governor.client.connection_pool
    return granted and pool.get_master_address()[1] == port  # type: ignore[attr-defined]


def test_governor__behind_sentinel__writes_reach_the_new_master_within_10s_of_a_failover(
    sentinels: SentinelSet,
) -> None:
    governor = ratelimit.RateGovernor.from_url(
        sentinels.governor_url(13), {"medium": 1000}, namespace=f"zw:test:{secrets.token_hex(4)}"
    )
    assert governor.reserve("medium").granted
    before = sentinels.current_master_port()

    started = time.monotonic()
    after = sentinels.failover()
    wait_for(lambda: _reserves_on(governor, after), timeout=10, what="a permit, new master")

    assert after != before
    assert time.monotonic() - started < 10


# -- a failover mid-run with real workers -----------------------------------------------------

# The simulator answers 429 above RATE creates a second; the governor plans for 90 % of it.
RATE = 5
# 20 s of calls at RATE: 15 (or a few more, seen late by a poll) before the failover, at most
# 50 in the 10 s it is given, so 30 or so come after it to show the limits held again.
JOBS = 100


@pytest.mark.fleet
@pytest.mark.usefixtures("short_leases")
def test_sentinel__failover_mid_run__no_job_lost_no_meeting_twice_limits_held_again(
    sentinel_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[..., WorkerProcess],
    sim_client: SimulatorClient,
    sentinels: SentinelSet,
    tmp_path: Path,
) -> None:
    sim_client.configure(rate_limits={"medium": RATE}, latency_s=0.02)
    limits = {"ZOOM_RATE_LIMITS": f"medium={RATE}"}
    workers = [start_worker(concurrency=3, **limits) for _ in range(2)]
    start_beat(**limits)
    started = time.monotonic()
    ids = _create(JOBS)
    wait_for(_succeeded_at_least(15), timeout=60, what="15 jobs succeeded")

    failover_at = time.monotonic()
    sentinels.failover()
    settle_s = 10 - (time.monotonic() - failover_at)
    time.sleep(max(0.0, settle_s))  # the 10 s the governor is allowed; nothing to poll
    at_settled = sim_client.stats()
    drain_s = _drain(ids, started, 180)

    outcome = _outcome(ids, sim_client)
    after = sim_client.stats()
    logs = "".join(w.log() for w in workers)
    summary = outcome.line(
        "sentinel-failover",
        drain_s,
        calls_after_10s=after["api_calls"] - at_settled["api_calls"],
        api_429_after_10s=after["api_429"] - at_settled["api_429"],
        governor_errors=logs.count("Redis (rate governor) failed"),
        reconnects=logs.count("Connection to broker lost"),
    )
    print(f"\n{summary}")
    _assert_exactly_once(outcome, JOBS, summary)
    assert after["api_calls"] - at_settled["api_calls"] >= 10, f"jobs flowed after: {summary}"
    assert after["api_429"] == at_settled["api_429"], f"limits held again: {summary}"
