"""Every exception zoom-worker raises, in one tree.

    ZoomWorkerError
    ├── ConfigurationError        a setting is missing or invalid (names the variable)
    ├── InvalidMeeting            a body Zoom would reject (names the field); a ValueError
    ├── IdempotencyConflict       a key reused with another body or host; a ValueError
    ├── InvalidCredential         bad input to the credential registry (names the field);
    │   │                         a ValueError
    │   └── AccountRefused        a job names an unknown or disabled credential (``account``,
    │                             ``status``): refused at enqueue, nothing stored
    ├── CredentialUnavailable     the named credential is disabled or needs the user to
    │                             authorize again (``status``, ``reason``)
    ├── InfrastructureError       our own infrastructure failed, never "bad credentials"
    │   ├── TokenStoreBusy        the token row lock was not granted in time
    │   └── GovernorUnavailable   the rate governor's Redis cannot be reached; calls wait
    ├── Deferred                  the call must wait: no rate permit now, or the create
    │                             a delete waits for is unfinished (``retry_at``)
    ├── TokenBudgetExhausted      the hourly token-request budget is spent: no more requests
    ├── CircuitOpen               the credential is known to be refused; calls are paused
    ├── ZoomOutage                Zoom fails for the whole fleet; calls wait (``retry_at``)
    ├── ClaimLost                 this worker no longer holds the job's claim (fencing)
    ├── OutcomeUnknown            a create may have reached Zoom and cannot be looked for
    └── ZoomError                 Zoom did not do what we asked
        ├── ZoomUnreachable       no HTTP answer: timeout, reset, refused (``maybe_sent`` says
        │                         whether the request may have reached Zoom)
        ├── ZoomServerError       5xx
        ├── RateLimited           429 per-second or concurrency limit (``retry_at``)
        │   ├── DailyLimitReached the per-host daily create/update cap (``retry_at`` = 00:00 UTC)
        │   └── MeetingUpdateLimitReached  the meeting's 100 updates per 24 hours (``retry_at``)
        ├── Unauthorized          401 code 124: the access token was refused
        ├── MissingScopes         401/400 codes 4700, 4711, 104: the app lacks scopes
        ├── CredentialsRejected   the credential itself is refused: token endpoint 4702/4704/4717,
        │                         or a fresh token answered 401
        ├── GrantRefused          a user's refresh token or authorization code is refused
        │                         (invalid_grant): only the user authorizing again helps
        ├── TokenRequestFailed    the token endpoint failed for another reason, or the fleet
        │                         waits after such failures (``retry_at``)
        └── ZoomClientError       any other 4xx, with Zoom's code and message
            └── MeetingNotFound   404 code 3001 (legacy 300)

Callers branch on the type and the attributes (``status``, ``code``, ``retry_at``), never on
the message text. Nothing here ever carries a secret, an access token or a ``start_url``.
"""

from __future__ import annotations

from datetime import datetime


class ZoomWorkerError(Exception):
    """Raised for every failure that zoom-worker itself reports; the root of the tree."""


class ConfigurationError(ZoomWorkerError):
    """Raised when a setting is missing or invalid; ``setting`` names the variable."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        self.message = message
        super().__init__(f"{setting}: {message}")


class InvalidMeeting(ZoomWorkerError, ValueError):
    """Raised when a meeting body would be refused by Zoom; ``field`` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class IdempotencyConflict(ZoomWorkerError, ValueError):
    """Raised when an idempotency key is reused with another body, host or kind of job.

    ``key`` is the key and ``job_id`` the job it already names."""

    def __init__(self, key: str, job_id: object, message: str) -> None:
        self.key = key
        self.job_id = job_id
        super().__init__(f"idempotency_key {key!r}: {message} (job {job_id})")


class InvalidCredential(ZoomWorkerError, ValueError):
    """Raised when a credential or app given to the registry is invalid or unknown; ``field``
    names the argument (``name``, ``client_secret``, ``app``, ...). Never carries a secret."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class AccountRefused(InvalidCredential):
    """Raised at enqueue when a job's ``account=`` names no registered credential (``status``
    ``unknown``) or a disabled one (``disabled``); ``account`` is the name. Nothing is stored."""

    def __init__(self, account: str, status: str, message: str) -> None:
        self.account = account
        self.status = status
        super().__init__("account", message)


class CredentialUnavailable(ZoomWorkerError):
    """Raised instead of a token request for a credential that cannot be used: ``status`` is
    ``disabled`` (by an operator) or ``needs_reauthorization`` (Zoom refused the user's refresh
    token); ``reason`` says why and what to do; ``name`` is the credential's name."""

    def __init__(self, name: str, status: str, reason: str) -> None:
        self.name = name
        self.status = status
        self.reason = reason
        super().__init__(f"credential {name!r} is {status.replace('_', ' ')}: {reason}")


class InfrastructureError(ZoomWorkerError):
    """Raised when PostgreSQL, Redis or the token store fail; never a credential problem."""


class TokenStoreBusy(InfrastructureError):
    """Raised when the token row lock was not granted within the configured wait."""


class GovernorUnavailable(InfrastructureError):
    """Raised when the rate governor's Redis (``REDIS_URL``) cannot be reached or answers
    with an error: no permit can be taken, so the call waits rather than risk Zoom's limits."""


class Deferred(ZoomWorkerError):
    """Raised before a call that must wait: no rate permit is free now, or the create job a
    delete depends on has not finished.

    ``retry_at`` is when to try again and ``slot_at`` the reserved slot (a Redis epoch time)
    that the retry may use without asking again, or None when nothing was reserved.
    """

    def __init__(self, message: str, *, retry_at: datetime, slot_at: float | None) -> None:
        self.retry_at = retry_at
        self.slot_at = slot_at
        super().__init__(message)


