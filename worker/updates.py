"""Update jobs: one ``PATCH /meetings/{meetingId}`` per job, in the order they were enqueued.

Protocol
--------
1. **Enqueue.** :func:`worker.jobs.update_meeting` validates the changes like a create body
   (:func:`worker.meeting_body.validate_update_body`: every field optional, unknown fields and
   a past ``start_time`` refused) and, in one transaction, locks the ledger's meeting row,
   refuses a meeting this service did not create or that is gone, takes the next
   ``meetings.update_seq`` and writes the job with it as ``jobs.seq``
   (:func:`worker.admission.insert_rows`). Two producers updating one meeting are thus
   serialised on that row: ``seq`` is the order their updates committed in.
2. **Turn.** :meth:`worker.ledger.Ledger.claim` takes an update only when no update of its
   meeting with a lower ``seq`` is unfinished, inside the claim's compare-and-swap: with any
   number of workers, redeliveries and sweeps, one update of a meeting runs at a time, in
   ``seq`` order. A message for an update whose turn has not come claims nothing and costs
   no attempt; when an update ends (succeeded, or failed for good: a failed update does not
   block the next for ever) the ledger dispatches the next one at once, and the sweeper
   dispatches it again should that message be lost.
3. **Call.** :func:`patch` passes the gate (Zoom's light category, the host's daily
   creates/updates and the meeting's 100 updates in 24 hours: a cap holds the job, never
   fails it), fences the claim and sends the PATCH. Retries, holds and give-up budgets are
   those of every job (:func:`worker.meetings.decide`).
4. **Record.** On success :func:`worker.recording.record_updated` carries the topic and
   schedule into the meeting row and moves its ``scheduled_end``, so the cleanup's date moves
   with a reschedule.

Updates are not merged: each job is one PATCH, so each job's outcome is its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from worker import errors, ledger, zoom
from worker.outcomes import Failed, Outcome, Succeeded

log = logging.getLogger("worker.meetings")

Permit = Callable[[str, str | None, int | None], None]
"""Passes the gate for (operation, host, meeting id) or raises (``_Attempt._permit``)."""


def patch(
    job: ledger.Claim,
    client: zoom.ZoomClient,
    work: ledger.Ledger,
    permit: Permit,
    admit: Callable[[str], None],
) -> Outcome:
    """Send the update job's PATCH; its outcome (a failure raises, for ``decide``). ``admit``
    is the gate's last word before the request leaves (``Gate.admit``)."""
    meeting_id = job.meeting_id
    assert meeting_id is not None and job.body is not None, "an update names a meeting"
    if work.gone(meeting_id, job.occurrence_id):
        # Zoom's webhook (or a delete job) said so: no call, no permit, no update spent.
        log.info("meeting.update_of_gone job_id=%s meeting_id=%s", job.job_id, meeting_id)
        return Failed(f"meeting {meeting_id} is gone from Zoom; nothing to update")
    permit("update", job.user_id, meeting_id)
    work.fence(job)
    admit("update")  # last, so the call leaves as the pacing admits it
    try:
        client.update_meeting(meeting_id, job.body, occurrence_id=job.occurrence_id)
    except errors.MeetingNotFound:
        log.info("meeting.update_of_gone job_id=%s meeting_id=%s", job.job_id, meeting_id)
        return Failed(f"Zoom says meeting {meeting_id} does not exist (any more)")
    log.info("meeting.updated job_id=%s meeting_id=%s", job.job_id, meeting_id)
    return Succeeded(meeting_id)
