"""A built-in Zoom simulator: a real HTTP server answering like Zoom's S2S OAuth and Meetings API.

It serves tests, the demo and benchmarks, so it is standard library only
(``http.server.ThreadingHTTPServer``, HTTP/1.1 keep-alive, one daemon thread per connection),
keeps all state under one ``threading.Lock`` and never logs a request line.

Zoom's side
-----------
``POST /oauth/token``
    ``Authorization: Basic base64(client_id:client_secret)`` and the form body
    ``grant_type=account_credentials&account_id=<id>``. Answers ``access_token``,
    ``token_type``, ``expires_in``, ``scope`` and ``api_url`` (this server's own root).
    Errors are ``{"reason", "error", "code"}``: parameters in the query string 400
    ``invalid_request``; no Basic auth or no grant type 4706; another grant type 4705; bad
    client id or secret 401 4702; another account id 400 4704; a disabled app 400 4717.
``POST /v2/users/{userId}/meetings``, ``GET /v2/users/{userId}/meetings``,
``GET|PATCH|DELETE /v2/meetings/{meetingId}``
    Bearer token required. Every refusal is ``{"code", "message"}`` as Zoom sends it: 401
    code 124 (unknown, invalidated or expired token), 401 4711 (missing scopes), 404 1001
    (no such user), 404 3001 (no such meeting; legacy 300), 400 3002 / 3007 (deleting a
    started / ended meeting), 400 300 (validation), 429 (per-second and per-user daily limits).

Switches (:class:`SimulatorConfig`, also settable at run time with ``POST /_sim/config``)
-----------------------------------------------------------------------------------------
Credentials ``account_id``, ``client_id``, ``client_secret``. Tokens ``token_lifetime_s``,
``scopes``, ``token_tolerance`` (N: a new token kills all but the newest N, as Zoom did before
2023; None: tokens live until expiry, as today), ``token_error_codes``, ``token_latency_s``,
``app_disabled``, ``refuse_fresh_tokens`` (tokens are issued but every API call is answered
401 code 124: the "ownership transferred" state that only a secret rotation ends),
``missing_scopes``. Meetings ``missing_users``, ``legacy_not_found_code``. Rate limits
``rate_limits`` (per category, calls accepted in any sliding 1 s window), ``rate_limit_headers``,
``categories`` and ``create_category`` (operation -> category; an explicit
``categories["create"]`` wins over ``create_category``), ``daily_create_limit`` and
``daily_limit_style`` ("429", or "400" with code 300 as in an older spec). Faults, drawn from
``random.Random(seed)``: ``error_rate`` (500/502/503 before doing anything), ``drop_rate``
(connection closed without an answer before doing anything), ``reply_lost_rate`` (creates
only: the meeting is made, then the connection is closed without an answer) and
``latency_s`` (a sleep before every API answer).

Control API (no auth)
---------------------
``GET /_sim/stats``, ``GET /_sim/meetings`` (every meeting ever made, with ``deleted``, never
``start_url``), ``GET|POST /_sim/config``, ``POST /_sim/reset`` (everything but the config),
``POST /_sim/invalidate-tokens``, ``POST /_sim/rotate-secret`` ``{"client_secret"}`` (also
ends ``refuse_fresh_tokens`` and kills every token), ``POST /_sim/meetings``
``{"user_id", "body"}`` (a meeting made by another app) and ``POST /_sim/meetings/{id}/status``
``{"status": "waiting" | "started" | "ended"}``. :class:`SimulatorClient` wraps them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import dataclasses
import json
import logging
import random
import re
import secrets
import socket
import socketserver
import threading
import time
import types
import typing
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import httpx

__all__ = [
    "RunningSimulator",
    "Simulator",
    "SimulatorClient",
    "SimulatorConfig",
    "serve_forever",
    "start_simulator",
]

log = logging.getLogger(__name__)

DEFAULT_SCOPES = (
    "meeting:write:meeting:admin meeting:read:meeting:admin "
    "meeting:delete:meeting:admin meeting:read:list_meetings:admin"
)
RATE_CATEGORIES = ("light", "medium", "heavy")
OPERATIONS = ("create", "delete", "get", "list", "update")
MEETING_TYPES = frozenset({1, 2, 3, 8, 10})
MEETING_STATUSES = ("waiting", "started", "ended")
# Which statuses each ``type`` of the list call shows; deleted meetings are never listed.
LIST_TYPES: dict[str, tuple[str, ...]] = {
    "scheduled": ("waiting", "started"),
    "upcoming": ("waiting",),
    "upcoming_meetings": ("waiting",),
    "live": ("started",),
    "previous_meetings": ("ended",),
}
# The list call shows these, and only the first 250 characters of the agenda.
LIST_FIELDS: tuple[str, ...] = (
    "uuid",
    "id",
    "host_id",
    "topic",
    "type",
    "start_time",
    "duration",
    "timezone",
)
LIST_FIELDS += ("created_at", "join_url")
LIST_AGENDA_CHARS = 250
MAX_PAGE_SIZE = 300
# Meeting ids are int64 and have had 11 digits for years: never assume a 32-bit int.
MEETING_ID_RANGE = (80_000_000_000, 99_999_999_999)
PASSWORD_PATTERN = re.compile(r"[A-Za-z0-9@_*-]{1,10}")
OPERATION_SCOPES = {
    "create": "meeting:write:meeting:admin",
    "update": "meeting:update:meeting:admin",
    "delete": "meeting:delete:meeting:admin",
    "get": "meeting:read:meeting:admin",
    "list": "meeting:read:list_meetings:admin",
}
DEFAULT_SETTINGS: dict[str, Any] = {
    "host_video": False,
    "participant_video": False,
    "join_before_host": False,
    "mute_upon_entry": False,
    "waiting_room": False,
    "approval_type": 2,
    "auto_recording": "none",
    "email_notification": True,
}
# Fields a PATCH may change; ``settings`` is merged key by key.
UPDATABLE_FIELDS = frozenset(
    {"topic", "type", "start_time", "duration", "timezone", "agenda", "password", "settings"}
    | {"recurrence", "tracking_fields"}
)
SERVER_ERRORS = {500: "Internal server error", 502: "Bad gateway", 503: "Service unavailable"}
PER_SECOND_MESSAGE = (
    "You have reached the maximum per-second rate limit for this API. Try again later."
)
DAILY_MESSAGE = (
    "You have exceeded the daily rate limit ({limit}) of Meeting Create/Update API requests "
    "permitted for this particular user. You may resume these requests at GMT 00:00:00."
)


COUNTERS = (
    *("token_requests", "tokens_issued", "token_errors", "api_calls", "api_401", "api_429"),
    *("api_429_daily", "api_5xx", "replies_lost", "connections_dropped", "meetings_created"),
    *("meetings_seeded", "meetings_deleted"),
)


def _default_categories() -> dict[str, str]:
    # "create" is absent on purpose: it follows ``create_category`` unless set here.
    return {"delete": "light", "get": "light", "list": "medium", "update": "light"}


@dataclass
class SimulatorConfig:
    """Every switch of the simulator; the defaults behave like a healthy Zoom Pro account.

    Instances are validated on creation (``ValueError`` names the switch) and never changed
    in place by the simulator: :meth:`Simulator.configure` swaps in a new one.
    """

    account_id: str = "sim-account"
    client_id: str = "sim-client"
    # A well-known default of a local simulator, not a credential.
    client_secret: str = field(default="sim-secret", repr=False)
    token_lifetime_s: int = 3600
    scopes: str = DEFAULT_SCOPES
    token_tolerance: int | None = None
    token_error_codes: bool = True
    token_latency_s: float = 0.0
    app_disabled: bool = False
    refuse_fresh_tokens: bool = False
    missing_scopes: bool = False
    missing_users: set[str] = field(default_factory=set)
    legacy_not_found_code: bool = False
    rate_limits: dict[str, int] | None = None
    rate_limit_headers: bool = True
    create_category: str = "light"
    categories: dict[str, str] = field(default_factory=_default_categories)
    daily_create_limit: int = 100
    daily_limit_style: Literal["429", "400"] = "429"
    error_rate: float = 0.0
    reply_lost_rate: float = 0.0
    drop_rate: float = 0.0
    latency_s: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(SimulatorConfig)
        for f in dataclasses.fields(self):  # JSON from /_sim/config may carry anything
            if not _conforms(getattr(self, f.name), hints[f.name]):
                raise ValueError(f"{f.name}: {getattr(self, f.name)!r} is not a {f.type}")
        for name in ("error_rate", "reply_lost_rate", "drop_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: a probability in [0, 1]")
        for name in ("token_lifetime_s", "token_latency_s", "daily_create_limit", "latency_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.token_tolerance is not None and self.token_tolerance < 1:
            raise ValueError("token_tolerance: at least 1, or None")
        if any(k not in RATE_CATEGORIES or v < 0 for k, v in (self.rate_limits or {}).items()):
            raise ValueError(f"rate_limits: keys in {RATE_CATEGORIES}, values at least 0")
        if any(k not in OPERATIONS or v not in RATE_CATEGORIES for k, v in self.categories.items()):
            raise ValueError(f"categories: maps {OPERATIONS} to {RATE_CATEGORIES}")
        if self.create_category not in RATE_CATEGORIES:
            raise ValueError(f"create_category: one of {RATE_CATEGORIES}")

    def category_for(self, operation: str) -> str:
        """The rate-limit category of an operation ("create", "delete", "get", ...)."""
        if operation == "create":
            return self.categories.get("create", self.create_category)
        return self.categories.get(operation, "light")

    def public_dict(self) -> dict[str, Any]:
        """The switches as JSON-ready data, without the client secret."""
        data = dataclasses.asdict(self)
        del data["client_secret"]
        data["missing_users"] = sorted(self.missing_users)
        return data


SWITCHES = frozenset(f.name for f in dataclasses.fields(SimulatorConfig))


def _conforms(value: object, hint: object) -> bool:
    """Whether ``value`` fits a type hint of SimulatorConfig (the few forms it uses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if origin is set:
        return isinstance(value, set) and all(_conforms(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(hint, type) and isinstance(value, hint)


@dataclass(frozen=True)
class Request:
    """One HTTP request as the simulator sees it (path without query, query parsed)."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    host: str
    body: bytes


@dataclass(frozen=True)
class Reply:
    """The answer: status, headers and a body serialised under the lock; or a dropped line."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), headers or {})


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return _json(status, {"code": code, "message": message}, headers)


DROPPED = Reply(0, drop=True)


@dataclass
class _Meeting:
    body: dict[str, Any]
    user_id: str
    foreign: bool
    deleted: bool = False


@dataclass(frozen=True)
class _Page:
    host_id: str
    ids: tuple[int, ...]  # shared by every page of one listing
    offset: int


def _utc_stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(body: dict[str, Any]) -> list[dict[str, str]]:
    """The field errors Zoom would report for a create or update body."""
    problems: list[tuple[str, str]] = []
    for name, limit in (("topic", 200), ("agenda", 2000)):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems.append((name, f"{name} must be a string of at most {limit} characters."))
    if "duration" in body and not _is_int(body["duration"]):
        problems.append(("duration", "Invalid field."))
    if "type" in body and not (_is_int(body["type"]) and body["type"] in MEETING_TYPES):
        problems.append(("type", "Invalid field."))
    password = body.get("password")
    if password is not None and not (
        isinstance(password, str) and PASSWORD_PATTERN.fullmatch(password)
    ):
        problems.append(("password", "Password must be at most 10 characters of [a-zA-Z0-9@-_*]."))
    for name in ("start_time", "timezone"):
        if body.get(name) is not None and not isinstance(body[name], str):
            problems.append((name, "Invalid field."))
    if "settings" in body and not isinstance(body["settings"], dict):
        problems.append(("settings", "Invalid field."))
    return [{"field": name, "message": message} for name, message in problems]


def _validation_failed(problems: list[dict[str, str]]) -> Reply:
    return _json(400, {"code": 300, "message": "Validation Failed.", "errors": problems})


def _parse_object(body: bytes) -> dict[str, Any] | None:
    """The JSON object in a request body ({} when empty), or None when it is not one."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = (
            base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (client_id, secret) if sep else None


_USER_MEETINGS = re.compile(r"/v2/users/([^/]+)/meetings/?")
_MEETING = re.compile(r"/v2/meetings/([^/]+)/?")
_MEETING_STATUS = re.compile(r"/_sim/meetings/(\d+)/status")


def _route(method: str, path: str) -> tuple[str, str] | None:
    """The operation name and its path argument, or None for an unknown route."""
    if match := _USER_MEETINGS.fullmatch(path):
        operation = {"POST": "create", "GET": "list"}.get(method)
    elif match := _MEETING.fullmatch(path):
        operation = {"GET": "get", "PATCH": "update", "DELETE": "delete"}.get(method)
    else:
        return None
    return (operation, urllib.parse.unquote(match.group(1))) if operation else None


class Simulator:
    """The state of one simulated Zoom account and the answers it gives; thread-safe.

    All state lives under one lock held only for bookkeeping, never while sleeping.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = copy.deepcopy(config) if config else SimulatorConfig()
        self._rng = random.Random(self._config.seed)
        self._reset_state()

    def _reset_state(self) -> None:
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry, oldest first
        self._meetings: dict[int, _Meeting] = {}
        self._by_host: dict[str, list[_Meeting]] = {}  # in creation order
        self._host_ids: dict[str, str] = {}  # email -> host_id
        self._host_emails: dict[str, str] = {}  # host_id -> email
        self._pages: dict[str, _Page] = {}
        self._windows: dict[str, deque[float]] = {c: deque() for c in RATE_CATEGORIES}
        self._max_qps: dict[str, int] = dict.fromkeys(RATE_CATEGORIES, 0)
        self._daily: dict[str, int] = {}
        self._daily_date: date | None = None
        self._counters = dict.fromkeys(COUNTERS, 0)

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
        problems = _validate(body)
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
        route = _route(request.method, request.path)
        if route is None:
            return _error(404, 404, "Not Found")
        return self._api(request, *route)

    # -- token endpoint ---------------------------------------------------------------------

    def _token_endpoint(self, request: Request) -> Reply:
        if self._config.token_latency_s:
            time.sleep(self._config.token_latency_s)
        with self._lock:
            self._counters["token_requests"] += 1
            reply = self._issue_token(request, self._config)
            self._counters["tokens_issued" if reply.status == 200 else "token_errors"] += 1
            return reply

    def _issue_token(self, request: Request, cfg: SimulatorConfig) -> Reply:
        def refuse(status: int, error: str, code: int | None, reason: str) -> Reply:
            payload: dict[str, Any] = {"reason": reason, "error": error}
            if code is not None and cfg.token_error_codes:
                payload["code"] = code
            return _json(status, payload)

        if {"grant_type", "account_id"} & request.query.keys():
            # Zoom now answers 400 to the query-string form seen in many old examples.
            reason = "Parameters must be sent in the request body, not in the query string."
            return refuse(400, "invalid_request", None, reason)
        client = _basic_credentials(request.authorization)
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
        return _json(
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": cfg.token_lifetime_s,
                "scope": cfg.scopes,
                "api_url": f"http://{request.host}",
            },
        )

    # -- Meetings API -----------------------------------------------------------------------

    def _api(self, request: Request, operation: str, argument: str) -> Reply:
        if self._config.latency_s:
            time.sleep(self._config.latency_s)
        body = _parse_object(request.body) if operation in ("create", "update") else {}
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
            return _error(status, status, SERVER_ERRORS[status])
        refused = self._check_token(request.authorization, operation, cfg)
        if refused is not None:
            return refused
        limited = self._take_rate_slot(cfg.category_for(operation), cfg)
        if limited is not None:
            return limited
        if operation in ("create", "list") and argument in cfg.missing_users:
            return _error(404, 1001, f"User does not exist: {argument}.")
        if body is None:
            return _error(400, 300, "Request Body should be a valid JSON object.")
        if operation == "create":
            return self._create(argument, body, cfg)
        if operation == "list":
            return self._list(argument, request.query)
        meeting_id = int(argument) if argument.isdigit() else None
        meeting = self._meetings.get(meeting_id) if meeting_id is not None else None
        if meeting is None or meeting.deleted:
            code = 300 if operation == "delete" and cfg.legacy_not_found_code else 3001
            return _error(404, code, f"Meeting does not exist: {argument}.")
        if operation == "get":
            return _json(200, meeting.body)
        if operation == "update":
            return self._update(meeting, body, cfg)
        return self._delete(meeting)

    def _check_token(
        self, authorization: str | None, operation: str, cfg: SimulatorConfig
    ) -> Reply | None:
        scheme, _, token = (authorization or "").partition(" ")
        expiry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expiry is None or cfg.refuse_fresh_tokens:
            return _error(401, 124, "Invalid access token.")
        if time.monotonic() >= expiry:
            return _error(401, 124, "Access token is expired.")
        if cfg.missing_scopes:
            scope = OPERATION_SCOPES[operation]
            return _error(401, 4711, f"Invalid access token, does not contain scopes:[{scope}]")
        return None

    def _take_rate_slot(self, category: str, cfg: SimulatorConfig) -> Reply | None:
        """Accept a call into the category's sliding 1 s window, or answer 429."""
        window = self._windows[category]
        now = time.monotonic()
        while window and window[0] <= now - 1.0:
            window.popleft()
        limit = (cfg.rate_limits or {}).get(category)
        if limit is not None and len(window) >= limit:
            headers = {}
            if cfg.rate_limit_headers:
                headers = {
                    "X-RateLimit-Category": category.capitalize(),
                    "X-RateLimit-Type": "QPS",
                    "X-RateLimit-Limit": str(limit),
                    "X-RateLimit-Remaining": "0",
                }
            return _error(429, 429, PER_SECOND_MESSAGE, headers)
        window.append(now)
        self._max_qps[category] = max(self._max_qps[category], len(window))
        return None

    def _take_daily(self, host_id: str, cfg: SimulatorConfig) -> Reply | None:
        """Count one create or update against the host's cap for this UTC day, or refuse."""
        now = datetime.now(UTC)
        if now.date() != self._daily_date:
            self._daily, self._daily_date = {}, now.date()
        used = self._daily.get(host_id, 0)
        if used < cfg.daily_create_limit:
            self._daily[host_id] = used + 1
            return None
        self._counters["api_429_daily"] += 1
        headers = {}
        if cfg.rate_limit_headers:
            midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
            headers = {
                "X-RateLimit-Category": cfg.category_for("create").capitalize(),
                "X-RateLimit-Type": "Daily-limit",
                "X-RateLimit-Limit": str(cfg.daily_create_limit),
                "X-RateLimit-Remaining": "0",
                "Retry-After": _utc_stamp(midnight),  # ISO-8601, not seconds, as Zoom sends it
            }
        message = DAILY_MESSAGE.format(limit=cfg.daily_create_limit)
        if cfg.daily_limit_style == "400":
            return _error(400, 300, message, headers)
        return _error(429, 429, message, headers)

    def _user(self, user_id: str) -> tuple[str, str]:
        """The (host_id, host_email) that a path's userId (an id or an email) names."""
        if user_id in self._host_emails:
            return user_id, self._host_emails[user_id]
        email = user_id if "@" in user_id else f"{user_id}@sim.zoom.us"
        if email not in self._host_ids:
            host_id = base64.urlsafe_b64encode(self._rng.randbytes(16)).decode().rstrip("=")
            self._host_ids[email], self._host_emails[host_id] = host_id, email
        return self._host_ids[email], email

    def _new_meeting(self, user_id: str, body: dict[str, Any], *, foreign: bool) -> _Meeting:
        host_id, host_email = self._user(user_id)
        meeting_id = self._rng.randint(*MEETING_ID_RANGE)
        while meeting_id in self._meetings:
            meeting_id = self._rng.randint(*MEETING_ID_RANGE)
        now = _utc_stamp(datetime.now(UTC))
        alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        encrypted = "".join(self._rng.choices(alphabet, k=32))
        record: dict[str, Any] = {
            "uuid": base64.b64encode(self._rng.randbytes(16)).decode(),
            "id": meeting_id,
            "host_id": host_id,
            "host_email": host_email,
            "topic": body.get("topic") or "Zoom Meeting",
            "type": body.get("type", 2),
            "status": "waiting",
            "start_time": body.get("start_time") or now,
            "duration": body.get("duration", 60),
            "timezone": body.get("timezone") or "UTC",
            "agenda": body.get("agenda") or "",
            "created_at": now,
            # A host credential, as in Zoom: whoever holds it starts the meeting as host.
            "start_url": f"https://sim.zoom.us/s/{meeting_id}?zak={secrets.token_urlsafe(32)}",
            "join_url": f"https://sim.zoom.us/j/{meeting_id}?pwd={encrypted}",
            "password": body.get("password") or "".join(self._rng.choices(alphabet, k=6)),
            "encrypted_password": encrypted,
            "settings": DEFAULT_SETTINGS | body.get("settings", {}),
            "pre_schedule": False,
        }
        record |= {k: body[k] for k in ("recurrence", "tracking_fields") if k in body}
        meeting = _Meeting(record, user_id, foreign)
        self._meetings[meeting_id] = meeting
        self._by_host.setdefault(host_id, []).append(meeting)
        return meeting

    def _create(self, user_id: str, body: dict[str, Any], cfg: SimulatorConfig) -> Reply:
        problems = _validate(body)
        if problems:
            return _validation_failed(problems)
        limited = self._take_daily(self._user(user_id)[0], cfg)
        if limited is not None:
            return limited
        meeting = self._new_meeting(user_id, body, foreign=False)
        self._counters["meetings_created"] += 1
        if cfg.reply_lost_rate and self._rng.random() < cfg.reply_lost_rate:
            # The meeting exists but the caller never hears: Zoom has no idempotency key.
            self._counters["replies_lost"] += 1
            return DROPPED
        return _json(201, meeting.body)

    def _update(self, meeting: _Meeting, body: dict[str, Any], cfg: SimulatorConfig) -> Reply:
        problems = _validate(body)
        if problems:
            return _validation_failed(problems)
        limited = self._take_daily(meeting.body["host_id"], cfg)
        if limited is not None:
            return limited
        for key in UPDATABLE_FIELDS & body.keys():
            if key == "settings":
                meeting.body["settings"] = meeting.body["settings"] | body["settings"]
            else:
                meeting.body[key] = body[key]
        return Reply(204)

    def _delete(self, meeting: _Meeting) -> Reply:
        status = meeting.body["status"]
        if status == "started":
            message = "Sorry, you cannot delete this meeting since it is in progress."
            return _error(400, 3002, message)
        if status == "ended":
            return _error(400, 3007, "Sorry, you cannot delete this meeting since it has ended.")
        meeting.deleted = True
        self._counters["meetings_deleted"] += 1
        return Reply(204)

    def _list(self, user_id: str, query: dict[str, list[str]]) -> Reply:
        host_id = self._user(user_id)[0]
        raw_size = query.get("page_size", ["30"])[0]
        if not raw_size.isdigit() or int(raw_size) < 1:
            return _validation_failed([{"field": "page_size", "message": "Invalid field."}])
        page_size = min(int(raw_size), MAX_PAGE_SIZE)
        page_token = query.get("next_page_token", [""])[0]
        if page_token:
            page = self._pages.get(page_token)
            if page is None or page.host_id != host_id:
                return _error(400, 300, "The next page token is invalid or expired.")
        else:
            list_type = query.get("type", ["scheduled"])[0]
            if list_type not in LIST_TYPES:
                return _validation_failed([{"field": "type", "message": "Invalid field."}])
            statuses = LIST_TYPES[list_type]
            ids = tuple(
                m.body["id"]
                for m in self._by_host.get(host_id, ())
                if not m.deleted and m.body["status"] in statuses
            )
            page = _Page(host_id, ids, 0)
        end = page.offset + page_size
        listed = (self._meetings[i] for i in page.ids[page.offset : end])
        next_token = ""
        if end < len(page.ids):
            next_token = secrets.token_urlsafe(16)
            self._pages[next_token] = _Page(host_id, page.ids, end)
        meetings = [
            {k: m.body[k] for k in LIST_FIELDS} | {"agenda": m.body["agenda"][:LIST_AGENDA_CHARS]}
            for m in listed
            if not m.deleted
        ]
        return _json(
            200,
            {
                "page_size": page_size,
                "total_records": len(page.ids),
                "next_page_token": next_token,
                "meetings": meetings,
            },
        )

    # -- control API ------------------------------------------------------------------------

    def _control(self, request: Request) -> Reply:
        method, path = request.method, request.path.rstrip("/")
        body = _parse_object(request.body)
        if body is None:
            return _error(400, 300, "Request Body should be a valid JSON object.")
        try:
            if method == "GET" and path == "/_sim/stats":
                return _json(200, self.stats())
            if method == "GET" and path == "/_sim/meetings":
                return _json(200, self.meetings())
            if method == "GET" and path == "/_sim/config":
                return _json(200, self._config.public_dict())
            if method != "POST":
                return _error(404, 404, "Not Found")
            if path == "/_sim/config":
                return _json(200, self.configure(**body).public_dict())
            if path == "/_sim/reset":
                self.reset()
            elif path == "/_sim/invalidate-tokens":
                self.invalidate_tokens()
            elif path == "/_sim/rotate-secret":
                secret = body.get("client_secret")
                if not isinstance(secret, str) or not secret:
                    return _error(400, 300, "client_secret: a non-empty string is required")
                self.rotate_secret(secret)
            elif path == "/_sim/meetings":
                user_id, meeting = body.get("user_id"), body.get("body") or {}
                if not isinstance(user_id, str) or not user_id or not isinstance(meeting, dict):
                    return _error(400, 300, "user_id (a string) and body (an object) required")
                return _json(201, self.seed_meeting(user_id, meeting))
            elif match := _MEETING_STATUS.fullmatch(path):
                self.set_meeting_status(int(match.group(1)), str(body.get("status")))
            else:
                return _error(404, 404, "Not Found")
        except ValueError as exc:
            return _error(400, 300, str(exc))
        except KeyError as exc:
            return _error(404, 3001, f"Meeting does not exist: {exc.args[0]}.")
        return _json(200, {"ok": True})


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; hands every request to the Simulator."""

    protocol_version = "HTTP/1.1"
    server_version = "ZoomSimulator/1"
    # Idle keep-alive connections are closed after this; httpx's pool forgets them after 5 s.
    timeout = 120
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK can add 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a line per request on stderr would drown benchmarks and tests."""

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
        target = urllib.parse.urlsplit(self.path)
        request = Request(
            method=self.command,
            path=target.path,
            query=urllib.parse.parse_qs(target.query),
            authorization=self.headers.get("Authorization"),
            host=self.headers.get("Host") or f"{self.server.server_name}:{self.server.server_port}",
            body=body,
        )
        reply = self.server.simulator.handle(request)
        if reply.drop:
            # Close without a status line: the client cannot know whether the call took effect.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.status != 204:
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Wake every handler blocked on an idle keep-alive connection, so it ends."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-request is normal under fault injection: no traceback.
        log.debug("simulator.connection_error client=%s", client_address, exc_info=True)


class RunningSimulator:
    """A simulator served on a daemon thread; ``stop()`` (or leaving ``with``) ends it."""

    def __init__(self, server: _Server, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self._stopped = False
        self.simulator = server.simulator
        self.url = f"http://{host}:{server.server_port}"
        self.api_url = f"{self.url}/v2"
        self.oauth_url = f"{self.url}/oauth/token"

    def stop(self) -> None:
        """Stop serving and close every connection; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_simulator(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Serve a new simulator on ``host:port`` (0: any free port) from a daemon thread."""
    server = _Server((host, port), Simulator(config))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="zoom-simulator"
    )
    thread.daemon = True
    thread.start()
    return RunningSimulator(server, thread, host)


def serve_forever(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 9900
) -> None:
    """Serve a simulator in this thread until interrupted (``zoom-worker simulator``)."""
    server = _Server((host, port), Simulator(config))
    log.info("simulator.started url=http://%s:%d", host, server.server_port)
    try:
        server.serve_forever()
    finally:
        server.close_connections()
        server.server_close()


class SimulatorClient:
    """The control API over HTTP; errors raise ``httpx.HTTPStatusError``.

    ``base_url`` is the simulator's root (``RunningSimulator.url``), not its ``/v2`` API.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        # Plain HTTP to a local simulator: skip loading the CA bundle (about 90 ms a client).
        self._http = httpx.Client(
            base_url=f"{base_url.rstrip('/')}/_sim",
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

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
