"""Retention: finished jobs, token-request records and spent idempotency keys are deleted once
they are old, in small batches, so the tables stay the size of their working set.

- A job is pruned ``JOB_RETENTION_DAYS`` after it finished (succeeded, failed or cancelled),
  unless an unfinished delete job still names it (``after_job_id``). Its meeting stays in
  ``meetings`` (the cleanup's list), no longer linked to the job.
- A token request is pruned ``JOB_RETENTION_DAYS`` after it was made.
- An idempotency key (``idempotency_keys``) is pruned ``IDEMPOTENCY_KEY_DAYS`` after it was
  first used, and only once its job's row is gone: until then the same key returns the same
  job (or, once the job is pruned, its id), never a second meeting.

Each batch is one short transaction deleting at most ``batch`` rows picked with
``FOR UPDATE SKIP LOCKED``: a row a worker holds is left for the next run, and no worker
waits on the pruner for longer than one batch. Beat runs :func:`prune` every
``PRUNE_INTERVAL_MINUTES``; ``zoom-worker prune --dry-run`` counts instead of deleting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, aliased

from worker import db, models
from worker.config import Settings
from worker.models import IdempotencyKey, Job, TokenRequest, WebhookEvent

log = logging.getLogger(__name__)

BATCH = 1000


@dataclass(frozen=True)
class PruneReport:
    """Rows deleted per table (or, for a dry run, rows that would be)."""

    jobs: int
    token_requests: int
    idempotency_keys: int
    webhook_events: int
    dry_run: bool


def prune(settings: Settings, *, dry_run: bool = False, batch: int = BATCH) -> PruneReport:
    """Delete what is past its retention, ``batch`` rows per transaction; with ``dry_run``
    only count it."""
    retention = timedelta(days=settings.JOB_RETENTION_DAYS)
    key_days = timedelta(days=settings.IDEMPOTENCY_KEY_DAYS)
    delete_job = aliased(Job)
    unfinished_delete_names_it = exists().where(
        delete_job.after_job_id == Job.id,
        delete_job.status.not_in(models.FINAL_STATUSES),
    )
    # Keys are per credential (0012): a key is pruned by (account, key), never another's.
    job_is_gone = ~exists().where(
        Job.account == IdempotencyKey.account, Job.idempotency_key == IdempotencyKey.key
    )
    counts = [
        _prune(
            settings,
            Job,
            Job.id,
            [
                Job.status.in_(models.FINAL_STATUSES),
                Job.finished_at < func.now() - retention,
                ~unfinished_delete_names_it,
            ],
            dry_run=dry_run,
            batch=batch,
        ),
        _prune(
            settings,
            TokenRequest,
            TokenRequest.id,
            [TokenRequest.requested_at < func.now() - retention],
            dry_run=dry_run,
            batch=batch,
        ),
        _prune(
            settings,
            IdempotencyKey,
            (IdempotencyKey.account, IdempotencyKey.key),
            [IdempotencyKey.created_at < func.now() - key_days, job_is_gone],
            dry_run=dry_run,
            batch=batch,
        ),
        # Only applied events: an unapplied one is still owed to the ledger.
        _prune(
            settings,
            WebhookEvent,
            WebhookEvent.id,
            [
                WebhookEvent.applied_at.is_not(None),
                WebhookEvent.received_at < func.now() - retention,
            ],
            dry_run=dry_run,
            batch=batch,
        ),
    ]
    jobs, token_requests, idempotency_keys, webhook_events = counts
    report = PruneReport(jobs, token_requests, idempotency_keys, webhook_events, dry_run=dry_run)
    log.info(
        "retention.pruned jobs=%d token_requests=%d idempotency_keys=%d webhook_events=%d "
        "dry_run=%s",
        report.jobs,
        report.token_requests,
        report.idempotency_keys,
        report.webhook_events,
        dry_run,
    )
    return report


def _prune(
    settings: Settings,
    table: type[models.Base],
    key: InstrumentedAttribute[Any] | tuple[InstrumentedAttribute[Any], ...],
    old: list[ColumnElement[bool]],
    *,
    dry_run: bool,
    batch: int,
) -> int:
    sessions = db.sessions(settings)
    if dry_run:
        with sessions() as session:
            return int(session.scalar(select(func.count()).select_from(table).where(*old)) or 0)
    total = 0
    # A row is named by its key, or by several columns (a composite primary key).
    columns = key if isinstance(key, tuple) else (key,)
    named = tuple_(*columns) if isinstance(key, tuple) else key
    while True:
        picked = select(*columns).where(*old).limit(batch).with_for_update(skip_locked=True)
        with sessions() as session, session.begin():
            deleted = session.execute(
                delete(table)
                .where(named.in_(picked if isinstance(key, tuple) else picked.scalar_subquery()))
                .execution_options(synchronize_session=False)
            )
        count = int(deleted.rowcount)  # type: ignore[attr-defined]
        total += count
        if count < batch:
            return total
