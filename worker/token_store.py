"""The shared access token: one per credential, for every process on every host.

Protocol
--------
1. A process keeps the token it last used in memory and uses it while it has more than
   ``ZOOM_TOKEN_REFRESH_MARGIN`` seconds left: no database round trip per job.
2. Otherwise one thread of the process (a module-level single flight, so threads never queue
   on the database) reads the ``credentials`` row. A stored token with more than the margin
   left is adopted.
3. A token that is only expiring soon is renewed by whichever process gets the row lock with
   ``NOWAIT``; the others keep using the old token meanwhile. A missing or expired token
   makes callers wait on ``SELECT ... FOR UPDATE`` with a bounded ``lock_timeout``; after the
   lock is granted the row is read again, and a token renewed meanwhile is used as is. So N
   processes on M hosts that need a token at once make exactly one token request.
4. A 401 (code 124) invalidates compare-and-swap style: the stored token is cleared only if
   it is still the one that failed, so twenty simultaneous 401s cause one renewal.
5. Every token request is recorded in ``token_requests`` (when, which host and process, why,
   outcome), and at most ``ZOOM_TOKEN_BUDGET_PER_HOUR`` are made in any hour.
6. The circuit breaker: when Zoom refuses the credential itself (the token endpoint says
   invalid client or app disabled, or a token fetched moments ago is refused on first use),
   the circuit opens. Every process then stops calling Zoom and stops fetching tokens for it
   and raises :class:`~worker.errors.CircuitOpen` with what an operator should do. One
   process at a time probes (half-open) after a backoff of at least a minute, or at once when
   the secret changes; the first call that succeeds with the probe's token closes it.

Tokens are encrypted at rest with AES-GCM, under ``TOKEN_ENCRYPTION_KEY`` or, when none is
set, a key derived from the client secret, so a rotated secret simply forces a new token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import httpx
import psycopg.errors
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from worker import errors, zoom
from worker.config import Settings
from worker.models import Credential, TokenRequest

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

# Per process: the token each credential last used, and one single flight for renewals.
_memory: dict[tuple[str, str, str], zoom.AccessToken] = {}
_flight = threading.Lock()


def _after_fork() -> None:
    global _flight  # noqa: PLW0603 - a lock held across fork would stay held in the child
    _memory.clear()
    _flight = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


@dataclass(frozen=True)
class TokenStatus:
    """What ``zoom-worker token`` shows: never the token or the secret."""

    account_id: str
    client_id: str
    expires_at: datetime | None
    fetched_at: datetime | None
    requests_last_hour: int
    requests_last_day: int
    failures_last_day: int
    circuit_state: str
    circuit_reason: str | None
    next_probe_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


class TokenStore:
    """The shared token for the configured credential; implements ``zoom.TokenSource``."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        http: httpx.Client | None = None,
    ) -> None:
        self._settings = settings
        self._account_id, self._client_id = settings.require_credentials()
        self._sessions = session_factory
        self._http = http or httpx.Client(headers={"User-Agent": "zoom-worker"})
        self._key = (settings.DATABASE_URL, self._account_id, self._client_id)
        self._margin_s = settings.ZOOM_TOKEN_REFRESH_MARGIN

    def close(self) -> None:
        """Close the token endpoint's pooled connections."""
        self._http.close()

    # -- zoom.TokenSource ---------------------------------------------------------------

    def get(self) -> zoom.AccessToken:
        """A token with more than the refresh margin left, renewing it if needed."""
        token = _memory.get(self._key)
        if token is not None and token.seconds_left() > self._margin(token):
            return token
        if token is not None and token.seconds_left() > 0:
            # Only expiring soon: if another thread is renewing, keep using this one meanwhile.
            if not _flight.acquire(blocking=False):
                return token
        else:
            settings = self._settings
            wait_s = settings.ZOOM_TOKEN_LOCK_TIMEOUT * 2 + settings.ZOOM_TOKEN_REQUEST_TIMEOUT
            if not _flight.acquire(timeout=wait_s):
                raise errors.TokenStoreBusy(f"no token after waiting {wait_s:.0f}s in this process")
        try:
            token = _memory.get(self._key)
            if token is not None and token.seconds_left() > self._margin(token):
                return token
            token = self._renew()
            _memory[self._key] = dataclasses.replace(token, fetched_here=False)
            return token
        finally:
            _flight.release()

    def invalidate(self, token: zoom.AccessToken) -> None:
        """Forget ``token`` here, and in the store only if it is still the stored one."""
        if (cached := _memory.get(self._key)) is not None and cached.value == token.value:
            _memory.pop(self._key, None)
        with self._sessions() as session, session.begin():
            session.execute(
                update(Credential)
                .where(*self._where(), Credential.token_sha256 == _sha256(token.value))
                .values(token_ciphertext=None, token_sha256=None, token_expires_at=None)
            )

    def refused(self, token: zoom.AccessToken, error: errors.ZoomError) -> NoReturn:
        """Open the circuit: a token fetched moments ago was refused by Zoom."""
        _memory.pop(self._key, None)
        with self._sessions() as session, session.begin():
            row = self._lock_row(session, nowait=False)
            if row.token_sha256 == _sha256(token.value):
                _clear_token(row)
            self._open_circuit(row, error)
            reason, retry_at = row.circuit_reason or OPERATOR_ADVICE, row.circuit_next_probe_at
        raise errors.CircuitOpen(reason, retry_at=retry_at) from error

    def accepted(self, token: zoom.AccessToken) -> None:
        """A freshly fetched token worked: close a half-open circuit (no-op when closed)."""
        with self._sessions() as session, session.begin():
            result = session.execute(
                update(Credential)
                .where(*self._where(), Credential.circuit_state != CLOSED)
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

    # -- status and probing --------------------------------------------------------------

    def status(self) -> TokenStatus:
        """Expiry, token requests in the last hour and day, circuit state and last error."""
        now = datetime.now(UTC)
        with self._sessions() as session:
            row = self._row(session)
            counts = session.execute(
                select(
                    func.count().filter(TokenRequest.requested_at > now - timedelta(hours=1)),
                    func.count(),
                    func.count().filter(TokenRequest.outcome != "ok"),
                ).where(
                    TokenRequest.credential_id == row.id,
                    TokenRequest.requested_at > now - timedelta(days=1),
                )
            ).one()
            return TokenStatus(
                account_id=self._account_id,
                client_id=self._client_id,
                expires_at=row.token_expires_at,
                fetched_at=row.token_fetched_at,
                requests_last_hour=counts[0],
                requests_last_day=counts[1],
                failures_last_day=counts[2],
                circuit_state=row.circuit_state,
                circuit_reason=row.circuit_reason,
                next_probe_at=row.circuit_next_probe_at,
                last_error=row.last_error,
                last_error_at=row.last_error_at,
            )

    def probe_due(self) -> bool:
        """True when the circuit is closed, or open with a probe due (time, or a new secret)."""
        with self._sessions() as session:
            row = self._row(session)
            return row.circuit_state == CLOSED or self._probe_due(row)

    # -- internals -----------------------------------------------------------------------

    def _renew(self) -> zoom.AccessToken:
        with self._sessions() as session:
            with session.begin():
                row = self._row(session)
                self._raise_if_open(row, locked=False)
                stored = self._decrypt(row)
                if stored is not None and stored.seconds_left() > self._margin(stored):
                    return stored
                if stored is not None and stored.seconds_left() > 0:
                    try:
                        row = self._lock_row(session, nowait=True)
                    except errors.TokenStoreBusy:
                        return stored  # another process is renewing; this one still works
                else:
                    row = self._lock_row(session, nowait=False)
                # Checked again under the lock: another process may have renewed meanwhile.
                stored = self._decrypt(row)
                if stored is not None and stored.seconds_left() > self._margin(stored):
                    return stored
                self._raise_if_open(row, locked=True)
                reason = "missing" if stored is None else "expiring"
                if row.circuit_state != CLOSED:
                    reason = "probe"
                self._check_budget(session, row)
                token, failure = self._fetch(session, row, reason)
            if failure is not None:
                raise failure
            assert token is not None
            return token

    def _margin(self, token: zoom.AccessToken) -> float:
        # Never more than half the token's life, or a short-lived token would be renewed on
        # every call.
        lifetime_s = (token.expires_at - token.fetched_at).total_seconds()
        return min(float(self._margin_s), lifetime_s / 2)

    def _fetch(
        self, session: Session, row: Credential, reason: str
    ) -> tuple[zoom.AccessToken | None, errors.ZoomWorkerError | None]:
        """Request a token while holding the row lock; record the request either way."""
        started = time.monotonic()
        outcome, status, code, message = "ok", None, None, None
        token: zoom.AccessToken | None = None
        failure: errors.ZoomWorkerError | None = None
        try:
            grant = zoom.request_token(
                self._http,
                self._settings.ZOOM_OAUTH_URL,
                account_id=self._account_id,
                client_id=self._client_id,
                client_secret=self._settings.read_client_secret(),
                timeout_s=self._settings.ZOOM_TOKEN_REQUEST_TIMEOUT,
            )
        except errors.ZoomError as exc:
            failure = exc
            outcome = "rejected" if isinstance(exc, errors.CredentialsRejected) else "error"
            status, code, message = exc.status or None, exc.code, exc.describe()
        else:
            token = grant.token
            row.token_ciphertext = self._encrypt(token.value)
            row.token_sha256 = _sha256(token.value)
            row.token_expires_at = token.expires_at
            row.token_fetched_at = token.fetched_at
            row.scope = grant.scope
        session.add(
            TokenRequest(
                credential_id=row.id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                reason=reason,
                outcome=outcome,
                http_status=status,
                zoom_code=code,
                duration_ms=int((time.monotonic() - started) * 1000),
                error=message,
            )
        )
        row.updated_at = datetime.now(UTC)
        if isinstance(failure, errors.CredentialsRejected):
            self._open_circuit(row, failure)
            failure = errors.CircuitOpen(
                row.circuit_reason or OPERATOR_ADVICE, retry_at=row.circuit_next_probe_at
            )
        elif failure is not None:
            row.last_error, row.last_error_at = message, datetime.now(UTC)
        log.info("token.requested reason=%s outcome=%s", reason, outcome)
        return token, failure

    def _open_circuit(self, row: Credential, error: errors.ZoomError) -> None:
        now = datetime.now(UTC)
        probes = row.circuit_probes if row.circuit_state == HALF_OPEN else 0
        backoff = _probe_backoff(probes)
        row.circuit_reason = f"Zoom refused the credential: {error.describe()}. {OPERATOR_ADVICE}"
        if row.circuit_state == CLOSED:
            row.circuit_opened_at = now
        row.circuit_state = OPEN
        row.circuit_probes = probes
        row.circuit_next_probe_at = now + backoff
        row.circuit_secret_digest = self._secret_digest()
        row.last_error, row.last_error_at = error.describe(), now
        row.updated_at = now
        log.error(
            "token.circuit_open %s next_probe_at=%s", error.describe(), row.circuit_next_probe_at
        )

    def _raise_if_open(self, row: Credential, *, locked: bool) -> None:
        if row.circuit_state == CLOSED:
            return
        if not self._probe_due(row):
            raise errors.CircuitOpen(
                row.circuit_reason or OPERATOR_ADVICE, retry_at=row.circuit_next_probe_at
            )
        if locked:
            # This process probes; the others keep waiting until the probe's outcome.
            row.circuit_state = HALF_OPEN
            row.circuit_probes += 1
            row.circuit_next_probe_at = datetime.now(UTC) + _probe_backoff(row.circuit_probes)
            row.circuit_secret_digest = self._secret_digest()

    def _probe_due(self, row: Credential) -> bool:
        if row.circuit_state == HALF_OPEN:
            due_at = row.circuit_next_probe_at
            return due_at is None or due_at <= datetime.now(UTC)
        if row.circuit_secret_digest != self._secret_digest():
            return True
        return row.circuit_next_probe_at is None or row.circuit_next_probe_at <= datetime.now(UTC)

    def _check_budget(self, session: Session, row: Credential) -> None:
        budget = self._settings.ZOOM_TOKEN_BUDGET_PER_HOUR
        since = datetime.now(UTC) - timedelta(hours=1)
        made, oldest = session.execute(
            select(func.count(), func.min(TokenRequest.requested_at)).where(
                TokenRequest.credential_id == row.id, TokenRequest.requested_at > since
            )
        ).one()
        if made >= budget:
            retry_at = (oldest or datetime.now(UTC)) + timedelta(hours=1)
            log.error(
                "token.budget_exhausted %d token requests in the last hour (budget %d): "
                "no more until %s. Something is churning tokens; see `zoom-worker token`.",
                made,
                budget,
                retry_at.isoformat(),
            )
            raise errors.TokenBudgetExhausted(
                f"{made} token requests in the last hour reached ZOOM_TOKEN_BUDGET_PER_HOUR="
                f"{budget}; no more token requests until {retry_at:%H:%M:%S} UTC",
                retry_at=retry_at,
            )

    def _where(self) -> tuple[ColumnElement[bool], ...]:
        return (Credential.account_id == self._account_id, Credential.client_id == self._client_id)

    def _row(self, session: Session) -> Credential:
        row = session.scalars(select(Credential).where(*self._where())).one_or_none()
        if row is None:
            session.execute(
                insert(Credential)
                .values(account_id=self._account_id, client_id=self._client_id)
                .on_conflict_do_nothing()
            )
            row = session.scalars(select(Credential).where(*self._where())).one()
        return row

    def _lock_row(self, session: Session, *, nowait: bool) -> Credential:
        if not nowait:
            timeout_ms = int(self._settings.ZOOM_TOKEN_LOCK_TIMEOUT * 1000)
            session.execute(text(f"SET LOCAL lock_timeout = {timeout_ms}"))
        query = (
            select(Credential)
            .where(*self._where())
            .with_for_update(nowait=nowait)
            .execution_options(populate_existing=True)
        )
        try:
            return session.scalars(query).one()
        except OperationalError as exc:
            if isinstance(exc.orig, psycopg.errors.LockNotAvailable):
                raise errors.TokenStoreBusy(
                    "the token row lock was not granted within "
                    f"ZOOM_TOKEN_LOCK_TIMEOUT={self._settings.ZOOM_TOKEN_LOCK_TIMEOUT}s"
                ) from exc
            raise errors.InfrastructureError(f"the token store failed: {exc.orig!s}") from exc

    def _cipher(self) -> AESGCM:
        material = (
            self._settings.TOKEN_ENCRYPTION_KEY.get_secret_value()
            if self._settings.TOKEN_ENCRYPTION_KEY is not None
            else self._settings.read_client_secret()
        )
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"zoom-worker token store",
            info=f"{self._account_id}:{self._client_id}".encode(),
        ).derive(material.encode())
        return AESGCM(key)

    def _encrypt(self, value: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._cipher().encrypt(nonce, value.encode(), self._aad())

    def _decrypt(self, row: Credential) -> zoom.AccessToken | None:
        if not row.token_ciphertext or row.token_expires_at is None or row.token_fetched_at is None:
            return None
        blob = row.token_ciphertext
        try:
            value = self._cipher().decrypt(blob[:12], blob[12:], self._aad()).decode()
        except InvalidTag:
            # Encrypted under another key (the secret or TOKEN_ENCRYPTION_KEY changed).
            return None
        return zoom.AccessToken(
            value=value, expires_at=row.token_expires_at, fetched_at=row.token_fetched_at
        )

    def _aad(self) -> bytes:
        return f"{self._account_id}:{self._client_id}".encode()

    def _secret_digest(self) -> str:
        try:
            secret = self._settings.read_client_secret()
        except errors.ConfigurationError:
            return ""
        return hashlib.sha256(b"zoom-worker secret digest:" + secret.encode()).hexdigest()[:32]


def _probe_backoff(probes: int) -> timedelta:
    """The wait before the next probe: a minute, doubling per failed probe, at most 15."""
    backoff: timedelta = min(PROBE_BACKOFF_MIN * (2**probes), PROBE_BACKOFF_MAX)
    return backoff


def _clear_token(row: Credential) -> None:
    row.token_ciphertext = None
    row.token_sha256 = None
    row.token_expires_at = None


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def forget_process_tokens() -> None:
    """Drop every token this process holds in memory (tests, secret rotation)."""
    _memory.clear()
