"""How often the fleet asks Zoom for a token: every request recorded, grants budgeted,
failures paced.

Protocol
--------
Every request to the token endpoint is a row in ``token_requests`` (when, on the database's
clock; which host and process; why; the outcome), written by the process that made it while
it holds the credential's row lock, so requests are made one at a time.

- **Budget**: at most ``ZOOM_TOKEN_BUDGET_PER_HOUR`` tokens *granted* in any hour. Failed
  requests do not count, so a passing fault at the token endpoint cannot stop the fleet for
  an hour after Zoom recovered; churning through granted tokens does, loudly.
- **Pacing**: after N failed requests in a row the next one waits
  ``ZOOM_TOKEN_BACKOFF_MIN * 2**(N-1)`` seconds (at most ``ZOOM_TOKEN_BACKOFF_MAX``) from the
  end of the last one. Meanwhile no process asks: each raises
  :class:`~worker.errors.TokenRequestFailed` with ``retry_at`` without spending anything.

Both windows are judged on the database's clock, never a host's.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker import errors
from worker.config import Settings
from worker.models import TokenRequest

log = logging.getLogger(__name__)

OK, ERROR, REJECTED = "ok", "error", "rejected"
# Failures in a row looked at for the pause; beyond it the pause is at its maximum anyway.
STREAK_LOOKBACK = 16


class TokenBudget:
    """The budget and pacing of one credential's token requests (``credential_id``)."""

    def __init__(self, settings: Settings) -> None:
        self._per_hour = settings.ZOOM_TOKEN_BUDGET_PER_HOUR
        self._pause_min = timedelta(seconds=settings.ZOOM_TOKEN_BACKOFF_MIN)
        self._pause_max = timedelta(seconds=settings.ZOOM_TOKEN_BACKOFF_MAX)

    def check(self, session: Session, credential_id: int, now: datetime) -> None:
        """Return when a token may be requested at ``now`` (the database's clock).

        Raises TokenBudgetExhausted when the hour's grants are spent, TokenRequestFailed
        (with ``retry_at``) while the fleet waits after failed requests."""
        granted, oldest = session.execute(
            select(func.count(), func.min(TokenRequest.requested_at)).where(
                TokenRequest.credential_id == credential_id,
                TokenRequest.outcome == OK,
                TokenRequest.requested_at > now - timedelta(hours=1),
            )
        ).one()
        if granted >= self._per_hour:
            retry_at = (oldest or now) + timedelta(hours=1)
            log.error(
                "token.budget_exhausted %d tokens granted in the last hour (budget %d): "
                "no more requests until %s. Something is churning tokens; see `zoom-worker token`.",
                granted,
                self._per_hour,
                retry_at.isoformat(),
            )
            raise errors.TokenBudgetExhausted(
                f"{granted} tokens granted in the last hour reached ZOOM_TOKEN_BUDGET_PER_HOUR="
                f"{self._per_hour}; no more token requests until {retry_at:%H:%M:%S} UTC",
                retry_at=retry_at,
            )
        paused_until, failures = self._paused_until(session, credential_id)
        if paused_until is not None and paused_until > now:
            raise errors.TokenRequestFailed(
                f"the token endpoint failed {failures} times in a row; the fleet asks again "
                f"at {paused_until:%H:%M:%S} UTC",
                retry_at=paused_until,
            )

    def _paused_until(self, session: Session, credential_id: int) -> tuple[datetime | None, int]:
        recent = session.execute(
            select(TokenRequest.outcome, TokenRequest.requested_at, TokenRequest.duration_ms)
            .where(TokenRequest.credential_id == credential_id)
            .order_by(TokenRequest.id.desc())
            .limit(STREAK_LOOKBACK)
        ).all()
        failures = 0
        for outcome, _, _ in recent:
            if outcome != ERROR:
                break
            failures += 1
        if not failures:
            return None, 0
        last_at: datetime = recent[0][1]
        duration_ms: int = recent[0][2]
        pause = min(self._pause_min * 2 ** (failures - 1), self._pause_max)
        return last_at + timedelta(milliseconds=duration_ms) + pause, failures

    def record(
        self,
        session: Session,
        credential_id: int,
        requested_at: datetime,
        reason: str,
        failure: errors.ZoomError | None,
        duration_s: float,
    ) -> None:
        """Record one request: ``requested_at`` on the database's clock, ``failure`` or None."""
        outcome = OK
        if failure is not None:
            outcome = REJECTED if isinstance(failure, errors.CredentialsRejected) else ERROR
        session.add(
            TokenRequest(
                credential_id=credential_id,
                requested_at=requested_at,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                reason=reason,
                outcome=outcome,
                http_status=(failure.status or None) if failure else None,
                zoom_code=failure.code if failure else None,
                duration_ms=int(duration_s * 1000),
                error=failure.describe() if failure else None,
            )
        )
        log.info("token.requested reason=%s outcome=%s", reason, outcome)

    @staticmethod
    def counts(session: Session, credential_id: int) -> tuple[int, int, int]:
        """Requests in the last hour and day, and failed ones in the last day."""
        now = func.now()
        hour, day, failures = session.execute(
            select(
                func.count().filter(TokenRequest.requested_at > now - timedelta(hours=1)),
                func.count(),
                func.count().filter(TokenRequest.outcome != OK),
            ).where(
                TokenRequest.credential_id == credential_id,
                TokenRequest.requested_at > now - timedelta(days=1),
            )
        ).one()
        return int(hour), int(day), int(failures)
