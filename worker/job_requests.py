"""What a producer asks for, validated into a job row: the request digest an idempotency key
promises, and the checks every producer call shares (single and bulk, :mod:`worker.jobs` and
:mod:`worker.bulk`). Nothing here writes; :mod:`worker.admission` does.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from worker import errors, ledger, marker, meeting_body, models, priorities
from worker.ledger import CREATE, DELETE, UPDATE
from worker.marker import RESERVED_AGENDA_CHARS
from worker.models import DEFAULT_CREDENTIAL, Credential
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow

# The width of jobs.occurrence_id (Zoom's occurrence ids are 13-digit epoch milliseconds).
OCCURRENCE_ID_MAX = 64
# A Celery task name as Python spells a dotted path: "billing.tasks.meeting_ready".
DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
ON_DONE_MAX = 255
# The width of credentials.name, jobs.account and meetings.account.
ACCOUNT_MAX = 100

Reader = Session | Connection
"""What the checks read through: the caller's Session or Connection, or a session of ours."""


@dataclass(frozen=True)
class Options:
    """How a job is run and reported, apart from what it does: the same for every kind of job
    and every producer call (single, bulk, async), and not part of the request an idempotency
    key promises. A new option is a field here and a column :meth:`apply` sets."""

    on_done: str | None = None
    # high, normal or bulk (worker.priorities): the job's queue and its place at the governor.
    priority: str = priorities.DEFAULT
    # The credential the job runs under (worker.credentials); its idempotency keys are its own.
    account: str = DEFAULT_CREDENTIAL

    def apply(self, row: JobRow) -> JobRow:
        row.on_done = self.on_done
        row.priority = self.priority
        row.account = self.account
        return row


def options(*, on_done: object = None, priority: object = None, account: object = None) -> Options:
    """The producer's options, validated (InvalidMeeting names the field; AccountRefused a
    malformed account name). The priority is not part of the request an idempotency key
    promises: the same key with another priority returns the same job. The account scopes
    the key: the same key in two accounts names two jobs. Whether the account exists is
    checked when the job is admitted (:func:`worker.admission.insert_rows`)."""
    if on_done is not None and (
        not isinstance(on_done, str)
        or len(on_done) > ON_DONE_MAX
        or not DOTTED_NAME.fullmatch(on_done)
    ):
        raise errors.InvalidMeeting(
            "on_done", "must be a Celery task name such as 'billing.tasks.meeting_ready'"
        )
    return Options(
        on_done=on_done, priority=priorities.checked(priority), account=checked_account(account)
    )


def checked_account(account: object) -> str:
    """The credential's name a job gives (``default`` when None), checked for shape only."""
    if account is None:
        return DEFAULT_CREDENTIAL
    if not isinstance(account, str) or not 1 <= len(account) <= ACCOUNT_MAX:
        raise errors.AccountRefused(
            str(account)[:ACCOUNT_MAX],
            "unknown",
            f"must be a credential's name, a string of 1 to {ACCOUNT_MAX} characters",
        )
    return account


def check_accounts(reader: Reader, names: set[str]) -> None:
    """Refuse (AccountRefused, naming it) a registered credential that is unknown or disabled.

    ``default`` (the environment's credential) is never refused here: a fleet without it
    configured holds its jobs with the configuration error, as it always has. A connection
    that needs re-authorization is accepted: its jobs wait with that reason until the user
    authorizes again."""
    names = names - {DEFAULT_CREDENTIAL}
    if not names:
        return
    found = dict(
        reader.execute(
            select(Credential.name, Credential.status).where(Credential.name.in_(names))
        ).all()
    )
    for name in sorted(names):
        status = found.get(name)
        if status is None:
            raise errors.AccountRefused(
                name,
                "unknown",
                f"no credential is named {name!r}: register it first "
                "(zoom-worker credentials add, or register_user_authorization)",
            )
        if status == models.DISABLED:
            raise errors.AccountRefused(
                name,
                "disabled",
                f"credential {name!r} is disabled (zoom-worker credentials enable {name})",
            )


