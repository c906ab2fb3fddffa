"""The bare Celery task ``bench overhead`` measures the pipeline against.

What a team would run without zoom-worker: a minimal Celery app on the same broker and the
same worker shape, ``acks_late``, prefetch 1, no task events, no results, a token fetched
once per pool process, and one httpx POST per task. No ledger, no governor, no fencing.

Started by :mod:`bench.overhead` as ``celery -A bench.bare_app worker``; configured by
environment variables (``BARE_BROKER_URL``, ``BARE_API_URL``, ``BARE_OAUTH_URL``,
``BARE_ACCOUNT_ID``, ``BARE_CLIENT_ID``, ``BARE_CLIENT_SECRET``). It imports nothing from
``worker`` so its pool processes weigh what Celery and httpx weigh.

**The ledger's floor** (``BARE_FLOOR_DATABASE_URL`` and ``BARE_FLOOR_REDIS_URL`` set): the
same task plus the least that the pipeline's promises need, and nothing else: three durable
PostgreSQL statements per create in autocommit on a connection each pool process keeps (the
claim, the fence before the call, the outcome after it; issue 13 allows three) and three Redis
round trips (the rate permit, the pacing check just before the call, the attempt's counters),
each a single command. No ORM, no settings, no token store, no logging: what is left between
this side and the pipeline is the pipeline's own code, and what is left between this side and
the bare task is what durability and a fleet-wide governor cost on this machine at least.
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
# The floor's table, made by bench.bare before the workers start.
FLOOR_TABLE = "bench_floor_jobs"
_CLAIM = (
    f"INSERT INTO {FLOOR_TABLE} (id, status, lease_expires_at) VALUES (%s, 'running', "
    "now() + interval '5 minutes') ON CONFLICT (id) DO UPDATE SET status = 'running', "
    "lease_expires_at = EXCLUDED.lease_expires_at RETURNING id"
)
_FENCE = f"UPDATE {FLOOR_TABLE} SET maybe_sent = true WHERE id = %s AND status = 'running'"
_OUTCOME = (
    f"UPDATE {FLOOR_TABLE} SET status = 'succeeded', meeting_id = %s, finished_at = now() "
    "WHERE id = %s AND status = 'running'"
)


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
    if os.environ.get("BARE_FLOOR_DATABASE_URL"):
        # The floor only: the bare task's processes must not weigh what it loads.
        import psycopg  # noqa: PLC0415
        import redis  # noqa: PLC0415

        database = psycopg.connect(os.environ["BARE_FLOOR_DATABASE_URL"], autocommit=True)
        _process["floor"] = database, redis.Redis.from_url(os.environ["BARE_FLOOR_REDIS_URL"])


@app.task(name=TASK)
def create(user_id: str, meeting: dict[str, Any]) -> None:
    """POST the meeting; a refusal fails the task (and shows in the simulator's counts)."""
    floor = _process.get("floor")
    if floor is None:
        _process["client"].post(f"users/{user_id}/meetings", json=meeting).raise_for_status()
        return
    database, governor = floor
    job_id = create.request.id
    database.execute(_CLAIM, (job_id,))
    governor.incr("bench:floor:permit")
    database.execute(_FENCE, (job_id,))
    governor.incr("bench:floor:admit")
    reply = _process["client"].post(f"users/{user_id}/meetings", json=meeting)
    reply.raise_for_status()
    database.execute(_OUTCOME, (reply.json()["id"], job_id))
    governor.incr("bench:floor:counters")
