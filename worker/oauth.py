"""Zoom's Server-to-Server OAuth token endpoint: one request, answered as a typed token.

HTTP only, like :mod:`worker.zoom`: the shared store (:mod:`worker.token_store`) decides when
to ask. A request is bounded in total, not per phase, so an endpoint that trickles its answer
cannot hold the token row lock for ever. A token's validity is judged on a monotonic clock
started before the request, never on the host's wall clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from worker import errors, zoom

# Token endpoint: invalid client or secret (4702, 4704) and app disabled (4717).
CREDENTIAL_REFUSED_CODES = frozenset({4702, 4704, 4717})


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and when it stops working; its repr never shows the value.

    ``expires_at`` is for people (the database's clock, or this host's for a bare grant);
    whether the token is still good is judged on ``expires_monotonic``, a ``time.monotonic()``
    deadline, so a host whose wall clock is wrong never keeps an expired token.
    """

    value: str = field(repr=False)
    expires_at: datetime
    fetched_at: datetime
    expires_monotonic: float

    def __repr__(self) -> str:
        return f"AccessToken([secure], expires_at={self.expires_at.isoformat()})"

    def seconds_left(self) -> float:
        """Seconds until expiry on this process's monotonic clock (negative once expired)."""
        return self.expires_monotonic - time.monotonic()

    def lifetime_s(self) -> float:
        """The whole life Zoom gave the token, in seconds."""
        return (self.expires_at - self.fetched_at).total_seconds()


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint answered: the token, its lifetime and scopes."""

    token: AccessToken
    expires_in_s: int
    scope: str


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

    ``timeout_s`` bounds the whole request, not each phase: an endpoint that trickles its
    answer is given up once ``timeout_s`` has passed (checked as each piece arrives; one
    silent wait is cut by the same per-phase timeout). Raises CredentialsRejected for an
    invalid client, secret or disabled app, and TokenRequestFailed or ZoomUnreachable otherwise.
    """
    started = time.monotonic()
    try:
        with http.stream(
            "POST",
            oauth_url,
            auth=httpx.BasicAuth(client_id, client_secret),
            data={"grant_type": "account_credentials", "account_id": account_id},
            timeout=timeout_s,
        ) as response:
            content = _read_within(response, started + timeout_s)
    except httpx.TransportError as exc:
        raise zoom.translate_transport_error(exc, what="Zoom's token endpoint") from exc
    body = zoom.json_object(content)
    if response.status_code != httpx.codes.OK:
        code = zoom.int_or_none(body.get("code"))
        reason = str(body.get("reason") or body.get("message") or body.get("error") or "")
        message = f"the token endpoint refused the request: {reason or response.reason_phrase}"
        if code in CREDENTIAL_REFUSED_CODES or body.get("error") == "invalid_client":
            raise errors.CredentialsRejected(
                message, status=response.status_code, code=code, zoom_message=reason or None
            )
        raise errors.TokenRequestFailed(
            message, status=response.status_code, code=code, zoom_message=reason or None
        )
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise errors.TokenRequestFailed("the token endpoint answered 200 without an access_token")
    now = datetime.now(UTC)
    expires_in = zoom.int_or_none(body.get("expires_in")) or 3600
    token = AccessToken(
        value=value,
        expires_at=now + timedelta(seconds=expires_in),
        fetched_at=now,
        expires_monotonic=started + expires_in,
    )
    return TokenGrant(token=token, expires_in_s=expires_in, scope=str(body.get("scope") or ""))


def _read_within(response: httpx.Response, deadline: float) -> bytes:
    content = bytearray()
    for chunk in response.iter_bytes():
        content += chunk
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the whole answer took too long", request=response.request)
    return bytes(content)
