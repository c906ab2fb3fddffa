"""Which failed creates may have left a meeting behind: the orphan pass's candidates.

A create whose reply was lost and whose job then failed may have made a meeting the ledger
never heard of. Its job is a candidate when it is recent, has a marker and no meeting, and its
outcome is unknown: ``maybe_sent`` (its last request may have reached Zoom) or an error saying
it gave up. Instant meetings are left out: Zoom never lists them, so no search can find one
(their job says "outcome unknown" instead). This module only reads; :mod:`worker.cleanup`
searches with :func:`worker.marker.find`, adopts and deletes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from worker import ledger, marker, meeting_body, models
from worker.models import Job as JobRow
from worker.models import Meeting as MeetingRow


@dataclass(frozen=True)
class Lost:
    """A failed create whose meeting may exist: its job, what to look for, when it ends."""

    job_id: uuid.UUID
    wanted: marker.Wanted
    scheduled_end: datetime | None
    # The credential the create ran under: the one its host's meetings are listed with.
    account: str = models.DEFAULT_CREDENTIAL


def candidates(
    sessions: sessionmaker[Session], window: timedelta, hosts_per_run: int
) -> dict[tuple[str, str], list[Lost]]:
    """The candidates of the ``hosts_per_run`` hosts with the newest, by credential and the
    host whose meetings list would show them (``schedule_for`` when the body names one)."""
    j, m = JobRow, MeetingRow
    finished = func.coalesce(j.finished_at, j.updated_at)
    known = select(m.meeting_id).where(m.job_id == j.id, m.state != models.LIVE).exists()
    where = (
        j.kind == ledger.CREATE,
        j.status == models.FAILED,
        j.marker.is_not(None),
        j.meeting_id.is_(None),
        j.user_id.is_not(None),
        finished > func.now() - window,
        or_(j.maybe_sent, j.gave_up),
        ~known,
    )
    hosts = (
        select(j.user_id)
        .where(*where)
        .group_by(j.user_id)
        .order_by(func.max(finished).desc())
        .limit(hosts_per_run)
        .correlate(None)  # its own jobs, not the outer query's
    )
    query = select(j.id, j.user_id, j.marker, j.body, j.created_at, j.account).where(
        *where, j.user_id.in_(hosts.scalar_subquery())
    )
    with sessions() as session, session.begin():
        rows = session.execute(query).all()
    found: dict[tuple[str, str], list[Lost]] = {}
    for job_id, user_id, job_marker, body, created_at, account in rows:
        assert user_id is not None and job_marker is not None  # the query asked for both
        if (body or {}).get("type") == marker.INSTANT:
            continue
        end = meeting_body.scheduled_end(body or {}, created_at=created_at)
        lost = Lost(job_id, marker.Wanted.of(body, job_marker), end, account)
        found.setdefault((account, marker.host_of(user_id, body)), []).append(lost)
    return found
