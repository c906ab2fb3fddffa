"""Where every producer's validated jobs go: recorded, then put on the broker.

One path for every producer call (single or bulk, sync or :mod:`worker.aio`), so a job row
is built in one place (:mod:`worker.job_requests`) and dispatched from one place:

- :func:`record_and_publish`: our own transaction (:func:`worker.admission.insert_many`),
  then the new jobs are published by the caller's process, as one batch on one broker
  connection. A publish that fails leaves them to the sweeper (``JOB_LEASE_SECONDS``).
- :func:`record_in`: the caller's transaction (a SQLAlchemy ``Session`` or ``Connection`` on
  the same database), under a savepoint so a refused batch leaves nothing in it. Nothing is
  committed or published here: each new job's dispatch is written to the outbox in the same
  transaction, and the relay (:mod:`worker.relay`) sends it once the caller commits. A
  rollback leaves no job and no message.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from worker import admission, celery_app, db, ledger, outbox
from worker.config import get_settings
from worker.models import Job as JobRow

log = logging.getLogger(__name__)

Transaction = Session | Connection
"""The caller's transaction a producer writes in (``session=``)."""


def enqueue(rows: Sequence[JobRow], transaction: Transaction | None) -> list[uuid.UUID]:
    """Record the jobs and have them dispatched: by this process (``transaction`` None) or by
    the relay after the caller's commit. Returns the job ids in order (a reused idempotency
    key gives its earlier job's id)."""
    if not rows:
        return []
    with db.unavailable_as_infrastructure():
        if transaction is None:
            return record_and_publish(rows)
        return record_in(transaction, rows)


def record_and_publish(rows: Sequence[JobRow]) -> list[uuid.UUID]:
    """Record the jobs in a transaction of our own, then publish the new ones."""
    admitted = admission.insert_many(rows, get_settings())
    fresh = [row for row, (_, created) in zip(rows, admitted, strict=True) if created]
    if fresh:
        publish(fresh)
    return [job_id for job_id, _ in admitted]


def record_in(transaction: Transaction, rows: Sequence[JobRow]) -> list[uuid.UUID]:
    """Record the jobs and their dispatch in the caller's transaction (see the module)."""
    if not rows:
        return []
    with transaction.begin_nested():
        admitted = admission.insert_rows(transaction, rows, get_settings())
        fresh = [row for row, (_, created) in zip(rows, admitted, strict=True) if created]
        outbox.add_dispatches(transaction, [(row.id, ledger.message_of(row)) for row in fresh])
    log.info("job.recorded_in_transaction count=%d", len(fresh))
    return [job_id for job_id, _ in admitted]


def publish(rows: Sequence[JobRow]) -> None:
    """Put the jobs on the broker in one batch; a failure leaves them to the sweeper."""
    try:
        celery_app.send_many([ledger.message_of(row) for row in rows])
    except Exception as exc:  # kombu raises many types; the ledger rows are what counts
        log.warning(
            "job.dispatch_failed count=%d the sweeper will dispatch them again: %s",
            len(rows),
            type(exc).__name__,
        )
