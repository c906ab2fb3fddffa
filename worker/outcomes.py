"""What one attempt of a job came to, as a value the ledger records.

:func:`worker.meetings.decide` turns a failure into one of these (a pure function, tested as
a table); a successful call makes a :class:`Succeeded`; :meth:`worker.ledger.Ledger.record`
writes any of them in one place. Nothing downstream recovers a decision from message text:
the cleanup reads ``jobs.gave_up``, the sweeper reads ``jobs.held_for`` (a :class:`HoldReason`).

- :class:`Succeeded`: the meeting was made (or adopted), or deleted (or already gone).
- :class:`Retry`: the attempt failed; run again at ``at``. ``transient`` failures (Zoom or
  our infrastructure unwell) are bounded by the time budget ``JOB_GIVE_UP_AFTER`` counted
  from the first failed attempt; the others (an unexpected error: a bug or an unknown answer)
  by ``JOB_MAX_ATTEMPTS``.
- :class:`Hold`: nothing failed, the job waits until ``at`` (rate limits, the credential
  circuit, the host's daily cap, a meeting's update cap, the token budget, a configuration
  error, a create a delete depends on, a Zoom outage the whole fleet waits out, the rate
  governor's Redis out of reach). Time held does not count against the give-up budget, except
  for a Zoom outage
  (``HoldReason.counts_as_failing``).
- :class:`Failed`: final. ``gave_up`` when a budget ran out rather than Zoom refusing the job.

Every non-success carries ``maybe_sent``: the create's last request may have made a meeting,
so the next attempt (or the cleanup, after a failure) looks for it by its marker first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from worker import models


class HoldReason(enum.StrEnum):
    """Why a job waits without failing; stored in ``jobs.held_for`` (at most 16 characters)."""

    RATE_LIMIT = "rate_limit"  # no governor permit yet, or Zoom answered 429
    HOST_DAILY = "host_daily"  # the host's daily create/update cap, until 00:00 UTC
    CREDENTIALS = "credentials"  # the credential circuit is open; released by the sweeper
    TOKEN_BUDGET = "token_budget"  # noqa: S105 - not a secret; ZOOM_TOKEN_BUDGET_PER_HOUR is spent
    CONFIGURATION = "configuration"  # a setting is wrong; an operator fixes it
    CREATE_PENDING = "create_pending"  # a delete waits for the create job it names
    ZOOM_OUTAGE = "zoom_outage"  # the outage breaker is open: Zoom fails for the whole fleet
    GOVERNOR = "governor"  # the rate governor's Redis cannot be reached: no permit, no call
    MEETING_UPDATES = "meeting_updates"  # the meeting's 100 updates in 24 hours are spent

    @property
    def counts_as_failing(self) -> bool:
        """True when time held counts against ``JOB_GIVE_UP_AFTER``: a Zoom outage is real
        failing time (the fleet just waits it out together), the other holds are not."""
        return self is HoldReason.ZOOM_OUTAGE

    @property
    def status(self) -> str:
        """The job status shown while held: ``retrying`` for the short rate-limit waits (as
        before this module existed), ``waiting`` for the holds an operator may need to see."""
        if self in (HoldReason.RATE_LIMIT, HoldReason.CREATE_PENDING):
            return models.RETRYING
        return models.WAITING


@dataclass(frozen=True)
class Succeeded:
    """The job did what it was for. For a create, ``meeting_id`` is the meeting made (or
    adopted, ``note`` says so); for a delete, the meeting deleted, or None when there was
    nothing to delete (``note`` says why)."""

    meeting_id: int | None
    join_url: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Retry:
    """The attempt failed; try again at ``at`` (``slot_at``: a rate permit reserved for it)."""

    at: datetime
    reason: str
    transient: bool
    maybe_sent: bool = False
    slot_at: float | None = None


@dataclass(frozen=True)
class Hold:
    """Nothing failed: the job waits until ``at`` for ``why``; ``reason`` is for people."""

    at: datetime
    why: HoldReason
    reason: str
    maybe_sent: bool = False
    slot_at: float | None = None


@dataclass(frozen=True)
class Failed:
    """The job failed for good; ``reason`` is in words an operator understands."""

    reason: str
    gave_up: bool = False
    maybe_sent: bool = False


Outcome = Succeeded | Retry | Hold | Failed


@dataclass(frozen=True)
class Reschedule:
    """Run the task again after ``countdown_s`` (a broker countdown, never past the
    visibility timeout); ``slot_at`` is a rate permit reserved for that run."""

    countdown_s: float
    slot_at: float | None = None
