"""Zoom's OAuth token endpoint: one request, answered as a typed token.

Three grants: ``account_credentials`` (Server-to-Server apps), and for a user's connection to a
"General" app ``authorization_code`` (once, after the user's consent) and ``refresh_token``.
Zoom rotates refresh tokens: every refresh answers a new one and the one spent stops working,
so a refused refresh token (``invalid_grant``, or Zoom's ``invalid_request`` "Invalid Token!")
is :class:`~worker.errors.GrantRefused`, never something to retry.

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
# How Zoom says a refresh token or an authorization code is spent, revoked or expired: the
# OAuth standard's ``invalid_grant``, or ``invalid_request`` with one of these reasons.
GRANT_REFUSED_REASONS = ("invalid token", "invalid authorization code", "refresh token")


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
    # A user's grant: the new refresh token (the one spent is dead from now on).
    refresh_token: str | None = field(default=None, repr=False)


def refresh_user_token(
    http: httpx.Client,
    oauth_url: str,
    *,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    timeout_s: float,
) -> TokenGrant:
    """Spend ``refresh_token`` for a new access token and a new refresh token (both required
    in the answer). Raises GrantRefused when Zoom refuses the refresh token."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return _grant(http, oauth_url, (client_id, client_secret), form, timeout_s, user=True)


def exchange_code(
    http: httpx.Client,
    oauth_url: str,
    *,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    timeout_s: float,
) -> TokenGrant:
    """Exchange an authorization code (single use, about 5 minutes) for a user's tokens."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    return _grant(http, oauth_url, (client_id, client_secret), form, timeout_s, user=True)


def user_account_id(
    http: httpx.Client, api_url: str, token: AccessToken, *, timeout_s: float
) -> str | None:
    """The Zoom account id of the user ``token`` acts for (``GET /users/me``), or None when
    Zoom does not say (the app lacks ``user:read``, an error): best effort, one call."""
    try:
        response = http.get(
            f"{api_url.rstrip('/')}/users/me",
            headers={"Authorization": f"Bearer {token.value}"},
            timeout=timeout_s,
        )
        account_id = response.json().get("account_id") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return account_id if isinstance(account_id, str) and 0 < len(account_id) <= 200 else None


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
    form = {"grant_type": "account_credentials", "account_id": account_id}
    return _grant(http, oauth_url, (client_id, client_secret), form, timeout_s, user=False)


def _grant(
    http: httpx.Client,
    oauth_url: str,
    client: tuple[str, str],
    form: dict[str, str],
    timeout_s: float,
    *,
    user: bool,
) -> TokenGrant:
    started = time.monotonic()
    try:
        with http.stream(
            "POST", oauth_url, auth=httpx.BasicAuth(*client), data=form, timeout=timeout_s
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
        if user and _grant_refused(str(body.get("error") or ""), reason):
            raise errors.GrantRefused(
                message, status=response.status_code, code=code, zoom_message=reason or None
            )
        raise errors.TokenRequestFailed(
            message, status=response.status_code, code=code, zoom_message=reason or None
        )
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise errors.TokenRequestFailed("the token endpoint answered 200 without an access_token")
    refresh = body.get("refresh_token")
    if user and (not isinstance(refresh, str) or not refresh):
        raise errors.TokenRequestFailed("the token endpoint answered 200 without a refresh_token")
    now = datetime.now(UTC)
    expires_in = zoom.int_or_none(body.get("expires_in")) or 3600
    token = AccessToken(
        value=value,
        expires_at=now + timedelta(seconds=expires_in),
        fetched_at=now,
        expires_monotonic=started + expires_in,
    )
    return TokenGrant(
        token=token,
        expires_in_s=expires_in,
        scope=str(body.get("scope") or ""),
        refresh_token=refresh if user and isinstance(refresh, str) else None,
    )


def _grant_refused(error: str, reason: str) -> bool:
    if error == "invalid_grant":
        return True
    return error == "invalid_request" and any(
        words in reason.lower() for words in GRANT_REFUSED_REASONS
    )


def _read_within(response: httpx.Response, deadline: float) -> bytes:
    content = bytearray()
    for chunk in response.iter_bytes():
        content += chunk
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the whole answer took too long", request=response.request)
    return bytes(content)
