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
4. A failed renewal keeps serving the stored token until it really expires. Failed requests
   are paced fleet-wide and do not spend the hourly budget (:mod:`worker.token_budget`).
5. Zoom's verdict comes back through :meth:`TokenStore.report`. A refused token (401 code
   124) is invalidated compare-and-swap style: cleared only if it is still the stored one,
   so twenty simultaneous 401s cause one renewal. A token this process fetched and Zoom
   refuses on first use means the credential itself is refused: the circuit opens
   (:mod:`worker.circuit`). The first acceptance of a token fetched here closes it.
6. Expiry is judged on the database's clock when the row is read, carried on as a monotonic
   deadline in memory: a host whose wall clock lags never keeps an expired token.

Every credential has its own row, memory slot, single flight, circuit and budget: the
environment's (``default``) and each registered one (:mod:`worker.token_grants` says how each
asks for a token; a user's refresh token is rotated under the same lock and single flight).
Tokens are encrypted at rest (:mod:`worker.token_cipher`), so a rotated secret simply forces
a new token.
Every write to the row sets ``lock_timeout``: a frozen holder makes others wait, never hang.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import psycopg.errors
from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from worker import errors, oauth, token_budget, token_cipher, token_grants
from worker.circuit import CLOSED as CLOSED  # noqa: PLC0414 - re-exported for metrics
from worker.config import Settings
from worker.models import DEFAULT_CREDENTIAL, Credential

log = logging.getLogger(__name__)

_Key = tuple[str, str, str, str]
# Failures of a renewal after which a token that has not expired yet is still served.
_TRANSIENT = (
    errors.InfrastructureError,
    errors.TokenBudgetExhausted,
    errors.TokenRequestFailed,
    errors.ZoomUnreachable,
)
# Per process: the token each credential last used; the digest of a token this process
# fetched that Zoom has not judged yet; one single flight per credential for renewals.
_memory: dict[_Key, oauth.AccessToken] = {}
_fresh: dict[_Key, str] = {}
_flights: dict[_Key, threading.Lock] = {}
_flights_guard = threading.Lock()


def _flight(key: _Key) -> threading.Lock:
    with _flights_guard:
        return _flights.setdefault(key, threading.Lock())


def _after_fork() -> None:
    global _flights_guard  # noqa: PLW0603 - a lock held across fork would stay held in the child
    _memory.clear()
    _fresh.clear()
    _flights.clear()
    _flights_guard = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


@dataclass(frozen=True)
class TokenStatus:
    """What ``zoom-worker token`` shows: never the token or the secret."""

    name: str
    kind: str
    status: str
    status_reason: str | None
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


@dataclass(frozen=True)
class _Read:
    """The row, the database's clock when it was read, and this process's monotonic clock
    just before: a stored expiry becomes a monotonic deadline without the host's wall clock."""

    row: Credential
    now: datetime
    monotonic: float


class Unconfigured:
    """The environment's credential in a fleet that only serves registered ones (no
    ``ZOOM_ACCOUNT_ID``, ``ZOOM_CLIENT_ID`` or secret set): a job of ``default`` is held with
    the configuration error naming the missing setting, as a job of a half-set one is."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def get(self) -> oauth.AccessToken:
        self._settings.require_credentials()
        raise AssertionError("require_credentials raises for an unset credential")

    def report(self, token: oauth.AccessToken, accepted: bool, *, renewed: bool = False) -> None:
        """Never called: no token is ever handed out."""

    def probe_due(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to close."""


