"""Flower against a real worker: finished tasks listed by name, kwargs without secrets, auth."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from conftest import WorkerProcess, spawn_celery, wait_for
from prometheus_client.parser import text_string_to_metric_families

from worker import jobs

pytestmark = [pytest.mark.fleet, pytest.mark.usefixtures("env")]

AUTH = ("ops", "pw")
PASSCODE = "Pq7-zX9@w"
BANNER = re.compile(r"Visit me at http://127\.0\.0\.1:(\d+)")


class Flower:
    """A running `celery -A worker flower` and its base URL."""

    def __init__(self, process: WorkerProcess) -> None:
        match = BANNER.search(process.log())
        assert match, f"no address in Flower's log:\n{process.log()[-2000:]}"
        self.process = process
        self.url = f"http://127.0.0.1:{match.group(1)}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=10, **kwargs)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        # Flower serves /metrics without authentication, whatever FLOWER_BASIC_AUTH says:
        # keep its port on a private network or behind a proxy that guards /metrics.
        response = self.get("/metrics")
        assert response.status_code == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


@pytest.fixture
def flower(env: dict[str, str], tmp_path: Path) -> Iterator[Flower]:
    """Flower on a port the OS picks, with basic auth from ``FLOWER_BASIC_AUTH`` as in compose."""
    arguments = ["flower", "--port=0", "--address=127.0.0.1"]
    overrides = {**env, "FLOWER_BASIC_AUTH": ":".join(AUTH), "FLOWER_UNAUTHENTICATED_API": ""}
    process = spawn_celery("flower", arguments, overrides, tmp_path / "flower.log", "Visit me at")
    try:
        yield Flower(process)
    finally:
        process.stop()  # SIGTERM to the process group, SIGKILL after 20 s


def _finished_create(flower: Flower, job_id: str) -> dict[str, Any] | None:
    response = flower.get("/api/tasks", params={"taskname": "meetings.create"}, auth=AUTH)
    assert response.status_code == 200, response.text
    for task in response.json().values():
        if job_id in (task.get("kwargs") or "") and task.get("state") == "SUCCESS":
            return dict(task, raw=response.text)
    return None


def test_flower__finished_task__listed_by_name_without_secrets(
    start_worker: Callable[..., WorkerProcess], flower: Flower
) -> None:
    worker = start_worker(concurrency=1)
    # Events from before Flower subscribed are lost: wait until a heartbeat reached it.
    wait_for(
        lambda: any(
            name == "flower_worker_online" and value == 1
            for (name, _labels), value in flower.metrics().items()
        ),
        timeout=30,
        interval=0.2,
    )

    job_id = str(jobs.create_meeting("host@example.com", _body("Flower standup")))
    task = wait_for(lambda: _finished_create(flower, job_id), timeout=60, interval=0.2)

    assert task["name"] == "meetings.create"
    kwargs = task["kwargs"]
    assert f"'job_id': '{job_id}'" in kwargs
    assert "'user_id': 'host@example.com'" in kwargs and "'topic': 'Flower standup'" in kwargs
    for secret in ("sim-secret", "start_url", "zak=", "Bearer"):
        assert secret not in task["raw"], f"{secret} shown by Flower's API"
        assert secret not in flower.process.log() and secret not in worker.log()
    job = jobs.get_job(job_id)
    assert job is not None and job.status == "succeeded"

    succeeded = [
        value
        for (name, labels), value in flower.metrics().items()
        if name == "flower_events_total"
        and ("task", "meetings.create") in labels
        and ("type", "task-succeeded") in labels
    ]
    assert sum(succeeded) >= 1


def test_flower__by_name_create_with_passcode__no_passcode_in_task_detail(
    env: dict[str, str], start_worker: Callable[..., WorkerProcess], flower: Flower
) -> None:
    worker = start_worker(concurrency=1)
    _wait_until_online(flower)

    task_id = _send_by_name(env)

    def detail() -> dict[str, Any] | None:
        response = flower.get(f"/api/task/info/{task_id}", auth=AUTH)
        info: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return info if info.get("state") == "SUCCESS" else None

    info = wait_for(detail, timeout=60, interval=0.2)

    assert info["received"], "the worker's task-received event reached Flower"
    assert "'topic': 'By-name standup'" not in info["kwargs"]
    assert "topic='By-name standup'" in info["kwargs"] and "host@example.com" in info["kwargs"]
    listed = flower.get("/api/tasks", params={"taskname": "meetings.create"}, auth=AUTH).text
    for shown in (str(info), listed, worker.log(), flower.process.log()):
        assert PASSCODE not in shown and "Dial in" not in shown


def test_flower__by_name_create_scheduled__worker_page_shows_no_passcode(
    env: dict[str, str], start_worker: Callable[..., WorkerProcess], flower: Flower
) -> None:
    start_worker(concurrency=1, name="scheduler")
    _wait_until_online(flower)

    task_id = _send_by_name(env, countdown=600)  # held by the worker: `inspect scheduled`

    # Only a worker named in the query is asked for its reserved and scheduled tasks.
    query = {"workername": f"scheduler@{socket.gethostname()}", "refresh": "1"}

    def worker_page() -> str | None:
        response = flower.get("/api/workers", params=query, auth=AUTH)
        return response.text if task_id in response.text else None

    shown = wait_for(worker_page, timeout=60, interval=0.5)
    assert PASSCODE not in shown and "Dial in" not in shown
    assert "topic='By-name standup'" in shown


def _send_by_name(env: dict[str, str], **options: Any) -> str:
    """A by-name create carrying a passcode, as a producer in another language sends it: no
    task-sent event, and its own kwargsrepr header with the whole body in it."""
    meeting = {**_body("By-name standup"), "password": PASSCODE, "agenda": "Dial in"}
    kwargs = {"user_id": "host@example.com", "meeting": meeting}
    producer = Celery("by-name-producer", broker=env["CELERY_BROKER_URL"])
    producer.conf.task_send_sent_event = False
    try:
        result = producer.send_task(
            "meetings.create", kwargs=kwargs, kwargsrepr=repr(kwargs), **options
        )
    finally:
        producer.close()
    return str(result.id)


def _wait_until_online(flower: Flower) -> None:
    # Events from before Flower subscribed are lost: wait until a heartbeat reached it.
    wait_for(
        lambda: any(
            name == "flower_worker_online" and value == 1
            for (name, _labels), value in flower.metrics().items()
        ),
        timeout=30,
        interval=0.2,
    )


def test_flower__api_without_credentials__401(flower: Flower) -> None:
    assert flower.get("/api/tasks").status_code == 401
    assert flower.get("/api/tasks", auth=("ops", "wrong")).status_code == 401
    assert flower.get("/api/tasks", auth=AUTH).status_code == 200
    # The dashboard is guarded too; /metrics is not (see Flower.metrics).
    assert flower.get("/").status_code == 401
    assert flower.get("/metrics").status_code == 200


def _body(topic: str) -> dict[str, Any]:
    return {"topic": topic, "type": 2, "start_time": "2026-12-01T10:00:00Z", "duration": 30}
