"""The credential circuit: stop calling Zoom while it refuses the credential itself.

Protocol
--------
The state lives on the ``credentials`` row, so every process on every host sees it, and is
judged on the database's clock (the ``now`` each caller read with the row).

- **closed**: calls flow.
- **open**: Zoom refused the credential (the token endpoint said invalid client or app
  disabled, or a token fetched moments ago was refused on first use). No process calls Zoom
  or asks for a token; each raises :class:`~worker.errors.CircuitOpen` with
  :data:`OPERATOR_ADVICE` and the time of the next probe.
- **half-open**: a probe is due (the backoff ran out, or the client secret changed, which is
  what an operator's fix looks like). The one process that holds the row lock takes the probe
  and fetches a token; the others keep waiting. The probe's backoff doubles from a minute to
  at most 15 minutes per refused probe.
- The first call Zoom accepts with the probe's token closes the circuit.

The token store calls in here while it holds the row lock; this module never makes a request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, update
from sqlalchemy.orm import Session

from worker import errors
from worker.models import Credential

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
PROBE_BACKOFF_MIN = timedelta(minutes=1)
PROBE_BACKOFF_MAX = timedelta(minutes=15)
OPERATOR_ADVICE = (
    "Zoom refuses this app's credentials even with a fresh token, so fetching more tokens "
    "cannot help. Likely causes: the app was deactivated or disabled, its owner's role was "
    "lowered (admin scopes removed), or the app's ownership was transferred (completed by "
    "rotating the client secret). What to do: check the app in the Zoom App Marketplace, "
    "rotate its client secret and put the new one in ZOOM_CLIENT_SECRET_FILE (or "
    "ZOOM_CLIENT_SECRET, then restart). Waiting jobs resume by themselves once Zoom accepts it."
)
REGISTERED_ADVICE = (
    "Zoom refuses this app's credentials even with a fresh token, so fetching more tokens "
    "cannot help. Likely causes: the app was deactivated or disabled, its owner's role was "
    "lowered (admin scopes removed), or the app's ownership was transferred (completed by "
    "rotating the client secret). What to do: check the app in the Zoom App Marketplace, "
    "rotate its client secret and run `zoom-worker credentials rotate {name}` (or `apps "
    "rotate` for a user's app); that probes at once, and waiting jobs resume once Zoom accepts it."
)


def probe_backoff(probes: int) -> timedelta:
    """The wait before the next probe: a minute, doubling per refused probe, at most 15."""
    backoff: timedelta = min(PROBE_BACKOFF_MIN * (2 ** min(probes, 16)), PROBE_BACKOFF_MAX)
    return backoff


class Circuit:
    """The circuit of one credential; ``secret_digest`` names the secret in force for a row
    (a change makes a probe due at once), ``advice`` is what the operator is told."""

    def __init__(
        self, secret_digest: Callable[[Credential], str], advice: str = OPERATOR_ADVICE
    ) -> None:
        self._secret_digest = secret_digest
        self._advice = advice

    def check(self, row: Credential, now: datetime, *, locked: bool) -> None:
        """Return when a token may be fetched; raise CircuitOpen while the circuit is open.

        With the row ``locked``, a due probe is taken: the row turns half-open, so the other
        processes keep waiting until this probe's outcome (or its own backoff runs out)."""
        if row.circuit_state == CLOSED:
            return
        if not self.probe_due(row, now):
            raise self.error(row)
        if locked:
            row.circuit_state = HALF_OPEN
            row.circuit_probes += 1
            row.circuit_next_probe_at = now + probe_backoff(row.circuit_probes)
            row.circuit_secret_digest = self._secret_digest(row)

    def probe_due(self, row: Credential, now: datetime) -> bool:
        """True when an open circuit may be probed now: its time came, or the secret changed."""
        if row.circuit_state != HALF_OPEN and row.circuit_secret_digest != self._secret_digest(row):
            return True
        return row.circuit_next_probe_at is None or row.circuit_next_probe_at <= now

    def open(self, row: Credential, error: errors.ZoomError, now: datetime) -> errors.CircuitOpen:
        """Open the circuit on the (locked) row; returns the CircuitOpen for the caller to raise."""
        probes = row.circuit_probes if row.circuit_state == HALF_OPEN else 0
        row.circuit_reason = f"Zoom refused the credential: {error.describe()}. {self._advice}"
        if row.circuit_state == CLOSED:
            row.circuit_opened_at = now
        row.circuit_state = OPEN
        row.circuit_probes = probes
        row.circuit_next_probe_at = now + probe_backoff(probes)
        row.circuit_secret_digest = self._secret_digest(row)
        row.last_error, row.last_error_at = error.describe(), now
        row.updated_at = now
        log.error(
            "token.circuit_open %s next_probe_at=%s", error.describe(), row.circuit_next_probe_at
        )
        return self.error(row)

    def close(self, session: Session, where: tuple[ColumnElement[bool], ...]) -> None:
        """Zoom accepted a token fetched for a probe: close the circuit (no-op when closed)."""
        result = session.execute(
            update(Credential)
            .where(*where, Credential.circuit_state != CLOSED)
            .values(
                circuit_state=CLOSED,
                circuit_reason=None,
                circuit_probes=0,
                circuit_next_probe_at=None,
                updated_at=func.now(),
            )
        )
        if result.rowcount:  # type: ignore[attr-defined]
            log.warning("token.circuit_closed Zoom accepts the credential again")

    def error(self, row: Credential) -> errors.CircuitOpen:
        """What a caller raises while the circuit is open: the reason, advice and next probe."""
        return errors.CircuitOpen(
            row.circuit_reason or self._advice, retry_at=row.circuit_next_probe_at
        )
