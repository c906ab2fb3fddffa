"""Zoom's event notifications in the ledger: each stored once, applied once, never backwards.

Protocol
--------
1. **Store.** :func:`store_many` inserts events into ``webhook_events`` before Zoom is
   answered, keyed by :attr:`Event.digest`, in one multi-row ``INSERT ... ON CONFLICT DO
   NOTHING`` (the endpoint's group commit: :mod:`worker.group_commit`): Zoom's body has no
   event id and Zoom delivers some events twice, so a second delivery of one event stores
   nothing and changes nothing. The row is the durable record of the event.
2. **Apply.** :func:`apply_pending` (the ``webhooks.apply_pending`` task, queued after the
   endpoint's commits and run by beat as a sweep) takes unapplied event rows in arrival
   order ``FOR UPDATE SKIP LOCKED`` and their meetings' rows ``FOR UPDATE``, decides each
   with :func:`~worker.webhook_rules.decide` (a pure function of the event, the meeting row
   and the newest event applied to that meeting), writes the meeting and stamps the event
   with ``applied_at`` and its :class:`Effect`, one transaction per batch. Applying twice is
   a no-op; two appliers never apply one event twice.
3. **Never backwards.** Zoom's events arrive out of order. A state event (deleted, started,
   ended) older (``event_ts``) than the newest state event applied to its meeting changes
   nothing (``stale``). ``meeting.updated`` carries only the fields that changed, so an older
   one still sets the fields no newer applied update (nor a newer update job of ours,
   ``meetings.field_updated_ts``) set, and only those. A meeting the ledger has as deleted
   stays deleted, unless a newer ``meeting.recovered`` says it was restored from the trash.
   Occurrence deletions only ever add and are applied in any order.

Events for meetings this service did not create are stored and ignored (``foreign``).
Besides :mod:`worker.ledger`, :mod:`worker.recording` and :mod:`worker.cleanup`, this module
writes the ``meetings`` table: its ``state``, ``topic`` and schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from worker import models
from worker.models import Meeting as MeetingRow
from worker.models import WebhookEvent as EventRow
from worker.webhook_rules import (
    DELETED,
    ENDED,
    ORDERED,
    PERMANENTLY_DELETED,
    RECOVERED,
    RECURRING_TYPES,
    SCHEDULE_FIELDS,
    STARTED,
    STATE_EVENTS,
    UPDATED,
    URL_VALIDATION,
    Change,
    Effect,
    Event,
    MeetingState,
    decide,
)

# The rules (events, effects, decide) live in worker.webhook_rules, pure; they are this
# module's as well, for callers that store and apply.
__all__ = [
    "DELETED",
    "ENDED",
    "ORDERED",
    "PERMANENTLY_DELETED",
    "RECOVERED",
    "RECURRING_TYPES",
    "SCHEDULE_FIELDS",
    "STARTED",
    "STATE_EVENTS",
    "UPDATED",
    "URL_VALIDATION",
    "Change",
    "Effect",
    "Event",
    "MeetingState",
    "StoredEvent",
    "apply",
    "apply_pending",
    "decide",
    "is_gone",
    "recent",
    "store",
    "store_many",
]

log = logging.getLogger(__name__)


def store(session: Session, event: Event) -> int | None:
    """Insert ``event`` unless it was stored before; its row id, or None for a duplicate."""
    return store_many(session, [event])[0]


def store_many(session: Session, events: Sequence[Event]) -> list[int | None]:
    """Insert ``events`` in ONE multi-row ``INSERT ... ON CONFLICT DO NOTHING`` (the caller
    commits once): for each, its new row id, or None for a duplicate (stored before, or
    earlier in ``events``)."""
    rows: dict[str, dict[str, Any]] = {}
    for event in events:
        rows.setdefault(event.digest, _row(event))
    if not rows:
        return []
    # Sorted: two groups holding the same events (a delivery and Zoom's retry, in two
    # processes) wait on each other's digests in one order, never in a deadlock.
    ordered = [rows[digest] for digest in sorted(rows)]
    statement = (
        insert(EventRow)
        .on_conflict_do_nothing(index_elements=[EventRow.digest])
        .returning(EventRow.digest, EventRow.id)
    )
    # An executemany with RETURNING: SQLAlchemy sends it as one multi-row INSERT.
    result = session.execute(statement, ordered)
    stored: dict[str, int] = {digest: row_id for digest, row_id in result}
    ids: list[int | None] = []
    for event in events:
        ids.append(stored.pop(event.digest, None))  # a second copy in one group: None
    return ids


def _row(event: Event) -> dict[str, Any]:
    return {
        "digest": event.digest,
        "event": event.event,
        "event_ts": event.event_ts,
        "account_id": event.account_id,
        "meeting_id": event.meeting_id,
        "occurrence_ids": list(event.occurrence_ids) or None,
        "payload": dict(event.body),
    }


def apply(sessions: sessionmaker[Session], event_id: int) -> Effect | None:
    """Apply one stored event to the ledger; its effect, or None when it was already applied
    (or another applier holds it now). (The ``webhooks.apply`` task of earlier versions.)"""
    with sessions() as session, session.begin():
        row = session.execute(
            select(EventRow)
            .where(EventRow.id == event_id, EventRow.applied_at.is_(None))
            .with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        if row is None:
            return None
        return _apply_rows(session, [row])[0]


def apply_pending(
    sessions: sessionmaker[Session], batch: int = 50, most: int = 2000
) -> list[Effect]:
    """Apply the events not applied yet, in arrival order, ``batch`` per transaction, until
    none is left that no other applier holds (or ``most`` were applied); their effects.

    Each transaction takes its events ``FOR UPDATE SKIP LOCKED`` (two appliers never share
    one) and then their meetings' rows ``FOR UPDATE`` in ``meeting_id`` order (two appliers
    never wait on each other in a cycle). A small ``batch`` keeps those meeting rows locked
    briefly (a few tens of ms): an update job or ``update_meeting`` waits on them meanwhile."""
    effects: list[Effect] = []
    while len(effects) < most:
        with sessions() as session, session.begin():
            rows = list(
                session.execute(
                    select(EventRow)
                    .where(EventRow.applied_at.is_(None))
                    .order_by(EventRow.received_at, EventRow.id)
                    .limit(min(batch, most - len(effects)))
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if not rows:
                break
            effects += _apply_rows(session, rows)
    return effects


def _apply_rows(session: Session, rows: Sequence[EventRow]) -> list[Effect]:
    """Apply locked, unapplied event rows in their order, in the caller's transaction."""
    meeting_ids = sorted({r.meeting_id for r in rows if r.meeting_id is not None})
    meetings: dict[int, MeetingRow] = {}
    if meeting_ids:
        meetings = {
            m.meeting_id: m
            for m in session.execute(
                select(MeetingRow)
                .where(MeetingRow.meeting_id.in_(meeting_ids))
                .order_by(MeetingRow.meeting_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).scalars()
        }
    effects = []
    for row in rows:
        meeting = meetings.get(row.meeting_id) if row.meeting_id is not None else None
        effects.append(_apply_row(session, row, meeting))
    return effects


def _apply_row(session: Session, row: EventRow, meeting: MeetingRow | None) -> Effect:
    event = Event.parse(row.payload)
    if meeting is None:
        change = Change(Effect.FOREIGN)  # decide's first case, without reading the ledger
    else:
        newer, newest = frozenset[str](), None
        if event.event == UPDATED:
            newer = _newer_fields(session, row) | _set_since(meeting, row.event_ts)
        elif event.event in STATE_EVENTS and not event.occurrence_ids:
            newest = _newest_ts(session, row.meeting_id)  # only these are ever stale
        change = decide(event, _state(meeting), newest, newer)
    if change.values and meeting is not None:
        for name, value in change.values.items():
            setattr(meeting, name, value)
        if change.values.get("state") == models.DELETED:
            meeting.deleted_at = func.now()  # the database's clock, as the ledger writes it
    row.applied_at = datetime.now(UTC)
    row.effect = change.effect.value
    # No flush here: the session's autoflush writes this before the next query that could
    # read it (the next event of this meeting), and the commit writes the rest in one go.
    log.info(
        "webhook.applied event_id=%s event=%s meeting_id=%s effect=%s",
        row.id,
        event.event,
        event.meeting_id,
        change.effect.value,
    )
    return change.effect


def _state(row: MeetingRow | None) -> MeetingState | None:
    if row is None:
        return None
    return MeetingState(row.state, row.start_time, row.duration_min, row.scheduled_end)


def _newest_ts(session: Session, meeting_id: int | None) -> int | None:
    if meeting_id is None:
        return None
    return session.execute(
        select(func.max(EventRow.event_ts)).where(
            EventRow.meeting_id == meeting_id,
            EventRow.applied_at.is_not(None),
            EventRow.effect.in_([effect.value for effect in ORDERED]),
        )
    ).scalar_one_or_none()


def _set_since(meeting: MeetingRow | None, event_ts: int) -> frozenset[str]:
    """The schedule fields our own update jobs set after ``event_ts``: Zoom's notice of an
    older change (our own PATCH's included) never undoes a newer update."""
    stamps = (meeting.field_updated_ts or {}) if meeting is not None else {}
    return frozenset(name for name, ts in stamps.items() if ts > event_ts)


def _newer_fields(session: Session, row: EventRow) -> frozenset[str]:
    """The schedule fields that applied updates newer than ``row`` set."""
    payloads = session.execute(
        select(EventRow.payload).where(
            EventRow.meeting_id == row.meeting_id,
            EventRow.event_ts > row.event_ts,
            EventRow.effect == Effect.UPDATED.value,
        )
    ).scalars()
    fields: set[str] = set()
    for payload in payloads:
        obj = payload.get("payload", {}).get("object", {})
        fields |= {k for k in SCHEDULE_FIELDS if k in obj}
    return frozenset(fields)


def is_gone(session: Session, meeting_id: int, occurrence_id: str | None) -> bool:
    """Whether the ledger knows the meeting (or this occurrence of it) is gone from Zoom: its
    row says deleted, or Zoom's webhook said the occurrence was deleted."""
    state = session.execute(
        select(MeetingRow.state).where(MeetingRow.meeting_id == meeting_id)
    ).scalar_one_or_none()
    if state == models.DELETED or occurrence_id is None:
        return state == models.DELETED
    found = session.execute(
        select(EventRow.id)
        .where(
            EventRow.meeting_id == meeting_id,
            EventRow.effect == Effect.OCCURRENCES_DELETED.value,
            EventRow.occurrence_ids.contains([occurrence_id]),
        )
        .limit(1)
    ).scalar_one_or_none()
    return found is not None


@dataclass(frozen=True)
class StoredEvent:
    """One stored event as operators see it (``zoom-worker events``)."""

    id: int
    event: str
    event_ts: datetime
    meeting_id: int | None
    account_id: str | None
    received_at: datetime
    applied_at: datetime | None
    effect: str | None


def recent(sessions: sessionmaker[Session], limit: int = 50) -> list[StoredEvent]:
    """The most recently received events, newest first."""
    with sessions() as session:
        rows = session.execute(select(EventRow).order_by(EventRow.id.desc()).limit(limit)).scalars()
        return [
            StoredEvent(
                id=r.id,
                event=r.event,
                event_ts=datetime.fromtimestamp(r.event_ts / 1000, UTC),
                meeting_id=r.meeting_id,
                account_id=r.account_id,
                received_at=r.received_at,
                applied_at=r.applied_at,
                effect=r.effect,
            )
            for r in rows
        ]
