"""The Celery app and its settings.

The settings that keep jobs safe through crashes: ``task_acks_late`` with
``task_reject_on_worker_lost`` (a message is acknowledged only after its job recorded an
outcome, and comes back if the process dies), ``worker_prefetch_multiplier = 1`` (a dead
worker holds at most one message per process), and every countdown we give the broker
below what the broker lets a worker hold a message unacknowledged (a longer wait is parked
in PostgreSQL instead; see ``Settings.broker_hold_limit_s``).

Per broker (``Settings.broker_kind``):

Queues: one per job priority (``meetings.high``, ``meetings.normal``, ``meetings.bulk``) beside
Celery's default queue for every other task; the same plain queues on both brokers
(:mod:`worker.priorities`).

- Redis: a ``visibility_timeout`` (``CELERY_VISIBILITY_TIMEOUT``), after which Redis
  redelivers an unacknowledged message, countdowns included. Behind Sentinel (Celery's
  ``sentinel://`` list), the master's name (``REDIS_SENTINEL_MASTER``) as ``master_name``.
- RabbitMQ: durable classic queues with persistent messages (Celery's defaults) and
  publisher confirms, so a send returns only once the broker has the message. Quorum queues
  are not used: Celery holds countdowns on them only through its native delayed delivery
  (topic exchanges), and its global QoS is refused on them. RabbitMQ has no visibility
  timeout; its ``consumer_timeout`` (``RABBITMQ_CONSUMER_TIMEOUT``) bounds an unacknowledged
  delivery instead.

Time limits: each job task is stopped before its lease ends (soft limit, then the process is
killed at the hard limit), so a worker never works on a job the sweeper has given to another;
the fence before each Zoom call (``worker.ledger``) covers a process frozen past the limit.
The cleanup task's limit follows its own time budget, which is longer than a job's lease.

Configuration is read from Settings lazily, when Celery first needs it, never at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import kombu.pools
from celery import Celery
from kombu import Exchange, Queue

from worker import broker_transport, errors, logs, priorities  # noqa: F401 - logs: LOG_FORMAT, through Celery's logging signals
from worker.config import Settings, get_settings

SWEEP_TASK = "jobs.sweep"
CLEANUP_TASK = "meetings.cleanup_stale"
PRUNE_TASK = "retention.prune"
# Applies the stored webhook events not applied yet (worker.webhook_events.apply_pending).
WEBHOOKS_APPLY_TASK = "webhooks.apply_pending"
JOB_TASKS = ("meetings.create", "meetings.delete")
# Transport operations per message in a publish batch: the message, and its task-sent event.
OPERATIONS_PER_MESSAGE = 2
# Between the soft time limit (SoftTimeLimitExceeded in the task) and the hard one (the
# process is killed): time for the task to record what it was doing.
SOFT_LIMIT_HEADROOM_S = 1.0


def cleanup_budget_s(settings: Settings) -> float:
    """How long one cleanup run may work: it ends well before the next beat."""
    return settings.CLEANUP_INTERVAL_MINUTES * 60 * 0.8


def time_limits(settings: Settings) -> dict[str, dict[str, float]]:
    """Celery's soft and hard time limits per task name (``task_annotations``).

    A job task is killed no later than its lease ends (the lease starts at the claim, just
    after the task starts). The cleanup may overrun its budget by one call and its waits.
    """
    job_hard = float(settings.JOB_LEASE_SECONDS)
    cleanup_soft = cleanup_budget_s(settings) + settings.attempt_bound_s
    limits = {name: (job_hard - SOFT_LIMIT_HEADROOM_S, job_hard) for name in JOB_TASKS}
    limits[CLEANUP_TASK] = (cleanup_soft, cleanup_soft + 30)
    return {
        name: {"soft_time_limit": soft, "time_limit": hard} for name, (soft, hard) in limits.items()
    }


def transport_options(settings: Settings) -> dict[str, Any]:
    """``broker_transport_options`` for the broker ``CELERY_BROKER_URL`` names."""
    if settings.broker_kind == "rabbitmq":
        return {"confirm_publish": True}
    options: dict[str, Any] = {"visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT}
    if settings.broker_behind_sentinel:
        options["master_name"] = settings.REDIS_SENTINEL_MASTER
    return options


def task_queues() -> list[Queue]:
    """Celery's default queue (the sweeper, cleanup, webhooks, retention) and one queue per
    job priority (:mod:`worker.priorities`); a worker consumes them all unless given ``-Q``."""
    names = (priorities.DEFAULT_QUEUE, *priorities.QUEUES)
    return [Queue(name, Exchange(name), routing_key=name) for name in names]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings, derived from ours."""
    return {
        "broker_url": settings.CELERY_BROKER_URL,
        # kombu's Redis transport with one redis-py client per channel (worker.broker_transport).
        "broker_transport": broker_transport.for_url(settings.CELERY_BROKER_URL),
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "task_queues": task_queues(),
        "task_default_queue": priorities.DEFAULT_QUEUE,
        "task_routes": (priorities.route,),
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Flower sees tasks without extra flags (CELERY_TASK_EVENTS=false: no events).
        "worker_send_task_events": settings.CELERY_TASK_EVENTS,
        "task_send_sent_event": settings.CELERY_TASK_EVENTS,
        "task_annotations": time_limits(settings),
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "sweep-jobs": {
                "task": SWEEP_TASK,
                "schedule": timedelta(seconds=settings.SWEEP_INTERVAL_SECONDS),
                "options": {"expires": settings.SWEEP_INTERVAL_SECONDS},
            },
            "cleanup-stale-meetings": {
                "task": CLEANUP_TASK,
                "schedule": timedelta(minutes=settings.CLEANUP_INTERVAL_MINUTES),
                "options": {"expires": settings.CLEANUP_INTERVAL_MINUTES * 60},
            },
            # Zoom's events stored but not applied: their task was lost (a crash between the
            # endpoint's commit and its publish, a broker down).
            "apply-webhook-events": {
                "task": WEBHOOKS_APPLY_TASK,
                "schedule": timedelta(seconds=settings.SWEEP_INTERVAL_SECONDS),
                "options": {"expires": settings.SWEEP_INTERVAL_SECONDS},
            },
            # Finished jobs, token requests and spent idempotency keys (worker.retention).
            "prune-old-rows": {
                "task": PRUNE_TASK,
                "schedule": timedelta(minutes=settings.PRUNE_INTERVAL_MINUTES),
                "options": {"expires": settings.PRUNE_INTERVAL_MINUTES * 60},
            },
        },
    }


