"""HTTP only: Zoom's token endpoint, the Meetings API client, and responses -> typed errors.

This module knows nothing of PostgreSQL or Redis. The access token reaches it through the
small :class:`TokenSource` protocol; "renew once, retry once" on a 401 is :class:`ZoomAuth`,
an ``httpx.Auth`` flow, so no call site loops. Every Zoom answer and every transport failure
is translated to :mod:`worker.errors` in one place (:func:`raise_for_response`,
:func:`translate_transport_error`). ``start_url`` (a host credential) is dropped as soon as
a meeting is parsed, so it can never reach a log, a result or the ledger.
"""

from __future__ import annotations

import email.utils
import logging
import re
import urllib.parse
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, Protocol

import httpx

from worker import errors

log = logging.getLogger(__name__)

# 401 codes: 124 is an invalid or expired token (a new token may help); the scope codes are
# fixed at issue, so a new token will not help.
TOKEN_INVALID_CODES = frozenset({124})
MISSING_SCOPE_CODES = frozenset({4700, 4711, 104})
# Token endpoint: invalid client or secret (4702, 4704) and app disabled (4717).
CREDENTIAL_REFUSED_CODES = frozenset({4702, 4704, 4717})
MEETING_NOT_FOUND_CODES = frozenset({3001, 300})
DAILY_LIMIT_PATTERN = re.compile(r"daily rate limit", re.IGNORECASE)


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and when it stops working; its repr never shows the value."""

    value: str = field(repr=False)
    expires_at: datetime
    fetched_at: datetime
    # True when this very process fetched it just now from Zoom (not read from the store).
    fetched_here: bool = False

    def __repr__(self) -> str:
        return f"AccessToken([secure], expires_at={self.expires_at.isoformat()})"

    def seconds_left(self, now: datetime | None = None) -> float:
        """Seconds until expiry (negative once expired)."""
        return (self.expires_at - (now or datetime.now(UTC))).total_seconds()


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint answered: the token, its lifetime and scopes."""

    token: AccessToken
    scope: str


class TokenSource(Protocol):
    """Where :class:`ZoomAuth` gets tokens; the shared store implements it."""

    def get(self) -> AccessToken:
        """A token believed valid, renewing it if needed."""
        ...

    def invalidate(self, token: AccessToken) -> None:
        """Forget ``token`` if it is still the current one (compare-and-swap)."""
        ...

    def refused(self, token: AccessToken, error: errors.ZoomError) -> NoReturn:
        """A token fetched moments ago was refused: open the circuit and raise CircuitOpen."""
        ...

    def accepted(self, token: AccessToken) -> None:
        """A token fetched here just worked (closes a half-open circuit)."""
        ...


def request_token(
    http: httpx.Client,
    oauth_url: str,
    *,
    account_id: str,
    client_id: str,
    client_secret: str,
    timeout_s: float,
) -> TokenGrant:
    """One client-credentials request, as Zoom documents it: Basic auth and a form body.

    Raises CredentialsRejected for an invalid client, secret or disabled app, and
    TokenRequestFailed or ZoomUnreachable otherwise.
    """
    try:
        response = http.post(
            oauth_url,
            auth=httpx.BasicAuth(client_id, client_secret),
            data={"grant_type": "account_credentials", "account_id": account_id},
            timeout=timeout_s,
        )
    except httpx.TransportError as exc:
        raise translate_transport_error(exc, what="Zoom's token endpoint") from exc
    if response.status_code != httpx.codes.OK:
        body = _json_body(response)
        code = _int_or_none(body.get("code"))
        reason = str(body.get("reason") or body.get("message") or body.get("error") or "")
        message = f"the token endpoint refused the request: {reason or response.reason_phrase}"
        if code in CREDENTIAL_REFUSED_CODES or body.get("error") == "invalid_client":
            raise errors.CredentialsRejected(
                message, status=response.status_code, code=code, zoom_message=reason or None
            )
        raise errors.TokenRequestFailed(
            message, status=response.status_code, code=code, zoom_message=reason or None
        )
    body = _json_body(response)
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise errors.TokenRequestFailed("the token endpoint answered 200 without an access_token")
    now = datetime.now(UTC)
    expires_in = _int_or_none(body.get("expires_in")) or 3600
    token = AccessToken(
        value=value,
        expires_at=now + timedelta(seconds=expires_in),
        fetched_at=now,
        fetched_here=True,
    )
    return TokenGrant(token=token, scope=str(body.get("scope") or ""))


