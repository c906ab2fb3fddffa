"""The producers' API for asyncio applications (FastAPI, aiohttp): the twins of
:mod:`worker.jobs`, on SQLAlchemy's asyncio extension with psycopg 3's async driver (the same
``DATABASE_URL``, ``postgresql+psycopg://``).

The same validation, idempotency keys and outbox semantics as the sync calls, with the same
code: rows are built by :mod:`worker.job_requests` and :mod:`worker.bulk`, and written by
:func:`worker.enqueue.record_in` through ``run_sync`` (SQLAlchemy runs the sync code on the
event loop's own connection, in a greenlet, with no thread pool). Celery publishes
synchronously, so nothing here touches the broker: each new job is written with its dispatch
in the outbox, and the relay (:mod:`worker.relay`, in every worker) sends it within moments
of the commit. With ``session=`` (an ``AsyncSession`` or ``AsyncConnection``) the job is
written in the caller's transaction, uncommitted; a rollback leaves no job.

Engines are made per event loop, on first use; call :func:`dispose` before the loop ends
(an application's shutdown hook) to close their connections.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from worker import (
    admission,
    bulk,
    db,
    enqueue,
    errors,
    job_requests,
    jobs,
    ledger,
    outbox,
    priorities,
    waiting,
)
from worker.config import Settings, get_settings
from worker.job_view import Job
from worker.models import Job as JobRow

__all__ = [
    "cancel_job",
    "create_meeting",
    "create_meetings",
    "delete_meeting",
    "delete_meetings",
    "dispose",
    "get_job",
    "retry_job",
    "wait_for_job",
]

T = TypeVar("T")
AsyncTransaction = AsyncSession | AsyncConnection
"""The caller's asyncio transaction a producer writes in (``session=``)."""

_lock = threading.Lock()
_engines: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]
] = weakref.WeakKeyDictionary()


async def create_meeting(
    user_id: str,
    meeting: Mapping[str, Any],
    idempotency_key: str | None = None,
    *,
    on_done: str | None = None,
    session: AsyncTransaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> uuid.UUID:
    """:func:`worker.jobs.create_meeting`: the job is recorded, and the relay queues it."""
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)
    rows = [job_requests.new_create(user_id, meeting, idempotency_key, opts)]
    return (await _write(session, lambda transaction: enqueue.record_in(transaction, rows)))[0]


async def delete_meeting(
    meeting_id: int | None = None,
    occurrence_id: str | None = None,
    idempotency_key: str | None = None,
    *,
    create_job_id: uuid.UUID | str | None = None,
    on_done: str | None = None,
    session: AsyncTransaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> uuid.UUID:
    """:func:`worker.jobs.delete_meeting`: the job is recorded, and the relay queues it."""
    request = job_requests.delete_request(meeting_id, occurrence_id, idempotency_key, create_job_id)
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)

    def write(transaction: Session | Connection) -> list[uuid.UUID]:
        return enqueue.record_in(transaction, [job_requests.delete_row(transaction, request, opts)])

    return (await _write(session, write))[0]


async def update_meeting(
    meeting_id: int,
    changes: Mapping[str, Any],
    occurrence_id: str | None = None,
    idempotency_key: str | None = None,
    *,
    on_done: str | None = None,
    session: AsyncTransaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> uuid.UUID:
    """:func:`worker.jobs.update_meeting`: the job is recorded, and the relay queues it."""
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)
    row = job_requests.new_update(
        meeting_id, changes, occurrence_id, idempotency_key, opts, now=datetime.now(UTC)
    )
    return (await _write(session, lambda transaction: enqueue.record_in(transaction, [row])))[0]


async def create_meetings(
    requests: Sequence[Mapping[str, Any]],
    *,
    on_done: str | None = None,
    session: AsyncTransaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> list[uuid.UUID]:
    """:func:`worker.jobs.create_meetings`: all validated first, recorded in one transaction."""
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)
    rows = bulk.create_rows(requests, opts)
    return await _write(session, lambda transaction: enqueue.record_in(transaction, rows))


