"""The control API (``/_sim/...``) of a running simulator, over HTTP."""

from __future__ import annotations

import typing
import urllib.parse
from typing import Any

import httpx

from worker.simulator.config import CONTROL_TOKEN_HEADER


class SimulatorClient:
    """The control API over HTTP; errors raise ``httpx.HTTPStatusError``.

    ``base_url`` is the simulator's root (``RunningSimulator.url``), not its ``/v2`` API;
    ``control_token`` is sent when the simulator was started with one.
    """

    def __init__(
        self, base_url: str, *, timeout_s: float = 10.0, control_token: str | None = None
    ) -> None:
        # Plain HTTP to a local simulator: skip loading the CA bundle (about 90 ms a client).
        self._http = httpx.Client(
            base_url=f"{base_url.rstrip('/')}/_sim",
            headers={CONTROL_TOKEN_HEADER: control_token} if control_token else None,
            timeout=timeout_s,
            verify=False,  # noqa: S501
        )

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def configure(self, **switches: Any) -> dict[str, Any]:
        """Change switches; returns the whole config in force (without the secret)."""
        return typing.cast(dict[str, Any], self._call("POST", "/config", switches))

    def stats(self) -> dict[str, Any]:
        """The counters of ``GET /_sim/stats``."""
        return typing.cast(dict[str, Any], self._call("GET", "/stats"))

    def meetings(self) -> list[dict[str, Any]]:
        """Every meeting ever made, deleted ones included; never ``start_url``."""
        return typing.cast(list[dict[str, Any]], self._call("GET", "/meetings"))

    def reset(self) -> None:
        """Forget meetings, tokens and counters; keep the config."""
        self._call("POST", "/reset")

    def invalidate_tokens(self) -> None:
        """Kill every access token now."""
        self._call("POST", "/invalidate-tokens")

    def rotate_secret(self, new_secret: str) -> None:
        """Rotate the client secret; also ends ``refuse_fresh_tokens`` and kills every token."""
        self._call("POST", "/rotate-secret", {"client_secret": new_secret})

    def seed_meeting(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Make a meeting as another app would (no token, not in the API stats)."""
        return typing.cast(
            dict[str, Any], self._call("POST", "/meetings", {"user_id": user_id, "body": body})
        )

    def set_meeting_status(self, meeting_id: int, status: str) -> None:
        """Mark a meeting "waiting", "started" or "ended"."""
        self._call("POST", f"/meetings/{meeting_id}/status", {"status": status})

    def update_meeting(self, meeting_id: int, body: dict[str, Any]) -> None:
        """Change a meeting as its host would in Zoom's web page (move it, change a series)."""
        self._call("PATCH", f"/meetings/{meeting_id}", body)

    def delete_meeting(self, meeting_id: int, occurrence_id: str | None = None) -> None:
        """Delete a meeting (or one occurrence) as its host would in Zoom's web page."""
        body = {"occurrence_id": occurrence_id} if occurrence_id else {}
        self._call("DELETE", f"/meetings/{meeting_id}", body)

    def fail_next(self, operation: str, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` API calls of ``operation`` ("create", "update", ...)
        with ``status`` (500, 502 or 503), before doing anything."""
        self._call("POST", "/faults", {"operation": operation, "count": count, "status": status})

    def advance_clock(self, seconds: float) -> str:
        """Move the simulator's clock by ``seconds`` (negative: back); returns its new now."""
        return str(self._call("POST", "/clock", {"advance_s": seconds})["now"])

    def set_use_pmi(self, user_id: str, enabled: bool = True) -> int:
        """Set the host's "use PMI for scheduled meetings" setting; returns the host's PMI."""
        path = f"/users/{urllib.parse.quote(user_id, safe='')}/settings"
        return int(self._call("POST", path, {"use_pmi": enabled})["pmi"])

    def authorize_user(
        self, client_id: str, user_id: str, redirect_uri: str, account_id: str | None = None
    ) -> str:
        """A user consents to the OAuth app ``client_id``: returns the authorization code."""
        body = {"client_id": client_id, "user_id": user_id, "redirect_uri": redirect_uri}
        if account_id:
            body["account_id"] = account_id
        return str(self._call("POST", "/oauth/authorize", body)["code"])

    def revoke_user(self, user_id: str) -> int:
        """The user removes the app: their refresh tokens die; returns how many."""
        return int(self._call("POST", "/oauth/revoke", {"user_id": user_id})["revoked"])

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
