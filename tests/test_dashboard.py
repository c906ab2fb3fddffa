"""The Grafana dashboard: the JSON in the repo is what worker/dashboard.py builds, it reads
back into grafana-foundation-sdk's model, every query names a figure the exporter serves,
and the picture's evaluation of a query does what Prometheus does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from worker import dashboard, db, fleet_counters, jobs, metrics, models, ratelimit
from worker.config import get_settings
from worker.token_store import TokenStore

JSON = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "zoom-worker.json"


def test_dashboard__json_in_the_repo__equals_what_the_builder_makes() -> None:
    assert JSON.read_text(encoding="utf-8") == dashboard.render(), (
        "deploy/grafana/zoom-worker.json is stale: run `python -m bench.dashboard json`"
    )


def test_dashboard__json__reads_back_into_the_sdk_model_row_by_row() -> None:
    stored = json.loads(JSON.read_text(encoding="utf-8"))

    model = Dashboard.from_json(stored)

    assert model.uid == dashboard.UID
    assert json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json())) == stored
    rows = [p for p in model.panels or [] if isinstance(p, RowPanel)]
    panels = [p for p in model.panels or [] if isinstance(p, Panel)]
    assert [r.title for r in rows] == [r.title for r in dashboard.ROWS]
    assert [p.title for p in panels] == [p.title for r in dashboard.ROWS for p in r.panels]
    assert all(p.datasource and p.datasource.uid == dashboard.DATASOURCE_UID for p in panels)
    ids = [p.id_val for p in model.panels or []]
    assert len(set(ids)) == len(ids) and 0 not in ids, "every panel and row has its own id"


def test_dashboard__every_query__names_a_figure_the_exporter_serves(
    env: dict[str, str],
) -> None:
    job_id = jobs.create_meeting("host@example.com", {"topic": "T", "type": 2})
    held = {"status": models.WAITING, "held_for": "host_daily"}  # a figure only when held
    with db.sessions(get_settings())() as session, session.begin():
        session.execute(update(models.Job).where(models.Job.id == job_id).values(**held))
    counters = fleet_counters.FleetCounters.from_url(env["REDIS_URL"])
    counters.observe(fleet_counters.JOB_DURATION, 0.2)
    counters.observe(fleet_counters.ZOOM_LATENCY, 0.05)
    governor = ratelimit.RateGovernor(counters.client, {"light": 10, "medium": 5})
    store = TokenStore(get_settings(), db.sessions(get_settings()))
    registry = CollectorRegistry()
    registry.register(
        metrics.FleetCollector(get_settings(), counters, store.status, governor=governor)
    )
    served = {
        sample.name
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    store.close()
    counters.client.close()

    for row in dashboard.ROWS:
        for panel in row.panels:
            for query in panel.queries:
                name = f"{query.metric}_bucket" if query.quantile is not None else query.metric
                assert name in served, f"{panel.title}: {name} is not exported"


def _answers(ok: float, refused: float) -> dashboard.Scrape:
    def labels(category: str, kind: str) -> dashboard.Labels:
        return (("category", category), ("class", kind))

    return {
        ("zoom_worker_api_answers_total", labels("medium", "2xx")): ok,
        ("zoom_worker_api_answers_total", labels("light", "2xx")): ok,
        ("zoom_worker_api_answers_total", labels("light", "429")): refused,
    }


def test_evaluate__rate_summed_by_label__per_second_between_scrapes() -> None:
    query = dashboard.ROWS[1].panels[0].queries[0]  # answers per second by class
    scrapes = [(0.0, _answers(0, 0)), (10.0, _answers(50, 10)), (20.0, _answers(5, 10))]

    found = dashboard.evaluate(query, scrapes)

    assert math.isnan(found["2xx"][0]), "no rate before a second scrape"
    assert found["2xx"][1:] == [10.0, 1.0], "two categories summed; a restarted counter"
    assert found["429"][1:] == [1.0, 0.0]


def test_evaluate__histogram_quantile__interpolates_within_the_bucket() -> None:
    query = dashboard.Query("h", "p50", quantile=0.5, rate=True)

    def buckets(scale: float) -> dashboard.Scrape:
        bounds = {"0.1": 10, "0.5": 30, "1": 40, "+Inf": 40}
        return {("h_bucket", (("le", le),)): n * scale for le, n in bounds.items()}

    found = dashboard.evaluate(query, [(0.0, buckets(0)), (10.0, buckets(1))])

    # Rank 20 of 40 falls in (0.1, 0.5] holding ranks 10..30: halfway, at 0.3.
    assert found["p50"][1] == pytest.approx(0.3)
