"""Logs an operator can search: plain text, or one JSON object per line (``LOG_FORMAT``).

With ``LOG_FORMAT=json`` every line a worker or beat writes is one JSON object::

    {"time": "2026-12-02T01:30:00.123+00:00", "level": "INFO", "logger": "worker.meetings",
     "event": "meeting.created", "message": "meeting.created job_id=... meeting_id=...",
     "job_id": "...", "meeting_id": "...", "task_id": "...", "task": "meetings.create",
     "host": "host@example.com", "account": "..."}

- ``event`` is the stable event name our messages start with (``job.retrying``,
  ``meeting.created``); Celery's own lines have none.
- ``job_id``, ``meeting_id``, ``host`` and the other ``key=value`` pairs of our messages
  become fields; while a task runs, Celery's task context adds ``task_id``, ``task``, and the
  ``job_id`` and ``host`` (``user_id``) of its arguments. Only those few arguments are read,
  never a meeting body.
- ``account`` is ``ZOOM_ACCOUNT_ID`` (not a secret: ``doctor`` shows it too).

Nothing here adds a secret: the messages never carry one (their callers' rule), and the
task context gives identifiers only. The formatter is installed on Celery's handlers through
its ``after_setup_logger`` and ``after_setup_task_logger`` signals, in the worker and in beat.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from celery import current_task
from celery.signals import after_setup_logger, after_setup_task_logger

from worker.config import get_settings

# Our messages start with "area.event_name"; Celery's own ("Task ... received") do not.
EVENT = re.compile(r"[a-z_]+\.[a-z_]+")
# key=value pairs of our messages ("job_id=... meeting_id=..."); a value ends at a space.
PAIR = re.compile(r"(?<!\S)([a-z_]+)=(\S+)")
# Fields a message's pairs may not replace (the record's own).
RESERVED = frozenset({"time", "level", "logger", "event", "message", "exception", "account"})
# Task arguments copied into a line, under the name an operator searches for.
TASK_ARGUMENTS = {"job_id": "job_id", "user_id": "host", "meeting_id": "meeting_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for its fields)."""

    def __init__(self, account: str | None = None) -> None:
        super().__init__()
        self.account = account

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        first = message.split(" ", 1)[0]
        if EVENT.fullmatch(first):
            entry["event"] = first
        entry["message"] = message
        entry.update(_task_context())
        for key, value in PAIR.findall(message):
            if key not in RESERVED:
                entry[key] = value
        if "user_id" in entry:
            entry.setdefault("host", entry.pop("user_id"))
        if self.account:
            entry["account"] = self.account
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _task_context() -> dict[str, str]:
    """Identifiers of the Celery task this process runs now, if any."""
    if not current_task or current_task.request.id is None:
        return {}
    found = {"task_id": str(current_task.request.id), "task": str(current_task.name)}
    arguments = current_task.request.kwargs or {}
    for argument, field in TASK_ARGUMENTS.items():
        if arguments.get(argument) is not None:
            found[field] = str(arguments[argument])
    return found


def use_json(logger: logging.Logger, account: str | None) -> None:
    """Format every handler of ``logger`` as JSON lines."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter(account))


# Loggers of the HTTP clients that write a line for every request at INFO ("HTTP Request:
# POST ..."): formatted and written for every Zoom call, with nothing our own lines
# (meeting.created, job.retrying) and the metrics do not say. DEBUG keeps them.
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")


def quiet_http_clients(loglevel: int | str | None) -> None:
    """Below DEBUG, the HTTP clients log warnings only (no line per request)."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    if isinstance(level, int) and level <= logging.DEBUG:
        return
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _format_celery_logs(
    logger: logging.Logger, loglevel: int | str | None = None, **_: Any
) -> None:
    """Celery has set up its handlers (worker or beat): switch them to JSON if asked, and
    quiet the HTTP clients' per-request lines unless the level is DEBUG."""
    quiet_http_clients(loglevel)
    settings = get_settings()
    if settings.LOG_FORMAT == "json":
        use_json(logger, settings.ZOOM_ACCOUNT_ID)
