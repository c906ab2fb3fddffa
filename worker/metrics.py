"""The service's own figures in Prometheus form, served on ``METRICS_HOST:METRICS_PORT``
(127.0.0.1 unless opened) by each worker host.

Every figure is read from PostgreSQL and Redis, so each worker shows the same fleet-wide
numbers: aggregate them across targets with ``max``, never ``sum``. The database part costs
the same however many jobs ever ran, and is read at most once per :data:`CACHE_S`: jobs not
yet finished are counted in the ``(status, ...)`` index (as many entries as jobs waiting or
running), finished ones are kept counted by triggers (``job_status_counts``), and the oldest
waiting job is the first entry of a partial index.

- ``zoom_worker_jobs{status}``: jobs in each status (gauge; every status, 0 when none)
- ``zoom_worker_queue_age_seconds``: age of the oldest queued or retrying job, 0 when none
- ``zoom_worker_token_requests_last_hour``, ``zoom_worker_token_requests_last_day``: requests
  made to Zoom's token endpoint (only when credentials are configured)
- ``zoom_worker_circuit_open{state}``: 1 while the credential's circuit is not closed
- ``zoom_worker_api_responses_total{kind}``: Zoom answers by kind, counted by
  :class:`worker.fleet_counters.FleetCounters`: ``401``, ``429`` (all of them),
  ``429_daily`` (those for a host's daily create/update cap) and ``5xx``
- ``zoom_worker_api_calls_total``: every answer from Zoom's API
- ``zoom_worker_api_answers_total{category, class}``: Zoom answers by rate category (light,
  medium, heavy, other) and class (2xx, 401, 429, 5xx, other)
- ``zoom_worker_zoom_latency_seconds`` and ``zoom_worker_job_duration_seconds``: histograms
  of Zoom's answer time per call and of job attempts (claim to recorded outcome)
- ``zoom_worker_jobs_held{reason}``: unfinished jobs held, by ``HoldReason``;
  ``zoom_worker_host_daily_holds{host}``: those held for a host's daily cap, by host digest
- ``zoom_worker_governor_booked_seconds{category}``: how far ahead the governor reserved
  each category's calls; ``zoom_worker_governor_limit{category}``: the calls/s it plans for
- ``zoom_worker_token_budget_per_hour``: ``ZOOM_TOKEN_BUDGET_PER_HOUR``, beside the requests
- ``zoom_worker_account_jobs_held{account}``: unfinished jobs held, by credential, and
  ``zoom_worker_account_usable{account}``: 1 while a registered credential is active and its
  circuit closed, and ``zoom_worker_account_token_requests_last_hour{account}``: a
  registered credential's token requests (label values come from the registry, so they are
  bounded by it)
- ``zoom_worker_metrics_source_up{source}``: 0 when the ``database`` or ``redis`` part of a
  scrape failed (those figures are then left out rather than reported as zeros)

No name or label carries a token, a secret, a host's email or a meeting id.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from worker import db, errors, fleet_counters, gate, models, ratelimit
from worker.config import Settings
from worker.outcomes import HoldReason
from worker.token_store import CLOSED, TokenStatus, TokenStore

log = logging.getLogger(__name__)

UNFINISHED = (models.QUEUED, models.RUNNING, models.RETRYING, models.WAITING)
STATUSES = (*UNFINISHED, *models.FINAL_STATUSES)
# Prometheus scrapes every 15-60 s; more scrapers, or anyone hammering the port, cost
# PostgreSQL at most one read of the figures per this many seconds.
CACHE_S = 5.0
HISTOGRAMS = {
    fleet_counters.ZOOM_LATENCY: (
        "zoom_worker_zoom_latency_seconds",
        "Zoom API calls: request sent to the answer's headers",
    ),
    fleet_counters.JOB_DURATION: (
        "zoom_worker_job_duration_seconds",
        "Job attempts: claim to recorded outcome",
    ),
}


# A scrape's three reads of the jobs (bench/scrape.py times them over a large table): jobs not
# finished, in the (status, lease_expires_at) index; finished ones, kept counted by triggers;
# the oldest waiting job, the first entry of the partial index on created_at.
UNFINISHED_COUNTS = (
    select(models.Job.status, func.count())
    .where(models.Job.status.in_(UNFINISHED))
    .group_by(models.Job.status)
)
FINISHED_COUNTS = select(
    models.JobStatusCount.status, func.sum(models.JobStatusCount.jobs)
).group_by(models.JobStatusCount.status)
OLDEST_PENDING_AGE = select(
    func.extract("epoch", func.now() - func.min(models.Job.created_at))
).where(models.PENDING)
# Jobs held (waiting or retrying without failing) by reason; the daily cap's by host.
HELD_COUNTS = (
    select(models.Job.held_for, func.count())
    .where(models.Job.status.in_(UNFINISHED), models.Job.held_for.is_not(None))
    .group_by(models.Job.held_for)
)
HELD_BY_ACCOUNT = (
    select(models.Job.account, func.count())
    .where(models.Job.status.in_(UNFINISHED), models.Job.held_for.is_not(None))
    .group_by(models.Job.account)
)
REGISTERED = select(
    models.Credential.name, models.Credential.status, models.Credential.circuit_state
).where(models.Credential.name != models.DEFAULT_CREDENTIAL)
# Token requests in the last hour, by registered credential (the default's are above).
TOKENS_BY_ACCOUNT = (
    select(models.Credential.name, func.count())
    .join(models.TokenRequest, models.TokenRequest.credential_id == models.Credential.id)
    .where(
        models.Credential.name != models.DEFAULT_CREDENTIAL,
        models.TokenRequest.requested_at > func.now() - text("interval '1 hour'"),
    )
    .group_by(models.Credential.name)
)
HOST_DAILY_HOLDS = (
    select(models.Job.user_id, func.count())
    .where(models.Job.status.in_(UNFINISHED), models.Job.held_for == HoldReason.HOST_DAILY)
    .group_by(models.Job.user_id)
)


class FleetCollector(Collector):
    """Reads the figures: three index-only reads of job counts and ages,
    :meth:`TokenStore.status` (the credential row and the last day of ``token_requests``),
    at most once per ``cache_s``; and one Redis ``MGET`` at every scrape. A failing source
    is logged and its figures left out; the scrape itself still answers."""

    def __init__(
        self,
        settings: Settings,
        counters: fleet_counters.FleetCounters,
        token_status: Callable[[], TokenStatus] | None = None,
        *,
        governor: ratelimit.RateGovernor | None = None,
        cache_s: float = CACHE_S,
    ) -> None:
        self._settings = settings
        self._counters = counters
        self._token_status = token_status
        self._governor = governor
        self._cache_s = cache_s
        self._cache_lock = threading.Lock()
        self._cached: tuple[float, list[Metric] | None] | None = None

    def collect(self) -> Iterator[Metric]:
        database = self._database_figures()
        yield from database or []
        counts = self._counters.snapshot()
        if counts:
            responses = CounterMetricFamily(
                "zoom_worker_api_responses", "Zoom API answers by kind", labels=["kind"]
            )
            for kind in fleet_counters.RESPONSE_KINDS:
                responses.add_metric([kind], counts[kind])
            yield responses
            yield CounterMetricFamily(
                "zoom_worker_api_calls",
                "Zoom API calls answered",
                value=counts[fleet_counters.CALLS],
            )
            yield from self._redis_figures()
        up = GaugeMetricFamily(
            "zoom_worker_metrics_source_up", "1 when the source was read", labels=["source"]
        )
        up.add_metric(["database"], 0 if database is None else 1)
        up.add_metric(["redis"], 1 if counts else 0)
        yield up

    def _redis_figures(self) -> Iterator[Metric]:
        """Answers by category and class, the histograms, and the governor's bookings."""
        answers = CounterMetricFamily(
            "zoom_worker_api_answers",
            "Zoom API answers by rate category and class",
            labels=["category", "class"],
        )
        for (category, kind), count in self._counters.answers().items():
            answers.add_metric([category, kind], count)
        yield answers
        for name, (metric, documentation) in HISTOGRAMS.items():
            found = self._counters.histogram(name)
            if found is not None:
                buckets, total = found
                yield HistogramMetricFamily(metric, documentation, buckets, sum_value=total)
        if self._governor is None:
            return
        try:
            booked = self._governor.booked_ahead_s()
        except errors.GovernorUnavailable as exc:
            log.warning("metrics.scrape_failed source=governor %s", type(exc).__name__)
            return
        ahead = GaugeMetricFamily(
            "zoom_worker_governor_booked_seconds",
            "How far ahead the governor has reserved each category's calls",
            labels=["category"],
        )
        limit = GaugeMetricFamily(
            "zoom_worker_governor_limit",
            "Calls per second the governor plans for",
            labels=["category"],
        )
        for category, seconds in booked.items():
            ahead.add_metric([category], seconds)
            limit.add_metric([category], self._governor.limits[category])
        yield ahead
        yield limit

    def _database_figures(self) -> list[Metric] | None:
        """The database's figures, read again once ``cache_s`` passed; None when it failed
        (a failure is kept as long as figures are, so an outage is not hammered either)."""
        with self._cache_lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._cache_s:
                return self._cached[1]
            figures: list[Metric] | None
            try:
                figures = list(self._jobs())
                if self._token_status is not None:
                    figures += _token_figures(self._token_status())
                    figures.append(
                        GaugeMetricFamily(
                            "zoom_worker_token_budget_per_hour",
                            "Token requests allowed per hour (ZOOM_TOKEN_BUDGET_PER_HOUR)",
                            value=self._settings.ZOOM_TOKEN_BUDGET_PER_HOUR,
                        )
                    )
            except (SQLAlchemyError, errors.ZoomWorkerError) as exc:
                figures = None
                log.warning("metrics.scrape_failed source=database %s", type(exc).__name__)
            self._cached = (now, figures)
            return figures

    def _jobs(self) -> Iterator[Metric]:
        with db.sessions(self._settings)() as session:
            counts = {status: int(n) for status, n in session.execute(UNFINISHED_COUNTS)}
            counts |= {status: int(n) for status, n in session.execute(FINISHED_COUNTS)}
            age = session.execute(OLDEST_PENDING_AGE).scalar()
            held = {str(reason): int(n) for reason, n in session.execute(HELD_COUNTS)}
            daily = list(session.execute(HOST_DAILY_HOLDS))
            by_account = {str(name): int(n) for name, n in session.execute(HELD_BY_ACCOUNT)}
            registered = list(session.execute(REGISTERED))
            tokens = {str(name): int(n) for name, n in session.execute(TOKENS_BY_ACCOUNT)}
        jobs = GaugeMetricFamily("zoom_worker_jobs", "Jobs by status", labels=["status"])
        for status in sorted({*STATUSES, *counts}):
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            "zoom_worker_queue_age_seconds",
            "Age of the oldest queued or retrying job",
            value=max(0.0, float(age or 0)),
        )
        holds = GaugeMetricFamily("zoom_worker_jobs_held", "Jobs held, by why", labels=["reason"])
        for reason in HoldReason:
            holds.add_metric([reason.value], held.get(reason.value, 0))
        yield holds
        hosts = GaugeMetricFamily(
            "zoom_worker_host_daily_holds",
            "Jobs held for a host's daily create/update cap, by host (a digest, never the email)",
            labels=["host"],
        )
        for user_id, count in daily:
            hosts.add_metric([ratelimit.host_digest(user_id or "")[:12]], int(count))
        yield hosts
        yield from _account_figures(by_account, registered, tokens)