class ZoomAuth(httpx.Auth):
    """Bearer auth that renews once and retries once on a 401 with code 124.

    If the retry, made with a token this process fetched moments ago, is refused too, the
    token source is told (the credential circuit opens) and no further renewal is made.
    """

    requires_response_body = True

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        token = self._source.get()
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if not _is_token_refusal(response):
            self._settle(token, response)
            return
        if token.fetched_here:
            # Refused on its first use, moments after Zoom issued it: a new one cannot help.
            self._source.refused(token, _refusal(response))
        log.info("zoom.token_refused renewing once")
        self._source.invalidate(token)
        renewed = self._source.get()
        request.headers["Authorization"] = f"Bearer {renewed.value}"
        response = yield request
        if _is_token_refusal(response) and renewed.fetched_here:
            self._source.refused(renewed, _refusal(response))
        self._settle(renewed, response)

    def _settle(self, token: AccessToken, response: httpx.Response) -> None:
        # The first success with a token fetched here closes a half-open circuit.
        if token.fetched_here and response.status_code < httpx.codes.BAD_REQUEST:
            self._source.accepted(token)


def _refusal(response: httpx.Response) -> errors.CredentialsRejected:
    return errors.CredentialsRejected(
        "a token fetched moments ago was refused",
        status=response.status_code,
        code=_int_or_none(_json_body(response).get("code")),
        zoom_message=_zoom_message(response),
    )


def _is_token_refusal(response: httpx.Response) -> bool:
    if response.status_code != httpx.codes.UNAUTHORIZED:
        return False
    code = _int_or_none(_json_body(response).get("code"))
    return code is None or code in TOKEN_INVALID_CODES


@dataclass(frozen=True)
class Occurrence:
    """One occurrence of a recurring meeting (type 8), as ``GET /meetings/{id}`` lists it."""

    occurrence_id: str
    start_time: str | None
    duration: int | None
    status: str | None


@dataclass(frozen=True)
class Meeting:
    """A meeting as Zoom described it, without ``start_url`` (a host credential).

    ``occurrences`` and ``endless`` (a series with ``end_times: 0`` and no end date) come
    only with ``GET /meetings/{id}`` of a series."""

    id: int
    host_email: str | None
    topic: str | None
    type: int | None
    start_time: str | None
    duration: int | None
    timezone: str | None
    agenda: str | None
    join_url: str | None
    created_at: str | None
    status: str | None = None
    occurrences: tuple[Occurrence, ...] = ()
    endless: bool = False

    @classmethod
    def from_zoom(cls, body: dict[str, Any]) -> Meeting:
        """Parse a create, get or list item; ``start_url`` is never kept."""
        meeting_id = body.get("id")
        if isinstance(meeting_id, bool) or not isinstance(meeting_id, int):
            raise errors.ZoomServerError("Zoom answered a meeting without an integer id")
        return cls(
            id=meeting_id,
            host_email=_str_or_none(body.get("host_email")),
            topic=_str_or_none(body.get("topic")),
            type=_int_or_none(body.get("type")),
            start_time=_str_or_none(body.get("start_time")),
            duration=_int_or_none(body.get("duration")),
            timezone=_str_or_none(body.get("timezone")),
            agenda=_str_or_none(body.get("agenda")),
            join_url=_str_or_none(body.get("join_url")),
            created_at=_str_or_none(body.get("created_at")),
            status=_str_or_none(body.get("status")),
            occurrences=tuple(
                Occurrence(
                    occurrence_id=str(item.get("occurrence_id")),
                    start_time=_str_or_none(item.get("start_time")),
                    duration=_int_or_none(item.get("duration")),
                    status=_str_or_none(item.get("status")),
                )
                for item in body.get("occurrences") or ()
                if isinstance(item, dict)
            ),
            endless=_endless(body.get("recurrence")),
        )


class ZoomClient:
    """The Meetings API calls the worker makes, each raising :mod:`worker.errors` on failure."""

    def __init__(
        self,
        api_url: str,
        auth: httpx.Auth,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        on_response: Callable[[httpx.Response], None] | None = None,
    ) -> None:
        # ``on_response`` sees every answer, the 401 before a renewal included (metrics).
        hooks = {"response": [on_response]} if on_response else None
        self._http = httpx.Client(
            base_url=api_url.rstrip("/") + "/",
            auth=auth,
            timeout=timeout_s,
            transport=transport,
            event_hooks=hooks,
            headers={"User-Agent": "zoom-worker"},
        )

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()

    def create_meeting(self, user_id: str, body: dict[str, Any]) -> Meeting:
        """``POST /users/{userId}/meetings``: 201 and the meeting."""
        response = self._send("POST", f"users/{_path(user_id)}/meetings", json=body)
        return Meeting.from_zoom(_json_body(response))

    def get_meeting(self, meeting_id: int) -> Meeting:
        """``GET /meetings/{meetingId}``; MeetingNotFound when it does not exist."""
        return Meeting.from_zoom(_json_body(self._send("GET", f"meetings/{meeting_id}")))

    def delete_meeting(self, meeting_id: int, *, occurrence_id: str | None = None) -> None:
        """``DELETE /meetings/{meetingId}``: 204; MeetingNotFound when already gone."""
        params = {"occurrence_id": occurrence_id} if occurrence_id else None
        self._send("DELETE", f"meetings/{meeting_id}", params=params)

    def list_meetings(
        self, user_id: str, *, kind: str = "scheduled", page_size: int = 300
    ) -> Iterator[Meeting]:
        """``GET /users/{userId}/meetings``, every page (agendas come truncated to 250)."""
        token = ""
        while True:
            params: dict[str, str | int] = {"type": kind, "page_size": page_size}
            if token:
                params["next_page_token"] = token
            body = _json_body(self._send("GET", f"users/{_path(user_id)}/meetings", params=params))
            for item in body.get("meetings") or []:
                yield Meeting.from_zoom(item)
            token = str(body.get("next_page_token") or "")
            if not token:
                return

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            what = f"{method} /{url.split('?', maxsplit=1)[0]}"
            raise translate_transport_error(exc, what=what) from exc
        raise_for_response(response)
        return response


