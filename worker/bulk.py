"""Bulk producers: many jobs validated first, recorded in one transaction, then put on the
broker over one connection.

Every request is checked before anything is written: one invalid request refuses the whole
batch with InvalidMeeting whose field names its index (``[3].meeting.topic``), and nothing is
stored or queued. The jobs are then recorded in one transaction (:func:`worker.admission.
insert_many`), idempotency keys honoured as for single calls (an IdempotencyConflict for one
request stores nothing), and the new jobs are published with one producer on one broker
connection, as one kombu publish batch (on Redis: one pipelined round trip). A publish that
fails leaves its jobs to the sweeper, as for a single call. With ``session=`` the jobs are
written in the caller's transaction instead, and the relay sends them after its commit
(:mod:`worker.enqueue`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from worker import db, enqueue, errors, job_requests, priorities
from worker.config import get_settings
from worker.enqueue import Transaction
from worker.job_requests import Options, Reader
from worker.models import Job as JobRow

log = logging.getLogger(__name__)

CREATE_FIELDS = frozenset({"user_id", "meeting", "idempotency_key", "priority"})
DELETE_FIELDS = frozenset(
    {"meeting_id", "occurrence_id", "idempotency_key", "create_job_id", "priority"}
)


def create_meetings(
    requests: Sequence[Mapping[str, Any]],
    *,
    on_done: str | None = None,
    session: Transaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> list[uuid.UUID]:
    """Record and queue a create job per ``{"user_id", "meeting", "idempotency_key"?}``;
    returns their job ids in order (a reused key gives its earlier job's id, as
    :func:`worker.jobs.create_meeting` does). ``on_done``, ``session``, ``priority`` and
    ``account`` work as there; a request's own ``"priority"`` overrides the batch's. Every
    job of a batch runs under the batch's ``account``."""
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)
    rows = create_rows(requests, opts)
    return enqueue.enqueue(rows, session)


def delete_meetings(
    requests: Sequence[Mapping[str, Any]],
    *,
    on_done: str | None = None,
    session: Transaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> list[uuid.UUID]:
    """Record and queue a delete job per ``{"meeting_id"}`` or ``{"create_job_id"}`` (with
    ``occurrence_id``, ``idempotency_key`` and ``priority`` optional); returns their job ids
    in order. Each is checked as :func:`worker.jobs.delete_meeting` checks one, ``account``
    included."""
    checked = checked_deletes(requests)
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)
    if session is not None:
        return enqueue.enqueue(delete_rows(session, checked, opts), session)
    with db.unavailable_as_infrastructure(), db.sessions(get_settings())() as reader:
        rows = delete_rows(reader, checked, opts)
    return enqueue.enqueue(rows, None)


def create_rows(requests: Sequence[Mapping[str, Any]], opts: Options) -> list[JobRow]:
    """A validated create job per request (InvalidMeeting names the index and field)."""
    rows = []
    for index, request in enumerate(_requests(requests)):
        with _at(index):
            _check_fields(request, CREATE_FIELDS)
            rows.append(
                job_requests.new_create(
                    request.get("user_id"),
                    request.get("meeting"),
                    request.get("idempotency_key"),
                    _own(opts, request),
                )
            )
    return rows


def checked_deletes(requests: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The delete requests, their fields checked before anything is read or written."""
    checked = []
    for index, request in enumerate(_requests(requests)):
        with _at(index):
            _check_fields(request, DELETE_FIELDS)
            if ("meeting_id" in request) == ("create_job_id" in request):
                raise errors.InvalidMeeting("meeting_id", "give either meeting_id or create_job_id")
            checked.append(request)
    return checked


def delete_rows(
    reader: Reader, checked: Sequence[Mapping[str, Any]], opts: Options
) -> list[JobRow]:
    """A delete job per checked request, each checked against the ledger through ``reader``."""
    rows = []
    for index, request in enumerate(checked):
        with _at(index):
            rows.append(job_requests.delete_row(reader, request, _own(opts, request)))
    return rows


def _own(opts: Options, request: Mapping[str, Any]) -> Options:
    """The batch's options, with the request's own priority if it names one."""
    if "priority" not in request:
        return opts
    return dataclasses.replace(opts, priority=priorities.checked(request["priority"]))


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
