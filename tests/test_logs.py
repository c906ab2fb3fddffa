"""LOG_FORMAT=json: one JSON object per line from real worker and beat processes, with the
event name, job id, task id and host, and never a secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from conftest import WorkerProcess, wait_for

from worker import db, jobs, logs
from worker.config import get_settings
from worker.simulator import SimulatorClient
from worker.token_store import TokenStore

MEETING = {"topic": "Standup", "type": 2, "start_time": "2030-01-07T10:00:00Z", "duration": 30}


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("worker.meetings", logging.INFO, __file__, 1, message, args, None)


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a log; Celery's start-up banner (printed, not logged) comes first
    and is skipped."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("{"))
    return [json.loads(line) for line in lines[start:] if line.strip()]


def test_json_formatter__our_message__event_and_pairs_as_fields() -> None:
    formatter = logs.JsonFormatter(account="acc-1")
    record = _record("job.retrying job_id=%s in=%.2fs reason=%s", "j-1", 2.0, "Zoom answered 503")

    entry = json.loads(formatter.format(record))

    assert entry["event"] == "job.retrying"
    assert entry["job_id"] == "j-1"
    assert entry["level"] == "INFO" and entry["logger"] == "worker.meetings"
    assert entry["account"] == "acc-1"
    assert entry["message"].startswith("job.retrying job_id=j-1")
    assert entry["time"].endswith("+00:00")


def test_json_formatter__user_id_pair__named_host() -> None:
    entry = json.loads(logs.JsonFormatter().format(_record("job.recorded user_id=h@x.com")))

    assert entry["host"] == "h@x.com" and "user_id" not in entry


def test_json_formatter__celery_message__no_event_name() -> None:
    entry = json.loads(logs.JsonFormatter().format(_record("Task meetings.create[1] received")))

    assert "event" not in entry
    assert entry["message"] == "Task meetings.create[1] received"


@pytest.mark.fleet
def test_worker__log_format_json__one_object_per_line_with_ids_and_no_secret(
    env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[..., WorkerProcess],
    sim_client: SimulatorClient,
) -> None:
    sim_client.configure(error_rate=0.3, seed=5)
    worker = start_worker(concurrency=2, LOG_FORMAT="json")
    beat = start_beat(LOG_FORMAT="json", SWEEP_INTERVAL_SECONDS="1")
    ids = [jobs.create_meeting("host@example.com", {**MEETING, "agenda": f"{n}"}) for n in range(6)]

    def done() -> bool:
        return all(j.status == "succeeded" for j in jobs.jobs_for(ids))

    wait_for(done, timeout=60, what="6 creates succeeded")
    wait_for(lambda: "job.sweep" in beat.log() or "jobs.sweep" in beat.log(), timeout=30)
    token = TokenStore(get_settings(), db.sessions(get_settings())).get().value

    entries = _json_lines(worker.log())
    beat_entries = _json_lines(beat.log())
    created = [e for e in entries if e.get("event") == "meeting.created"]
    assert {e["job_id"] for e in created} == {str(i) for i in ids}
    assert all(e["task_id"] and e["host"] == "host@example.com" for e in created)
    assert all(e["task"] == "meetings.create" for e in created)
    assert all(e["account"] == env["ZOOM_ACCOUNT_ID"] for e in created)
    assert any(e.get("event") == "job.retrying" for e in entries), "503s were retried"
    assert beat_entries and all({"time", "level", "logger"} <= e.keys() for e in beat_entries)
    captured = worker.log() + beat.log()
    for secret in (env["ZOOM_CLIENT_SECRET"], token, "Bearer", "start_url", "zak="):
        assert secret not in captured


@pytest.mark.fleet
def test_worker__info__no_line_per_http_request(
    start_worker: Callable[..., WorkerProcess], sim_client: SimulatorClient
) -> None:
    worker = start_worker(concurrency=1)
    ids = [jobs.create_meeting("host@example.com", {**MEETING, "agenda": f"{n}"}) for n in range(2)]

    wait_for(
        lambda: all(j.status == "succeeded" for j in jobs.jobs_for(ids)),
        timeout=60,
        what="2 creates succeeded",
    )

    log = worker.log()
    assert log.count("meeting.created") == 2, "our own lines are written at INFO"
    assert "HTTP Request" not in log, "httpx's line per request is not formatted or written"


def test_quiet_http_clients__debug__keeps_their_lines() -> None:
    httpx_logger = logging.getLogger("httpx")
    saved = httpx_logger.level
    try:
        httpx_logger.setLevel(logging.NOTSET)
        logs.quiet_http_clients("DEBUG")
        assert httpx_logger.level == logging.NOTSET
        logs.quiet_http_clients(logging.INFO)
        assert httpx_logger.level == logging.WARNING
    finally:
        httpx_logger.setLevel(saved)