def request_digest(kind: str, request: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request: what an idempotency key promises."""
    canonical = json.dumps(
        {"kind": kind, **request}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_create(
    user_id: object, meeting: object, idempotency_key: object, opts: Options = Options()
) -> JobRow:
    """A create job for this host and body, validated (InvalidMeeting names the field)."""
    user = meeting_body.validate_user_id(user_id)
    if not isinstance(meeting, Mapping):
        raise errors.InvalidMeeting("meeting", "must be an object (Zoom's create-meeting body)")
    body = meeting_body.validate_create_body(meeting, reserved_agenda_chars=RESERVED_AGENDA_CHARS)
    job_id = uuid.uuid4()
    row = JobRow(
        id=job_id,
        kind=CREATE,
        idempotency_key=checked_key(idempotency_key),
        request_digest=request_digest(CREATE, {"user_id": user, "body": body}),
        user_id=user,
        topic=ledger.topic_of(body),
        body=body,
        marker=marker.for_job(job_id),
    )
    return opts.apply(row)


def new_delete(
    meeting_id: object,
    occurrence_id: object,
    idempotency_key: object,
    opts: Options = Options(),
    *,
    after_job_id: uuid.UUID | None = None,
) -> JobRow:
    """A delete job for this meeting (or, with ``after_job_id``, its create job's), validated."""
    number = None if after_job_id else meeting_body.validate_meeting_id(meeting_id)
    occurrence_id = _occurrence(occurrence_id)
    request = {"meeting_id": number, "occurrence_id": occurrence_id}
    row = JobRow(
        id=uuid.uuid4(),
        kind=DELETE,
        idempotency_key=checked_key(idempotency_key),
        request_digest=request_digest(DELETE, request),
        meeting_id=number,
        occurrence_id=occurrence_id,
        after_job_id=after_job_id,
    )
    return opts.apply(row)


def delete_request(
    meeting_id: object, occurrence_id: object, idempotency_key: object, create_job_id: object
) -> dict[str, Any]:
    """One delete call's arguments as a bulk request: ``meeting_id`` or ``create_job_id``."""
    if (meeting_id is None) == (create_job_id is None):
        raise errors.InvalidMeeting("meeting_id", "give either meeting_id or create_job_id")
    request = {"occurrence_id": occurrence_id, "idempotency_key": idempotency_key}
    if create_job_id is None:
        return {**request, "meeting_id": meeting_id}
    return {**request, "create_job_id": create_job_id}


def delete_row(reader: Reader, request: Mapping[str, Any], opts: Options = Options()) -> JobRow:
    """A delete job for ``{"meeting_id"}`` or ``{"create_job_id"}`` (with ``occurrence_id``
    and ``idempotency_key`` optional), checked against the ledger through ``reader``: only a
    meeting this service created, or a create job it knows."""
    occurrence_id, key = request.get("occurrence_id"), request.get("idempotency_key")
    if "meeting_id" in request:
        row = new_delete(request["meeting_id"], occurrence_id, key, opts)
        check_created_here(reader, row.meeting_id, opts.account)
        return row
    create = create_job(reader, request["create_job_id"])
    if create.account != opts.account:
        raise errors.InvalidMeeting(
            "create_job_id",
            f"create job {create.id} runs under account {create.account!r}, not "
            f"{opts.account!r}: a meeting is only deleted through the credential that created it",
        )
    if create.meeting_id is None:
        row = new_delete(None, occurrence_id, key, opts, after_job_id=create.id)
    else:
        row = new_delete(create.meeting_id, occurrence_id, key, opts)
    # The caller's request names the create job, whatever that job has come to since.
    named = {"create_job_id": str(create.id), "occurrence_id": occurrence_id}
    row.request_digest = request_digest(DELETE, named)
    return row


def new_update(
    meeting_id: object,
    changes: object,
    occurrence_id: object,
    idempotency_key: object,
    opts: Options = Options(),
    *,
    now: datetime,
) -> JobRow:
    """An update job for this meeting and these changes, validated (InvalidMeeting names the
    field); its host and ``seq`` are set when it is admitted (:func:`admission.insert_rows`)."""
    number = meeting_body.validate_meeting_id(meeting_id)
    if not isinstance(changes, Mapping):
        raise errors.InvalidMeeting("changes", "must be a mapping of the fields to change")
    body = meeting_body.validate_update_body(changes, now=now)
    occurrence = _occurrence(occurrence_id)
    request = {"meeting_id": number, "occurrence_id": occurrence, "changes": body}
    row = JobRow(
        id=uuid.uuid4(),
        kind=UPDATE,
        idempotency_key=checked_key(idempotency_key),
        request_digest=request_digest(UPDATE, request),
        topic=ledger.topic_of(body),
        body=body,
        meeting_id=number,
        occurrence_id=occurrence,
    )
    return opts.apply(row)


def _occurrence(occurrence_id: object) -> str | None:
    if occurrence_id is not None and (
        not isinstance(occurrence_id, str) or not 1 <= len(occurrence_id) <= OCCURRENCE_ID_MAX
    ):
        raise errors.InvalidMeeting(
            "occurrence_id", f"must be a string of 1 to {OCCURRENCE_ID_MAX} characters, or None"
        )
    return occurrence_id


def create_job(reader: Reader, job_id: uuid.UUID | str) -> CreateJob:
    """The create job ``job_id`` names (InvalidMeeting, field ``create_job_id``, if none)."""
    try:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        raise errors.InvalidMeeting("create_job_id", "is not a job id") from None
    row = reader.execute(
        select(JobRow.id, JobRow.meeting_id, JobRow.account).where(
            JobRow.id == key, JobRow.kind == CREATE
        )
    ).one_or_none()
    if row is None:
        raise errors.InvalidMeeting("create_job_id", f"no create job {job_id}")
    return CreateJob(row.id, row.meeting_id, row.account)


@dataclass(frozen=True)
class CreateJob:
    """The create job a delete names: its id, its meeting once it has one, its credential."""

    id: uuid.UUID
    meeting_id: int | None
    account: str = DEFAULT_CREDENTIAL


def checked_key(value: object) -> str | None:
    """The idempotency key, if any, checked: a string of 1 to 255 characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 255:
        raise errors.InvalidMeeting("idempotency_key", "must be a string of 1 to 255 characters")
    return value


def check_created_here(
    reader: Reader, meeting_id: int | None, account: str = DEFAULT_CREDENTIAL
) -> None:
    """Refuse (InvalidMeeting) a meeting this service did not create: it never deletes one;
    and one created through another credential than ``account``."""
    found = reader.scalar(select(MeetingRow.account).where(MeetingRow.meeting_id == meeting_id))
    if found is None:
        raise errors.InvalidMeeting(
            "meeting_id",
            f"meeting {meeting_id} was not created by zoom-worker, which never deletes "
            "meetings it did not create",
        )
    check_same_account(meeting_id, found, account)


def check_same_account(meeting_id: int | None, owner: str, account: str) -> None:
    """Refuse (InvalidMeeting, field ``account``) a job on a meeting made through another
    credential: only the credential that created a meeting deletes or updates it."""
    if owner != account:
        raise errors.InvalidMeeting(
            "account",
            f"meeting {meeting_id} was created through account {owner!r}, not {account!r}: "
            "it is only changed or deleted through the credential that created it",
        )