async def delete_meetings(
    requests: Sequence[Mapping[str, Any]],
    *,
    on_done: str | None = None,
    session: AsyncTransaction | None = None,
    priority: str = priorities.DEFAULT,
    account: str | None = None,
) -> list[uuid.UUID]:
    """:func:`worker.jobs.delete_meetings`: all checked first, recorded in one transaction."""
    checked = bulk.checked_deletes(requests)
    opts = job_requests.options(on_done=on_done, priority=priority, account=account)

    def write(transaction: Session | Connection) -> list[uuid.UUID]:
        return enqueue.record_in(transaction, bulk.delete_rows(transaction, checked, opts))

    return await _write(session, write)


async def get_job(job_id: uuid.UUID | str) -> Job | None:
    """:func:`worker.jobs.get_job`: the job's current state, or None when there is none."""
    try:
        key = jobs.job_key(job_id)
    except errors.InvalidMeeting:
        return None
    with db.unavailable_as_infrastructure():
        async with sessions(get_settings())() as session:
            row = await session.get(JobRow, key)
            return Job.from_row(row) if row is not None else None


async def cancel_job(job_id: uuid.UUID | str) -> Job:
    """:func:`worker.jobs.cancel_job`, with the same refusals."""
    key = jobs.job_key(job_id)
    return await _own(lambda session: Job.from_row(admission.cancel_in(session, key)))


async def retry_job(job_id: uuid.UUID | str) -> Job:
    """:func:`worker.jobs.retry_job`, with the same refusals; the relay queues the job."""
    key, settings = jobs.job_key(job_id), get_settings()

    def requeue(session: Session) -> Job:
        row = admission.requeue_failed_in(session, key, jobs.check_retryable, settings)
        outbox.add_dispatches(session, [(row.id, ledger.message_of(row))])
        return Job.from_row(row)

    return await _own(requeue)


async def wait_for_job(job_id: uuid.UUID | str, timeout: float = 60.0) -> Job:
    """:func:`worker.jobs.wait_for_job`: woken by LISTEN/NOTIFY (:mod:`worker.waiting`)."""
    key, settings = jobs.job_key(job_id), get_settings()
    deadline = time.monotonic() + timeout
    try:
        async with await psycopg.AsyncConnection.connect(
            waiting.conninfo(settings), autocommit=True, **db.connect_args(settings)
        ) as connection:
            await connection.execute(f"LISTEN {waiting.CHANNEL}")
            while True:
                found = await (await connection.execute(waiting.STATUS, (key,))).fetchone()
                final, remaining = waiting.settled(found, key, deadline, timeout)
                if final is not None:
                    break
                async for note in connection.notifies(timeout=remaining):
                    if note.payload == str(key):
                        break
    except psycopg.OperationalError as exc:
        raise errors.InfrastructureError(f"the database failed: {db.first_line(exc)}") from exc
    job = await get_job(key)
    if job is None:
        raise errors.InvalidMeeting("job_id", f"no job {key}")
    return job


def sessions(settings: Settings) -> async_sessionmaker[AsyncSession]:
    """This event loop's session factory for ``DATABASE_URL`` (bounded as :mod:`worker.db`'s)."""
    loop = asyncio.get_running_loop()
    with _lock:
        per_loop = _engines.setdefault(loop, {})
        entry = per_loop.get(settings.DATABASE_URL)
        if entry is None:
            engine = create_async_engine(
                settings.DATABASE_URL,
                pool_size=5,
                max_overflow=10,
                pool_timeout=settings.DATABASE_CONNECT_TIMEOUT,
                connect_args=db.connect_args(settings),
                hide_parameters=True,
            )
            entry = (engine, async_sessionmaker(engine, expire_on_commit=False))
            per_loop[settings.DATABASE_URL] = entry
        return entry[1]


async def dispose() -> None:
    """Close this event loop's pooled connections (an application's shutdown, tests)."""
    with _lock:
        engines = [engine for engine, _ in _engines.pop(asyncio.get_running_loop(), {}).values()]
    for engine in engines:
        await engine.dispose()


async def _write(session: AsyncTransaction | None, work: Callable[[Session | Connection], T]) -> T:
    """Run ``work`` in the caller's transaction, or in one of ours that commits."""
    with db.unavailable_as_infrastructure():
        if session is not None:
            return await session.run_sync(work)
        async with sessions(get_settings())() as own, own.begin():
            return await own.run_sync(work)


async def _own(work: Callable[[Session], T]) -> T:
    """Run ``work`` in a transaction of ours that commits."""
    with db.unavailable_as_infrastructure():
        async with sessions(get_settings())() as own, own.begin():
            return await own.run_sync(work)
