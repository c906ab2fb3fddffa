"""The Celery app and its settings.

The settings that keep jobs safe through crashes: ``task_acks_late`` with
``task_reject_on_worker_lost`` (a message is acknowledged only after its job recorded an
outcome, and comes back if the process dies), ``worker_prefetch_multiplier = 1`` (a dead
worker holds at most one message per process), and a Redis ``visibility_timeout`` above
every countdown we ever give the broker (a longer wait is parked in PostgreSQL instead,
because Redis would redeliver an unacknowledged countdown message once the timeout passes).

Configuration is read from Settings lazily, when Celery first needs it, never at import.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from worker.config import Settings, get_settings

SWEEP_TASK = "jobs.sweep"
CLEANUP_TASK = "meetings.cleanup_stale"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings, derived from ours."""
    return {
        "broker_url": settings.CELERY_BROKER_URL,
        "broker_transport_options": {"visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Flower sees tasks without extra flags.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
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
        },
    }


# Every task reports its arguments with meeting bodies masked (worker.events).
app = Celery("worker", include=["worker.tasks"], task_cls="worker.events:MaskedTask")
app.add_defaults(lambda: celery_config(get_settings()))
