"""Thin Celery task adapters with explicit names; the work is in :mod:`worker.meetings`.

Task kwargs carry the job id and what an operator reads in Flower (host, topic, meeting
id), never a secret, a token or a ``start_url``. Retries are Celery retries with a
countdown, so no worker process ever sleeps waiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import threading
import time
import uuid
from typing import Any

import sqlalchemy.exc
from celery import Task
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from worker import (
    celery_app,
    cleanup,
    db,
    errors,
    fleet_counters,
    jobs,
    meetings,
    metrics,
    outbox,
    priorities,
    relay,
    retention,
    webhook_events,
)
from worker.celery_app import CLEANUP_TASK, PRUNE_TASK, SWEEP_TASK, WEBHOOKS_APPLY_TASK, app
from worker.config import get_settings
from worker.outcomes import HoldReason

log = logging.getLogger(__name__)

_runtime_lock = threading.Lock()
_runtime: tuple[int, meetings.Runtime] | None = None
_relay: relay.Relay | None = None


def runtime() -> meetings.Runtime:
    """This process's Zoom client, token store, gate and ledger, built on first use after a
    fork (``meetings.Runtime.from_settings``)."""
    global _runtime  # noqa: PLW0603 - one runtime per process
    with _runtime_lock:
        if _runtime is None or _runtime[0] != os.getpid():
            work = meetings.Runtime.from_settings(get_settings(), send=celery_app.send)
            _runtime = (os.getpid(), work)
        return _runtime[1]


@worker_init.connect
def _check_settings(**_: Any) -> None:
    """Refuse to start a worker whose settings are invalid, naming the variable. A fleet
    that serves registered credentials only may leave the environment's unset, all of it."""
    settings = get_settings()
    if settings.names_no_credential:
        log.warning(
            "worker.no_environment_credential jobs run with registered credentials only "
            "(zoom-worker credentials add); a job of 'default' waits with the configuration error"
        )
        return
    try:
        settings.require_credentials()
    except errors.ConfigurationError as exc:
        raise SystemExit(f"zoom-worker: invalid configuration: {exc}") from None


@worker_process_init.connect
def _prepare_process(**_: Any) -> None:
    """Build the process's client, token store and gate before its first job."""
    runtime()


@worker_ready.connect
def _start_exporter(**_: Any) -> None:
    """Serve the fleet's figures in Prometheus form from the worker's main process."""
    metrics.start_exporter(get_settings())


@worker_ready.connect
def _start_relay(**_: Any) -> None:
    """Run the outbox relay in the worker's main process: it sends the jobs written in
    producers' transactions and the on_done notifications (one relay sends at a time)."""
    global _relay  # noqa: PLW0603 - one relay per worker process
    _relay = relay.Relay(get_settings(), celery_app.send_many).start()


@worker_shutdown.connect
def _stop_relay(**_: Any) -> None:
    if _relay is not None:
        _relay.stop()


@app.task(name="meetings.create", bind=True, max_retries=None)
def create_meeting(
    self: Task[Any, Any],
    /,
    user_id: str | None = None,
    meeting: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    job_id: str | None = None,
    topic: str | None = None,
    slot_at: float | None = None,
    priority: str | None = None,
    on_done: str | None = None,
    account: str | None = None,
    **unknown: Any,
) -> None:
    """Create a Zoom meeting for a job (sent by ``worker.jobs`` or by name).

    Unknown arguments are accepted here so that such a message is recorded as a failed job
    saying why, instead of failing before any of our code runs and being acknowledged."""
    if job_id is None:
        kwargs = {
            "user_id": user_id,
            "meeting": meeting,
            "idempotency_key": idempotency_key,
            "priority": priority,
            "on_done": on_done,
            "account": account,
        }
        job_id = _recorded(self, jobs.CREATE, kwargs, sorted(unknown))
    retry_kwargs = {"job_id": job_id, "user_id": user_id, "topic": topic, "priority": priority}
    if account is not None:
        retry_kwargs["account"] = account
    _run(self, job_id, retry_kwargs, slot_at)


