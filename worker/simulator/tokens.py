"""Zoom's OAuth token endpoint, and the bearer-token check in front of every API call.

Every access token belongs to an account (an S2S client's, or a connected user's), so the
API's rate windows and daily counts are that account's (:class:`Simulator`).
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from typing import Any

from worker.simulator.config import SimulatorConfig
from worker.simulator.user_oauth import Connection, UserGrants
from worker.simulator.wire import Reply, Request, basic_credentials, error_reply, json_reply

OPERATION_SCOPES = {
    "create": "meeting:write:meeting:admin",
    "update": "meeting:update:meeting:admin",
    "delete": "meeting:delete:meeting:admin",
    "get": "meeting:read:meeting:admin",
    "list": "meeting:read:list_meetings:admin",
    "user": "user:read:user",
}


class TokenIssuer:
    """The access tokens issued so far and their expiry; a part of :class:`Simulator`.

    Not thread-safe on its own: the Simulator calls it under its lock.
    """

    def __init__(self) -> None:
        # token -> (monotonic expiry, account id), oldest first
        self._tokens: dict[str, tuple[float, str]] = {}
        # A user's token -> that user (an S2S token acts for its account's admin).
        self._users: dict[str, str] = {}
        self.users = UserGrants()
        # Tokens issued by client id, and by grant type: what benchmarks count per account.
        self.issued_by_client: dict[str, int] = {}
        self.grants: dict[str, int] = {}

    def invalidate(self) -> None:
        """Kill every token issued so far."""
        self._tokens.clear()

    def valid(self) -> int:
        """How many tokens are still alive."""
        now = time.monotonic()
        return sum(expiry > now for expiry, _ in self._tokens.values())

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
        account = cfg.s2s_account(client)
        general = cfg.oauth_apps.get(client[0]) == client[1]
        if account is None and not general:
            return refuse(401, "invalid_client", 4702, "Invalid client_id or client_secret")
        if cfg.app_disabled and client[0] == cfg.client_id:
            reason = "The app has been disabled by the account admin."
            return refuse(400, "invalid_client", 4717, reason)
        form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
        grant_type = form.get("grant_type", [""])[0]
        if not grant_type:
            return refuse(400, "invalid_request", 4706, "Missing grant_type.")
        if general and grant_type in ("authorization_code", "refresh_token"):
            connection = self.users.grant(grant_type, client[0], form, cfg)
            if isinstance(connection, Reply):
                return connection
            return self._answer(request, cfg, client[0], grant_type, connection)
        if account is None or grant_type != "account_credentials":
            return refuse(400, "unsupported_grant_type", 4705, "Unsupported grant type.")
        if form.get("account_id", [""])[0] != account:
            return refuse(400, "invalid_client", 4704, "Invalid account_id.")
        return self._answer(request, cfg, client[0], grant_type, account)

    def _answer(
        self,
        request: Request,
        cfg: SimulatorConfig,
        client_id: str,
        grant_type: str,
        holder: str | Connection,
    ) -> Reply:
        account = holder if isinstance(holder, str) else holder.account_id
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        if len(self._tokens) > 10_000:  # keep memory bounded in long benchmarks
            self._tokens = {t: e for t, e in self._tokens.items() if e[0] > now}
            self._users = {t: u for t, u in self._users.items() if t in self._tokens}
        if isinstance(holder, Connection):
            self._users[token] = holder.user_id
        self._tokens[token] = (now + cfg.token_lifetime_s, account)
        while cfg.token_tolerance is not None and len(self._tokens) > cfg.token_tolerance:
            del self._tokens[next(iter(self._tokens))]
        self.issued_by_client[client_id] = self.issued_by_client.get(client_id, 0) + 1
        self.grants[grant_type] = self.grants.get(grant_type, 0) + 1
        answer = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": cfg.token_lifetime_s,
            "scope": cfg.scopes,
            "api_url": f"http://{request.host}",
        }
        if isinstance(holder, Connection):
            answer["refresh_token"] = self.users.new_refresh_token(holder)
        return json_reply(200, answer)

    def user_of(self, authorization: str | None, account_id: str) -> str:
        """The user a (checked) token acts for: a user's own, or its account's admin."""
        token = (authorization or "").partition(" ")[2].strip()
        return self._users.get(token, f"admin@{account_id}")

    def check(self, authorization: str | None, operation: str, cfg: SimulatorConfig) -> Reply | str:
        """The account whose bearer token may make this call; Zoom's 401 otherwise."""
        scheme, _, token = (authorization or "").partition(" ")
        found = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if found is None or cfg.refuse_fresh_tokens or found[1] in cfg.refused_accounts:
            return error_reply(401, 124, "Invalid access token.")
        expiry, account = found
        if time.monotonic() >= expiry:
            return error_reply(401, 124, "Access token is expired.")
        if cfg.missing_scopes:
            scope = OPERATION_SCOPES[operation]
            return error_reply(
                401, 4711, f"Invalid access token, does not contain scopes:[{scope}]"
            )
        return account