class TokenBudgetExhausted(ZoomWorkerError):
    """Raised instead of a token request once ``ZOOM_TOKEN_BUDGET_PER_HOUR`` is spent."""

    def __init__(self, message: str, *, retry_at: datetime) -> None:
        self.retry_at = retry_at
        super().__init__(message)


class CircuitOpen(ZoomWorkerError):
    """Raised instead of a call while Zoom refuses the credential; ``retry_at`` is the next probe.

    ``reason`` says what Zoom said, the likely causes and what an operator should do.
    """

    def __init__(self, reason: str, *, retry_at: datetime | None) -> None:
        self.reason = reason
        self.retry_at = retry_at
        super().__init__(reason)


class ZoomOutage(ZoomWorkerError):
    """Raised instead of a call while the outage breaker is open (:mod:`worker.outage`):
    ``retry_at`` is when the breaker's pause ends, ``pause_s`` its current length."""

    def __init__(self, message: str, *, retry_at: datetime, pause_s: float) -> None:
        self.retry_at = retry_at
        self.pause_s = pause_s
        super().__init__(message)


class ClaimLost(ZoomWorkerError):
    """Raised when a worker finds, before a call that changes Zoom, that it no longer holds
    the job's claim (its lease ran out and the job went elsewhere): it stops without calling."""


class OutcomeUnknown(ZoomWorkerError):
    """Raised when a create may have made a meeting that no search can find (an instant
    meeting is never listed by Zoom): the job fails with this reason instead of creating again.

    ``reason`` says what is unknown and what an operator should check."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ZoomError(ZoomWorkerError):
    """Raised when Zoom answered with an error, or did not answer at all.

    ``status`` is the HTTP status (0 when there was no answer), ``code`` and ``zoom_message``
    are Zoom's own ``code`` and ``message`` from the body when it had them.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: int | None = None,
        zoom_message: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.zoom_message = zoom_message
        super().__init__(message)

    def describe(self) -> str:
        """Zoom's status, code and message in one line, for ``job.error``."""
        parts = [str(self)]
        if self.status:
            parts.append(f"HTTP {self.status}")
        if self.code is not None:
            parts.append(f"Zoom code {self.code}")
        if self.zoom_message and self.zoom_message not in parts[0]:
            parts.append(f"Zoom said: {self.zoom_message}")
        return "; ".join(parts)


class ZoomUnreachable(ZoomError):
    """Raised when no HTTP answer came back (timeout, connection refused or reset).

    ``maybe_sent`` is true when the request may have reached Zoom, so a create may exist.
    """

    def __init__(self, message: str, *, maybe_sent: bool) -> None:
        self.maybe_sent = maybe_sent
        super().__init__(message)


class ZoomServerError(ZoomError):
    """Raised on a 5xx answer; the request may or may not have taken effect."""


class RateLimited(ZoomError):
    """Raised on a 429 for the per-second (or concurrency) limit; retry at ``retry_at``.

    ``retry_at`` is None when Zoom gave no usable hint; the caller then backs off.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_at: datetime | None,
        category: str | None = None,
        limit: int | None = None,
        remaining: int | None = None,
        status: int = 429,
        code: int | None = None,
        zoom_message: str | None = None,
    ) -> None:
        self.retry_at = retry_at
        self.category = category
        self.limit = limit
        self.remaining = remaining
        super().__init__(message, status=status, code=code, zoom_message=zoom_message)


class DailyLimitReached(RateLimited):
    """Raised when the host's daily meeting create/update cap is reached (until 00:00 UTC)."""


class MeetingUpdateLimitReached(RateLimited):
    """Raised when a meeting's updates are capped (Zoom: 100 per meeting in 24 hours) until
    ``retry_at``; the meeting's other updates wait, the host's other calls do not."""


class Unauthorized(ZoomError):
    """Raised on 401 code 124 (invalid or expired access token); one renewal may fix it."""


class MissingScopes(ZoomError):
    """Raised when the app's token lacks a scope (codes 4700, 4711, 104): a configuration error."""


class CredentialsRejected(ZoomError):
    """Raised when Zoom refuses the credential itself, so no new token can help.

    Either the token endpoint refused the client (4702, 4704: bad client id or secret; 4717:
    app disabled), or a token fetched moments ago was answered 401.
    """


class GrantRefused(ZoomError):
    """Raised when the token endpoint refuses a user's refresh token or authorization code
    (``invalid_grant``, or Zoom's "Invalid Token!"): it was spent, revoked or has expired, and
    no retry can help; the user must authorize the app again."""


class TokenRequestFailed(ZoomError):
    """Raised when the token endpoint failed for a reason other than the credential, or while
    the fleet waits after such failures; ``retry_at`` is then when it asks again."""

    def __init__(
        self,
        message: str,
        *,
        retry_at: datetime | None = None,
        status: int = 0,
        code: int | None = None,
        zoom_message: str | None = None,
    ) -> None:
        self.retry_at = retry_at
        super().__init__(message, status=status, code=code, zoom_message=zoom_message)


class ZoomClientError(ZoomError):
    """Raised on any other 4xx; ``code`` and ``zoom_message`` are Zoom's."""


class MeetingNotFound(ZoomClientError):
    """Raised on 404 code 3001 (legacy 300): the meeting does not exist (any more)."""
