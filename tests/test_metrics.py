"""The service's own Prometheus figures: fleet counters in Redis, the collector, the exporter."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from addresses import non_loopback_address
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, func, insert, select, text, update

from worker import db, errors, fleet_counters, jobs, metrics, models, ratelimit, zoom
from worker.config import get_settings
from worker.simulator import SimulatorClient
from worker.token_store import TokenStore

BODY = {"topic": "Metrics standup", "type": 2, "start_time": "2026-12-01T10:00:00Z", "duration": 30}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def counters(env: dict[str, str]) -> Iterator[fleet_counters.FleetCounters]:
    fleet = fleet_counters.FleetCounters.from_url(env["REDIS_URL"])
    yield fleet
    fleet.client.close()


@pytest.fixture
def exporter() -> Iterator[None]:
    metrics.stop_exporter()
    yield
    metrics.stop_exporter()


def test_fleet_counters__simulator_answers__counted_like_zoom_saw_them(
    counters: fleet_counters.FleetCounters, sim_client: SimulatorClient
) -> None:
    settings = get_settings()
    store = TokenStore(settings, db.sessions(get_settings()))
    client = zoom.ZoomClient(
        settings.ZOOM_API_URL, zoom.ZoomAuth(store), timeout_s=5, on_response=counters.on_response
    )
    try:
        meeting = client.create_meeting("host@example.com", dict(BODY))
        sim_client.invalidate_tokens()
        client.get_meeting(meeting.id)  # 401, one renewal, then 200: the hook sees both
        sim_client.configure(daily_create_limit=1)
        with pytest.raises(errors.DailyLimitReached):
            client.create_meeting("host@example.com", dict(BODY))  # told by X-RateLimit-Type
        sim_client.configure(rate_limit_headers=False)
        with pytest.raises(errors.DailyLimitReached):
            client.create_meeting("host@example.com", dict(BODY))  # told only by the message
        sim_client.configure(rate_limits={"light": 1})
        with pytest.raises(errors.RateLimited):
            for _ in range(5):
                client.get_meeting(meeting.id)
        sim_client.configure(rate_limits=None, error_rate=1.0)
        with pytest.raises(errors.ZoomServerError):
            client.get_meeting(meeting.id)
    finally:
        client.close()
        store.close()

    seen = sim_client.stats()
    counted = counters.snapshot()
    assert counted == {
        "api_calls": seen["api_calls"],
        "401": seen["api_401"],
        "429": seen["api_429"],
        "429_daily": seen["api_429_daily"],
        "5xx": seen["api_5xx"],
    }
    assert counted["401"] == 1 and counted["429_daily"] == 2 and counted["5xx"] == 1
    assert counted["429"] >= 3, "two daily and at least one per-second 429"


def test_fleet_counters__unreadable_429_body__counted_as_plain_429(
    counters: fleet_counters.FleetCounters,
) -> None:
    request = httpx.Request("GET", "http://zoom.invalid/v2/meetings/1")
    counters.on_response(httpx.Response(429, content=b"<html>busy</html>", request=request))
    counters.on_response(httpx.Response(404, json={"code": 3001}, request=request))
    counters.on_response(httpx.Response(200, json={}, request=request))

    assert counters.snapshot() == {"api_calls": 3, "401": 0, "429": 1, "429_daily": 0, "5xx": 0}


def test_fleet_counters__redis_down__calls_go_on_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = fleet_counters.FleetCounters.from_url("redis://127.0.0.1:1/0")
    request = httpx.Request("GET", "http://zoom.invalid/v2/meetings/1")
    with caplog.at_level(logging.WARNING, logger="worker.fleet_counters"):
        for status in (200, 401, 429, 503):
            fleet.on_response(httpx.Response(status, json={}, request=request))
        snapshot = fleet.snapshot()
    fleet.client.close()

    assert snapshot == {}
    failures = [r for r in caplog.records if r.getMessage().startswith("metrics.count_failed")]
    assert len(failures) == 1, "after one failure the counters pause instead of retrying"


def test_exporter__serves_fleet_figures__no_secret(
    env: dict[str, str],
    counters: fleet_counters.FleetCounters,
    exporter: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs.create_meeting("host@example.com", dict(BODY))
    jobs.create_meeting("host@example.com", {**BODY, "topic": "Second"})
    store = TokenStore(get_settings(), db.sessions(get_settings()))
    token = store.get().value  # one token request, recorded
    store.close()
    counters.count("api_calls", "401")
    port = _free_port()
    monkeypatch.setenv("METRICS_PORT", str(port))
    get_settings.cache_clear()

    metrics.start_exporter(get_settings())
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)

    assert response.status_code == 200
    found = _samples(response.text)
    assert found[("zoom_worker_jobs", (("status", "queued"),))] == 2
    assert found[("zoom_worker_jobs", (("status", "failed"),))] == 0
    assert 0 <= found[("zoom_worker_queue_age_seconds", ())] < 600
    assert found[("zoom_worker_token_requests_last_hour", ())] == 1
    assert found[("zoom_worker_token_requests_last_day", ())] == 1
    assert found[("zoom_worker_circuit_open", (("state", "closed"),))] == 0
    assert found[("zoom_worker_api_responses_total", (("kind", "401"),))] == 1
    assert found[("zoom_worker_api_responses_total", (("kind", "429_daily"),))] == 0
    assert found[("zoom_worker_api_calls_total", ())] == 1
    assert found[("zoom_worker_metrics_source_up", (("source", "database"),))] == 1
    assert "sim-secret" not in response.text and token not in response.text
    assert env["ZOOM_CLIENT_ID"] not in response.text


def test_exporter__port_in_use__logs_and_goes_on_once(
    env: dict[str, str], exporter: None, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # what the exporter binds by default (METRICS_HOST)
        taken.listen()
        settings = get_settings().model_copy(update={"METRICS_PORT": taken.getsockname()[1]})
        with caplog.at_level(logging.INFO, logger="worker.metrics"):
            metrics.start_exporter(settings)
            metrics.start_exporter(settings)

    lines = [r for r in caplog.records if r.getMessage().startswith("metrics.not_serving")]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO


def test_collector__no_credentials__token_figures_left_out(
    env: dict[str, str], counters: fleet_counters.FleetCounters, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ZOOM_ACCOUNT_ID", "ZOOM_CLIENT_ID", "ZOOM_CLIENT_SECRET"):
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    settings = get_settings()
    assert not settings.has_credentials

    found = _scrape(metrics.FleetCollector(settings, counters))

    assert not any(name.startswith("zoom_worker_token_") for name, _ in found)
    assert not any(name == "zoom_worker_circuit_open" for name, _ in found)
    assert found[("zoom_worker_jobs", (("status", "queued"),))] == 0
    assert found[("zoom_worker_queue_age_seconds", ())] == 0


def test_collector__database_down__scrape_answers_and_says_so(
    env: dict[str, str], counters: fleet_counters.FleetCounters
) -> None:
    missing = env["DATABASE_URL"].rsplit("/", 1)[0] + "/zw_no_such_database"
    settings = get_settings().model_copy(update={"DATABASE_URL": missing})

    found = _scrape(metrics.FleetCollector(settings, counters))

    assert found[("zoom_worker_metrics_source_up", (("source", "database"),))] == 0
    assert found[("zoom_worker_metrics_source_up", (("source", "redis"),))] == 1
    assert not any(name == "zoom_worker_jobs" for name, _ in found)
    assert found[("zoom_worker_api_calls_total", ())] == 0


def _scrape(collector: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return _samples(generate_latest(registry).decode())


@pytest.mark.parametrize(("host", "reachable"), [(None, False), ("0.0.0.0", True)])
def test_exporter__metrics_host__other_addresses_reach_it_only_when_opened(
    env: dict[str, str], exporter: None, host: str | None, reachable: bool
) -> None:
    address = non_loopback_address()
    update = {"METRICS_PORT": _free_port()} | ({"METRICS_HOST": host} if host else {})
    settings = get_settings().model_copy(update=update)

    metrics.start_exporter(settings)
    local = httpx.get(f"http://127.0.0.1:{settings.METRICS_PORT}/metrics", timeout=10)
    try:
        remote = httpx.get(f"http://{address}:{settings.METRICS_PORT}/metrics", timeout=5)
        remote_status: int | None = remote.status_code
    except httpx.ConnectError:
        remote_status = None

    assert (host or "127.0.0.1") == settings.METRICS_HOST
    assert local.status_code == 200
    assert remote_status == (200 if reachable else None), f"{address} answered {remote_status}"


def test_collector__jobs_change_status__figures_match_the_table(
    env: dict[str, str], counters: fleet_counters.FleetCounters
) -> None:
    ids = [jobs.create_meeting("host@example.com", {**BODY, "topic": f"T{n}"}) for n in range(6)]
    job = models.Job
    with db.sessions(get_settings())() as session, session.begin():
        for status, chosen in ((models.SUCCEEDED, ids[:3]), (models.FAILED, ids[3:4])):
            session.execute(update(job).where(job.id.in_(chosen)).values(status=status))
        session.execute(update(job).where(job.id == ids[0]).values(status=models.SUCCEEDED))
        session.execute(update(job).where(job.id == ids[1]).values(status=models.RETRYING))
        session.execute(delete(job).where(job.id == ids[2]))
        rejected = [{"id": uuid.uuid4(), "kind": "create", "status": models.FAILED} for _ in "ab"]
        session.execute(insert(job), rejected)  # one statement, as a rejected by-name job
    collector = metrics.FleetCollector(get_settings(), counters, cache_s=0)

    found = _scrape(collector)
    with db.sessions(get_settings())() as session:
        table = dict(session.execute(select(job.status, func.count()).group_by(job.status)).all())

    assert table == {models.SUCCEEDED: 1, models.FAILED: 3, models.RETRYING: 1, models.QUEUED: 2}
    for status in metrics.STATUSES:
        assert found[("zoom_worker_jobs", (("status", status),))] == table.get(status, 0), status
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(text("TRUNCATE jobs CASCADE"))
    found = _scrape(collector)
    assert all(found[("zoom_worker_jobs", (("status", s),))] == 0 for s in metrics.STATUSES)


def test_collector__scrapes_within_cache_time__database_read_once(
    env: dict[str, str], counters: fleet_counters.FleetCounters
) -> None:
    collector = metrics.FleetCollector(get_settings(), counters, cache_s=600)
    before = _scrape(collector)
    jobs.create_meeting("host@example.com", dict(BODY))

    cached = _scrape(collector)
    fresh = _scrape(metrics.FleetCollector(get_settings(), counters, cache_s=0))

    assert before[("zoom_worker_jobs", (("status", "queued"),))] == 0
    assert cached[("zoom_worker_jobs", (("status", "queued"),))] == 0
    assert fresh[("zoom_worker_jobs", (("status", "queued"),))] == 1


# -- what the dashboard reads (issue 16) ------------------------------------------------------


def test_fleet_counters__calls_through_both_hooks__answers_by_category_and_latency(
    counters: fleet_counters.FleetCounters, sim_client: SimulatorClient
) -> None:
    settings = get_settings()
    store = TokenStore(settings, db.sessions(settings))
    client = zoom.ZoomClient(
        settings.ZOOM_API_URL,
        zoom.ZoomAuth(store),
        timeout_s=5,
        on_request=counters.on_request,
        on_response=counters.on_response,
    )
    try:
        meeting = client.create_meeting("host@example.com", dict(BODY))  # medium
        sim_client.configure(rate_limits={"light": 1})
        with pytest.raises(errors.RateLimited):
            for _ in range(5):
                client.get_meeting(meeting.id)  # light: 429 (the simulator counts creates
                # as Light, as Zoom's 2026 spec does, so the window is full)
        sim_client.configure(rate_limits=None, error_rate=1.0)
        with pytest.raises(errors.ZoomServerError):
            client.delete_meeting(meeting.id)  # light, 5xx
    finally:
        client.close()
        store.close()

    seen = sim_client.stats()
    answers = counters.answers()
    latency = counters.histogram(fleet_counters.ZOOM_LATENCY)
    assert answers[("medium", "2xx")] == 1, answers  # ZOOM_CREATE_CATEGORY
    assert answers[("light", "429")] == seen["api_429"] >= 1
    assert answers[("light", "5xx")] == 1
    assert sum(answers.values()) == seen["api_calls"]
    assert latency is not None
    buckets, total = latency
    assert buckets[-1] == ("+Inf", seen["api_calls"]), "every call timed"
    assert 0 < total < 5 * seen["api_calls"]


def test_collector__holds_governor_budget_and_durations__exposed_without_an_email(
    env: dict[str, str], counters: fleet_counters.FleetCounters
) -> None:
    ids = [jobs.create_meeting(f"host{n}@example.com", dict(BODY)) for n in (1, 1, 2)]
    job = models.Job
    with db.sessions(get_settings())() as session, session.begin():
        held = {"status": models.WAITING, "held_for": "host_daily"}
        session.execute(update(job).where(job.id.in_(ids[:2])).values(**held))
        paced = {"status": models.RETRYING, "held_for": "rate_limit"}
        session.execute(update(job).where(job.id == ids[2]).values(**paced))
    governor = ratelimit.RateGovernor(counters.client, {"light": 10, "medium": 1})
    for _ in range(3):
        governor.reserve("medium")  # slots now, +1 s, +2 s: booked until +3 s
    for seconds in (0.3, 0.3, 700.0):
        counters.observe(fleet_counters.JOB_DURATION, seconds)
    store = TokenStore(get_settings(), db.sessions(get_settings()))
    collector = metrics.FleetCollector(
        get_settings(), counters, store.status, governor=governor, cache_s=0
    )

    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    found = _samples(text)
    store.close()

    assert found[("zoom_worker_jobs_held", (("reason", "host_daily"),))] == 2
    assert found[("zoom_worker_jobs_held", (("reason", "rate_limit"),))] == 1
    assert found[("zoom_worker_jobs_held", (("reason", "governor"),))] == 0
    host = ratelimit.host_digest("host1@example.com")[:12]
    assert found[("zoom_worker_host_daily_holds", (("host", host),))] == 2
    assert "@example.com" not in text
    assert 1.0 < found[("zoom_worker_governor_booked_seconds", (("category", "medium"),))] <= 3
    assert found[("zoom_worker_governor_booked_seconds", (("category", "light"),))] == 0
    assert found[("zoom_worker_governor_limit", (("category", "medium"),))] == 1
    assert found[("zoom_worker_token_budget_per_hour", ())] == 20
    duration = "zoom_worker_job_duration_seconds"
    assert found[(f"{duration}_bucket", (("le", "0.5"),))] == 2
    assert found[(f"{duration}_bucket", (("le", "+Inf"),))] == 3
    assert found[(f"{duration}_count", ())] == 3
    assert found[(f"{duration}_sum", ())] == pytest.approx(700.6)
