"""An ``on_done`` receiver for the tests, run by a real worker (``start_worker(include=...)``):
it records each notification it gets in a Redis list, so a test sees every delivery,
repeats included."""

from __future__ import annotations

import json
import os
from typing import Any

import redis

from worker.celery_app import app

RECEIVED = "received-notifications"
TASK = "receivers.job_done"


@app.task(name=TASK, ignore_result=True)
def job_done(notification_id: str, job: dict[str, Any]) -> None:
    client = redis.Redis.from_url(os.environ["TEST_RECEIVER_URL"])
    try:
        client.rpush(RECEIVED, json.dumps({"notification_id": notification_id, "job": job}))
    finally:
        client.close()


def received(client: redis.Redis) -> list[dict[str, Any]]:
    """Every notification recorded so far, repeats included, in arrival order."""
    return [json.loads(raw) for raw in client.lrange(RECEIVED, 0, -1)]