def translate_transport_error(exc: httpx.TransportError, *, what: str) -> errors.ZoomUnreachable:
    """Map an httpx transport failure to ZoomUnreachable, saying whether Zoom may have acted.

    A failure to connect (or to get a pooled connection) means the request never left; a
    timeout or a dropped connection after sending means it may have been carried out.
    """
    maybe_sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    kind = type(exc).__name__
    return errors.ZoomUnreachable(f"no answer from {what} ({kind})", maybe_sent=maybe_sent)


def raise_for_response(response: httpx.Response) -> None:
    """Raise the typed error for a non-2xx answer; return for a 2xx."""
    status = response.status_code
    if status < httpx.codes.BAD_REQUEST:
        return
    body = _json_body(response)
    code = _int_or_none(body.get("code"))
    message = _zoom_message(response)
    details = body.get("errors")
    if isinstance(details, list) and details:
        fields = ", ".join(
            f"{d.get('field')}: {d.get('message')}" for d in details if isinstance(d, dict)
        )
        message = f"{message} ({fields})" if message else fields
    common: dict[str, Any] = {"status": status, "code": code, "zoom_message": message}

    if status == httpx.codes.TOO_MANY_REQUESTS or (
        code == 300 and message and DAILY_LIMIT_PATTERN.search(message)
    ):
        raise _rate_limited(response, message, common)
    if code in MISSING_SCOPE_CODES:
        raise errors.MissingScopes("the app's token lacks a required scope", **common)
    if status == httpx.codes.UNAUTHORIZED:
        raise errors.Unauthorized("Zoom refused the access token", **common)
    if status == httpx.codes.NOT_FOUND and code in MEETING_NOT_FOUND_CODES:
        raise errors.MeetingNotFound("the meeting does not exist", **common)
    if status >= httpx.codes.INTERNAL_SERVER_ERROR:
        raise errors.ZoomServerError("Zoom answered with a server error", **common)
    raise errors.ZoomClientError("Zoom refused the request", **common)


def _rate_limited(
    response: httpx.Response, message: str | None, common: dict[str, Any]
) -> errors.RateLimited:
    headers = response.headers
    retry_at = parse_retry_after(headers.get("Retry-After"))
    limit_type = (headers.get("X-RateLimit-Type") or "").lower()
    daily = limit_type.startswith("daily") or bool(message and DAILY_LIMIT_PATTERN.search(message))
    category = headers.get("X-RateLimit-Category")
    if daily:
        # Zoom resets the per-host daily cap at 00:00 UTC, whatever Retry-After says (or not).
        retry_at = retry_at or next_utc_midnight()
        return errors.DailyLimitReached(
            "the host's daily meeting create/update limit is reached",
            retry_at=retry_at,
            category=category,
            **common,
        )
    return errors.RateLimited(
        "Zoom's per-second rate limit was reached",
        retry_at=retry_at,
        category=category.lower() if category else None,
        limit=_int_or_none(headers.get("X-RateLimit-Limit")),
        remaining=_int_or_none(headers.get("X-RateLimit-Remaining")),
        **common,
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """Parse ``Retry-After`` given as seconds, an HTTP-date or an ISO-8601 time (Zoom uses all)."""
    if not value:
        return None
    value = value.strip()
    now = now or datetime.now(UTC)
    try:
        return now + timedelta(seconds=max(0.0, float(value)))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def next_utc_midnight(now: datetime | None = None) -> datetime:
    """The next 00:00 UTC, when Zoom resets daily limits."""
    now = now or datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


def _path(segment: str) -> str:
    return urllib.parse.quote(segment, safe="@")


def _json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _zoom_message(response: httpx.Response) -> str | None:
    return _str_or_none(_json_body(response).get("message"))


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _endless(recurrence: object) -> bool:
    """Whether a series' recurrence has no end (``end_times`` 0 and no ``end_date_time``)."""
    if not isinstance(recurrence, dict):
        return False
    return recurrence.get("end_times") == 0 and not recurrence.get("end_date_time")


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