@app.task(name="meetings.delete", bind=True, max_retries=None)
def delete_meeting(
    self: Task[Any, Any],
    /,
    meeting_id: int | None = None,
    occurrence_id: str | None = None,
    idempotency_key: str | None = None,
    job_id: str | None = None,
    slot_at: float | None = None,
    priority: str | None = None,
    on_done: str | None = None,
    account: str | None = None,
    **unknown: Any,
) -> None:
    """Delete a Zoom meeting this service created (sent by ``worker.jobs`` or by name).

    Unknown arguments make a failed job saying why (see ``meetings.create``)."""
    if job_id is None:
        kwargs = {
            "meeting_id": meeting_id,
            "occurrence_id": occurrence_id,
            "idempotency_key": idempotency_key,
            "priority": priority,
            "on_done": on_done,
            "account": account,
        }
        job_id = _recorded(self, jobs.DELETE, kwargs, sorted(unknown))
    retry_kwargs = {"job_id": job_id, "meeting_id": meeting_id, "priority": priority}
    if account is not None:
        retry_kwargs["account"] = account
    _run(self, job_id, retry_kwargs, slot_at)


@app.task(name="meetings.update", bind=True, max_retries=None)
def update_meeting(
    self: Task[Any, Any],
    /,
    meeting_id: int | None = None,
    changes: dict[str, Any] | None = None,
    occurrence_id: str | None = None,
    idempotency_key: str | None = None,
    job_id: str | None = None,
    slot_at: float | None = None,
    priority: str | None = None,
    on_done: str | None = None,
    account: str | None = None,
    **unknown: Any,
) -> None:
    """Update a Zoom meeting this service created (sent by ``worker.jobs`` or by name); a
    meeting's updates run one at a time in the order they were recorded (worker.updates).

    Unknown arguments make a failed job saying why (see ``meetings.create``)."""
    if job_id is None:
        kwargs = {
            "meeting_id": meeting_id,
            "changes": changes,
            "occurrence_id": occurrence_id,
            "idempotency_key": idempotency_key,
            "priority": priority,
            "on_done": on_done,
            "account": account,
        }
        job_id = _recorded(self, jobs.UPDATE, kwargs, sorted(unknown))
        return  # recording it dispatched it by id, to run in its turn
    retry_kwargs = {"job_id": job_id, "meeting_id": meeting_id, "priority": priority}
    if account is not None:
        retry_kwargs["account"] = account
    _run(self, job_id, retry_kwargs, slot_at)


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> int:
    """Dispatch again every unfinished job whose lease ran out (lost messages, dead workers),
    release the jobs held for the credentials once a probe is due or the circuit closed
    (a rotated secret is noticed here within one sweep interval), and send what the outbox
    holds unsent (the relay's safety net, worker.outbox)."""
    work = runtime()
    held = work.ledger.held_accounts(HoldReason.CREDENTIALS)
    if held:
        # Each credential's own circuit: a refused account's jobs stay held, not the others'.
        work.ledger.release_held(HoldReason.CREDENTIALS, _probe_due(work, held))
    swept = work.ledger.sweep()
    try:
        outbox.send_pending(db.sessions(get_settings()), celery_app.send_many)
    except Exception as exc:  # kombu raises many types; the rows wait for the next pass
        log.warning("outbox.send_failed the relay sends them later: %s", db.first_line(exc))
    return swept


@app.task(name=CLEANUP_TASK, ignore_result=True)
def cleanup_stale() -> dict[str, Any]:
    """Delete meetings this service created whose scheduled end is long past, and the
    orphans of failed creates (see worker.cleanup). Overlapping runs do nothing twice."""
    # End well before the next beat; what is left is picked up by the next run.
    budget_s = celery_app.cleanup_budget_s(get_settings())
    report = cleanup.cleanup_stale(runtime(), time_budget_s=budget_s)
    return dataclasses.asdict(report)


