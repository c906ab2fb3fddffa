"""HTTP only: the Meetings API client, and responses -> typed errors.

This module knows nothing of PostgreSQL or Redis (the token endpoint is :mod:`worker.oauth`).
The access token reaches it through the small :class:`TokenSource` protocol; "renew once,
retry once" on a 401 is :class:`ZoomAuth`, an ``httpx.Auth`` flow, so no call site loops.
Every Zoom answer and every transport failure is translated to :mod:`worker.errors` in one
place (:func:`raise_for_response`, :func:`translate_transport_error`). ``start_url`` (a host
credential) is dropped as soon as a meeting is parsed, so it can never reach a log, a result
or the ledger.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from worker import errors

if TYPE_CHECKING:
    from worker.oauth import AccessToken

log = logging.getLogger(__name__)

# 401 codes: 124 is an invalid or expired token (a new token may help); the scope codes are
# fixed at issue, so a new token will not help.
TOKEN_INVALID_CODES = frozenset({124})
MISSING_SCOPE_CODES = frozenset({4700, 4711, 104})
MEETING_NOT_FOUND_CODES = frozenset({3001, 300})
DAILY_LIMIT_PATTERN = re.compile(r"daily rate limit", re.IGNORECASE)
# The per-meeting cap on updates (100 in 24 hours) is answered as a daily limit too, but
# names the meeting, not the user: it holds that meeting's updates only, never the host.
MEETING_LIMIT_PATTERN = re.compile(r"for the meeting|particular meeting|update a meeting", re.I)
# Zoom's longest wait is the daily limit's, until the next 00:00 UTC.
RETRY_AFTER_MAX = timedelta(days=1)


class TokenSource(Protocol):
    """Where :class:`ZoomAuth` gets tokens and tells how Zoom took them.

    The shared store implements it; what a refusal means (renew once, or open the credential
    circuit and raise :class:`~worker.errors.CircuitOpen`) is the source's decision.
    """

    def get(self) -> AccessToken:
        """A token believed valid, renewing it if needed."""
        ...

    def report(self, token: AccessToken, accepted: bool, *, renewed: bool = False) -> None:
        """Zoom accepted ``token`` (any answer but a 401 or a 5xx), or refused it (401 code 124).
        ``renewed``: the token came from the renewal after this call's first token was refused.

        A refusal may raise CircuitOpen (the credential itself is refused); an acceptance
        never raises, as the call it follows may have changed something in Zoom."""
        ...


class ZoomAuth(httpx.Auth):
    """Bearer auth that renews once and retries once on a 401 with code 124.

    Every answer is reported to the token source: a refusal lets it renew (the retry then
    uses the new token) or, for a token it fetched moments ago, open the credential circuit.
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
        log.info("zoom.token_refused renewing once")
        self._source.report(token, accepted=False)
        renewed = self._source.get()
        request.headers["Authorization"] = f"Bearer {renewed.value}"
        response = yield request
        self._settle(renewed, response, renewed=True)

    def _settle(
        self, token: AccessToken, response: httpx.Response, *, renewed: bool = False
    ) -> None:
        if _is_token_refusal(response):
            self._source.report(token, accepted=False, renewed=renewed)
        elif response.status_code < httpx.codes.INTERNAL_SERVER_ERROR and (
            response.status_code != httpx.codes.UNAUTHORIZED
        ):
            # Past the token check: a 404 or 429 proves Zoom accepted the token too. A 5xx
            # proves nothing, and other 401s (missing scopes) are not about this token.
            self._source.report(token, accepted=True, renewed=renewed)


def _is_token_refusal(response: httpx.Response) -> bool:
    if response.status_code != httpx.codes.UNAUTHORIZED:
        return False
    code = int_or_none(_json_body(response).get("code"))
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
            type=int_or_none(body.get("type")),
            start_time=_str_or_none(body.get("start_time")),
            duration=int_or_none(body.get("duration")),
            timezone=_str_or_none(body.get("timezone")),
            agenda=_str_or_none(body.get("agenda")),
            join_url=_str_or_none(body.get("join_url")),
            created_at=_str_or_none(body.get("created_at")),
            status=_str_or_none(body.get("status")),
            occurrences=tuple(
                Occurrence(
                    occurrence_id=str(item.get("occurrence_id")),
                    start_time=_str_or_none(item.get("start_time")),
                    duration=int_or_none(item.get("duration")),
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
        on_request: Callable[[httpx.Request], None] | None = None,
        on_response: Callable[[httpx.Response], None] | None = None,
    ) -> None:
        # The hooks see every request and answer, the 401 before a renewal included (metrics).
        hooks: dict[str, list[Callable[..., Any]]] = {}
        if on_request:
            hooks["request"] = [on_request]
        if on_response:
            hooks["response"] = [on_response]
        self._http = httpx.Client(
            base_url=api_url.rstrip("/") + "/",
            auth=auth,
            timeout=timeout_s,
            transport=transport,
            event_hooks=hooks or None,
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

    def update_meeting(
        self, meeting_id: int, changes: dict[str, Any], *, occurrence_id: str | None = None
    ) -> None:
        """``PATCH /meetings/{meetingId}`` (one occurrence with ``occurrence_id``): 204;
        MeetingNotFound when it is gone."""
        params = {"occurrence_id": occurrence_id} if occurrence_id else None
        self._send("PATCH", f"meetings/{meeting_id}", json=changes, params=params)

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
    code = int_or_none(body.get("code"))
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
    if daily and message and MEETING_LIMIT_PATTERN.search(message):
        return errors.MeetingUpdateLimitReached(
            "the meeting's limit of updates per day is reached",
            retry_at=retry_at or next_utc_midnight(),
            category=category,
            **common,
        )
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
        limit=int_or_none(headers.get("X-RateLimit-Limit")),
        remaining=int_or_none(headers.get("X-RateLimit-Remaining")),
        **common,
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """Parse ``Retry-After`` given as seconds, an HTTP-date or an ISO-8601 time (Zoom uses all).

    None when it is unusable (not a number or a date, ``inf``, ``nan``); a wait beyond
    :data:`RETRY_AFTER_MAX` is cut to it, so no absurd value can overflow a later sum.
    """
    if not value:
        return None
    value = value.strip()
    now = now or datetime.now(UTC)
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            return None
        return now + min(timedelta(seconds=max(0.0, min(seconds, 1e9))), RETRY_AFTER_MAX)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):
            return None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return min(parsed, now + RETRY_AFTER_MAX)


def next_utc_midnight(now: datetime | None = None) -> datetime:
    """The next 00:00 UTC, when Zoom resets daily limits."""
    now = now or datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


def _path(segment: str) -> str:
    return urllib.parse.quote(segment, safe="@")


def _json_body(response: httpx.Response) -> dict[str, Any]:
    return json_object(response.content)


def json_object(content: bytes) -> dict[str, Any]:
    """The JSON object in a body, or an empty dict for anything else."""
    try:
        body = json.loads(content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _zoom_message(response: httpx.Response) -> str | None:
    return _str_or_none(_json_body(response).get("message"))


def int_or_none(value: object) -> int | None:
    """An integer (or integer text) from a Zoom body or header; None for anything else."""
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
