"""Job priorities: ``high``, ``normal`` (the default) and ``bulk``, and their Celery queues.

A job's priority is stored on the job and decides two things:

- its queue: ``meetings.high``, ``meetings.normal`` or ``meetings.bulk`` (:func:`route`, a
  Celery router reading the task's ``priority`` kwarg, so redeliveries, sweeps, retries and
  tasks sent by name all land in the job's own queue). Separate queues behave the same on
  Redis and on RabbitMQ, whose quorum queues have no message priorities;
- its place at the rate governor (:mod:`worker.ratelimit`): a lower priority reserves slots
  only a short way ahead, so a higher one arriving later is served first.

Other tasks (the sweeper, the cleanup, webhooks, retention) stay on Celery's default queue.
"""

from __future__ import annotations

from typing import Any

from worker import errors

HIGH, NORMAL, BULK = "high", "normal", "bulk"
PRIORITIES = (HIGH, NORMAL, BULK)  # highest first
DEFAULT = NORMAL
QUEUE_PREFIX = "meetings."
QUEUES = tuple(QUEUE_PREFIX + name for name in PRIORITIES)
# Celery's default queue: every other task.
DEFAULT_QUEUE = "celery"
JOB_TASKS = frozenset({"meetings.create", "meetings.delete", "meetings.update"})


def checked(value: object, field: str = "priority") -> str:
    """The priority, or InvalidMeeting naming ``field`` (None means the default)."""
    if value is None:
        return DEFAULT
    if not isinstance(value, str) or value not in PRIORITIES:
        raise errors.InvalidMeeting(field, f"must be one of {', '.join(PRIORITIES)}, not {value!r}")
    return value


def queue_of(priority: str | None) -> str:
    """The Celery queue for a priority (an unknown one goes to the default's)."""
    return QUEUE_PREFIX + (priority if priority in PRIORITIES else DEFAULT)


def route(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
) -> dict[str, str] | None:
    """Celery router (``task_routes``): a job task goes to the queue of its ``priority``."""
    if name not in JOB_TASKS:
        return None
    priority = kwargs.get("priority") if isinstance(kwargs, dict) else None
    return {"queue": queue_of(priority)}