@app.task(name=WEBHOOKS_APPLY_TASK, bind=True, max_retries=None, ignore_result=True)
def apply_webhook_events(self: Task[Any, Any], /) -> int:
    """Apply the stored Zoom events not applied yet, in arrival order (queued by the
    endpoint after its commits, and by beat as a sweep); another applier's events are left
    to it. While PostgreSQL is unreachable it is retried; the rows wait meanwhile."""
    try:
        return len(webhook_events.apply_pending(db.sessions(get_settings())))
    except sqlalchemy.exc.OperationalError as exc:  # a deadlock too: nothing was applied
        countdown = min(get_settings().RETRY_BACKOFF_MAX, 2.0 ** min(self.request.retries, 8))
        raise self.retry(countdown=countdown) from exc


@app.task(name="webhooks.apply", bind=True, max_retries=None, ignore_result=True)
def apply_webhook_event(self: Task[Any, Any], /, event_id: int) -> None:
    """Apply one stored Zoom event (the messages of earlier versions, one per event; the
    endpoint now queues ``webhooks.apply_pending``); applying it again is a no-op."""
    try:
        webhook_events.apply(db.sessions(get_settings()), event_id)
    except sqlalchemy.exc.OperationalError as exc:
        countdown = min(get_settings().RETRY_BACKOFF_MAX, 2.0 ** min(self.request.retries, 8))
        raise self.retry(countdown=countdown) from exc


@app.task(name=PRUNE_TASK, ignore_result=True)
def prune() -> dict[str, Any]:
    """Delete finished jobs, token requests and spent idempotency keys past their retention,
    in small batches (see worker.retention)."""
    return dataclasses.asdict(retention.prune(get_settings()))


def _probe_due(work: meetings.Runtime, names: set[str]) -> set[str]:
    """The credentials among ``names`` whose circuit is closed or due a probe (a credential
    removed meanwhile is released too: its jobs then fail saying so)."""
    due = set()
    for name in names:
        try:
            if work.account(name).store.probe_due():
                due.add(name)
        except errors.InvalidCredential:
            due.add(name)
    return due


def _run(
    task: Task[Any, Any], job_id: str, retry_kwargs: dict[str, Any], slot_at: float | None
) -> None:
    work = runtime()
    # The attempt's counts (Zoom's answers, its duration) go to Redis in one round trip.
    with work.counters.batched() if work.counters is not None else contextlib.nullcontext():
        _attempt(task, work, job_id, retry_kwargs, slot_at)


def _attempt(
    task: Task[Any, Any],
    work: meetings.Runtime,
    job_id: str,
    retry_kwargs: dict[str, Any],
    slot_at: float | None,
) -> None:
    claim = work.ledger.claim(uuid.UUID(job_id))
    if claim is None:
        log.info("job.not_claimed job_id=%s finished, held elsewhere or not due", job_id)
        return
    started = time.monotonic()
    reschedule = meetings.run(claim, work, slot_at=slot_at)
    if work.counters is not None:
        work.counters.observe(fleet_counters.JOB_DURATION, time.monotonic() - started)
    if reschedule is not None:
        # The job's own priority (a task sent by name may have named none): its queue.
        retry_kwargs = {**retry_kwargs, "priority": claim.priority}
        if reschedule.slot_at is not None:
            retry_kwargs["slot_at"] = reschedule.slot_at
        raise task.retry(
            countdown=reschedule.countdown_s,
            kwargs=retry_kwargs,
            queue=priorities.queue_of(claim.priority),
        )


def _recorded(task: Task[Any, Any], kind: str, kwargs: dict[str, Any], unknown: list[str]) -> str:
    """Record a job sent by name; its id. While PostgreSQL cannot record it, the message is
    retried with a growing countdown (Celery publishes the retry, same task id, before the
    original is acknowledged), so it is never acknowledged as done without its job."""
    try:
        return str(jobs.record_received(kind, kwargs, str(task.request.id), unknown=unknown))
    except errors.InfrastructureError as exc:
        settings = get_settings()
        growth = 2 ** min(task.request.retries or 0, 30)
        cap = min(settings.RETRY_BACKOFF_MAX, settings.RETRY_BACKOFF_BASE * growth)
        countdown = cap / 2 + random.uniform(0, cap / 2)
        log.warning(
            "job.unrecorded task_id=%s kind=%s retry in %.1fs: %s",
            task.request.id,
            kind,
            countdown,
            exc,
        )
        raise task.retry(countdown=countdown) from exc
