"""The outbox: Celery tasks written in the same transaction as what they announce, and put
on the broker once that transaction has committed.

Protocol
--------
1. **Write.** A row is added in the writer's own transaction, so a rollback leaves none:

   - a job's *dispatch* (:func:`add_dispatches`), when a producer wrote the job in its
     caller's transaction (``session=``) or from asyncio (:mod:`worker.aio`), which never
     publishes itself;
   - a job's *notification* (:func:`job_finished`), when a job that names an ``on_done``
     task reaches a final status (succeeded, failed or cancelled), written in the transaction
     that records that status. Its row id is the ``notification_id`` the task receives.

2. **Wake.** A trigger (migration 0009) sends ``NOTIFY`` on :data:`CHANNEL` when rows are
   added; PostgreSQL delivers it at commit. The relay (:mod:`worker.relay`) listens.
3. **Send.** :func:`send_pending` locks unsent rows ``FOR UPDATE SKIP LOCKED``, oldest first,
   publishes them in one batch, and sets ``sent_at`` in that transaction, which commits only
   after the broker accepted every message. A broker that refuses leaves the rows unsent for
   the next pass; a process that dies between the publish and the commit leaves them to be
   sent again. So each message is sent at least once, never lost, and a repeat carries the
   same ``notification_id``; two senders never send one row at the same time.

A job run again (:func:`worker.jobs.retry_job`) reaches a new outcome, so it gets a new
notification with a new id. Sent rows are kept with their job and pruned with it
(``ON DELETE CASCADE``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker import models
from worker.job_view import Job
from worker.models import Job as JobRow
from worker.models import OutboxMessage

log = logging.getLogger(__name__)

CHANNEL = "zoom_worker_outbox"
# Rows sent per transaction by one pass of the relay.
BATCH = 500

Message = tuple[str, dict[str, Any]]
"""A task name and its kwargs."""
SendMany = Callable[[Sequence[Message]], None]
"""Publishes (task name, kwargs) pairs, raising when the broker refused any
(``worker.celery_app.send_many``)."""


def add_dispatches(
    transaction: Session | Connection, messages: Sequence[tuple[uuid.UUID, Message]]
) -> None:
    """Queue the dispatch of new jobs, (job id, :func:`worker.ledger.message`) each, in the
    caller's transaction."""
    values = [
        {"id": uuid.uuid4(), "job_id": job_id, "task": task, "kwargs": kwargs}
        for job_id, (task, kwargs) in messages
    ]
    if values:
        transaction.execute(insert(OutboxMessage), values)


def job_finished(session: Session | Connection, job_id: uuid.UUID) -> None:
    """Queue the notification of the job's outcome to its ``on_done`` task, if it names one;
    called in the transaction that records the final status (an ORM session or, on the
    workers' hot path, a Core connection: the row is read with Core either way)."""
    jobs = JobRow.__table__.c
    row = session.execute(select(*JobRow.__table__.columns).where(jobs.id == job_id)).one()
    if row.on_done is None or row.status not in models.FINAL_STATUSES:
        return
    notification_id = uuid.uuid4()
    kwargs = {"notification_id": str(notification_id), "job": Job.from_row(row).as_payload()}  # type: ignore[arg-type]
    session.execute(
        insert(OutboxMessage).values(
            id=notification_id, job_id=row.id, task=row.on_done, kwargs=kwargs
        )
    )
    log.info(
        "job.notification_recorded job_id=%s notification_id=%s status=%s",
        row.id,
        notification_id,
        row.status,
    )


def send_pending(sessions: sessionmaker[Session], send_many: SendMany, batch: int = BATCH) -> int:
    """Send every unsent row, ``batch`` per transaction; returns how many were sent. A broker
    failure raises, leaving the rows of the failed batch unsent."""
    sent = 0
    while True:
        with sessions() as session, session.begin():
            rows = session.execute(
                select(OutboxMessage.id, OutboxMessage.task, OutboxMessage.kwargs)
                .where(OutboxMessage.sent_at.is_(None))
                .order_by(OutboxMessage.created_at)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return sent
            send_many([(task, kwargs) for _, task, kwargs in rows])
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_([row_id for row_id, _, _ in rows]))
                .values(sent_at=func.now())
            )
        sent += len(rows)
        log.info("outbox.sent count=%d", len(rows))
        if len(rows) < batch:
            return sent


def pending(session: Session) -> int:
    """How many rows wait to be sent (``zoom-worker doctor``, tests)."""
    return (
        session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
        )
        or 0
    )
