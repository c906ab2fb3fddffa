"""Users' connections to a "General" OAuth app: authorization codes and rotating refresh tokens.

As Zoom: a code is single use and lives 5 minutes, and must come back with the redirect URI it
was issued for; every refresh answers a new refresh token and the one spent dies at once, so
spending one twice is answered ``invalid_grant`` (or, with ``grant_error_style``
"invalid_request", Zoom's ``{"reason": "Invalid Token!", "error": "invalid_request"}``). A
race that spends one refresh token twice therefore fails loudly, as it would against Zoom.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from worker.simulator.config import SimulatorConfig
from worker.simulator.wire import Reply, json_reply

CODE_LIFETIME_S = 300.0


@dataclass(frozen=True)
class Connection:
    """One user's authorization of one app, and the account the user belongs to."""

    client_id: str
    user_id: str
    account_id: str


class UserGrants:
    """The codes and live refresh tokens; a part of :class:`Simulator`, called under its lock."""

    def __init__(self) -> None:
        self._codes: dict[str, tuple[Connection, str, float]] = {}
        self._refresh: dict[str, Connection] = {}  # only each connection's latest token

    def authorize(self, connection: Connection, redirect_uri: str) -> str:
        """The user consents: a new code, as Zoom's redirect would carry it."""
        code = secrets.token_urlsafe(24)
        self._codes[code] = (connection, redirect_uri, time.monotonic() + CODE_LIFETIME_S)
        return code

    def revoke(self, user_id: str) -> int:
        """The user removes the app: every refresh token of theirs dies; returns how many."""
        dead = [token for token, c in self._refresh.items() if c.user_id == user_id]
        for token in dead:
            del self._refresh[token]
        return len(dead)

    def grant(
        self, grant_type: str, client_id: str, form: dict[str, list[str]], cfg: SimulatorConfig
    ) -> Connection | Reply:
        """The connection a code or refresh token is good for (spent here), or Zoom's refusal."""
        if grant_type == "authorization_code":
            code = form.get("code", [""])[0]
            issued = self._codes.pop(code, None)
            if issued is None or issued[2] < time.monotonic() or issued[0].client_id != client_id:
                return _refused(cfg, "Invalid authorization code " + code[:4] + "...")
            if form.get("redirect_uri", [""])[0] != issued[1]:
                return json_reply(
                    400, {"reason": "Redirect URI mismatch.", "error": "invalid_request"}
                )
            connection = issued[0]
        else:
            spent = form.get("refresh_token", [""])[0]
            found = self._refresh.get(spent)
            if found is None or found.client_id != client_id:
                return _refused(cfg, "Invalid Token!")
            del self._refresh[spent]
            connection = found
        return connection

    def new_refresh_token(self, connection: Connection) -> str:
        """The connection's next refresh token; any earlier one is dead."""
        for token in [t for t, c in self._refresh.items() if c == connection]:
            del self._refresh[token]
        token = secrets.token_urlsafe(32)
        self._refresh[token] = connection
        return token


def _refused(cfg: SimulatorConfig, reason: str) -> Reply:
    error = "invalid_grant" if cfg.grant_error_style == "invalid_grant" else "invalid_request"
    return json_reply(400, {"reason": reason, "error": error})
