"""The bare Celery task ``bench overhead`` measures the pipeline against.

What a team would run without zoom-worker: a minimal Celery app on the same broker and the
same worker shape, ``acks_late``, prefetch 1, no task events, no results, a token fetched
once per pool process, and one httpx POST per task. No ledger, no governor, no fencing.

Started by :mod:`bench.overhead` as ``celery -A bench.bare_app worker``; configured by
environment variables (``BARE_BROKER_URL``, ``BARE_API_URL``, ``BARE_OAUTH_URL``,
``BARE_ACCOUNT_ID``, ``BARE_CLIENT_ID``, ``BARE_CLIENT_SECRET``). It imports nothing from
``worker`` so its pool processes weigh what Celery and httpx weigh.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from celery import Celery
from celery.signals import worker_process_init

TASK = "bare.create"

app = Celery("bare", broker=os.environ.get("BARE_BROKER_URL", "redis://127.0.0.1:6379/10"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
)

_process: dict[str, Any] = {}


@worker_process_init.connect
def _connect(**_: Any) -> None:
    """One client and one token per pool process, before its first task."""
    client = httpx.Client(base_url=os.environ["BARE_API_URL"].rstrip("/") + "/", timeout=30.0)
    reply = client.post(
        os.environ["BARE_OAUTH_URL"],
        auth=httpx.BasicAuth(os.environ["BARE_CLIENT_ID"], os.environ["BARE_CLIENT_SECRET"]),
        data={"grant_type": "account_credentials", "account_id": os.environ["BARE_ACCOUNT_ID"]},
    )
    reply.raise_for_status()
    client.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
    _process["client"] = client


@app.task(name=TASK)
def create(user_id: str, meeting: dict[str, Any]) -> None:
    """POST the meeting; a refusal fails the task (and shows in the simulator's counts)."""
    _process["client"].post(f"users/{user_id}/meetings", json=meeting).raise_for_status()
