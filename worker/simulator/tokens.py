"""Zoom's S2S OAuth token endpoint, and the bearer-token check in front of every API call."""

from __future__ import annotations

import secrets
import time
import urllib.parse
from typing import Any

from worker.simulator.config import SimulatorConfig
from worker.simulator.wire import Reply, Request, basic_credentials, error_reply, json_reply

OPERATION_SCOPES = {
    "create": "meeting:write:meeting:admin",
    "update": "meeting:update:meeting:admin",
    "delete": "meeting:delete:meeting:admin",
    "get": "meeting:read:meeting:admin",
    "list": "meeting:read:list_meetings:admin",
}


class TokenIssuer:
    """The access tokens issued so far and their expiry; a part of :class:`Simulator`.

    Not thread-safe on its own: the Simulator calls it under its lock.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry, oldest first

    def invalidate(self) -> None:
        """Kill every token issued so far."""
        self._tokens.clear()

    def valid(self) -> int:
        """How many tokens are still alive."""
        now = time.monotonic()
        return sum(expiry > now for expiry in self._tokens.values())

    def issue(self, request: Request, cfg: SimulatorConfig) -> Reply:
        """Answer ``POST /oauth/token``: a new token, or Zoom's refusal."""

        def refuse(status: int, error: str, code: int | None, reason: str) -> Reply:
            payload: dict[str, Any] = {"reason": reason, "error": error}
            if code is not None and cfg.token_error_codes:
                payload["code"] = code
            return json_reply(status, payload)

        if cfg.token_endpoint_down:
            return json_reply(503, {"reason": "Service Unavailable", "error": "server_error"})
        if {"grant_type", "account_id"} & request.query.keys():
            # Zoom now answers 400 to the query-string form seen in many old examples.
            reason = "Parameters must be sent in the request body, not in the query string."
            return refuse(400, "invalid_request", None, reason)
        client = basic_credentials(request.authorization)
        if client is None:
            return refuse(400, "invalid_request", 4706, "Missing client_id or client_secret.")
        if client != (cfg.client_id, cfg.client_secret):
            return refuse(401, "invalid_client", 4702, "Invalid client_id or client_secret")
        if cfg.app_disabled:
            reason = "The app has been disabled by the account admin."
            return refuse(400, "invalid_client", 4717, reason)
        form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
        grant_type = form.get("grant_type", [""])[0]
        if not grant_type:
            return refuse(400, "invalid_request", 4706, "Missing grant_type.")
        if grant_type != "account_credentials":
            return refuse(400, "unsupported_grant_type", 4705, "Unsupported grant type.")
        if form.get("account_id", [""])[0] != cfg.account_id:
            return refuse(400, "invalid_client", 4704, "Invalid account_id.")
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        if len(self._tokens) > 10_000:  # keep memory bounded in long benchmarks
            self._tokens = {t: e for t, e in self._tokens.items() if e > now}
        self._tokens[token] = now + cfg.token_lifetime_s
        while cfg.token_tolerance is not None and len(self._tokens) > cfg.token_tolerance:
            del self._tokens[next(iter(self._tokens))]
        return json_reply(
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": cfg.token_lifetime_s,
                "scope": cfg.scopes,
                "api_url": f"http://{request.host}",
            },
        )

    def check(
        self, authorization: str | None, operation: str, cfg: SimulatorConfig
    ) -> Reply | None:
        """None when the bearer token may make this call; Zoom's 401 otherwise."""
        scheme, _, token = (authorization or "").partition(" ")
        expiry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expiry is None or cfg.refuse_fresh_tokens:
            return error_reply(401, 124, "Invalid access token.")
        if time.monotonic() >= expiry:
            return error_reply(401, 124, "Access token is expired.")
        if cfg.missing_scopes:
            scope = OPERATION_SCOPES[operation]
            return error_reply(
                401, 4711, f"Invalid access token, does not contain scopes:[{scope}]"
            )
        return None