# Every task reports its arguments with meeting bodies masked (worker.events).
app = Celery("worker", include=["worker.tasks"], task_cls="worker.events:MaskedTask")
app.add_defaults(lambda: celery_config(_settings_or_exit()))


def _settings_or_exit() -> Settings:
    """The process's Settings; invalid ones end a ``celery`` process with one line naming
    the variable (Celery reads its configuration while parsing its options, before any signal
    a task module could catch it in)."""
    try:
        return get_settings()
    except errors.ConfigurationError as exc:
        raise SystemExit(f"zoom-worker: invalid configuration: {exc}") from None


def point_at_broker(settings: Settings) -> None:
    """Give this process's app the broker of ``settings`` and drop the connections and
    producers it pooled for the previous one (Celery reads its settings once per process;
    the tests and the benchmarks change broker between runs)."""
    app.conf.update(
        broker_url=settings.CELERY_BROKER_URL,
        broker_transport=broker_transport.for_url(settings.CELERY_BROKER_URL),
        broker_transport_options=transport_options(settings),
    )
    drop_broker_connections()


def drop_broker_connections() -> None:
    """Close the app's connection and producer pools (``app.close()`` keeps the producers,
    which would go on publishing to the previous broker)."""
    kombu.pools.reset()
    app._pool = None  # type: ignore[attr-defined]
    app.amqp._producer_pool = None  # type: ignore[attr-defined]


def send(task_name: str, kwargs: dict[str, Any]) -> None:
    """Put a task on the broker by name, once (the ledger's ``send``; a failure is the
    caller's to handle: the sweeper dispatches the job again)."""
    app.send_task(task_name, kwargs=kwargs, retry=False)


def send_many(messages: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Put several tasks on the broker with one producer on one broker connection, as one
    kombu publish batch: on Redis one pipeline, a single round trip for the task messages and
    their ``task-sent`` events; other transports publish each message at once on that
    connection (RabbitMQ confirms each). Raises when the broker refused any of them."""
    if not messages:
        return
    with (
        app.producer_or_acquire() as producer,
        producer.batch(max_size=len(messages) * OPERATIONS_PER_MESSAGE),
    ):
        for task_name, kwargs in messages:
            app.send_task(task_name, kwargs=kwargs, retry=False, producer=producer)