def _account_figures(
    held: dict[str, int], registered: list[Any], tokens: dict[str, int]
) -> Iterator[Metric]:
    """Per credential: held jobs, whether it is usable, its token requests in the last hour.
    Only names of the registry (and ``default``) become label values."""
    names = [models.DEFAULT_CREDENTIAL, *(row.name for row in registered)]
    jobs_held = GaugeMetricFamily(
        "zoom_worker_account_jobs_held", "Jobs held, by credential", labels=["account"]
    )
    for name in names:
        jobs_held.add_metric([name], held.get(name, 0))
    yield jobs_held
    usable = GaugeMetricFamily(
        "zoom_worker_account_usable",
        "1 while a registered credential is active and Zoom accepts it",
        labels=["account"],
    )
    for row in registered:
        ok = row.status == models.ACTIVE and row.circuit_state == CLOSED
        usable.add_metric([row.name], 1 if ok else 0)
    yield usable
    requests = GaugeMetricFamily(
        "zoom_worker_account_token_requests_last_hour",
        "Token requests in the last hour, by registered credential",
        labels=["account"],
    )
    for row in registered:
        requests.add_metric([row.name], tokens.get(row.name, 0))
    yield requests


def _token_figures(status: TokenStatus) -> Iterator[Metric]:
    for span, count in (("hour", status.requests_last_hour), ("day", status.requests_last_day)):
        yield GaugeMetricFamily(
            f"zoom_worker_token_requests_last_{span}", f"Token requests in the last {span}", count
        )
    circuit = GaugeMetricFamily(
        "zoom_worker_circuit_open", "1 while Zoom's refusal holds calls", labels=["state"]
    )
    circuit.add_metric([status.circuit_state], 0 if status.circuit_state == CLOSED else 1)
    yield circuit


