"""Bulk producers: many jobs validated first, recorded in one transaction, then put on the
broker over one connection.

Every request is checked before anything is written: one invalid request refuses the whole
batch with InvalidMeeting whose field names its index (``[3].meeting.topic``), and nothing is
stored or queued. The jobs are then recorded in one transaction (:func:`worker.admission.
insert_many`), idempotency keys honoured as for single calls (an IdempotencyConflict for one
request stores nothing), and the new jobs are published with one producer on one broker
connection, as one kombu publish batch (on Redis: one pipelined round trip). A publish that
fails leaves its jobs to the sweeper, as for a single call.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from worker import admission, celery_app, db, errors, job_requests, ledger, priorities
from worker.config import get_settings
from worker.ledger import DELETE
from worker.models import Job as JobRow

log = logging.getLogger(__name__)

CREATE_FIELDS = frozenset({"user_id", "meeting", "idempotency_key", "priority"})
DELETE_FIELDS = frozenset(
    {"meeting_id", "occurrence_id", "idempotency_key", "create_job_id", "priority"}
)
# Transport operations per job in a publish batch: the message, and its task-sent event.
OPERATIONS_PER_MESSAGE = 2


def create_meetings(
    requests: Sequence[Mapping[str, Any]], *, priority: str = priorities.DEFAULT
) -> list[uuid.UUID]:
    """Record and queue a create job per ``{"user_id", "meeting", "idempotency_key"?,
    "priority"?}``; returns their job ids in order (a reused key gives its earlier job's id,
    as :func:`worker.jobs.create_meeting` does). A request without its own ``priority`` has
    the batch's."""
    rows = []
    for index, request in enumerate(_requests(requests)):
        with _at(index):
            _check_fields(request, CREATE_FIELDS)
            rows.append(
                job_requests.new_create(
                    request.get("user_id"),
                    request.get("meeting"),
                    request.get("idempotency_key"),
                    request.get("priority", priority),
                )
            )
    with db.unavailable_as_infrastructure():
        return _record_and_dispatch(rows)


def delete_meetings(
    requests: Sequence[Mapping[str, Any]], *, priority: str = priorities.DEFAULT
) -> list[uuid.UUID]:
    """Record and queue a delete job per ``{"meeting_id"}`` or ``{"create_job_id"}`` (with
    ``occurrence_id``, ``idempotency_key`` and ``priority`` optional; the batch's priority
    otherwise); returns their job ids in order. Each is checked as
    :func:`worker.jobs.delete_meeting` checks one."""
    checked = []
    for index, request in enumerate(_requests(requests)):
        with _at(index):
            _check_fields(request, DELETE_FIELDS)
            if ("meeting_id" in request) == ("create_job_id" in request):
                raise errors.InvalidMeeting("meeting_id", "give either meeting_id or create_job_id")
            checked.append(request)
    with db.unavailable_as_infrastructure():
        with db.sessions(get_settings())() as session:
            rows = [
                _delete_row(session, index, {"priority": priority, **request})
                for index, request in enumerate(checked)
            ]
        return _record_and_dispatch(rows)


def _delete_row(session: Session, index: int, request: Mapping[str, Any]) -> JobRow:
    occurrence_id, key = request.get("occurrence_id"), request.get("idempotency_key")
    priority = request.get("priority")
    with _at(index):
        if "meeting_id" in request:
            row = job_requests.new_delete(
                request["meeting_id"], occurrence_id, key, priority=priority
            )
            job_requests.check_created_here(session, row.meeting_id)
            return row
        create = job_requests.create_job(session, request["create_job_id"])
        if create.meeting_id is None:
            row = job_requests.new_delete(
                None, occurrence_id, key, after_job_id=create.id, priority=priority
            )
        else:
            row = job_requests.new_delete(create.meeting_id, occurrence_id, key, priority=priority)
        # The caller's request names the create job, whatever that job has come to since.
        named = {"create_job_id": str(create.id), "occurrence_id": occurrence_id}
        row.request_digest = job_requests.request_digest(DELETE, named)
        return row


def _requests(requests: object) -> list[Mapping[str, Any]]:
    if isinstance(requests, str | bytes | Mapping) or not isinstance(requests, Sequence):
        raise errors.InvalidMeeting("requests", "must be a list of requests")
    for index, request in enumerate(requests):
        if not isinstance(request, Mapping):
            raise errors.InvalidMeeting(f"[{index}]", "must be an object")
    return list(requests)


def _check_fields(request: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise errors.InvalidMeeting(unknown[0], f"unknown field; expected {sorted(allowed)}")


@contextlib.contextmanager
def _at(index: int) -> Iterator[None]:
    """Re-raise an InvalidMeeting naming the request's index before its field."""
    try:
        yield
    except errors.InvalidMeeting as exc:
        raise errors.InvalidMeeting(f"[{index}].{exc.field}", exc.message) from exc


def _record_and_dispatch(rows: list[JobRow]) -> list[uuid.UUID]:
    if not rows:
        return []
    admitted = admission.insert_many(rows, get_settings())
    fresh = [row for row, (_, created) in zip(rows, admitted, strict=True) if created]
    if fresh:
        _dispatch(fresh)
    return [job_id for job_id, _ in admitted]


def _dispatch(rows: list[JobRow]) -> None:
    """Publish every job with one producer on one broker connection, in one kombu publish
    batch: on Redis one pipeline, a single round trip for the task messages and their
    ``task-sent`` events; other transports publish each message at once on that connection."""
    app = celery_app.app
    try:
        with (
            app.producer_or_acquire() as producer,
            producer.batch(max_size=len(rows) * OPERATIONS_PER_MESSAGE),
        ):
            send = _sender(producer)
            for row in rows:
                ledger.dispatch(
                    row.id,
                    row.kind,
                    user_id=row.user_id,
                    topic=row.topic,
                    meeting_id=row.meeting_id,
                    send=send,
                    priority=row.priority,
                )
    except Exception as exc:  # kombu raises many types; the ledger rows are what counts
        log.warning(
            "job.dispatch_failed count=%d the sweeper will dispatch them again: %s",
            len(rows),
            type(exc).__name__,
        )


def _sender(producer: Any) -> ledger.Send:
    def send(task_name: str, kwargs: dict[str, Any]) -> None:
        celery_app.app.send_task(task_name, kwargs=kwargs, retry=False, producer=producer)

    return send
