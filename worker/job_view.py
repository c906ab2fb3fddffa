"""A job as application code sees it: :class:`Job`, returned by :func:`worker.jobs.get_job`
and :mod:`worker.aio`, and sent to a job's ``on_done`` task as a JSON object
(:meth:`Job.as_payload`). It holds no body, no secret and no ``start_url``.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.models import DEFAULT_CREDENTIAL
from worker.models import Job as JobRow


@dataclass(frozen=True)
class Job:
    """A job as application code sees it (a snapshot, not a live ORM object)."""

    id: uuid.UUID
    kind: str
    status: str
    user_id: str | None
    topic: str | None
    meeting_id: int | None
    join_url: str | None
    error: str | None
    attempts: int
    deferrals: int
    idempotency_key: str | None
    # high, normal or bulk (worker.priorities).
    priority: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    next_attempt_at: datetime | None
    # The credential the job runs under (worker.credentials; "default": the environment's).
    account: str = DEFAULT_CREDENTIAL

    @classmethod
    def from_row(cls, row: JobRow) -> Job:
        return cls(**{field.name: getattr(row, field.name) for field in dataclasses.fields(cls)})

    def as_payload(self) -> dict[str, Any]:
        """The same fields as JSON values: the id as a string, datetimes in ISO 8601 (UTC)."""
        payload: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            payload[field.name] = value
        return payload
