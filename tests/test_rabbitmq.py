"""RabbitMQ as broker: the settings that fit it, `doctor` on both brokers, and a real worker
consuming from a RabbitMQ vhost of the test's own (the durability tests run on both brokers
in test_durability.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner, Result
from conftest import WorkerProcess, both_brokers, rabbitmqctl, wait_for

from worker import errors, jobs, ledger
from worker.celery_app import celery_config
from worker.cli import cli
from worker.config import get_settings, load_settings
from worker.outcomes import Retry

AMQP = "amqp://guest:guest@127.0.0.1:5672/zw"
MEETING = {"topic": "Standup", "type": 2, "start_time": "2030-01-07T10:00:00Z", "duration": 30}


def _retry_at(at: datetime) -> Retry:
    return Retry(at=at, reason="Zoom answered 503", transient=True)


def _doctor() -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(cli, ["doctor"], catch_exceptions=False)


# -- settings ---------------------------------------------------------------------------------


def test_settings__rabbitmq_broker_without_redis_url__refused_naming_redis_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", AMQP)
    monkeypatch.delenv("REDIS_URL", raising=False)

    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()

    assert caught.value.setting == "REDIS_URL"
    assert "RabbitMQ" in str(caught.value)
    assert "guest" not in str(caught.value)


def test_settings__redis_broker_without_redis_url__governor_uses_the_broker_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.delenv("REDIS_URL", raising=False)

    settings = load_settings()

    assert settings.broker_kind == "redis"
    assert settings.redis_url == "redis://127.0.0.1:6379/3"


def test_settings__unknown_broker_scheme__refused_naming_celery_broker_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "sqs://key:secret@queue")

    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()

    assert caught.value.setting == "CELERY_BROKER_URL"
    assert "secret" not in str(caught.value)


def test_celery_config__rabbitmq__publisher_confirms_and_no_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", AMQP)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/12")

    config = celery_config(load_settings())

    assert config["broker_transport_options"] == {"confirm_publish": True}
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]


def test_celery_config__redis__visibility_timeout_and_no_confirms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", "900")

    config = celery_config(load_settings())

    assert config["broker_transport_options"] == {"visibility_timeout": 900}


def test_settings__rabbitmq_backoff_above_consumer_timeout__refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", AMQP)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/12")
    monkeypatch.setenv("RABBITMQ_CONSUMER_TIMEOUT", "600")
    monkeypatch.setenv("RETRY_BACKOFF_MAX", "900")

    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()

    assert "RABBITMQ_CONSUMER_TIMEOUT" in str(caught.value)


def test_settings__rabbitmq_lease_beyond_consumer_timeout__refused_naming_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", AMQP)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/12")
    monkeypatch.setenv("RABBITMQ_CONSUMER_TIMEOUT", "600")
    monkeypatch.setenv("JOB_LEASE_SECONDS", "900")

    with pytest.raises(errors.ConfigurationError) as caught:
        load_settings()

    assert caught.value.setting == "JOB_LEASE_SECONDS"
    assert "RABBITMQ_CONSUMER_TIMEOUT" in str(caught.value)


@pytest.mark.parametrize(
    ("broker_url", "hold_s", "countdown_limit_s"),
    [("redis://127.0.0.1:6379/3", "7200", 3600), (AMQP, "1800", 900)],
)
def test_ledger__countdown_limit__half_of_what_the_broker_lets_a_worker_hold(
    monkeypatch: pytest.MonkeyPatch, broker_url: str, hold_s: str, countdown_limit_s: int
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", broker_url)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/12")
    monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", hold_s)
    monkeypatch.setenv("RABBITMQ_CONSUMER_TIMEOUT", hold_s)
    built = ledger.Ledger.from_settings(load_settings(), lambda _name, _kwargs: None)
    now = datetime.now(UTC)

    within = built.countdown(_retry_at(now + timedelta(seconds=countdown_limit_s - 60)))
    beyond = built.countdown(_retry_at(now + timedelta(seconds=countdown_limit_s + 60)))

    assert within is not None and within <= countdown_limit_s
    assert beyond is None, "a wait the broker cannot hold is parked in PostgreSQL"


# -- doctor -----------------------------------------------------------------------------------


@both_brokers
def test_doctor__each_broker__every_check_passes_naming_it(
    env: dict[str, str], broker_kind: str
) -> None:
    result = _doctor()

    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output
    name = {"redis": "Redis", "rabbitmq": "RabbitMQ"}[broker_kind]
    assert re.search(rf"^OK   broker reachable: {name} at .*\(broker\)", result.output, re.M)
    assert "guest" not in result.output


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_doctor__rabbitmq_down__fails_naming_the_broker_not_redis(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/zw")

    result = _doctor()

    assert result.exit_code == 1
    assert re.search(
        r"FAIL broker reachable: the broker \(RabbitMQ at 127\.0\.0\.1:1/zw, "
        r"CELERY_BROKER_URL\) is not reachable",
        result.output,
    ), result.output
    assert "OK   database reachable" in result.output
    assert "guest" not in result.output


@both_brokers
def test_doctor__governor_redis_down__fails_naming_redis_url(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")

    result = _doctor()

    assert result.exit_code == 1
    assert (
        "FAIL broker reachable: the rate governor's Redis at 127.0.0.1:1 (REDIS_URL) "
        "is not reachable"
    ) in result.output, result.output
    assert "hunter2" not in result.output


# -- a worker on RabbitMQ -----------------------------------------------------------------------


@pytest.mark.fleet
@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_worker__rabbitmq_broker__creates_through_a_durable_queue(
    env: dict[str, str], start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(concurrency=2)
    ids = [jobs.create_meeting("host@example.com", {**MEETING, "agenda": f"{n}"}) for n in range(5)]

    def done() -> bool:
        return all(j.status == "succeeded" for j in jobs.jobs_for(ids))

    wait_for(done, timeout=60, what="5 creates succeeded on RabbitMQ")
    vhost = env["CELERY_BROKER_URL"].rsplit("/", 1)[1]
    queues = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "durable")
    assert re.search(r"^celery\s+true$", queues, re.M), queues
    assert "amqp://" in worker.log(), "the worker consumed from RabbitMQ"
    assert "guest:guest" not in worker.log()