class TokenStore:
    """The shared token of one credential (``credential``: a registered name, or ``default``
    for the environment's); implements ``zoom.TokenSource``."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        http: httpx.Client | None = None,
        credential: str = DEFAULT_CREDENTIAL,
    ) -> None:
        self._settings = settings
        self._grants = token_grants.Grants.load(settings, session_factory, credential)
        self._account_id, self._client_id = self._grants.account_id, self._grants.client_id
        self._sessions = session_factory
        self._http = http or httpx.Client(headers={"User-Agent": "zoom-worker"})
        self._key = (settings.DATABASE_URL, credential, self._account_id, self._client_id)
        self._cipher = self._grants.cipher()
        self._circuit = self._grants.circuit()
        self._budget = token_budget.TokenBudget(settings)

    def close(self) -> None:
        """Close the token endpoint's pooled connections."""
        self._http.close()

    # -- zoom.TokenSource ---------------------------------------------------------------

    def get(self) -> oauth.AccessToken:
        """A token with more than the refresh margin left, renewing it if needed; while a
        renewal fails, the current token until it expires."""
        token = _memory.get(self._key)
        if token is not None and token.seconds_left() > self._margin(token):
            return token
        flight = _flight(self._key)
        if token is not None and token.seconds_left() > 0:
            # Only expiring soon: if another thread is renewing, keep using this one meanwhile.
            if not flight.acquire(blocking=False):
                return token
        else:
            settings = self._settings
            wait_s = settings.ZOOM_TOKEN_LOCK_TIMEOUT * 2 + settings.ZOOM_TOKEN_REQUEST_TIMEOUT
            if not flight.acquire(timeout=wait_s):
                raise errors.TokenStoreBusy(f"no token after waiting {wait_s:.0f}s in this process")
        try:
            held = _memory.get(self._key)
            if held is not None and held.seconds_left() > self._margin(held):
                return held
            try:
                token = self._renew()
            except _TRANSIENT:
                if held is not None and held.seconds_left() > 0:
                    return held  # the store is unwell, but this token still works
                raise
            _memory[self._key] = token
            return token
        finally:
            flight.release()

    def report(self, token: oauth.AccessToken, accepted: bool, *, renewed: bool = False) -> None:
        """Zoom accepted or refused ``token``; a refusal of a token fetched here moments ago,
        or of the one a call's renewal gave it (whichever process fetched that: one renewal
        and one retry, then stop), opens the circuit and raises CircuitOpen; any other
        refusal invalidates it."""
        fresh = _fresh.get(self._key) == _sha256(token.value)
        if fresh:
            _fresh.pop(self._key, None)
        if accepted:
            if fresh:
                self._accepted(token)
            return
        if not (fresh or renewed):
            self.invalidate(token)
            return
        _memory.pop(self._key, None)
        refusal = errors.CredentialsRejected(
            "a token fetched moments ago was refused"
            if fresh
            else "a renewed token was refused as well",
            status=httpx.codes.UNAUTHORIZED,
        )
        with self._write() as session:
            read = self._read(session, lock="wait")
            if read.row.token_sha256 == _sha256(token.value):
                _clear_token(read.row)
            opened = self._circuit.open(read.row, refusal, read.now)
        raise opened from refusal

    def _accepted(self, token: oauth.AccessToken) -> None:
        # Never raises: the call Zoom accepted may have made a meeting, and an error here
        # would read as "nothing was sent". Not closed now, the next acceptance tries again.
        try:
            with self._write() as session:
                self._circuit.close(session, self._where())
        except errors.InfrastructureError as exc:
            _fresh[self._key] = _sha256(token.value)
            log.warning("token.circuit_close_deferred %s", exc)

    def invalidate(self, token: oauth.AccessToken) -> None:
        """Forget ``token`` here, and in the store only if it is still the stored one."""
        if (cached := _memory.get(self._key)) is not None and cached.value == token.value:
            _memory.pop(self._key, None)
        with self._write() as session:
            session.execute(
                update(Credential)
                .where(*self._where(), Credential.token_sha256 == _sha256(token.value))
                .values(token_ciphertext=None, token_sha256=None, token_expires_at=None)
            )

    # -- status and probing --------------------------------------------------------------

    def status(self) -> TokenStatus:
        """Expiry, token requests in the last hour and day, circuit state and last error."""
        with self._sessions() as session:
            row = self._read(session).row
            hour, day, failures = self._budget.counts(session, row.id)
            return TokenStatus(
                name=self._grants.name,
                kind=row.kind,
                status=row.status,
                status_reason=row.status_reason,
                account_id=self._account_id,
                client_id=self._client_id,
                expires_at=row.token_expires_at,
                fetched_at=row.token_fetched_at,
                requests_last_hour=hour,
                requests_last_day=day,
                failures_last_day=failures,
                circuit_state=row.circuit_state,
                circuit_reason=row.circuit_reason,
                next_probe_at=row.circuit_next_probe_at,
                last_error=row.last_error,
                last_error_at=row.last_error_at,
            )

    def probe_due(self) -> bool:
        """True when the circuit is closed, or open with a probe due (time, or a new secret)."""
        with self._sessions() as session:
            read = self._read(session)
            return read.row.circuit_state == CLOSED or self._circuit.probe_due(read.row, read.now)

    # -- internals -----------------------------------------------------------------------

    def _renew(self) -> oauth.AccessToken:
        outcome: oauth.AccessToken | errors.ZoomWorkerError
        with self._sessions() as session:
            with session.begin():
                read = self._read(session)
                self._grants.check_usable(read.row)
                self._circuit.check(read.row, read.now, locked=False)
                stored = self._cipher.read(read.row, read.now, read.monotonic)
                if stored is not None and stored.seconds_left() > self._margin(stored):
                    return stored
                usable = stored if stored is not None and stored.seconds_left() > 0 else None
                try:
                    # Only expiring soon: one renewer, the others keep the stored token.
                    read = self._read(session, lock="nowait" if usable else "wait")
                except errors.TokenStoreBusy:
                    if usable is None:
                        raise
                    return usable
                # Checked again under the lock: another process may have renewed meanwhile.
                stored = self._cipher.read(read.row, read.now, read.monotonic)
                if stored is not None and stored.seconds_left() > self._margin(stored):
                    return stored
                usable = stored if stored is not None and stored.seconds_left() > 0 else None
                outcome = self._renew_locked(session, read, usable)
            # Raised after the commit, so the failed request stays recorded.
            if isinstance(outcome, errors.ZoomWorkerError):
                raise outcome
            return outcome

    def _renew_locked(
        self, session: Session, read: _Read, usable: oauth.AccessToken | None
    ) -> oauth.AccessToken | errors.ZoomWorkerError:
        row = read.row
        self._grants.check_usable(row)
        self._circuit.check(row, read.now, locked=False)
        reason = "missing" if usable is None else "expiring"
        if row.circuit_state != CLOSED:
            reason = "probe"
        try:
            self._budget.check(session, row.id, read.now)
        except (errors.TokenBudgetExhausted, errors.TokenRequestFailed) as exc:
            return exc if usable is None else usable
        self._circuit.check(row, read.now, locked=True)  # a due probe is this process's
        outcome = self._fetch(session, row, reason)
        if isinstance(outcome, errors.CredentialUnavailable):
            _memory.pop(self._key, None)
            return outcome
        if isinstance(outcome, errors.TokenRequestFailed | errors.ZoomUnreachable) and usable:
            log.warning("token.renewal_failed keeping the current token until it expires")
            return usable
        return outcome

    def _margin(self, token: oauth.AccessToken) -> float:
        # Never more than half the token's life, or a short-lived token would be renewed on
        # every call.
        return min(float(self._settings.ZOOM_TOKEN_REFRESH_MARGIN), token.lifetime_s() / 2)

    def _fetch(
        self, session: Session, row: Credential, reason: str
    ) -> oauth.AccessToken | errors.ZoomWorkerError:
        """Request a token while holding the row lock; record the request either way. A
        user's new refresh token is put on the row here, committed with the access token."""
        requested_at = session.scalars(select(func.clock_timestamp())).one()
        started = time.monotonic()
        try:
            grant = self._grants.request(session, row, self._http)
        except errors.ZoomError as exc:
            failure: errors.ZoomError | None = exc
        else:
            failure = None
            # Its life counted on the database's clock from before the request: never longer.
            token = dataclasses.replace(
                grant.token,
                fetched_at=requested_at,
                expires_at=requested_at + timedelta(seconds=grant.expires_in_s),
            )
            self._cipher.write(row, token)
            self._grants.keep(row, grant)
            _fresh[self._key] = _sha256(token.value)
            row.scope = grant.scope
        self._budget.record(
            session, row.id, requested_at, reason, failure, time.monotonic() - started
        )
        row.updated_at = requested_at
        if isinstance(failure, errors.CredentialsRejected):
            return self._circuit.open(row, failure, requested_at)
        if isinstance(failure, errors.GrantRefused):
            _clear_token(row)
            row.last_error, row.last_error_at = failure.describe(), requested_at
            return self._grants.refused(row, failure, requested_at)
        if failure is not None:
            row.last_error, row.last_error_at = failure.describe(), requested_at
            return failure
        return token

    def _where(self) -> tuple[ColumnElement[bool], ...]:
        return self._grants.where()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        """A transaction whose row locks wait at most ZOOM_TOKEN_LOCK_TIMEOUT (then
        TokenStoreBusy); any other database failure is an InfrastructureError."""
        lock_timeout_s = self._settings.ZOOM_TOKEN_LOCK_TIMEOUT
        try:
            with self._sessions() as session, session.begin():
                _set_lock_timeout(session, lock_timeout_s)
                yield session
        except OperationalError as exc:
            raise _translate(exc, lock_timeout_s) from exc

    def _read(self, session: Session, *, lock: str | None = None) -> _Read:
        """The row (made if missing) with the database's clock; ``lock`` is "wait" (bounded
        by ZOOM_TOKEN_LOCK_TIMEOUT) or "nowait"; TokenStoreBusy when it is not granted."""
        if lock == "wait":
            _set_lock_timeout(session, self._settings.ZOOM_TOKEN_LOCK_TIMEOUT)
        query = select(Credential, func.clock_timestamp()).where(*self._where())
        if lock is not None:
            query = query.with_for_update(nowait=lock == "nowait")
        query = query.execution_options(populate_existing=True)
        started = time.monotonic()
        try:
            found = session.execute(query).one_or_none()
            if found is None and self._grants.registered:
                raise errors.InvalidCredential(
                    "account", f"the credential {self._grants.name!r} was removed"
                )
            if found is None:
                session.execute(
                    insert(Credential)
                    .values(account_id=self._account_id, client_id=self._client_id)
                    .on_conflict_do_nothing()
                )
                found = session.execute(query).one()
        except OperationalError as exc:
            raise _translate(exc, self._settings.ZOOM_TOKEN_LOCK_TIMEOUT) from exc
        return _Read(row=found[0], now=found[1], monotonic=started)


def _set_lock_timeout(session: Session, seconds: float) -> None:
    session.execute(text(f"SET LOCAL lock_timeout = {int(seconds * 1000)}"))


def _translate(exc: OperationalError, lock_timeout_s: float) -> errors.InfrastructureError:
    if isinstance(exc.orig, psycopg.errors.LockNotAvailable):
        return errors.TokenStoreBusy(
            f"the token row lock was not granted within ZOOM_TOKEN_LOCK_TIMEOUT={lock_timeout_s}s"
        )
    return errors.InfrastructureError(f"the token store failed: {exc.orig!s}")


def _clear_token(row: Credential) -> None:
    row.token_ciphertext = None
    row.token_sha256 = None
    row.token_expires_at = None


_sha256 = token_cipher.sha256


def forget_process_tokens() -> None:
    """Drop every token this process holds in memory (tests, secret rotation)."""
    _memory.clear()
    _fresh.clear()
