"""The operators' Grafana dashboard over :mod:`worker.metrics`, as code.

Each panel's queries are :class:`Query` values: :func:`build` renders them to PromQL for
Grafana (with grafana-foundation-sdk, a dev dependency: only ``build`` needs it), and
:func:`evaluate` computes the same query over scraped samples, so the README's picture
(``bench/dashboard.py``) is drawn from the very queries the dashboard runs.

``deploy/grafana/zoom-worker.json`` is ``render()``'s output; ``python -m bench.dashboard
json`` writes it again and tests/test_dashboard.py checks the file equals what this builds.

Every figure is fleet-wide (each worker host exports the same numbers), so a query first
takes ``max without (instance, job)`` across the scraped targets, then sums or splits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

UID = "zoom-worker"
DATASOURCE_UID = "prometheus"
TITLE = "zoom-worker"

Labels = tuple[tuple[str, str], ...]
# One scrape: (metric sample name, sorted labels) -> value.
Scrape = Mapping[tuple[str, Labels], float]


@dataclass(frozen=True)
class Query:
    """One series set: ``metric`` (``match`` picks label values), as a per-second ``rate``
    or as is, summed ``by`` labels; or, with ``quantile``, that quantile of a histogram."""

    metric: str
    legend: str
    by: tuple[str, ...] = ()
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rate: bool = False
    quantile: float | None = None

    def promql(self) -> str:
        """The query as Grafana sends it to Prometheus."""
        matchers = ",".join(f'{k}=~"{"|".join(v)}"' for k, v in sorted(self.match.items()))
        name = f"{self.metric}_bucket" if self.quantile is not None else self.metric
        series = f"{name}{{{matchers}}}" if matchers else name
        if self.rate:
            series = f"rate({series}[$__rate_interval])"
        fleet = f"max without (instance, job) ({series})"
        if self.quantile is not None:
            return f"histogram_quantile({self.quantile:g}, sum by (le) ({fleet}))"
        return f"sum by ({', '.join(self.by)}) ({fleet})" if self.by else f"sum({fleet})"


@dataclass(frozen=True)
class Panel:
    """A time series panel: a title, a unit (Grafana's id) and its queries."""

    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


@dataclass(frozen=True)
class Row:
    """A dashboard row; its first panel is the one the README's picture draws."""

    title: str
    panels: tuple[Panel, ...]


UNFINISHED = ("queued", "running", "retrying", "waiting")


def _quantiles(histogram: str) -> tuple[Query, ...]:
    return tuple(Query(histogram, f"p{q}", quantile=q / 100, rate=True) for q in (50, 95, 99))


ROWS: tuple[Row, ...] = (
    Row(
        "Jobs",
        (
            Panel(
                "Jobs by state",
                "short",
                (Query("zoom_worker_jobs", "{{status}}", ("status",), {"status": UNFINISHED}),),
                "Unfinished jobs in each status (finished ones only grow).",
            ),
            Panel(
                "Queue age",
                "s",
                (Query("zoom_worker_queue_age_seconds", "oldest queued or retrying job"),),
            ),
            Panel(
                "Jobs held, by why",
                "short",
                (Query("zoom_worker_jobs_held", "{{reason}}", ("reason",)),),
                "Waiting without failing: rate limits, credentials, token budget, governor...",
            ),
        ),
    ),
    Row(
        "Zoom's answers",
        (
            Panel(
                "Answers per second by class",
                "reqps",
                (Query("zoom_worker_api_answers_total", "{{class}}", ("class",), rate=True),),
            ),
            Panel(
                "Answers per second by category",
                "reqps",
                (Query("zoom_worker_api_answers_total", "{{category}}", ("category",), rate=True),),
            ),
        ),
    ),
    Row(
        "Token and credentials",
        (
            Panel(
                "Token requests in the last hour, against the budget",
                "short",
                (
                    Query("zoom_worker_token_requests_last_hour", "requests"),
                    Query("zoom_worker_token_budget_per_hour", "budget"),
                ),
            ),
            Panel(
                "Credential circuit (1 = calls held)",
                "short",
                (Query("zoom_worker_circuit_open", "{{state}}", ("state",)),),
            ),
        ),
    ),
    Row(
        "Rate governor",
        (
            Panel(
                "Governor fill: calls booked ahead, by category",
                "s",
                (Query("zoom_worker_governor_booked_seconds", "{{category}}", ("category",)),),
                "How far ahead each category's slots are reserved; MAX_AHEAD is 30 s.",
            ),
            Panel(
                "Daily-cap holds per host",
                "short",
                (Query("zoom_worker_host_daily_holds", "{{host}}", ("host",)),),
                "Jobs held until 00:00 UTC for a host's create/update cap (host digests).",
            ),
        ),
    ),
    Row(
        "Durations",
        (
            Panel("Job attempt duration", "s", _quantiles("zoom_worker_job_duration_seconds")),
            Panel("Zoom latency", "s", _quantiles("zoom_worker_zoom_latency_seconds")),
        ),
    ),
)


def build() -> Any:
    """The dashboard as grafana-foundation-sdk's model (``dashboard.Dashboard``)."""
    # A dev dependency: only building the JSON needs it, never the service.
    from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries  # noqa: PLC0415
    from grafana_foundation_sdk.models.dashboard import DataSourceRef  # noqa: PLC0415

    source = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
    board = (
        dashboard.Dashboard(TITLE)
        .uid(UID)
        .tags(["zoom-worker"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("utc")
    )
    ids = iter(range(1, 100))
    for row in ROWS:
        board = board.with_row(dashboard.Row(row.title).id(next(ids)))
        for panel in row.panels:
            built = (
                timeseries.Panel()
                .id(next(ids))
                .title(panel.title)
                .description(panel.description)
                .unit(panel.unit)
                .datasource(source)
                .height(8)
                .span(24 // len(row.panels))
                .min(0)
            )
            for number, query in enumerate(panel.queries):
                built = built.with_target(
                    prometheus.Dataquery()
                    .expr(query.promql())
                    .legend_format(query.legend)
                    .ref_id(chr(ord("A") + number))
                )
            board = board.with_panel(built)
    return board.build()


def render() -> str:
    """The dashboard's JSON, as stored in ``deploy/grafana/zoom-worker.json``."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: PLC0415

    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


# -- the same queries over scraped samples (the README's picture) -------------------------------


def evaluate(query: Query, scrapes: Sequence[tuple[float, Scrape]]) -> dict[str, list[float]]:
    """``query`` at each scrape's time: one list of values per legend (NaN where a rate has
    no earlier scrape yet), as Grafana would plot it from Prometheus, for scrapes of one
    target (``max without (instance, job)`` then changes nothing)."""
    out: dict[str, list[float]] = {}
    for index, (_, scrape) in enumerate(scrapes):
        values = _at(query, scrapes, index, scrape)
        for legend in out.keys() - values.keys():
            out[legend].append(math.nan)
        for legend, value in values.items():
            out.setdefault(legend, [math.nan] * index).append(value)
    return out


def _at(
    query: Query, scrapes: Sequence[tuple[float, Scrape]], index: int, scrape: Scrape
) -> dict[str, float]:
    name = f"{query.metric}_bucket" if query.quantile is not None else query.metric
    series = {
        labels: value
        for (sample, labels), value in scrape.items()
        if sample == name and _matches(query, labels)
    }
    if query.rate:
        if index == 0:
            return {}
        then, before = scrapes[index - 1]
        seconds = scrapes[index][0] - then
        series = {
            labels: _increase(before.get((name, labels), 0.0), value) / seconds
            for labels, value in series.items()
        }
    if query.quantile is not None:
        return {query.legend: _quantile(query.quantile, series)}
    sums: dict[str, float] = {}
    for labels, value in series.items():
        legend = query.legend
        for key, label in labels:
            legend = legend.replace("{{" + key + "}}", label)
        sums[legend] = sums.get(legend, 0.0) + value
    return sums


def _matches(query: Query, labels: Labels) -> bool:
    found = dict(labels)
    return all(found.get(key) in allowed for key, allowed in query.match.items())


def _increase(before: float, now: float) -> float:
    return now if now < before else now - before  # a counter that restarted counts from 0


def _quantile(share: float, buckets: Mapping[Labels, float]) -> float:
    """Prometheus's histogram_quantile: linear within the bucket the rank falls in."""
    ordered = sorted((float(dict(labels)["le"]), count) for labels, count in buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return math.nan
    rank = share * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower
