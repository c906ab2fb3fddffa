"""What a producer asks for, validated into a job row: the request digest an idempotency key
promises, and the checks every producer call shares (single and bulk, :mod:`worker.jobs` and
:mod:`worker.bulk`). Nothing here writes; :mod:`worker.admission` does.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from worker import errors, ledger, marker, meeting_body, priorities
from worker.ledger import CREATE, DELETE
from worker.marker import RESERVED_AGENDA_CHARS
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow

# The width of jobs.occurrence_id (Zoom's occurrence ids are 13-digit epoch milliseconds).
OCCURRENCE_ID_MAX = 64


def request_digest(kind: str, request: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request: what an idempotency key promises."""
    canonical = json.dumps(
        {"kind": kind, **request}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_create(
    user_id: object, meeting: object, idempotency_key: object, priority: object = None
) -> JobRow:
    """A create job for this host and body, validated (InvalidMeeting names the field).

    The priority is not part of the request an idempotency key promises: the same key with
    another priority returns the same job."""
    user = meeting_body.validate_user_id(user_id)
    if not isinstance(meeting, Mapping):
        raise errors.InvalidMeeting("meeting", "must be an object (Zoom's create-meeting body)")
    body = meeting_body.validate_create_body(meeting, reserved_agenda_chars=RESERVED_AGENDA_CHARS)
    job_id = uuid.uuid4()
    return JobRow(
        id=job_id,
        kind=CREATE,
        idempotency_key=checked_key(idempotency_key),
        request_digest=request_digest(CREATE, {"user_id": user, "body": body}),
        user_id=user,
        topic=ledger.topic_of(body),
        body=body,
        marker=marker.for_job(job_id),
        priority=priorities.checked(priority),
    )


def new_delete(
    meeting_id: object,
    occurrence_id: object,
    idempotency_key: object,
    *,
    after_job_id: uuid.UUID | None = None,
    priority: object = None,
) -> JobRow:
    """A delete job for this meeting (or, with ``after_job_id``, its create job's), validated."""
    number = None if after_job_id else meeting_body.validate_meeting_id(meeting_id)
    if occurrence_id is not None and (
        not isinstance(occurrence_id, str) or not 1 <= len(occurrence_id) <= OCCURRENCE_ID_MAX
    ):
        raise errors.InvalidMeeting(
            "occurrence_id", f"must be a string of 1 to {OCCURRENCE_ID_MAX} characters, or None"
        )
    request = {"meeting_id": number, "occurrence_id": occurrence_id}
    return JobRow(
        id=uuid.uuid4(),
        kind=DELETE,
        idempotency_key=checked_key(idempotency_key),
        request_digest=request_digest(DELETE, request),
        meeting_id=number,
        occurrence_id=occurrence_id,
        after_job_id=after_job_id,
        priority=priorities.checked(priority),
    )


def create_job(session: Session, job_id: uuid.UUID | str) -> JobRow:
    """The create job ``job_id`` names (InvalidMeeting, field ``create_job_id``, if none)."""
    try:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        raise errors.InvalidMeeting("create_job_id", "is not a job id") from None
    row = session.get(JobRow, key)
    if row is None or row.kind != CREATE:
        raise errors.InvalidMeeting("create_job_id", f"no create job {job_id}")
    return row


def checked_key(value: object) -> str | None:
    """The idempotency key, if any, checked: a string of 1 to 255 characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 255:
        raise errors.InvalidMeeting("idempotency_key", "must be a string of 1 to 255 characters")
    return value


def check_created_here(session: Session, meeting_id: int | None) -> None:
    """Refuse (InvalidMeeting) a meeting this service did not create: it never deletes one."""
    if session.get(MeetingRow, meeting_id) is None:
        raise errors.InvalidMeeting(
            "meeting_id",
            f"meeting {meeting_id} was not created by zoom-worker, which never deletes "
            "meetings it did not create",
        )
