"""The :class:`Simulator`: its parts put together, faults, request dispatch and control actions.

The parts are mixins over one :class:`~worker.simulator.state.SimulatorState`: the token
endpoint (``tokens``), the Meetings API (``meetings``) and the rate limits (``limits``).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

from worker.simulator.config import SWITCHES, SimulatorConfig
from worker.simulator.meetings import MEETING_STATUSES, MeetingsAPI, validate
from worker.simulator.tokens import TokenEndpoint
from worker.simulator.wire import (
    DROPPED,
    Reply,
    Request,
    api_route,
    error_reply,
    json_reply,
    parse_object,
)

SERVER_ERRORS = {500: "Internal server error", 502: "Bad gateway", 503: "Service unavailable"}
_MEETING_STATUS = re.compile(r"/_sim/meetings/(\d+)/status")


class Simulator(TokenEndpoint, MeetingsAPI):
    """The state of one simulated Zoom account and the answers it gives; thread-safe.

    All state lives under one lock held only for bookkeeping, never while sleeping.
    """

    @property
    def config(self) -> SimulatorConfig:
        """The switches in force now (replace them with :meth:`configure`)."""
        return self._config

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change some switches at once; ValueError on an unknown name or a bad value."""
        unknown = sorted(set(changes) - SWITCHES)
        if unknown:
            raise ValueError(f"unknown switch: {', '.join(unknown)}")
        if isinstance(changes.get("missing_users"), list | tuple | frozenset):
            changes["missing_users"] = set(changes["missing_users"])
        with self._lock:
            self._config = dataclasses.replace(self._config, **changes)
            if "seed" in changes:
                self._rng.seed(self._config.seed)
            return self._config

    def reset(self) -> None:
        """Forget meetings, tokens, page tokens, counters and daily counts; keep the config."""
        with self._lock:
            self._reset_state()
            self._rng.seed(self._config.seed)

    def invalidate_tokens(self) -> None:
        """Kill every access token issued so far."""
        with self._lock:
            self._tokens.clear()

    def rotate_secret(self, new_secret: str) -> None:
        """Rotate the client secret, as an ownership transfer is completed in Zoom.

        The old secret is refused from now on, every token dies and ``refuse_fresh_tokens``
        is turned off.
        """
        with self._lock:
            self._config = dataclasses.replace(
                self._config, client_secret=new_secret, refuse_fresh_tokens=False
            )
            self._tokens.clear()

    def stats(self) -> dict[str, Any]:
        """Counters since start or reset, plus live meetings, valid tokens and peak rates."""
        with self._lock:
            now = time.monotonic()
            return {
                **self._counters,
                "live_meetings": sum(not m.deleted for m in self._meetings.values()),
                "tokens_valid": sum(expiry > now for expiry in self._tokens.values()),
                "max_calls_per_second": dict(self._max_qps),
            }

    def meetings(self) -> list[dict[str, Any]]:
        """Every meeting ever made, in creation order, with ``deleted``; never ``start_url``."""
        with self._lock:
            return [
                {k: v for k, v in m.body.items() if k != "start_url"}
                | {"deleted": m.deleted, "foreign": m.foreign, "user_id": m.user_id}
                for m in self._meetings.values()
            ]

    def seed_meeting(self, user_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make a meeting as another app would, outside the API stats and daily counts."""
        body = body or {}
        problems = validate(body)
        if problems:
            raise ValueError(f"invalid meeting body: {problems}")
        with self._lock:
            self._counters["meetings_seeded"] += 1
            return dict(self._new_meeting(user_id, body, foreign=True).body)

    def set_meeting_status(self, meeting_id: int, status: str) -> None:
        """Mark a meeting waiting, started or ended; KeyError if it does not exist."""
        if status not in MEETING_STATUSES:
            raise ValueError(f"status must be one of {MEETING_STATUSES}")
        with self._lock:
            meeting = self._meetings.get(meeting_id)
            if meeting is None or meeting.deleted:
                raise KeyError(meeting_id)
            meeting.body["status"] = status

    def handle(self, request: Request) -> Reply:
        """Answer one HTTP request (the server's handler calls this)."""
        if request.path == "/oauth/token" and request.method == "POST":
            return self._token_endpoint(request)
        if request.path.startswith("/_sim/"):
            return self._control(request)
        route = api_route(request.method, request.path)
        if route is None:
            return error_reply(404, 404, "Not Found")
        return self._api(request, *route)

    # -- Meetings API -----------------------------------------------------------------------

    def _api(self, request: Request, operation: str, argument: str) -> Reply:
        if self._config.latency_s:
            time.sleep(self._config.latency_s)
        body = parse_object(request.body) if operation in ("create", "update") else {}
        with self._lock:
            self._counters["api_calls"] += 1
            reply = self._api_locked(request, operation, argument, body)
            if reply.status == 401:
                self._counters["api_401"] += 1
            elif reply.status == 429:
                self._counters["api_429"] += 1
            elif reply.status >= 500:
                self._counters["api_5xx"] += 1
            return reply

    def _api_locked(
        self, request: Request, operation: str, argument: str, body: dict[str, Any] | None
    ) -> Reply:
        cfg = self._config
        if cfg.drop_rate and self._rng.random() < cfg.drop_rate:
            self._counters["connections_dropped"] += 1
            return DROPPED
        if cfg.error_rate and self._rng.random() < cfg.error_rate:
            status = self._rng.choice(list(SERVER_ERRORS))
            return error_reply(status, status, SERVER_ERRORS[status])
        refused = self._check_token(request.authorization, operation, cfg)
        if refused is not None:
            return refused
        limited = self._take_rate_slot(cfg.category_for(operation), cfg)
        if limited is not None:
            return limited
        if operation in ("create", "list") and argument in cfg.missing_users:
            return error_reply(404, 1001, f"User does not exist: {argument}.")
        if body is None:
            return error_reply(400, 300, "Request Body should be a valid JSON object.")
        if operation == "create":
            return self._create(argument, body, cfg)
        if operation == "list":
            return self._list(argument, request.query)
        meeting_id = int(argument) if argument.isdigit() else None
        meeting = self._meetings.get(meeting_id) if meeting_id is not None else None
        if meeting is None or meeting.deleted:
            code = 300 if operation == "delete" and cfg.legacy_not_found_code else 3001
            return error_reply(404, code, f"Meeting does not exist: {argument}.")
        if operation == "get":
            return json_reply(200, meeting.body)
        if operation == "update":
            return self._update(meeting, body, cfg)
        return self._delete(meeting)

    # -- control API ------------------------------------------------------------------------

    def _control(self, request: Request) -> Reply:
        method, path = request.method, request.path.rstrip("/")
        body = parse_object(request.body)
        if body is None:
            return error_reply(400, 300, "Request Body should be a valid JSON object.")
        try:
            if method == "GET" and path == "/_sim/stats":
                return json_reply(200, self.stats())
            if method == "GET" and path == "/_sim/meetings":
                return json_reply(200, self.meetings())
            if method == "GET" and path == "/_sim/config":
                return json_reply(200, self._config.public_dict())
            if method != "POST":
                return error_reply(404, 404, "Not Found")
            if path == "/_sim/config":
                return json_reply(200, self.configure(**body).public_dict())
            if path == "/_sim/reset":
                self.reset()
            elif path == "/_sim/invalidate-tokens":
                self.invalidate_tokens()
            elif path == "/_sim/rotate-secret":
                secret = body.get("client_secret")
                if not isinstance(secret, str) or not secret:
                    return error_reply(400, 300, "client_secret: a non-empty string is required")
                self.rotate_secret(secret)
            elif path == "/_sim/meetings":
                user_id, meeting = body.get("user_id"), body.get("body") or {}
                if not isinstance(user_id, str) or not user_id or not isinstance(meeting, dict):
                    return error_reply(400, 300, "user_id (a string) and body (an object) required")
                return json_reply(201, self.seed_meeting(user_id, meeting))
            elif match := _MEETING_STATUS.fullmatch(path):
                self.set_meeting_status(int(match.group(1)), str(body.get("status")))
            else:
                return error_reply(404, 404, "Not Found")
        except ValueError as exc:
            return error_reply(400, 300, str(exc))
        except KeyError as exc:
            return error_reply(404, 3001, f"Meeting does not exist: {exc.args[0]}.")
        return json_reply(200, {"ok": True})