_exporter_lock = threading.Lock()
_exporter: tuple[int, WSGIServer | None] | None = None  # this process's, None when not serving


def start_exporter(settings: Settings) -> None:
    """Serve the figures on ``METRICS_HOST:METRICS_PORT`` from this process (once per
    process; port 0 = off).

    When the port is taken (several workers on one host) the process logs it and goes on:
    the figures are fleet-wide, so one exporter per host is enough.
    """
    global _exporter  # noqa: PLW0603 - one exporter per process
    if settings.METRICS_PORT <= 0:
        return
    with _exporter_lock:
        if _exporter is not None and _exporter[0] == os.getpid():
            return
        registry = CollectorRegistry()
        status = None
        if settings.has_credentials:
            status = TokenStore(settings, db.sessions(settings)).status
        counters = fleet_counters.FleetCounters.from_url(settings.redis_url)
        governor = None
        if settings.RATE_GOVERNOR:
            governor = ratelimit.RateGovernor(counters.client, gate.planned_limits(settings))
        registry.register(FleetCollector(settings, counters, status, governor=governor))
        server: WSGIServer | None = None
        try:
            server, _thread = start_http_server(
                settings.METRICS_PORT, addr=settings.METRICS_HOST, registry=registry
            )
            log.info(
                "metrics.serving host=%s port=%d", settings.METRICS_HOST, settings.METRICS_PORT
            )
        except OSError as exc:
            level = logging.INFO if exc.errno == errno.EADDRINUSE else logging.WARNING
            log.log(level, "metrics.not_serving port=%d %s", settings.METRICS_PORT, exc.strerror)
        _exporter = (os.getpid(), server)


def stop_exporter() -> None:
    """Stop this process's exporter, if any, so :func:`start_exporter` may start it again."""
    global _exporter  # noqa: PLW0603 - one exporter per process
    with _exporter_lock:
        if _exporter is not None and _exporter[0] == os.getpid() and _exporter[1] is not None:
            _exporter[1].shutdown()
            _exporter[1].server_close()
        _exporter = None
